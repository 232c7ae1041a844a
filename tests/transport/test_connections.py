"""The connection table's decisions: who is admitted, refused, evicted or expired."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pbxwarden.transport.connections import ConnectionLimits, ConnectionTable, source_key

LIMITS = ConnectionLimits(
    max_connections=20,
    per_source=4,
    trusted_per_source=8,
    new_timeout=10.0,
    idle_timeout=900.0,
    crowded_new_timeout=2.0,
    crowded_idle_timeout=120.0,
)


def test_a_source_at_its_limit_is_refused_and_reported_others_are_not() -> None:
    table: ConnectionTable[str] = ConnectionTable(LIMITS)
    for i in range(4):
        assert table.admit(f"a{i}", "192.0.2.1", False, 0.0).accepted
    verdict = table.admit("a4", "192.0.2.1", False, 0.0)
    assert not verdict.accepted and verdict.over_limit and verdict.source_count == 4
    assert "a4" not in table and table.source_count("192.0.2.1") == 4
    other = table.admit("b0", "192.0.2.2", False, 0.0)
    assert other.accepted and not other.over_limit
    table.release("a0")  # one closed: room for one more, and only one
    assert table.admit("a5", "192.0.2.1", False, 1.0).accepted
    assert table.admit("a6", "192.0.2.1", False, 1.0).over_limit


def test_trusted_sources_have_their_own_higher_limit() -> None:
    table: ConnectionTable[str] = ConnectionTable(LIMITS)
    results = [table.admit(f"t{i}", "198.51.100.10", True, 0.0) for i in range(9)]
    assert [r.accepted for r in results] == [True] * 8 + [False]
    assert results[-1].over_limit


def test_ipv6_sources_count_per_64_and_mapped_ipv4_as_ipv4() -> None:
    assert (
        source_key("2001:db8:1:2::1") == source_key("2001:db8:1:2:ffff::9") == ("2001:db8:1:2::/64")
    )
    assert source_key("2001:db8:1:3::1") != source_key("2001:db8:1:2::1")
    assert source_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert source_key("192.0.2.7") == "192.0.2.7"
    assert source_key("not-an-address") == "not-an-address"
    table: ConnectionTable[str] = ConnectionTable(LIMITS)
    for i in range(4):
        assert table.admit(f"v{i}", f"2001:db8:1:2::{i + 1:x}", False, 0.0).accepted
    assert table.admit("v4", "2001:db8:1:2::99", False, 0.0).over_limit
    assert table.admit("w0", "2001:db8:1:3::1", False, 0.0).accepted


def test_a_new_connection_has_a_fixed_deadline_for_its_first_valid_request() -> None:
    table: ConnectionTable[str] = ConnectionTable(LIMITS)
    table.admit("slow", "192.0.2.1", False, 0.0)
    table.admit("phone", "192.0.2.2", False, 0.0)
    table.touch("slow", 9.0)  # bytes, but no valid request: the deadline stays
    table.confirm("phone", 0.5)
    assert table.expired(9.9) == []
    assert table.expired(10.0) == ["slow"]
    assert "slow" not in table and table.source_count("192.0.2.1") == 0
    assert table.is_established("phone")
    table.touch("phone", 800.0)  # keep-alive: idle time counts from here
    assert table.expired(1600.0) == []
    assert table.expired(1700.0) == ["phone"]
    assert len(table) == 0


def test_established_connections_expire_least_recently_active_first() -> None:
    table: ConnectionTable[str] = ConnectionTable(LIMITS)
    for name in ("a", "b", "c"):
        table.admit(name, f"192.0.2.{ord(name)}", False, 0.0)
        table.confirm(name, 0.0)
    table.confirm("b", 50.0)  # a later request on an established connection is traffic
    table.touch("a", 100.0)
    assert table.expired(900.0) == ["c"]
    assert table.expired(950.0) == ["b"]
    assert table.expired(1000.0) == ["a"]


def test_crowded_table_uses_the_shorter_deadlines() -> None:
    table: ConnectionTable[str] = ConnectionTable(LIMITS)
    assert LIMITS.crowded_at == 15
    table.admit("idle-phone", "192.0.2.200", False, 0.0)
    table.confirm("idle-phone", 0.0)
    for i in range(13):
        table.admit(f"n{i}", f"192.0.2.{i}", False, 0.0)
    assert not table.crowded  # 14 of 20
    assert table.expired(5.0) == []
    table.admit("n13", "192.0.2.13", False, 4.0)
    assert table.crowded  # 15 of 20
    expired = table.expired(5.0)  # new ones older than 2 s go; the idle phone (5 s) stays
    assert sorted(expired) == sorted(f"n{i}" for i in range(13))
    assert "n13" in table and not table.crowded
    for i in range(14):  # crowded again: the phone silent for 120 s goes too
        table.admit(f"m{i}", f"192.0.3.{i}", False, 200.0)
    assert table.expired(201.0) == ["n13", "idle-phone"]  # the m* are 1 s old


def test_full_table_evicts_the_oldest_new_connection_first() -> None:
    table: ConnectionTable[str] = ConnectionTable(LIMITS)
    for i in range(5):  # established, recently active
        table.admit(f"p{i}", f"192.0.2.{i}", False, 0.0)
        table.confirm(f"p{i}", 1.0)
    for i in range(15):  # idle newcomers from many sources
        assert table.admit(f"x{i}", f"203.0.113.{i}", False, 1.0 + i / 100).accepted
    assert len(table) == 20
    verdict = table.admit("newcomer", "198.51.100.1", False, 1.5)
    assert verdict.accepted and verdict.evict == ("x0",)
    assert "x0" not in table and table.source_count("203.0.113.0") == 0
    assert len(table) == 20
    # The newcomer is the youngest: every other idle newcomer goes before it.
    evicted = [table.admit(f"y{i}", f"203.0.114.{i}", False, 1.6).evict for i in range(14)]
    assert [e[0] for e in evicted] == [f"x{i}" for i in range(1, 15)]
    assert "newcomer" in table


def test_full_table_of_active_connections_refuses_a_newcomer() -> None:
    table: ConnectionTable[str] = ConnectionTable(LIMITS)
    for i in range(20):
        table.admit(f"p{i}", f"192.0.2.{i}", False, 0.0)
        table.confirm(f"p{i}", 0.0)
    table.touch("p0", 100.0)
    verdict = table.admit("late", "198.51.100.1", False, 119.0)
    assert not verdict.accepted and not verdict.over_limit and verdict.evict == ()
    # Past the crowded idle timeout the least recently active one makes room.
    verdict = table.admit("later", "198.51.100.1", False, 121.0)
    assert verdict.accepted and verdict.evict == ("p1",)


def test_drop_source_forgets_all_of_its_connections() -> None:
    table: ConnectionTable[str] = ConnectionTable(LIMITS)
    for i in range(3):
        table.admit(f"a{i}", "192.0.2.1", False, 0.0)
    table.confirm("a1", 0.0)
    table.admit("b", "192.0.2.2", False, 0.0)
    assert sorted(table.drop_source("192.0.2.1")) == ["a0", "a1", "a2"]
    assert table.members() == ["b"] and table.source_count("192.0.2.1") == 0
    assert table.drop_source("192.0.2.1") == []
    assert not table.release("a0")  # already gone: a later close is harmless


def test_lowering_the_cap() -> None:
    table: ConnectionTable[str] = ConnectionTable(LIMITS)
    table.set_max_connections(2)
    assert table.limits.max_connections == 2 and table.limits.per_source == 4
    table.admit("a", "192.0.2.1", False, 0.0)
    table.admit("b", "192.0.2.2", False, 0.0)
    assert table.admit("c", "192.0.2.3", False, 0.0).evict == ("a",)


operations = st.lists(
    st.tuples(
        st.sampled_from(["admit", "admit", "admit", "confirm", "touch", "release", "expire"]),
        st.integers(0, 60),  # connection number
        st.integers(0, 7),  # source number
        st.floats(0, 5),  # time step
        st.booleans(),  # trusted
    ),
    max_size=300,
)


@settings(max_examples=200, deadline=None)
@given(operations)
def test_invariants_hold_under_any_sequence(ops: list[tuple[str, int, int, float, bool]]) -> None:
    """Whatever happens: never more than the cap, never more than a source's limit, the
    counts match the members, and nothing is evicted while it is younger than something
    else that could have gone instead."""
    limits = ConnectionLimits(10, 3, 5, 4.0, 30.0, 1.0, 8.0)
    table: ConnectionTable[int] = ConnectionTable(limits)
    trusted_sources: dict[str, bool] = {}
    now = 0.0
    for op, key, src, step, trusted in ops:
        now += step
        host = f"192.0.2.{src}"
        trusted = trusted_sources.setdefault(host, trusted)
        if op == "admit" and key not in table:
            before = table.members()
            new_before = before[: table.new_count]
            verdict = table.admit(key, host, trusted, now)
            if verdict.evict:
                assert len(before) == limits.max_connections
                if new_before:
                    assert verdict.evict == (new_before[0],)  # the oldest new one
            if verdict.accepted:
                assert key in table
            else:
                assert key not in table and set(table.members()) == set(before)
        elif op == "confirm":
            table.confirm(key, now)
        elif op == "touch":
            table.touch(key, now)
        elif op == "release":
            table.release(key)
        elif op == "expire":
            for gone in table.expired(now):
                assert gone not in table
        members = table.members()
        assert len(members) == len(set(members)) == len(table) <= limits.max_connections
        per_source: dict[str, int] = {}
        for member in members:
            entry_source = next(h for h in trusted_sources if member in table._members.get(h, ()))
            per_source[entry_source] = per_source.get(entry_source, 0) + 1
        for host, count in per_source.items():
            limit = limits.trusted_per_source if trusted_sources[host] else limits.per_source
            assert count <= limit
            assert table.source_count(host) == count


def test_the_limits_are_configuration_keys_with_clear_errors(tmp_path: Path) -> None:
    import tomllib

    from pbxwarden.config import DEFAULT_CONFIG_TEXT, Config, ConfigError, load_config

    default = Config.model_validate(tomllib.loads(DEFAULT_CONFIG_TEXT))
    assert (default.sip.max_connections, default.sip.new_connection_timeout) == (4096, 10.0)
    assert default.sip.idle_timeout == 900.0
    assert default.firewall.connections_per_source == 64
    assert default.firewall.trusted_connections_per_source == 1024
    config = load_config(
        tmp_path,
        {
            "PBXWARDEN_SIP__MAX_CONNECTIONS": "20000",
            "PBXWARDEN_FIREWALL__CONNECTIONS_PER_SOURCE": "8",
        },
    )
    assert config.sip.max_connections == 20000 and config.firewall.connections_per_source == 8
    for key, value, where in (
        ("PBXWARDEN_SIP__MAX_CONNECTIONS", "3", "sip.max_connections"),
        ("PBXWARDEN_SIP__NEW_CONNECTION_TIMEOUT", "0", "sip.new_connection_timeout"),
        ("PBXWARDEN_FIREWALL__CONNECTIONS_PER_SOURCE", "many", "firewall.connections_per_source"),
    ):
        with pytest.raises(ConfigError, match=where.replace(".", r"\.")):
            load_config(tmp_path, {key: value})


def test_evicting_a_sources_own_connection_keeps_its_count_right() -> None:
    """Found by the property test above: a full table evicts the oldest new connection,
    which may be the admitting source's own; its count then stays what it holds."""
    limits = ConnectionLimits(2, 3, 5, 4.0, 30.0, 1.0, 8.0)
    table: ConnectionTable[int] = ConnectionTable(limits)
    assert table.admit(1, "192.0.2.1", False, 0.0).accepted
    assert table.admit(2, "192.0.2.2", False, 0.1).accepted
    third = table.admit(3, "192.0.2.1", False, 0.2)  # full: the oldest new one goes, its own
    assert third.accepted and third.evict == (1,)
    assert table.source_count("192.0.2.1") == 1 and len(table) == 2
