"""The trunk resolver against a real DNS server on loopback (tests/dns_server.py): real
queries over UDP with dnspython, its cache by TTL, keeping the last good answer."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from pbxwarden.config import ConfigError, load_config
from pbxwarden.pbx.routing import Trunk
from pbxwarden.sip.transaction import Address
from pbxwarden.transport.resolver import FAILED_HOLD, TrunkResolver
from tests.dns_server import DnsServer, dns_server

SRV = "_sip._udp.carrier.test"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    with dns_server() as server:
        server.set(SRV, "SRV", 60, "10 0 5070 a.carrier.test.", "20 0 5080 b.carrier.test.")
        server.set("a.carrier.test", "A", 60, "127.0.0.2")
        server.set("b.carrier.test", "A", 60, "127.0.0.3")
        server.set("b.carrier.test", "AAAA", 60, "::1")
        server.set("carrier.test", "A", 60, "127.0.0.9")
        yield server


def make(dns: DnsServer, clock: Clock, **kwargs: float) -> TrunkResolver:
    return TrunkResolver(
        [("127.0.0.1", dns.port)],
        timeout=kwargs.pop("timeout", 2.0),
        min_ttl=kwargs.pop("min_ttl", 5.0),
        max_ttl=kwargs.pop("max_ttl", 3600.0),
        clock=clock,
        rng=random.Random(1),
    )


def trunk(host: str = "carrier.test", port: int = 0, transport: str = "udp") -> Trunk:
    return Trunk("default", "carrier", host, port, transport, ("+",))


async def test_srv_targets_in_priority_order_and_every_address(dns: DnsServer) -> None:
    clock = Clock()
    resolver = make(dns, clock)
    t = trunk()
    assert resolver.failover(t).current is None  # before the first lookup
    assert await resolver.refresh([t]) is True
    assert resolver.failover(t).targets == (
        Address("UDP", "127.0.0.2", 5070),
        Address("UDP", "127.0.0.3", 5080),
        Address("UDP", "::1", 5080),
    )
    assert resolver.addresses([t]) == {
        ("default", "carrier"): frozenset({"127.0.0.2", "127.0.0.3", "::1", "127.0.0.9"})
    }
    view = resolver.describe([t])["default/carrier"]
    assert view["addresses"] == ["127.0.0.2", "127.0.0.3", "127.0.0.9", "::1"]
    assert "error" not in view


async def test_cached_until_the_ttl_then_asked_again(dns: DnsServer) -> None:
    clock = Clock()
    resolver = make(dns, clock, min_ttl=5.0)
    t = trunk()
    dns.set(SRV, "SRV", 30, "10 0 5070 a.carrier.test.")
    await resolver.refresh([t])
    assert dns.count(SRV, "SRV") == 1
    dns.set("a.carrier.test", "A", 60, "127.0.0.4")  # the carrier moves
    clock.now += 29
    assert await resolver.refresh([t]) is False  # within the TTL: not asked
    assert dns.count(SRV, "SRV") == 1
    assert resolver.failover(t).current == Address("UDP", "127.0.0.2", 5070)
    clock.now += 2
    assert await resolver.refresh([t]) is True  # the SRV's TTL (30 s) is over
    assert dns.count(SRV, "SRV") == 2
    assert resolver.failover(t).current == Address("UDP", "127.0.0.4", 5070)


async def test_ttl_floor_and_ceiling(dns: DnsServer) -> None:
    clock = Clock()
    dns.set(SRV, "SRV", 0, "10 0 5070 a.carrier.test.")  # TTL 0: "do not cache"
    resolver = make(dns, clock, min_ttl=5.0, max_ttl=100.0)
    t = trunk()
    await resolver.refresh([t])
    clock.now += 4
    await resolver.refresh([t])
    assert dns.count(SRV, "SRV") == 1  # the floor holds it 5 s
    clock.now += 1.5
    await resolver.refresh([t])
    assert dns.count(SRV, "SRV") == 2
    for name, rdtype in [(SRV, "SRV"), ("a.carrier.test", "A"), ("carrier.test", "A")]:
        dns.set(name, rdtype, 86400, *dns.records[(name, rdtype)][1])
    dns.remove("b.carrier.test", "A")
    dns.remove("b.carrier.test", "AAAA")
    clock.now += 10
    await resolver.refresh([t])
    asked = dns.count(SRV, "SRV")
    clock.now += 99
    await resolver.refresh([t])
    assert dns.count(SRV, "SRV") == asked
    clock.now += 2
    await resolver.refresh([t])
    assert dns.count(SRV, "SRV") == asked + 1  # the ceiling: 100 s, not a day


async def test_dns_outage_keeps_the_last_good_answer(dns: DnsServer) -> None:
    clock = Clock()
    resolver = make(dns, clock, timeout=0.5, min_ttl=5.0)
    t = trunk()
    await resolver.refresh([t])
    before = resolver.failover(t).targets
    dns.silent |= {SRV, "a.carrier.test", "b.carrier.test", "carrier.test"}
    clock.now += 61
    assert await resolver.refresh([t]) is False
    assert resolver.failover(t).targets == before
    view = resolver.describe([t])["default/carrier"]
    assert "no answer from the DNS server" in view["error"]
    assert view["refresh_in"] == 5  # retried after the floor
    dns.silent.clear()
    dns.servfail.add(SRV)  # a broken zone: SERVFAIL, still the old answer
    clock.now += 6
    assert await resolver.refresh([t]) is False
    assert resolver.failover(t).targets == before
    assert "SERVFAIL" in resolver.describe([t])["default/carrier"]["error"]


async def test_a_name_that_never_resolved_has_no_target_and_says_why(dns: DnsServer) -> None:
    clock = Clock()
    resolver = make(dns, clock, timeout=0.5)
    t = trunk("nowhere.test")
    assert await resolver.refresh([t]) is False
    failover = resolver.failover(t)
    assert failover.current is None
    assert "nowhere.test did not resolve" in failover.reason
    assert "no address" in failover.reason


async def test_ip_trunks_are_never_looked_up(dns: DnsServer) -> None:
    resolver = make(dns, Clock())
    t = trunk("127.0.0.5", 5090)
    assert await resolver.refresh([t]) is False
    assert dns.asked == []
    assert resolver.failover(t).targets == (Address("UDP", "127.0.0.5", 5090),)
    assert resolver.describe([t]) == {} and resolver.addresses([t]) == {}


async def test_naptr_over_the_wire_and_explicit_port(dns: DnsServer) -> None:
    dns.set(
        "carrier.test",
        "NAPTR",
        300,
        '10 10 "s" "SIP+D2T" "" _sip._tcp.carrier.test.',
        '20 10 "s" "SIP+D2U" "" _sip._udp.pool.carrier.test.',
    )
    dns.set("_sip._udp.pool.carrier.test", "SRV", 300, "10 0 5064 u.carrier.test.")
    dns.set("u.carrier.test", "A", 300, "127.0.0.5")
    resolver = make(dns, Clock())
    auto = trunk(transport="auto")
    await resolver.refresh([auto])
    # UDP is what the PBX sends on: the NAPTR for TCP is passed over, not asked
    assert resolver.failover(auto).targets == (Address("UDP", "127.0.0.5", 5064),)
    assert dns.count("_sip._tcp.carrier.test", "SRV") == 0
    explicit = trunk(port=5099)
    await resolver.refresh([explicit])
    assert resolver.failover(explicit).targets == (Address("UDP", "127.0.0.9", 5099),)
    assert dns.count(SRV, "SRV") == 0  # a port given: no SRV (RFC 3263 4.2)


async def test_removed_trunks_are_forgotten(dns: DnsServer) -> None:
    resolver = make(dns, Clock())
    t = trunk()
    await resolver.refresh([t])
    assert await resolver.refresh([]) is True
    assert resolver.addresses([t]) == {} and resolver.describe([t]) == {}


async def test_only_targets_the_pbx_can_send_to(dns: DnsServer) -> None:
    resolver = make(dns, Clock())
    t = trunk()
    await resolver.refresh([t])
    resolver.send_from("127.0.0.1")  # an IPv4 socket cannot reach b's ::1
    assert [a.host for a in resolver.failover(t).targets] == ["127.0.0.2", "127.0.0.3"]
    resolver.send_from("::")  # dual stack: all of them
    assert [a.host for a in resolver.failover(t).targets] == ["127.0.0.2", "127.0.0.3", "::1"]
    resolver.send_from("::1")
    assert [a.host for a in resolver.failover(t).targets] == ["::1"]
    dns.remove("b.carrier.test", "AAAA")
    resolver_v6 = make(dns, Clock())
    resolver_v6.send_from("::1")
    await resolver_v6.refresh([t])
    failover = resolver_v6.failover(t)
    assert failover.current is None and "no IPv6 address" in failover.reason
    # inbound, the carrier is still known by every address DNS gives
    assert resolver_v6.addresses([t])[("default", "carrier")] >= {"127.0.0.2", "127.0.0.3"}


def test_dns_configuration_is_validated(tmp_path: Path) -> None:
    config = load_config(tmp_path, {"PBXWARDEN_DNS__NAMESERVERS": '["127.0.0.1:5353", "::1"]'})
    assert config.dns.nameserver_addresses() == [("127.0.0.1", 5353), ("::1", 53)]
    for env, why in [
        ({"PBXWARDEN_DNS__NAMESERVERS": '["dns.example"]'}, "must be an IP address"),
        ({"PBXWARDEN_DNS__MIN_TTL": "600", "PBXWARDEN_DNS__MAX_TTL": "60"}, "min_ttl"),
        ({"PBXWARDEN_DNS__TIMEOUT": "0"}, "dns.timeout"),
    ]:
        with pytest.raises(ConfigError, match=why):
            load_config(tmp_path, env)


async def test_a_partial_first_answer_is_used_then_completed(dns: DnsServer) -> None:
    clock = Clock()
    resolver = make(dns, clock, timeout=0.5, min_ttl=5.0)
    t = trunk()
    dns.silent.add("b.carrier.test/AAAA")  # one question unanswered, the rest fine
    assert await resolver.refresh([t]) is True
    assert [a.host for a in resolver.failover(t).targets] == ["127.0.0.2", "127.0.0.3"]
    view = resolver.describe([t])["default/carrier"]
    assert view["error"] == "AAAA b.carrier.test: no answer from the DNS server"
    assert view["refresh_in"] == 5  # asked again after the floor, not the TTL
    dns.silent.clear()
    clock.now += 6
    assert await resolver.refresh([t]) is True
    assert [a.host for a in resolver.failover(t).targets] == ["127.0.0.2", "127.0.0.3", "::1"]
    assert "error" not in resolver.describe([t])["default/carrier"]


async def test_a_failed_server_is_tried_last_for_a_while(dns: DnsServer) -> None:
    clock = Clock()
    resolver = make(dns, clock)
    t = trunk()
    await resolver.refresh([t])
    first, second, third = resolver.failover(t).targets
    resolver.failed(first)
    assert resolver.failover(t).targets == (second, third, first)  # still tried, last
    assert resolver.describe([t])["default/carrier"]["failed"] == [str(first)]
    clock.now += FAILED_HOLD + 1
    assert resolver.failover(t).targets == (first, second, third)
    assert "failed" not in resolver.describe([t])["default/carrier"]


async def test_unusable_addresses_in_dns_are_ignored(dns: DnsServer) -> None:
    dns.set("a.carrier.test", "A", 60, "0.0.0.0", "224.0.0.1", "127.0.0.2")
    dns.set("b.carrier.test", "AAAA", 60, "::", "ff02::1")
    resolver = make(dns, Clock())
    t = trunk()
    await resolver.refresh([t])
    assert resolver.addresses([t])[("default", "carrier")] == {
        "127.0.0.2",
        "127.0.0.3",
        "127.0.0.9",
    }
