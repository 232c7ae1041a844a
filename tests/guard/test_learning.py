"""Issue 13's mechanisms one by one: learned limits, graduated actions, correlations
scoped to their victim, slow drip, wangiri, test call then pump, spread, report-only.

Each test drives the real guard only through the hook ``pbx/calls.py`` drives
(authorize, on_call_start, on_call_answer, on_call_end, police), on simulated time.
"""

from __future__ import annotations

from pbxwarden.guard.baseline import Baseline
from pbxwarden.guard.engine import Guard, GuardConfig, TenantPolicy
from pbxwarden.pbx.numbers import classify
from pbxwarden.pbx.policy import CallAttempt, Decision

HOUR = 3600.0
DAY = 86400.0
# Tuesday 2028-05-02 10:00 UTC; history starts two weeks before (a Tuesday too)
T = 1_840_874_400.0
START = T - 14 * DAY
HOME = "+12025550143"  # a national number
PH = "+639171234567"  # Philippines mobile, 0.50 a minute (bundled default price)
OFFICE = "udp:192.0.2.10:5060"

_refs = iter(range(1, 10_000_000))


def attempt(
    dialed: str,
    at: float,
    *,
    ext: str = "1000",
    kind: str = "external",
    caller: str | None = None,
    source: str = OFFICE,
    tenant: str = "acme",
) -> CallAttempt:
    return CallAttempt(tenant, ext, caller or ext, dialed, kind, source, at, classify(dialed, "US"))


def guard(**policy: object) -> Guard:
    base: dict[str, object] = {"business_hours": ["mon-fri 08:00-18:00"], "learning_days": 0}
    base.update(policy)
    return Guard(GuardConfig(tenants={"acme": TenantPolicy(**base)}))  # type: ignore[arg-type]


def call(g: Guard, a: CallAttempt, minutes: float, answered: bool = True) -> Decision:
    """Authorize; if allowed, run the call for ``minutes`` (policing every minute)."""
    decision = g.authorize(a)
    if decision.allow:
        ref = next(_refs)
        g.on_call_start(a, ref)
        if answered:
            g.on_call_answer(ref, a.at)
            cut = None
            t = a.at
            while t < a.at + minutes * 60 and cut is None:
                t = min(t + 60, a.at + minutes * 60)
                cut = next((r for r, _ in g.police(t) if r == ref), None)
            g.on_call_end(ref, t)
        else:
            g.on_call_end(ref, a.at + 20)
    return decision


def inbound(g: Guard, ext: str, caller: str, at: float, talk: float | None) -> None:
    a = CallAttempt(
        "acme", ext, caller, "+12025550100", "inbound", "sim", at, classify("+12025550100", "US")
    )
    assert g.authorize(a).allow
    ref = next(_refs)
    g.on_call_start(a, ref)
    if talk is None:
        g.on_call_end(ref, at + 15)
    else:
        g.on_call_answer(ref, at + 3)
        g.on_call_end(ref, at + 3 + talk)


def office_history(
    g: Guard,
    ext: str = "1000",
    days: int = 14,
    numbers: tuple[str, ...] = (HOME, "+13125550188", "+14155550123"),
    hours: tuple[float, ...] = (9.5, 11.0, 15.0),
    minutes: float = 3.0,
) -> None:
    """Weekdays of ordinary calls, so the extension has a mature baseline."""
    for day in range(days):
        base = START + day * DAY
        if (day % 7) in (4, 5):  # START is a Tuesday: days 4 and 5 are Saturday, Sunday
            continue
        for i, hour in enumerate(hours):
            a = attempt(numbers[(day + i) % len(numbers)], base + (hour - 10) * HOUR, ext=ext)
            assert call(g, a, minutes).allow


def alerts(g: Guard) -> list[str]:
    out = [f"{a.severity}:{a.rule}:{a.summary}" for a in g.outbox]
    g.outbox.clear()
    return out


# -- learned limits ------------------------------------------------------------------------


def two_lines(g: Guard, minutes: float) -> set[int]:
    """Two calls to PH at once for ``minutes``, policed every minute: the refs cut off."""
    refs = []
    for k in range(2):
        a = attempt(PH, T + k)
        assert g.authorize(a).allow
        ref = next(_refs)
        g.on_call_start(a, ref)
        g.on_call_answer(ref, a.at)
        refs.append(ref)
    cut: set[int] = set()
    t = T
    while t < T + minutes * 60 and not cut:
        t += 60
        cut |= {r for r, _ in g.police(t) if r in refs}
    for ref in refs:
        g.on_call_end(ref, t)
    return cut


def test_a_call_centres_hour_is_not_a_breach_but_a_law_offices_is() -> None:
    # the tenant's daily cap is sized to its traffic: the default hourly cap scales
    g = guard(allow_countries=["PH"], tenant_spend_per_day=6000)
    assert not two_lines(g, 50)  # 50.00 in under an hour
    assert not [a for a in alerts(g) if "spend" in a]
    # on the default caps, one call at a time to an allowed country runs its course...
    law = guard(allow_countries=["PH"])
    t = T
    for _ in range(5):  # 5 x 11 minutes to PH at 0.50: over the default 20 in an hour
        assert call(law, attempt(PH, t), 11).allow
        t += 12 * 60
    # ... but two at once pass the cap and are cut off, with the reason
    law = guard(allow_countries=["PH"])
    assert two_lines(law, 50)
    cut = [a for a in alerts(law) if "spend-cap" in a]
    assert cut and "cut off: spend cap reached" in cut[0]


def test_learned_caps_scale_with_clean_days_and_an_admins_value_is_a_ceiling() -> None:
    g = guard(allow_countries=["PH"])
    for day in range(4):  # four clean days of 40 minutes of PH in one hour (20.00 spent)
        t = START + day * DAY
        for k in range(4):
            assert call(g, attempt(PH, t + k * 620), 10).allow, (day, k)
    base = g.baseline("acme", "1000")
    assert base is not None and base.usual_peak() is not None
    t = T
    for _ in range(6):  # 30.00 in an hour: under 1.5 x the busiest clean hour
        assert call(g, attempt(PH, t), 10).allow
        t += 610
    capped = guard(allow_countries=["PH"], spend_per_hour=15)
    capped.set_baseline("acme", "1000", base)
    t = T
    decisions = [call(capped, attempt(PH, t + k * 610), 10) for k in range(4)]
    assert not decisions[-1].allow and "set by the administrator" in decisions[-1].reasons[0]


def test_learning_pauses_while_the_extension_is_under_alert() -> None:
    g = guard(allow_countries=["PH"])
    office_history(g)
    ext = g._ext[("acme", "1000")]  # white box: the learning gate
    ext.alerted_at = T
    before = g.baseline("acme", "1000")
    assert before is not None
    calls_before, peaks_before = before.calls, len(before.peaks)
    for k in range(5):
        call(g, attempt(PH, T + 600 + k * 900), 10)
    call(g, attempt(HOME, T + 3 * HOUR), 1)  # settles the calls above
    after = g.baseline("acme", "1000")
    assert after is not None
    assert after.calls == calls_before and len(after.peaks) == peaks_before
    assert after.country_seen_days("PH") == 0


# -- known behaviour lowers the score ------------------------------------------------------


def test_an_extension_that_works_late_is_not_off_hours() -> None:
    g = guard(allow_countries=["PH"])
    office_history(g, days=8, numbers=(HOME, PH, "+13125550188"))
    late = T + 11 * HOUR  # 21:00
    first = call(g, attempt(PH, late - 6 * DAY), 5)
    assert first.allow and any("outside business hours" in r for r in first.reasons)
    for day in range(1, 5):  # more evenings at 21:00
        assert call(g, attempt(PH, late - 6 * DAY + day * DAY), 5).allow
    later = call(g, attempt(PH, late), 5)
    assert later.allow and later.severity is None
    assert any("usually calls at 21:00" in r for r in later.reasons), later.reasons


def test_forwarding_to_a_foreign_mobile_used_before_is_known() -> None:
    g = guard(allow_countries=["GB"], allow_international_forwarding=True)
    office_history(g)
    mobile = "+447400123456"
    for trip in (START + 2 * DAY, START + 9 * DAY):
        assert call(g, attempt(mobile, trip, kind="forward-change"), 0).allow
        for k in range(2):
            assert call(
                g, attempt(mobile, trip + (k + 1) * HOUR, kind="forwarded", caller=HOME), 3
            ).allow
    again = g.authorize(attempt(mobile, T, kind="forward-change"))
    assert again.allow and again.severity is None
    assert any("forwarded to +447400123456 before" in r for r in again.reasons), again.reasons


# -- reconnaissance scoped to the victim, graduated actions ---------------------------------


def test_reconnaissance_is_probes_aimed_at_the_diverted_extension() -> None:
    g = guard(allow_countries=["PH"], allow_international_forwarding=True)
    office_history(g)
    office_history(g, ext="1001")
    target = "+639178765432"
    # short calls from unseen foreign callers, but to another extension, and a known caller
    inbound(g, "1001", "+442079460001", T - 5 * HOUR, 20)
    inbound(g, "1001", "+442079460002", T - 4 * HOUR, 25)
    inbound(g, "1000", HOME, T - 9 * DAY, 300)
    inbound(g, "1000", HOME, T - 3 * HOUR, 20)
    calm = g.authorize(attempt("+639170000001", T, kind="forward-change"))
    assert calm.allow and not any("reconnaissance" in r for r in calm.reasons)
    # two short calls from callers never seen, to this extension, shortly before
    inbound(g, "1000", "anonymous", T + HOUR, 25)
    inbound(g, "1000", "+15125550199", T + 2 * HOUR, 30)
    hijack = g.authorize(attempt(target, T + 3 * HOUR, kind="forward-change"))
    assert not hijack.allow and hijack.rule == "recon"
    assert "short call(s) to extension 1000 from callers never seen" in hijack.reasons[0]
    assert g.is_suspended("acme", "1000") is None  # one sign: refused, not suspended
    # the phone diverts anyway: a second, independent sign suspends it
    diverted = g.authorize(attempt(target, T + 3.2 * HOUR, kind="forwarded", caller=HOME))
    assert not diverted.allow
    assert g.is_suspended("acme", "1000") is not None
    critical = [a for a in alerts(g) if a.startswith("critical")]
    assert critical and "corroborated: diversion-refused, recon" in critical[-1]


def test_one_anomalous_call_is_refused_without_suspension_or_alert() -> None:
    g = guard(allow_countries=["PH", "LV"], allow_high_risk=True)
    office_history(g)
    night = T + 13 * HOUR  # 23:00
    # a first call ever to a high-risk, dearer country at night from a law office desk
    decisions = [call(g, attempt("+37121234567", night + k * 300), 2) for k in range(3)]
    refused = [d for d in decisions if not d.allow]
    assert refused and refused[0].rule == "anomaly"
    assert "first call ever from extension 1000 to LV" in refused[0].reasons[0]
    assert g.is_suspended("acme", "1000") is None
    assert call(g, attempt(HOME, T + DAY), 2).allow  # ordinary calls go on


def test_a_new_network_and_probing_refused_destinations_suspend() -> None:
    g = guard()
    office_history(g)
    thief = "udp:203.0.113.9:5060"
    for k, number in enumerate(("+882163020000", "+5372345678", "+252612345678")):
        assert not g.authorize(attempt(number, T + 2 * HOUR + k * 20, source=thief)).allow
    g.authorize(attempt(HOME, T + 2 * HOUR + 80, source=thief))
    assert g.is_suspended("acme", "1000") is not None
    assert any("corroborated: new-network, probing" in a for a in alerts(g))


# -- slow drip --------------------------------------------------------------------------


def test_a_new_number_called_daily_for_long_calls_is_a_drip() -> None:
    g = guard(allow_countries=["PH"])
    office_history(g, days=9, numbers=(HOME, PH, "+13125550188"))
    for day in range(5):  # the extension calls PH often, short calls to several numbers
        assert call(g, attempt(f"+63917123{day:04d}", START + 9 * DAY + day * DAY + HOUR), 4).allow
    drip = "+639175550101"
    first = call(g, attempt(drip, T), 38)
    assert first.allow
    second = call(g, attempt(drip, T + DAY + HOUR), 38)
    assert not second.allow and second.rule == "drip"
    assert "slow-drip" in second.reasons[0] and "+639175550101" in second.reasons[0]
    assert g.is_suspended("acme", "1000") is None
    # long calls to the country are no licence for a desk whose calls are short on
    # average: the drip's own calls are long calls to PH, so an exemption for them would
    # let every drip through from its sixth day
    many = guard(allow_countries=["PH"])
    office_history(many, days=8, numbers=(HOME, PH, "+13125550188"))
    for day in range(3):
        t = START + 8 * DAY + day * DAY + HOUR
        assert call(many, attempt(f"+63917123{day:04d}", t), 25).allow
    assert call(many, attempt(drip, T), 38).allow
    assert not call(many, attempt(drip, T + DAY + HOUR), 38).allow
    # what is this extension's own habit: new contacts called back on later days for long
    # calls (a sales desk's follow-ups) raise the bar fivefold, and a drip still ends
    sales = guard(allow_countries=["PH", "GB"])
    office_history(sales, days=8, numbers=(HOME, PH, "+13125550188"))
    for k in range(3):  # called again two days later: a repeat counts once it held for days
        t = START + 8 * DAY + k * DAY + HOUR
        for again in (0, 2 * DAY):
            assert call(sales, attempt(f"+4479112345{k:02d}", t + again), 25).allow
    lost = 0
    for day in range(5):
        decision = call(sales, attempt(drip, T + day * DAY + HOUR), 38)
        if not decision.allow:
            assert decision.rule == "drip"
            break
        lost += 1
    assert lost == 3  # 19.00 a call: refused once 50.00 (5 x 10.00) is spent


def test_a_tenants_habit_of_calling_new_numbers_back_does_not_hide_a_drip_on_a_desk() -> None:
    """A hotel: the rooms' guests call new numbers back every evening; the desk still
    keeps its own bar, and only a phone whose calls are long anyway gets the higher one."""
    g = guard(allow_countries=["PH", "GB"])
    office_history(g, days=9, numbers=(HOME, PH, "+13125550188"))
    # five other phones of the tenant talk long every day (rooms whose guests phone home),
    # and each called a new number back two days later with nothing wrong
    for k in range(5):
        ext = f"30{k:02d}"
        office_history(g, ext=ext, days=9, minutes=25)
        t = START + 9 * DAY + k * 1200 + 2.5 * HOUR
        for again in (0, 2 * DAY):
            assert call(g, attempt(f"+4479112346{k:02d}", t + again, ext=ext), 25).allow
    assert g._tenants["acme"].baseline.drip_ok == 5
    # the desk almost never talks 20 minutes: the tenant's habit is not its own, and the
    # drip is refused at its second day
    drip = "+639175550101"
    assert call(g, attempt(drip, T), 38).allow
    second = call(g, attempt(drip, T + DAY + HOUR), 38)
    assert not second.allow and second.rule == "drip"
    assert "has no habit of calling new numbers back" in second.reasons[0]
    assert "Ask the user whether they know this number" in second.reasons[0]
    # a phone that talks long as a matter of course is judged by the tenant's bar: a new
    # number called back daily takes 50.00 before it is refused
    room = "3000"
    guest = "+639175550202"
    decisions = [
        call(g, attempt(guest, T + day * DAY + 2 * HOUR, ext=room), 38) for day in range(4)
    ]
    assert [d.allow for d in decisions] == [True, True, True, False]
    assert "refused from 50.00 USD" in decisions[3].reasons[0]
    assert g._ext[("acme", room)].baseline.talks_long()


def guest_room(g: Guard, room: str, lasting: str | None = None) -> None:
    """Two weeks of guests: each phones its own number at home on three evenings in a
    row and is never heard of again; ``lasting``, if given, is called on the first and
    the last of those days (a number the line keeps calling)."""
    for k in range(4):
        number = f"+63917555{k:04d}"
        for night in range(3):
            t = START + (3 * k + night) * DAY + HOUR
            assert call(g, attempt(number, t, ext=room), 15).allow
    if lasting is not None:
        for day in (0, 12):
            assert call(g, attempt(lasting, START + day * DAY + 2 * HOUR, ext=room), 3).allow


def test_a_line_whose_numbers_each_last_a_few_days_is_a_guest_room() -> None:
    """A guest room calls no number for long: every guest's home number is called over
    the nights of a stay and then never again. For it, a new number called back the
    next night is how it is used: the bar is the higher one, and a drip still ends."""
    g = guard(allow_countries=["PH"])
    guest_room(g, "3000")
    guest = "+639175550202"
    decisions = [call(g, attempt(guest, T + day * DAY, ext="3000"), 38) for day in range(4)]
    assert [d.allow for d in decisions] == [True, True, True, False]
    assert decisions[3].rule == "drip"
    assert "refused from 50.00 USD" in decisions[3].reasons[0]
    assert "as a guest room's guests do" in decisions[3].reasons[0]
    base = g._ext[("acme", "3000")].baseline
    assert Baseline.from_json(base.to_json()).runs == base.runs  # kept across restarts
    # one number called over two weeks is a lasting correspondent: not a guest room, so
    # the desk's bar holds and the second day is refused
    h = guard(allow_countries=["PH"])
    guest_room(h, "3000", lasting="+13125550188")
    assert call(h, attempt(guest, T, ext="3000"), 38).allow
    second = call(h, attempt(guest, T + DAY, ext="3000"), 38)
    assert not second.allow and second.rule == "drip"
    assert "refused from 10.00 USD" in second.reasons[0]
    # nor is a line whose calls cover fewer than 10 days: too new, or too quiet, to show
    # that none of its numbers lasts (a desk that called three contacts for a week)
    young = Baseline(first_at=START)
    for k in range(3):
        for night in range(2):
            young.learn_run(f"+63917556{k:04d}", 100 + 4 * k + night, 15.0)
    assert young.ended_runs(112, "") == 0  # calls from day 100 to day 109
    young.learn_run("+13125550188", 110, 3.0)
    assert young.ended_runs(113, "") == 3
    assert young.ended_runs(111, "") == 2  # the last guest's: 2 days ago, not yet over
    # a busy desk's one-off numbers never crowd out the number that lasts
    desk = Baseline(first_at=START)
    desk.learn_run("+13125550188", 100, 3.0)
    desk.learn_run("+13125550188", 110, 3.0)
    for k in range(200):
        desk.learn_run(f"+1312555{k:04d}", 111 + k // 20, 2.0)
    assert "+13125550188" in desk.runs and len(desk.runs) <= 64


def test_a_number_called_again_after_a_pause_is_a_follow_up_not_a_drip() -> None:
    g = guard(allow_countries=["PH"])
    office_history(g, days=9, numbers=(HOME, PH, "+13125550188"))
    contact = "+639175550303"
    for week in range(3):  # 38 minutes once a week: 19.00 each
        assert call(g, attempt(contact, T + week * 7 * DAY), 38).allow
    again = call(g, attempt(contact, T + 18 * DAY), 5)
    assert not again.allow and again.rule == "drip"  # 57.00: past the 50.00 bar
    assert "its last call was 4 days ago, not day after day" in again.reasons[0]


def test_a_refused_drip_never_counts_as_an_ordinary_repeat() -> None:
    g = guard(allow_countries=["PH"])
    office_history(g, days=9, numbers=(HOME, PH, "+13125550188"))
    drip = "+639175550101"
    decisions = [call(g, attempt(drip, T + day * DAY + HOUR), 38) for day in range(8)]
    # refused attempts keep it "day after day": it stays refused, past the 3-day gap
    assert [d.allow for d in decisions] == [True] + [False] * 7
    # refused from its second day on: an alert about the extension since its first call,
    # so neither the extension nor the tenant learned it as usual
    assert g._ext[("acme", "1000")].baseline.drip_ok == 0
    assert g._tenants["acme"].baseline.drip_ok == 0
    # and a repeat counts for the extension only once it held for days: a new number
    # called on two consecutive days is not yet usual
    other = guard(allow_countries=["PH"])
    office_history(other, days=9, numbers=(HOME, PH, "+13125550188"))
    assert call(other, attempt("+639175550404", T), 5).allow
    assert call(other, attempt("+639175550404", T + DAY), 5).allow
    entry = other._ext[("acme", "1000")].baseline.ledger["+639175550404"]
    assert other._tenants["acme"].baseline.drip_ok == 1  # the tenant's: on two days
    assert not entry.credited  # the extension's: not before it held two days
    assert call(other, attempt("+639175550404", T + 2 * DAY), 5).allow
    assert entry.credited and other._tenants["acme"].baseline.drip_ok == 1


def test_long_calls_are_a_habit_when_calls_last_8_minutes_on_average() -> None:
    base = Baseline(START)
    for _ in range(9):
        base.learn_length(10.0)
    assert not base.talks_long()  # nine calls are no habit yet
    base.learn_length(10.0)
    assert base.talks_long()  # 100 minutes in 10 calls: a guest room, family abroad
    for _ in range(5):
        base.learn_length(2.0)
    assert not base.talks_long()  # 110 minutes in 15 calls
    again = Baseline.from_json(base.to_json())
    assert (again.answered, again.talked) == (15, 110.0)


def test_long_calls_alone_are_no_licence_for_a_drip() -> None:
    # staff calling family abroad talk as long as a guest room: without the tenant's
    # habit of calling new numbers back, a phone with long calls keeps the low bar
    g = guard(allow_countries=["PH"])
    office_history(g, ext="3000", days=9, minutes=25)
    assert g._ext[("acme", "3000")].baseline.talks_long()
    drip = "+639175550202"
    decisions = [
        call(g, attempt(drip, T + day * DAY + 2 * HOUR, ext="3000"), 38) for day in range(2)
    ]
    assert [d.allow for d in decisions] == [True, False]
    assert (
        "refused from 10.00 USD: extension 3000's calls are long, but" in (decisions[1].reasons[0])
    )


def test_a_drips_own_long_calls_do_not_make_long_calls_usual() -> None:
    g = guard(allow_countries=["PH"])
    # a quiet desk: 12 national calls of 6 minutes
    office_history(g, days=6, numbers=(HOME, PH, "+13125550188"), minutes=6)
    for k in range(3):
        assert call(g, attempt(HOME, START + 6 * DAY + k * HOUR), 6).allow
    base = g._ext[("acme", "1000")].baseline
    assert base.mature(T) and base.answered >= 10 and not base.talks_long()
    drip = "+639175550101"
    assert call(g, attempt(drip, T), 38).allow
    # with the drip's 38 minutes its average passes 8 minutes; without them it does not
    entry = base.ledger[drip]
    assert base.talked >= 8 * base.answered and not base.talks_long(entry)
    second = call(g, attempt(drip, T + DAY + HOUR), 38)
    assert not second.allow and second.rule == "drip"


# -- wangiri ----------------------------------------------------------------------------


def test_calling_back_a_number_that_rang_many_extensions_once_is_refused() -> None:
    g = guard(allow_countries=["PH"])
    bait = "+639209876543"
    for k in range(12):
        inbound(g, str(2000 + k), bait, T + k * 40, None)  # one ring each, no answer
    back = g.authorize(attempt(bait, T + HOUR, ext="2003"))
    assert not back.allow and back.rule == "wangiri"
    assert "rang 12 extensions" in back.reasons[0]
    # a number that rang one extension is a missed call, and calling back is fine
    inbound(g, "2001", "+639201112223", T, None)
    assert g.authorize(attempt("+639201112223", T + HOUR, ext="2001")).allow


# -- test call then pump, spread --------------------------------------------------------


def test_a_test_call_then_a_pump_into_the_range_is_refused_at_its_first_call() -> None:
    cuba = (HOME, "+5371500049", "+13125550188")
    g = guard(allow_countries=["CU"], allow_high_risk=True)
    office_history(g, numbers=cuba)
    test = call(g, attempt("+5351234567", T), 0.5)
    assert test.allow
    pump = g.authorize(attempt("+5351230001", T + 5 * HOUR, source="udp:203.0.113.4:5060"))
    assert not pump.allow and pump.rule == "range"
    assert "test-call-then-pump" in pump.reasons[0]
    # the number itself called back is not the pattern
    g2 = guard(allow_countries=["CU"], allow_high_risk=True)
    office_history(g2, numbers=cuba)
    call(g2, attempt("+5351234567", T), 0.5)
    assert g2.authorize(attempt("+5351234567", T + 5 * HOUR)).allow


def spread(g: Guard, count: int, source: str = OFFICE) -> tuple[list[int], Decision]:
    """Extensions 3000... each calling a new number of +535123, 150 s apart."""
    refs = []
    for k in range(count):
        a = attempt(f"+535123{k:04d}", T + k * 150, ext=str(3000 + k), source=source)
        decision = g.authorize(a)
        if decision.allow:
            ref = next(_refs)
            g.on_call_start(a, ref)
            g.on_call_answer(ref, a.at)
            refs.append(ref)
    return refs, decision


def test_one_range_from_many_extensions_is_refused_and_its_calls_cut() -> None:
    g = guard(allow_countries=["CU"], allow_high_risk=True)
    refs, decision = spread(g, 5)  # phones without history: five are needed
    assert len(refs) == 4
    assert "extensions of tenant acme called 5 numbers in the range" in decision.reasons[0]
    cut = {r for r, _ in g.police(T + 800)}
    assert set(refs) <= cut
    # the range stays refused for the other extensions too
    assert not g.authorize(attempt("+5351239999", T + HOUR, ext="3009")).allow
    # phones calling from networks they never used: three are enough
    g = guard(allow_countries=["CU"], allow_high_risk=True)
    for k in range(4):
        office_history(g, ext=str(3000 + k), days=7, numbers=(HOME, "+5371500049", HOME))
    refs, decision = spread(g, 3, source="udp:203.0.113.7:5060")
    assert len(refs) == 2 and not decision.allow and decision.rule == "range"


# -- report-only -------------------------------------------------------------------------


def test_report_only_while_learning_then_enforcing_when_promoted() -> None:
    policy = {"allow_countries": ["PH"], "learning_days": 30}
    g = guard(**policy)
    office_history(g, numbers=(HOME, PH, "+13125550188"))
    drip = "+639175550101"
    call(g, attempt(drip, T), 38)
    alerts(g)
    second = call(g, attempt(drip, T + DAY + HOUR), 38)
    assert second.allow and second.reasons[0].startswith("would have refused (drip")
    assert any(a.startswith("warning:report-only:drip:Would have refused") for a in alerts(g))
    assert g.would_have == {("acme", "drip"): 1}
    promoted = guard(**policy, enforce=["drip"])
    office_history(promoted, numbers=(HOME, PH, "+13125550188"))
    call(promoted, attempt(drip, T), 38)
    assert not call(promoted, attempt(drip, T + DAY + HOUR), 38).allow
    # any rule can be kept in report-only by name
    wangiri = guard(allow_countries=["PH"], report_only=["wangiri"])
    for k in range(4):
        inbound(wangiri, str(2000 + k), "+639209876543", T + k * 40, None)
    assert wangiri.authorize(attempt("+639209876543", T + HOUR, ext="2000")).allow


def test_old_baseline_rows_still_load() -> None:
    old = {
        "first_at": START,
        "calls_by_hour": [1.0] * 168,
        "spend_by_day": [2.0] * 7,
        "countries": {"US": 5},
        "targets": [HOME],
        "calls": 12,
    }
    base = Baseline.from_json(old)
    assert base.calls == 12 and base.targets == {HOME} and base.peaks == []
    assert base.hour_days == [0] * 24 and base.ledger == {}
    again = Baseline.from_json(base.to_json())
    assert again.to_json() == base.to_json()


def test_a_spread_into_a_range_the_tenant_calls_needs_new_numbers_and_odd_phones() -> None:
    g = guard(allow_countries=["CU"], allow_high_risk=True)
    family = ("+5351230001", "+5351230002", "+5351230003")
    for day in range(10):  # five extensions call home and family in +535123 every day
        for k in range(5):
            for i, number in enumerate((HOME, family[k % 3], "+13125550188")):
                at = START + day * DAY + k * 600 + i * HOUR
                assert call(g, attempt(number, at, ext=str(3000 + k)), 3).allow
    # new numbers in that range from three phones registered elsewhere: a spread
    thief = "udp:203.0.113.{}:5060"
    decisions = []
    for k in range(3):
        a = attempt(f"+535123{9000 + k}", T + k * 150, ext=str(3000 + k), source=thief.format(k))
        decisions.append(g.authorize(a))
        if decisions[-1].allow:
            g.on_call_start(a, next(_refs))
    assert [d.allow for d in decisions] == [True, True, False]
    assert "never called before in the range +535123" in decisions[2].reasons[0]
    # the same from the extensions' own phones: five are needed (ordinary families)
    calm = guard(allow_countries=["CU"], allow_high_risk=True)
    for day in range(10):
        for k in range(5):
            for i, number in enumerate((HOME, family[k % 3], "+13125550188")):
                at = START + day * DAY + k * 600 + i * HOUR
                assert call(calm, attempt(number, at, ext=str(3000 + k)), 3).allow
    for k in range(3):
        a = attempt(f"+535123{9000 + k}", T + k * 150, ext=str(3000 + k))
        assert calm.authorize(a).allow
        calm.on_call_start(a, next(_refs))


def test_a_day_is_judged_against_the_extensions_busy_days_too() -> None:
    """A guest room: most days nothing, some days a guest phones home for 15.00. A day
    of 20.00 is far above its average, but not above twice its busy days."""
    import datetime as dt

    from pbxwarden.guard import rules
    from pbxwarden.guard.state import ExtState, TenantState

    def judged(busy_day: float) -> list[str]:
        base = Baseline(START - 14 * DAY)
        base.calls = 40
        base.spend_by_day = [2.0] * 7  # 14.00 a week in four weeks: 0.50 a day
        for day in range(3):
            base.learn_peak(700_000 + day, busy_day, busy_day)
        ext = ExtState(base)
        ext.spend.add(T - 60, 20.0)
        a = attempt(PH, T)
        assert a.destination is not None
        local = dt.datetime.fromtimestamp(T, dt.UTC)
        _, why = rules.score(
            a,
            ext,
            TenantState(Baseline(START)),
            a.destination,
            0.5,
            local,
            True,
            None,
            "USD",
            False,
        )
        return why

    assert not [w for w in judged(15.0) if w.startswith("spend")]
    spend = [w for w in judged(2.0) if w.startswith("spend")]
    assert spend and "over twice its busy days (2.00 USD)" in spend[0]


def test_the_drip_ledger_survives_export_and_import() -> None:
    g = guard(allow_countries=["PH"])
    office_history(g, days=9, numbers=(HOME, PH, "+13125550188"))
    for day in range(3):
        assert call(g, attempt("+639175550404", T + day * DAY), 5).allow
    base = g._ext[("acme", "1000")].baseline
    again = Baseline.from_json(base.to_json())
    assert again.ledger == base.ledger and again.answered == base.answered
    assert again.talked == base.talked
