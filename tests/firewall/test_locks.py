"""Extension locks (sans-I/O): counting across sources, what a lock refuses, how it ends."""

from __future__ import annotations

from dataclasses import replace

import pytest

from pbxwarden.firewall.locks import ExtensionLock, ExtensionLocks, LockSettings, LockTracker
from pbxwarden.firewall.netwatch import NetworkWatch
from pbxwarden.sip.digest import Algorithm
from pbxwarden.store.db import ExtensionAuth

EXT = ExtensionAuth(7, "default", "1000", "pbxwarden", {Algorithm.MD5: "x"}, True)
WHO = ("default", "1000")


def tracker(**kw: object) -> LockTracker:
    return LockTracker(LockSettings(**kw))  # type: ignore[arg-type]


def guess(
    t: LockTracker, n: int, start: float = 0.0, sources: int = 20, **kw: object
) -> list[ExtensionLock]:
    """``n`` failures spread round-robin over ``sources`` addresses, one a second."""
    made = []
    for i in range(n):
        lock = t.failed(7, WHO, f"198.51.100.{i % sources + 1}", start + i, **kw)  # type: ignore[arg-type]
        if lock is not None:
            made.append(lock)
    return made


def test_locks_at_the_threshold_naming_every_source() -> None:
    t = tracker(failures=10, window=600, sources=3)
    assert guess(t, 9) == []
    assert t.active(7, 9.0) is None
    [lock] = guess(t, 1, start=9.0, sources=1)
    assert lock.level == 1 and lock.until == 9.0 + 3600
    assert len(lock.sources) == 9  # ten failures from nine distinct addresses
    assert "10 failed authentications from 9 addresses" in lock.reason
    assert t.active(7, 10.0) == lock
    [event] = t.drain_events()
    assert (event.kind, event.tenant, event.number) == ("lock", "default", "1000")


@pytest.mark.parametrize("sources", [1, 2])
def test_too_few_ordinary_sources_never_lock(sources: int) -> None:
    """One address is the firewall's to ban; the lock is for guessing spread wide."""
    t = tracker(failures=10, sources=3)
    assert guess(t, 100, sources=sources) == []


def test_one_address_the_firewall_never_bans_is_enough() -> None:
    """A trunk's address is never banned, so its guesses must lock on their own."""
    t = tracker(failures=10, sources=3)
    assert guess(t, 9, sources=1, unbannable=True) == []
    assert len(guess(t, 1, start=9, sources=1, unbannable=True)) == 1


def test_failures_older_than_the_window_do_not_count() -> None:
    t = tracker(failures=10, window=60)
    for i in range(30):  # one failure every 10 s: never 10 within a minute
        assert t.failed(7, WHO, f"192.0.2.{i}", i * 10.0) is None


def test_locks_grow_on_repeat_and_guessing_during_a_lock_relocks_at_once() -> None:
    t = tracker(failures=10, window=600, steps=(100.0, 1000.0))
    [first] = guess(t, 10)
    assert first.until == 9 + 100
    assert guess(t, 50, start=10) == []  # counted while locked, no new lock
    [second] = guess(t, 1, start=110)  # the first ended; the guessing goes on
    assert second.level == 2 and second.until == 110 + 1000
    [third] = guess(t, 10, start=1200)
    assert third.level == 3 and third.until == 1209 + 1000  # the last step repeats


def test_a_new_password_lifts_the_lock_and_forgets_the_old_guesses() -> None:
    t = tracker(failures=10)
    assert len(guess(t, 10)) == 1
    assert t.active(7, 20.0, password_changed_at=5.0) is not None  # changed before the lock
    assert t.active(7, 20.0, password_changed_at=15.0) is None
    # Nine more failures after the change: the ten before it no longer count.
    assert guess(t, 9, start=16, password_changed_at=15.0) == []
    assert len(guess(t, 1, start=25, password_changed_at=15.0)) == 1


def test_stored_lifts_reach_every_process_but_unsaved_locks_survive_a_load() -> None:
    t = tracker(failures=10)
    [lock] = guess(t, 10)
    t.drain_events()
    t.load([], 20.0)  # not stored yet: kept
    assert t.active(7, 20.0) == lock
    older = replace(lock, created_at=lock.created_at - 1, until=5.0)
    t.load([older], 20.0)  # an older stored lock does not override ours
    assert t.active(7, 20.0) == lock
    lifted = replace(lock, until=20.0)  # an admin lifted it at 20
    t.load([lifted], 20.5)
    assert t.active(7, 20.5) is None
    [event] = t.drain_events()
    assert (event.kind, event.number) == ("unlock", "1000")
    assert guess(t, 9, start=21) == []  # the guesses before the lift were forgotten


def test_a_lock_made_in_another_process_is_adopted() -> None:
    t = tracker()
    remote = ExtensionLock(7, 5000.0, 1, 100.0, "10 failed authentications", ("192.0.2.1",))
    t.load([remote], 200.0)
    assert t.active(7, 200.0) == remote
    assert t.drain_events() == []


def test_memory_is_bounded() -> None:
    t = tracker(max_tracked=50)
    for ext in range(1000):
        t.failed(ext, WHO, "192.0.2.1", 0.0)
    assert len(t._failures) <= 51
    for i in range(5000):
        t.failed(1, WHO, f"10.0.{i // 250}.{i % 250}", 1.0)
    assert len(t._failures[1]) <= 256


def gate(trunks: frozenset[str] = frozenset()) -> ExtensionLocks:
    locks = ExtensionLocks(tracker(failures=4, sources=2), NetworkWatch(), lambda a: False)
    locks.trunk_hosts = trunks
    return locks


def test_a_locked_extension_works_only_from_networks_it_registered_from() -> None:
    locks = gate()
    locks.netwatch.check(EXT.id, "127.0.0.5")  # the phone registered from 127.0.0.0/24
    assert locks.refusal(EXT, "127.0.1.9", 0.0) is None  # not locked yet
    for i in range(4):
        locks.failed(EXT, f"127.0.1.{i + 1}", float(i))
    assert "locked" in str(locks.refusal(EXT, "127.0.1.9", 5.0))
    assert locks.refusal(EXT, "127.0.0.77", 5.0) is None  # its own /24 keeps working
    assert locks.refusal(EXT, "not an address", 5.0) is not None
    changed = replace(EXT, password_changed_at=6.0)
    assert locks.refusal(changed, "127.0.1.9", 7.0) is None  # a new password lifts it


def test_an_extension_that_never_registered_is_locked_everywhere() -> None:
    locks = gate()
    for i in range(4):
        locks.failed(EXT, f"203.0.113.{i}", float(i))
    for address in ("127.0.0.1", "203.0.113.50", "2001:db8::1"):
        assert locks.refusal(EXT, address, 5.0) is not None


def test_credentials_from_a_trunk_address_are_refused_unless_allowed() -> None:
    locks = gate(frozenset({"198.51.100.10"}))
    assert locks.refusal(EXT, "198.51.100.10", 0.0) is not None
    assert locks.refusal(EXT, "198.51.100.11", 0.0) is None
    assert locks.refusal(replace(EXT, trunk_access=True), "198.51.100.10", 0.0) is None


def test_failures_from_a_trunk_address_lock_without_other_sources() -> None:
    locks = gate(frozenset({"198.51.100.10"}))
    reported: list[tuple[str, bool]] = []
    locks._report = lambda ext, address, now, unbannable: reported.append((address, unbannable))
    made = [locks.failed(EXT, "198.51.100.10", float(i)) for i in range(4)]
    assert made[-1] is not None and made[:3] == [None] * 3
    assert reported == [("198.51.100.10", True)] * 4


def test_a_trunks_inbound_networks_are_trunk_addresses() -> None:
    import ipaddress

    locks = gate(frozenset({"198.51.100.10"}))
    locks.trunk_networks = (ipaddress.ip_network("203.0.113.0/24"),)
    assert locks.refusal(EXT, "203.0.113.77", 0.0) is not None
    assert locks.refusal(EXT, "203.0.114.1", 0.0) is None
    assert locks.refusal(EXT, "not-an-address", 0.0) is None
    assert locks.refusal(replace(EXT, trunk_access=True), "203.0.113.77", 0.0) is None


def test_the_rule_decides_on_counts_made_elsewhere_and_hooks_see_every_step() -> None:
    """A cluster node feeds the rule the whole cluster's counts (pbxwarden.cluster)."""
    t = tracker(failures=10, sources=2)
    failures: list[tuple[object, ...]] = []
    changes: list[str] = []
    t.on_failure = lambda *args: failures.append(args)
    t.on_lock = lambda event: changes.append(event.kind)
    assert guess(t, 4, sources=4) == []  # four here: nothing
    assert [f[2] for f in failures] == [f"198.51.100.{i}" for i in range(1, 5)]
    assert t.decide(7, WHO, 5.0, 9, ["a", "b"], False) is None  # nine in the cluster
    assert t.decide(7, WHO, 5.0, 12, ["a"], False) is None  # one source: the firewall's
    lock = t.decide(7, WHO, 5.0, 12, ["a", "b", "c"], False)
    assert lock is not None and "12 failed authentications from 3 addresses" in lock.reason
    assert t.decide(7, WHO, 6.0, 13, ["a", "b", "c"], False) is None  # locked already
    assert changes == ["lock"]
    t.load([replace(lock, until=7.0)], 8.0)  # lifted
    assert changes == ["lock", "unlock"]


def test_a_lock_or_a_lift_from_another_node_is_adopted_once() -> None:
    t = tracker()
    remote = ExtensionLock(7, 5000.0, 1, 100.0, "r", ("192.0.2.1",))
    assert t.adopt(remote, WHO, 200.0)
    assert not t.adopt(remote, WHO, 200.0)  # the same again: nothing
    assert t.who(7) == WHO and t.active(7, 200.0) == remote
    lifted = replace(remote, until=300.0)
    assert t.adopt(lifted, WHO, 300.0)
    assert t.active(7, 300.0) is None
    [event] = t.drain_events()
    assert event.kind == "unlock"
    # The database read before the lift was stored still has the old lock: the lift stays.
    t.load([remote], 301.0)
    assert t.active(7, 301.0) is None
    assert not t.adopt(replace(remote, created_at=50.0, until=9000.0), WHO, 302.0)  # older
