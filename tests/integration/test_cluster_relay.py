"""Phones registered on nodes directly (no SIP front: DNS SRV, or phones pointed at a
node) call each other across nodes: node B sends the call for a phone of node A through
A, signed; A rings its phone. A request that names a node without its signature is an
ordinary unauthenticated INVITE: challenged, never rung.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pbxwarden.control import ControlError, ask
from pbxwarden.sip.message import generate_branch
from tests.cluster_nodes import start_node
from tests.helpers import (
    PbxProcess,
    finish_sipp_uas,
    run_sipp,
    sipp_available,
    start_sipp_uas,
    status_of,
    wait_for,
)
from tests.integration.test_kamailio_front import Phone
from tests.redis_server import RedisServer

pytestmark = [
    pytest.mark.redis,
    pytest.mark.sipp,
    pytest.mark.timeout(240),
    pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) not installed"),
]

NODE_A, NODE_B = "127.0.70.11", "127.0.70.12"
USERS = {"1000": "Quill-Saffron-8812", "2000": "Tundra-Beacon-4471"}


def stats(pbx: PbxProcess) -> dict[str, object]:
    try:
        return ask(pbx.data_dir, {"cmd": "stats"}, timeout=5.0)
    except ControlError:
        return {}


@pytest.fixture
def nodes(tmp_path: Path, redis_server: RedisServer) -> Iterator[tuple[PbxProcess, PbxProcess]]:
    started: list[PbxProcess] = []
    try:
        for name, host in (("a", NODE_A), ("b", NODE_B)):
            started.append(
                start_node(
                    tmp_path,
                    name,
                    host,
                    redis_server,
                    USERS,
                    PBXWARDEN_CLUSTER__HEARTBEAT_INTERVAL="0.5",
                    PBXWARDEN_CLUSTER__LOST_AFTER="5",
                )
            )
        yield started[0], started[1]
    finally:
        for pbx in started:
            pbx.stop()


def _forged_invite(pbx: PbxProcess, source: str, contact: str) -> int | None:
    """An INVITE to ``pbx`` naming node B in X-PBX-Node without B's signature."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.settimeout(5)
        host, port = sock.getsockname()
        lines = [
            f"INVITE {contact} SIP/2.0",
            f"Via: SIP/2.0/UDP {host}:{port};branch={generate_branch()};rport",
            "Max-Forwards: 70",
            f"From: <sip:2000@{pbx.host}>;tag=forged",
            f"To: <sip:1000@{pbx.host}>",
            f"Call-ID: forged-{time.monotonic_ns()}",
            "CSeq: 1 INVITE",
            f"Contact: <sip:2000@{host}:{port}>",
            f"X-PBX-Node: b;t={int(time.time())};sig={'0' * 32}",
            "Content-Length: 0",
        ]
        sock.sendto(("\r\n".join(lines) + "\r\n\r\n").encode(), (pbx.host, pbx.port))
        while True:
            try:
                data = sock.recv(65535)
            except TimeoutError:
                return None
            status = status_of(data)
            if status is not None and status >= 200:
                return status


def test_a_phone_registered_on_a_directly_is_called_from_b_through_a(
    nodes: tuple[PbxProcess, PbxProcess], tmp_path: Path
) -> None:
    a, b = nodes
    phone = Phone((a.host, a.port), "127.0.71.1")
    host, port = phone.host, phone.port
    assert phone.register("1000", USERS["1000"]) == 200
    phone.close()  # SIPp answers on the very address the binding recorded
    assert wait_for(lambda: int(stats(b).get("cluster_location_replica", 0)) >= 1)  # type: ignore[call-overload]
    contact = f"sip:1000@{host}:{port}"

    # a forged relay from an address that is no node: challenged like any stranger
    assert _forged_invite(a, "127.0.71.9", contact) in (401, 407)
    assert wait_for(lambda: int(stats(a).get("cluster_relay_refused", 0)) >= 1)  # type: ignore[call-overload]

    workdir = tmp_path / "call"
    workdir.mkdir()
    uas = start_sipp_uas("call_uas.xml", port, workdir, local_ip=host, timeout=60)
    try:
        # node B needs A's address from the registry: its view is a heartbeat old
        def called() -> bool:
            result = run_sipp(
                "call_uac.xml",
                f"{b.host}:{b.port}",
                users={"2000": USERS["2000"]},
                extra=["-s", "1000"],
                local_ip="127.0.71.50",
                workdir=workdir,
                timeout=20,
            )
            return bool(result.successful == 1)

        assert wait_for(called, timeout=40, step=1.0), (b.log()[-3000:], a.log()[-3000:])
    finally:
        finish_sipp_uas(uas, workdir, timeout=10)
    assert int(stats(b).get("cluster_relay_signed", 0)) >= 1  # type: ignore[call-overload]
    assert int(stats(a).get("cluster_relay_taken", 0)) >= 1  # type: ignore[call-overload]
