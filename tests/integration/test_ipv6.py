"""Calls over IPv6 loopback (RFC 5118): the PBX writes [::1] in every Via, Contact and
URI it sends, so real peers (SIPp here) take its requests and answers."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import (
    SCENARIOS,
    PbxProcess,
    cli,
    finish_sipp_uas,
    free_port,
    run_sipp,
    sipp_available,
    start_sipp_uas,
)
from tests.integration.test_calls import USERS


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


pytestmark = [
    pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) not installed"),
    pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback here"),
]


@pytest.fixture
def pbx(tmp_path: Path) -> Iterator[PbxProcess]:
    data = tmp_path / "data"
    cli(data, "init")
    for number, password in USERS.items():
        cli(data, "extension", "add", number, "--password", password)
    server = PbxProcess(data, host="::1", port=free_port("::1"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_a_call_between_two_phones_over_ipv6(pbx: PbxProcess, tmp_path: Path) -> None:
    target = f"[::1]:{pbx.port}"
    register = tmp_path / "register_v6.xml"
    v6_binding = '<ereg regexp="&lt;sip:[0-9]+@\\[::1\\]:[0-9]+"'
    register.write_text(
        re.sub(r'<ereg regexp="[^"]*"', v6_binding, (SCENARIOS / "register.xml").read_text())
    )
    phone_port = free_port("::1")
    reg = run_sipp(
        str(register),
        target,
        users={"2000": USERS["2000"]},
        local_ip="::1",
        local_port=phone_port,
        workdir=tmp_path,
        domain="[::1]",
    )
    assert reg.successful == 1, reg.output + pbx.log()[-3000:]
    messages = tmp_path / "callee-messages.log"
    phone = start_sipp_uas(
        "call_uas.xml",
        phone_port,
        tmp_path,
        local_ip="::1",
        extra=["-trace_msg", "-message_file", str(messages)],
    )
    try:
        result = run_sipp(
            "call_uac.xml",
            target,
            users={"1000": USERS["1000"]},
            local_ip="::1",
            extra=["-s", "2000"],
            workdir=tmp_path,
            domain="[::1]",
        )
    finally:
        answered = finish_sipp_uas(phone, tmp_path)
    assert (result.successful, result.failed) == (1, 0), result.output + pbx.log()[-3000:]
    assert answered.successful == 1, answered.output
    invite = messages.read_text(errors="replace")
    assert re.search(r"^Via: SIP/2\.0/UDP \[::1\]:\d+;", invite, re.M), invite[:2000]
    assert re.search(r"^Contact: <sip:\[::1\]:\d+>", invite, re.M), invite[:2000]
    deadline = time.monotonic() + 10
    while True:
        rows = json.loads(cli(pbx.data_dir, "cdr", "--json").stdout)
        if (rows and rows[0]["disposition"] == "answered") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert rows[0]["disposition"] == "answered", rows
