"""The hold-out set: seeds and a tenant mix the guard's weights are never tuned on.

Tuning runs (`pbxwarden simulate`, tests) use :data:`pbxwarden.guard.sim_world.TUNING_MIX`
and :data:`pbxwarden.guard.simulate.TUNING_SEEDS`; nothing on that path imports this
module. ``pbxwarden simulate --set holdout`` runs it, and its report says so. The mix
differs in kind weights, home countries and the countries called, so a rule fitted to
the tuning mix's particular countries or proportions shows up here as false alarms.
Change it only to add kinds of traffic, never after looking at what a rule does on it.

Seeds 7301-7303 were the hold-out set until run 5 (docs/benchmarks.md); the drip rule was
then changed after looking at them, so they are spent: they are tuning data now
(:data:`SPENT_SEEDS`), and 8101-8103 were drawn in their place and run once, blind (run
6). The drip rule was changed again after looking at 8101 and 8103 (run 7), so they are
spent too, and 9101-9103 replace them, run once, blind, after that change (run 7; its
alerts were read afterwards, so the next change to a rule needs new seeds again).
"""

from __future__ import annotations

from pbxwarden.guard.sim_world import Mix

HOLDOUT_SEEDS = (9101, 9102, 9103)
# former hold-out seeds, looked at while tuning
SPENT_SEEDS = (7301, 7302, 7303, 8101, 8102, 8103)
HOLDOUT_MIX = Mix(
    "holdout",
    kinds={
        "sme": 2,
        "law": 1.5,
        "callcentre": 2.5,
        "hotel": 2,
        "forwarders": 2,
        "diaspora": 1.5,
        "shop": 1,
    },
    homes={"US": 3, "GB": 3, "ES": 2, "DE": 2},
    partners=("FR", "IT", "PT", "BE", "CH", "IE", "US", "MA", "TR"),
    call_centre_targets=("CO", "ZA", "PH", "IE", "AR"),
    hotel_guests=("US", "GB", "DE", "FR", "NL", "KR", "AU", "AR", "RU", "SA"),
    diaspora=("NG", "LV", "DO", "VN", "RO"),
    travel=("US", "FR", "IT", "PT", "CH", "AE"),
)
