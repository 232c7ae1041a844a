"""Redis is no single point of failure: two nodes share a Redis master with a replica
and a Redis Sentinel (``cluster.redis_url = "redis+sentinel://..."``). The master is
killed with SIGKILL; Sentinel promotes the replica, and the nodes find the new master
through it: a ban made on one node after the failover is in force on the other.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import PbxProcess, cli, wait_for
from tests.integration.test_cluster import PROPAGATION_BOUND, Prober, node, stats, time_until_silent
from tests.redis_server import RedisServer, SentinelServer, redis_available

pytestmark = [
    pytest.mark.redis,
    pytest.mark.timeout(240),
    pytest.mark.skipif(not redis_available(), reason="redis-server not installed"),
]


def _ask(server: RedisServer, *command: str) -> list[str] | str | None:
    import redis

    client = redis.Redis(
        host=server.host, port=server.port, socket_timeout=2, decode_responses=True
    )
    try:
        answer = client.execute_command(*command)
    except (redis.RedisError, OSError):
        return None
    finally:
        client.close()
    return answer  # type: ignore[no-any-return]


@pytest.fixture
def redundant(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer, SentinelServer]]:
    """A master, its replica and a Sentinel that knows both (stopped however it ends)."""
    pytest.importorskip("redis")
    master = RedisServer(tmp_path / "master")
    replica = RedisServer(
        tmp_path / "replica", extra=("--replicaof", "127.0.0.1", str(master.port))
    )
    sentinel = SentinelServer(tmp_path / "sentinel", master)
    started: list[RedisServer] = []
    try:
        for server in (master, replica, sentinel):
            server.start()
            started.append(server)

        def ready() -> bool:  # the replica in sync, and the sentinel has seen it
            role = _ask(replica, "ROLE")
            known = _ask(sentinel, "SENTINEL", "REPLICAS", sentinel.name)
            return bool(role and role[0] == "slave" and role[3] == "connected" and known)

        assert wait_for(ready, timeout=30), (master.workdir, sentinel.workdir)
        yield master, replica, sentinel
    finally:
        for server in reversed(started):
            server.stop()


def test_nodes_find_the_new_master_after_sentinel_fails_over(
    tmp_path: Path, redundant: tuple[RedisServer, RedisServer, SentinelServer]
) -> None:
    master, replica, sentinel = redundant
    shared = {"PBXWARDEN_CLUSTER__REDIS_URL": sentinel.url}
    a = node(tmp_path, "a", "127.0.14.1", master, **shared)
    b = node(tmp_path, "b", "127.0.14.2", master, **shared)
    nodes: tuple[PbxProcess, PbxProcess] = (a, b)
    try:
        assert wait_for(lambda: all(stats(n).get("redis") == "up" for n in nodes))
        before = "127.0.15.9"
        at_b = Prober(b, before)
        try:
            cli(a.data_dir, "bans", "add", before, "--reason", "before the failover")
            assert time_until_silent(at_b, time.monotonic()) < PROPAGATION_BOUND
        finally:
            at_b.close()
        # the ban is on the replica too (replicated), before the master dies
        assert wait_for(lambda: bool(_ask(replica, "KEYS", "test:bans*")))

        assert master.proc is not None
        master.proc.kill()  # SIGKILL: no goodbye to anyone
        master.proc.wait(10)
        killed = time.monotonic()
        after = "127.0.15.10"
        at_a = Prober(a, after)
        try:
            assert at_a.answered()
            # made on B at once, while Sentinel is still finding the master dead: B
            # keeps it and shares it when Redis (the new master) answers
            cli(b.data_dir, "bans", "add", after, "--reason", "during the failover")
            elapsed = time_until_silent(at_a, killed, limit=30.0)
        finally:
            at_a.close()
        promoted = _ask(replica, "ROLE")
        assert promoted is not None and promoted[0] == "master", promoted
        print(f"master killed: a ban made on B meanwhile in force on A {elapsed:.2f} s later")
        assert wait_for(lambda: all(stats(n).get("redis") == "up" for n in nodes))
        # what was shared before the failover is still in force on both
        for pbx in nodes:
            probe = Prober(pbx, before)
            try:
                assert not probe.answered(timeout=1.0)
            finally:
                probe.close()
        assert _ask(replica, "HEXISTS", "test:bans", after) == 1
    finally:
        a.stop()
        b.stop()
