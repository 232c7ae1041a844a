"""Learned baselines per node (migration 0024), on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import text

from pbxwarden.store.db import Store


def _url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    import psycopg

    base = request.getfixturevalue("postgres_url")
    name = f"t_{secrets.token_hex(6)}"
    host, port = base.split("@", 1)[1].split("/", 1)[0].split(":")
    with psycopg.connect(f"host={host} port={port} user=pbx dbname=postgres", autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    return base.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return _url(request, tmp_path)


@pytest.fixture
def store(url: str) -> Iterator[Store]:
    s = Store(url)
    s.migrate()
    try:
        yield s
    finally:
        s.close()


def test_each_node_has_its_own_rows(store: Store) -> None:
    store.save_baselines([("acme", "1000", {"calls": 1}), ("acme", "", {"calls": 5})], "a")
    store.save_baselines([("acme", "1000", {"calls": 2})], "b")
    store.save_baselines([("acme", "1000", {"calls": 3})], "b")  # b's newer row replaces its own
    assert sorted(store.load_baselines("a")) == [
        ("acme", "", {"calls": 5}),
        ("acme", "1000", {"calls": 1}),
    ]
    assert store.load_baselines("b") == [("acme", "1000", {"calls": 3})]
    assert store.load_baselines() == []  # a single node's rows ("") are apart
    versions = store.baseline_versions("a")
    assert set(versions) == {("acme", "1000", "b")}
    rows = store.other_baselines([("acme", "1000"), ("acme", "")], "a")
    assert [(t, e, n, d) for t, e, n, _, d in rows] == [("acme", "1000", "b", {"calls": 3})]
    assert rows[0][3] == versions[("acme", "1000", "b")]
    # the API's view of a key: every node's learning merged
    merged = store.load_baseline("acme", "1000")
    assert merged is not None and merged["calls"] == 4
    assert store.load_baseline("acme", "") == {"calls": 5}
    assert store.load_baseline("other", "") is None


def test_a_single_nodes_rows_are_claimed_once(store: Store) -> None:
    store.save_baselines([("acme", "1000", {"calls": 1}), ("acme", "", {"calls": 2})])
    store.save_baselines([("acme", "2000", {"calls": 7})])
    store.save_baselines([("acme", "2000", {"calls": 9})], "a")  # a already has this key
    assert store.claim_baselines("a") == 2
    assert sorted(store.load_baselines("a")) == [
        ("acme", "", {"calls": 2}),
        ("acme", "1000", {"calls": 1}),
        ("acme", "2000", {"calls": 9}),
    ]
    assert store.load_baselines() == [("acme", "2000", {"calls": 7})]  # not a's to take
    assert store.claim_baselines("b") == 1  # the next node takes what is left, once
    assert store.claim_baselines("c") == 0
    assert store.claim_baselines("") == 0


def test_two_nodes_starting_at_once_claim_each_row_once(store: Store) -> None:
    store.save_baselines([("acme", str(1000 + i), {"calls": i}) for i in range(300)])
    claimed: dict[str, int] = {}
    start = threading.Barrier(2)

    def claim(node: str) -> None:
        start.wait()
        claimed[node] = store.claim_baselines(node)

    threads = [threading.Thread(target=claim, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert claimed["a"] + claimed["b"] == 300
    keys = [(t, e) for n in ("a", "b") for t, e, _ in store.load_baselines(n)]
    assert len(keys) == len(set(keys)) == 300
    assert store.load_baselines() == []


def test_migration_0024_makes_existing_rows_node_empty(url: str) -> None:
    """A database at 0023 with a single node's baselines: after 0024 they are node "",
    and a downgrade keeps one row per key."""
    s = Store(url)
    cfg = AlembicConfig()
    cfg.set_main_option(
        "script_location", str(Path(__file__).parents[2] / "src/pbxwarden/store/migrations")
    )
    try:
        with s.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0023")
            conn.execute(
                text(
                    "INSERT INTO guard_baselines (tenant, extension, data, updated_at) "
                    "VALUES ('acme', '1000', '{\"calls\": 4}', 1.0)"
                )
            )
        s.migrate()
        assert s.load_baselines() == [("acme", "1000", {"calls": 4})]
        s.save_baselines([("acme", "1000", {"calls": 6})], "a")
        with s.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0023")
            rows = conn.execute(text("SELECT tenant, extension, data FROM guard_baselines")).all()
        assert [tuple(r) for r in rows] == [("acme", "1000", '{"calls": 4}')]
    finally:
        s.close()
