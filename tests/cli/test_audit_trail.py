"""Every change made from the command line is in the audit log, as API changes are:
who (``cli:<local user>``), from where (``cli``), what, before and after; never a secret."""

from __future__ import annotations

import json
import os
import pwd
import time
from pathlib import Path
from typing import Any

import pytest
import typer

from pbxwarden.cli.main import app
from pbxwarden.config import load_config
from pbxwarden.store.db import Store
from tests.helpers import cli

ME = f"cli:{pwd.getpwuid(os.getuid()).pw_name}"
SIP_PASSWORD = "Orbit-Velvet-Canyon-71"
TRUNK_PASSWORD = "carrier-Secret-99-xyz"
ADMIN_PASSWORD = "correct horse battery staple 42"

# Every command of the CLI is either a change (audited, exercised below) or only reads.
# A command added to the CLI must be put in one of the two, so that none is forgotten.
CHANGES = {
    "init",
    "extension add",
    "extension import",
    "extension password",
    "extension acl",
    "extension suspend",
    "extension resume",
    "extension approve",
    "tenant add",
    "tenant policy",
    "trunk add",
    "did add",
    "group set",
    "group remove",
    "hours set",
    "hours override",
    "hours remove",
    "forward set",
    "forward clear",
    "bans add",
    "bans remove",
    "alerts ack",
    "alerts resolve",
    "admin add",
    "admin totp",
    "admin token",
    "admin revoke",
    "extension unlock",  # audited in tests/integration/test_locks.py
    "extension trunk-access",
    "trunk emergency",
    "trunk identity",
    "trunk transfers",
    "extension caller-id",
    "registrations remove",
    "calls end",  # audited in tests/integration/test_lifecycle.py (needs a live call)
}
READ_ONLY = {
    "extension list",
    "extension networks",
    "registrations",
    "tenant list",
    "trunk list",
    "did list",
    "group list",
    "hours list",
    "forward list",
    "bans list",
    "alerts",
    "alerts list",
    "calls",
    "cdr",
    "stats",
    "cluster status",
    "admin list",
    "admin tokens",
    "audit-log",
    "audit",
    "simulate",
    "serve",  # changes what it serves, through the commands above
}


def command_paths(group: Any, prefix: str = "") -> set[str]:
    """Every command's words (``extension add``), from the command tree typer builds."""
    paths = set()
    for name, command in group.commands.items():
        path = f"{prefix}{name}"
        if hasattr(command, "commands"):
            if command.invoke_without_command:
                paths.add(path)  # "alerts", "calls" do something by themselves
            paths |= command_paths(command, f"{path} ")
        else:
            paths.add(path)
    return paths


def test_every_command_is_known_to_change_something_or_not() -> None:
    paths = command_paths(typer.main.get_command(app))
    assert paths - CHANGES - READ_ONLY == set(), "classify the new command (audit it?)"
    assert (CHANGES | READ_ONLY) - paths == set(), "a command was renamed or removed"


def audit_log(data: Path) -> list[dict[str, Any]]:
    return list(json.loads(cli(data, "audit-log", "--json", "--limit", "1000").stdout))


# some thirty CLI runs, each a process: on one loaded core they outlast the suite's 120 s
@pytest.mark.timeout(600)
def test_every_change_from_the_cli_is_audited_without_secrets(tmp_path: Path) -> None:
    data = tmp_path / "d"
    cli(data, "init")
    cli(data, "extension", "add", "1000", "--password", SIP_PASSWORD, "--name", "Front desk")
    generated = cli(data, "extension", "add", "2000").stdout.split("password:")[1].split()[0]
    users = tmp_path / "users.csv"
    users.write_text("3000,Import-Passw0rd-aa\n3001,Import-Passw0rd-bb\n")
    cli(data, "extension", "import", str(users))
    rotated = cli(data, "extension", "password", "2000").stdout.split("password:")[1].split()[0]
    cli(data, "extension", "acl", "1000", "--allow", "192.0.2.0/24")
    cli(data, "extension", "suspend", "1000", "--reason", "checking")
    cli(data, "extension", "resume", "1000")
    cli(data, "tenant", "add", "acme", "--realm", "acme.example", "--country", "DE")
    cli(data, "tenant", "policy", "default", "--set", 'allow_countries=["DE"]')
    cli(data, "tenant", "policy", "default", "--reset")
    cli(
        data,
        "trunk",
        "add",
        "carrier",
        "--host",
        "127.0.0.2",
        "--username",
        "pbx",
        "--password",
        "-",
        input_text=TRUNK_PASSWORD + "\n",
    )
    cli(data, "trunk", "emergency", "carrier")
    cli(data, "extension", "trunk-access", "1000", "--allow")
    cli(data, "did", "add", "2025550100", "--extension", "2000")
    cli(data, "group", "set", "600", "-m", "1000", "-m", "2000", "--strategy", "hunt")
    cli(data, "group", "remove", "600")
    cli(
        data,
        "hours",
        "set",
        "700",
        "--hours",
        "mon-fri 09:00-17:00",
        "--open",
        "1000",
        "--closed",
        "2000",
        "--holiday",
        "2026-12-25",
    )
    cli(data, "hours", "override", "700", "closed")
    cli(data, "hours", "remove", "700")
    cli(data, "trunk", "identity", "carrier", "--no-assert")
    cli(data, "trunk", "transfers", "carrier", "--accept")
    cli(data, "extension", "caller-id", "1000", "--number", "+12025550100", "--withhold")
    cli(data, "forward", "set", "1000", "--always", "2000")
    cli(data, "forward", "clear", "1000")
    cli(data, "bans", "add", "203.0.113.7", "--reason", "scanner")
    cli(data, "bans", "remove", "203.0.113.7")
    cli(data, "admin", "add", "alice", "--password", ADMIN_PASSWORD)
    totp = cli(data, "admin", "totp", "alice").stdout
    token_out = cli(data, "admin", "token", "alice", "--scope", "read-only").stdout
    token, token_id = token_out.split()[-1], token_out.split()[1]
    cli(data, "admin", "revoke", token_id)
    store = Store(load_config(data).database_url(data))
    try:  # what only the server produces: an alert, a network waiting for approval
        alert_id, _ = store.record_alert(
            {
                "tenant": "default",
                "extension": "1000",
                "severity": "critical",
                "rule": "test",
                "summary": "a test alert",
                "reasons": ["because"],
                "dedupe_key": "t",
                "at": time.time(),
            }
        )
        auth = store.extension_auth("pbxwarden", "1000")
        assert auth is not None
        store.record_network(auth.id, "198.51.100.0/24", time.time(), False)
    finally:
        store.close()
    cli(data, "extension", "approve", "1000", "198.51.100.0/24")
    cli(data, "alerts", "ack", str(alert_id))
    cli(data, "alerts", "resolve", str(alert_id), "--by", "bob")

    entries = list(reversed(audit_log(data)))
    assert {(e["actor"], e["source"]) for e in entries} == {(ME, "cli")}
    assert [(e["action"], e["resource"]) for e in entries] == [
        ("install.init", str(data)),
        ("extension.create", "tenant/default/extension/1000"),
        ("extension.create", "tenant/default/extension/2000"),
        ("extension.import", "tenant/default/extensions"),
        ("extension.password", "tenant/default/extension/2000"),
        ("extension.networks", "tenant/default/extension/1000"),
        ("extension.suspend", "tenant/default/extension/1000"),
        ("extension.resume", "tenant/default/extension/1000"),
        ("tenant.create", "tenant/acme"),
        ("policy.set", "tenant/default/policy"),
        ("policy.delete", "tenant/default/policy"),
        ("trunk.create", "tenant/default/trunk/carrier"),
        ("trunk.emergency", "tenant/default/trunk/carrier"),
        ("extension.trunk_access", "tenant/default/extension/1000"),
        ("did.create", "tenant/default/did/+12025550100"),
        ("group.create", "tenant/default/group/600"),
        ("group.delete", "tenant/default/group/600"),
        ("hours.create", "tenant/default/hours/700"),
        ("hours.override", "tenant/default/hours/700"),
        ("hours.delete", "tenant/default/hours/700"),
        ("trunk.identity", "tenant/default/trunk/carrier"),
        ("trunk.transfers", "tenant/default/trunk/carrier"),
        ("extension.caller_id", "tenant/default/extension/1000"),
        ("forwarding.set", "tenant/default/extension/1000/always"),
        ("forwarding.clear", "tenant/default/extension/1000/all"),
        ("ban.add", "ban/203.0.113.7"),
        ("ban.remove", "ban/203.0.113.7"),
        ("admin.create", "admin/alice"),
        ("admin.totp", "admin/alice"),
        ("token.create", f"token/{token_id}"),
        ("token.revoke", f"token/{token_id}"),
        ("extension.approve_network", "tenant/default/extension/1000"),
        ("alert.ack", f"alert/{alert_id}"),
        ("alert.resolve", f"alert/{alert_id}"),
    ]
    by_action = {e["action"]: e for e in entries}
    assert by_action["extension.create"]["tenant"] == "default"
    assert by_action["extension.import"]["after"]["numbers"] == ["3000", "3001"]
    assert by_action["extension.networks"]["before"] == {"networks": None}
    assert by_action["extension.networks"]["after"] == {"networks": "192.0.2.0/24"}
    assert by_action["extension.suspend"]["after"] == {"suspended": "checking"}
    assert by_action["extension.resume"]["before"] == {"suspended": "checking"}
    assert by_action["tenant.create"]["after"]["country"] == "DE"
    assert by_action["policy.set"]["before"]["allow_countries"] == []
    assert by_action["policy.set"]["after"]["allow_countries"] == ["DE"]
    assert by_action["policy.delete"]["before"]["allow_countries"] == ["DE"]
    assert by_action["trunk.create"]["after"]["host"] == "127.0.0.2"
    assert by_action["group.create"]["after"]["members"] == ["1000", "2000"]
    assert by_action["hours.override"]["after"]["override"] == "closed"
    assert by_action["forwarding.set"]["after"]["always"] == "2000"
    assert by_action["forwarding.clear"]["before"]["always"] == "2000"
    assert by_action["ban.add"]["after"]["reason"] == "scanner"
    assert by_action["ban.remove"]["before"]["address"] == "203.0.113.7"
    assert by_action["alert.ack"]["after"] == {"status": "acknowledged"}
    assert by_action["alert.resolve"]["before"] == {"status": "acknowledged"}

    # Nothing secret in the log, in any form the commands were given or printed it.
    dump = json.dumps(entries) + cli(data, "audit-log").stdout
    totp_secret = totp.split("secret=")[1].split("&")[0]
    for secret in (
        SIP_PASSWORD,
        generated,
        rotated,
        "Import-Passw0rd-aa",
        TRUNK_PASSWORD,
        ADMIN_PASSWORD,
        token,
        totp_secret,
    ):
        assert secret not in dump


def test_a_refused_change_is_not_recorded(tmp_path: Path) -> None:
    data = tmp_path / "d"
    cli(data, "init")
    before = audit_log(data)
    for args in (
        ("extension", "add", "1000", "--password", "short"),
        ("tenant", "add", "acme", "--realm", "acme.example", "--country", "XX"),
        ("forward", "set", "1999", "--always", "2000"),
        ("bans", "remove", "203.0.113.9"),
        ("alerts", "ack", "42"),
    ):
        assert cli(data, *args, check=False).returncode == 1, args
    assert audit_log(data) == before
