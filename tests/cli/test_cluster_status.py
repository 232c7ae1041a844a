"""``pbxwarden cluster status`` against a real redis-server and two real PBX nodes (on
127.0.10.1 and 127.0.10.2, each its own data directory): both listed up with their
version and addresses; a node killed with SIGKILL shows as lost after its
``cluster.lost_after`` (short here); one stopped cleanly as stopped; Redis stalled or
down, no cluster configured, or a PostgreSQL that is not there is one line on stderr and
exit status 1, with the health of what did answer still printed. ``GET /api/v1/cluster``
answers the same, for global admins only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pbxwarden import __version__
from tests.cluster_nodes import start_node
from tests.helpers import PbxProcess, cli, free_port
from tests.redis_server import RedisServer

# Two servers, Redis and a few dozen CLI runs: a minute or two on a loaded host.
pytestmark = [pytest.mark.redis, pytest.mark.timeout(300)]

PASSWORD = "Lantern-Harbor-7731"
HEARTBEAT = 0.25  # seconds (cluster.heartbeat_interval)
LOST_AFTER = 3.0  # seconds (cluster.lost_after): quick, yet 12 heartbeats on a busy host


def cluster_env(redis: RedisServer) -> dict[str, str]:
    """What makes a data directory part of the test's cluster (the nodes and the CLI)."""
    return {"PBXWARDEN_CLUSTER__REDIS_URL": redis.url, "PBXWARDEN_CLUSTER__KEY_PREFIX": "test:"}


def node(
    root: Path,
    name: str,
    host: str,
    redis: RedisServer,
    prepare: Callable[[Path], None] | None = None,
    **env: str,
) -> PbxProcess:
    """A node as tests/integration/test_cluster.py makes them, beating fast."""
    users = {"1000": PASSWORD, "2000": "Meadow-Cobalt-5590"}
    timers = {
        "PBXWARDEN_CLUSTER__HEARTBEAT_INTERVAL": str(HEARTBEAT),
        "PBXWARDEN_CLUSTER__LOST_AFTER": str(LOST_AFTER),
    }
    return start_node(root, name, host, redis, users, prepare, **{**timers, **env})


@pytest.fixture
def nodes(tmp_path: Path, redis_server: RedisServer) -> Iterator[tuple[PbxProcess, PbxProcess]]:
    http = free_port()  # node A also serves the admin API
    a = node(
        tmp_path,
        "a",
        "127.0.10.1",
        redis_server,
        PBXWARDEN_HTTP__ENABLED="true",
        PBXWARDEN_HTTP__LISTEN=f"127.0.0.1:{http}",
    )
    try:
        b = node(tmp_path, "b", "127.0.10.2", redis_server)
    except BaseException:
        a.stop()
        raise
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()


def status(
    data_dir: Path, redis: RedisServer | None, *args: str
) -> subprocess.CompletedProcess[str]:
    env = cluster_env(redis) if redis is not None else {}
    return cli(data_dir, "cluster", "status", *args, check=False, env=env)


def status_json(data_dir: Path, redis: RedisServer) -> dict[str, Any]:
    proc = status(data_dir, redis, "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    answer: dict[str, Any] = json.loads(proc.stdout)
    return answer


def wait_for_nodes(
    data_dir: Path,
    redis: RedisServer,
    predicate: Callable[[dict[str, dict[str, Any]]], bool],
    what: str,
    timeout: float = 30.0,
) -> dict[str, dict[str, Any]]:
    """Run the CLI until its nodes satisfy ``predicate`` (each run takes a moment)."""
    deadline = time.monotonic() + timeout
    seen: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        seen = {n["node"]: n for n in status_json(data_dir, redis)["nodes"]}
        if predicate(seen):
            return seen
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}: {json.dumps(seen, indent=1)}")


def state(name: str, wanted: str) -> Callable[[dict[str, dict[str, Any]]], bool]:
    return lambda seen: name in seen and seen[name]["state"] == wanted


def test_cluster_status_lists_the_nodes_and_sees_one_die(
    nodes: tuple[PbxProcess, PbxProcess], redis_server: RedisServer
) -> None:
    a, b = nodes

    def both_up_and_listening(seen: dict[str, dict[str, Any]]) -> bool:
        return all(
            state(n, "up")(seen) and seen[n].get("addresses") and seen[n].get("database")
            for n in ("a", "b")
        )

    seen = wait_for_nodes(b.data_dir, redis_server, both_up_and_listening, "both nodes up")
    for pbx, name in ((a, "a"), (b, "b")):
        record = seen[name]
        assert record["version"] == __version__
        assert pbx.proc is not None and record["pid"] == pbx.proc.pid
        assert f"udp:{pbx.host}:{pbx.port}" in record["addresses"], record
        assert record["calls"] == 0 and record["contacts"] == 0
        assert isinstance(record["overloaded"], bool)  # may be true a moment on a busy host
        assert record["cpu"] >= 0 and record["redis"]["up"] is True
        assert record["database"]["reachable"] is True, record
        assert record["lost_after"] == LOST_AFTER
    whole = status_json(b.data_dir, redis_server)
    assert whole["configured"] and whole["redis"]["reachable"]
    assert whole["redis"]["version"] and whole["redis"]["used_memory"] > 0
    assert whole["redis"]["keys"] >= 2 and whole["redis"]["keys_exact"]  # at least the registry
    assert whole["database"]["reachable"] and whole["database"]["kind"] == "sqlite"
    assert whole["versions"] == [__version__]
    table = status(b.data_dir, redis_server)  # the table an operator reads
    assert table.returncode == 0, table.stderr
    assert "127.0.10.1" in table.stdout and "udp,tcp" in table.stdout
    assert "Redis" in table.stdout and "reachable" in table.stdout

    # The admin API says the same, for global admins only (on node A).
    base = "http://" + a.env["PBXWARDEN_HTTP__LISTEN"]
    tokens = {}
    for role in ("admin", "operator"):
        cli(
            a.data_dir,
            *("admin", "add", f"ops-{role}", "--role", role, "--password", "-"),
            input_text="quartz-violin-harbor-97\n",
        )
        made = cli(a.data_dir, "admin", "token", f"ops-{role}", "--scope", role).stdout
        tokens[role] = made.strip().splitlines()[-1].strip()
    with httpx.Client(base_url=base, timeout=10) as api:
        reply = api.get("/api/v1/cluster", headers={"Authorization": f"Bearer {tokens['admin']}"})
        assert reply.status_code == 200, reply.text
        assert {n["node"]: n["state"] for n in reply.json()["nodes"]} == {"a": "up", "b": "up"}
        assert reply.json()["database"]["reachable"] is True
        refused = api.get(
            "/api/v1/cluster", headers={"Authorization": f"Bearer {tokens['operator']}"}
        )
        assert refused.status_code == 403, refused.text
        metrics = api.get("/metrics", headers={"Authorization": f"Bearer {tokens['admin']}"})
        assert metrics.status_code == 200
        assert 'pbxwarden_cluster_nodes{state="up"} 2.0' in metrics.text, metrics.text[-3000:]
        assert 'pbxwarden_cluster_node_calls{node="b"}' in metrics.text

    # SIGKILL: no goodbye; B's heartbeat stops and it shows as lost.
    assert b.proc is not None
    b.proc.send_signal(signal.SIGKILL)
    b.proc.wait(10)
    killed = time.monotonic()
    seen = wait_for_nodes(a.data_dir, redis_server, state("b", "lost"), "b lost")
    took = time.monotonic() - killed
    print(f"b shown lost {took:.2f} s after its SIGKILL (lost_after {LOST_AFTER} s)")
    assert seen["b"]["age"] > LOST_AFTER and seen["a"]["state"] == "up"
    table = status(a.data_dir, redis_server)
    assert table.returncode == 0 and "lost" in table.stdout  # a lost node is news, not an error

    # A clean stop (SIGTERM): A marks itself stopped on the way out.
    assert a.stop() == 0
    seen = wait_for_nodes(b.data_dir, redis_server, state("a", "stopped"), "a stopped", 5.0)
    assert seen["a"]["stopped_at"] >= seen["a"]["started_at"] - 1


def test_redis_down_or_no_cluster_is_one_line_and_exit_1(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    data = tmp_path / "pbx"
    data.mkdir()
    cli(data, "init")
    up = status_json(data, redis_server)  # Redis up, no node ever started
    assert up["nodes"] == [] and up["redis"]["reachable"] and up["database"]["reachable"]
    # a PostgreSQL that is not there: Redis's health still, the database's error, exit 1
    storage = f"postgresql+psycopg://pbx:hunter22secret@127.0.0.1:{free_port()}/pbx"
    proc = cli(
        data,
        *("cluster", "status", "--json"),
        check=False,
        env={**cluster_env(redis_server), "PBXWARDEN_STORAGE__URL": storage},
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("error: the database is unreachable: OperationalError"), line
    answer = json.loads(proc.stdout)
    assert answer["redis"]["reachable"] and answer["database"]["kind"] == "postgresql"
    assert not answer["database"]["reachable"]
    assert "hunter22secret" not in proc.stdout + proc.stderr  # the URL's password
    assert redis_server.proc is not None
    os.kill(redis_server.proc.pid, signal.SIGSTOP)  # alive, but answers nothing
    try:
        started = time.monotonic()
        proc = status(data, redis_server, "--json", "--timeout", "0.5")
        took = time.monotonic() - started
    finally:
        os.kill(redis_server.proc.pid, signal.SIGCONT)
    assert proc.returncode == 1 and "unreachable" in proc.stderr, proc.stdout + proc.stderr
    print(f"Redis stalled: cluster status answered in {took:.2f} s (CLI start included)")
    assert took < 15.0  # one command's timeout, not a hang (CLI start-up on a busy host)
    redis_server.stop()
    started = time.monotonic()
    proc = status(data, redis_server, "--json", "--timeout", "0.5")
    took = time.monotonic() - started
    assert proc.returncode == 1, proc.stdout + proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("error: Redis at redis://127.0.0.1:") and "unreachable" in line, line
    answer = json.loads(proc.stdout)  # the JSON is still there, with the database's health
    assert answer["redis"]["reachable"] is False and answer["database"]["reachable"] is True
    print(f"Redis down: cluster status answered in {took:.2f} s (CLI start included)")
    proc = status(data, redis_server)  # the table: the database line too
    assert proc.returncode == 1 and "unreachable" in proc.stdout
    assert "database" in proc.stdout and "reachable" in proc.stdout
    proc = status(data, None)  # no cluster.redis_url at all
    assert proc.returncode == 1
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("error: no cluster configured: cluster.redis_url is empty"), line
    assert "database" in proc.stdout and "reachable" in proc.stdout
