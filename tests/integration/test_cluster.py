"""Two pbxwarden nodes as one PBX: real servers sharing a real redis-server.

Each node has its own data directory (its own SQLite database), so Redis is the only
path between them: whatever one node learns of the other, it learned through Redis.
Node A listens on 127.0.10.1, node B on 127.0.10.2; sources come from other 127.x
addresses, each test its own.
"""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from pbxwarden.control import ControlError, ask
from pbxwarden.sip.message import Response, parse_message
from tests.cluster_nodes import start_node
from tests.helpers import (
    PbxProcess,
    SipClient,
    cli,
    free_port,
    options_request,
    status_of,
    wait_for,
)
from tests.redis_server import RedisServer

# Two servers, Redis and many CLI runs each: minutes on a loaded host.
pytestmark = [pytest.mark.redis, pytest.mark.timeout(300)]

PASSWORD = "Lantern-Harbor-7731"
PHONE = "127.0.0.5"  # the legitimate phone's network: 127.0.0.0/24
PROPAGATION_BOUND = 1.0  # seconds: a ban on one node in force on every node


def node(
    root: Path,
    name: str,
    host: str,
    redis: RedisServer,
    prepare: Callable[[Path], None] | None = None,
    **env: str,
) -> PbxProcess:
    users = {"1000": PASSWORD, "2000": "Meadow-Cobalt-5590"}
    return start_node(root, name, host, redis, users, prepare, **env)


@pytest.fixture
def nodes(tmp_path: Path, redis_server: RedisServer) -> Iterator[tuple[PbxProcess, PbxProcess]]:
    a = node(tmp_path, "a", "127.0.10.1", redis_server)
    http = free_port()  # node B also serves the admin API
    b = node(
        tmp_path,
        "b",
        "127.0.10.2",
        redis_server,
        PBXWARDEN_HTTP__ENABLED="true",
        PBXWARDEN_HTTP__LISTEN=f"127.0.0.1:{http}",
    )
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()


class Prober:
    """OPTIONS from one source address to one node, over one socket."""

    def __init__(self, pbx: PbxProcess, source: str) -> None:
        self.dest = (pbx.host, pbx.port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((source, 0))

    def answered(self, timeout: float = 3.0) -> bool:
        self.sock.settimeout(0.001)
        try:  # late answers to earlier probes
            while True:
                self.sock.recv(65535)
        except OSError:
            pass
        self.sock.sendto(options_request(self.dest), self.dest)
        self.sock.settimeout(timeout)
        try:
            return status_of(self.sock.recv(65535)) == 200
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


def time_until_silent(probe: Prober, since: float, limit: float = 10.0) -> float:
    """Seconds from ``since`` until the node stopped answering (probing every 50 ms;
    the time is that of the first unanswered probe, an upper bound), checked to stay
    silent so that a slow answer on a loaded host is not taken for a ban."""
    while time.monotonic() - since < limit:
        sent = time.monotonic()
        if not probe.answered(timeout=0.25) and not probe.answered(timeout=1.0):
            return sent - since
        time.sleep(max(0.0, 0.05 - (time.monotonic() - sent)))
    raise AssertionError(f"still answered {limit} s after the ban")


def register(pbx: PbxProcess, source: str, password: str, user: str = "1000") -> int | None:
    client = SipClient((pbx.host, pbx.port), source_ip=source)
    try:
        reply = parse_message(client.register(user, password))
    except TimeoutError:
        return None
    finally:
        client.close()
    return reply.status if isinstance(reply, Response) else None


def stats(pbx: PbxProcess) -> dict[str, object]:
    """The running node's counters, over its control socket (what ``stats`` asks)."""
    try:
        return ask(pbx.data_dir, {"cmd": "stats"}, timeout=5.0)
    except ControlError:
        return {}


def query(pbx: PbxProcess, sql: str, *args: object) -> list[tuple[object, ...]]:
    """Read the node's own database (faster than a CLI process on a loaded host)."""
    with contextlib.closing(sqlite3.connect(pbx.data_dir / "pbxwarden.db", timeout=10)) as db:
        return db.execute(sql, args).fetchall()


def locked(pbx: PbxProcess, number: str = "1000") -> bool:
    rows = query(
        pbx,
        "SELECT l.until FROM extension_locks l JOIN extensions e ON e.id = l.extension_id "
        "WHERE e.number = ?",
        number,
    )
    return any(float(str(until)) > time.time() for (until,) in rows)


def bans(pbx: PbxProcess) -> set[str]:
    return {str(a) for (a,) in query(pbx, "SELECT address FROM bans WHERE until > ?", time.time())}


def adopted_at(pbx: PbxProcess, address: str) -> float | None:
    """When the node's log says it put another node's ban on ``address`` in force."""
    for line in pbx.log().splitlines():
        if "firewall ban shared" in line and f"address={address} " in line:
            stamp = line.split()[0].rstrip("Z")
            return datetime.fromisoformat(stamp).replace(tzinfo=UTC).timestamp()
    return None


def test_a_ban_made_on_one_node_is_in_force_on_the_other_within_a_second(
    nodes: tuple[PbxProcess, PbxProcess],
) -> None:
    a, b = nodes
    assert wait_for(lambda: stats(a).get("redis") == "up" and stats(b).get("redis") == "up")
    # An administrator's ban on A (the CLI against A's data directory).
    source = "127.0.20.9"
    at_b = Prober(b, source)
    try:
        assert at_b.answered()
        began = time.monotonic()
        cli(a.data_dir, "bans", "add", source, "--reason", "seen on node a")
        stored = time.monotonic()  # the CLI stored it and told A
        elapsed = time_until_silent(at_b, stored)
    finally:
        at_b.close()
    print(
        f"CLI ban on A in force on B {elapsed:.3f} s after the CLI returned "
        f"({stored - began:.3f} s for the CLI itself)"
    )
    assert elapsed < PROPAGATION_BOUND, elapsed
    assert wait_for(lambda: source in bans(b))  # and stored in B's own database
    # From the moment the CLI stored it in A's database to B's ban table, by the clock.
    [(created,)] = query(a, "SELECT created_at FROM bans WHERE address = ?", source)
    adopted = adopted_at(b, source)
    assert adopted is not None
    delay = adopted - float(str(created))
    print(f"CLI ban stored in A's database, in force on B {delay:.3f} s later")
    assert delay < PROPAGATION_BOUND, delay
    # The firewall's own ban: a flood from one source at A.
    flooder = "127.0.20.10"
    at_b = Prober(b, flooder)
    try:
        assert at_b.answered()
        dest = (a.host, a.port)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((flooder, 0))
            for _ in range(300):
                sock.sendto(options_request(dest), dest)
        flood_sent = time.monotonic()
        elapsed = time_until_silent(at_b, flood_sent)
    finally:
        at_b.close()
    print(f"flood ban on A in force on B after {elapsed:.3f} s")
    assert elapsed < PROPAGATION_BOUND, elapsed
    assert wait_for(lambda: flooder in bans(b))
    assert query(b, "SELECT reason FROM bans WHERE address = ?", flooder) == [("request flood",)]
    # Others are still served by both; a lift on B reaches A.
    assert Prober(a, "127.0.20.11").answered() and Prober(b, "127.0.20.11").answered()
    cli(b.data_dir, "bans", "remove", source)
    at_a = Prober(a, source)
    try:
        assert wait_for(at_a.answered, timeout=5.0)
    finally:
        at_a.close()
    assert wait_for(lambda: source not in bans(a))
    # A ban through the admin API of B: in force on A.
    cli(
        b.data_dir,
        *("admin", "add", "ops", "--role", "operator", "--password", "-"),
        input_text="quartz-violin-harbor-97\n",
    )
    token = cli(b.data_dir, "admin", "token", "ops", "--scope", "operator").stdout
    token = token.strip().splitlines()[-1].strip()
    target = "127.0.20.12"
    at_a = Prober(a, target)
    try:
        assert at_a.answered()
        base = "http://" + b.env["PBXWARDEN_HTTP__LISTEN"]
        with httpx.Client(base_url=base, timeout=10) as api:
            reply = api.post(
                "/api/v1/bans",
                json={"address": target, "reason": "api ban on b"},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert reply.status_code == 201, reply.text
            posted = time.monotonic()
        elapsed = time_until_silent(at_a, posted)
    finally:
        at_a.close()
    print(f"API ban on B in force on A {elapsed:.3f} s after the API answered")
    assert elapsed < PROPAGATION_BOUND, elapsed
    assert wait_for(lambda: target in bans(a))


def test_password_guessing_spread_over_both_nodes_locks_the_extension_on_both(
    nodes: tuple[PbxProcess, PbxProcess],
) -> None:
    a, b = nodes
    for pbx in nodes:  # the phone registers with each node: its network is known there
        assert register(pbx, PHONE, PASSWORD) == 200
        assert wait_for(
            lambda pbx=pbx: (
                "127.0.0.0/24" in cli(pbx.data_dir, "extension", "networks", "--json").stdout
            )
        )
    # Twelve guesses from twelve addresses, six at each node: no node sees the ten of
    # the lock rule (lock_failures), the cluster does.
    for i in range(12):
        assert register((a, b)[i % 2], f"127.0.1.{i + 1}", f"wrong-guess-{i}") == 403
    assert wait_for(lambda: locked(a) and locked(b))
    # The right password from a network the extension never used: refused by both.
    assert register(a, "127.0.2.1", PASSWORD) == 403
    assert register(b, "127.0.2.2", PASSWORD) == 403
    # Its own network keeps working on both.
    assert register(a, PHONE, PASSWORD) == 200
    assert register(b, "127.0.0.44", PASSWORD) == 200
    assert not locked(a, "2000") and not locked(b, "2000")
    # An administrator lifts it on B: lifted on A too.
    assert "unlocked" in cli(b.data_dir, "extension", "unlock", "1000").stdout
    assert wait_for(lambda: register(a, "127.0.2.1", PASSWORD) == 200)
    assert wait_for(lambda: not locked(a))


def test_nodes_serve_while_redis_is_down_and_catch_up_when_it_returns(
    nodes: tuple[PbxProcess, PbxProcess], redis_server: RedisServer
) -> None:
    a, b = nodes
    assert wait_for(lambda: stats(a).get("redis") == "up" and stats(b).get("redis") == "up")
    redis_server.stop()
    assert wait_for(lambda: stats(a).get("redis") == "down" and stats(b).get("redis") == "down")
    for pbx in nodes:  # SIP goes on, on each node's own state
        probe = Prober(pbx, "127.0.30.1")
        try:
            assert probe.answered()
        finally:
            probe.close()
        assert register(pbx, PHONE, PASSWORD) == 200
    # A ban on A while Redis is down: in force on A only.
    source = "127.0.30.9"
    cli(a.data_dir, "bans", "add", source)
    at_a, at_b = Prober(a, source), Prober(b, source)
    try:
        assert time_until_silent(at_a, time.monotonic()) < 5.0
        assert at_b.answered()
        # A lift and a lock made meanwhile are caught up too (below); Redis returns empty.
        started = time.monotonic()
        redis_server.start()
        elapsed = time_until_silent(at_b, started, limit=20.0)
    finally:
        at_a.close()
        at_b.close()
    print(f"ban made during the outage in force on B {elapsed:.3f} s after Redis returned")
    assert wait_for(lambda: stats(a).get("redis") == "up" and stats(b).get("redis") == "up")
    assert wait_for(lambda: source in bans(b))
    assert "redis unreachable" in a.log() and "redis reachable again" in a.log()
    assert a.log().count("redis unreachable") == 1  # said once, not per command


def test_a_node_starts_and_serves_with_its_redis_unreachable(tmp_path: Path) -> None:
    pytest.importorskip("redis")
    nowhere = RedisServer(tmp_path / "redis")  # a free port, never started
    a = node(tmp_path, "a", "127.0.10.1", nowhere)
    try:
        probe = Prober(a, "127.0.40.1")
        try:
            assert probe.answered()
        finally:
            probe.close()
        assert register(a, PHONE, PASSWORD) == 200
        assert stats(a).get("redis") == "down"
        assert "shared state (Redis)" in cli(a.data_dir, "stats").stdout
        cli(a.data_dir, "bans", "add", "127.0.40.9")  # local bans go on
        probe = Prober(a, "127.0.40.9")
        try:
            assert time_until_silent(probe, time.monotonic()) < 5.0
        finally:
            probe.close()
    finally:
        a.stop()


def test_an_extensions_call_limit_holds_for_both_nodes_together(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """20 INVITEs of one extension, 10 through each node at once, to a carrier that
    holds the answered calls: exactly the extension's limit (2, the default) reaches the
    carrier, where each node alone would have let 2 through (4 in all)."""
    from tests.helpers import (
        cdr_rows,
        finish_sipp_uac,
        finish_sipp_uas,
        start_sipp_uac,
        start_sipp_uas,
    )

    carrier_host = "127.0.10.9"
    carrier_port = free_port(carrier_host)

    def trunk(data: Path) -> None:
        cli(data, "trunk", "add", "carrier", "--host", carrier_host, "--port", str(carrier_port))

    a = node(tmp_path, "a", "127.0.10.1", redis_server, trunk)
    b = node(tmp_path, "b", "127.0.10.2", redis_server, trunk)
    messages = tmp_path / "carrier-messages.log"
    carrier = start_sipp_uas(
        "call_uas.xml",
        carrier_port,
        tmp_path,
        local_ip=carrier_host,
        calls=4,
        timeout=30,
        extra=["-trace_msg", "-message_file", str(messages)],
    )
    try:
        callers = []
        for pbx, source in ((a, "127.0.10.21"), (b, "127.0.10.22")):
            work = tmp_path / f"caller-{source}"
            work.mkdir()
            callers.append(
                (
                    work,
                    start_sipp_uac(
                        "call_uac_hold_or_refused.xml",
                        f"{pbx.host}:{pbx.port}",
                        users={"1000": PASSWORD},
                        calls=10,
                        rate=200,
                        local_ip=source,
                        extra=["-s", "2025550143", "-d", "4000", "-l", "10"],
                        workdir=work,
                        timeout=40,
                    ),
                )
            )
        for work, proc in callers:
            result = finish_sipp_uac(proc, work, timeout=60)
            assert result.successful == 10, result.output + a.log()[-2000:] + b.log()[-2000:]
    finally:
        finish_sipp_uas(carrier, tmp_path, timeout=5)
        a.stop()
        b.stop()
    log = messages.read_text(errors="replace") if messages.exists() else ""
    assert log.count("INVITE sip:") == 2, log.count("INVITE sip:")
    rows = cdr_rows(a) + cdr_rows(b)
    answered = [r for r in rows if r["disposition"] == "answered"]
    refused = [r for r in rows if r["disposition"] == "blocked"]
    assert len(answered) == 2 and len(refused) == 18, [
        (r["disposition"], r["reasons"]) for r in rows
    ]
    assert any("on the PBX's nodes together" in str(r["reasons"]) for r in refused), refused
