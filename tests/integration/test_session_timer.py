"""Session timers (RFC 4028) on the caller's leg, with SIPp phones.

The PBX answers a caller's session interval in its 200 (Session-Expires, Require:
timer), keeps the call while the caller refreshes it (UPDATE), hangs up both legs when
it stops, and answers an interval below its Min-SE with 422. Min-SE is 2 s here (90 s
in production) so that a session can expire within a test.
"""

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
    env = {"PBXWARDEN_CALLS__SESSION_MIN_SE": "2"}
    with running_pbx(tmp_path / "data", USERS, env=env) as server:
        yield server


def caller(pbx: PbxProcess, scenario: str, interval: str, workdir: Path) -> None:
    result = run_sipp(
        scenario,
        target(pbx),
        users=CALLER,
        extra=["-s", "2000", "-key", "se", interval],
        workdir=workdir,
        recv_timeout_ms=12000,
    )
    assert (result.successful, result.failed) == (1, 0), result.output + pbx.log()[-3000:]


def test_a_session_not_refreshed_is_hung_up(pbx: PbxProcess, tmp_path: Path) -> None:
    port = register_callee(pbx, tmp_path)
    phone = start_sipp_uas("call_uas.xml", port, tmp_path)
    caller(pbx, "call_uac_timer_expires.xml", "3;refresher=uac", tmp_path)
    callee = finish_sipp_uas(phone, tmp_path)
    assert callee.successful == 1, callee.output  # the callee got the PBX's BYE too
    [row] = wait_cdr(pbx)
    assert row["disposition"] == "answered"
    assert "session expired" in str(row["reasons"]), row


def test_a_refreshed_session_lives_on(pbx: PbxProcess, tmp_path: Path) -> None:
    port = register_callee(pbx, tmp_path)
    phone = start_sipp_uas("call_uas_update.xml", port, tmp_path)
    caller(pbx, "call_uac_timer_refresh.xml", "3;refresher=uac", tmp_path)
    callee = finish_sipp_uas(phone, tmp_path)
    assert callee.successful == 1, callee.output
    [row] = wait_cdr(pbx)
    assert "session expired" not in str(row["reasons"]) and "caller hung up" in str(row["reasons"])
    assert float(str(row["duration"])) > 3.0, row  # longer than the interval


def test_an_interval_below_min_se_is_answered_422(pbx: PbxProcess, tmp_path: Path) -> None:
    caller(pbx, "call_uac_timer_brief.xml", "1", tmp_path)


def test_a_pjsip_phone_requiring_timers_gets_its_call(pbx: PbxProcess) -> None:
    """PJSIP set to require session timers: the call is answered with the interval and
    stays up (before, 420; earlier still, a 200 without Session-Expires: hung up)."""
    from tests.pjsip import pj, pjsip_phones

    with pjsip_phones(pbx.host, pbx.port) as phones:
        caller_phone = phones.add("1000", USERS["1000"], require_timer=True)
        callee_phone = phones.add("2000", USERS["2000"])
        placed = caller_phone.call("2000")
        phones.until(lambda: bool(callee_phone.incoming), "the callee rings")
        callee_phone.answer(callee_phone.incoming[0])
        phones.until(lambda: placed.confirmed, "the caller's call is answered")
        phones.run(1.5)
        assert placed.confirmed and placed.rtp()[0] > 10, placed.last_status
        placed.hangup(pj.CallOpParam(True))
        phones.until(lambda: callee_phone.incoming[0].disconnected, "the callee gets the BYE")
