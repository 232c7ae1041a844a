"""Calls through the B2BUA between real SIP phones (SIPp), with their call records."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.helpers import (
    SCENARIOS,
    PbxProcess,
    cli,
    finish_sipp_uas,
    free_port,
    run_sipp,
    running_pbx,
    sipp_available,
    start_sipp_uas,
    track,
)

pytestmark = pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) not installed")

USERS = {"1000": "Caller-Passw0rd-x", "2000": "Callee-Passw0rd-y"}
CALLER = {"1000": USERS["1000"]}
CALLEE = {"2000": USERS["2000"]}


@pytest.fixture
def pbx(tmp_path: Path) -> Iterator[PbxProcess]:
    with running_pbx(tmp_path / "data", USERS) as server:
        yield server


def target(pbx: PbxProcess) -> str:
    return f"{pbx.host}:{pbx.port}"


def register_callee(pbx: PbxProcess, workdir: Path) -> int:
    """Register extension 2000 from a fixed port where its SIPp phone will then listen."""
    port = free_port()
    reg = run_sipp("register.xml", target(pbx), users=CALLEE, local_port=port, workdir=workdir)
    assert reg.successful == 1, reg.output
    return port


def call(
    pbx: PbxProcess,
    workdir: Path,
    scenario: str | Path = "call_uac.xml",
    dialed: str = "2000",
    timeout: float = 20,
) -> tuple[int, int, str]:
    result = run_sipp(
        str(scenario),
        target(pbx),
        users=CALLER,
        extra=["-s", dialed],
        workdir=workdir,
        timeout=timeout,
    )
    return result.successful, result.failed, result.output


def start_caller(
    pbx: PbxProcess,
    workdir: Path,
    scenario: str | Path,
    timeout: int,
    extra: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """Extension 1000 calling 2000 in the background, for tests that act mid-call."""
    users = workdir / "caller.csv"
    users.write_text(f"SEQUENTIAL\n1000;[authentication username=1000 password={USERS['1000']}]\n")
    return track(
        subprocess.Popen(
            [
                "sipp",
                target(pbx),
                "-sf",
                str(SCENARIOS / scenario),
                "-m",
                "1",
                "-i",
                "127.0.0.1",
                "-p",
                str(free_port()),
                "-key",
                "domain",
                "127.0.0.1",
                "-auth_uri",
                "127.0.0.1",
                "-s",
                "2000",
                "-inf",
                str(users),
                "-nostdin",
                "-nd",
                "-timeout",
                f"{timeout}s",
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=workdir,
        )
    )


def refused_scenario(workdir: Path, code: int) -> Path:
    template = (SCENARIOS / "call_uac_refused.xml.tmpl").read_text()
    path = workdir / f"call_refused_{code}.xml"
    path.write_text(template.format(code=code))
    return path


def cdrs(pbx: PbxProcess) -> list[dict[str, object]]:
    out = cli(pbx.data_dir, "cdr", "--json").stdout
    return [] if out.strip() == "no call records" else json.loads(out)


def wait_cdr(pbx: PbxProcess, count: int = 1) -> list[dict[str, object]]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        rows = cdrs(pbx)
        if len(rows) >= count and all(r["disposition"] != "in-progress" for r in rows):
            return rows
        time.sleep(0.2)
    return cdrs(pbx)


def test_extension_calls_extension_answered_and_hung_up(pbx: PbxProcess, tmp_path: Path) -> None:
    port = register_callee(pbx, tmp_path)
    phone = start_sipp_uas("call_uas.xml", port, tmp_path)
    ok, failed, output = call(pbx, tmp_path)
    assert (ok, failed) == (1, 0), output + pbx.log()[-3000:]
    answered = finish_sipp_uas(phone, tmp_path)
    assert answered.successful == 1, answered.output
    [row] = wait_cdr(pbx)
    assert row["disposition"] == "answered" and row["sip_code"] == 200
    assert (row["caller"], row["callee"], row["kind"], row["decision"]) == (
        "1000",
        "2000",
        "internal",
        "allow",
    )
    assert row["answer_ts"] is not None and 0.8 <= float(row["duration"]) < 10  # type: ignore[arg-type]
    assert "caller hung up" in str(row["reasons"])


def test_busy_callee(pbx: PbxProcess, tmp_path: Path) -> None:
    port = register_callee(pbx, tmp_path)
    phone = start_sipp_uas("call_uas_reject.xml", port, tmp_path)
    ok, _, output = call(pbx, tmp_path, refused_scenario(tmp_path, 486))
    assert ok == 1, output
    assert finish_sipp_uas(phone, tmp_path).successful == 1
    [row] = wait_cdr(pbx)
    assert (row["disposition"], row["sip_code"]) == ("busy", 486)


def test_caller_cancels_while_ringing(pbx: PbxProcess, tmp_path: Path) -> None:
    port = register_callee(pbx, tmp_path)
    phone = start_sipp_uas("call_uas_ring.xml", port, tmp_path)
    ok, _, output = call(pbx, tmp_path, "call_uac_cancel.xml")
    assert ok == 1, output + pbx.log()[-3000:]
    ringing = finish_sipp_uas(phone, tmp_path)
    assert ringing.successful == 1, ringing.output
    [row] = wait_cdr(pbx)
    assert (row["disposition"], row["sip_code"]) == ("cancelled", 487)


def test_unregistered_extension_is_unavailable(pbx: PbxProcess, tmp_path: Path) -> None:
    ok, _, output = call(pbx, tmp_path, refused_scenario(tmp_path, 480))
    assert ok == 1, output
    [row] = wait_cdr(pbx)
    assert (row["disposition"], row["sip_code"]) == ("unavailable", 480)


def test_external_numbers_are_closed_by_default(pbx: PbxProcess, tmp_path: Path) -> None:
    """Closed by default: no trunk or policy needed to refuse a costly or bogus number."""
    ok, _, output = call(pbx, tmp_path, refused_scenario(tmp_path, 403), dialed="011390612345678")
    assert ok == 1, output
    ok, _, output = call(pbx, tmp_path, refused_scenario(tmp_path, 404), dialed="00390612345678")
    assert ok == 1, output  # "00" is not the US international prefix: no such number
    international, bogus = wait_cdr(pbx, 2)
    assert (international["disposition"], international["decision"]) == ("blocked", "deny")
    assert (international["callee_e164"], international["dest_country"]) == ("+390612345678", "IT")
    assert "international call" in str(international["reasons"])
    assert bogus["disposition"] == "blocked" and "not a valid" in str(bogus["reasons"])


def test_no_answer_times_out(tmp_path: Path) -> None:
    env = {"PBXWARDEN_CALLS__RING_TIMEOUT": "2"}
    with running_pbx(tmp_path / "data", USERS, env=env) as pbx:
        port = register_callee(pbx, tmp_path)
        phone = start_sipp_uas("call_uas_ring.xml", port, tmp_path)
        ok, _, output = call(pbx, tmp_path, refused_scenario(tmp_path, 480))
        assert ok == 1, output
        assert finish_sipp_uas(phone, tmp_path).successful == 1  # it saw the CANCEL
        [row] = wait_cdr(pbx)
        assert (row["disposition"], row["sip_code"]) == ("no-answer", 480)


def test_sigkill_mid_call_keeps_finished_cdrs_and_closes_the_open_one(tmp_path: Path) -> None:
    with running_pbx(tmp_path / "data", USERS) as pbx:
        unavailable = refused_scenario(tmp_path, 480)
        for _ in range(2):  # two finished attempts
            assert call(pbx, tmp_path, unavailable)[0] == 1
        port = register_callee(pbx, tmp_path)
        phone = start_sipp_uas("call_uas_ring.xml", port, tmp_path, timeout=10)
        # A call left ringing (the phone never answers), then the server dies hard.
        caller = start_caller(pbx, tmp_path, "call_uac.xml", timeout=10)
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline and len(cdrs(pbx)) < 3:
            time.sleep(0.1)
        pbx.stop(signal.SIGKILL)
        caller.kill()
        phone.kill()
        caller.wait(5)
        phone.wait(5)
        pbx.start()
        rows = wait_cdr(pbx, 3)
        assert [r["disposition"] for r in rows] == ["unavailable", "unavailable", "interrupted"]


def test_call_cut_at_maximum_duration(tmp_path: Path) -> None:
    env = {"PBXWARDEN_CALLS__MAX_DURATION": "2"}
    with running_pbx(tmp_path / "data", USERS, env=env) as pbx:
        port = register_callee(pbx, tmp_path)
        phone = start_sipp_uas("call_uas.xml", port, tmp_path)
        ok, _, output = call(pbx, tmp_path, "call_uac_wait_bye.xml")
        assert ok == 1, output  # the caller got the PBX's BYE
        assert finish_sipp_uas(phone, tmp_path).successful == 1  # and so did the callee
        [row] = wait_cdr(pbx)
        assert row["disposition"] == "answered" and "maximum duration" in str(row["reasons"])
        assert 1.8 <= float(row["duration"]) < 4  # type: ignore[arg-type]


def test_call_listed_and_ended_from_the_cli(pbx: PbxProcess, tmp_path: Path) -> None:
    port = register_callee(pbx, tmp_path)
    phone = start_sipp_uas("call_uas.xml", port, tmp_path)
    caller = start_caller(pbx, tmp_path, "call_uac_wait_bye.xml", timeout=20)
    live: list[dict[str, object]] = []
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        out = cli(pbx.data_dir, "calls", "--json").stdout.strip()
        live = json.loads(out) if out.startswith("[") else []
        if live and live[0]["state"] == "answered":
            break
        time.sleep(0.2)
    assert live and (live[0]["caller"], live[0]["callee"]) == ("1000", "2000")
    cli(pbx.data_dir, "calls", "end", str(live[0]["call_id"]))
    assert caller.wait(15) == 0  # the caller's scenario ends with the PBX's BYE
    assert finish_sipp_uas(phone, tmp_path).successful == 1
    [row] = wait_cdr(pbx)
    assert "ended by an administrator" in str(row["reasons"])
    missing = cli(pbx.data_dir, "calls", "end", "no-such-call", check=False)
    assert missing.returncode == 1 and "no call" in missing.stderr


def test_calls_command_without_a_server(tmp_path: Path) -> None:
    cli(tmp_path / "d", "init")
    proc = cli(tmp_path / "d", "calls", check=False)
    assert proc.returncode == 1 and "not running" in proc.stderr


def test_hold_with_a_reinvite_is_relayed(pbx: PbxProcess, tmp_path: Path) -> None:
    port = register_callee(pbx, tmp_path)
    phone = start_sipp_uas("call_uas_reinvite.xml", port, tmp_path)
    ok, failed, output = call(pbx, tmp_path, "call_uac_reinvite.xml")
    assert (ok, failed) == (1, 0), output + pbx.log()[-3000:]
    held = finish_sipp_uas(phone, tmp_path)
    assert held.successful == 1, held.output  # it saw sendonly, the caller saw recvonly
    [row] = wait_cdr(pbx)
    assert row["disposition"] == "answered"


def test_delayed_offer_the_callers_answer_reaches_the_callee(
    pbx: PbxProcess, tmp_path: Path
) -> None:
    """An INVITE without SDP: the callee offers in its 200 OK, and the caller's answer
    (in its ACK) is what the PBX's ACK to the callee carries (RFC 3264)."""
    port = register_callee(pbx, tmp_path)
    phone = start_sipp_uas("call_uas_delayed_offer.xml", port, tmp_path)
    ok, failed, output = call(pbx, tmp_path, "call_uac_delayed_offer.xml")
    assert (ok, failed) == (1, 0), output + pbx.log()[-3000:]
    answered = finish_sipp_uas(phone, tmp_path)
    assert answered.successful == 1, answered.output  # its ACK carried an SDP answer
    [row] = wait_cdr(pbx)
    assert row["disposition"] == "answered"


def _keepalive_call(tmp_path: Path, callee_scenario: str) -> dict[str, object]:
    """A call answered by ``callee_scenario`` with keep-alive OPTIONS every second; the
    caller waits for the PBX's BYE. Returns the call record."""
    env = {"PBXWARDEN_CALLS__KEEPALIVE": "1", "PBXWARDEN_SIP__T1": "0.1"}
    with running_pbx(tmp_path / "data", USERS, env=env) as pbx:
        port = register_callee(pbx, tmp_path)
        phone = start_sipp_uas(callee_scenario, port, tmp_path, timeout=20)
        caller = run_sipp(
            "call_uac_wait_bye.xml",
            target(pbx),
            users=CALLER,
            extra=["-s", "2000", "-aa"],  # -aa: the caller answers OPTIONS, as phones do
            workdir=tmp_path,
            timeout=25,
            recv_timeout_ms=20000,  # the BYE comes after the keep-alive gave up
        )
        assert (caller.successful, caller.failed) == (1, 0), caller.output + pbx.log()[-3000:]
        finish_sipp_uas(phone, tmp_path, timeout=10)
        [row] = wait_cdr(pbx)
        return row


def test_keepalive_hangs_up_a_call_the_callee_forgot(tmp_path: Path) -> None:
    row = _keepalive_call(tmp_path, "call_uas_forgets.xml")
    assert row["disposition"] == "answered"
    assert "the callee's phone no longer knows the call (481)" in str(row["reasons"]), row
    assert float(row["duration"]) < 5, row  # the first keep-alive round, not max duration


def test_keepalive_hangs_up_a_call_whose_callee_vanished(tmp_path: Path) -> None:
    """The callee's SIPp ends after the ACK (a phone unplugged): the OPTIONS go unanswered
    and the call ends after Timer F (64 x T1 = 6.4 s here)."""
    scenario = tmp_path / "vanish.xml"
    text = (SCENARIOS / "call_uas.xml").read_text()
    scenario.write_text(text.split('  <recv request="BYE"/>')[0] + "</scenario>\n")
    row = _keepalive_call(tmp_path, str(scenario))
    assert "the callee's phone does not answer" in str(row["reasons"]), row
    assert 6 <= float(row["duration"]) < 15, row
