"""``pbxwarden admin ...`` and ``pbxwarden audit-log``: admin accounts, TOTP, API tokens.

The first admin can only be made here (the API needs an admin to make one). Secrets
are printed once and never stored: passwords as argon2 hashes, tokens as SHA-256.
Every change is written to the audit log (:mod:`pbxwarden.cli.audit_trail`).

Self-contained on purpose: ``pbxwarden.cli.main`` imports this module, so importing it
back would be circular; the data directory comes from the root command's options. The
store and the configuration are imported when a command runs (``--help`` stays fast).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pbxwarden.cli.audit_trail import record
from pbxwarden.cli.output import database_failure, err, fail, out, print_rows, when
from pbxwarden.store.basics import StoreError, generate_password

if TYPE_CHECKING:
    from pbxwarden.config import Config
    from pbxwarden.store.admin import AdminStore
    from pbxwarden.store.db import Store

admin_app = typer.Typer(no_args_is_help=True, help="Admin accounts and API tokens (admin API).")


def _data_dir(ctx: typer.Context) -> Path:
    value = ctx.find_root().params.get("data_dir")
    if value is None:
        value = os.environ.get("PBXWARDEN_DATA_DIR", "pbxwarden-data")
    return Path(value)


def _open(ctx: typer.Context) -> tuple[Config, Store, AdminStore]:
    from pbxwarden.config import CONFIG_FILE, ConfigError, load_config
    from pbxwarden.store.admin import AdminStore
    from pbxwarden.store.db import Store

    data_dir = _data_dir(ctx)
    if not (data_dir / CONFIG_FILE).exists():
        raise fail(
            f"{data_dir} is not initialised: run 'pbxwarden --data-dir {data_dir} init' first"
        )
    try:
        config = load_config(data_dir)
    except ConfigError as exc:
        raise fail(str(exc)) from None
    store = Store(config.database_url(data_dir))
    try:
        store.migrate()
    except Exception as exc:
        store.close()
        raise fail(database_failure(exc)) from None
    return config, store, AdminStore(store)


def _read_password(username: str, given: str | None) -> tuple[str, bool]:
    """(password, generated). ``-`` reads one line from stdin (keeps it out of ps and
    the shell history); omitted: prompt on a terminal, else generate."""
    if given == "-":
        return sys.stdin.readline().rstrip("\r\n"), False
    if given is not None:
        return given, False
    if sys.stdin.isatty():
        typed = typer.prompt(
            f"password for {username} (empty: generate one)",
            default="",
            show_default=False,
            hide_input=True,
        )
        if typed:
            again = typer.prompt("again", hide_input=True)
            if again != typed:
                raise fail("the passwords differ")
            return typed, False
    return generate_password(), True


@admin_app.command("add")
def admin_add(
    ctx: typer.Context,
    username: str,
    tenant: Annotated[
        str | None, typer.Option(help="Bind the admin to this tenant (sees only it).")
    ] = None,
    role: Annotated[str, typer.Option(help="admin, operator or read-only.")] = "admin",
    password: Annotated[
        str | None,
        typer.Option(help="Password ('-': read from stdin); omit to be asked or get one."),
    ] = None,
) -> None:
    """Add an admin. Weak passwords are refused (zxcvbn); only an argon2 hash is stored."""
    from pbxwarden.store.admin import ROLES

    if role not in ROLES:
        raise fail(f"invalid role {role!r}: {', '.join(ROLES)}")
    secret, generated = _read_password(username, password)
    _, store, admins = _open(ctx)
    try:
        info = admins.add_admin(username, secret, role, tenant)
        record(
            store,
            "admin.create",
            f"admin/{info.username}",
            None,
            {"username": info.username, "role": info.role, "tenant": info.tenant},
            info.tenant,
        )
    except StoreError as exc:
        raise fail(str(exc)) from None
    finally:
        store.close()
    scope = f"tenant {tenant}" if tenant else "all tenants"
    out.print(f"admin {info.username} added ({role}, {scope})")
    if generated:
        out.print(f"password: {secret}", highlight=False)
        err.print("this password is shown once and is not stored; keep it now")


@admin_app.command("list")
def admin_list(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output for scripts.")] = False,
) -> None:
    """List admins: role, tenant, whether TOTP is on, last login."""
    _, store, admins = _open(ctx)
    try:
        rows = admins.list_admins()
    finally:
        store.close()
    print_rows(rows, as_json, "admins")


@admin_app.command("totp")
def admin_totp(
    ctx: typer.Context,
    username: str,
    disable: Annotated[bool, typer.Option(help="Turn TOTP off instead.")] = False,
) -> None:
    """Require a TOTP code at login; prints the provisioning URI (for the app) once."""
    _, store, admins = _open(ctx)
    try:
        secret = admins.set_totp(username, not disable)
        record(
            store,
            "admin.totp",
            f"admin/{username.strip().lower()}",
            None,
            {"totp": not disable},
        )
    except StoreError as exc:
        raise fail(str(exc)) from None
    finally:
        store.close()
    if secret is None:
        out.print(f"TOTP disabled for {username}")
        return
    out.print(f"TOTP enabled for {username}; add it to an authenticator app now:")
    out.print(admins.provisioning_uri(username.strip().lower(), secret), highlight=False)
    err.print("this is shown once; sessions opened before are ended")


@admin_app.command("token")
def admin_token(
    ctx: typer.Context,
    username: str,
    scope: Annotated[str, typer.Option(help="read-only, operator or admin.")],
    name: Annotated[str, typer.Option(help="What the token is for.")] = "cli",
    expires_days: Annotated[
        float | None, typer.Option(help="Days until it expires (default: never).", min=0.001)
    ] = None,
    tenant: Annotated[str | None, typer.Option(help="Bind the token to this tenant.")] = None,
) -> None:
    """Create an API token owned by USERNAME; printed once, only its hash is stored."""
    from pbxwarden.store.admin import ROLES

    if scope not in ROLES:
        raise fail(f"invalid scope {scope!r}: {', '.join(ROLES)}")
    _, store, admins = _open(ctx)
    now = time.time()
    try:
        info, token = admins.create_token(
            username,
            name,
            scope,
            tenant,
            None if expires_days is None else now + expires_days * 86400,
            now,
        )
        record(store, "token.create", f"token/{info['id']}", None, info, info["tenant"])
    except StoreError as exc:
        raise fail(str(exc)) from None
    finally:
        store.close()
    out.print(f"token {info['id']} ({name}, {scope}) for {username}:")
    out.print(token, highlight=False)
    err.print("this token is shown once and is not stored; keep it now")


@admin_app.command("tokens")
def admin_tokens(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output for scripts.")] = False,
) -> None:
    """List API tokens (never the tokens themselves)."""
    _, store, admins = _open(ctx)
    try:
        rows = admins.list_tokens()
    finally:
        store.close()
    print_rows(rows, as_json, "tokens")


@admin_app.command("revoke")
def admin_revoke(ctx: typer.Context, token_id: int) -> None:
    """Revoke an API token for good (its id is in 'admin tokens')."""
    _, store, admins = _open(ctx)
    try:
        before = admins.revoke_token(token_id)
        record(
            store,
            "token.revoke",
            f"token/{token_id}",
            before,
            {**before, "revoked_at": time.time()},
            before["tenant"],
        )
    except StoreError as exc:
        raise fail(str(exc)) from None
    finally:
        store.close()
    out.print(f"token {token_id} revoked")


def audit_log(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output for scripts.")] = False,
    limit: Annotated[int, typer.Option(help="At most this many entries.", min=1)] = 100,
) -> None:
    """The audit log, newest first: who changed what, from where, before and after."""
    _, store, admins = _open(ctx)
    try:
        rows = admins.list_audit(limit=min(limit, 100_000))
    finally:
        store.close()
    if as_json:
        print_rows(rows, True, "audit log entries")
        return
    if not rows:
        out.print("no audit log entries")
        return
    out.print("audit log entries, newest first (times UTC):", highlight=False)
    for r in rows:  # one line each, like a log: the change is never cut short
        line = (
            f"{when(r['at'])} #{r['id']} {r['actor']} ({r['source']}) {r['action']} {r['resource']}"
        )
        change = _change(r)
        out.print(f"{line}: {change}" if change else line, markup=False, highlight=False)


def _change(row: dict[str, Any]) -> str:
    """What changed: ``key: old -> new``, ``key=value`` for something new, ``removed``
    (the JSON output has everything)."""
    before, after = row["before"], row["after"]
    if before is None and isinstance(after, dict):
        return ", ".join(f"{k}={v}" for k, v in sorted(after.items()) if v is not None)
    if after is None and before is not None:
        return "removed"
    before = before if isinstance(before, dict) else {}
    after = after if isinstance(after, dict) else {}
    keys = sorted(k for k in {*before, *after} if before.get(k) != after.get(k))
    return ", ".join(f"{k}: {before.get(k)} -> {after.get(k)}" for k in keys)
