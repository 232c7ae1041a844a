"""Parallel forking: every registered contact of an extension rings at once (real SIPp).

Extension 2000 registers from two SIPp ports (a desk phone and a softphone); the first
to answer gets the call, the other is cancelled ("Call completed elsewhere"), a late
answer is ACKed and hung up, and when every phone fails the caller gets the best answer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import (
    PbxProcess,
    cli,
    finish_sipp_uas,
    free_port,
    run_sipp,
    running_pbx,
    sipp_available,
    start_sipp_uas,
)
from tests.integration.test_calls import call, refused_scenario, start_caller, target, wait_cdr

pytestmark = pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) not installed")

USERS = {"1000": "Caller-Passw0rd-x", "2000": "Callee-Passw0rd-y", "3000": "Other-Passw0rd-z"}


@pytest.fixture
def pbx(tmp_path: Path) -> Iterator[PbxProcess]:
    with running_pbx(tmp_path / "data", USERS) as server:
        yield server


def register(pbx: PbxProcess, number: str, workdir: Path) -> int:
    port = free_port()
    reg = run_sipp(
        "register.xml", target(pbx), users={number: USERS[number]}, local_port=port, workdir=workdir
    )
    assert reg.successful == 1, reg.output
    return port


def two_phones(pbx: PbxProcess, workdir: Path) -> tuple[int, int]:
    """Extension 2000 registered from two ports: two bindings, both rung."""
    first, second = register(pbx, "2000", workdir), register(pbx, "2000", workdir)
    rows = json.loads(cli(pbx.data_dir, "registrations", "--json").stdout)
    sources = sorted(str(r["source"]) for r in rows if r["number"] == "2000")
    assert sources == sorted(f"udp:127.0.0.1:{p}" for p in (first, second)), rows
    return first, second


def test_first_to_answer_gets_the_call_the_other_is_cancelled(
    pbx: PbxProcess, tmp_path: Path
) -> None:
    desk, soft = two_phones(pbx, tmp_path)
    ringing = start_sipp_uas("call_uas_ring_elsewhere.xml", desk, tmp_path, name="desk")
    answering = start_sipp_uas("call_uas_ring_answer.xml", soft, tmp_path, name="soft")
    ok, failed, output = call(pbx, tmp_path)
    assert (ok, failed) == (1, 0), output + pbx.log()[-3000:]
    cancelled = finish_sipp_uas(ringing, tmp_path, name="desk")
    assert cancelled.successful == 1, cancelled.output + pbx.log()[-3000:]
    answered = finish_sipp_uas(answering, tmp_path, name="soft")
    assert answered.successful == 1, answered.output
    [row] = wait_cdr(pbx)
    assert (row["disposition"], row["sip_code"], row["callee"]) == ("answered", 200, "2000")
    assert "caller hung up" in str(row["reasons"])
    assert "ringing contacts in parallel" in pbx.log()


def test_late_answer_from_the_other_phone_is_acked_and_hung_up(
    pbx: PbxProcess, tmp_path: Path
) -> None:
    first, second = two_phones(pbx, tmp_path)
    winner = start_sipp_uas("call_uas.xml", first, tmp_path, name="winner")
    late = start_sipp_uas("call_uas_answer_late.xml", second, tmp_path, name="late")
    ok, failed, output = call(pbx, tmp_path)
    assert (ok, failed) == (1, 0), output + pbx.log()[-3000:]
    assert finish_sipp_uas(winner, tmp_path, name="winner").successful == 1
    hung_up = finish_sipp_uas(late, tmp_path, name="late")  # got its ACK, then a BYE
    assert hung_up.successful == 1, hung_up.output + pbx.log()[-3000:]
    assert "late answer from another contact hung up" in pbx.log()
    [row] = wait_cdr(pbx)
    assert row["disposition"] == "answered"


def test_every_phone_busy_caller_gets_busy(pbx: PbxProcess, tmp_path: Path) -> None:
    first, second = two_phones(pbx, tmp_path)
    phones = [
        start_sipp_uas("call_uas_reject.xml", port, tmp_path, name=f"busy{i}")
        for i, port in enumerate((first, second))
    ]
    ok, failed, output = call(pbx, tmp_path, refused_scenario(tmp_path, 486))
    assert (ok, failed) == (1, 0), output + pbx.log()[-3000:]
    for i, phone in enumerate(phones):
        assert finish_sipp_uas(phone, tmp_path, name=f"busy{i}").successful == 1
    [row] = wait_cdr(pbx)
    assert (row["disposition"], row["sip_code"]) == ("busy", 486)


def test_busy_forwarding_only_when_every_phone_is_busy(pbx: PbxProcess, tmp_path: Path) -> None:
    cli(pbx.data_dir, "forward", "set", "2000", "--busy", "3000")
    time.sleep(1.5)  # the server re-reads extensions every second
    first, second = two_phones(pbx, tmp_path)
    port_3000 = register(pbx, "3000", tmp_path)
    phones = [
        start_sipp_uas("call_uas_reject.xml", port, tmp_path, name=f"busy{i}")
        for i, port in enumerate((first, second))
    ]
    answering = start_sipp_uas("call_uas_diverted.xml", port_3000, tmp_path)
    ok, failed, output = call(pbx, tmp_path)
    assert (ok, failed) == (1, 0), output + pbx.log()[-3000:]
    for i, phone in enumerate(phones):
        assert finish_sipp_uas(phone, tmp_path, name=f"busy{i}").successful == 1
    assert finish_sipp_uas(answering, tmp_path).successful == 1
    [row] = wait_cdr(pbx)
    assert (row["disposition"], row["forwarded_by"], row["callee"]) == ("answered", "2000", "3000")


def test_noanswer_forwarding_cancels_every_phone(pbx: PbxProcess, tmp_path: Path) -> None:
    cli(pbx.data_dir, "forward", "set", "2000", "--noanswer", "3000", "--ring-time", "1")
    time.sleep(1.5)
    first, second = two_phones(pbx, tmp_path)
    port_3000 = register(pbx, "3000", tmp_path)
    phones = [
        start_sipp_uas("call_uas_ring.xml", port, tmp_path, name=f"ring{i}")
        for i, port in enumerate((first, second))
    ]
    answering = start_sipp_uas("call_uas_diverted.xml", port_3000, tmp_path)
    ok, failed, output = call(pbx, tmp_path)
    assert (ok, failed) == (1, 0), output + pbx.log()[-3000:]
    for i, phone in enumerate(phones):  # each got its CANCEL
        assert finish_sipp_uas(phone, tmp_path, name=f"ring{i}").successful == 1
    assert finish_sipp_uas(answering, tmp_path).successful == 1
    [row] = wait_cdr(pbx)
    assert (row["disposition"], row["forwarded_by"], row["callee"]) == ("answered", "2000", "3000")


def test_caller_cancels_every_phone_stops_ringing(pbx: PbxProcess, tmp_path: Path) -> None:
    first, second = two_phones(pbx, tmp_path)
    phones = [
        start_sipp_uas("call_uas_ring.xml", port, tmp_path, name=f"ring{i}")
        for i, port in enumerate((first, second))
    ]
    ok, failed, output = call(pbx, tmp_path, "call_uac_cancel.xml")
    assert (ok, failed) == (1, 0), output + pbx.log()[-3000:]
    for i, phone in enumerate(phones):
        assert finish_sipp_uas(phone, tmp_path, name=f"ring{i}").successful == 1
    [row] = wait_cdr(pbx)
    assert row["disposition"] == "cancelled"


def test_ending_a_ringing_call_cancels_every_phone(pbx: PbxProcess, tmp_path: Path) -> None:
    first, second = two_phones(pbx, tmp_path)
    phones = [
        start_sipp_uas("call_uas_ring.xml", port, tmp_path, name=f"ring{i}")
        for i, port in enumerate((first, second))
    ]
    caller = start_caller(pbx, tmp_path, refused_scenario(tmp_path, 480), 20)
    live: list[dict[str, object]] = []
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline and not live:
        out = cli(pbx.data_dir, "calls", "--json").stdout.strip()
        live = json.loads(out) if out.startswith("[") else []
        time.sleep(0.2)
    assert live, pbx.log()[-3000:]
    time.sleep(0.5)  # both phones ringing
    cli(pbx.data_dir, "calls", "end", str(live[0]["call_id"]))
    assert caller.wait(15) == 0, pbx.log()[-3000:]  # the caller got 480
    for i, phone in enumerate(phones):
        assert finish_sipp_uas(phone, tmp_path, name=f"ring{i}").successful == 1
    [row] = wait_cdr(pbx)
    assert row["disposition"] == "terminated" and "ended by an administrator" in str(row["reasons"])


def test_a_redirect_from_one_ringing_phone_is_judged_like_a_single_phones(
    pbx: PbxProcess, tmp_path: Path
) -> None:
    """The attack with a second phone: the hijacker registers another contact for 2000
    whose diversion answers 302 to premium rate while the real desk phone rings. The
    redirect is refused and alerted, 2000 suspended; it is not lost behind the desk phone."""
    desk, hijacked = two_phones(pbx, tmp_path)
    ringing = start_sipp_uas("call_uas_ring.xml", desk, tmp_path, name="desk")
    diverting = start_sipp_uas(
        "call_uas_redirect.xml",
        hijacked,
        tmp_path,
        extra=["-key", "target", "19005550123"],
        name="hijacked",
    )
    ok, _, output = call(pbx, tmp_path, refused_scenario(tmp_path, 403))
    assert ok == 1, output + pbx.log()[-3000:]
    assert finish_sipp_uas(diverting, tmp_path, name="hijacked").successful == 1
    cancelled = finish_sipp_uas(ringing, tmp_path, name="desk")
    assert cancelled.successful == 1, cancelled.output + pbx.log()[-3000:]
    [row] = wait_cdr(pbx)
    assert (row["disposition"], row["decision"], row["forwarded_by"]) == ("blocked", "deny", "2000")
    assert "forwarded by 2000 (redirect) to 19005550123" in str(row["reasons"])
    deadline = time.monotonic() + 10
    while True:
        alerts = json.loads(cli(pbx.data_dir, "alerts", "list", "--json").stdout)
        critical = [a for a in alerts if a["extension"] == "2000" and a["severity"] == "critical"]
        if critical or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert critical and critical[0]["rule"] == "forwarding-destination", alerts
    suspended = json.loads(cli(pbx.data_dir, "extension", "list", "--json").stdout)
    assert [e["suspended"] is not None for e in suspended if e["number"] == "2000"] == [True]
