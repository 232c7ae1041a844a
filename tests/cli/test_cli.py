"""The pbxwarden command as a user runs it: clear messages and exit codes, nothing lost."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

from pbxwarden.sip.message import Response, parse_message
from tests.helpers import PbxProcess, SipClient, cli, free_port


def test_init_is_idempotent_and_private(tmp_path: Path) -> None:
    data = tmp_path / "d"
    assert "initialised" in cli(data, "init").stdout
    key = (data / "digest.key").read_bytes()
    cli(data, "init")
    assert (data / "digest.key").read_bytes() == key
    assert (data / "digest.key").stat().st_mode & 0o077 == 0
    assert (data / "pbxwarden.db").stat().st_mode & 0o077 == 0


def test_commands_before_init_explain_what_to_do(tmp_path: Path) -> None:
    proc = cli(tmp_path / "missing", "extension", "list", check=False)
    assert proc.returncode != 0 and "init" in proc.stderr and "Traceback" not in proc.stderr


def test_generated_password_is_strong_and_shown_once(tmp_path: Path) -> None:
    data = tmp_path / "d"
    cli(data, "init")
    out = cli(data, "extension", "add", "1000").stdout
    password = out.split("password:")[1].split()[0]
    assert len(password) >= 20
    listing = cli(data, "extension", "list", "--json").stdout
    assert password not in listing
    assert json.loads(listing) == [
        {
            "tenant": "default",
            "number": "1000",
            "display_name": None,
            "enabled": True,
            "networks": None,
            "suspended": None,
            "registrations": 0,
            "locked_until": None,
            "lock_reason": None,
            "trunk_access": False,
            "caller_id": None,
            "withhold_caller_id": False,
        }
    ]
    assert password.encode() not in (data / "pbxwarden.db").read_bytes()


def test_bad_input_is_refused_clearly_and_nothing_is_lost(tmp_path: Path) -> None:
    data = tmp_path / "d"
    cli(data, "init")
    cli(data, "extension", "add", "1000", "--password", "Good-Passw0rd-1")
    for args, expected in [
        (("extension", "add", "1001", "--password", "short"), "too short"),
        (("extension", "add", "1000", "--password", "Good-Passw0rd-2"), "already exists"),
        (("extension", "add", "12ab", "--password", "Good-Passw0rd-2"), "invalid extension"),
        (("extension", "add", "1002", "--tenant", "nope"), "unknown tenant"),
        (("tenant", "add", "acme", "--realm", "bad realm!"), "invalid realm"),
        (("group", "set", "1000", "-m", "+12025550143"), "is an extension"),
        (("group", "set", "600", "-m", "1999"), "neither an extension"),
        (("group", "set", "600", "-m", "1000", "--strategy", "random"), "is not one of"),
    ]:
        proc = cli(data, *args, check=False)
        assert proc.returncode == 1, args
        assert expected in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("2000,Good-Passw0rd-3\n2001,weak\n")
    proc = cli(data, "extension", "import", str(bad_csv), check=False)
    assert proc.returncode == 1 and "nothing imported" in proc.stderr
    numbers = [e["number"] for e in json.loads(cli(data, "extension", "list", "--json").stdout)]
    assert numbers == ["1000"]


def test_bad_config_is_one_clear_message(tmp_path: Path) -> None:
    data = tmp_path / "d"
    cli(data, "init")
    proc = cli(data, "serve", check=False, env={"PBXWARDEN_SIP__MIN_EXPIRES": "-5"})
    assert proc.returncode == 1 and "sip.min_expires" in proc.stderr
    assert "Traceback" not in proc.stderr
    (data / "pbxwarden.toml").write_text("[sip\nlisten = 1")
    proc = cli(data, "extension", "list", check=False)
    assert proc.returncode == 1 and "cannot read" in proc.stderr
    (data / "pbxwarden.toml").write_text('[sip]\nlisten = "localhost:5060"\nbogus = 1\n')
    proc = cli(data, "extension", "list", check=False)
    assert proc.returncode == 1 and "sip.listen" in proc.stderr and "sip.bogus" in proc.stderr


def test_serve_reports_bad_or_busy_address(tmp_path: Path) -> None:
    data = tmp_path / "d"
    cli(data, "init")
    proc = cli(data, "serve", "--sip", "127.0.0.1:99999", check=False)
    assert proc.returncode == 1 and "port" in proc.stderr and "Traceback" not in proc.stderr
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", port))
        proc = cli(data, "serve", "--sip", f"127.0.0.1:{port}", check=False)
    assert proc.returncode == 1 and "cannot listen" in proc.stderr


def test_tenants_have_their_own_realm(tmp_path: Path) -> None:
    data = tmp_path / "d"
    cli(data, "init")
    cli(data, "extension", "add", "1000", "--password", "Default-Passw0rd")
    pbx = PbxProcess(data)
    pbx.start()
    try:
        # Added while the server runs: picked up without a restart.
        cli(data, "tenant", "add", "acme", "--realm", "acme.example", "--country", "DE")
        cli(data, "extension", "add", "1000", "--tenant", "acme", "--password", "Acme-Passw0rd-1")
        tenants = json.loads(cli(data, "tenant", "list", "--json").stdout)
        assert {t["tenant"]: t["realm"] for t in tenants} == {
            "acme": "acme.example",
            "default": "pbxwarden",
        }
        time.sleep(2)  # the server re-reads tenants and extensions every second
        acme = SipClient((pbx.host, pbx.port), domain="acme.example")
        default = SipClient((pbx.host, pbx.port))
        try:
            challenge = parse_message(acme.request("1000"))
            assert 'realm="acme.example"' in (challenge.headers.get("WWW-Authenticate") or "")
            ok = parse_message(acme.register("1000", "Acme-Passw0rd-1"))
            assert isinstance(ok, Response) and ok.status == 200
            # The default tenant's 1000 has another password; each realm checks its own.
            wrong = parse_message(acme.register("1000", "Default-Passw0rd"))
            assert isinstance(wrong, Response) and wrong.status == 403
            ok2 = parse_message(default.register("1000", "Default-Passw0rd"))
            assert isinstance(ok2, Response) and ok2.status == 200
        finally:
            acme.close()
            default.close()
    finally:
        pbx.stop()


def test_extension_password_rotation_and_suspension(tmp_path: Path) -> None:
    data = tmp_path / "d"
    cli(data, "init")
    weak = cli(data, "extension", "add", "1000", "--password", "password1234", check=False)
    assert weak.returncode == 1 and "too weak" in weak.stderr
    assert "Traceback" not in weak.stderr and len(weak.stderr.strip().splitlines()) == 1
    cli(data, "extension", "add", "1000", "--password", "Harbor-lantern-4417")
    weak = cli(data, "extension", "password", "1000", "--password", "password1234", check=False)
    assert weak.returncode == 1 and "too weak" in weak.stderr
    users = tmp_path / "users.csv"
    users.write_text("1001,Quiet-Harbor-5512\n1002,password1234\n")
    weak = cli(data, "extension", "import", str(users), check=False)
    assert weak.returncode == 1 and "nothing imported" in weak.stderr and "too weak" in weak.stderr
    assert [r["number"] for r in json.loads(cli(data, "extension", "list", "--json").stdout)] == [
        "1000"
    ]
    out = cli(data, "extension", "password", "1000").stdout
    new = out.split("password:")[1].split()[0]
    assert len(new) >= 20 and new.encode() not in (data / "pbxwarden.db").read_bytes()
    short = cli(data, "extension", "password", "1000", "--password", "short", check=False)
    assert short.returncode == 1 and "at least 12" in short.stderr
    missing = cli(data, "extension", "password", "1999", check=False)
    assert missing.returncode == 1 and "no extension 1999" in missing.stderr
    assert "suspended" in cli(data, "extension", "suspend", "1000", "--reason", "test").stdout
    assert "already" in cli(data, "extension", "suspend", "1000").stdout
    [row] = json.loads(cli(data, "extension", "list", "--json").stdout)
    assert row["suspended"] == "test"
    assert "resumed" in cli(data, "extension", "resume", "1000").stdout
    assert "not suspended" in cli(data, "extension", "resume", "1000").stdout


def test_tenant_policy_set_show_reset(tmp_path: Path) -> None:
    data = tmp_path / "d"
    cli(data, "init")
    shown = json.loads(cli(data, "tenant", "policy", "default", "--json").stdout)
    assert shown["allow_countries"] == [] and shown["allow_special"] == []
    cli(data, "tenant", "policy", "default", "--set", 'allow_countries=["DE"]')
    cli(data, "tenant", "policy", "default", "--set", "spend_per_day=50")  # keeps DE
    shown = json.loads(cli(data, "tenant", "policy", "default", "--json").stdout)
    assert (shown["allow_countries"], shown["spend_per_day"]) == (["DE"], 50.0)
    bad = cli(data, "tenant", "policy", "default", "--set", "calls_per_hour=-3", check=False)
    assert bad.returncode == 1 and "calls_per_hour: Input should be greater" in bad.stderr
    unknown = cli(data, "tenant", "policy", "default", "--set", "colour=red", check=False)
    assert unknown.returncode == 1 and "colour: Extra inputs are not permitted" in unknown.stderr
    kept = json.loads(cli(data, "tenant", "policy", "default", "--json").stdout)
    assert kept == shown  # nothing stored is lost by bad input
    assert "removed" in cli(data, "tenant", "policy", "default", "--reset").stdout
    shown = json.loads(cli(data, "tenant", "policy", "default", "--json").stdout)
    assert shown["allow_countries"] == []
    missing = cli(data, "tenant", "policy", "nope", check=False)
    assert missing.returncode == 1 and "unknown tenant" in missing.stderr
