"""Trunks that authenticate to the carrier: SIPp plays a carrier on 127.0.0.2 that
challenges the PBX's INVITE (and REGISTER) and checks the answer with ``verifyauth``."""

from __future__ import annotations

import json
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
    running_pbx,
    sipp_available,
    start_sipp_uas,
)
from tests.integration.test_calls import USERS, call, refused_scenario, wait_cdr

pytestmark = pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) not installed")
CARRIER = "127.0.0.2"
TRUNK_USER = "pbx-trunk-7"
TRUNK_PASSWORD = "Carrier-Given-s3cret"


@pytest.fixture
def pbx(tmp_path: Path) -> Iterator[PbxProcess]:
    with running_pbx(tmp_path / "data", USERS) as server:
        yield server


def add_trunk(pbx: PbxProcess, port: int, password: str, *extra: str) -> None:
    """The password goes through standard input, as an operator should give it."""
    cli(
        pbx.data_dir,
        "trunk",
        "add",
        "carrier",
        "--host",
        CARRIER,
        "--port",
        str(port),
        "--prefix",
        "+1",
        "--username",
        TRUNK_USER,
        "--password",
        "-",
        *extra,
        input_text=password + "\n",
    )
    time.sleep(1.5)  # the server reloads trunks every second


def carrier_keys() -> list[str]:
    """What the SIPp carrier checks the PBX's digest answers against."""
    return [*("-key", "trunk_user", TRUNK_USER), *("-key", "trunk_password", TRUNK_PASSWORD)]


def challenging_carrier(workdir: Path, code: int = 401) -> Path:
    """The carrier of carrier_auth_uas.xml.tmpl, challenging with 401 or 407.

    SIPp 3.6.1's verifyauth reads only the Authorization header: against a 407 the
    carrier checks that the Proxy-Authorization answers for our user (the digest
    arithmetic is the same, and tests/sip/test_digest_client.py checks it).
    """
    template = (SCENARIOS / "carrier_auth_uas.xml.tmpl").read_text()
    verify = (
        '      <verifyauth assign_to="authvalid" username="[trunk_user]" '
        'password="[trunk_password]"/>'
    )
    fields = {
        "code": 401,
        "reason": "Unauthorized",
        "header": "WWW-Authenticate",
        "verify": verify,
        "verify_what": "verifyauth, MD5, against -key trunk_user / trunk_password",
        "refs": "",
    }
    if code == 407:
        fields |= {
            "code": 407,
            "reason": "Proxy Authentication Required",
            "header": "Proxy-Authenticate",
            "verify": (
                f'      <ereg regexp="Digest username=.{TRUNK_USER}., realm=.carrier.example."'
                ' search_in="hdr" header="Proxy-Authorization:" check_it="true"'
                ' assign_to="proxyauth"/>\n'
                '      <assign assign_to="one" value="1"/>\n'
                '      <test assign_to="authvalid" variable="one" compare="equal" value="1"/>'
            ),
            "verify_what": "Proxy-Authorization for our user",
            "refs": ",proxyauth",
        }
    path = workdir / f"carrier_auth_{code}.xml"
    path.write_text(template.format(**fields))
    return path


@pytest.mark.parametrize("code", [401, 407])
def test_challenged_call_is_resent_with_credentials(
    pbx: PbxProcess, tmp_path: Path, code: int
) -> None:
    port = free_port(CARRIER)
    add_trunk(pbx, port, TRUNK_PASSWORD)
    carrier = start_sipp_uas(
        challenging_carrier(tmp_path, code), port, tmp_path, local_ip=CARRIER, extra=carrier_keys()
    )
    ok, failed, output = call(pbx, tmp_path, dialed="2025550143")
    assert (ok, failed) == (1, 0), output + pbx.log()[-3000:]
    result = finish_sipp_uas(carrier, tmp_path)
    assert (result.successful, result.failed) == (1, 0), result.output
    [row] = wait_cdr(pbx)
    assert (row["disposition"], row["trunk"], row["sip_code"]) == ("answered", "carrier", 200)
    assert TRUNK_PASSWORD not in pbx.log()


def test_wrong_password_fails_the_call_with_a_clear_reason(pbx: PbxProcess, tmp_path: Path) -> None:
    port = free_port(CARRIER)
    add_trunk(pbx, port, "not-what-the-carrier-has")
    carrier = start_sipp_uas(
        challenging_carrier(tmp_path), port, tmp_path, local_ip=CARRIER, extra=carrier_keys()
    )
    ok, _, output = call(pbx, tmp_path, refused_scenario(tmp_path, 403), dialed="2025550143")
    assert ok == 1, output + pbx.log()[-3000:]
    # the carrier saw exactly two INVITEs: no third within 3 s (its scenario checks)
    result = finish_sipp_uas(carrier, tmp_path)
    assert (result.successful, result.failed) == (1, 0), result.output + pbx.log()[-3000:]
    [row] = wait_cdr(pbx)
    assert (row["disposition"], row["sip_code"]) == ("failed", 401)
    assert "trunk carrier: the carrier rejected our credentials" in str(row["reasons"])
    assert "not-what-the-carrier-has" not in pbx.log()


def test_cancel_follows_the_authenticated_invite(pbx: PbxProcess, tmp_path: Path) -> None:
    port = free_port(CARRIER)
    add_trunk(pbx, port, TRUNK_PASSWORD)
    carrier = start_sipp_uas(
        "carrier_auth_ring_uas.xml", port, tmp_path, local_ip=CARRIER, extra=carrier_keys()
    )
    ok, failed, output = call(pbx, tmp_path, "call_uac_cancel.xml", dialed="2025550143")
    assert (ok, failed) == (1, 0), output + pbx.log()[-3000:]
    result = finish_sipp_uas(carrier, tmp_path)
    assert (result.successful, result.failed) == (1, 0), result.output + pbx.log()[-3000:]
    [row] = wait_cdr(pbx)
    assert (row["disposition"], row["sip_code"]) == ("cancelled", 487)


def test_trunk_registers_refreshes_and_unregisters(tmp_path: Path) -> None:
    port = free_port(CARRIER)
    data = tmp_path / "data"
    cli(data, "init")
    carrier = start_sipp_uas(
        "carrier_register_uas.xml",
        port,
        tmp_path,
        local_ip=CARRIER,
        extra=carrier_keys(),
        name="registrar",
    )
    with running_pbx(data, USERS) as pbx:
        add_trunk(pbx, port, TRUNK_PASSWORD, "--register", "--register-expires", "300")
        # the carrier grants 4 s: the refresh comes after 2 to 3.2 s, then 3600 s
        deadline = time.monotonic() + 15
        status: dict[str, object] = {}
        while time.monotonic() < deadline:
            stats = json.loads(cli(data, "stats", "--json").stdout)
            status = stats["trunk_registrations"].get("default/carrier", {})
            if status.get("state") == "registered" and int(str(status["expires_in"])) > 100:
                break
            time.sleep(0.3)
        assert status.get("state") == "registered", (status, pbx.log()[-3000:])
        listed = json.loads(cli(data, "trunk", "list", "--json").stdout)
        assert listed[0]["credentials"] is True and listed[0]["username"] == TRUNK_USER
        assert listed[0]["registration"]["state"] == "registered"
        assert TRUNK_PASSWORD not in json.dumps(listed)
        table = cli(data, "trunk", "list").stdout
        assert TRUNK_PASSWORD not in table
    # stopping the server unregistered (Expires: 0, answering the challenge again)
    result = finish_sipp_uas(carrier, tmp_path, timeout=10, name="registrar")
    assert (result.successful, result.failed) == (1, 0), result.output + pbx.log()[-3000:]
    assert TRUNK_PASSWORD not in pbx.log()


def test_registration_with_a_wrong_password_is_reported(tmp_path: Path) -> None:
    port = free_port(CARRIER)
    data = tmp_path / "data"
    cli(data, "init")
    carrier = start_sipp_uas(
        "carrier_register_uas.xml",
        port,
        tmp_path,
        local_ip=CARRIER,
        extra=carrier_keys(),
        name="registrar",
    )
    with running_pbx(data, USERS) as pbx:
        add_trunk(pbx, port, "a-wrong-password", "--register")
        deadline = time.monotonic() + 10
        status: dict[str, object] = {}
        while time.monotonic() < deadline:
            stats = json.loads(cli(data, "stats", "--json").stdout)
            status = stats["trunk_registrations"].get("default/carrier", {})
            if status.get("state") == "failed":
                break
            time.sleep(0.3)
        assert status.get("state") == "failed", (status, pbx.log()[-3000:])
        assert "rejected our credentials" in str(status["reason"])
        assert int(str(status["retry_in"])) > 200  # backs off: no hammering the carrier
        table = cli(data, "trunk", "list", env={"COLUMNS": "300"}).stdout
        assert "failed: the carrier rejected" in table and "a-wrong-password" not in table
    result = finish_sipp_uas(carrier, tmp_path, timeout=10, name="registrar")
    assert (result.successful, result.failed) == (1, 0), result.output + pbx.log()[-3000:]


def test_trunk_credentials_are_validated(pbx: PbxProcess) -> None:
    base = ("trunk", "add", "t1", "--host", CARRIER)
    for args, expected in [
        ((*base, "--username", "u"), "need both a username and a password"),
        ((*base, "--password", "x"), "need both a username and a password"),
        ((*base, "--register"), "registering a trunk needs"),
        ((*base, "--username", "a b", "--password", "p"), "invalid trunk username"),
        (
            (*base, "--username", "u", "--password", "p", "--register-expires", "5"),
            "between 60 and 86400",
        ),
    ]:
        proc = cli(pbx.data_dir, *args, check=False)
        assert proc.returncode == 1 and expected in proc.stderr, (args, proc.stderr)


def test_password_is_sealed_at_rest(tmp_path: Path) -> None:
    """The database holds only AES-GCM ciphertext, bound to its trunk, under a key that
    only the install secret gives."""
    from sqlalchemy import text

    from pbxwarden.store.credentials import trunk_credential_key
    from pbxwarden.store.db import Store

    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.migrate()
    store.ensure_tenant("default", "pbxwarden")
    key = trunk_credential_key(b"s" * 32)
    for name in ("one", "two"):
        store.add_trunk(
            "default",
            name,
            CARRIER,
            5060,
            "udp",
            ["+"],
            username=TRUNK_USER,
            password=TRUNK_PASSWORD,
            credential_key=key,
        )
    with store.engine.begin() as conn:
        rows = conn.execute(text("SELECT name, password_sealed FROM trunks")).all()
        assert all(r[1].startswith("v1.") and TRUNK_PASSWORD not in r[1] for r in rows)
        assert rows[0][1] != rows[1][1]  # a fresh nonce each time
        # one trunk's sealed password copied into another row does not open there
        conn.execute(
            text("UPDATE trunks SET password_sealed = :p WHERE name = 'two'"), {"p": rows[0][1]}
        )
    trunks = {t.name: t for t in store.routing_snapshot(key).trunks}
    assert trunks["one"].password == TRUNK_PASSWORD and trunks["one"].has_credentials
    assert trunks["two"].password is None and not trunks["two"].has_credentials
    assert TRUNK_PASSWORD not in repr(trunks["one"])
    assert store.routing_snapshot().trunks[0].password is None  # no key, no password
    other = trunk_credential_key(b"t" * 32)
    assert all(t.password is None for t in store.routing_snapshot(other).trunks)
    assert TRUNK_PASSWORD not in json.dumps(store.list_trunks())
    store.close()
