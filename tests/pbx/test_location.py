"""The location service: expiry by deadline, refreshes, the write-back queue, memory."""

from __future__ import annotations

import sys

from pbxwarden.pbx.location import Binding, LocationService

AOR = "pbxwarden/1000"


def binding(contact: str, expires_at: float, ext: int = 1, agent: str | None = "phone") -> Binding:
    return Binding(ext, contact, expires_at, None, "cid", 1, "udp:192.0.2.1:5060", agent, 0.0)


def test_purge_drops_only_what_is_due_and_looks_at_nothing_else() -> None:
    loc = LocationService()
    for i in range(1000):
        loc.put(f"pbxwarden/{2000 + i}", binding(f"sip:{i}@192.0.2.1", 1000.0 + i))
    assert len(loc) == 1000 and loc.next_expiry() == 1000.0
    assert loc.purge(999.0) == 0  # nothing due: the heap's head says so
    assert loc.purge(1004.0) == 5  # the five due at 1000-1004, not a scan of all
    assert len(loc) == 995
    assert loc.next_expiry() == 1005.0
    assert loc.get("pbxwarden/2004", "sip:4@192.0.2.1") is None
    assert loc.get("pbxwarden/2005", "sip:5@192.0.2.1") is not None


def test_a_refreshed_binding_outlives_its_old_deadline() -> None:
    loc = LocationService()
    loc.put(AOR, binding("sip:a@192.0.2.1", 100.0))
    loc.put(AOR, binding("sip:a@192.0.2.1", 200.0))  # the refresh
    assert len(loc) == 1
    assert loc.purge(150.0) == 0  # the old deadline's entry is stale
    assert [b.expires_at for b in loc.lookup(AOR, 150.0)] == [200.0]
    assert loc.purge(200.0) == 1
    assert loc.lookup(AOR, 150.0) == [] and len(loc) == 0 and loc.next_expiry() is None


def test_expired_bindings_are_not_routed_to_before_they_are_purged() -> None:
    loc = LocationService()
    loc.put(AOR, binding("sip:a@192.0.2.1", 100.0))
    loc.put(AOR, binding("sip:b@192.0.2.1", 300.0))
    assert [b.contact for b in loc.lookup(AOR, 150.0)] == ["sip:b@192.0.2.1"]
    assert len(list(loc.items())) == 2  # until purged


def test_a_removed_and_registered_again_binding_is_kept_past_its_old_deadline() -> None:
    loc = LocationService()
    loc.put(AOR, binding("sip:a@192.0.2.1", 100.0))
    loc.remove(AOR, "sip:a@192.0.2.1")
    loc.put(AOR, binding("sip:a@192.0.2.1", 500.0))
    assert loc.purge(400.0) == 0 and len(loc) == 1


def test_several_contacts_keep_their_order_across_refreshes() -> None:
    loc = LocationService()
    for c in ("sip:a@x", "sip:b@x", "sip:c@x"):
        loc.put(AOR, binding(c, 100.0))
    loc.put(AOR, binding("sip:a@x", 200.0))  # refresh in place
    loc.remove(AOR, "sip:b@x")
    assert [b.contact for b in loc.lookup(AOR, 0.0)] == ["sip:a@x", "sip:c@x"]
    assert loc.purge(150.0) == 1  # c
    assert [b.contact for b in loc.lookup(AOR, 0.0)] == ["sip:a@x"]


def test_stale_entries_do_not_pile_up_under_frequent_refreshes() -> None:
    loc = LocationService()
    for t in range(10_000):
        loc.put(AOR, binding("sip:a@x", 1000.0 + t))
    assert len(loc) == 1
    assert len(loc._expiries) <= 64 + 2  # compacted: not one entry per refresh
    assert loc.purge(10_998.0) == 0 and loc.purge(10_999.0) == 1


def test_load_and_clear() -> None:
    loc = LocationService()
    loc.load([(AOR, binding("sip:a@x", 100.0)), (AOR, binding("sip:b@x", 50.0))])
    assert len(loc) == 2 and not loc.has_changes  # loading queues nothing
    assert loc.next_expiry() == 50.0
    loc.load([(AOR, binding("sip:a@x", 300.0))])  # the same contact again: replaced
    assert len(loc) == 2 and loc.purge(200.0) == 1
    loc.clear()
    assert len(loc) == 0 and loc.purge(1e9) == 0


def test_write_back_queue_holds_the_latest_change_per_contact() -> None:
    loc = LocationService()
    loc.put(AOR, binding("sip:a@x", 100.0))
    loc.put(AOR, binding("sip:a@x", 200.0))
    loc.put(AOR, binding("sip:b@x", 200.0))
    loc.remove(AOR, "sip:b@x")
    upserts, deletes = loc.drain_changes()
    assert [(b.contact, b.expires_at) for b in upserts] == [("sip:a@x", 200.0)]
    assert deletes == [(1, "sip:b@x")]
    assert not loc.has_changes
    loc.purge(1e9)  # expiry is not a change to write: the database purges its own
    assert not loc.has_changes


def test_a_listener_gets_changes_instead_of_the_queue() -> None:
    seen: list[tuple[str, str, float | None]] = []
    loc = LocationService(lambda aor, c, b: seen.append((aor, c, b and b.expires_at)))
    loc.put(AOR, binding("sip:a@x", 100.0))
    loc.remove(AOR, "sip:a@x")
    loc.remove(AOR, "sip:a@x")  # already gone: nothing to tell
    assert seen == [(AOR, "sip:a@x", 100.0), (AOR, "sip:a@x", None)]
    assert not loc.has_changes


def test_user_agents_are_shared_between_bindings() -> None:
    loc = LocationService()
    agents = ["".join(["Yealink SIP-T54W ", "96.86.0.70"]) for _ in range(2)]
    assert agents[0] is not agents[1]
    loc.put("pbxwarden/1000", binding("sip:a@x", 100.0, agent=agents[0]))
    loc.put("pbxwarden/1001", binding("sip:b@x", 100.0, agent=agents[1]))
    a = loc.get("pbxwarden/1000", "sip:a@x")
    b = loc.get("pbxwarden/1001", "sip:b@x")
    assert a is not None and b is not None
    assert a.user_agent is b.user_agent is sys.intern(agents[0])
