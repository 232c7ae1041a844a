"""Relayed re-INVITEs over UDP: the PBX's 2xx to the sender is retransmitted until the
sender's ACK (RFC 3261 13.3.1.4), and that ACK is what the other phone then receives."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import (
    PbxProcess,
    finish_sipp_uas,
    run_sipp,
    running_pbx,
    sipp_available,
    start_sipp_uas,
)
from tests.integration.test_calls import CALLER, USERS, register_callee, target, wait_cdr

pytestmark = pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) not installed")


@pytest.fixture
def pbx(tmp_path: Path) -> Iterator[PbxProcess]:
    with running_pbx(tmp_path / "data", USERS) as server:
        yield server


def test_a_lost_200_to_a_reinvite_is_retransmitted_and_the_ack_relayed(
    pbx: PbxProcess, tmp_path: Path
) -> None:
    port = register_callee(pbx, tmp_path)
    phone = start_sipp_uas("call_uas_reinvite_ack.xml", port, tmp_path)
    # The caller ignores the first 200 to its re-INVITE and ACKs only the retransmission.
    # -nr: else SIPp itself discards an identical 200 received again as a retransmission.
    caller = run_sipp(
        "call_uac_reinvite_lost_200.xml",
        target(pbx),
        users=CALLER,
        extra=["-s", "2000", "-nr"],
        workdir=tmp_path,
    )
    assert (caller.successful, caller.failed) == (1, 0), caller.output + pbx.log()[-3000:]
    held = finish_sipp_uas(phone, tmp_path)
    assert held.successful == 1, held.output  # the callee got the ACK of its 200
    [row] = wait_cdr(pbx)
    assert row["disposition"] == "answered"


def test_a_refer_to_a_premium_number_is_refused_by_the_pbx_and_never_relayed(
    pbx: PbxProcess, tmp_path: Path
) -> None:
    """The caller asks for a blind transfer of the callee to a premium number: the PBX
    judges it as a call the caller pays for and answers 403 itself; relayed, the other
    phone (or a carrier) could place a call nobody authorized. The callee's scenario
    fails on any request but BYE, so a relayed REFER fails it."""
    port = register_callee(pbx, tmp_path)
    phone = start_sipp_uas("call_uas.xml", port, tmp_path)
    caller = run_sipp("call_uac_refer.xml", target(pbx), users=CALLER, extra=["-s", "2000"],
                      workdir=tmp_path)  # fmt: skip
    assert (caller.successful, caller.failed) == (1, 0), caller.output + pbx.log()[-3000:]
    callee = finish_sipp_uas(phone, tmp_path)
    assert (callee.successful, callee.failed) == (1, 0), callee.output
    rows = wait_cdr(pbx, 2)
    by_kind = {row["kind"]: row for row in rows}
    assert by_kind["internal"]["disposition"] == "answered", rows
    refused = by_kind["transferred"]
    assert refused["disposition"] == "blocked" and refused["callee"] == "+19005550123", refused
    assert refused["extension"] == "1000", refused  # the transferring extension pays
