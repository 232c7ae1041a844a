"""Number classification: emergency numbers per country, short codes by cost, costly
ranges libphonenumber types as ordinary, and where emergency calls are routed."""

from __future__ import annotations

import pytest

from pbxwarden.pbx.forwarding import judge_target
from pbxwarden.pbx.numbers import (
    bundled_costly_ranges,
    classify,
    compile_pattern,
    emergency_number,
)
from pbxwarden.pbx.policy import DefaultPolicy
from pbxwarden.pbx.routing import Did, Routing, Trunk


@pytest.mark.parametrize(
    ("country", "dialed", "number"),
    [
        ("US", "911", "911"),
        ("US", "9911", "911"),  # Kari's Law: with the outside-line prefix too
        ("US", "112", "112"),
        ("GB", "999", "999"),
        ("GB", "112", "112"),
        ("GB", "9999", "999"),
        ("ES", "112", "112"),
        ("DE", "112", "112"),
        ("DE", "110", "110"),
        ("DE", "0110", "110"),
        ("FR", "15", "15"),
        ("FR", "17", "17"),
        ("FR", "18", "18"),
        ("FR", "112", "112"),
    ],
)
def test_emergency_numbers_of_each_country(country: str, dialed: str, number: str) -> None:
    assert emergency_number(dialed, country) == number


@pytest.mark.parametrize(
    ("country", "dialed"),
    [
        ("DE", "911"),  # not an emergency number in Germany
        ("US", "999"),
        ("US", "2025550143"),
        ("US", "+1911"),
        ("US", "91"),
        ("US", "*72911"),
        ("GB", "1000"),
        ("FR", "3615"),
    ],
)
def test_other_numbers_are_not_emergency_numbers(country: str, dialed: str) -> None:
    assert emergency_number(dialed, country) is None


@pytest.mark.parametrize(
    ("country", "dialed", "number_type"),
    [
        ("ES", "11811", "premium-rate"),  # directory enquiries, billed at premium rate
        ("FR", "3615", "premium-rate"),  # Minitel-era kiosk code
        ("US", "611", "toll-free"),
        ("DE", "116116", "toll-free"),
        ("ES", "091", "standard-rate"),
        ("US", "411", "short-code"),  # cost unknown to libphonenumber: closed by default
    ],
)
def test_short_codes_are_typed_by_their_expected_cost(
    country: str, dialed: str, number_type: str
) -> None:
    dest = classify(dialed, country)
    assert dest is not None and dest.valid and dest.short and dest.national
    assert (dest.number_type, dest.e164, dest.country) == (number_type, dialed, country)


def test_short_codes_route_by_their_country_calling_code() -> None:
    dest = classify("11811", "ES")
    assert dest is not None and dest.route_key == "+34"
    full = classify("+34912345678", "ES")
    assert full is not None and not full.short and full.route_key == "+34912345678"


def test_premium_short_codes_and_costly_ranges_are_refused_by_default() -> None:
    policy = DefaultPolicy()
    from pbxwarden.pbx.policy import CallAttempt

    for dialed, country in (("11811", "ES"), ("3615", "FR"), ("2129761234", "US")):
        dest = classify(dialed, country)
        attempt = CallAttempt("t", "1000", "1000", dialed, "external", "udp:x", 0.0, dest)
        assert not policy.authorize(attempt).allow, dialed
    for dialed, country in (("611", "US"), ("2025550143", "US"), ("091", "ES")):
        dest = classify(dialed, country)
        attempt = CallAttempt("t", "1000", "1000", dialed, "external", "udp:x", 0.0, dest)
        assert policy.authorize(attempt).allow, dialed


@pytest.mark.parametrize(
    ("dialed", "country"),
    [("2129765555", "US"), ("+13109761234", "US"), ("4165551212", "CA"), ("+12125551212", "US")],
)
def test_bundled_costly_ranges_make_ordinary_looking_numbers_premium(
    dialed: str, country: str
) -> None:
    dest = classify(dialed, country)
    assert dest is not None and dest.valid
    assert dest.number_type == "premium-rate" and dest.costly_range is not None


def test_numbers_next_to_costly_ranges_stay_ordinary() -> None:
    for dialed in ("2129775555", "2125551213", "2025550143"):
        dest = classify(dialed, "US")
        assert dest is not None and dest.number_type == "fixed-or-mobile", dialed
        assert dest.costly_range is None


def test_every_bundled_range_compiles_and_names_its_source() -> None:
    ranges = bundled_costly_ranges()
    assert ranges and all(r.name and r.country and r.regex.pattern for r in ranges)


@pytest.mark.parametrize(
    ("pattern", "matches", "misses"),
    [
        ("+1NXX976XXXX", ["+12129760000"], ["+11129760000", "+1212976000", "+121297600001"]),
        ("+44[79]0XXXXXXXX", ["+447012345678", "+449012345678"], ["+448012345678"]),
        ("+34Z0", ["+3410", "+3490"], ["+3400"]),
    ],
)
def test_dialplan_patterns(pattern: str, matches: list[str], misses: list[str]) -> None:
    regex = compile_pattern(pattern)
    assert all(regex.fullmatch(m) for m in matches)
    assert not any(regex.fullmatch(m) for m in misses)


@pytest.mark.parametrize("bad", ["1NXX976", "+1NXX-976", "+1[]", "+1[-3]", "+", "+1A"])
def test_bad_patterns_are_refused_with_a_reason(bad: str) -> None:
    with pytest.raises(ValueError, match="range"):
        compile_pattern(bad)


def _trunk(tenant: str, name: str, *prefixes: str, emergency: bool = False) -> Trunk:
    return Trunk(tenant, name, "192.0.2.1", 5060, "udp", prefixes or ("+",), emergency=emergency)


def test_emergency_calls_take_the_marked_trunk_else_the_national_route() -> None:
    routing = Routing(
        (_trunk("a", "abroad", "+44"), _trunk("a", "home", "+1"), _trunk("b", "any")),
        countries={"a": "US", "b": "DE"},
    )
    assert routing.emergency_trunk("a").name == "home"  # type: ignore[union-attr]
    assert routing.emergency_trunk("b").name == "any"  # type: ignore[union-attr]
    assert routing.emergency_trunk("c") is None
    marked = Routing(
        (_trunk("a", "home", "+1"), _trunk("a", "e911", "+999", emergency=True)),
        countries={"a": "US"},
    )
    assert marked.emergency_trunk("a").name == "e911"  # type: ignore[union-attr]


def test_the_callback_number_is_the_extensions_own_did_else_the_tenants() -> None:
    dids = {
        "+12025550102": Did("+12025550102", "a", "1001"),
        "+12025550101": Did("+12025550101", "a", "1000"),
        "+12025550100": Did("+12025550100", "a", "1001"),
        "+4930123456": Did("+4930123456", "b", "1000"),
    }
    routing = Routing(dids=dids)
    assert routing.callback_number("a", "1001") == "+12025550100"
    assert routing.callback_number("a", "1000") == "+12025550101"
    assert routing.callback_number("a", "1009") == "+12025550100"
    assert routing.callback_number("c", "1000") is None


def test_calls_cannot_be_forwarded_to_an_emergency_number() -> None:
    decision = judge_target(DefaultPolicy(), "t", "1000", "112", "DE", False, "udp:x", 0.0)
    assert not decision.allow and "emergency" in decision.reasons[0]
