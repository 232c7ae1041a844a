"""Learned baselines on two real nodes sharing one PostgreSQL (``baseline_sync.py``).

Learning itself takes simulated days (``tests/cluster/test_baselines.py`` drives two
guards through it); here the servers' own wiring: a single node's rows (node "") are
taken over by the first node that starts, the second node merges them at its start, and
a row another node stores later is merged by both within their ``baseline_interval``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pbxwarden.guard.baseline import Baseline
from pbxwarden.store.db import Store
from tests.helpers import PbxProcess, cli, wait_for
from tests.postgres_server import PostgresServer, postgres_available
from tests.redis_server import RedisServer

pytestmark = [
    pytest.mark.redis,
    pytest.mark.skipif(not postgres_available(), reason="PostgreSQL or psycopg not installed"),
    pytest.mark.timeout(300),
]


def node(root: Path, name: str, host: str, pg: PostgresServer, redis: RedisServer) -> PbxProcess:
    data = root / name
    env = {
        "PBXWARDEN_STORAGE__URL": pg.url,
        "PBXWARDEN_CLUSTER__REDIS_URL": redis.url,
        "PBXWARDEN_CLUSTER__NODE": name,
        "PBXWARDEN_CLUSTER__KEY_PREFIX": "baselines:",
        "PBXWARDEN_CLUSTER__BASELINE_INTERVAL": "0.5",
    }
    cli(data, "init", env=env)
    return PbxProcess(data, host=host, env=env)


def stats(pbx: PbxProcess) -> dict[str, Any]:
    return dict(json.loads(cli(pbx.data_dir, "stats", "--json", env=pbx.env).stdout))


def learned(country: str, calls: int) -> dict[str, Any]:
    base = Baseline(first_at=1_800_000_000.0)
    for day in range(calls):
        base.learn_call(10, country, "+493012345678", 740_000 + day, 10)
    return base.to_json()


def test_nodes_take_over_and_merge_stored_baselines(
    tmp_path: Path, postgres_server: PostgresServer, redis_server: RedisServer
) -> None:
    pg = postgres_server
    a = node(tmp_path, "a", "127.0.12.1", pg, redis_server)
    b = node(tmp_path, "b", "127.0.12.2", pg, redis_server)
    store = Store(pg.url)
    store.save_baselines([("default", "1000", learned("DE", 12))])  # a single node's
    a.start()
    try:
        assert stats(a)["guard_baselines_claimed"] == 1
        assert store.load_baselines() == []
        assert [(t, e) for t, e, _ in store.load_baselines("a")] == [("default", "1000")]
        b.start()
        first = stats(b)
        assert first["guard_baselines_node"] == "b" and first["guard_baselines_claimed"] == 0
        assert first["guard_baselines_adopted"] == 1  # A's row, merged at B's start
        # a third node's row, stored later, is merged by both within their interval
        store.save_baselines([("default", "1000", learned("FR", 3))], "c")
        assert wait_for(
            lambda: (
                stats(a)["guard_baselines_adopted"] >= 1
                and stats(b)["guard_baselines_adopted"] >= 2
            ),
            timeout=30,
        ), (a.log()[-2000:], b.log()[-2000:])
        assert store.load_baseline("default", "1000") is not None
        merged = store.load_baseline("default", "1000")
        assert merged is not None and merged["countries"] == {"DE": 12, "FR": 3}
        # each node stored nothing of the others' (it learned nothing itself)
        assert [n for n in ("a", "b", "c") if store.load_baselines(n)] == ["a", "c"]
    finally:
        store.close()
        a.stop()
        b.stop()
