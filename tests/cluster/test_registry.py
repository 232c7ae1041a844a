"""The node registry against a real redis-server: heartbeats show each node up with what
it says of itself, a node that stops beating shows as lost after its own ``lost_after``,
a clean stop marks it stopped, long-gone nodes are forgotten, and Redis down costs a
bounded timeout, never an exception."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from pbxwarden import __version__
from pbxwarden.cluster.connection import RedisLink
from pbxwarden.cluster.registry import (
    CpuMeter,
    DatabaseProbe,
    NodeRegistry,
    check_database,
    node_view,
    read_registry,
    tree_cpu_seconds,
)
from pbxwarden.config import ConfigError, load_config
from pbxwarden.server_metrics import cluster_node_metrics
from pbxwarden.store.db import make_engine
from tests.helpers import free_port
from tests.redis_server import RedisServer

pytestmark = pytest.mark.redis
pytest.importorskip("redis.asyncio")

PREFIX = "test:"


def load(calls: int = 0, contacts: int = 0) -> Callable[[], dict[str, Any]]:
    return lambda: {"addresses": ["udp:127.0.10.1:5060"], "calls": calls, "contacts": contacts}


@asynccontextmanager
async def registry(
    url: str, name: str, started: bool = True, **kwargs: Any
) -> AsyncIterator[NodeRegistry]:
    link = RedisLink(url, 0.5, name)
    reg = NodeRegistry(link, PREFIX, name, kwargs.pop("load", load()), **kwargs)
    if started:
        reg.start()
    try:
        yield reg
    finally:
        if reg._task is not None:
            reg._task.cancel()
        await link.close()


async def until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.02)


async def nodes(url: str) -> dict[str, dict[str, Any]]:
    status = await asyncio.to_thread(read_registry, url, PREFIX, 1.0)
    assert status["redis"]["reachable"], status
    return {n["node"]: n for n in status["nodes"]}


async def wait_state(url: str, name: str, state: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        seen = (await nodes(url)).get(name)
        if seen is not None and seen["state"] == state:
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} never {state}: {seen}")
        await asyncio.sleep(0.05)


async def test_each_node_shows_up_with_what_it_says_of_itself(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    probe = DatabaseProbe(engine, 1.0)
    try:
        async with (
            registry(redis_server.url, "a", load=load(3, 40), database=probe.read, interval=0.1),
            registry(redis_server.url, "b", load=load(0, 7), interval=0.1) as b,
        ):
            a = await wait_state(redis_server.url, "a", "up")
            await wait_state(redis_server.url, "b", "up")
            assert a["version"] == __version__ and a["pid"] == os.getpid()
            assert a["calls"] == 3 and a["contacts"] == 40
            assert a["addresses"] == ["udp:127.0.10.1:5060"]
            assert a["cpu"] >= 0 and a["redis"]["up"] is True
            assert "uid" not in a and a["age"] < 5 and a["last_seen"] > 0
            # the database probe runs in a thread: its answer shows in a later heartbeat
            await until(lambda: probe.last["reachable"] is True, "database probed")
            deadline = time.monotonic() + 10
            while (await nodes(redis_server.url))["a"]["database"]["reachable"] is not True:
                assert time.monotonic() < deadline, "database health never published"
                await asyncio.sleep(0.05)
            # each heartbeat's answer is the node's view of the whole registry (/metrics)
            await until(lambda: {n["node"] for n in b.view} == {"a", "b"}, "B's view")
            assert b.counts() == {"up": 2, "lost": 0, "stopped": 0}
            names = {m.name for m in cluster_node_metrics(b.view, b.counts())}
            assert {"pbxwarden_cluster_nodes", "pbxwarden_cluster_node_calls"} <= names
    finally:
        engine.dispose()


async def test_a_node_that_stops_beating_is_lost_after_its_own_lost_after(
    redis_server: RedisServer,
) -> None:
    async with (
        registry(redis_server.url, "a", interval=0.1, lost_after=0.6) as a,
        registry(redis_server.url, "b", interval=0.1),
    ):
        await wait_state(redis_server.url, "a", "up")
        await wait_state(redis_server.url, "b", "up")
        assert a._task is not None
        a._task.cancel()  # dies without a word, as with SIGKILL
        died = time.monotonic()
        lost = await wait_state(redis_server.url, "a", "lost")
        took = time.monotonic() - died
        print(f"lost {took:.2f} s after the last heartbeat task ended (lost_after 0.6 s)")
        assert lost["age"] > 0.6 and took < 5.0
        assert (await nodes(redis_server.url))["b"]["state"] == "up"  # B's default: 10 s


async def test_a_clean_stop_marks_the_node_stopped_and_a_restart_brings_it_back(
    redis_server: RedisServer,
) -> None:
    async with registry(redis_server.url, "a", interval=0.1) as a:
        await wait_state(redis_server.url, "a", "up")
        started = time.monotonic()
        await a.stop()
        assert time.monotonic() - started < 2.0
        stopped = await wait_state(redis_server.url, "a", "stopped", timeout=0.5)
        assert stopped["stopped_at"] >= stopped["started_at"] - 5
        beats = a.beats
        await asyncio.sleep(0.3)
        assert a.beats == beats  # no heartbeat after the stop
    async with registry(redis_server.url, "a", interval=0.1):  # the same name, restarted
        await wait_state(redis_server.url, "a", "up")


async def test_a_stop_leaves_a_newer_process_of_the_same_name_alone(
    redis_server: RedisServer,
) -> None:
    async with registry(redis_server.url, "a", interval=0.1) as old:
        await until(lambda: old.beats > 0, "old beat")
        assert old._task is not None
        old._task.cancel()  # killed: its record stays until the new one's heartbeat
        async with registry(redis_server.url, "a", interval=0.1) as new:
            await until(lambda: new.beats > 1, "new beat")
            await old.stop()  # the old one's stop comes late
            await asyncio.sleep(0.3)
            assert (await nodes(redis_server.url))["a"]["state"] == "up"


async def test_two_processes_with_one_name_are_noticed(redis_server: RedisServer) -> None:
    async with (
        registry(redis_server.url, "same", interval=0.05) as one,
        registry(redis_server.url, "same", interval=0.05) as two,
    ):
        await until(lambda: one._other >= 2 or two._other >= 2, "the clash noticed")


async def test_nodes_gone_long_ago_are_forgotten(redis_server: RedisServer) -> None:
    async with registry(redis_server.url, "old", interval=0.1, forget_after=0.5) as old:
        await wait_state(redis_server.url, "old", "up")
        await old.stop()
    async with registry(redis_server.url, "new", interval=0.1, forget_after=0.5):
        deadline = time.monotonic() + 10
        while "old" in await nodes(redis_server.url):
            assert time.monotonic() < deadline, "never forgotten"
            await asyncio.sleep(0.05)


async def test_redis_down_is_an_answer_within_the_timeout() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    async with registry(url, "a", started=False) as a:
        started = time.monotonic()
        assert await a.beat() is False
        await a.stop()  # no exception either
        assert time.monotonic() - started < 2.0
    started = time.monotonic()
    status = await asyncio.to_thread(read_registry, url, PREFIX, 0.5)
    assert time.monotonic() - started < 2.0
    assert status["redis"]["reachable"] is False and status["redis"]["error"]
    assert status["nodes"] == []


def test_states_by_age_and_record() -> None:
    records = {
        "a": '{"state": "up", "lost_after": 10}',
        "b": '{"state": "up", "lost_after": 1}',
        "c": '{"state": "stopped", "addresses": {}}',
        "d": "not json",
    }
    view = node_view(records, {"a": 95.0, "b": 95.0, "c": 10.0}, 100.0)
    assert [(n["node"], n["state"]) for n in view] == [("a", "up"), ("b", "lost"), ("c", "stopped")]
    assert view[2]["addresses"] == []  # Lua's empty table, back as a list


def test_database_health_is_bounded_and_says_why(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        health = check_database(engine, 2.0)
        assert health["reachable"] and health["kind"] == "sqlite" and health["version"]
    finally:
        engine.dispose()
    engine = make_engine(f"sqlite:///{tmp_path / 'missing' / 'db.sqlite'}")
    try:
        health = check_database(engine, 2.0)
        assert not health["reachable"] and "OperationalError" in health["error"]
    finally:
        engine.dispose()


@pytest.mark.skipif(
    not os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children"),
    reason="no /proc/PID/task/TID/children (Linux with CONFIG_PROC_CHILDREN)",
)
def test_cpu_share_counts_the_process_tree() -> None:
    meter = CpuMeter()
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\nend = time.process_time() + 0.4\n"
            "while time.process_time() < end: pass\ntime.sleep(30)",
        ]
    )
    try:
        before = tree_cpu_seconds(os.getpid())
        deadline = time.monotonic() + 20
        while tree_cpu_seconds(os.getpid()) - before < 0.3:  # the child's seconds count
            assert time.monotonic() < deadline, "the child's CPU time never showed"
            time.sleep(0.05)
        assert meter.read() > 0
    finally:
        child.kill()
        child.wait(5)


def test_postgresql_health_and_a_postgresql_that_is_not_there(postgres_url: str) -> None:
    engine = make_engine(postgres_url)
    try:
        health = check_database(engine, 5.0)
        assert health["reachable"] and health["kind"] == "postgresql", health
        assert health["version"] and health["latency_ms"] is not None
    finally:
        engine.dispose()
    gone = postgres_url.rsplit("@", 1)[0] + f"@127.0.0.1:{free_port()}/postgres"
    engine = make_engine(gone)
    try:
        started = time.monotonic()
        health = check_database(engine, 5.0)
        assert time.monotonic() - started < 5.5
        assert not health["reachable"] and "OperationalError" in health["error"], health
    finally:
        engine.dispose()


def test_lost_after_must_exceed_the_heartbeat_interval(tmp_path: Path) -> None:
    env = {"PBXWARDEN_CLUSTER__HEARTBEAT_INTERVAL": "5", "PBXWARDEN_CLUSTER__LOST_AFTER": "5"}
    with pytest.raises(ConfigError, match="lost_after must be more than"):
        load_config(tmp_path, env)
    env["PBXWARDEN_CLUSTER__LOST_AFTER"] = "5.5"
    assert load_config(tmp_path, env).cluster.lost_after == 5.5
