"""Calls across nodes: listed and ended from any node; a node killed mid-call has its
call's CDR closed by a survivor as interrupted, with its answer time and a duration.

Two real pbxwarden nodes sharing one real PostgreSQL (every durable record) and one
real redis-server (the node registry, the registry of calls); SIPp phones. Node B's
API and CLI list node A's calls with their node; B's API ends one of them (A hangs it
up, its CDR says an administrator ended it, B's audit log has it). Then node A is
killed with SIGKILL during an answered call; node B sees it lost (no heartbeat for
``lost_after``) and closes the call's CDR, once, as interrupted, lasting from its
answer time (written at answer) to A's last heartbeat; B's own call is untouched.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import httpx
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

USERS = {
    "1000": "Caller-Passw0rd-x",
    "1001": "Caller-Passw0rd-z",
    "2000": "Callee-Passw0rd-y",
    "3000": "Callee-Passw0rd-w",
    "4000": "Callee-Passw0rd-v",
}
HEARTBEAT = 0.25
LOST_AFTER = 2.0


def node(
    root: Path, name: str, host: str, pg: PostgresServer, redis: RedisServer, **extra: str
) -> PbxProcess:
    data = root / name
    env = {
        **extra,
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


def answered_call(pbx: PbxProcess, work: Path, caller: str = "1000", callee: str = "2000") -> None:
    """``callee`` registered on ``pbx`` answers; ``caller`` calls it and stays on."""
    work.mkdir()
    port = free_port()
    target = f"{pbx.host}:{pbx.port}"
    reg = run_sipp(
        "register.xml", target, users={callee: USERS[callee]}, local_port=port, workdir=work
    )
    assert reg.successful == 1, reg.output
    start_sipp_uas("call_uas.xml", port, work, timeout=60)
    phone = work / "caller"
    phone.mkdir()
    start_sipp_uac(
        "call_uac_wait_bye.xml",
        target,
        users={caller: USERS[caller]},
        extra=["-s", callee],
        workdir=phone,
        timeout=60,
    )


def test_calls_are_listed_and_ended_across_nodes_and_a_survivor_closes_a_killed_nodes(
    tmp_path: Path, postgres_server: PostgresServer, redis_server: RedisServer
) -> None:
    pg = postgres_server
    http = free_port()  # node B serves the admin API
    a = node(tmp_path, "a", "127.0.11.1", pg, redis_server)
    b = node(
        tmp_path,
        "b",
        "127.0.11.2",
        pg,
        redis_server,
        PBXWARDEN_HTTP__ENABLED="true",
        PBXWARDEN_HTTP__LISTEN=f"127.0.0.1:{http}",
    )
    for number, password in USERS.items():  # one database: added once, on both nodes
        cli(a.data_dir, "extension", "add", number, "--password", password, env=a.env)
    cli(
        b.data_dir,
        *("admin", "add", "ops", "--role", "operator", "--password", "-"),
        input_text="quartz-violin-harbor-97\n",
        env=b.env,
    )
    token = cli(b.data_dir, "admin", "token", "ops", "--scope", "operator", env=b.env).stdout
    auth = {"Authorization": f"Bearer {token.strip().splitlines()[-1].strip()}"}
    a.start()
    b.start()
    try:
        answered_call(a, tmp_path / "on-a", "1000", "2000")
        answered_call(a, tmp_path / "on-a-2", "1001", "3000")  # to be ended from B
        # a callee of its own: 2000, registered on A too, would ring there as well
        # (through A: bindings made on a node directly are called through it)
        answered_call(b, tmp_path / "on-b", "1000", "4000")

        def calls(pbx: PbxProcess) -> int:
            stats = cli(pbx.data_dir, "stats", "--json", env=pbx.env).stdout
            return int(json.loads(stats)["calls"])

        def all_answered() -> bool:  # the answer times are written while the calls go on
            rows = cdrs(b)
            return len(rows) == 3 and all(r["answer_ts"] is not None for r in rows)

        assert wait_for(lambda: calls(a) == 2 and calls(b) == 1 and all_answered()), cdrs(b)
        assert all(r["disposition"] == "in-progress" for r in cdrs(b))
        to_end = next(str(r["call_id"]) for r in cdrs(b) if r["caller"] == "1001")

        with httpx.Client(base_url=f"http://127.0.0.1:{http}", timeout=10) as api:

            def listed() -> list[dict[str, object]]:
                response = api.get("/api/v1/calls", headers=auth)
                assert response.status_code == 200, response.text
                assert response.headers["X-Calls-Scope"] == "cluster"
                return list(response.json())

            assert wait_for(lambda: sorted(str(c["node"]) for c in listed()) == ["a", "a", "b"])
            row = next(c for c in listed() if c["call_id"] == to_end)
            assert (row["node"], row["state"], row["tenant"]) == ("a", "answered", "default")
            shown = json.loads(cli(b.data_dir, "calls", "--json", env=b.env).stdout)
            assert {str(c["call_id"]): c["node"] for c in shown}[to_end] == "a"
            table = cli(b.data_dir, "calls", env=b.env).stdout
            assert "node" in table and "note:" not in table

            ended = api.delete(f"/api/v1/calls/{to_end}", headers=auth)
            assert ended.status_code == 200, ended.text
            assert ended.json()["node"] == "a"
            missing = api.delete("/api/v1/calls/no-such-call@127.0.0.1", headers=auth)
            assert missing.status_code == 404, missing.text
            refused = cli(b.data_dir, "calls", "end", "no-such-call@x", check=False, env=b.env)
            assert refused.returncode != 0 and "on any node" in refused.stderr, refused
            assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr

            def closed_by_admin() -> dict[str, object] | None:
                row = next(r for r in cdrs(b) if r["call_id"] == to_end)
                return row if row["disposition"] != "in-progress" else None

            assert wait_for(lambda: closed_by_admin() is not None), cdrs(b)
            row = closed_by_admin()
            assert row is not None and row["disposition"] == "answered", row
            assert row["node"] == "a" and row["duration"] is not None
            assert "ended by an administrator (on node b)" in str(row["reasons"])
            audit = api.get("/api/v1/audit", headers=auth).json()["items"]
            assert any(
                e["action"] == "call.end" and e["resource"] == f"call/{to_end}" for e in audit
            ), audit
            assert wait_for(lambda: sorted(str(c["node"]) for c in listed()) == ["a", "b"])

            a.stop(signal.SIGKILL)
            killed, killed_wall = time.monotonic(), time.time()

            def interrupted() -> bool:
                return any(r["disposition"] == "interrupted" for r in cdrs(b))

            assert wait_for(interrupted), [*cdrs(b), b.log()[-3000:]]
            elapsed = time.monotonic() - killed
            print(f"node A killed: its call closed by node B after {elapsed:.2f} s")
            by_node = {str(r["node"]): r for r in cdrs(b) if r["call_id"] != to_end}
            lost = by_node["a"]
            assert lost["disposition"] == "interrupted"
            # it ends at A's last heartbeat, at most one interval (and the clocks) before
            # the kill, and lasts from its answer time
            assert isinstance(lost["end_ts"], float) and isinstance(lost["answer_ts"], float)
            assert killed_wall - HEARTBEAT - 1.0 <= lost["end_ts"] <= killed_wall + 0.5, lost
            assert lost["duration"] == pytest.approx(lost["end_ts"] - lost["answer_ts"]), lost
            assert float(str(lost["duration"])) > 0
            assert "node a lost" in str(lost["reasons"])
            assert by_node["b"]["disposition"] == "in-progress"  # B's own call goes on
            # bounded: lost after 2 s without a heartbeat, then B's next round (0.25 s), the
            # CLI's own start-up in the loop counted too
            assert elapsed < LOST_AFTER + 8.0, elapsed
            stats = json.loads(cli(b.data_dir, "stats", "--json", env=b.env).stdout)
            assert stats["cluster_takeover_closed"] == 1
            # the killed node's calls leave the listing within its lost_after
            assert wait_for(lambda: [str(c["node"]) for c in listed()] == ["b"], timeout=10)

        # a restarted A closes only its own open calls, never B's call in progress
        a.start()
        stats_a = json.loads(cli(a.data_dir, "stats", "--json", env=a.env).stdout)
        assert stats_a["cluster_node"] == "a"
        assert {str(r["node"]): r["disposition"] for r in cdrs(b) if r["call_id"] != to_end} == {
            "a": "interrupted",
            "b": "in-progress",
        }
    finally:
        a.stop()
        b.stop()
