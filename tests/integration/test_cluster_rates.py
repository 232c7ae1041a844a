"""An extension's calls per minute for two pbxwarden nodes as one PBX, and the alert it
raises sent once: real servers sharing a real redis-server, SIPp as the phones and as
the carrier, a webhook receiver on loopback for both nodes' alerts.

Each node has its own data directory (its own SQLite database, so each stores its own
alert record), and Redis is the only path between them. Node A listens on 127.0.10.1,
node B on 127.0.10.2, the carrier on 127.0.10.9; the phones call from 127.0.10.31-32.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from pbxwarden.control import ControlError, ask
from tests.cluster_nodes import start_node
from tests.helpers import (
    PbxProcess,
    cdr_rows,
    cli,
    finish_sipp_uac,
    finish_sipp_uas,
    free_port,
    sipp_available,
    start_sipp_uac,
    start_sipp_uas,
    wait_for,
)
from tests.integration.test_guard import Receiver
from tests.redis_server import RedisServer

pytestmark = [
    pytest.mark.redis,
    pytest.mark.timeout(120),
    pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) not installed"),
]

PASSWORD = "Lantern-Harbor-7731"
CARRIER = "127.0.10.9"
PER_MINUTE = 3  # the extension's costly calls per minute
ATTEMPTS = 5  # through each node
SECRET = "webhook-secret-for-the-test-0123456789"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


def stats(pbx: PbxProcess) -> dict[str, object]:
    try:
        return ask(pbx.data_dir, {"cmd": "stats"}, timeout=5.0)
    except ControlError:
        return {}


def stored_alerts(pbx: PbxProcess) -> list[dict[str, object]]:
    """The node's stored alerts (its own database, faster than a CLI process)."""
    with contextlib.closing(sqlite3.connect(pbx.data_dir / "pbxwarden.db", timeout=10)) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM alerts ORDER BY id")]


def test_calls_per_minute_hold_for_both_nodes_and_the_alert_is_sent_once(
    tmp_path: Path, redis_server: RedisServer, receiver: Receiver
) -> None:
    """Extension 1000, allowed 3 costly calls a minute, calls 5 times through each node
    at once (one call at a time on each, held 0.2 s): exactly 3 reach the carrier, where
    each node alone would let 3 through (6 in all). Both nodes refuse attempts and raise
    the same alert; each stores it, the webhook gets it once."""
    carrier_port = free_port(CARRIER)

    def prepare(data: Path) -> None:
        cli(data, "trunk", "add", "carrier", "--host", CARRIER, "--port", str(carrier_port))
        cli(
            data,
            "tenant",
            "policy",
            "default",
            "--set",
            f"calls_per_minute={PER_MINUTE}",
            "--set",
            "max_concurrent_per_extension=10",
        )

    env = {
        "PBXWARDEN_ALERTS__WEBHOOK__URL": receiver.url,
        "PBXWARDEN_ALERTS__WEBHOOK__SECRET": SECRET,
    }
    users = {"1000": PASSWORD}
    started: list[PbxProcess] = []
    messages = tmp_path / "carrier-messages.log"
    carrier = None
    try:
        for name, host in (("a", "127.0.10.1"), ("b", "127.0.10.2")):
            started.append(start_node(tmp_path, name, host, redis_server, users, prepare, **env))
        a, b = started
        assert wait_for(lambda: all(stats(p).get("redis") == "up" for p in (a, b))), (
            str(stats(a)) + a.log()[-2000:] + str(stats(b)) + b.log()[-2000:]
        )
        carrier = start_sipp_uas(
            "call_uas.xml",
            carrier_port,
            tmp_path,
            local_ip=CARRIER,
            calls=PER_MINUTE,
            timeout=30,
            extra=["-trace_msg", "-message_file", str(messages)],
        )
        callers = []
        for pbx, source in ((a, "127.0.10.31"), (b, "127.0.10.32")):
            work = tmp_path / f"caller-{source}"
            work.mkdir()
            proc = start_sipp_uac(
                "call_uac_hold_or_refused.xml",
                f"{pbx.host}:{pbx.port}",
                users={"1000": PASSWORD},
                calls=ATTEMPTS,
                rate=10,
                local_ip=source,
                extra=["-s", "2025550143", "-d", "200", "-l", "1"],
                workdir=work,
                timeout=40,
            )
            callers.append((work, proc))
        for work, proc in callers:
            result = finish_sipp_uac(proc, work, timeout=60)
            assert result.successful == ATTEMPTS, result.output + a.log()[-2000:]
        assert wait_for(lambda: len(cdr_rows(a)) + len(cdr_rows(b)) == 2 * ATTEMPTS)
        rows = cdr_rows(a) + cdr_rows(b)
        answered = [r for r in rows if r["disposition"] == "answered"]
        refused = [r for r in rows if r["disposition"] == "blocked"]
        assert len(answered) == PER_MINUTE, [(r["disposition"], r["reasons"]) for r in rows]
        assert len(refused) == 2 * ATTEMPTS - PER_MINUTE
        together = "costly calls in the last minute on the PBX's nodes together (limit 3)"
        assert any(together in str(r["reasons"]) for r in refused), refused

        # both nodes refused (each allows at most 3 of its 5): each stores the alert...
        for pbx in (a, b):
            assert wait_for(
                lambda pbx=pbx: any(x["rule"] == "limit" for x in stored_alerts(pbx)),
                timeout=15,
            ), pbx.log()[-2000:]
        # ...and one of them sends it: the other found it sent
        assert wait_for(
            lambda: (
                sum(int(str(stats(p).get("cluster_alerts_sent_elsewhere", 0))) for p in (a, b)) >= 1
            ),
            timeout=15,
        )

        # the winner claims before its webhook POST goes out: wait for the POST itself
        def limit_posts() -> list[dict[str, object]]:
            sent = [json.loads(body) for _, body in receiver.posts]
            return [s for s in sent if s["rule"] == "limit" and s["extension"] == "1000"]

        assert wait_for(lambda: bool(limit_posts()), timeout=15), receiver.posts
        assert len(limit_posts()) == 1, receiver.posts
    finally:
        if carrier is not None:
            finish_sipp_uas(carrier, tmp_path, timeout=5)
        for pbx in started:
            pbx.stop()
    log = messages.read_text(errors="replace") if messages.exists() else ""
    assert log.count("INVITE sip:") == PER_MINUTE, log.count("INVITE sip:")
