"""AdminStore and migration 0009 on both engines: SQLite and a real PostgreSQL server."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import inspect, text, update
from sqlalchemy.exc import DBAPIError

from pbxwarden.sip.digest import Algorithm, compute_ha1
from pbxwarden.store import db as store_db
from pbxwarden.store.admin import AdminRow, AdminStore
from pbxwarden.store.db import Store, StoreError

pytestmark = pytest.mark.timeout(60)
STRONG = "marble-cactus-whistle-52"


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'admin.db'}"
    else:
        import psycopg

        base = request.getfixturevalue("postgres_url")
        name = f"a_{secrets.token_hex(6)}"
        host, port = base.split("@", 1)[1].split("/", 1)[0].split(":")
        with psycopg.connect(
            f"host={host} port={port} user=pbx dbname=postgres", autocommit=True
        ) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        url = base.rsplit("/", 1)[0] + f"/{name}"
    s = Store(url)
    s.migrate()
    s.ensure_tenant("default", "pbxwarden")
    s.add_tenant("acme", "sip.acme.example")
    try:
        yield s
    finally:
        s.close()


def _alembic(store: Store, action: str, revision: str) -> None:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(Path(store_db.__file__).parent / "migrations"))
    with store.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        getattr(command, action)(cfg, revision)


def test_migration_creates_tables_and_downgrades(store: Store) -> None:
    tables = set(inspect(store.engine).get_table_names())
    assert {"admins", "admin_sessions", "api_tokens", "login_attempts", "audit_log"} <= tables
    AdminStore(store).audit("cli", "cli", "test", "x")
    _alembic(store, "downgrade", "0008")
    assert "audit_log" not in inspect(store.engine).get_table_names()
    _alembic(store, "upgrade", "head")
    assert "audit_log" in inspect(store.engine).get_table_names()


def test_audit_log_is_append_only_in_the_database(store: Store) -> None:
    admins = AdminStore(store)
    admins.audit("root", "127.0.0.1", "tenant.create", "tenant/x", None, {"password": "hunter2"})
    for sql in ("UPDATE audit_log SET actor = 'someone else'", "DELETE FROM audit_log"):
        with pytest.raises(DBAPIError, match="append-only"), store.engine.begin() as conn:
            conn.execute(text(sql))
    [entry] = admins.list_audit()
    assert entry["actor"] == "root" and entry["after"] == {"password": "[redacted]"}


def test_admin_accounts_and_passwords(store: Store) -> None:
    admins = AdminStore(store)
    info = admins.add_admin("Alice", STRONG, "operator", "acme")
    assert (info.username, info.role, info.tenant, info.totp) == (
        "alice",
        "operator",
        "acme",
        False,
    )
    for args, expected in [
        (("alice", STRONG), "already exists"),
        (("bob", "password123"), "too weak"),
        (("bob", "bob-bob-bob"), "too weak"),
        (("bad name", STRONG), "invalid user name"),
        (("bob", STRONG, "root"), "invalid role"),
        (("bob", STRONG, "admin", "nosuch"), "unknown tenant"),
    ]:
        with pytest.raises(StoreError, match=expected):
            admins.add_admin(*args)  # type: ignore[arg-type]
    assert admins.verify_login("alice", STRONG, None) == info
    assert admins.verify_login("ALICE ", STRONG, None) == info
    assert admins.verify_login("alice", STRONG + "x", None) is None
    assert admins.verify_login("nobody", STRONG, None) is None
    with store.engine.connect() as conn:
        stored = conn.execute(text("SELECT password_hash FROM admins")).scalar_one()
    assert stored.startswith("$argon2id$") and STRONG not in stored


def test_tokens_never_exceed_their_owner(store: Store) -> None:
    admins = AdminStore(store)
    admins.add_admin("ops", STRONG, "operator")
    admins.add_admin("boss", STRONG, "admin", "acme")
    with pytest.raises(StoreError, match="above"):
        admins.create_token("ops", "t", "admin")
    desc, token = admins.create_token("ops", "t", "operator", now=1000.0)
    assert token.startswith("pbxw_") and desc["scope"] == "operator"
    info = admins.token_info(token, 1001.0)
    assert info is not None and info.scope == "operator" and info.tenant is None
    # the owner is demoted: the token follows at once
    with store.engine.begin() as conn:
        conn.execute(update(AdminRow).where(AdminRow.username == "ops").values(role="read-only"))
    info = admins.token_info(token, 1002.0)
    assert info is not None and info.scope == "read-only"
    # a tenant-bound owner's tokens are bound to that tenant, whatever was asked
    with pytest.raises(StoreError, match="unknown tenant"):
        admins.create_token("boss", "b", "admin", "default")
    desc, bound = admins.create_token("boss", "b", "admin")
    assert desc["tenant"] == "acme"
    assert (info := admins.token_info(bound, 1003.0)) is not None and info.tenant == "acme"
    # expiry and revocation
    _, short = admins.create_token("boss", "s", "read-only", None, 2000.0, 1000.0)
    assert admins.token_info(short, 1999.0) is not None
    assert admins.token_info(short, 2000.0) is None
    revoked = admins.revoke_token(int(desc["id"]))
    assert revoked["revoked_at"] is None
    assert admins.token_info(bound, 1004.0) is None
    with pytest.raises(StoreError, match="already revoked"):
        admins.revoke_token(int(desc["id"]))
    assert admins.token_info("pbxw_" + secrets.token_urlsafe(32), 1005.0) is None


def test_login_throttling_counts_failures_in_the_window(store: Store) -> None:
    admins = AdminStore(store)

    def wait(now: float) -> float:
        return admins.login_retry_after("alice", "192.0.2.1", now, 3, 10, 100.0, 50.0)

    for t in (0.0, 10.0):
        admins.record_login("alice", "192.0.2.1", False, t)
    assert wait(11.0) == 0
    admins.record_login("alice", "192.0.2.1", False, 20.0)
    assert wait(21.0) == pytest.approx(49.0)
    assert wait(70.0) == 0  # the lockout is over
    admins.record_login("alice", "192.0.2.1", True, 71.0)  # a success resets the user's count
    for t in (72.0, 73.0):
        admins.record_login("alice", "192.0.2.1", False, t)
    assert wait(74.0) == 0
    # the user name is kept hashed: people type passwords into it
    with store.engine.connect() as conn:
        keys = list(conn.execute(text("SELECT user_key FROM login_attempts")).scalars())
    assert keys and all("alice" not in k for k in keys)


def test_rotate_extension_password(store: Store) -> None:
    store.add_extensions([("1000", "Good-Passw0rd-abc")])
    admins = AdminStore(store)
    before = store.extensions_version()
    new = admins.rotate_extension_password("default", "1000")
    auth = store.extension_auth("pbxwarden", "1000")
    assert auth is not None
    assert auth.ha1[Algorithm.MD5] == compute_ha1("1000", "pbxwarden", new, Algorithm.MD5)
    assert store.extensions_version()[1] >= before[1]
    with pytest.raises(StoreError, match="no extension"):
        admins.rotate_extension_password("acme", "1000")


def test_unknown_users_cost_the_same_argon2_work(store: Store) -> None:
    """No timing shortcut tells an attacker which user names exist."""
    admins = AdminStore(store)
    admins.add_admin("alice", STRONG, "admin")

    def fastest(username: str) -> float:
        times = []
        for _ in range(3):
            started = time.perf_counter()
            assert admins.verify_login(username, "not-the-password", None) is None
            times.append(time.perf_counter() - started)
        return min(times)

    known, unknown = fastest("alice"), fastest("nobody")
    assert unknown > 0.5 * known and known > 0.005
