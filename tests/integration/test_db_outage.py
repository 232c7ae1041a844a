"""PostgreSQL stopped under a running node: calls go on, their CDRs wait in the node's
local spool and reach the database when it is back, every call once; a configuration
change meanwhile is refused with a clear error; a spool left by a node killed during the
outage is written when it starts again.

A real PostgreSQL server (its own, started and stopped by the test), a real pbxwarden
server on it, real SIPp phones.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from pbxwarden.pbx.cdr import SPOOL_FILE
from tests.helpers import (
    PbxProcess,
    cli,
    finish_sipp_uas,
    free_port,
    run_sipp,
    sipp_available,
    start_sipp_uas,
    wait_for,
)
from tests.postgres_server import PostgresServer, postgres_available

pytestmark = [
    pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) not installed"),
    pytest.mark.skipif(not postgres_available(), reason="PostgreSQL or psycopg not installed"),
    pytest.mark.timeout(300),
]

USERS = {"1000": "Caller-Passw0rd-x", "2000": "Callee-Passw0rd-y"}


class Office:
    """A data directory on ``pg`` with two extensions, and the server on it."""

    def __init__(self, root: Path, pg: PostgresServer) -> None:
        self.data = root / "data"
        self.env = {"PBXWARDEN_STORAGE__URL": pg.url}
        cli(self.data, "init", env=self.env)
        for number, password in USERS.items():
            cli(self.data, "extension", "add", number, "--password", password, env=self.env)
        cli(
            self.data,
            *("admin", "add", "ops", "--role", "operator", "--password", "-"),
            input_text="quartz-violin-harbor-97\n",
            env=self.env,
        )
        token = cli(self.data, "admin", "token", "ops", "--scope", "operator", env=self.env)
        self.token = token.stdout.strip().splitlines()[-1].strip()
        self.api = f"127.0.0.1:{free_port()}"
        self.pbx = PbxProcess(
            self.data,
            env={
                **self.env,
                "PBXWARDEN_HTTP__ENABLED": "true",
                "PBXWARDEN_HTTP__LISTEN": self.api,
            },
        )
        self.work = root
        self.callee_port = 0

    @property
    def target(self) -> str:
        return f"{self.pbx.host}:{self.pbx.port}"

    def start(self) -> None:
        self.pbx.start()
        self.callee_port = free_port()
        reg = run_sipp(
            "register.xml",
            self.target,
            users={"2000": USERS["2000"]},
            local_port=self.callee_port,
            workdir=self.work,
        )
        assert reg.successful == 1, reg.output

    def call(self) -> None:
        phone = start_sipp_uas("call_uas.xml", self.callee_port, self.work)
        result = run_sipp(
            "call_uac.xml",
            self.target,
            users={"1000": USERS["1000"]},
            extra=["-s", "2000"],
            workdir=self.work,
            timeout=20,
        )
        assert (result.successful, result.failed) == (1, 0), result.output + self.pbx.log()[-3000:]
        assert finish_sipp_uas(phone, self.work).successful == 1

    def cdrs(self) -> list[dict[str, object]]:
        out = cli(self.data, "cdr", "--json", env=self.env).stdout
        return [] if out.strip() == "no call records" else json.loads(out)

    def stats(self) -> dict[str, object]:
        return dict(json.loads(cli(self.data, "stats", "--json", env=self.env).stdout))

    def answered(self, count: int) -> Callable[[], bool]:
        def done() -> bool:
            rows = self.cdrs()
            return len(rows) >= count and all(r["disposition"] == "answered" for r in rows)

        return done


def test_cdrs_made_while_postgres_is_down_are_written_when_it_is_back(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    pg = postgres_server
    office = Office(tmp_path, pg)
    office.start()
    try:
        office.call()
        assert wait_for(office.answered(1)), office.cdrs()

        pg.stop()
        for _ in range(3):  # calls go on: the phones and the extensions are in memory
            office.call()
        assert wait_for(lambda: office.stats().get("database") == "down")
        spool = office.data / SPOOL_FILE
        # each call: its open, its answer time, its close
        assert wait_for(lambda: office.stats().get("cdrs_spooled") == 9)
        assert spool.exists()
        # a configuration change meanwhile: a clear one-line refusal, nothing half-done
        refused = cli(
            office.data,
            "extension",
            "add",
            "3000",
            "--password",
            "Orchid-Lattice-4471",
            check=False,
            env=office.env,
            timeout=90,
        )
        assert refused.returncode != 0
        assert "the database is unreachable" in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
        with httpx.Client(base_url=f"http://{office.api}", timeout=30) as api:
            reply = api.post(
                "/api/v1/bans",
                json={"address": "127.0.30.9", "reason": "while the database is down"},
                headers={"Authorization": f"Bearer {office.token}"},
            )
        assert reply.status_code == 503, reply.text
        assert "the database is unreachable: nothing was changed" in reply.json()["detail"]

        pg.start()
        assert wait_for(office.answered(4)), office.cdrs()
        rows = office.cdrs()
        assert len(rows) == 4 and len({r["call_id"] for r in rows}) == 4  # each call once
        assert all(r["duration"] is not None and float(r["duration"]) > 0 for r in rows)  # type: ignore[arg-type]
        assert wait_for(lambda: office.stats().get("database") == "up")
        assert not spool.exists() and office.stats()["cdrs_spooled"] == 0
        assert "3000" not in cli(office.data, "extension", "list", env=office.env).stdout

        # killed while the database is down: the spool waits on disk for the next start
        pg.stop()
        office.call()
        assert wait_for(lambda: office.stats().get("cdrs_spooled") == 3)
        office.pbx.stop(signal.SIGKILL)
        pg.start()
        office.start()
        assert wait_for(office.answered(5)), office.cdrs()
        rows = office.cdrs()
        assert len(rows) == 5 and len({r["call_id"] for r in rows}) == 5
        assert not spool.exists()
    finally:
        office.pbx.stop()
