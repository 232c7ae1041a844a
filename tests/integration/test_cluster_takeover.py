"""A node killed mid-call: a survivor closes its call's CDR as interrupted.

Two real pbxwarden nodes sharing one real PostgreSQL (every durable record) and one
real redis-server (the node registry); SIPp phones. Node A is killed with SIGKILL
during an answered call; node B sees it lost (no heartbeat for ``lost_after``) and
closes the call's CDR, once, as interrupted; B's own call in progress is untouched.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from tests.helpers import (
    PbxProcess,
    cli,
    free_port,
    run_sipp,
    sipp_available,
    start_sipp_uac,
    start_sipp_uas,
    wait_for,
)
from tests.postgres_server import PostgresServer, postgres_available
from tests.redis_server import RedisServer

pytestmark = [
    pytest.mark.redis,
    pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) not installed"),
    pytest.mark.skipif(not postgres_available(), reason="PostgreSQL or psycopg not installed"),
    pytest.mark.timeout(300),
]

USERS = {"1000": "Caller-Passw0rd-x", "2000": "Callee-Passw0rd-y"}
HEARTBEAT = 0.25
LOST_AFTER = 2.0


def node(root: Path, name: str, host: str, pg: PostgresServer, redis: RedisServer) -> PbxProcess:
    data = root / name
    env = {
        "PBXWARDEN_STORAGE__URL": pg.url,
        "PBXWARDEN_CLUSTER__REDIS_URL": redis.url,
        "PBXWARDEN_CLUSTER__NODE": name,
        "PBXWARDEN_CLUSTER__KEY_PREFIX": "takeover:",
        "PBXWARDEN_CLUSTER__HEARTBEAT_INTERVAL": str(HEARTBEAT),
        "PBXWARDEN_CLUSTER__LOST_AFTER": str(LOST_AFTER),
    }
    cli(data, "init", env=env)  # the second node finds the database initialised
    return PbxProcess(data, host=host, env=env)


def cdrs(pbx: PbxProcess) -> list[dict[str, object]]:
    out = cli(pbx.data_dir, "cdr", "--json", env=pbx.env).stdout
    return [] if out.strip() == "no call records" else json.loads(out)


def answered_call(pbx: PbxProcess, work: Path) -> None:
    """2000 registered on ``pbx`` answers; 1000 calls it and stays on the line."""
    work.mkdir()
    port = free_port()
    target = f"{pbx.host}:{pbx.port}"
    reg = run_sipp(
        "register.xml", target, users={"2000": USERS["2000"]}, local_port=port, workdir=work
    )
    assert reg.successful == 1, reg.output
    start_sipp_uas("call_uas.xml", port, work, timeout=60)
    caller = work / "caller"
    caller.mkdir()
    start_sipp_uac(
        "call_uac_wait_bye.xml",
        target,
        users={"1000": USERS["1000"]},
        extra=["-s", "2000"],
        workdir=caller,
        timeout=60,
    )


def test_a_survivor_closes_a_killed_nodes_calls(
    tmp_path: Path, postgres_server: PostgresServer, redis_server: RedisServer
) -> None:
    pg = postgres_server
    a = node(tmp_path, "a", "127.0.11.1", pg, redis_server)
    b = node(tmp_path, "b", "127.0.11.2", pg, redis_server)
    for number, password in USERS.items():  # one database: added once, on both nodes
        cli(a.data_dir, "extension", "add", number, "--password", password, env=a.env)
    a.start()
    b.start()
    try:
        answered_call(a, tmp_path / "on-a")
        answered_call(b, tmp_path / "on-b")

        def up(pbx: PbxProcess) -> bool:
            stats = cli(pbx.data_dir, "stats", "--json", env=pbx.env).stdout
            return bool(json.loads(stats)["calls"] == 1)

        assert wait_for(lambda: up(a) and up(b) and len(cdrs(b)) == 2), cdrs(b)
        assert {r["node"] for r in cdrs(b)} == {"a", "b"}
        a.stop(signal.SIGKILL)
        killed = time.monotonic()

        def closed() -> bool:
            return any(r["disposition"] == "interrupted" for r in cdrs(b))

        assert wait_for(closed), [*cdrs(b), b.log()[-3000:]]
        elapsed = time.monotonic() - killed
        print(f"node A killed: its call closed by node B after {elapsed:.2f} s")
        by_node = {str(r["node"]): r for r in cdrs(b)}
        assert by_node["a"]["disposition"] == "interrupted"
        assert by_node["a"]["end_ts"] is not None
        assert by_node["b"]["disposition"] == "in-progress"  # B's own call goes on
        # bounded: lost after 2 s without a heartbeat, then B's next round (0.25 s), the
        # CLI's own start-up in the loop counted too
        assert elapsed < LOST_AFTER + 8.0, elapsed
        stats = json.loads(cli(b.data_dir, "stats", "--json", env=b.env).stdout)
        assert stats["cluster_takeover_closed"] == 1
        # a restarted A closes only its own open calls, never B's call in progress
        a.start()
        stats_a = json.loads(cli(a.data_dir, "stats", "--json", env=a.env).stdout)
        assert stats_a["cluster_node"] == "a"
        assert {str(r["node"]): r["disposition"] for r in cdrs(b)} == {
            "a": "interrupted",
            "b": "in-progress",
        }
    finally:
        a.stop()
        b.stop()
