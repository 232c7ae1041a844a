"""The guard's rules, one by one, with readable reasons."""

from __future__ import annotations

from pbxwarden.guard.engine import Guard, GuardConfig, TenantPolicy, load_high_risk
from pbxwarden.pbx.numbers import classify
from pbxwarden.pbx.policy import CallAttempt

T0 = 1_800_000_000.0


def attempt(
    dialed: str,
    *,
    kind: str = "external",
    at: float = T0,
    ext: str = "1000",
    tenant: str = "acme",
    country: str = "US",
) -> CallAttempt:
    return CallAttempt(
        tenant, ext, ext, dialed, kind, "udp:192.0.2.1:5060", at, classify(dialed, country)
    )


def guard(**policy: object) -> Guard:
    return Guard(GuardConfig(tenants={"acme": TenantPolicy(**policy)}))  # type: ignore[arg-type]


def test_closed_by_default() -> None:
    g = Guard()
    assert g.authorize(attempt("2025550143")).allow
    assert g.authorize(attempt("8005550100")).allow  # toll free
    for dialed, why in [
        ("19005550123", "premium-rate number"),
        ("011442079460000", "international call to +442079460000 (GB)"),
        ("+882163020000", "international call"),
        ("18095550123", "international call"),  # Dominican Republic dials like a US number
        ("12", "not a valid telephone number"),
    ]:
        decision = g.authorize(attempt(dialed, tenant="other"))
        assert not decision.allow and why in decision.reasons[0], (dialed, decision)


def test_internal_inbound_always_allowed() -> None:
    g = Guard()
    assert g.authorize(attempt("2000", kind="internal")).allow
    assert g.authorize(attempt("2025550100", kind="inbound")).allow


def test_allowed_countries_still_respect_the_high_risk_list() -> None:
    g = guard(allow_countries=["DE", "LV"])
    ok = g.authorize(attempt("011493012345678"))
    assert ok.allow and "calls to DE are allowed" in ok.reasons
    risky = g.authorize(attempt("01137167123456"))
    assert not risky.allow and "high-risk destination" in risky.reasons[0]
    assert "Latvia" in risky.reasons[0]
    assert (
        guard(allow_countries=["LV"], allow_high_risk=True)
        .authorize(attempt("01137167123456"))
        .allow
    )


def test_special_numbers_need_explicit_allowance() -> None:
    assert not guard().authorize(attempt("19005550123")).allow
    assert guard(allow_special=["premium-rate"]).authorize(attempt("19005550123")).allow


def test_allow_and_deny_prefixes() -> None:
    g = guard(allow_prefixes=["+4420794"], deny_prefixes=["+1202555"])
    assert g.authorize(attempt("011442079460000")).allow  # partner abroad, explicitly allowed
    denied = g.authorize(attempt("2025550143"))
    assert not denied.allow and "deny list" in denied.reasons[0]


def test_concurrency_limits() -> None:
    g = guard(max_concurrent_per_extension=2, max_concurrent_calls=3, calls_per_minute=100)
    for ref in (1, 2):
        a = attempt("2025550143", at=T0 + ref)
        assert g.authorize(a).allow
        g.on_call_start(a, ref)
    third = g.authorize(attempt("2025550143", at=T0 + 3))
    assert not third.allow and "2 costly calls in progress" in third.reasons[0]
    other = attempt("2025550143", at=T0 + 3, ext="1001")
    assert g.authorize(other).allow
    g.on_call_start(other, 3)
    tenant_full = g.authorize(attempt("2025550143", at=T0 + 4, ext="1002"))
    assert not tenant_full.allow and "tenant acme" in tenant_full.reasons[0]
    g.on_call_end(1, T0 + 5)
    assert g.authorize(attempt("2025550143", at=T0 + 5)).allow


def test_rate_limits_per_minute_and_hour() -> None:
    g = guard(calls_per_minute=3, calls_per_hour=5)
    results = [g.authorize(attempt("2025550143", at=T0 + i)).allow for i in range(4)]
    assert results == [True, True, True, False]
    later = [g.authorize(attempt("2025550143", at=T0 + 120 + i)).allow for i in range(3)]
    assert later == [True, True, False]  # 5 in the last hour
    assert "last hour" in g.authorize(attempt("2025550143", at=T0 + 300)).reasons[0]
    assert g.authorize(attempt("2025550143", at=T0 + 3700)).allow  # the hour has passed


def test_forwarding_changes_are_judged_but_not_counted() -> None:
    g = guard(calls_per_minute=1)
    for i in range(5):
        assert g.authorize(attempt("2025550143", kind="forward-change", at=T0 + i)).allow
    assert not g.authorize(attempt("19005550123", kind="forward-change")).allow
    assert g.authorize(attempt("2025550143", at=T0 + 10)).allow


def test_bundled_high_risk_list_is_sane() -> None:
    entries = load_high_risk()
    assert len(entries) >= 20
    assert all(e.prefix.startswith("+") and e.prefix[1:].isdigit() for e in entries)
    assert {"+882", "+53", "+371"} <= {e.prefix for e in entries}
