"""RFC 3263 server location, sans-I/O: which questions, which order of targets, which TTL."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from pbxwarden.pbx.locate import (
    Failover,
    Lookup,
    Naptr,
    Resolution,
    Server,
    Srv,
    StaticLocator,
    check_networks,
    dns_name,
    naptr_srv_names,
    srv_order,
    trunk_target,
)
from pbxwarden.pbx.routing import Routing, Trunk
from pbxwarden.sip.transaction import Address


def feed(lookup: Lookup, answers: dict[tuple[str, str], tuple[list[object], float]]) -> None:
    """Answer every question the lookup asks from ``answers`` (absent: negative)."""
    rounds = 0
    while questions := lookup.questions():
        rounds += 1
        assert rounds < 10, "the lookup keeps asking"
        for question in questions:
            records, ttl = answers.get(question, ([], 0.0))
            lookup.answer(question, records, ttl if records else None)  # type: ignore[arg-type]
    assert lookup.done


CARRIER = "carrier.test"
SRV_UDP = "_sip._udp.carrier.test"


def test_srv_priority_first_then_weights_drawn_per_request() -> None:
    records = [Srv(20, 0, 5060, "backup"), Srv(10, 60, 5060, "a"), Srv(10, 20, 5060, "b")]
    records.append(Srv(10, 20, 5060, "c"))
    rng = random.Random(1234)
    firsts: Counter[str] = Counter()
    for _ in range(4000):
        order = srv_order(records, rng)
        assert order[-1].target == "backup"  # a higher priority number is always last
        assert {r.target for r in order[:3]} == {"a", "b", "c"}
        firsts[order[0].target] += 1
    # weights 60:20:20 -> the first pick about 60 %, 20 %, 20 % of the time
    assert 0.56 < firsts["a"] / 4000 < 0.64
    assert 0.17 < firsts["b"] / 4000 < 0.23 and 0.17 < firsts["c"] / 4000 < 0.23
    # the same seed gives the same orders
    again = random.Random(1234)
    assert [srv_order(records, again)[0].target for _ in range(20)] == [
        srv_order(records, r)[0].target for r in [random.Random(1234)] for _ in range(20)
    ]


def test_zero_weight_is_rarely_first_but_never_lost() -> None:
    records = [Srv(10, 0, 5060, "zero"), Srv(10, 10, 5060, "ten")]
    rng = random.Random(7)
    firsts = Counter(srv_order(records, rng)[0].target for _ in range(3000))
    assert 0.05 < firsts["zero"] / 3000 < 0.14  # drawn only when the draw is 0: 1 in 11
    assert all(len(srv_order(records, rng)) == 2 for _ in range(50))
    only_zero = [Srv(10, 0, 5060, "x"), Srv(10, 0, 5060, "y")]
    assert [r.target for r in srv_order(only_zero, rng)] == ["x", "y"]


def test_name_with_transport_asks_srv_and_takes_the_port_from_it() -> None:
    lookup = Lookup(CARRIER, None, "UDP")
    assert lookup.questions() == sorted([(CARRIER, "A"), (CARRIER, "AAAA"), (SRV_UDP, "SRV")])
    answers: dict[tuple[str, str], tuple[list[object], float]] = {
        (SRV_UDP, "SRV"): (
            [Srv(10, 0, 5070, "a.carrier.test"), Srv(20, 0, 5080, "b.carrier.test")],
            300,
        ),
        ("a.carrier.test", "A"): (["127.0.0.2"], 120),
        ("b.carrier.test", "A"): (["127.0.0.3"], 600),
        ("b.carrier.test", "AAAA"): (["::1"], 600),
        (CARRIER, "A"): (["127.0.0.9"], 900),
    }
    feed(lookup, answers)
    result = lookup.result()
    assert result.targets(random.Random(0)) == [
        Address("UDP", "127.0.0.2", 5070),
        Address("UDP", "127.0.0.3", 5080),
        Address("UDP", "::1", 5080),
    ]
    # the name's own address is not a target (SRV exists) but is one of the carrier's
    assert result.addresses == {"127.0.0.2", "127.0.0.3", "::1", "127.0.0.9"}
    assert result.ttl == 120  # the shortest TTL of the answers used
    assert result.expires_in(30, 3600) == 120
    assert result.expires_in(300, 3600) == 300  # the floor
    assert result.expires_in(1, 60) == 60  # the ceiling


def test_missing_srv_falls_back_to_the_names_addresses_on_the_default_port() -> None:
    lookup = Lookup(CARRIER, None, "UDP")
    feed(lookup, {(CARRIER, "A"): (["127.0.0.2"], 60), (CARRIER, "AAAA"): (["::1"], 60)})
    result = lookup.result()
    assert result.targets() == [Address("UDP", "127.0.0.2", 5060), Address("UDP", "::1", 5060)]


def test_explicit_port_means_no_srv() -> None:
    lookup = Lookup(CARRIER, 5099, "UDP")
    assert lookup.questions() == [(CARRIER, "A"), (CARRIER, "AAAA")]
    feed(lookup, {(CARRIER, "A"): (["127.0.0.2"], 60)})
    assert lookup.result().targets() == [Address("UDP", "127.0.0.2", 5099)]


def test_srv_dot_target_means_not_available_there() -> None:
    lookup = Lookup(CARRIER, None, "UDP")
    feed(lookup, {(SRV_UDP, "SRV"): ([Srv(0, 0, 0, ".")], 60), (CARRIER, "A"): (["127.0.0.2"], 60)})
    result = lookup.result()
    assert result.targets() == [] and result.addresses == {"127.0.0.2"}


def test_naptr_chooses_the_transport_and_the_srv_name() -> None:
    naptr = [
        Naptr(10, 10, "s", "SIP+D2T", "_sip._tcp.carrier.test"),
        Naptr(20, 10, "s", "SIP+D2U", "_sip._udp.pool.carrier.test"),
        Naptr(5, 10, "s", "SIPS+D2T", "_sips._tcp.carrier.test"),
        Naptr(1, 10, "u", "E2U+sip", "!^.*$!sip:info@carrier.test!"),  # not for us
    ]
    assert naptr_srv_names(naptr, ("UDP", "TCP")) == [
        ("TCP", "_sip._tcp.carrier.test"),
        ("UDP", "_sip._udp.pool.carrier.test"),
    ]
    assert naptr_srv_names(naptr, ("UDP",)) == [("UDP", "_sip._udp.pool.carrier.test")]

    lookup = Lookup(CARRIER, None, None, ("UDP", "TCP"))
    assert (CARRIER, "NAPTR") in lookup.questions()
    answers: dict[tuple[str, str], tuple[list[object], float]] = {
        (CARRIER, "NAPTR"): (naptr, 3600),
        ("_sip._tcp.carrier.test", "SRV"): ([Srv(10, 0, 5062, "t.carrier.test")], 3600),
        ("_sip._udp.pool.carrier.test", "SRV"): ([Srv(10, 0, 5064, "u.carrier.test")], 3600),
        ("t.carrier.test", "A"): (["127.0.0.4"], 3600),
        ("u.carrier.test", "A"): (["127.0.0.5"], 3600),
    }
    feed(lookup, answers)
    # TCP first: its NAPTR record has the lower order, whatever the SRV priorities say
    assert lookup.result().targets() == [
        Address("TCP", "127.0.0.4", 5062),
        Address("UDP", "127.0.0.5", 5064),
    ]
    udp_only = Lookup(CARRIER, None, None, ("UDP",))
    feed(udp_only, answers)
    assert udp_only.result().targets() == [Address("UDP", "127.0.0.5", 5064)]


def test_without_naptr_srv_is_asked_for_each_supported_transport() -> None:
    lookup = Lookup(CARRIER, None, None, ("UDP", "TCP"))
    answers: dict[tuple[str, str], tuple[list[object], float]] = {
        ("_sip._tcp.carrier.test", "SRV"): ([Srv(10, 0, 5062, "t.carrier.test")], 60),
        ("t.carrier.test", "A"): (["127.0.0.4"], 60),
    }
    feed(lookup, answers)
    assert lookup.result().targets() == [Address("TCP", "127.0.0.4", 5062)]
    bare = Lookup(CARRIER, None, None, ("UDP", "TCP"))
    feed(bare, {(CARRIER, "A"): (["127.0.0.2"], 60)})
    assert bare.result().targets() == [Address("UDP", "127.0.0.2", 5060)]


def test_unanswered_questions_are_reported_and_partial_answers_kept() -> None:
    lookup = Lookup(CARRIER, None, "UDP")
    lookup.questions()
    lookup.answer((SRV_UDP, "SRV"), [Srv(10, 0, 5060, "a.carrier.test")], 60)
    lookup.failed((CARRIER, "A"), "timeout")
    lookup.answer((CARRIER, "AAAA"), [])
    lookup.answer(("a.carrier.test", "A"), ["127.0.0.2"], 30)
    lookup.failed(("a.carrier.test", "AAAA"), "timeout")
    assert lookup.done
    result = lookup.result()
    assert result.targets() == [Address("UDP", "127.0.0.2", 5060)]
    assert result.errors == ("A carrier.test: timeout", "AAAA a.carrier.test: timeout")
    assert result.ttl == 30


def test_ip_literal_needs_no_dns() -> None:
    lookup = Lookup("198.51.100.10", 5070, "TCP")
    assert lookup.questions() == [] and lookup.done
    assert lookup.result().targets() == [Address("TCP", "198.51.100.10", 5070)]
    no_ttl = Resolution("x", (Server("UDP", 5060, "x", ("127.0.0.2",)),))
    assert no_ttl.expires_in(30, 600) == 600


def test_failover_walks_the_targets_once() -> None:
    a, b = Address("UDP", "127.0.0.2", 5060), Address("UDP", "127.0.0.3", 5060)
    failover = Failover([a, b])
    assert failover.current == a
    assert failover.next() == b and failover.current == b
    assert failover.next() is None and failover.next() is None and failover.current is None
    empty = Failover((), "carrier.test did not resolve (no answer)")
    assert empty.current is None and "did not resolve" in empty.reason


def test_static_locator_for_ip_trunks_only() -> None:
    ip_trunk = Trunk("t", "carrier", "198.51.100.10", 5070, "udp", ("+",))
    assert StaticLocator().failover(ip_trunk).targets == (Address("UDP", "198.51.100.10", 5070),)
    named = Trunk("t", "carrier", "carrier.test", 0, "auto", ("+",))
    assert StaticLocator().failover(named).current is None


@pytest.mark.parametrize(
    ("args", "stored"),
    [
        (("198.51.100.10", None, None), ("198.51.100.10", 5060, "udp")),
        (("2001:DB8::1", 5070, "tcp"), ("2001:db8::1", 5070, "tcp")),
        (("[2001:db8::1]", None, "auto"), ("2001:db8::1", 5060, "udp")),
        (("Carrier.Example.", None, None), ("carrier.example", 0, "auto")),
        (("sip.carrier.example", 5080, "UDP"), ("sip.carrier.example", 5080, "udp")),
        (("carrier", None, "tcp"), ("carrier", 0, "tcp")),
    ],
)
def test_trunk_target_stores_ips_and_names(
    args: tuple[str, int | None, str | None], stored: tuple[str, int, str]
) -> None:
    assert trunk_target(*args) == stored


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("192.0.2.300", None, None), "IP address or a DNS name"),
        (("carrier..example", None, None), "IP address or a DNS name"),
        (("-carrier.example", None, None), "IP address or a DNS name"),
        (("carrier_1.example", None, None), "IP address or a DNS name"),
        (("carrier.example;evil", None, None), "IP address or a DNS name"),
        (("a" * 64 + ".example", None, None), "IP address or a DNS name"),
        (("", None, None), "IP address or a DNS name"),
        (("carrier.example", 70000, None), "invalid port"),
        (("carrier.example", None, "tls"), "invalid transport"),
    ],
)
def test_trunk_target_refuses_what_is_neither(
    args: tuple[str, int | None, str | None], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        trunk_target(*args)


def test_dns_name_and_networks() -> None:
    assert dns_name("SIP.Carrier.Example") == "sip.carrier.example"
    assert dns_name("x" * 254) is None
    assert check_networks(["192.0.2.7/24", " 2001:db8::/32", "192.0.2.0/24"]) == (
        "192.0.2.0/24",
        "2001:db8::/32",
    )
    with pytest.raises(ValueError, match="not a network"):
        check_networks(["192.0.2.0/33"])


def test_routing_knows_the_carrier_by_resolved_address_and_networks() -> None:
    named = Trunk("t", "named", "carrier.test", 0, "auto", ("+",), inbound_from=("10.9.0.0/16",))
    ip = Trunk("t", "ip", "198.51.100.10", 5060, "udp", ("+1",))
    routing = Routing((named, ip)).with_addresses({("t", "named"): {"127.0.0.2", "::1"}})
    assert routing.trunk_at("127.0.0.2") is named and routing.trunk_at("::1") is named
    assert routing.trunk_at("10.9.200.1") is named  # an inbound_from network
    assert routing.trunk_at("198.51.100.10") is ip
    assert routing.trunk_at("127.0.0.3") is None and routing.trunk_at("carrier.test") is None
    assert routing.trusted_hosts() == {"198.51.100.10", "127.0.0.2", "::1"}
    assert routing.trusted_networks() == ["10.9.0.0/16"]
    # a new DNS answer replaces the old addresses
    moved = routing.with_addresses({("t", "named"): {"127.0.0.4"}})
    assert moved.trunk_at("127.0.0.2") is None and moved.trunk_at("127.0.0.4") is named
