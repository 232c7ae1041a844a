"""Caller ID towards carriers through SIP: a SIPp carrier receives the extension's DID in
E.164 (From and P-Asserted-Identity), never the internal number or what the phone put
in From; the chosen DID, withholding (per extension and per call with *67), a trunk
without P-Asserted-Identity, and an inbound call forwarded out."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import (
    SCENARIOS,
    PbxProcess,
    carrier_invites,
    cli,
    finish_sipp_uas,
    free_port,
    run_sipp,
    sipp_available,
    start_sipp_uas,
)

pytestmark = pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) not installed")
CARRIER = "127.0.0.2"
REALM = "acme.example"
USERS = {
    "1000": "Quartz-Harbor-71x",
    "1001": "Maple-Orbit-39q",
    "1002": "Cobalt-Fjord-58k",
    "1003": "Amber-Glacier-62w",  # forwards every call out (set before the server starts)
}
OTHER_DID = "+12025550199"  # the other tenant's: never presented by acme


@pytest.fixture(scope="module")
def pbx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PbxProcess, int]]:
    data = tmp_path_factory.mktemp("callerid") / "data"
    cli(data, "init")
    carrier_port = free_port(CARRIER)
    cli(data, "tenant", "add", "acme", "--realm", REALM, "--country", "US")
    cli(data, "tenant", "add", "other", "--realm", "other.example", "--country", "US")
    for ext, password in USERS.items():
        cli(data, "extension", "add", ext, "--password", password, "--tenant", "acme")
    cli(data, "extension", "add", "2000", "--password", "Velvet-Canyon-24z", "--tenant", "other")
    cli(data, "did", "add", "+12025550100", "--extension", "1000", "--tenant", "acme")
    cli(data, "did", "add", "(202) 555-0111", "--extension", "1001", "--tenant", "acme")
    cli(data, "did", "add", "+12025550122", "--extension", "1003", "--tenant", "acme")
    cli(data, "forward", "set", "1003", "--always", "2025550143", "--tenant", "acme")
    cli(data, "did", "add", OTHER_DID, "--extension", "2000", "--tenant", "other")
    cli(data, "trunk", "add", "carrier", "--host", CARRIER, "--port", str(carrier_port),
        "--tenant", "acme")  # fmt: skip
    server = PbxProcess(data)
    server.start()
    try:
        yield server, carrier_port
    finally:
        server.stop()


def spoofing_scenario(workdir: Path) -> Path:
    """The ordinary caller, but its From claims another tenant's number and it adds a
    P-Asserted-Identity of its own: neither may reach the carrier."""
    text = (SCENARIOS / "call_uac.xml").read_text()
    text = text.replace(
        "From: <sip:[field0]@[domain]>", f'From: "The Boss" <sip:{OTHER_DID}@[domain]>'
    )
    text = text.replace(
        "Max-Forwards: 70\n",
        "Max-Forwards: 70\n      P-Asserted-Identity: <sip:+19005550123@x>\n",
        1,
    )
    path = workdir / "call_uac_spoofing.xml"
    path.write_text(text)
    return path


def place(
    server: PbxProcess, carrier_port: int, workdir: Path, calls: list[tuple[str, str, str]]
) -> list[dict[str, str]]:
    """(extension, dialled, scenario) each through the PBX to the carrier SIPp."""
    messages = workdir / "carrier-messages.log"
    carrier = start_sipp_uas(
        "call_uas.xml",
        carrier_port,
        workdir,
        local_ip=CARRIER,
        calls=len(calls),
        timeout=60,
        extra=["-trace_msg", "-message_file", str(messages)],
    )
    try:
        for ext, dialed, scenario in calls:
            if scenario == "carrier":
                result = run_sipp(
                    "call_uac_carrier.xml",
                    f"{server.host}:{server.port}",
                    users={ext: "-"},
                    extra=["-s", dialed],
                    local_ip=CARRIER,
                    workdir=workdir,
                    timeout=20,
                )
            else:
                result = run_sipp(
                    scenario,
                    f"{server.host}:{server.port}",
                    users={ext: USERS[ext]},
                    extra=["-s", dialed],
                    workdir=workdir,
                    domain=REALM,
                    timeout=20,
                )
            assert result.successful == 1, result.output + server.log()[-3000:]
    finally:
        done = finish_sipp_uas(carrier, workdir, timeout=30)
    assert done.successful == len(calls), done.output
    invites = carrier_invites(messages)
    assert len(invites) == len(calls), invites
    return invites


def test_carriers_see_the_tenants_own_number(pbx: tuple[PbxProcess, int], tmp_path: Path) -> None:
    server, carrier_port = pbx
    spoof = str(spoofing_scenario(tmp_path))
    own, chosen, default = place(
        server,
        carrier_port,
        tmp_path,
        [
            ("1000", "2025550143", spoof),  # its own DID, whatever its From says
            ("1001", "+12025550143", "call_uac.xml"),  # its own DID, written as people do
            ("1002", "2025550143", "call_uac.xml"),  # no DID of its own: the tenant's lowest
        ],
    )
    assert re.match(r"<sip:\+12025550100@", own["From"]), own
    assert own["P-Asserted-Identity"].startswith("<sip:+12025550100@"), own
    assert OTHER_DID not in str(own) and "+1900" not in str(own) and "Boss" not in str(own)
    assert chosen["From"].startswith("<sip:+12025550111@"), chosen
    assert default["From"].startswith("<sip:+12025550100@"), default
    assert all("1000@" not in i["From"] and "1002@" not in i["From"] for i in (own, default))
    assert not any(i["Privacy"] for i in (own, chosen, default))


def test_chosen_withheld_and_unasserted_identities(
    pbx: tuple[PbxProcess, int], tmp_path: Path
) -> None:
    server, carrier_port = pbx
    data = server.data_dir
    # only a number the tenant owns can be chosen
    refused = cli(data, "extension", "caller-id", "1002", "--number", OTHER_DID,
                  "--tenant", "acme", check=False)  # fmt: skip
    assert refused.returncode == 1 and "not a DID of tenant acme" in refused.stderr
    cli(data, "extension", "caller-id", "1002", "--number", "202-555-0111", "--tenant", "acme")
    cli(data, "extension", "caller-id", "1001", "--withhold", "--tenant", "acme")
    calls = [
        ("1002", "2025550143", "call_uac.xml"),
        ("1001", "2025550143", "call_uac.xml"),
        ("1000", "*672025550143", "call_uac.xml"),  # *67: this call only
    ]
    # the running server re-reads extensions about every second: until it has
    chosen, withheld, per_call = until_changed(
        lambda: place(server, carrier_port, tmp_path, calls),
        lambda invites: "+12025550111@" in invites[0]["From"],
    )
    assert chosen["From"].startswith("<sip:+12025550111@"), chosen
    for invite, number in ((withheld, "+12025550111"), (per_call, "+12025550100")):
        assert "anonymous@anonymous.invalid" in invite["From"], invite
        assert invite["Privacy"] == "id", invite
        assert invite["P-Asserted-Identity"].startswith(f"<sip:{number}@"), invite
        assert invite["uri"].startswith("INVITE sip:+12025550143@"), invite  # no *67
    # a carrier that does not trust the PBX gets no P-Asserted-Identity
    cli(data, "trunk", "identity", "carrier", "--no-assert", "--tenant", "acme")
    [plain] = until_changed(
        lambda: place(server, carrier_port, tmp_path, [("1000", "2025550143", "call_uac.xml")]),
        lambda invites: not invites[0]["P-Asserted-Identity"],
    )
    assert plain["From"].startswith("<sip:+12025550100@") and not plain["P-Asserted-Identity"]
    cli(data, "trunk", "identity", "carrier", "--assert", "--tenant", "acme")
    cli(data, "extension", "caller-id", "1001", "--show", "--tenant", "acme")
    cli(data, "extension", "caller-id", "1002", "--default", "--tenant", "acme")
    audit = cli(data, "audit-log", "--json").stdout
    assert audit.count('"extension.caller_id"') == 4 and audit.count('"trunk.identity"') == 2


def until_changed(
    attempt: Callable[[], list[dict[str, str]]],
    changed: Callable[[list[dict[str, str]]], bool],
    timeout: float = 15.0,
) -> list[dict[str, str]]:
    """Place calls again until the server shows a configuration change (bounded)."""
    deadline = time.monotonic() + timeout
    invites = attempt()
    while not changed(invites) and time.monotonic() < deadline:
        time.sleep(0.5)
        invites = attempt()
    return invites


def test_an_inbound_call_forwarded_out_shows_its_caller(
    pbx: tuple[PbxProcess, int], tmp_path: Path
) -> None:
    server, carrier_port = pbx
    [forwarded] = place(
        server, carrier_port, tmp_path, [("+13125550188", "+12025550122", "carrier")]
    )
    # who is calling, as carriers expect with Diversion; asserted: the tenant's number
    assert forwarded["From"].startswith("<sip:+13125550188@"), forwarded
    assert forwarded["P-Asserted-Identity"].startswith("<sip:+12025550122@"), forwarded
    assert "Diversion" in forwarded["raw"], forwarded
