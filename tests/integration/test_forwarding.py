"""Call forwarding and redirects, the toll-fraud attack path, with real SIPp phones.

The attack: a hijacked phone's diversion is pointed at a premium-rate number, then the
attacker calls the company again and again. Every way a diversion can be set (the
CLI, a feature code dialled on the phone, a 3xx from the phone itself) must go
through the authorization hook.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pbxwarden.cli.audit_trail import actor
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
from tests.integration.test_calls import call, refused_scenario, target, wait_cdr

pytestmark = pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) not installed")

USERS = {"1000": "Caller-Passw0rd-x", "2000": "Callee-Passw0rd-y", "3000": "Other-Passw0rd-z"}
CARRIER = "127.0.0.2"


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


def forwarding(pbx: PbxProcess, history: bool = False) -> list[dict[str, object]]:
    args = ["forward", "list", "--json"] + (["--history"] if history else [])
    out = cli(pbx.data_dir, *args).stdout.strip()
    return json.loads(out) if out.startswith("[") else []


def settle() -> None:
    time.sleep(1.5)  # the server re-reads extensions (and their forwarding) every second


def test_cli_refuses_costly_targets_and_logs_every_change(pbx: PbxProcess) -> None:
    for number, why in [
        ("19005550123", "premium-rate"),
        ("011442079460000", "international"),
        ("+882163020000", "international"),
        ("12", "not a valid"),
    ]:
        proc = cli(pbx.data_dir, "forward", "set", "2000", "--always", number, check=False)
        assert proc.returncode == 1 and why in proc.stderr, (number, proc.stderr)
    assert forwarding(pbx) == []
    cli(pbx.data_dir, "forward", "set", "2000", "--busy", "3000")
    cli(pbx.data_dir, "forward", "set", "2000", "--noanswer", "2025550143", "--ring-time", "5")
    assert forwarding(pbx) == [
        {
            "tenant": "default",
            "extension": "2000",
            "always": None,
            "busy": "3000",
            "noanswer": "2025550143",
            "ring_time": 5.0,
        }
    ]
    cli(pbx.data_dir, "forward", "clear", "2000")
    assert forwarding(pbx) == []
    history = forwarding(pbx, history=True)
    # every refused attempt left a trace, with why; nothing was changed by them
    refused = [c for c in history if c["refused"]]
    assert [(c["new"], c["actor"]) for c in refused] == [
        ("19005550123", actor()),
        ("011442079460000", actor()),
        ("+882163020000", actor()),
        ("12", actor()),
    ]
    assert "premium-rate" in str(refused[0]["refused"])
    changes = [c for c in history if not c["refused"]]
    assert [(c["kind"], c["old"], c["new"], c["actor"]) for c in changes][:2] == [
        ("busy", None, "3000", actor()),
        ("noanswer", None, "2025550143", actor()),
    ]
    assert len(changes) == 5  # two sets, three clears


def test_feature_codes_from_the_phone(pbx: PbxProcess, tmp_path: Path) -> None:
    phone = {"2000": USERS["2000"]}

    def dial(number: str, expect: int) -> None:
        result = run_sipp(
            str(refused_scenario(tmp_path, expect)),
            target(pbx),
            users=phone,
            extra=["-s", number],
            workdir=tmp_path,
        )
        assert result.successful == 1, (number, result.output, pbx.log()[-2000:])

    dial("*7219005550123", 403)  # diversion to a premium-rate number: refused
    dial("*72011442079460000", 403)  # abroad: refused
    assert forwarding(pbx) == []
    dial("*723000", 603)  # to another extension: accepted (603: nothing to talk to)
    time.sleep(0.5)
    assert [f["always"] for f in forwarding(pbx)] == ["3000"]
    dial("*73", 603)
    time.sleep(0.5)
    assert forwarding(pbx) == []
    history = forwarding(pbx, history=True)
    # the refused attempts are in the history too: who, from where, the target, why
    assert [(c["new"], c["actor"], bool(c["refused"])) for c in history] == [
        ("19005550123", "phone", True),
        ("011442079460000", "phone", True),
        ("3000", "phone", False),
        (None, "phone", False),
    ]
    assert "premium-rate" in str(history[0]["refused"])
    assert all(str(c["source"]).startswith("udp:127.0.0.1:") for c in history)
    assert "forwarding change refused" in pbx.log()


def test_unconditional_forward_to_another_extension(pbx: PbxProcess, tmp_path: Path) -> None:
    cli(pbx.data_dir, "forward", "set", "2000", "--always", "3000")
    settle()
    port = register(pbx, "3000", tmp_path)
    phone = start_sipp_uas("call_uas_diverted.xml", port, tmp_path)
    ok, failed, output = call(pbx, tmp_path, dialed="2000")
    assert (ok, failed) == (1, 0), output + pbx.log()[-3000:]
    assert finish_sipp_uas(phone, tmp_path).successful == 1  # it saw the Diversion header
    [row] = wait_cdr(pbx)
    assert (row["disposition"], row["forwarded_by"], row["callee"]) == ("answered", "2000", "3000")


def test_redirect_to_a_premium_number_is_never_followed(pbx: PbxProcess, tmp_path: Path) -> None:
    """The attack itself: the phone's own diversion answers 302 towards premium rate."""
    carrier_port = free_port(CARRIER)
    cli(pbx.data_dir, "trunk", "add", "carrier", "--host", CARRIER, "--port", str(carrier_port))
    settle()
    carrier = start_sipp_uas(
        "call_uas.xml", carrier_port, tmp_path, local_ip=CARRIER, timeout=6, name="carrier"
    )
    port = register(pbx, "2000", tmp_path)
    hijacked = start_sipp_uas(
        "call_uas_redirect.xml", port, tmp_path, extra=["-key", "target", "19005550123"]
    )
    ok, _, output = call(pbx, tmp_path, refused_scenario(tmp_path, 403), dialed="2000")
    assert ok == 1, output + pbx.log()[-3000:]
    assert finish_sipp_uas(hijacked, tmp_path).successful == 1
    assert finish_sipp_uas(carrier, tmp_path, name="carrier").successful == 0  # never called
    [row] = wait_cdr(pbx)
    assert (row["disposition"], row["decision"], row["forwarded_by"]) == ("blocked", "deny", "2000")
    assert (row["callee_e164"], row["number_type"]) == ("+19005550123", "premium-rate")
    assert "forwarded by 2000 (redirect) to 19005550123" in str(row["reasons"])


def test_busy_forward_goes_out_through_the_trunk_with_diversion(
    pbx: PbxProcess, tmp_path: Path
) -> None:
    carrier_port = free_port(CARRIER)
    cli(pbx.data_dir, "trunk", "add", "carrier", "--host", CARRIER, "--port", str(carrier_port))
    cli(pbx.data_dir, "forward", "set", "2000", "--busy", "2025550143")
    settle()
    carrier = start_sipp_uas(
        "call_uas_diverted.xml", carrier_port, tmp_path, local_ip=CARRIER, name="carrier"
    )
    port = register(pbx, "2000", tmp_path)
    busy = start_sipp_uas("call_uas_reject.xml", port, tmp_path)
    ok, failed, output = call(pbx, tmp_path, dialed="2000")
    assert (ok, failed) == (1, 0), output + pbx.log()[-3000:]
    assert finish_sipp_uas(busy, tmp_path).successful == 1
    assert finish_sipp_uas(carrier, tmp_path, name="carrier").successful == 1
    [row] = wait_cdr(pbx)
    assert (row["disposition"], row["forwarded_by"], row["trunk"], row["callee_e164"]) == (
        "answered",
        "2000",
        "carrier",
        "+12025550143",
    )


def test_noanswer_forward_after_ring_time(pbx: PbxProcess, tmp_path: Path) -> None:
    cli(pbx.data_dir, "forward", "set", "2000", "--noanswer", "3000", "--ring-time", "1")
    settle()
    port_2000 = register(pbx, "2000", tmp_path)
    port_3000 = register(pbx, "3000", tmp_path)
    ringing = start_sipp_uas("call_uas_ring.xml", port_2000, tmp_path, name="ring")
    answering = start_sipp_uas("call_uas_diverted.xml", port_3000, tmp_path)
    ok, failed, output = call(pbx, tmp_path, dialed="2000")
    assert (ok, failed) == (1, 0), output + pbx.log()[-3000:]
    assert finish_sipp_uas(ringing, tmp_path, name="ring").successful == 1  # got the CANCEL
    assert finish_sipp_uas(answering, tmp_path).successful == 1
    [row] = wait_cdr(pbx)
    assert (row["disposition"], row["forwarded_by"], row["callee"]) == ("answered", "2000", "3000")
