"""The hold-out set: seeds and a tenant mix the guard's weights are never tuned on.

Tuning runs (`pbxwarden simulate`, tests) use :data:`pbxwarden.guard.sim_world.TUNING_MIX`
and :data:`pbxwarden.guard.simulate.TUNING_SEEDS`; nothing on that path imports this
module. ``pbxwarden simulate --set holdout`` runs it, and its report says so. The mix
differs in kind weights, home countries and the countries called, so a rule fitted to
the tuning mix's particular countries or proportions shows up here as false alarms.
Change it only to add kinds of traffic, never after looking at what a rule does on it.

History (docs/benchmarks.md): the first hold-out mix (now :data:`SPENT_MIX`) was run
with seeds 7301-7303 (to run 5), 8101-8103 (run 6) and 9101-9103 (run 7); each time the
drip rule was changed after looking at the results, so those seeds are spent, and after
three rounds the mix itself was known. Both are tuning data now (``--set spent``). Run 8
drew a new mix (more hotels and diaspora tenants, other homes' weights, other partner,
call-centre, guest, diaspora and travel countries) and seeds 9401-9403, written before
they were run and run once, blind, after the code was final.
"""

from __future__ import annotations

from pbxwarden.guard.sim_world import Mix

HOLDOUT_SEEDS = (9401, 9402, 9403)
HOLDOUT_MIX = Mix(
    "holdout-b",
    kinds={
        "sme": 3,
        "law": 1,
        "callcentre": 2,
        "hotel": 2.5,
        "forwarders": 1.5,
        "diaspora": 2,
        "shop": 1.5,
    },
    homes={"GB": 3, "DE": 3, "US": 2, "ES": 2},
    partners=("NL", "PL", "SE", "AT", "DK", "US", "GB", "DE", "CZ", "AE"),
    call_centre_targets=("EG", "KE", "PE", "ZA", "PL"),
    hotel_guests=("US", "GB", "DE", "FR", "IT", "NL", "SE", "CN", "IN", "BR", "AE", "TR"),
    diaspora=("PK", "UA", "GH", "LB", "MA"),
    travel=("NL", "AT", "SE", "US", "SG", "JP"),
)

# former hold-out seeds and mix, looked at while tuning
SPENT_SEEDS = (7301, 7302, 7303, 8101, 8102, 8103, 9101, 9102, 9103)
SPENT_MIX = Mix(
    "holdout-a (spent)",
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
