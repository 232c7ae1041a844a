"""``pbxwarden audit``: every planted weakness is found, a hardened install has none.

The data directories are built with the real CLI in subprocesses, as an administrator
would; the audit command runs in-process, mounted like cli/main.py mounts it.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import inspect, select, text, update
from typer.testing import CliRunner

from pbxwarden import audit as audit_module
from pbxwarden.audit import Finding, extension_guesses, run_audit
from pbxwarden.cli import main as cli_main
from pbxwarden.cli.audit import audit
from pbxwarden.config import Config, load_config, load_or_create_secret
from pbxwarden.sip.digest import Algorithm, compute_ha1
from pbxwarden.store import db as store_db
from pbxwarden.store.admin import AdminStore
from pbxwarden.store.db import Store, password_fingerprint, password_fingerprint_key
from pbxwarden.store.models import Extension
from tests.helpers import cli

pytestmark = pytest.mark.timeout(120)

harness = typer.Typer()
harness.callback()(cli_main.main)
harness.command("audit")(audit)

ADMIN_PASSWORD = "quartz-violin-harbor-97"
SHARED = "blue-horse-staple-42"

PLANTED_TOML = """
[sip]
listen = "0.0.0.0:5060"

[http]
enabled = true
listen = "0.0.0.0:8080"
admin_networks = ["0.0.0.0/0"]

[firewall]
reject_banned = true
allow = ["0.0.0.0/0"]

[guard.tenants.acme]
allow_countries = ["GB", "DE"]
allow_special = ["premium-rate"]
allow_high_risk = true
allow_international_forwarding = true
spend_per_hour = 100000
spend_per_day = 100000
tenant_spend_per_day = 100000

[guard.tenants.acmee]
"""

HARDENED_TOML = """
[sip]
listen = "127.0.0.1:5060"
digest_algorithms = ["SHA-256", "MD5"]

[http]
enabled = true
listen = "127.0.0.1:8080"

[guard.tenants.acme]
allow_countries = ["GB"]

[alerts.webhook]
url = "https://hooks.example.com/pbxwarden"
secret = "a-long-random-shared-secret"
"""

PLANTED_IDS = {
    "sip-weak-password",
    "sip-password-reused",
    "extension-no-acl",
    "guard-costly-calls-uncapped",
    "guard-premium-rate-allowed",
    "guard-high-risk-allowed",
    "guard-policy-unknown-tenant",
    "forwarding-external",
    "admin-no-totp",
    "sip-no-tls",
    "http-api-exposed",
    "http-admin-networks-any",
    "firewall-allow-any",
    "firewall-reject-banned",
    "alerts-no-channel",
    "sip-digest-md5-only",
}


def run_audit_cli(data: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(harness, ["--data-dir", str(data), "audit", *args])
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def findings_of(data: Path, *args: str) -> tuple[int, list[dict[str, str]]]:
    code, out, _ = run_audit_cli(data, "--json", *args)
    return code, json.loads(out)


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("planted") / "d"
    cli(data, "init")
    (data / "pbxwarden.toml").write_text(PLANTED_TOML, encoding="utf-8")
    cli(data, "tenant", "add", "acme", "--realm", "sip.acme.example", "--country", "US")
    cli(data, "extension", "add", "1000")
    # guessable: refused today, but an install from before the strength check may hold it
    legacy = Store(load_config(data).database_url(data))
    try:
        _set_ha1(legacy, "1000", "pbxwarden", "password1234")
    finally:
        legacy.close()
    cli(data, "extension", "add", "1001", "--password", SHARED)
    cli(data, "extension", "add", "1002", "--password", SHARED)  # reused
    cli(data, "extension", "acl", "1000", "--allow", "192.0.2.0/24")
    cli(data, "extension", "acl", "1001", "--allow", "192.0.2.0/24")
    cli(data, "extension", "acl", "1002", "--allow", "192.0.2.0/24")
    cli(data, "extension", "add", "2000", "--tenant", "acme")  # strong, but no ACL
    cli(data, "forward", "set", "1001", "--always", "+12025550143")
    cli(data, "forward", "set", "2000", "--busy", "+442079460000", "--tenant", "acme")
    cli(data, "admin", "add", "root", "--password", ADMIN_PASSWORD)  # no TOTP
    return data


@pytest.fixture(scope="module")
def hardened(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("hardened") / "d"
    cli(data, "init")
    (data / "pbxwarden.toml").write_text(HARDENED_TOML, encoding="utf-8")
    cli(data, "tenant", "add", "acme", "--realm", "sip.acme.example", "--country", "US")
    cli(data, "extension", "add", "1000")
    cli(data, "extension", "add", "1001")
    csv_file = data.parent / "users.csv"
    csv_file.write_text(
        "".join(f"{n},{secrets.token_urlsafe(18)}\n" for n in ("2000", "2001")), encoding="utf-8"
    )
    cli(data, "extension", "import", str(csv_file), "--tenant", "acme")
    for number, tenant in (("1000", "default"), ("1001", "default"), ("2000", "acme")):
        cli(data, "extension", "acl", number, "--allow", "192.0.2.0/24", "--tenant", tenant)
    cli(data, "extension", "acl", "2001", "--allow", "2001:db8::/48", "--tenant", "acme")
    cli(data, "forward", "set", "1000", "--always", "1001")  # to an extension: free
    cli(data, "admin", "add", "alice", "--password", ADMIN_PASSWORD)
    cli(data, "admin", "totp", "alice")
    return data


def _ids(findings: list[dict[str, str]]) -> set[str]:
    return {f["id"] for f in findings}


def _one(findings: list[dict[str, str]], id_: str, subject: str) -> dict[str, str]:
    [found] = [f for f in findings if f["id"] == id_ and f["subject"] == subject]
    return found


def test_every_planted_weakness_is_found(planted: Path) -> None:
    code, findings = findings_of(planted)
    assert code == 2
    assert _ids(findings) >= PLANTED_IDS, PLANTED_IDS - _ids(findings)
    for f in findings:
        Finding.model_validate(f)
        assert f["problem"] and f["fix"]
    weak = [f for f in findings if f["id"] == "sip-weak-password"]
    assert [(f["tenant"], f["subject"], f["severity"]) for f in weak] == [
        ("default", "extension 1000", "critical")
    ]
    reused = _one(findings, "sip-password-reused", "extensions 1001, 1002")
    assert reused["severity"] == "high" and reused["tenant"] == "default"
    no_acl = [f["subject"] for f in findings if f["id"] == "extension-no-acl"]
    assert no_acl == ["extension 2000"]
    assert "extension acl 2000" in _one(findings, "extension-no-acl", "extension 2000")["fix"]
    uncapped = _one(findings, "guard-costly-calls-uncapped", "guard policy of tenant acme")
    assert uncapped["severity"] == "high" and "GB, DE" in uncapped["problem"]
    assert "[guard.tenants.acme]" in uncapped["fix"]
    assert not any(f["tenant"] == "default" and f["id"].startswith("guard-") for f in findings)
    national = _one(findings, "forwarding-external", "extension 1001")
    assert national["severity"] == "medium" and "+12025550143" in national["problem"]
    assert national["fix"].endswith("forward clear 1001 --kind always")
    abroad = _one(findings, "forwarding-external", "extension 2000")
    assert abroad["severity"] == "high" and "(GB)" in abroad["problem"]
    assert abroad["fix"].endswith("--kind busy --tenant acme")
    assert _one(findings, "admin-no-totp", "admin root")["severity"] == "high"
    assert _one(findings, "guard-policy-unknown-tenant", "[guard.tenants.acmee]")["tenant"] is None
    assert _one(findings, "http-admin-networks-any", "http.admin_networks")["severity"] == "high"
    severities = [audit_module.RANK[f["severity"]] for f in findings]
    assert severities == sorted(severities, reverse=True)


def test_no_password_or_fingerprint_is_ever_output(planted: Path) -> None:
    code, out, err = run_audit_cli(planted)
    code_json, out_json, _ = run_audit_cli(planted, "--json")
    assert code == code_json == 2
    store = Store(load_config(planted).database_url(planted))
    try:
        with store.engine.connect() as conn:
            rows = conn.execute(select(Extension.password_fingerprint, Extension.ha1_md5))
            secrets_in_db = [v for row in rows for v in row if v]
    finally:
        store.close()
    assert len(secrets_in_db) == 8  # four extensions, each with a fingerprint and an HA1
    for text_out in (out, err, out_json):
        for secret in ("password1234", SHARED, *secrets_in_db):
            assert secret not in text_out
    # the table: coloured severities, fixes folded rather than cut short
    assert "critical" in out and "forward clear" in out and "…" not in out
    assert "1 critical" in err


def test_fail_on_threshold(planted: Path, hardened: Path) -> None:
    assert findings_of(planted, "--fail-on", "critical")[0] == 2
    assert findings_of(hardened, "--fail-on", "low")[0] == 0
    code, _, err = run_audit_cli(planted, "--fail-on", "severe")
    assert code == 1 and "--fail-on" in err


def test_hardened_install_has_no_finding(hardened: Path) -> None:
    code, findings = findings_of(hardened)
    assert code == 0
    assert findings == []  # not even the low ones: SHA-256 is on, fingerprints everywhere
    code, out, _ = run_audit_cli(hardened)
    assert code == 0 and "no findings" in out


def test_not_initialised(tmp_path: Path) -> None:
    code, _, err = run_audit_cli(tmp_path / "nothing")
    assert code == 1 and "init" in err


# -- the logic, on a store -------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'a.db'}")
    s.migrate()
    s.ensure_tenant("default", "pbxwarden")
    s.add_tenant("acme", "sip.acme.example")
    try:
        yield s
    finally:
        s.close()


def _set_ha1(store: Store, number: str, realm: str, password: str) -> None:
    with store.engine.begin() as conn:
        conn.execute(
            update(Extension)
            .where(Extension.number == number)
            .values(ha1_md5=compute_ha1(number, realm, password, Algorithm.MD5))
        )


def test_guesses_made_from_the_number_are_found(store: Store) -> None:
    """Older installs (or other tools) may hold passwords the 12-character rule refuses."""
    store.add_extensions([("1000", "Good-Passw0rd-aaa"), ("1001", "Good-Passw0rd-bbb")])
    store.add_extensions([("2000", "Good-Passw0rd-ccc")], tenant="acme")
    assert not [f for f in run_audit(Config(), store, None) if f.id == "sip-weak-password"]
    _set_ha1(store, "1000", "pbxwarden", "10001000")
    _set_ha1(store, "1001", "pbxwarden", "password1001")
    _set_ha1(store, "2000", "sip.acme.example", "acme2000")
    weak = [(f.tenant, f.subject) for f in run_audit(Config(), store, None)]
    assert ("default", "extension 1000") in weak and ("default", "extension 1001") in weak
    assert ("acme", "extension 2000") in weak
    guesses = extension_guesses("1000", "default", "pbxwarden")
    assert {"1000", "10001000", "password1000", "1000123", "pbxwarden1000"} <= set(guesses)
    assert len(guesses) == len(set(guesses))


def test_reuse_across_tenants_is_server_wide(store: Store, tmp_path: Path) -> None:
    key = password_fingerprint_key(load_or_create_secret(tmp_path))
    store.add_extensions([("1000", SHARED)], fingerprint_key=key)
    store.add_extensions([("2000", SHARED)], tenant="acme", fingerprint_key=key)
    store.add_extensions([("1001", "Good-Passw0rd-bbb")])  # no fingerprint
    findings = run_audit(Config(), store, AdminStore(store), load_or_create_secret(tmp_path))
    [reused] = [f for f in findings if f.id == "sip-password-reused"]
    assert reused.tenant is None and reused.subject == "extensions acme/2000, default/1000"
    [unknown] = [f for f in findings if f.id == "sip-password-reuse-unknown"]
    assert unknown.tenant == "default" and unknown.subject == "extensions 1001"


def test_fingerprints_are_written_and_rotated(store: Store, tmp_path: Path) -> None:
    key = password_fingerprint_key(load_or_create_secret(tmp_path))
    assert key != load_or_create_secret(tmp_path)  # derived: never the nonce key itself
    store.add_extensions([("1000", SHARED)], fingerprint_key=key)

    def fingerprint() -> str | None:
        with store.engine.connect() as conn:
            value: str | None = conn.execute(
                select(Extension.password_fingerprint).where(Extension.number == "1000")
            ).scalar_one()
            return value

    assert fingerprint() == password_fingerprint(key, SHARED)
    admins = AdminStore(store)
    new = admins.rotate_extension_password("default", "1000", fingerprint_key=key)
    assert fingerprint() == password_fingerprint(key, new) != password_fingerprint(key, SHARED)
    admins.rotate_extension_password("default", "1000")  # without the key: never stale
    assert fingerprint() is None


def test_policy_overrides_and_spend_caps(store: Store) -> None:
    config = Config.model_validate(
        {
            "guard": {
                "default": {"allow_countries": ["GB"]},  # open, with the default caps: fine
                "tenants": {
                    "acme": {
                        "allow_countries": ["GB"],
                        "spend_per_day": 5000,  # the hourly cap still bounds a day: 480
                        "extensions": {
                            "2000": {"allow_special": ["premium-rate"]},
                            "2001": {"allow_special": ["premium-rate", "shared-cost"]},
                        },
                        "after_hours": {"spend_per_hour": 500},
                    }
                },
            }
        }
    )
    found = [(f.id, f.tenant, f.subject) for f in run_audit(config, store, None)]
    guard = [f for f in found if f[0].startswith("guard-")]
    assert sorted(guard) == [
        ("guard-costly-calls-uncapped", "acme", "guard policy of tenant acme after hours"),
        ("guard-premium-rate-allowed", "acme", "guard policy of tenant acme, extension 2000"),
        ("guard-premium-rate-allowed", "acme", "guard policy of tenant acme, extension 2001"),
    ]


def test_zero_spend_caps_are_closed_not_open(store: Store) -> None:
    """The guard refuses every costly call when a cap is 0: that is not a weakness."""
    caps = {"spend_per_hour": 0, "spend_per_day": 0, "tenant_spend_per_day": 0}
    config = Config.model_validate({"guard": {"default": {"allow_countries": ["GB"], **caps}}})
    assert not [f for f in run_audit(config, store, None) if f.id.startswith("guard-")]


def test_listeners(store: Store) -> None:
    def ids(**sections: dict[str, object]) -> set[str]:
        return {f.id for f in run_audit(Config.model_validate(sections), store, None)}

    assert "sip-no-tls" in ids(sip={"listen": "192.0.2.10:5060"})
    assert "sip-no-tls" not in ids(
        sip={
            "listen": "0.0.0.0:5060",
            "tls": {"listen": "0.0.0.0:5061", "cert_file": "c", "key_file": "k"},
        }
    )
    assert "sip-no-tls" not in ids(sip={"listen": "[::1]:5060"})
    assert "http-api-exposed" in ids(http={"enabled": True, "listen": "[::]:8080"})
    assert "http-api-exposed" not in ids(http={"enabled": False, "listen": "0.0.0.0:8080"})
    disabled = run_audit(Config.model_validate({"http": {"admin_networks": ["::/0"]}}), store, None)
    assert [f.severity for f in disabled if f.id == "http-admin-networks-any"] == ["low"]


# -- migration 0010 --------------------------------------------------------------------


def _alembic(store: Store, action: str, revision: str) -> None:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(Path(store_db.__file__).parent / "migrations"))
    with store.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        getattr(command, action)(cfg, revision)


def test_migration_0010_keeps_existing_extensions(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'old.db'}")
    try:
        _alembic(store, "upgrade", "0009")
        columns = {c["name"] for c in inspect(store.engine).get_columns("extensions")}
        assert "password_fingerprint" not in columns
        ha1 = compute_ha1("1000", "pbxwarden", "Good-Passw0rd-aaa", Algorithm.MD5)
        with store.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO tenants (id, name, realm, country, created_at) "
                    "VALUES (1, 'default', 'pbxwarden', 'US', 0)"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO extensions (tenant_id, number, realm, ha1_md5, ha1_sha256, "
                    "enabled, acl, noanswer_after, created_at, updated_at) VALUES "
                    "(1, '1000', 'pbxwarden', :md5, :sha, 1, '192.0.2.0/24', 20, 0, 0)"
                ),
                {"md5": ha1, "sha": "0" * 64},
            )
        store.migrate()  # what every command does at start: 0009 -> head
        [row] = store.list_extensions()
        assert row["number"] == "1000" and row["networks"] == "192.0.2.0/24"
        auth = store.extension_auth("pbxwarden", "1000")
        assert auth is not None and auth.ha1[Algorithm.MD5] == ha1
        [unknown] = [f for f in run_audit(Config(), store, None) if f.tenant == "default"]
        assert unknown.id == "sip-password-reuse-unknown"
        _alembic(store, "downgrade", "0009")
        with store.engine.connect() as conn:  # today's queries need today's schema
            assert list(conn.scalars(text("SELECT number FROM extensions"))) == ["1000"]
        _alembic(store, "upgrade", "head")
    finally:
        store.close()
