"""Registrar workers reading REGISTERs from sockets of their own (SO_REUSEPORT with the
kernel steering them, transport/steering.py): the firewall stays in force for what they
read, and everything else still reaches the main process."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pbxwarden.registrar_gate import worker_for
from pbxwarden.sip.message import Response, parse_message
from pbxwarden.transport.steering import worker_socket_for
from tests.helpers import PbxProcess, SipClient, cli, options_request, running_pbx, udp_exchange

USERS = {str(1000 + i): f"Passw0rd-{i:04d}-sockets" for i in range(12)}
WORKERS = {"PBXWARDEN_SIP__WORKERS": "2"}


@pytest.fixture
def pbx(tmp_path: Path) -> Iterator[PbxProcess]:
    with running_pbx(tmp_path / "data", USERS, env=WORKERS) as server:
        assert wait_for(lambda: number(server, "workers_ready") == 2, 60.0)
        yield server


def stats(pbx: PbxProcess) -> dict[str, object]:
    return dict(json.loads(cli(pbx.data_dir, "stats", "--json").stdout))


def number(pbx: PbxProcess, key: str) -> int:
    value = stats(pbx)[key]
    assert isinstance(value, int)
    return value


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def bans(pbx: PbxProcess) -> dict[str, dict[str, object]]:
    out = cli(pbx.data_dir, "bans", "list", "--json").stdout
    return {} if out.strip() == "no bans" else {b["address"]: b for b in json.loads(out)}


def register(pbx: PbxProcess, user: str, source_ip: str, timeout: float = 5.0) -> int | None:
    """The final status of a challenge-response registration, None without an answer."""
    client = SipClient((pbx.host, pbx.port), source_ip=source_ip)
    client.sock.settimeout(timeout)
    try:
        reply = parse_message(client.register(user, USERS[user]))
        return reply.status if isinstance(reply, Response) else None
    except TimeoutError:
        return None
    finally:
        client.close()


def source_read_by(worker: int) -> str:
    """A loopback address whose REGISTERs the kernel steers to ``worker``'s socket."""
    return next(
        f"127.0.0.{i}" for i in range(30, 90) if worker_socket_for(f"127.0.0.{i}", 2) == worker + 1
    )


def user_of(worker: int) -> str:
    return next(u for u in USERS if worker_for(u.encode(), 2) == worker)


def raw_register(user: str, branch: str, port: int, credentials: bool = False) -> bytes:
    """``credentials``: with (wrong) ones, so that the answer is kept by a transaction
    (a bare challenge keeps none: its retransmission is challenged afresh)."""
    auth = (
        f'Authorization: Digest username="{user}", realm="x", nonce="0", uri="sip:x",'
        ' response="00000000000000000000000000000000"\r\n'
        if credentials
        else ""
    )
    return (
        "REGISTER sip:127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{branch};rport\r\n"
        f"From: <sip:{user}@127.0.0.1>;tag=1\r\nTo: <sip:{user}@127.0.0.1>\r\n"
        f"Call-ID: {branch}\r\nCSeq: 1 REGISTER\r\nMax-Forwards: 70\r\n"
        f"Contact: <sip:{user}@127.0.0.1:{port}>\r\n{auth}Content-Length: 0\r\n\r\n"
    ).encode()


def test_a_register_of_the_other_workers_user_is_handed_over_and_retransmissions_meet_it(
    pbx: PbxProcess,
) -> None:
    """Read by worker 0 (the kernel's choice, by source), owned by worker 1 (by user):
    handed over, answered by its owner, whose transaction absorbs the retransmission."""
    source, user = source_read_by(0), user_of(1)
    read, dispatched = number(pbx, "worker_read"), number(pbx, "worker_dispatched")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.settimeout(10)
        msg = raw_register(user, f"handover{user}", sock.getsockname()[1], credentials=True)
        sock.sendto(msg, (pbx.host, pbx.port))
        first = sock.recv(65535)
        sock.sendto(msg, (pbx.host, pbx.port))
        second = sock.recv(65535)
    assert first.startswith((b"SIP/2.0 401 ", b"SIP/2.0 403 "))
    assert first == second  # the same answer: the same transaction in the same worker
    assert wait_for(lambda: number(pbx, "worker_read") == read + 2)
    assert register(pbx, user, source) == 200
    assert register(pbx, user_of(0), source) == 200  # and one of its own
    assert number(pbx, "worker_dispatched") == dispatched  # none crossed the main process


def test_what_is_not_a_register_reaches_the_main_process(pbx: PbxProcess) -> None:
    source = source_read_by(1)
    assert register(pbx, user_of(0), source) == 200  # its REGISTERs: read by a worker
    dest = (pbx.host, pbx.port)
    # OPTIONS from the same source: the kernel gives it to the main process's socket.
    reply = udp_exchange(options_request(dest), dest, 5.0, source_ip=source)
    assert reply is not None and reply.startswith(b"SIP/2.0 200 "), reply
    # Starts like a REGISTER, so it lands on the worker's socket, but is not one: the
    # worker passes it on, unchanged, and the main process answers it.
    read = number(pbx, "worker_read")
    odd = options_request(dest).replace(b"OPTIONS", b"REGISTRAR")
    reply = udp_exchange(odd, dest, 5.0, source_ip=source)
    assert reply is not None and reply.split(b" ")[1] in (b"405", b"501"), reply
    assert wait_for(lambda: number(pbx, "worker_read") == read + 1)


def test_a_ban_made_in_the_main_process_drops_a_sources_registers_at_its_worker(
    pbx: PbxProcess,
) -> None:
    banned, other = source_read_by(0), source_read_by(1)
    assert register(pbx, "1003", banned) == 200
    cli(pbx.data_dir, "bans", "add", banned, "--duration", "600")  # the CLI: via the store
    assert wait_for(lambda: register(pbx, "1003", banned, timeout=0.5) is None)
    refused = number(pbx, "refused")
    assert register(pbx, "1003", banned, timeout=0.5) is None
    assert wait_for(lambda: number(pbx, "refused") > refused)  # refused by the worker
    assert register(pbx, "1004", other) == 200  # nobody else
    cli(pbx.data_dir, "bans", "remove", banned)
    assert wait_for(lambda: register(pbx, "1003", banned, timeout=1.0) == 200)


def test_a_flood_read_by_a_worker_is_banned_everywhere(tmp_path: Path) -> None:
    env = {**WORKERS, "PBXWARDEN_FIREWALL__RATE_LIMIT": "20"}
    with running_pbx(tmp_path / "data", USERS, env=env) as pbx:
        assert wait_for(lambda: number(pbx, "workers_ready") == 2, 60.0)
        flooder = source_read_by(1)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((flooder, 0))
            port = sock.getsockname()[1]
            for i in range(40):
                sock.sendto(raw_register("1005", f"flood{i}", port), (pbx.host, pbx.port))
        assert wait_for(lambda: flooder in bans(pbx))  # the worker's ban, made the main's
        assert "request flood" in str(bans(pbx)[flooder]["reason"])
        dest = (pbx.host, pbx.port)
        # and in force in the main process: its OPTIONS go unanswered now
        assert udp_exchange(options_request(dest), dest, 0.7, source_ip=flooder) is None
        assert register(pbx, "1006", source_read_by(0)) == 200
