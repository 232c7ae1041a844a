"""Emergency calls through SIP, per home country: always connected (a suspended
extension, no room left under any limit), out through the tenant's trunk to a SIPp
carrier with the DID as callback number, the admins notified, the CDR written; and
short codes judged by their cost."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import (
    PbxProcess,
    carrier_invites,
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
# tenant -> (realm, country, extension, password, DID)
TENANTS = {
    "us": ("us.example", "US", "1000", "Us-Caller-Passw0rd", "+12025550100"),
    "gb": ("gb.example", "GB", "1000", "Gb-Caller-Passw0rd", "+442079460000"),
    "es": ("es.example", "ES", "1000", "Es-Caller-Passw0rd", "+34912345678"),
    "de": ("de.example", "DE", "1000", "De-Caller-Passw0rd", "+4930901820"),
    "fr": ("fr.example", "FR", "1000", "Fr-Caller-Passw0rd", "+33142278186"),
}


@pytest.fixture(scope="module")
def pbx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PbxProcess, int]]:
    """One server for the module: five tenants take a while to set up."""
    data = tmp_path_factory.mktemp("emergency") / "data"
    cli(data, "init")
    carrier_port = free_port(CARRIER)
    for name, (realm, country, ext, password, did) in TENANTS.items():
        cli(data, "tenant", "add", name, "--realm", realm, "--country", country)
        cli(data, "extension", "add", ext, "--password", password, "--tenant", name)
        cli(data, "did", "add", did, "--extension", ext, "--tenant", name)
        cli(data, "trunk", "add", "carrier", "--host", CARRIER, "--port", str(carrier_port),
            "--tenant", name)  # fmt: skip
    # 1001 may only be used from the office network: not from here, but for 911.
    cli(data, "extension", "add", "1001", "--password", "Us-Roaming-Passw0rd", "--tenant", "us")
    cli(data, "extension", "acl", "1001", "--allow", "10.0.0.0/8", "--tenant", "us")
    # The US extension is suspended and its tenant may not place a single costly call.
    cli(data, "extension", "suspend", "1000", "--tenant", "us", "--reason", "fraud suspected")
    cli(data, "tenant", "policy", "us", "--set", "max_concurrent_calls=0",
        "--set", "spend_per_day=0", "--set", "calls_per_minute=0")  # fmt: skip
    server = PbxProcess(data)
    server.start()
    try:
        yield server, carrier_port
    finally:
        server.stop()


def dial(
    pbx: PbxProcess,
    workdir: Path,
    tenant: str,
    dialed: str,
    scenario: str | Path,
    user: tuple[str, str] | None = None,
) -> int:
    realm, _, ext, password, _ = TENANTS[tenant]
    if user is not None:
        ext, password = user
    result = run_sipp(
        str(scenario),
        f"{pbx.host}:{pbx.port}",
        users={ext: password},
        extra=["-s", dialed],
        workdir=workdir,
        domain=realm,
        timeout=20,
    )
    assert result.successful == 1, result.output + pbx.log()[-3000:]
    return result.successful


def wait_for(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def test_emergency_numbers_always_connect_with_the_callback_number(
    pbx: tuple[PbxProcess, int], tmp_path: Path
) -> None:
    server, carrier_port = pbx
    calls = [
        ("us", "911", "911"),  # suspended, and no costly call left under the policy
        ("us", "9911", "911"),  # with the outside-line prefix
        ("gb", "999", "999"),
        ("es", "112", "112"),
        ("de", "110", "110"),
        ("fr", "15", "15"),
    ]
    messages = tmp_path / "carrier-messages.log"
    carrier = start_sipp_uas(
        "call_uas.xml",
        carrier_port,
        tmp_path,
        local_ip=CARRIER,
        calls=len(calls),
        timeout=120,
        extra=["-trace_msg", "-message_file", str(messages)],
    )
    try:
        for tenant, dialed, _ in calls:
            dial(server, tmp_path, tenant, dialed, "call_uac.xml")
    finally:
        result = finish_sipp_uas(carrier, tmp_path, timeout=30)
    assert result.successful == len(calls), result.output
    invites = carrier_invites(messages)
    assert [i["user"] for i in invites] == [number for _, _, number in calls]
    for invite, (tenant, _, _) in zip(invites, calls, strict=True):
        callback = TENANTS[tenant][4]
        assert f"sip:{callback}@" in invite["From"], invite
        assert f"sip:{callback}@" in invite["P-Asserted-Identity"], invite

    def records() -> list[dict[str, object]]:
        rows = json.loads(cli(server.data_dir, "cdr", "--json").stdout)
        return [r for r in rows if r["disposition"] != "in-progress" and r["kind"] == "emergency"]

    wait_for(lambda: len(records()) == len(calls))
    rows = records()
    assert {(r["kind"], r["disposition"], r["decision"]) for r in rows} == {
        ("emergency", "answered", "allow")
    }
    assert [r["callee"] for r in rows] == [dialed for _, dialed, _ in calls]
    assert all("always connected" in str(r["reasons"]) for r in rows)

    def emergency_alerts() -> list[dict[str, object]]:
        rows = json.loads(cli(server.data_dir, "alerts", "list", "--json").stdout)
        return [a for a in rows if a["rule"] == "emergency-call"]

    wait_for(lambda: len(emergency_alerts()) == len(calls))
    alerts = emergency_alerts()
    assert {a["tenant"] for a in alerts} == set(TENANTS)
    assert all(a["severity"] == "critical" and a["extension"] == "1000" for a in alerts)
    us = [a for a in alerts if a["tenant"] == "us"]
    assert len(us) == 2  # one per call: every emergency call is told, none merged
    assert any("+12025550100" in reason for a in us for reason in a["reasons"])  # type: ignore[attr-defined]


def test_short_codes_are_judged_by_their_cost(pbx: tuple[PbxProcess, int], tmp_path: Path) -> None:
    server, carrier_port = pbx
    # premium short codes never reach the carrier
    dial(server, tmp_path, "es", "11811", refused_scenario(tmp_path, 403))
    dial(server, tmp_path, "fr", "3615", refused_scenario(tmp_path, 403))
    # a toll-free one goes out like a national call
    messages = tmp_path / "carrier-messages.log"
    carrier = start_sipp_uas(
        "call_uas.xml",
        carrier_port,
        tmp_path,
        local_ip=CARRIER,
        extra=["-trace_msg", "-message_file", str(messages)],
    )
    try:
        dial(server, tmp_path, "de", "116116", "call_uac.xml")
    finally:
        result = finish_sipp_uas(carrier, tmp_path)
    assert result.successful == 1, result.output
    assert [i["user"] for i in carrier_invites(messages)] == ["116116"]
    rows = json.loads(cli(server.data_dir, "cdr", "--json").stdout)
    refused = [r for r in rows if r["decision"] == "deny" and r["callee"] in ("11811", "3615")]
    assert {(r["callee"], r["number_type"]) for r in refused} == {
        ("11811", "premium-rate"),
        ("3615", "premium-rate"),
    }


def test_outside_its_networks_an_extension_still_reaches_911(
    pbx: tuple[PbxProcess, int], tmp_path: Path
) -> None:
    """A softphone away from the office: its ACL refuses every call but the emergency one."""
    server, carrier_port = pbx
    roaming = ("1001", "Us-Roaming-Passw0rd")
    dial(server, tmp_path, "us", "2025550143", refused_scenario(tmp_path, 403), user=roaming)
    messages = tmp_path / "carrier-messages.log"
    carrier = start_sipp_uas(
        "call_uas.xml",
        carrier_port,
        tmp_path,
        local_ip=CARRIER,
        extra=["-trace_msg", "-message_file", str(messages)],
    )
    try:
        dial(server, tmp_path, "us", "911", "call_uac.xml", user=roaming)
    finally:
        result = finish_sipp_uas(carrier, tmp_path)
    assert result.successful == 1, result.output
    [invite] = carrier_invites(messages)
    assert invite["user"] == "911" and "sip:+12025550100@" in invite["From"]  # tenant's DID
