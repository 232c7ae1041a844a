"""The guard's judgements on one costly attempt: limits, correlations, anomaly score.

Pure functions over the state in :mod:`pbxwarden.guard.state`; the engine calls them
in order and turns what they return into a decision, an alert and maybe a suspension.

* Limits (:func:`limits`): the admin's values are ceilings; a limit left at its default
  scales with what the extension was seen to spend on clean days (the third highest
  of the last 14), between the default and a ceiling sized from the tenant's daily cap.
  So a call centre's ordinary hour is not a breach and a law office stays tight.
* Correlations (:func:`wangiri`, :func:`dear_range`, :func:`recon`, :func:`drip`): what
  one call cannot show. They are scoped to their victim: probes count only when they
  were aimed at the extension whose forwarding changes, callbacks only to the number
  that rang many extensions, ranges per tenant, drips per number.
* The anomaly score (:func:`score`): learned behaviour; a known behaviour of the
  extension (it calls that country most days, it works at that hour, it forwarded to
  that number before) lowers the score, with the reason shown.
"""

from __future__ import annotations

import datetime as dt
from collections import deque

from pbxwarden.guard.baseline import DAY, WEEKDAYS, Baseline
from pbxwarden.guard.policy import TenantPolicy
from pbxwarden.guard.state import HOUR, ExtState, RangeState, TenantState
from pbxwarden.pbx.numbers import Destination
from pbxwarden.pbx.policy import DIVERSIONS, DIVERTED, NATIONAL_ALLOWED, CallAttempt, Decision

PREFIX_WINDOW = 600.0
DEFAULTS = TenantPolicy()

# anomaly score weights (0-100 overall); tuned with `pbxwarden simulate --set tuning`
W_NEW_COUNTRY = 30
W_NEW_COUNTRY_TENANT = 20
W_RARE_COUNTRY = 15
W_BURST = 30
W_SPEND = 40
W_SAME_PREFIX = 25
W_OFF_HOURS = 20
W_HIGH_RISK_ALLOWED = 10
W_NIGHT_RISKY = 20  # per earlier call abroad to a risky or dear destination out of hours
NONE = (0.0, 0.0, 0.0)  # no other node's spend
TOGETHER = " on the PBX's nodes together"
SPEND_FLOOR = 10.0  # a day's spend below this is never "unusual" (in the rate currency)
SPEND_BUSY = 2.0  # times the third busiest clean day's spend: below it a day is not unusual
RISKY_RATE = 0.20  # per minute: "dear" for W_NIGHT_RISKY
W_EXPENSIVE = 20
W_DIVERTED_ABROAD = 10  # the tenant allows it: only a little unusual
W_RECON = 50
W_NEW_FORWARD_TARGET = 20
W_REPEAT_DIVERSION = 30
W_REFUSED = 25  # per costly attempt refused in the last hour (probing for what works)
W_REPEAT_UNUSUAL = 35  # another suspicious call after an unusual one, within 24 hours
REPEAT_UNUSUAL_FROM = 30  # the score from which a repeat counts
W_NEW_NETWORK = 15
K_KNOWN = 10  # a known behaviour lowers the score by this
USUAL_DAYS = 3  # days a behaviour must have held to be usual
COUNTRY_USUAL_DAYS = 5

# correlations
DEAR_RATE = 1.0  # per minute: a "dear" range for the test-call and spread patterns
RANGE_TAIL = 4  # a block of 10,000 numbers: what a revenue-share operator leases
RANGE_KNOWN_DAYS = 3
TEST_CALL_SECONDS = 60.0
PUMP_WINDOW = 72 * HOUR
SPREAD_WINDOW = HOUR
SPREAD_EXTENSIONS = 3
SPREAD_KNOWN = 5  # unless two of the extensions call from a new network or country
BURST_NUMBERS = 3
WANGIRI_WINDOW = 72 * HOUR
WANGIRI_EXTENSIONS = 3
WANGIRI_SECONDS = 10.0  # a ring without talk (or hardly any)
PROBE_WINDOW = 24 * HOUR
PROBE_SECONDS = 60.0
PROBES = 2
DRIP_SPEND = 10.0
DRIP_LONG = 20.0  # minutes
DRIP_DAYS = 21
DRIP_USUAL = 5  # times DRIP_SPEND where the extension's own history has such numbers
DRIP_TENANT_REPEATS = 5  # the tenant's new numbers called back that make it "usual"
DRIP_GAP = 3  # days: a call again after a longer pause is a follow-up (Friday -> Monday is 3)
DRIP_RUNS = 2  # ended runs (``Baseline.ended_runs``) that make new numbers usual
DRIP_HOLD = 2  # days a repeat must have held without an alert before it counts as usual
RANGE_BLOCK = DAY  # a range found pumped stays refused this long


def money(value: float, currency: str) -> str:
    return f"{value:.2f} {currency}"


def costly(dest: Destination) -> bool:
    """International or special: where toll fraud makes its money."""
    return not dest.national or dest.number_type not in NATIONAL_ALLOWED


def spend_caps(
    policy: TenantPolicy, base: Baseline, channel: float = 0.0
) -> tuple[float, float, str, str]:
    """The extension's hourly and daily spend caps in force, and how they were set.

    A cap the administrator changed from its default is a ceiling as set. A default one
    scales with what this extension spent on clean days (3x the third highest hour of
    the last 14 days, or 1.5x the highest; 2x and 1.25x for days) and stays between
    the default and a ceiling sized from the tenant's daily cap (a tenth of it per
    hour, half of it per day). Before three clean days, a tenant whose daily cap the
    administrator raised gets that ceiling (it is sized to its traffic); others get
    the default. Whatever was learned, a default hourly cap never stops one call at a
    time to a destination the tenant allows (``channel``: an hour of the dearest call
    the extension has running or is making): fraud needs parallel or back-to-back
    calls, a person makes one.
    """
    hour, day = policy.spend_per_hour, policy.spend_per_day
    scaled_hour = hour == DEFAULTS.spend_per_hour
    scaled_day = day == DEFAULTS.spend_per_day
    admin = "set by the administrator"
    if not (scaled_hour or scaled_day):
        return hour, day, admin, admin
    sized = policy.tenant_spend_per_day > DEFAULTS.tenant_spend_per_day
    ceiling_hour = max(hour, policy.tenant_spend_per_day / 10)
    ceiling_day = max(day, policy.tenant_spend_per_day / 2)
    peak = base.usual_peak()
    if peak is not None:
        hours, days = peak
        learned_hour = max(hour, 3 * hours[2], 1.5 * hours[0])
        learned_day = max(day, 2 * days[2], 1.25 * days[0])
        how = "scaled with this extension's clean days"
        cap_hour, cap_day = min(ceiling_hour, learned_hour), min(ceiling_day, learned_day)
    elif sized:
        how = "sized from the tenant's daily cap while learning"
        cap_hour, cap_day = ceiling_hour, ceiling_day
    else:
        how = "default"
        cap_hour, cap_day = hour, day
    if channel * 1.05 > cap_hour:
        cap_hour = channel * 1.05
        how = "one call at a time to an allowed destination"
    return (
        cap_hour if scaled_hour else hour,
        cap_day if scaled_day else day,
        how if scaled_hour else admin,
        how if scaled_day else admin,
    )


def limits(
    policy: TenantPolicy,
    attempt: CallAttempt,
    ext: ExtState,
    tenant: TenantState,
    dest: Destination,
    warnings: list[str],
    currency: str,
    rate: float,
    others: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> Decision | None:
    """The first limit the attempt is past, or None. ``others``: the spend of the PBX's
    other nodes (extension's hour, its day, the tenant's day), added to this node's."""
    now = attempt.at
    number = attempt.extension

    def check(count: float, limit: float, what: str, warn: bool) -> bool:
        if count >= limit:
            return True
        if warn and count + 1 >= policy.warn_at * limit and limit >= 5:
            warnings.append(f"{what}, close to the limit of {limit:g}")
        return False

    checks: list[tuple[float, float, str, int, str]] = [
        (
            len(tenant.active),
            policy.max_concurrent_calls,
            f"tenant {attempt.tenant} has {len(tenant.active)} costly calls in progress",
            486,
            "limit",
        ),
        (
            len(ext.active),
            policy.max_concurrent_per_extension,
            f"extension {number} has {len(ext.active)} costly calls in progress",
            486,
            "limit",
        ),
    ]
    recent = ext.recent
    if recent:
        last_minute = sum(1 for r in recent if r[0] > now - 60)
        checks.append(
            (
                last_minute,
                policy.calls_per_minute,
                f"extension {number} made {last_minute} costly calls in the last minute",
                403,
                "limit",
            )
        )
        checks.append(
            (
                len(recent),
                policy.calls_per_hour,
                f"extension {number} made {len(recent)} costly calls in the last hour",
                403,
                "limit",
            )
        )
    if costly(dest):
        prefixes = ext.prefixes
        while prefixes and prefixes[0][0] <= now - PREFIX_WINDOW:
            prefixes.popleft()
        prefix = dest.e164[:6]
        same = sum(1 for _, p in prefixes if p == prefix)
        checks.append(
            (
                same,
                policy.same_prefix_calls,
                f"extension {number} called the {prefix} prefix {same} times in 10 minutes",
                403,
                "limit",
            )
        )
    spend_hour, spend_day = ext.spend.totals(now)
    spend_hour, spend_day = spend_hour + others[0], spend_day + others[1]
    together = TOGETHER if others[0] or others[1] else ""
    cap_hour, cap_day, how_hour, how_day = spend_caps(policy, ext.baseline, 60 * rate)
    checks.append(
        (
            spend_hour,
            cap_hour,
            f"extension {number} spent an estimated {money(spend_hour, currency)} in the "
            f"last hour{together} (cap {how_hour})",
            403,
            "spend-cap",
        )
    )
    checks.append(
        (
            spend_day,
            cap_day,
            f"extension {number} spent an estimated {money(spend_day, currency)} in 24 "
            f"hours{together} (cap {how_day})",
            403,
            "spend-cap",
        )
    )
    tenant_day = tenant.spend.totals(now)[1] + others[2]
    checks.append(
        (
            tenant_day,
            policy.tenant_spend_per_day,
            f"tenant {attempt.tenant} spent an estimated {money(tenant_day, currency)} in 24 "
            f"hours{TOGETHER if others[2] else ''}",
            403,
            "spend-cap",
        )
    )
    for count, limit, what, status, rule in checks:
        # a default spend cap is a guess that scales: close to it is not worth an alert
        warn = rule != "spend-cap" or "administrator" in what or "tenant" in what[:7]
        if check(count, limit, what, warn):
            return Decision(
                False, (f"{what} (limit {limit:g})",), status, severity="warning", rule=rule
            )
    return None


# -- correlations -----------------------------------------------------------------------


def wangiri(attempt: CallAttempt, tenant: TenantState, dest: Destination) -> str | None:
    """A call back to a costly number that just rang many of the tenant's extensions once."""
    if not costly(dest):
        return None
    rang = tenant.rang.get(dest.e164)
    if not rang:
        return None
    while rang and rang[0][0] <= attempt.at - WANGIRI_WINDOW:
        rang.popleft()
    exts = {e for _, e in rang}
    if len(exts) < WANGIRI_EXTENSIONS:
        return None
    return (
        f"{dest.e164} rang {len(exts)} extensions of tenant {attempt.tenant} once without "
        "talking in the last 72 hours: a call back is what a wangiri (one-ring) scam is paid by"
    )


def dear(dest: Destination, rate: float, high_risk: bool) -> bool:
    """Dear enough for a test call to be worth making before a pump."""
    return rate >= DEAR_RATE or high_risk or dest.number_type not in NATIONAL_ALLOWED


def watched(dest: Destination, rate: float, high_risk: bool) -> bool:
    """Costly enough for its range to be followed (bursts and spread over extensions)."""
    return costly(dest) and (rate >= RISKY_RATE or dear(dest, rate, high_risk))


def range_of(e164: str) -> str:
    return e164[: max(6, len(e164) - RANGE_TAIL)]


def dear_range(
    attempt: CallAttempt,
    tenant: TenantState,
    dest: Destination,
    number: str,
    is_dear: bool,
    odd: bool = False,
) -> tuple[str, bool] | None:
    """Test call then pump, a burst into one new range, or one range from many
    extensions. Returns (why, spread: cut the tenant's calls into the range too)."""
    prefix = range_of(dest.e164)
    state = tenant.ranges.get(prefix)
    if state is None:
        return None
    now = attempt.at
    if tenant.baseline.range_days(prefix) >= RANGE_KNOWN_DAYS:
        return _spread_known(attempt, tenant, state, dest, number, prefix, odd)
    if state.blocked > now:
        return (
            f"the range {prefix} was found pumped ({state.why}); its calls are refused for "
            "24 hours",
            False,
        )
    calls = _range_calls(state, now)
    test = state.test
    if is_dear and test is not None and now - test[0] <= PUMP_WINDOW and test[2] != dest.e164:
        when = dt.timedelta(seconds=round(now - test[0]))
        return (
            f"a short test call to {test[2]} from extension {test[1]} {when} ago, and now "
            f"{dest.e164} in the same new range {prefix} (the test-call-then-pump pattern)",
            test[1] != number,
        )
    exts = {e for _, e, _ in calls} | {number}
    numbers = {n for _, _, n in calls} | {dest.e164}
    strange = _strange(state, exts, now)
    if odd:
        strange.add(number)
    enough = SPREAD_EXTENSIONS if len(strange) >= 2 else SPREAD_KNOWN
    if len(exts) >= enough and len(numbers) >= enough:
        return (
            f"{len(exts)} extensions of tenant {attempt.tenant} called {len(numbers)} numbers in "
            f"the range {prefix} in the last hour{_together(state, now)}, a range the tenant "
            "never used before "
            "(calls spread over extensions to stay under each one's limits)",
            True,
        )
    mine = {n for _, e, n in calls if e == number} | {dest.e164}
    if len(mine) >= BURST_NUMBERS:
        return (
            f"extension {number} called {len(mine)} numbers in the range {prefix} in the "
            f"last hour{_together(state, now)}, a range the tenant never used before",
            False,
        )
    return None


def _spread_known(
    attempt: CallAttempt,
    tenant: TenantState,
    state: RangeState,
    dest: Destination,
    number: str,
    prefix: str,
    odd: bool,
) -> tuple[str, bool] | None:
    """A range the tenant calls: only many extensions at once, to numbers it never
    called, is a spread (a revenue-share block can sit beside a family's numbers);
    three are enough when two of them call from a new network or a new country."""
    now = attempt.at
    if state.blocked > now:
        return (f"the range {prefix} was found pumped; its calls are refused for 24 hours", False)
    calls = _range_calls(state, now)
    known = tenant.baseline.targets
    fresh = [(e, n) for _, e, n in calls if n not in known]
    if dest.e164 in known:
        return None
    exts = {e for e, _ in fresh} | {number}
    numbers = {n for _, n in fresh} | {dest.e164}
    strange = _strange(state, exts, now)
    if odd:
        strange.add(number)
    enough = SPREAD_EXTENSIONS if len(strange) >= 2 else SPREAD_KNOWN
    if len(exts) >= enough and len(numbers) >= enough:
        return (
            f"{len(exts)} extensions of tenant {attempt.tenant} called {len(numbers)} numbers "
            f"never called before in the range {prefix} in the last hour"
            f"{_together(state, now)} (calls spread over "
            "extensions to stay under each one's limits)",
            True,
        )
    return None


def _range_calls(state: RangeState, now: float) -> deque[tuple[float, str, str]]:
    """The range's calls of the last hour: this node's, then the other nodes' (a PBX of
    several nodes; they are empty on one)."""
    calls = state.calls
    while calls and calls[0][0] <= now - SPREAD_WINDOW:
        calls.popleft()
    if not state.remote:
        return calls
    return deque([*calls, *(c for c in state.remote if c[0] > now - SPREAD_WINDOW)])


def _together(state: RangeState, now: float) -> str:
    """TOGETHER when calls this node did not see (another node's) were counted."""
    if not state.remote:
        return ""
    local = {(e, n) for _, e, n in state.calls}
    horizon = now - SPREAD_WINDOW
    return TOGETHER if any(t > horizon and (e, n) not in local for t, e, n in state.remote) else ""


def _strange(state: RangeState, exts: set[str], now: float) -> set[str]:
    """Of ``exts``, those that called the range from a new network or country lately."""
    horizon = now - SPREAD_WINDOW
    strange = {e for e, t in state.odd.items() if t > horizon and e in exts}
    strange.update(e for e, t in state.remote_odd.items() if t > horizon and e in exts)
    return strange


def recon(attempt: CallAttempt, ext: ExtState) -> str | None:
    """Short calls to this extension from unknown callers shortly before a costly
    diversion of it: someone checked the number before hijacking its forwarding."""
    probes = ext.probes
    while probes and probes[0][0] <= attempt.at - PROBE_WINDOW:
        probes.popleft()
    if len(probes) < PROBES:
        return None
    who = ", ".join(sorted({p for _, p in probes}))[:200]
    return (
        f"{len(probes)} short call(s) to extension {attempt.extension} from callers never seen "
        f"before in the 24 hours before this diversion (the reconnaissance pattern: {who})"
    )


def drip(
    attempt: CallAttempt,
    ext: ExtState,
    tenant: TenantState,
    dest: Destination,
    day: int,
    currency: str,
) -> str | None:
    """A number first called recently, called again on another day after long calls
    that already cost more than this extension's history explains."""
    entry = ext.baseline.ledger.get(dest.e164)
    if entry is None or entry.last_day == day or attempt.at - entry.first_at > DRIP_DAYS * DAY:
        return None
    # where it is what happens without an alert, it takes more: this extension's own new
    # numbers called again for long calls on later days (a sales desk's follow-ups), or
    # the tenant's new numbers called again on other days (a hotel's guests phoning
    # home), but the tenant's habit counts only for an extension whose calls are long
    # anyway (8 minutes on average without this number's: a guest room), so a desk whose
    # calls last a few minutes keeps the low bar in any tenant. Its own long calls alone
    # are no licence: staff calling family abroad talk as long, and a drip hid there. A
    # number called again after a pause of more than DRIP_GAP days (a follow-up a week
    # later) is no drip: a drip is paid by calling day after day. Long calls to the
    # country are no licence either: the drip's own calls are long calls to that country.
    base = ext.baseline
    gap = day - max(entry.last_day, entry.tried_day)  # refused attempts count: still daily
    base.tried(dest.e164, day)
    if base.drip_ok >= 2:
        threshold = DRIP_SPEND * DRIP_USUAL
        bar = "extension {n} called new numbers back for long calls before"
    elif (runs := base.ended_runs(day, dest.e164)) >= DRIP_RUNS:
        threshold = DRIP_SPEND * DRIP_USUAL
        bar = (
            f"extension {{n}} calls no number for long: {runs} other numbers were each "
            "called over a few days and then no more, as a guest room's guests do"
        )
    elif tenant.baseline.drip_ok >= DRIP_TENANT_REPEATS and base.talks_long(entry):
        threshold = DRIP_SPEND * DRIP_USUAL
        bar = (
            "extension {n}'s calls usually last 8 minutes or more, and tenant {t}'s "
            "people call new numbers back"
        )
    elif gap > DRIP_GAP:
        threshold = DRIP_SPEND * DRIP_USUAL
        bar = f"its last call was {gap} days ago, not day after day"
    elif base.talks_long(entry):
        threshold = DRIP_SPEND
        bar = (
            "extension {n}'s calls are long, but it has no habit of calling new numbers "
            "back for long calls, nor has tenant {t} yet"
        )
    else:
        threshold = DRIP_SPEND
        bar = (
            "extension {n}'s calls are usually short and it has no habit of calling new "
            "numbers back for long calls"
        )
    if entry.long_calls < 1 or entry.spend < threshold:
        return None
    age = (attempt.at - entry.first_at) / DAY
    bar = bar.format(n=attempt.extension, t=attempt.tenant)
    return (
        f"{dest.e164} was first called {age:.0f} day(s) ago and already took "
        f"{money(entry.spend, currency)} in {entry.long_calls} long call(s) on {entry.days} "
        f"day(s); calling a new number again day after day for long calls is the slow-drip "
        f"pattern (refused from {money(threshold, currency)}: {bar}). Ask the user whether "
        "they know this number: if not, someone else has the extension's SIP password"
    )


# -- anomaly score ----------------------------------------------------------------------


def score(
    attempt: CallAttempt,
    ext: ExtState,
    tenant: TenantState,
    dest: Destination,
    rate: float,
    local: dt.datetime,
    in_hours: bool,
    risk_name: str | None,
    currency: str,
    new_network: bool,
) -> tuple[int, list[str]]:
    """The anomaly score (0-100) and one sentence per thing that is unusual or usual."""
    now = attempt.at
    points = 0
    why: list[str] = []
    base = ext.baseline
    mature = base.mature(now)
    number = attempt.extension
    country = dest.country
    calling = attempt.kind != "forward-change"
    usual_hour = base.usual_hour(local.hour) >= USUAL_DAYS
    off_hours = not in_hours and calling and mature
    off_points = W_OFF_HOURS
    if off_hours and usual_hour:
        why.append(
            f"extension {number} usually calls at {local.hour:02d}:00 "
            f"(on {base.usual_hour(local.hour)} days)"
        )
        off_hours = False
    elif off_hours and tenant.baseline.usual_hour(local.hour) >= 2 * COUNTRY_USUAL_DAYS:
        off_points = W_OFF_HOURS // 2
        why.append(f"others in tenant {attempt.tenant} usually call at {local.hour:02d}:00")
    if not dest.national:
        seen = base.countries.get(country, 0)
        diverse = len(base.countries) >= 4  # it calls many countries (a hotel room, sales)
        if seen == 0 and mature and calling and attempt.kind == "external":
            others = tenant.baseline.country_seen_days(country) >= USUAL_DAYS
            points += W_NEW_COUNTRY // 3 if diverse or others else W_NEW_COUNTRY
            why.append(
                f"first call ever from extension {number} to {country}"
                + (f" (it called {len(base.countries)} countries before)" if diverse else "")
                + (f" (others in tenant {attempt.tenant} call it)" if others else "")
            )
            if tenant.baseline.countries.get(country, 0) == 0:
                points += W_NEW_COUNTRY_TENANT
                why.append(f"nobody in tenant {attempt.tenant} ever called {country}")
        elif 0 < seen < 3 and mature and attempt.kind == "external" and not diverse:
            points += W_RARE_COUNTRY
            why.append(f"extension {number} called {country} only {seen} times before")
        days = base.country_seen_days(country)
        if days >= COUNTRY_USUAL_DAYS and attempt.kind == "external":
            points -= K_KNOWN
            why.append(f"extension {number} calls {country} most days (on {days} days)")
        if off_hours:
            points += off_points
            why.append(
                "international call outside business hours, at an hour this extension "
                "does not usually call"
            )
        if risk_name is not None:
            points += W_HIGH_RISK_ALLOWED
            why.append(f"{risk_name} is a high-risk destination (allowed for this tenant)")
        if off_hours and (risk_name is not None or rate >= RISKY_RATE):
            night = ext.night_risky
            while night and night[0] <= now - DAY:
                night.popleft()
            if night:
                points += W_NIGHT_RISKY * min(2, len(night))
                why.append(
                    f"{len(night)} other call(s) from extension {number} to risky or "
                    "expensive destinations abroad at unusual hours in 24 hours"
                )
            if attempt.kind == "external":
                night.append(now)
    if rate >= 1.0:
        points += W_EXPENSIVE
        why.append(f"the destination costs about {money(rate, currency)} a minute")
    if costly(dest):
        prefix = dest.e164[:6]
        same = sum(1 for t, p in ext.prefixes if p == prefix and t > now - PREFIX_WINDOW)
        if same >= 2:
            points += W_SAME_PREFIX
            why.append(f"{same + 1} calls to the same {prefix} prefix in 10 minutes")
    if new_network and calling:
        points += W_NEW_NETWORK
        why.append(f"extension {number} never called from {attempt.source} before")
    if mature and calling:
        day = local.weekday()
        hour_of_week = day * 24 + local.hour
        # the hour of the week's own average, but never below half of this extension's
        # average per active hour: one missing week must not make every call a burst
        slots = sum(base.hour_days) or 1
        expected = max(base.expected_calls(hour_of_week, now), 0.5 * base.calls / slots)
        count = len(ext.recent) + 1
        if count >= 5 and count >= 4 * expected + 3:
            points += W_BURST
            why.append(
                f"{count} costly calls in the last hour; extension {number} usually makes "
                f"{expected:.1f} on {WEEKDAYS[day]}s at {local.hour:02d}:00"
            )
        usual = max(
            base.expected_spend(day, now), 0.5 * sum(base.spend_by_day) / 7 / base.weeks(now)
        )
        spent = ext.spend.totals(now)[1]
        # an extension whose days vary (a guest room: empty, then a guest phoning home
        # every evening) is judged against its busy clean days too, not only its average:
        # twice the third busiest of the last 14 clean days (one odd day cannot raise it)
        peak = base.usual_peak()
        busy = peak[1][2] if peak is not None else 0.0
        if spent >= SPEND_FLOOR and spent >= 10 * max(usual, 0.1) and spent >= SPEND_BUSY * busy:
            points += W_SPEND
            why.append(
                f"spend {money(spent, currency)} in 24 hours, {spent / max(usual, 0.01):.0f}x "
                f"this extension's usual {WEEKDAYS[day]} ({money(usual, currency)})"
                + (f" and over twice its busy days ({money(busy, currency)})" if busy else "")
            )
    if attempt.kind in DIVERSIONS:
        points += _diversion(attempt, ext, dest, why)
    refused = ext.refused
    while refused and refused[0] <= now - HOUR:
        refused.popleft()
    if refused and attempt.kind == "external":
        points += W_REFUSED * min(2, len(refused))
        why.append(
            f"{len(refused)} call(s) from extension {number} to numbers it may not call "
            "were refused in the last hour"
        )
    unusual = ext.unusual
    while unusual and unusual[0] <= now - DAY:
        unusual.popleft()
    if unusual and points >= REPEAT_UNUSUAL_FROM:
        points += W_REPEAT_UNUSUAL
        why.append(f"extension {number} already made {len(unusual)} unusual call(s) in 24 hours")
    return max(0, min(points, 100)), why


def _diversion(attempt: CallAttempt, ext: ExtState, dest: Destination, why: list[str]) -> int:
    points = 0
    base = ext.baseline
    before = base.forward_targets.get(dest.e164, 0)
    if before:
        points -= K_KNOWN
        why.append(f"extension {attempt.extension} forwarded to {dest.e164} before ({before}x)")
    if not dest.national and not before and dest.e164 != ext.forward_set:
        points += W_DIVERTED_ABROAD
        why.append(f"a diversion abroad, to {dest.country}")
    if attempt.kind in DIVERTED and dest.e164 == ext.forward_set:
        why.append(f"the diversion to {dest.e164} was set through the PBX and allowed")
        return points
    if dest.e164 not in base.targets and not before and costly(dest):
        points += W_NEW_FORWARD_TARGET
        why.append(f"extension {attempt.extension} never called {dest.e164} itself")
    if attempt.kind in DIVERTED:
        diverted = ext.diverted
        while diverted and diverted[0][0] <= attempt.at - HOUR:
            diverted.popleft()
        repeats = sum(1 for _, target in diverted if target == dest.e164)
        if repeats >= 2 and costly(dest) and not before:
            points += W_REPEAT_DIVERSION
            why.append(f"{repeats + 1} inbound calls diverted to {dest.e164} in the last hour")
        diverted.append((attempt.at, dest.e164))
    return points
