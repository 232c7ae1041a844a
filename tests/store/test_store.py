"""The store on both engines it supports: SQLite (embedded) and a real PostgreSQL server."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import inspect

from pbxwarden.sip.digest import Algorithm, compute_ha1
from pbxwarden.store.db import BindingRow, Store, StoreError


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'test.db'}"
    else:
        import psycopg

        base = request.getfixturevalue("postgres_url")
        name = f"t_{secrets.token_hex(6)}"
        host_part = base.split("@", 1)[1].split("/", 1)[0]
        host, port = host_part.split(":")
        with psycopg.connect(
            f"host={host} port={port} user=pbx dbname=postgres", autocommit=True
        ) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        url = base.rsplit("/", 1)[0] + f"/{name}"
    s = Store(url)
    s.migrate()
    s.ensure_tenant("default", "pbxwarden")
    try:
        yield s
    finally:
        s.close()


def test_schema_is_migrated(store: Store) -> None:
    tables = set(inspect(store.engine).get_table_names())
    assert {"tenants", "extensions", "registrations", "alembic_version"} <= tables
    store.migrate()  # idempotent


def test_extension_stores_only_hashes(store: Store) -> None:
    store.add_extensions([("1000", "Very-Secret-Pass1")])
    auth = store.extension_auth("pbxwarden", "1000")
    assert auth is not None and auth.enabled
    assert auth.ha1[Algorithm.MD5] == compute_ha1(
        "1000", "pbxwarden", "Very-Secret-Pass1", Algorithm.MD5
    )
    assert auth.ha1[Algorithm.SHA256] == compute_ha1(
        "1000", "pbxwarden", "Very-Secret-Pass1", Algorithm.SHA256
    )
    with store.engine.connect() as conn:
        dump = " ".join(str(row) for row in conn.exec_driver_sql("SELECT * FROM extensions"))
    assert "Very-Secret-Pass1" not in dump
    assert store.extension_auth("pbxwarden", "1001") is None
    assert store.extension_auth("other-realm", "1000") is None


def test_bad_input_is_refused_and_nothing_is_lost(store: Store) -> None:
    store.add_extensions([("1000", "Very-Secret-Pass1")])
    with pytest.raises(StoreError, match="already exists"):
        store.add_extensions([("1001", "Very-Secret-Pass2"), ("1000", "Very-Secret-Pass3")])
    with pytest.raises(StoreError, match="too short"):
        store.add_extensions([("1002", "short")])
    with pytest.raises(StoreError, match="invalid extension"):
        store.add_extensions([("10a2", "Very-Secret-Pass2")])
    with pytest.raises(StoreError, match="unknown tenant"):
        store.add_extensions([("1003", "Very-Secret-Pass2")], tenant="nope")
    # All-or-nothing: 1001 from the failed batch is absent, 1000 unchanged.
    assert [e["number"] for e in store.list_extensions()] == ["1000"]
    auth = store.extension_auth("pbxwarden", "1000")
    assert auth is not None
    assert auth.ha1[Algorithm.MD5] == compute_ha1(
        "1000", "pbxwarden", "Very-Secret-Pass1", Algorithm.MD5
    )


def test_bindings_round_trip_upsert_and_expiry(store: Store) -> None:
    store.add_extensions([("1000", "Very-Secret-Pass1")])
    auth = store.extension_auth("pbxwarden", "1000")
    assert auth is not None
    now = time.time()
    live = BindingRow(
        auth.id, "sip:1000@192.0.2.1:5060", now + 60, 0.5, "cid", 1, "udp:192.0.2.1:5060", "phone"
    )
    stale = BindingRow(
        auth.id, "sip:1000@192.0.2.2:5060", now - 1, None, "cid2", 1, "udp:192.0.2.2:5060", None
    )
    store.write_bindings([live, stale], [], now - 5)
    refreshed = BindingRow(
        auth.id, live.contact, now + 120, 0.5, "cid", 2, live.source, "phone", now - 5
    )
    store.write_bindings([refreshed], [], now)
    rows = store.load_bindings(now)
    assert len(rows) == 1
    aor, row = rows[0]
    assert aor == "pbxwarden/1000" and row.cseq == 2 and row.expires_at == pytest.approx(now + 120)
    assert row.registered_at == pytest.approx(now - 5)  # the first write, kept by the refresh
    assert store.list_extensions()[0]["registrations"] == 1
    store.write_bindings([], [(auth.id, live.contact)], now)
    assert store.load_bindings(now) == []


def test_networks_are_recorded_in_one_batch_and_read_again_by_change(store: Store) -> None:
    store.add_extensions([("1000", "Very-Secret-Pass1"), ("1001", "Very-Secret-Pass2")])
    a = store.extension_auth("pbxwarden", "1000")
    b = store.extension_auth("pbxwarden", "1001")
    assert a is not None and b is not None
    assert store.networks_version() == 0.0
    now = time.time()
    store.record_networks(
        [(a.id, "192.0.2.0/24", now, True), (b.id, "198.51.100.0/24", now, False)]
    )
    store.record_networks([(a.id, "192.0.2.0/24", now + 9, True)])  # known: kept as it was
    first = store.networks_version()
    assert first == pytest.approx(time.time(), abs=5)  # the database's clock, Unix seconds
    assert sorted(store.approved_networks()) == [(a.id, "192.0.2.0/24")]
    assert store.approved_networks(since=first + 1) == []
    time.sleep(0.01)
    store.approve_network("default", "1001", "198.51.100.0/24")
    assert store.networks_version() > first  # an approval is a change too
    assert store.approved_networks(since=first + 0.001) == [(b.id, "198.51.100.0/24")]
    rows = {(r["extension"], r["network"]): r for r in store.list_networks()}
    assert rows[("1000", "192.0.2.0/24")]["first_seen"] == pytest.approx(now)


def test_guard_baselines_upsert_and_skip_damaged_rows(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'b.db'}")
    store.migrate()
    store.save_baselines([("acme", "1000", {"calls": 1}), ("acme", "", {"calls": 2})])
    store.save_baselines([("acme", "1000", {"calls": 3})])
    assert sorted(store.load_baselines()) == [
        ("acme", "", {"calls": 2}),
        ("acme", "1000", {"calls": 3}),
    ]
    with store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE guard_baselines SET data = '{broken' WHERE extension = ''")
    assert store.load_baselines() == [("acme", "1000", {"calls": 3})]
    store.close()


def test_an_emergency_number_cannot_be_an_extension(store: Store) -> None:
    for number in ("911", "112", "9911"):
        with pytest.raises(StoreError, match="emergency"):
            store.add_extensions([(number, "Very-Secret-Pass1")])
    store.add_tenant("de", "de.example", "DE")
    with pytest.raises(StoreError, match="emergency number in DE"):
        store.add_extensions([("110", "Very-Secret-Pass1")], tenant="de")
    store.add_extensions([("911", "Very-Secret-Pass1")], tenant="de")  # not one in Germany


def test_extension_locks_are_stored_shown_lifted_and_outdated_by_a_new_password(
    store: Store,
) -> None:
    from pbxwarden.firewall.locks import ExtensionLock
    from pbxwarden.store.admin import AdminStore
    from pbxwarden.store.locks import LockStore

    store.add_extensions([("1000", "Very-Secret-Pass1"), ("1001", "Very-Secret-Pass2")])
    store.add_trunk("default", "carrier", "198.51.100.10", 5060, "udp", ["+"])
    locks = LockStore(store)
    assert locks.trunk_hosts() == frozenset({"198.51.100.10"})
    auth = store.extension_auth("pbxwarden", "1000")
    assert auth is not None and auth.trunk_access is False
    now = time.time()
    lock = ExtensionLock(auth.id, now + 600, 2, now - 1, "12 failed", ("192.0.2.1", "::1"))
    locks.save_locks([lock])
    locks.save_locks([ExtensionLock(auth.id, now + 9, 1, now - 5, "older", ())])  # ignored
    assert locks.load_locks(now - 3600) == [lock]
    rows = {r["number"]: r for r in store.list_extensions()}
    assert rows["1000"]["locked_until"] == lock.until and rows["1000"]["lock_reason"] == "12 failed"
    assert rows["1001"]["locked_until"] is None
    assert locks.lift("default", "1000", "alice") and not locks.lift("default", "1000", "alice")
    [lifted] = locks.load_locks(now - 3600)
    assert lifted.until <= time.time() and lifted.level == 2  # kept for escalation
    assert {r["number"]: r for r in store.list_extensions()}["1000"]["locked_until"] is None
    locks.save_locks([ExtensionLock(auth.id, now + 600, 3, now, "again", ())])
    AdminStore(store).rotate_extension_password("default", "1000")
    assert {r["number"]: r for r in store.list_extensions()}["1000"]["locked_until"] is None
    assert not locks.lift("default", "1000", "alice")  # the new password already lifted it
    assert locks.set_trunk_access("default", "1000", True) is False
    auth = store.extension_auth("pbxwarden", "1000")
    assert auth is not None and auth.trunk_access is True
    with pytest.raises(StoreError, match="no extension 1999"):
        locks.lift("default", "1999", "alice")


def test_one_number_is_never_both_an_extension_and_a_group(store: Store) -> None:
    store.add_extensions([("1000", "Good-Passw0rd-aaa")])
    from pbxwarden.store.dialplan import GroupStore

    groups = GroupStore(store)
    groups.put("default", "600", ["1000", "+12025550143"], fallback="1000")
    with pytest.raises(StoreError, match="is a ring group or time condition"):
        store.add_extensions([("600", "Good-Passw0rd-bbb")])
    with pytest.raises(StoreError, match="is an extension"):
        groups.put("default", "1000", ["600"])
    with pytest.raises(StoreError, match="is a group"):
        groups.put("default", "601", ["600"])  # members are extensions or numbers
    groups.put("default", "601", ["1000"], fallback="600")  # a fallback may be a group
    assert store.add_did("+12025550100", "default", "600") == "+12025550100"
    snapshot = store.routing_snapshot()
    assert snapshot.groups[("default", "600")].members == ("1000", "+12025550143")
