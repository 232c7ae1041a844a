"""``pbxwarden admin ...`` and ``pbxwarden audit-log`` as a user runs them (in-process,
mounted like cli/main.py mounts them, on a real data directory)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pyotp
import pytest
import typer
from typer.testing import CliRunner

from pbxwarden.cli import main as cli_main
from pbxwarden.cli.admin import admin_app, audit_log
from pbxwarden.cli.audit_trail import actor
from pbxwarden.config import load_config
from pbxwarden.store.admin import AdminStore
from pbxwarden.store.db import Store

pytestmark = pytest.mark.timeout(30)

harness = typer.Typer()
harness.callback()(cli_main.main)
harness.command("init")(cli_main.init)
harness.add_typer(admin_app, name="admin")
harness.command("audit-log")(audit_log)


def run(data: Path, *args: str, input: str | None = None, ok: bool = True) -> tuple[str, str]:
    result = CliRunner().invoke(harness, ["--data-dir", str(data), *args], input=input)
    if ok:
        assert result.exit_code == 0, (args, result.output, result.exception)
    else:
        assert result.exit_code != 0, (args, result.output)
    assert "Traceback" not in result.output
    return result.stdout, result.stderr


def open_store(data: Path) -> Store:
    return Store(load_config(data).database_url(data))


def db_bytes(data: Path) -> bytes:
    return b"".join(p.read_bytes() for p in data.glob("pbxwarden.db*") if p.is_file())


def test_admin_commands_end_to_end(tmp_path: Path) -> None:
    data = tmp_path / "d"
    _, err = run(data, "admin", "list", ok=False)
    assert "init" in err
    run(data, "init")

    _, err = run(data, "admin", "add", "weak", "--password", "password123", ok=False)
    assert "too weak" in err and "common" in err
    out, err = run(data, "admin", "add", "alice")
    password = out.split("password:")[1].split()[0]
    assert "shown once" in err
    run(data, "admin", "add", "bob", "--role", "read-only", "--tenant", "default", "--password",
        "-", input="velvet-orbit-canyon-19\n")  # fmt: skip
    _, err = run(data, "admin", "add", "carol", "--role", "boss", ok=False)
    assert "invalid role" in err

    listed = json.loads(run(data, "admin", "list", "--json")[0])
    assert [(a["username"], a["role"], a["tenant"]) for a in listed] == [
        ("alice", "admin", None),
        ("bob", "read-only", "default"),
    ]

    out, _ = run(data, "admin", "totp", "alice")
    uri = re.search(r"otpauth://\S+", out)
    assert uri is not None
    secret = pyotp.parse_uri(uri.group(0)).secret

    out, _ = run(data, "admin", "token", "alice", "--scope", "operator", "--name", "ci",
                 "--expires-days", "7")  # fmt: skip
    token = re.search(r"pbxw_\S+", out)
    assert token is not None
    _, err = run(data, "admin", "token", "bob", "--scope", "admin", ok=False)
    assert "above" in err

    store = open_store(data)
    try:
        admins = AdminStore(store)
        assert admins.verify_login("alice", password, None) is None  # TOTP is now required
        now = time.time()
        assert admins.verify_login("alice", password, pyotp.TOTP(secret).at(now), now)
        assert admins.verify_login("bob", "velvet-orbit-canyon-19", None) is not None
        info = admins.token_info(token.group(0), now)
        assert info is not None and info.scope == "operator" and info.name == "ci"
        assert info.expires_at is not None and info.expires_at > now + 6 * 86400
        token_id = info.id
    finally:
        store.close()

    tokens = json.loads(run(data, "admin", "tokens", "--json")[0])
    assert [t["name"] for t in tokens] == ["ci"] and "token" not in tokens[0]
    run(data, "admin", "revoke", str(token_id))
    _, err = run(data, "admin", "revoke", str(token_id), ok=False)
    assert "already revoked" in err

    entries = json.loads(run(data, "audit-log", "--json")[0])
    assert [e["action"] for e in entries] == [
        "token.revoke",
        "token.create",
        "admin.totp",
        "admin.create",
        "admin.create",
        "install.init",
    ]
    assert {e["actor"] for e in entries} == {actor()} and actor().startswith("cli:")
    assert {e["source"] for e in entries} == {"cli"}
    assert entries[0]["before"]["revoked_at"] is None and entries[0]["after"]["revoked_at"]
    human, _ = run(data, "audit-log", "--limit", "1")
    assert "audit log entries" in human and "cli" in human

    contents = db_bytes(data)
    for secret_text in (password, "velvet-orbit-canyon-19", token.group(0)):
        assert secret_text.encode() not in contents
