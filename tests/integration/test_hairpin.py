"""Hairpins through the PBX's own numbers: a call, a diversion or a redirect to one of
our DIDs is delivered inside and never reaches the carrier (the carrier SIPp's log has no
INVITE); loops through DIDs end with 482; our own leg coming back from the carrier is
refused."""

from __future__ import annotations

import json
import subprocess
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
    sipp_available,
    start_sipp_uas,
)
from tests.integration.test_calls import refused_scenario

pytestmark = pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) not installed")
CARRIER = "127.0.0.2"
USERS = {
    "1000": "Caller-Passw0rd-x1",
    "2000": "Callee-Passw0rd-y2",
    "3000": "Divert-Passw0rd-z3",
}
ACME_USER = ("5000", "Acme-Phone-Passw0rd")
DID_2000, DID_3000, DID_ACME = "+12025550101", "+12025550103", "+12025550199"


@pytest.fixture
def pbx(tmp_path: Path) -> Iterator[tuple[PbxProcess, int, Path]]:
    data = tmp_path / "data"
    cli(data, "init")
    for number, password in USERS.items():
        cli(data, "extension", "add", number, "--password", password)
    cli(data, "tenant", "add", "acme", "--realm", "acme.example", "--country", "US")
    cli(data, "extension", "add", ACME_USER[0], "--password", ACME_USER[1], "--tenant", "acme")
    cli(data, "did", "add", DID_2000, "--extension", "2000")
    cli(data, "did", "add", DID_3000, "--extension", "3000")
    cli(data, "did", "add", DID_ACME, "--extension", ACME_USER[0], "--tenant", "acme")
    carrier_port = free_port(CARRIER)
    cli(data, "trunk", "add", "carrier", "--host", CARRIER, "--port", str(carrier_port))
    cli(data, "trunk", "add", "carrier", "--host", CARRIER, "--port", str(carrier_port),
        "--tenant", "acme")  # fmt: skip
    server = PbxProcess(data)
    server.start()
    # The carrier records every message it gets: a hairpin must never reach it.
    messages = tmp_path / "carrier-messages.log"
    carrier = start_sipp_uas(
        "call_uas.xml",
        carrier_port,
        tmp_path,
        local_ip=CARRIER,
        timeout=120,
        extra=["-trace_msg", "-message_file", str(messages)],
        name="carrier",
    )
    try:
        yield server, carrier_port, messages
    finally:
        carrier.terminate()
        try:
            carrier.wait(10)
        except subprocess.TimeoutExpired:
            carrier.kill()
            carrier.wait(5)
        server.stop()


def target(pbx: PbxProcess) -> str:
    return f"{pbx.host}:{pbx.port}"


def register_phone(
    pbx: PbxProcess, workdir: Path, number: str, password: str, domain: str | None = None
) -> int:
    port = free_port()
    reg = run_sipp(
        "register.xml",
        target(pbx),
        users={number: password},
        local_port=port,
        workdir=workdir,
        domain=domain,
    )
    assert reg.successful == 1, reg.output
    return port


def call_from_1000(pbx: PbxProcess, workdir: Path, dialed: str, scenario: str | Path) -> None:
    result = run_sipp(
        str(scenario),
        target(pbx),
        users={"1000": USERS["1000"]},
        extra=["-s", dialed],
        workdir=workdir,
        timeout=20,
    )
    assert result.successful == 1, result.output + pbx.log()[-3000:]


def wait_records(pbx: PbxProcess, count: int, timeout: float = 10.0) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    while True:
        rows = json.loads(cli(pbx.data_dir, "cdr", "--json").stdout)
        done = [r for r in rows if r["disposition"] != "in-progress"]
        if len(done) >= count or time.monotonic() > deadline:
            return done
        time.sleep(0.2)


def wait_reload(pbx: PbxProcess, seen: int, timeout: float = 10.0) -> None:
    """Until the server has read the extensions again after a change (it looks every
    second), so that the call meets the new forwarding."""
    deadline = time.monotonic() + timeout
    while pbx.log().count("extensions reloaded") <= seen:
        assert time.monotonic() < deadline, "the server did not reload the extensions"
        time.sleep(0.1)


def assert_carrier_untouched(messages: Path) -> None:
    text = messages.read_text(errors="replace") if messages.exists() else ""
    assert "INVITE sip:" not in text, text[-2000:]


def test_calls_and_diversions_to_our_own_dids_stay_inside(
    pbx: tuple[PbxProcess, int, Path], tmp_path: Path
) -> None:
    server, _, messages = pbx
    # 3000 diverts everything to 2000's DID, written as people write it.
    reloads = server.log().count("extensions reloaded")
    set_ = cli(server.data_dir, "forward", "set", "3000", "--always", DID_2000)
    assert "forwarding always" in set_.stdout
    wait_reload(server, reloads)
    port = register_phone(server, tmp_path, "2000", USERS["2000"])
    phone = start_sipp_uas("call_uas.xml", port, tmp_path, calls=2, timeout=60)
    try:
        call_from_1000(server, tmp_path, "2025550101", "call_uac.xml")  # the DID, dialled
        call_from_1000(server, tmp_path, "3000", "call_uac.xml")  # diverted to the DID
    finally:
        answered = finish_sipp_uas(phone, tmp_path)
    assert answered.successful == 2, answered.output
    rows = wait_records(server, 2)
    direct, diverted = rows[-2], rows[-1]
    assert (direct["kind"], direct["disposition"]) == ("internal", "answered")
    assert direct["trunk"] is None
    assert "this PBX's own number" in str(direct["reasons"])
    assert (diverted["disposition"], diverted["forwarded_by"]) == ("answered", "3000")
    assert "this PBX's own number" in str(diverted["reasons"])
    assert_carrier_untouched(messages)


def test_another_tenants_did_is_an_inbound_call_to_it(
    pbx: tuple[PbxProcess, int, Path], tmp_path: Path
) -> None:
    server, _, messages = pbx
    port = register_phone(server, tmp_path, *ACME_USER, domain="acme.example")
    phone = start_sipp_uas("call_uas.xml", port, tmp_path)
    try:
        call_from_1000(server, tmp_path, DID_ACME, "call_uac.xml")
    finally:
        answered = finish_sipp_uas(phone, tmp_path)
    assert answered.successful == 1, answered.output
    [row] = wait_records(server, 1)
    assert (row["tenant"], row["kind"], row["extension"], row["disposition"]) == (
        "acme",
        "inbound",
        ACME_USER[0],
        "answered",
    )
    # 1000 has no DID of its own: acme sees the calling tenant's number, not an extension
    assert row["caller"] == DID_2000
    assert_carrier_untouched(messages)


def test_a_loop_through_dids_ends_with_482(
    pbx: tuple[PbxProcess, int, Path], tmp_path: Path
) -> None:
    server, _, messages = pbx
    for number, target_ in (("2000", DID_3000), ("3000", "2025550101")):
        reloads = server.log().count("extensions reloaded")
        cli(server.data_dir, "forward", "set", number, "--always", target_)
        wait_reload(server, reloads)
    call_from_1000(server, tmp_path, "2000", refused_scenario(tmp_path, 482))
    [row] = wait_records(server, 1)
    assert row["sip_code"] == 482 and "loop" in str(row["reasons"])
    assert_carrier_untouched(messages)


def test_our_own_leg_coming_back_from_the_carrier_is_refused(
    pbx: tuple[PbxProcess, int, Path], tmp_path: Path
) -> None:
    server, _, _ = pbx
    result = run_sipp(
        "carrier_uac_looped.xml",
        target(server),
        extra=["-s", DID_2000],
        local_ip=CARRIER,
        workdir=tmp_path,
    )
    assert result.successful == 1, result.output + server.log()[-3000:]
    [row] = wait_records(server, 1)
    assert (row["kind"], row["sip_code"]) == ("inbound", 482)
    assert "names this PBX" in str(row["reasons"])
