"""Kamailio in front of two pbxwarden nodes: the shipped front (deploy/kamailio) for real.

Kamailio listens on 127.0.50.1, node A on 127.0.50.11, node B on 127.0.50.12, both nodes
trusting the front (``cluster.fronts``) and sharing a real redis-server; phones are
SIP clients on 127.0.51.x. Kamailio hashes each phone's user onto a node (REGISTER by
its To user, calls by the From user), so which node holds which extension is found by
registering and looking (:func:`placement`), not assumed.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pbxwarden.sip.message import Response, parse_message
from tests import kamailio as kam
from tests.helpers import (
    PbxProcess,
    SipClient,
    cli,
    finish_sipp_uas,
    free_port,
    run_sipp,
    sipp_available,
    start_sipp_uas,
    wait_for,
)
from tests.redis_server import RedisServer

pytestmark = [
    pytest.mark.redis,
    pytest.mark.sipp,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not kam.available(), reason="kamailio not installed (Debian kamailio)"),
    pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) not installed"),
]

FRONT = "127.0.50.1"
NODE_A, NODE_B = "127.0.50.11", "127.0.50.12"
PHONE_NETWORKS = "127.0.51.0/24, 127.0.52.0/24, 127.0.53.0/24"
NUMBERS = [str(n) for n in range(1000, 1008)]
_WORDS = ["Amber", "Birch", "Cobalt", "Dune", "Ember", "Fjord", "Garnet", "Heron"]
PASSWORDS = {
    n: f"{w}-Lantern-Quay-{i + 3}{i + 5}"
    for i, (n, w) in enumerate(zip(NUMBERS, _WORDS, strict=True))
}


def query(pbx: PbxProcess, sql: str, *args: object) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(pbx.data_dir / "pbxwarden.db", timeout=10)) as db:
        return db.execute(sql, args).fetchall()


def bindings(pbx: PbxProcess) -> dict[str, list[str]]:
    """Extension number -> the sources its live bindings recorded (written back every
    0.2 s)."""
    out: dict[str, list[str]] = {}
    rows = query(
        pbx,
        "SELECT e.number, r.source FROM registrations r JOIN extensions e "
        "ON e.id = r.extension_id WHERE r.expires_at > ?",
        time.time(),
    )
    for number, source in rows:
        out.setdefault(str(number), []).append(str(source))
    return out


def bans(pbx: PbxProcess) -> set[str]:
    return {str(a) for (a,) in query(pbx, "SELECT address FROM bans WHERE until > ?", time.time())}


def node(root: Path, name: str, host: str, redis: RedisServer, front: str) -> PbxProcess:
    data = root / name
    data.mkdir(parents=True)
    cli(data, "init")
    (data / "extensions.csv").write_text("".join(f"{n},{p}\n" for n, p in PASSWORDS.items()))
    cli(data, "extension", "import", str(data / "extensions.csv"))
    # Every extension may be used from the phones' networks only, not from the front's:
    # a node judging a relayed request by the front's address would refuse it.
    with contextlib.closing(sqlite3.connect(data / "pbxwarden.db")) as db, db:
        db.execute("UPDATE extensions SET acl = ?", (PHONE_NETWORKS,))
    pbx = PbxProcess(
        data,
        host=host,
        env={
            "PBXWARDEN_CLUSTER__REDIS_URL": redis.url,
            "PBXWARDEN_CLUSTER__NODE": name,
            "PBXWARDEN_CLUSTER__KEY_PREFIX": "front:",
            "PBXWARDEN_CLUSTER__FRONTS": f'["{front}"]',
        },
    )
    pbx.start()
    return pbx


@dataclass
class Front:
    kamailio: kam.Kamailio
    a: PbxProcess
    b: PbxProcess

    @property
    def address(self) -> tuple[str, int]:
        return self.kamailio.host, self.kamailio.port

    @property
    def target(self) -> str:
        return f"{self.kamailio.host}:{self.kamailio.port}"

    def nodes(self) -> dict[str, PbxProcess]:
        return {"a": self.a, "b": self.b}


@pytest.fixture
def front(tmp_path: Path, redis_server: RedisServer) -> Iterator[Front]:
    started: list[PbxProcess] = []
    kamailio = None
    try:
        a = node(tmp_path, "a", NODE_A, redis_server, FRONT)
        started.append(a)
        b = node(tmp_path, "b", NODE_B, redis_server, FRONT)
        started.append(b)
        kamailio = kam.Kamailio(
            tmp_path / "kamailio",
            FRONT,
            free_port(FRONT),
            [(a.host, a.port), (b.host, b.port)],
            ping_interval=1,
            fr_timer_ms=2000,
        )
        kamailio.start()
        yield Front(kamailio, a, b)
    finally:
        if kamailio is not None:
            kamailio.stop()
        for pbx in started:
            pbx.stop()


class Phone:
    """A UDP phone on a fixed address (``port`` 0: any), registering through ``server``."""

    def __init__(self, server: tuple[str, int], host: str, port: int = 0) -> None:
        self.client = SipClient(server, source_ip=host)
        if port:
            self.client.sock.close()
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((host, port))
            sock.settimeout(10)
            self.client.sock = sock
            self.client.local = sock.getsockname()
        self.host, self.port = self.client.local[0], int(self.client.local[1])

    def register(self, number: str, password: str | None = None, **kwargs: object) -> int | None:
        try:
            reply = parse_message(
                self.client.register(number, password or PASSWORDS[number], **kwargs)
            )
        except TimeoutError:
            return None
        return reply.status if isinstance(reply, Response) else None

    def close(self) -> None:
        self.client.close()


def placement(front: Front, numbers: list[str], subnet: int = 51) -> dict[str, tuple[str, Phone]]:
    """Register each number through the front from its own address; which node took it.
    The phones are returned still open (their ports are where calls will find them)."""
    placed: dict[str, tuple[str, Phone]] = {}
    for i, number in enumerate(numbers):
        phone = Phone(front.address, f"127.0.{subnet}.{i + 1}")
        assert phone.register(number) == 200, front.kamailio.log()[-3000:]
        placed[number] = ("", phone)

    def located() -> bool:
        where = {name: bindings(pbx) for name, pbx in front.nodes().items()}
        for number, (_, phone) in placed.items():
            for name, found in where.items():
                if number in found:
                    placed[number] = (name, phone)
        return all(name for name, _ in placed.values())

    assert wait_for(located), placed
    return placed


def test_register_and_call_through_the_front_the_node_sees_the_phone(
    front: Front, tmp_path: Path
) -> None:
    placed = placement(front, NUMBERS[:5])
    by_node: dict[str, list[str]] = {}
    for number, (name, _) in placed.items():
        by_node.setdefault(name, []).append(number)
    # Each binding records the phone's own address, and the front as the way back.
    for name, pbx in front.nodes().items():
        found = bindings(pbx)
        for number in by_node.get(name, []):
            phone = placed[number][1]
            assert found[number] == [
                f"udp:{phone.host}:{phone.port} via udp:{FRONT}:{front.kamailio.port}"
            ], found
    # A phone's forged source header through the front is removed by the front.
    forger = Phone(front.address, "127.0.51.40")
    try:
        number = NUMBERS[5]
        assert forger.register(number, extra=("X-PBX-Source: 203.0.113.9:5060;udp",)) == 200
        assert wait_for(
            lambda: any(
                f"udp:127.0.51.40:{forger.port} via" in s
                for pbx in front.nodes().values()
                for s in bindings(pbx).get(number, [])
            )
        )
        assert not any(
            "203.0.113.9" in s
            for pbx in front.nodes().values()
            for sources in bindings(pbx).values()
            for s in sources
        )
    finally:
        forger.close()

    # An internal call between two phones of one node (registrations are per node).
    name, numbers = next((n, nums) for n, nums in by_node.items() if len(nums) >= 2)
    callee, caller = numbers[0], numbers[1]
    callee_phone = placed[callee][1]
    callee_phone.close()  # SIPp answers on the very address the binding recorded
    workdir = tmp_path / "call"
    workdir.mkdir()
    uas = start_sipp_uas(
        "call_uas.xml", callee_phone.port, workdir, local_ip=callee_phone.host, timeout=40
    )
    result = run_sipp(
        "call_uac.xml",
        front.target,
        users={caller: PASSWORDS[caller]},
        extra=["-s", callee],
        local_ip="127.0.51.41",
        workdir=workdir,
        timeout=30,
    )
    answered = finish_sipp_uas(uas, workdir, timeout=30)
    log = front.nodes()[name].log()
    assert result.successful == 1, (result.output, log[-4000:], front.kamailio.log()[-4000:])
    assert answered.successful == 1, (answered, front.kamailio.log()[-3000:])
    for _, phone in placed.values():
        phone.close()


def test_a_forged_source_header_sent_to_a_node_directly_is_ignored(front: Front) -> None:
    liar = Phone((front.a.host, front.a.port), "127.0.51.60")
    forged = ("X-PBX-Source: 127.0.51.99:5060;udp",)
    try:
        assert liar.register(NUMBERS[0], extra=forged) == 200
        assert wait_for(
            lambda: bindings(front.a).get(NUMBERS[0]) == [f"udp:127.0.51.60:{liar.port}"]
        ), bindings(front.a)
        # Guessing with the forged header: the liar's own address is banned.
        liar.client.sock.settimeout(3)
        for _ in range(12):
            if liar.register(NUMBERS[1], "wrong-password-123", extra=forged) is None:
                break
        assert wait_for(lambda: "127.0.51.60" in bans(front.a)), bans(front.a)
        assert "127.0.51.99" not in bans(front.a)
    finally:
        liar.close()


def test_password_guessing_through_the_front_bans_the_phone_not_the_front(
    front: Front,
) -> None:
    placed = placement(front, NUMBERS[:5], subnet=52)
    victim, (name, _) = next(iter(placed.items()))
    attacked = front.nodes()[name]
    attacker = Phone(front.address, "127.0.52.66")
    attacker.client.sock.settimeout(5)
    try:
        for _ in range(12):  # auth_failure_limit is 10
            assert attacker.register(victim, "not-the-password-1") == 403
            if "127.0.52.66" in bans(attacked):
                break
        assert wait_for(lambda: "127.0.52.66" in bans(attacked)), bans(attacked)
        assert FRONT not in bans(attacked)
        # Banned: refused before parsing, even with the right password; answered (403)
        # because the front would take silence for a dead node.
        began = time.monotonic()
        assert attacker.register(victim) == 403
        assert time.monotonic() - began < 1.5
    finally:
        attacker.close()
    for number, (_, phone) in placed.items():
        assert phone.register(number) == 200, number
        phone.close()
    assert FRONT not in bans(front.a) | bans(front.b)
    assert "pbxwarden node down" not in front.kamailio.log()


def test_a_killed_node_is_probed_down_and_its_phones_register_and_call_on_the_other(
    front: Front, tmp_path: Path
) -> None:
    placed = placement(front, NUMBERS, subnet=53)
    on_a = [n for n, (name, _) in placed.items() if name == "a"]
    assert on_a, placed
    callee = on_a[0]
    caller = next(n for n in NUMBERS if n != callee)
    phone = placed[callee][1]
    for number, (_, other) in placed.items():
        if number != callee:
            other.close()

    assert front.a.proc is not None
    marked: list[float] = []

    def watch_probes() -> None:  # when the front's log says A is down, polled every 20 ms
        while not marked and time.monotonic() - killed < 30:
            if "pbxwarden node down" in front.kamailio.log():
                marked.append(time.monotonic() - killed)
            time.sleep(0.02)

    front.a.proc.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    watcher = threading.Thread(target=watch_probes, daemon=True)
    watcher.start()
    front.a.proc.wait(10)
    # The phone registers again, as phones do when an answer is missing: through the
    # front to node B. A REGISTER sent to A before the probe saw it gone waits for
    # fr_timer and fails over to B itself.
    phone.client.sock.settimeout(5)
    registered_after = None
    while time.monotonic() - killed < 30:
        if phone.register(callee) == 200:
            registered_after = time.monotonic() - killed
            break
    assert registered_after is not None, front.kamailio.log()[-4000:]
    assert wait_for(lambda: callee in bindings(front.b))
    watcher.join(30)
    assert marked, front.kamailio.log()[-4000:]
    down_after = marked[0]
    began = time.monotonic()
    assert phone.register(callee) == 200
    direct = time.monotonic() - began
    print(
        f"failover: a REGISTER after SIGKILL succeeded on B {registered_after:.2f} s later; "
        f"node A marked down {down_after:.2f} s after it; a REGISTER then took {direct:.3f} s"
    )
    assert direct < 1.5  # straight to B, no time-out on A any more

    # A new call after the failover: both phones on B.
    phone.close()
    workdir = tmp_path / "call"
    workdir.mkdir()
    uas = start_sipp_uas("call_uas.xml", phone.port, workdir, local_ip=phone.host, timeout=40)
    result = run_sipp(
        "call_uac.xml",
        front.target,
        users={caller: PASSWORDS[caller]},
        extra=["-s", callee],
        local_ip="127.0.53.41",
        workdir=workdir,
        timeout=30,
    )
    answered = finish_sipp_uas(uas, workdir, timeout=30)
    assert result.successful == 1, (result.output, front.b.log()[-4000:])
    assert answered.successful == 1, (answered, front.kamailio.log()[-3000:])


def test_the_shipped_configuration_checks_clean(tmp_path: Path) -> None:
    """``kamailio -c`` on the shipped file, only the nodes' list put where it exists."""
    front = kam.Kamailio(tmp_path, FRONT, 5060, [(NODE_A, 5060), (NODE_B, 5060)])
    checked = front.check()
    assert checked.returncode == 0, checked.stderr[-3000:]
    assert "config file ok" in checked.stdout + checked.stderr
    with pytest.raises(ValueError, match="not substituted"):
        kam.render({"NO_SUCH_NAME": "1"})


def test_a_flood_through_the_front_bans_the_flooding_phone_only(front: Front) -> None:
    """150 requests in a burst (rate_limit is 100 per 2 s): the source the node bans is
    the phone's; the front and the phone's neighbours go on."""
    from pbxwarden.sip.message import generate_branch

    flooder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    flooder.bind(("127.0.52.77", 0))
    port = flooder.getsockname()[1]
    try:
        for i in range(150):
            flooder.sendto(
                (
                    f"OPTIONS sip:1000@{FRONT} SIP/2.0\r\n"
                    f"Via: SIP/2.0/UDP 127.0.52.77:{port};branch={generate_branch()};rport\r\n"
                    f"From: <sip:1000@{FRONT}>;tag=f{i}\r\nTo: <sip:1000@{FRONT}>\r\n"
                    f"Call-ID: flood-{i}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
                    "Content-Length: 0\r\n\r\n"
                ).encode(),
                front.address,
            )
        assert wait_for(lambda: "127.0.52.77" in bans(front.a) | bans(front.b))
    finally:
        flooder.close()
    assert FRONT not in bans(front.a) | bans(front.b)
    reasons = [
        str(r)
        for pbx in front.nodes().values()
        for (r,) in query(pbx, "SELECT reason FROM bans WHERE address = '127.0.52.77'")
    ]
    assert any("flood" in r for r in reasons), reasons
    neighbour = Phone(front.address, "127.0.52.78")
    try:
        assert neighbour.register(NUMBERS[0]) == 200
    finally:
        neighbour.close()
    assert "pbxwarden node down" not in front.kamailio.log()
