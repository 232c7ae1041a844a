"""Hours, overrides, spend, suspension, learned baselines and the reconnaissance pattern."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from pbxwarden.guard.engine import Guard, GuardConfig, PolicyOverride, TenantPolicy
from pbxwarden.guard.policy import parse_window
from pbxwarden.guard.rates import RateError, RateTable
from pbxwarden.pbx.numbers import classify
from pbxwarden.pbx.policy import CallAttempt

# Tuesday 2028-05-02 10:00 UTC (12:00 in Berlin)
TUESDAY_10 = 1_840_874_400.0
HOUR = 3600.0
DAY = 86400.0


def attempt(
    dialed: str,
    *,
    kind: str = "external",
    at: float = TUESDAY_10,
    ext: str = "1000",
    tenant: str = "acme",
    caller: str | None = None,
) -> CallAttempt:
    return CallAttempt(
        tenant,
        ext,
        caller if caller is not None else ext,
        dialed,
        kind,
        "udp:192.0.2.1:5060",
        at,
        classify(dialed, "US"),
    )


def guard(**policy: object) -> Guard:
    return Guard(GuardConfig(tenants={"acme": TenantPolicy(**policy)}))  # type: ignore[arg-type]


def call(g: Guard, a: CallAttempt, ref: int, minutes: float) -> float | None:
    """An allowed attempt answered at once and lasting ``minutes``."""
    g.on_call_start(a, ref)
    g.on_call_answer(ref, a.at)
    return g.on_call_end(ref, a.at + minutes * 60)


def test_business_hours_switch_to_the_after_hours_policy() -> None:
    g = guard(
        allow_countries=["DE"],
        timezone="Europe/Berlin",
        business_hours=["mon-fri 08:00-18:00"],
        after_hours=PolicyOverride(allow_countries=[]),
    )
    germany = "011493012345678"
    assert g.authorize(attempt(germany)).allow  # 11:00 in Berlin
    night = g.authorize(attempt(germany, at=TUESDAY_10 + 12 * HOUR))  # 23:00
    assert not night.allow and "outside business hours" in night.reasons[0]
    saturday = g.authorize(attempt(germany, at=TUESDAY_10 + 4 * DAY))
    assert not saturday.allow
    assert g.authorize(attempt("2025550143", at=TUESDAY_10 + 12 * HOUR)).allow


def test_windows_and_bad_policies_are_refused_clearly() -> None:
    w = parse_window("fri-mon 22:00-24:00")
    assert w.days == frozenset({4, 5, 6, 0}) and w.end == 1440
    for bad in ("weekdays 8-18", "mon-fri 18:00-08:00", "xyz 08:00-09:00"):
        with pytest.raises(ValueError):
            parse_window(bad)
    with pytest.raises(ValidationError, match="unknown time zone"):
        TenantPolicy(timezone="Mars/Olympus")
    with pytest.raises(ValidationError, match="business hours"):
        TenantPolicy(business_hours=["9 to 5"])


def test_extension_override_narrows_the_tenant_policy() -> None:
    g = guard(allow_countries=["DE"], extensions={"1001": PolicyOverride(allow_countries=[])})
    assert g.authorize(attempt("011493012345678")).allow
    lobby = g.authorize(attempt("011493012345678", ext="1001"))
    assert not lobby.allow and "DE" in lobby.reasons[0]


def test_warning_before_the_limit_then_refusal() -> None:
    g = guard(calls_per_minute=5)
    decisions = [g.authorize(attempt("2025550143", at=TUESDAY_10 + i)) for i in range(6)]
    assert [d.allow for d in decisions] == [True] * 5 + [False]
    assert decisions[0].severity is None
    assert decisions[3].severity == "warning" and "close to the limit" in decisions[3].reasons[0]
    assert decisions[5].rule == "limit"
    assert {a.rule for a in g.outbox} == {"limit"}


def test_same_prefix_sequence_is_limited() -> None:
    g = guard(allow_countries=["DE"], same_prefix_calls=3, calls_per_minute=100)
    results = [
        g.authorize(attempt(f"0114930123456{i:02d}", at=TUESDAY_10 + i * 30)) for i in range(4)
    ]
    assert [r.allow for r in results] == [True, True, True, False]
    assert "+49301 prefix 3 times in 10 minutes" in results[3].reasons[0]
    assert g.authorize(attempt("011493012345699", at=TUESDAY_10 + 700)).allow


def test_rate_table_prices_and_overrides(tmp_path: Path) -> None:
    rates = RateTable.bundled()
    premium = classify("19005550123", "US")
    latvia = classify("+37167123456", "US")
    toll_free = classify("8005550100", "US")
    assert premium is not None and latvia is not None and toll_free is not None
    assert rates.per_minute(premium) == 2.0
    assert rates.per_minute(latvia) == 0.4
    assert rates.per_minute(toll_free) == 0.0
    path = tmp_path / "rates.toml"
    path.write_text('default = 1.0\n[prefixes]\n"+371" = 0.9\n')
    assert RateTable.from_file(path).per_minute(latvia) == 0.9
    path.write_text('[prefixes]\n"371" = 0.9\n')
    with pytest.raises(RateError, match="not like"):
        RateTable.from_file(path)
    with pytest.raises(RateError, match="rate table"):
        RateTable.from_file(tmp_path / "missing.toml")


def test_spend_caps_refuse_new_calls_and_cut_calls_in_progress() -> None:
    g = guard(allow_countries=["LV"], allow_high_risk=True, spend_per_hour=10.0)
    latvia = "+37167123456"  # 0.40 a minute
    first = attempt(latvia)
    assert g.authorize(first).allow
    assert call(g, first, 1, minutes=20) == pytest.approx(8.0)
    second = attempt(latvia, at=TUESDAY_10 + 21 * 60)
    assert g.authorize(second).allow
    g.on_call_start(second, 2)
    g.on_call_answer(2, second.at)
    assert g.police(second.at + 60) == []  # 8.40 so far
    cut = g.police(second.at + 6 * 60)  # 8.00 + 2.40 > 10
    assert [ref for ref, _ in cut] == [2] and "spend cap" in cut[0][1]
    assert any(a.rule == "spend-cap" and a.severity == "critical" for a in g.outbox)
    g.on_call_end(2, second.at + 6 * 60)
    refused = g.authorize(attempt(latvia, at=TUESDAY_10 + 30 * 60))
    assert (
        not refused.allow
        and "spent an estimated 10.40 USD in the last hour" in (refused.reasons[0])
    )
    assert g.authorize(attempt(latvia, at=TUESDAY_10 + 2 * HOUR)).allow


def test_maximum_duration_cuts_costly_calls() -> None:
    g = guard(max_call_minutes=30)
    a = attempt("2025550143")
    assert g.authorize(a).allow
    g.on_call_start(a, 7)
    g.on_call_answer(7, a.at)
    assert g.police(a.at + 29 * 60) == []
    assert [r for r, _ in g.police(a.at + 31 * 60)] == [7]


def test_suspension_refuses_cuts_and_follows_the_store() -> None:
    g = guard()
    a = attempt("2025550143")
    assert g.authorize(a).allow
    g.on_call_start(a, 1)
    g.suspend("acme", "1000", "stolen password")
    assert [r for r, _ in g.police(a.at + 1)] == [1]
    g.on_call_end(1, a.at + 1)
    refused = g.authorize(attempt("2025550143", at=a.at + 2))
    assert not refused.allow and "suspended (stolen password)" in refused.reasons[0]
    assert g.authorize(attempt("2000", kind="internal")).allow  # internal calls still work
    # The store knows of it; later an admin resumes it there.
    g.sync_suspensions({("acme", "1000"): "stolen password"})
    g.sync_suspensions({})
    assert g.authorize(attempt("2025550143", at=a.at + 3)).allow
    # A suspension the guard just made is not undone by an older snapshot.
    g.suspend("acme", "1000", "fresh")
    g.sync_suspensions({})
    assert g.is_suspended("acme", "1000") == "fresh"


def learn_two_weeks(g: Guard, ext: str = "1000") -> float:
    """Two weeks of office calls: national numbers and Germany, working hours."""
    ref = 1000
    t = TUESDAY_10 - 14 * DAY
    for day in range(14):
        for i in range(4):
            at = t + day * DAY + i * HOUR
            dialed = "011493012345678" if i == 0 else f"20255501{40 + i}"
            a = attempt(dialed, at=at, ext=ext)
            decision = g.authorize(a)
            assert decision.allow, decision
            ref += 1
            call(g, a, ref, minutes=3)
    return TUESDAY_10


def test_first_call_to_a_new_country_is_explained() -> None:
    g = guard(allow_countries=["DE", "FR"], same_prefix_calls=50, calls_per_hour=200)
    now = learn_two_weeks(g)
    assert g.authorize(attempt("011493012345678", at=now)).severity is None
    france = g.authorize(attempt("01133142360000", at=now + 60))
    assert france.allow and france.severity == "warning" and france.score >= 50
    assert any("first call ever from extension 1000 to FR" in r for r in france.reasons)
    assert any("nobody in tenant acme ever called FR" in r for r in france.reasons)


def test_a_burst_abroad_at_night_is_blocked_and_suspends() -> None:
    g = guard(
        allow_countries=["DE", "FR"],
        calls_per_minute=100,
        calls_per_hour=200,
        same_prefix_calls=100,
        business_hours=["mon-fri 08:00-18:00"],
    )
    now = learn_two_weeks(g) + 14 * HOUR  # midnight
    decisions = [g.authorize(attempt(f"011331423600{i:02d}", at=now + i * 20)) for i in range(8)]
    assert decisions[0].allow and decisions[0].severity == "warning"
    blocked = next(d for d in decisions if not d.allow)
    assert blocked.rule == "anomaly" and "likely fraud" in blocked.reasons[0]
    # one sign of compromise (its own anomaly) refuses; it takes two to suspend
    assert g.is_suspended("acme", "1000") is None
    thief = CallAttempt(
        "acme",
        "1000",
        "1000",
        "01133142360099",
        "external",
        "udp:203.0.113.5:5060",
        now + 300,
        classify("01133142360099", "US"),
    )
    assert not g.authorize(thief).allow
    assert g.is_suspended("acme", "1000") is not None
    alert = next(a for a in g.outbox if a.suspend)
    assert alert.severity == "critical"
    assert "suspended until an admin resumes it (corroborated: anomaly, new-network)" in (
        alert.summary
    )


def test_reconnaissance_then_diversion_abroad_is_blocked() -> None:
    policy = {
        "allow_countries": ["DE", "LV"],
        "allow_high_risk": True,
        "allow_international_forwarding": True,
    }
    g = guard(**policy)
    # Without probing calls, the same diversion is allowed (with a warning at most).
    # (A diversion to a cheap foreign mobile is not judged for probes: no money in it.)
    assert g.authorize(attempt("01137121238657", kind="forward-change", ext="1001")).allow
    # Two short calls from withheld and foreign numbers to the company's number...
    for ref, caller in ((1, "anonymous"), (2, "+442079460000")):
        probe = attempt("+12025550100", kind="inbound", caller=caller, at=TUESDAY_10 + ref)
        g.on_call_start(probe, ref)
        g.on_call_answer(ref, probe.at + 5)
        g.on_call_end(ref, probe.at + 25)
    # ... a national caller and a long call are not probes.
    normal = attempt("+12025550100", kind="inbound", caller="+12025550177", at=TUESDAY_10 + 3)
    g.on_call_start(normal, 3)
    g.on_call_end(3, normal.at + 10)
    change = g.authorize(attempt("01137121238657", kind="forward-change", at=TUESDAY_10 + 2 * HOUR))
    assert not change.allow and change.rule == "recon"
    assert any("reconnaissance pattern" in r for r in change.reasons)
    assert "withheld" in change.reasons[0] and "+442079460000" in change.reasons[0]
    assert g.is_suspended("acme", "1000") is None  # one sign: refused, alerted
    assert change.severity == "warning"
    # the phone diverts there anyway: a second sign, the extension is suspended
    used = g.authorize(
        attempt(
            "01137121238657", kind="forwarded", caller="+12025550177", at=TUESDAY_10 + 2.5 * HOUR
        )
    )
    assert not used.allow and used.severity == "critical"
    assert g.is_suspended("acme", "1000") is not None


def test_diverted_premium_call_is_critical_and_suspends() -> None:
    g = guard()
    set_it = g.authorize(attempt("19005550123", kind="forward-change"))
    assert not set_it.allow and set_it.severity == "warning"
    assert g.is_suspended("acme", "1000") is None
    # the phone diverts to premium rate itself: who but a premium number's owner gains?
    used = g.authorize(attempt("19005550123", kind="forwarded", caller="+12025550100"))
    assert not used.allow and used.severity == "critical"
    assert used.rule == "forwarding-destination"
    assert g.is_suspended("acme", "1000") is not None
    alerts = list(g.outbox)
    assert alerts[-1].suspend and alerts[-1].key == "acme/1000/forwarding-destination/forwarded"
    # the diversion being set and then followed are two alerts, not one reused
    assert alerts[-2].key == "acme/1000/forwarding-destination/forward-change"
    assert "corroborated: diversion-refused, revenue-share" in alerts[-1].summary


def test_a_refused_diversion_abroad_alone_does_not_suspend() -> None:
    g = guard(allow_countries=["GB"])  # no international forwarding
    used = g.authorize(attempt("011447400123456", kind="forwarded", caller="+12025550100"))
    assert not used.allow and used.rule == "forwarding-destination"
    assert used.severity == "warning" and g.is_suspended("acme", "1000") is None


def test_national_forwarding_is_not_an_alert() -> None:
    g = guard()
    decision = g.authorize(attempt("2025550143", kind="forward-change"))
    assert decision.allow and decision.severity is None
    assert not g.outbox


def test_baselines_survive_export_and_import() -> None:
    g = guard(allow_countries=["DE", "FR"], same_prefix_calls=50, calls_per_hour=200)
    now = learn_two_weeks(g)
    g.authorize(attempt("2025550143", at=now + 2 * HOUR))  # settles the last hour's calls
    rows = g.export_baselines()
    assert {(t, e) for t, e, _ in rows} == {("acme", "1000"), ("acme", "")}
    assert g.export_baselines() == []  # only what changed since
    fresh = guard(allow_countries=["DE", "FR"], same_prefix_calls=50, calls_per_hour=200)
    fresh.import_baselines(rows)
    baseline = fresh.baseline("acme", "1000")
    assert baseline is not None and baseline.mature(now) and baseline.countries["DE"] == 14
    france = fresh.authorize(attempt("01133142360000", at=now + 3 * HOUR))
    assert any("first call ever from extension 1000 to FR" in r for r in france.reasons)


def test_a_tenant_adds_its_own_premium_ranges() -> None:
    """A tenant's carrier bills a range libphonenumber calls ordinary: the tenant lists it
    (dialplan syntax) and the guard refuses it like premium rate, saying why."""
    g = guard(premium_ranges=["+1202555XXXX"])
    refused = g.authorize(attempt("2025550143"))
    assert not refused.allow and refused.rule == "destination"
    assert "tenant's premium range +1202555XXXX" in refused.reasons[0]
    assert g.authorize(attempt("2025560143")).allow  # just outside it
    # the bundled ranges need nothing: NXX-976 is premium rate for every tenant
    bundled = guard().authorize(attempt("2129765555"))
    assert not bundled.allow and "NXX-976" in bundled.reasons[0]
    with pytest.raises(ValueError, match="range"):
        TenantPolicy(premium_ranges=["+1NXX-976"])
