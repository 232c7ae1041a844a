"""A node stopped with ``calls.drain_timeout``: new calls get 503 (a SIP front sends them
to another node), the call in progress goes on until its phone hangs up, then the node
exits. Real server, SIPp phones."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from pbxwarden.sip.message import generate_branch
from tests.helpers import (
    PbxProcess,
    cli,
    finish_sipp_uac,
    finish_sipp_uas,
    free_port,
    run_sipp,
    sipp_available,
    start_sipp_uac,
    start_sipp_uas,
    status_of,
    udp_exchange,
    wait_for,
)

pytestmark = pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) not installed")

USERS = {"1000": "Caller-Passw0rd-x", "2000": "Callee-Passw0rd-y"}


def test_a_draining_node_refuses_new_calls_and_lets_its_calls_finish(tmp_path: Path) -> None:
    data = tmp_path / "data"
    cli(data, "init")
    for number, password in USERS.items():
        cli(data, "extension", "add", number, "--password", password)
    pbx = PbxProcess(data, env={"PBXWARDEN_CALLS__DRAIN_TIMEOUT": "30"})
    pbx.start()
    try:
        assert pbx.proc is not None
        target = f"{pbx.host}:{pbx.port}"
        port = free_port()
        reg = run_sipp(
            "register.xml", target, users={"2000": USERS["2000"]}, local_port=port, workdir=tmp_path
        )
        assert reg.successful == 1, reg.output
        callee = tmp_path / "callee"
        callee.mkdir()
        phone = start_sipp_uas("call_uas.xml", port, callee, timeout=60)
        caller = tmp_path / "caller"
        caller.mkdir()
        talking = start_sipp_uac(
            "call_uac_media.xml",
            target,
            users={"1000": USERS["1000"]},
            extra=["-s", "2000", "-d", "6000", "-key", "mport", str(free_port())],
            workdir=caller,
            timeout=60,
        )

        def up() -> bool:
            stats = json.loads(cli(data, "stats", "--json").stdout)
            return bool(stats["calls"] == 1)

        assert wait_for(up), pbx.log()[-3000:]
        pbx.proc.send_signal(signal.SIGTERM)
        assert wait_for(lambda: "draining: new calls refused" in pbx.log(), timeout=10)
        # a new call meanwhile: 503, for the front to try another node
        invite = (
            f"INVITE sip:2000@{pbx.host} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:9;branch={generate_branch()};rport\r\n"
            "From: <sip:1000@127.0.0.1>;tag=late\r\nTo: <sip:2000@127.0.0.1>\r\n"
            f"Call-ID: {generate_branch()}\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
            "Contact: <sip:1000@127.0.0.1:9>\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        reply = udp_exchange(invite, (pbx.host, pbx.port))
        assert status_of(reply) == 503, reply
        assert pbx.alive()  # still draining: the first call goes on
        assert finish_sipp_uac(talking, caller).successful == 1  # its phone hung up itself
        assert finish_sipp_uas(phone, callee).successful == 1
        pbx.proc.wait(20)  # then the node stops by itself
        started = time.monotonic()
        rows = json.loads(cli(data, "cdr", "--json").stdout)
        first = next(r for r in rows if r["disposition"] == "answered")
        assert "caller hung up" in str(first["reasons"]), first
        assert float(first["duration"]) >= 5.0, first  # type: ignore[arg-type]
        assert time.monotonic() - started < 30
    finally:
        pbx.stop()
