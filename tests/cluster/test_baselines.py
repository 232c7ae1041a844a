"""Two guards sharing one real PostgreSQL merge what each learned (``baseline_sync.py``).

Each node stores only its own share and judges with both: a country learned only through
node A is usual on node B after B's refresh, and what B then learns reaches A, counted
once. PostgreSQL stopped under a node: nothing learned is lost, the round raises (the
server's write-back logs it once and goes on) and succeeds once the server is back; a
node stopped during the outage spools its rows and stores them at its next start.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from pbxwarden.baseline_sync import BaselineSync
from pbxwarden.guard.engine import Guard
from pbxwarden.pbx.cdr import unreachable
from pbxwarden.store.db import Store
from tests.guard.test_rules import HOUR, attempt, call, guard, learn_two_weeks
from tests.postgres_server import PostgresServer

DE = "011493012345678"
FR = "01133142360000"
NEW = "2025550199"
NEW_E164 = "+12025550199"
POLICY = {"allow_countries": ["DE", "FR"], "same_prefix_calls": 50, "calls_per_hour": 200}


def node(url: str, name: str, tmp_path: Path) -> tuple[Guard, BaselineSync, Store]:
    store = Store(url)
    store.migrate()
    g = guard(**POLICY)
    return g, BaselineSync(g, store, name, True, tmp_path / f"{name}-spool.json"), store


async def retried(step: Callable[[], Awaitable[None]]) -> None:
    """As the server's write-back does: a round that failed for the database is tried
    again (a connection pooled before a restart fails once)."""
    for _ in range(4):
        try:
            await step()
            return
        except Exception as exc:
            if not unreachable(exc):
                raise
    await step()


async def test_a_country_learned_on_node_a_is_usual_on_node_b(
    postgres_url: str, tmp_path: Path
) -> None:
    import psycopg

    host, port = postgres_url.split("@", 1)[1].split("/", 1)[0].split(":")
    with psycopg.connect(f"host={host} port={port} user=pbx dbname=postgres", autocommit=True) as c:
        c.execute("DROP DATABASE IF EXISTS merged_baselines")
        c.execute("CREATE DATABASE merged_baselines")
    url = postgres_url.rsplit("/", 1)[0] + "/merged_baselines"
    a, sync_a, store_a = node(url, "a", tmp_path)
    b, sync_b, store_b = node(url, "b", tmp_path)
    try:
        await sync_a.load()
        await sync_b.load()
        now = learn_two_weeks(a)  # two weeks of office calls through node A: DE and national
        a.authorize(attempt("2025550143", at=now + 2 * HOUR))  # settles the last hour
        assert b.baseline("acme", "1000") is None  # B knows nothing of it yet
        await sync_a.round()
        await sync_b.round()
        seen = b.baseline("acme", "1000")
        assert seen is not None and seen.mature(now + 3 * HOUR) and seen.countries["DE"] == 14
        assert seen.own is not None and seen.own.calls == 0  # none of it is B's own
        germany = b.authorize(attempt(DE, at=now + 3 * HOUR))
        assert germany.allow and germany.severity is None, germany
        france = b.authorize(attempt(FR, at=now + 3 * HOUR + 60))
        assert any("first call ever from extension 1000 to FR" in r for r in france.reasons)
        # B's calls on three days to a number A never called reach A, counted once; each
        # node's rows keep only its own share
        t = now + 4 * HOUR
        for day in range(3):
            new = attempt(NEW, at=t + day * 86400.0)
            assert b.authorize(new).allow
            call(b, new, 9_000 + day, minutes=3)
        b.authorize(attempt("2025550143", at=t + 3 * 86400.0 + 2 * HOUR))  # settles
        await sync_b.round()
        await sync_a.round()
        await sync_a.round()  # a refresh without news changes nothing
        ab = a.baseline("acme", "1000")
        bb = b.baseline("acme", "1000")
        assert ab is not None and bb is not None and ab.own is not None and bb.own is not None
        assert NEW_E164 in ab.targets and NEW_E164 not in ab.own.targets
        assert ab.calls == ab.own.calls + bb.own.calls == bb.calls
        assert ab.country_seen_days("DE") == 15  # 14 on A, then the call on B, another day
        assert ab.own.country_days["DE"][0] == 14 and bb.own.country_days["DE"][0] == 1
        # days counted once: B's calls fell on days A had counted already, or on new ones
        assert ab.country_seen_days("US") == bb.country_seen_days("US") <= 14 + 4
        assert ab.to_json() == bb.to_json()  # both nodes judge with the same baseline
        rows = {n: {(t, e): d for t, e, d in store_a.load_baselines(n)} for n in ("a", "b")}
        assert NEW_E164 not in rows["a"][("acme", "1000")]["targets"]
        assert rows["a"][("acme", "1000")]["countries"]["DE"] == 14
        assert rows["b"][("acme", "1000")]["countries"]["DE"] == 1
        assert rows["b"][("acme", "")]["calls"] == bb.own.calls  # the tenant's share too
        # both nodes learn a call on the same new day before either reads the other's row:
        # the day is counted on both, then taken back by B (the later name) at its refresh
        hour_days = list(ab.hour_days)
        day6 = t + 6 * 86400.0  # 14:00, an hour only B called at before (three days)
        for g, ref in ((a, 9_100), (b, 9_101)):
            same_day = attempt("2025550143", at=day6)
            assert g.authorize(same_day).allow
            call(g, same_day, ref, minutes=3)
            g.authorize(attempt("2025550143", at=day6 + 2 * HOUR))  # settles
        await sync_b.round()
        await sync_a.round()
        await sync_b.round()  # B sees A's row: its own count of that day taken back...
        await sync_b.round()  # ...and stored
        await sync_a.round()
        ab, bb = a.baseline("acme", "1000"), b.baseline("acme", "1000")
        assert ab is not None and bb is not None
        assert ab.to_json() == bb.to_json()
        assert ab.hour_days[14] == hour_days[14] + 1  # 14:00 that day: once, on two nodes
        assert bb.own is not None and bb.own.hour_days[14] == 3  # B's earlier three days
        # the API's view of the tenant: both shares
        tenant = store_b.load_baseline("acme", "")
        assert tenant is not None and tenant["calls"] == ab.calls
    finally:
        store_a.close()
        store_b.close()


async def test_postgresql_down_loses_no_learning(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    pg = postgres_server
    a, sync_a, store_a = node(pg.url, "a", tmp_path)
    b, sync_b, store_b = node(pg.url, "b", tmp_path)
    try:
        await sync_a.load()
        await sync_b.load()
        now = learn_two_weeks(a)
        a.authorize(attempt("2025550143", at=now + 2 * HOUR))
        pg.stop()
        with pytest.raises(OperationalError) as failed:
            await sync_a.round()
        assert unreachable(failed.value)
        assert ("acme", "1000") in sync_a.pending  # kept for the next round
        with pytest.raises(OperationalError):
            await sync_a.round()  # again: still kept, nothing new exported
        pg.start()
        await retried(sync_a.round)
        assert not sync_a.pending
        await retried(sync_b.round)
        seen = b.baseline("acme", "1000")
        assert seen is not None and seen.countries["DE"] == 14
        # a node stopped during an outage spools what it could not store...
        assert b.authorize(attempt(FR, at=now + 3 * HOUR)).allow
        call(b, attempt(FR, at=now + 3 * HOUR + 60), 9_001, minutes=3)
        b.authorize(attempt("2025550143", at=now + 5 * HOUR))
        pg.stop()
        await sync_b.stop()
        assert sync_b.spool is not None and sync_b.spool.exists()
        store_b.close()
        pg.start()
        # ...and stores it when it starts again
        restarted, sync_again, store_b = node(pg.url, "b", tmp_path)
        await sync_again.load()
        assert not sync_b.spool.exists()
        mine = {(t, e): d for t, e, d in store_b.load_baselines("b")}
        assert mine[("acme", "1000")]["countries"].get("FR", 0) >= 1
        restored = restarted.baseline("acme", "1000")
        assert restored is not None and restored.countries["DE"] == 14  # A's share merged
        assert restored.own is not None and "DE" not in restored.own.countries
    finally:
        store_a.close()
        store_b.close()
