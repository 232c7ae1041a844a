"""Calls out through a trunk and in from a carrier, with SIPp playing the carrier on
its own loopback address, and the default policy refusing costly destinations."""

from __future__ import annotations

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
from tests.integration.test_calls import (
    USERS,
    call,
    refused_scenario,
    register_callee,
    target,
    wait_cdr,
)

pytestmark = pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) not installed")
CARRIER = "127.0.0.2"


@pytest.fixture
def pbx(tmp_path: Path) -> Iterator[PbxProcess]:
    with running_pbx(tmp_path / "data", USERS) as server:
        yield server


def add_trunk(pbx: PbxProcess, port: int, *prefixes: str) -> None:
    args = ["trunk", "add", "carrier", "--host", CARRIER, "--port", str(port)]
    for prefix in prefixes:
        args += ["--prefix", prefix]
    cli(pbx.data_dir, *args)
    import time

    time.sleep(1.5)  # the server reloads trunks every second


def test_national_call_goes_out_through_the_trunk(pbx: PbxProcess, tmp_path: Path) -> None:
    carrier_port = free_port(CARRIER)
    add_trunk(pbx, carrier_port, "+1")
    carrier = start_sipp_uas("call_uas.xml", carrier_port, tmp_path, local_ip=CARRIER)
    ok, failed, output = call(pbx, tmp_path, dialed="2025550143")
    assert (ok, failed) == (1, 0), output + pbx.log()[-3000:]
    assert finish_sipp_uas(carrier, tmp_path).successful == 1
    [row] = wait_cdr(pbx)
    assert (row["disposition"], row["kind"], row["trunk"]) == ("answered", "external", "carrier")
    assert (row["callee_e164"], row["dest_country"], row["number_type"]) == (
        "+12025550143",
        "US",
        "fixed-or-mobile",
    )
    assert "national fixed-or-mobile number" in str(row["reasons"])


@pytest.mark.parametrize(
    ("dialed", "e164", "why"),
    [
        ("19005550123", "+19005550123", "premium-rate number"),
        ("011442079460000", "+442079460000", "international call"),
        ("+882163020000", "+882163020000", "international call"),
    ],
)
def test_costly_destinations_are_refused_by_default(
    pbx: PbxProcess, tmp_path: Path, dialed: str, e164: str, why: str
) -> None:
    add_trunk(pbx, 5060, "+")
    ok, _, output = call(pbx, tmp_path, refused_scenario(tmp_path, 403), dialed=dialed)
    assert ok == 1, output
    [row] = wait_cdr(pbx)
    assert (row["disposition"], row["decision"], row["callee_e164"]) == ("blocked", "deny", e164)
    assert why in str(row["reasons"])


def test_no_route_without_a_trunk(pbx: PbxProcess, tmp_path: Path) -> None:
    ok, _, output = call(pbx, tmp_path, refused_scenario(tmp_path, 503), dialed="2025550143")
    assert ok == 1, output
    [row] = wait_cdr(pbx)
    assert row["disposition"] == "failed" and "no trunk route" in str(row["reasons"])


def test_carrier_call_to_a_did_rings_the_extension(pbx: PbxProcess, tmp_path: Path) -> None:
    add_trunk(pbx, 5060)
    assert (
        "+12025550100"
        in cli(pbx.data_dir, "did", "add", "2025550100", "--extension", "2000").stdout
    )
    import time

    time.sleep(1.5)
    port = register_callee(pbx, tmp_path)
    phone = start_sipp_uas("call_uas.xml", port, tmp_path)
    result = run_sipp(
        "call_uac_carrier.xml",
        target(pbx),
        users={"+15551230000": "-"},
        extra=["-s", "+12025550100"],
        local_ip=CARRIER,
        workdir=tmp_path,
    )
    assert (result.successful, result.failed) == (1, 0), result.output + pbx.log()[-3000:]
    assert finish_sipp_uas(phone, tmp_path).successful == 1
    [row] = wait_cdr(pbx)
    assert (row["kind"], row["extension"], row["caller"], row["disposition"]) == (
        "inbound",
        "2000",
        "+15551230000",
        "answered",
    )
    # A number that is not one of ours is refused, and recorded.
    refused = refused_scenario(tmp_path, 404).read_text()
    start = refused.index('  <send retrans="500">')
    second = refused.index('  <send retrans="500">', start + 10)
    noauth = tmp_path / "carrier_404.xml"
    noauth.write_text((refused[:start] + refused[second:]).replace("      [field1]\n", ""))
    miss = run_sipp(
        str(noauth),
        target(pbx),
        users={"+15551230000": "-"},
        extra=["-s", "+12025559999"],
        local_ip=CARRIER,
        workdir=tmp_path,
    )
    assert miss.successful == 1, miss.output


def test_trunk_and_did_input_is_validated(pbx: PbxProcess) -> None:
    for args, expected in [
        (("trunk", "add", "t1", "--host", "carrier..example"), "IP address or a DNS name"),
        (("trunk", "add", "t1", "--host", CARRIER, "--prefix", "44"), "invalid prefix"),
        (("did", "add", "12", "--extension", "2000"), "not a valid telephone number"),
        (("did", "add", "2025550100", "--extension", "9999"), "or time condition 9999"),
    ]:
        proc = cli(pbx.data_dir, *args, check=False)
        assert proc.returncode == 1 and expected in proc.stderr, (args, proc.stderr)


def test_tenant_policy_opens_a_country_but_not_its_high_risk_neighbours(tmp_path: Path) -> None:
    env = {"PBXWARDEN_GUARD__DEFAULT__ALLOW_COUNTRIES": '["DE", "LV"]'}
    with running_pbx(tmp_path / "data", USERS, env=env) as pbx:
        carrier_port = free_port(CARRIER)
        add_trunk(pbx, carrier_port)
        carrier = start_sipp_uas("call_uas.xml", carrier_port, tmp_path, local_ip=CARRIER)
        ok, failed, output = call(pbx, tmp_path, dialed="011493012345678")
        assert (ok, failed) == (1, 0), output + pbx.log()[-3000:]
        assert finish_sipp_uas(carrier, tmp_path).successful == 1
        ok, _, output = call(
            pbx, tmp_path, refused_scenario(tmp_path, 403), dialed="01137167123456"
        )
        assert ok == 1, output
        germany, latvia = wait_cdr(pbx, 2)
        assert (germany["disposition"], germany["dest_country"]) == ("answered", "DE")
        assert "calls to DE are allowed" in str(germany["reasons"])
        assert (latvia["disposition"], latvia["dest_country"]) == ("blocked", "LV")
        assert "high-risk destination for revenue-share fraud" in str(latvia["reasons"])
