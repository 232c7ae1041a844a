"""The ``pbxwarden`` command line.

Errors the user can fix (bad config, duplicate extension, weak password) are one
line on stderr and a non-zero exit, never a traceback.

It answers at once: at module level only typer, rich and the standard library are
imported; each command imports what it needs (the configuration, SQLAlchemy, the
guard) when it runs. ``tests/cli/test_startup.py`` checks that ``--help`` stays so.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.table import Table

from pbxwarden.cli.admin import admin_app, audit_log
from pbxwarden.cli.audit import audit
from pbxwarden.cli.audit_trail import actor, record
from pbxwarden.cli.caller_id import extension_caller_id, trunk_identity
from pbxwarden.cli.cluster import cluster_app
from pbxwarden.cli.groups import group_app
from pbxwarden.cli.hours import hours_app
from pbxwarden.cli.locks import extension_trunk_access, extension_unlock
from pbxwarden.cli.output import database_failure, err, fail, out, print_rows, when
from pbxwarden.cli.trunk_settings import trunk_transfers
from pbxwarden.runtime import install_fast_loop as _install_fast_loop
from pbxwarden.runtime import pause_gc as _pause_gc
from pbxwarden.runtime import setup_logging as _setup_logging
from pbxwarden.runtime import tune_gc as _tune_gc
from pbxwarden.store.basics import (
    DEFAULT_TENANT,
    StoreError,
    generate_password,
    password_fingerprint_key,
)

if TYPE_CHECKING:
    from pbxwarden.config import Config
    from pbxwarden.store.db import Store

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="pbxwarden: a virtual PBX that is secure by default against toll fraud.",
)
extension_app = typer.Typer(no_args_is_help=True, help="Manage extensions (SIP accounts).")
app.add_typer(extension_app, name="extension")
extension_app.command("unlock")(extension_unlock)
extension_app.command("trunk-access")(extension_trunk_access)
tenant_app = typer.Typer(no_args_is_help=True, help="Manage tenants (companies on this PBX).")
app.add_typer(tenant_app, name="tenant")
trunk_app = typer.Typer(no_args_is_help=True, help="SIP trunks to carriers.")
app.add_typer(trunk_app, name="trunk")
extension_app.command("caller-id")(extension_caller_id)
trunk_app.command("identity")(trunk_identity)
trunk_app.command("transfers")(trunk_transfers)
did_app = typer.Typer(no_args_is_help=True, help="Inbound numbers (DIDs) and where they ring.")
app.add_typer(did_app, name="did")
app.add_typer(group_app, name="group")
app.add_typer(hours_app, name="hours")
forward_app = typer.Typer(no_args_is_help=True, help="Call forwarding (diversions).")
app.add_typer(forward_app, name="forward")
calls_app = typer.Typer(help="Live calls on the running server.", invoke_without_command=True)
app.add_typer(calls_app, name="calls")
registrations_app = typer.Typer(
    help="Registered phones of every extension, and removing one.", invoke_without_command=True
)
app.add_typer(registrations_app, name="registrations")
bans_app = typer.Typer(no_args_is_help=True, help="SIP firewall bans (a running server follows).")
app.add_typer(bans_app, name="bans")
app.add_typer(admin_app, name="admin")
app.command("audit-log")(audit_log)
app.command("audit")(audit)
alerts_app = typer.Typer(
    help="Fraud guard and firewall alerts: list, acknowledge, resolve.",
    invoke_without_command=True,
)
app.add_typer(alerts_app, name="alerts")
app.add_typer(cluster_app, name="cluster")

T = TypeVar("T")


class State:
    data_dir: Path = Path("pbxwarden-data")


state = State()


def _version(value: bool) -> None:
    if value:
        from pbxwarden import __version__

        out.print(f"pbxwarden {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def main(
    data_dir: Annotated[
        Path,
        typer.Option(
            "--data-dir",
            envvar="PBXWARDEN_DATA_DIR",
            help="Where the configuration, database and secrets live.",
        ),
    ] = Path("pbxwarden-data"),
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    state.data_dir = data_dir


def _config() -> Config:
    from pbxwarden.config import CONFIG_FILE, ConfigError, load_config

    if not (state.data_dir / CONFIG_FILE).exists():
        raise fail(
            f"{state.data_dir} is not initialised: run 'pbxwarden --data-dir "
            f"{state.data_dir} init' first"
        )
    try:
        return load_config(state.data_dir)
    except ConfigError as exc:
        raise fail(str(exc)) from None


def _in_store(action: Callable[[Store], T]) -> T:
    """Run one store action for a command: a StoreError is the user's error message."""
    store = _store(_config())
    try:
        return action(store)
    except StoreError as exc:
        raise fail(str(exc)) from None
    finally:
        store.close()


def _store(config: Config) -> Store:
    from pbxwarden.store.db import Store

    store = Store(config.database_url(state.data_dir))
    try:
        store.migrate()
    except Exception as exc:
        raise fail(database_failure(exc)) from None
    return store


@app.command()
def init() -> None:
    """Create the data directory, configuration, secrets and database (safe to re-run)."""
    from pbxwarden.config import (
        CONFIG_FILE,
        DEFAULT_CONFIG_TEXT,
        ConfigError,
        load_or_create_secret,
    )

    data_dir = state.data_dir
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        cfg_path = data_dir / CONFIG_FILE
        created = not cfg_path.exists()
        if created:
            cfg_path.write_text(DEFAULT_CONFIG_TEXT, encoding="utf-8")
        load_or_create_secret(data_dir)
    except (OSError, ConfigError) as exc:
        raise fail(f"cannot initialise {data_dir}: {exc}") from None
    config = _config()
    store = _store(config)
    try:
        store.ensure_tenant(DEFAULT_TENANT, config.sip.realm)
        if created:
            record(store, "install.init", str(data_dir), None, {"realm": config.sip.realm})
    except StoreError as exc:
        raise fail(str(exc)) from None
    finally:
        store.close()
    out.print(
        f"initialised {data_dir} (realm {config.sip.realm!r}, "
        f"database {config.database_url(data_dir).split('://')[0]})"
    )


def _fingerprint_key() -> bytes:
    """Key of the password fingerprints that let ``pbxwarden audit`` see reuse."""
    from pbxwarden.config import ConfigError, load_or_create_secret

    try:
        return password_fingerprint_key(load_or_create_secret(state.data_dir))
    except (OSError, ConfigError) as exc:
        raise fail(f"cannot read the install secret: {exc}") from None


@extension_app.command("add")
def extension_add(
    number: str,
    password: Annotated[
        str | None, typer.Option(help="SIP password; omit to generate a strong one (printed once).")
    ] = None,
    tenant: Annotated[str, typer.Option(help="Tenant the extension belongs to.")] = DEFAULT_TENANT,
    name: Annotated[str | None, typer.Option(help="Display name.")] = None,
) -> None:
    """Add an extension. Only digest hashes of the password are stored."""
    config = _config()
    key = _fingerprint_key()
    store = _store(config)
    generated = password is None
    secret = generate_password() if password is None else password
    try:
        store.add_extensions(
            [(number, secret)], tenant=tenant, display_name=name, fingerprint_key=key
        )
        after = {"tenant": tenant, "number": number, "display_name": name}
        record(
            store, "extension.create", f"tenant/{tenant}/extension/{number}", None, after, tenant
        )
    except StoreError as exc:
        raise fail(str(exc)) from None
    finally:
        store.close()
    out.print(f"extension {number} added to tenant {tenant}")
    if generated:
        out.print(f"password: {secret}", highlight=False)
        err.print("this password is shown once and is not stored; keep it now")


@extension_app.command("import")
def extension_import(
    file: Annotated[Path, typer.Argument(help="CSV file with lines 'number,password'.")],
    tenant: Annotated[str, typer.Option(help="Tenant the extensions belong to.")] = DEFAULT_TENANT,
) -> None:
    """Add many extensions from a CSV file, all or none; an error names its line."""
    from pbxwarden.cli.importing import ImportProblem, check_rows, read_rows

    config = _config()
    try:
        rows = read_rows(file)
    except ImportProblem as exc:
        raise fail(f"nothing imported: {exc}") from None
    key = _fingerprint_key()
    store = _store(config)
    try:
        existing = {e["number"] for e in store.list_extensions(tenant)}
        check_rows(file.name, rows, existing)
        count = store.add_extensions([(n, pw) for _, n, pw in rows], tenant, None, key)
        numbers = [n for _, n, _ in rows]
        record(
            store,
            "extension.import",
            f"tenant/{tenant}/extensions",
            None,
            {"tenant": tenant, "file": str(file), "count": count, "numbers": numbers},
            tenant,
        )
    except (ImportProblem, StoreError) as exc:
        raise fail(f"nothing imported: {exc}") from None
    finally:
        store.close()
    out.print(f"imported {count} extensions into tenant {tenant}")


@tenant_app.command("add")
def tenant_add(
    name: str,
    realm: Annotated[str, typer.Option(help="The tenant's SIP domain; also its digest realm.")],
    country: Annotated[str, typer.Option(help="Home country, ISO 3166 alpha-2.")] = "US",
) -> None:
    """Add a tenant. Its phones register to its SIP domain (the realm)."""
    country = country.strip().upper()
    store = _store(_config())
    try:
        store.add_tenant(name, realm, country)
        after = {"tenant": name, "realm": realm, "country": country, "extensions": 0}
        record(store, "tenant.create", f"tenant/{name}", None, after, name)
    except StoreError as exc:
        raise fail(str(exc)) from None
    finally:
        store.close()
    out.print(f"tenant {name} added (realm {realm}, country {country})")


@tenant_app.command("policy")
def tenant_policy(
    tenant: str,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="KEY=VALUE (JSON values: --set 'allow_countries=[\"DE\"]' --set "
            "spend_per_day=50); repeat. Starts from the policy in force.",
        ),
    ] = None,
    reset: Annotated[bool, typer.Option(help="Forget the stored policy (the file's applies).")] = (
        False
    ),
    as_json: Annotated[bool, typer.Option("--json", help="JSON output for scripts.")] = False,
) -> None:
    """Show a tenant's fraud-guard policy, or change it (a running server follows)."""
    from pydantic import ValidationError

    from pbxwarden.guard.policy import TenantPolicy, with_stored

    config = _config()
    resource = f"tenant/{tenant}/policy"

    def in_force() -> TenantPolicy:
        stored = _in_store(lambda store: (store.tenant_realm(tenant), store.policies())[1])
        return with_stored(config.guard, stored).for_tenant(tenant)

    if reset:
        before = in_force().model_dump()

        def forget(store: Store) -> bool:
            changed = store.delete_policy(tenant)
            if changed:
                record(store, "policy.delete", resource, before, None, tenant)
            return changed

        changed = _in_store(forget)
        out.print("stored policy removed" if changed else "no stored policy")
    current = in_force()
    if set_:
        update: dict[str, Any] = current.model_dump(exclude_defaults=True)
        for item in set_:
            key, sep, raw = item.partition("=")
            if not sep or not key.strip():
                raise fail(f"--set {item!r}: expected KEY=VALUE")
            try:
                update[key.strip()] = json.loads(raw)
            except ValueError:
                update[key.strip()] = raw  # a bare string, e.g. timezone=Europe/Madrid
        try:
            current = TenantPolicy.model_validate(update)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            raise fail(f"invalid policy: {problems}") from None
        policy = current.model_dump(exclude_defaults=True)
        before = in_force().model_dump()

        def store_policy(store: Store) -> None:
            store.set_policy(tenant, policy, actor())
            record(store, "policy.set", resource, before, current.model_dump(), tenant)

        _in_store(store_policy)
        out.print(f"policy of tenant {tenant} updated")
    data = current.model_dump(mode="json")
    if as_json:
        out.print_json(json.dumps(data))
        return
    table = Table(title=f"guard policy of {tenant}")
    table.add_column("key")
    table.add_column("value")
    for key, value in data.items():
        table.add_row(key, json.dumps(value))
    out.print(table)


@tenant_app.command("list")
def tenant_list(
    as_json: Annotated[bool, typer.Option("--json", help="JSON output for scripts.")] = False,
) -> None:
    """List tenants with their realm, country and number of extensions."""
    store = _store(_config())
    try:
        print_rows(store.list_tenants(), as_json, "tenants")
    finally:
        store.close()


@extension_app.command("acl")
def extension_acl(
    number: str,
    allow: Annotated[
        list[str] | None,
        typer.Option(help="Network (CIDR) the phone may register from; repeat for several."),
    ] = None,
    clear: Annotated[bool, typer.Option(help="Allow any network again.")] = False,
    tenant: Annotated[str, typer.Option(help="Tenant of the extension.")] = DEFAULT_TENANT,
) -> None:
    """Restrict an extension to its networks: a desk phone registers only from the office."""
    if clear == bool(allow):
        raise fail("give --allow CIDR (one or more) or --clear")
    store = _store(_config())
    try:
        before = _extension(store, tenant, number).get("networks")
        networks = None if clear else ", ".join(allow or [])
        store.set_acl(tenant, number, networks)
        after = _extension(store, tenant, number).get("networks")
        resource = f"tenant/{tenant}/extension/{number}"
        record(
            store, "extension.networks", resource, {"networks": before}, {"networks": after}, tenant
        )
    except StoreError as exc:
        raise fail(str(exc)) from None
    finally:
        store.close()
    out.print(f"extension {number}: " + ("any network" if clear else ", ".join(allow or [])))


@extension_app.command("networks")
def extension_networks(
    pending: Annotated[bool, typer.Option(help="Only networks waiting for approval.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output for scripts.")] = False,
) -> None:
    """Networks (/24, /48) each extension registered from (registration watch)."""
    store = _store(_config())
    try:
        rows = [r for r in store.list_networks() if not pending or not r["approved"]]
    finally:
        store.close()
    print_rows(rows, as_json, "networks")


@extension_app.command("approve")
def extension_approve(
    number: str,
    network: str,
    tenant: Annotated[str, typer.Option(help="Tenant of the extension.")] = DEFAULT_TENANT,
) -> None:
    """Approve a network an extension tried to register from."""
    store = _store(_config())
    try:
        store.approve_network(tenant, number, network)
        resource = f"tenant/{tenant}/extension/{number}"
        after = {"network": network, "approved": True}
        record(store, "extension.approve_network", resource, None, after, tenant)
    except StoreError as exc:
        raise fail(str(exc)) from None
    finally:
        store.close()
    out.print(f"extension {number} may register from {network}")


@extension_app.command("list")
def extension_list(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output for scripts.")] = False,
) -> None:
    """List extensions and how many live registrations each has."""
    store = _store(_config())
    try:
        print_rows(store.list_extensions(tenant), as_json, "extensions")
    finally:
        store.close()


def _bindings() -> list[dict[str, Any]]:
    """Live bindings from the running server, else as last written to the database."""
    from pbxwarden.control import ControlError, ask

    try:
        rows: list[dict[str, Any]] = ask(state.data_dir, {"cmd": "registrations"}, timeout=2.0)[
            "registrations"
        ]
        return rows
    except ControlError:
        store = _store(_config())
        try:
            return store.list_bindings(time.time())
        finally:
            store.close()


@registrations_app.callback()
def registrations(
    ctx: typer.Context,
    number: Annotated[str | None, typer.Option("--extension", help="Only this extension.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output for scripts.")] = False,
    show_all: Annotated[
        bool, typer.Option("--all", help="Every column (expiry, contact...).")
    ] = False,
) -> None:
    """Registered phones, one row per binding: from where, over what, which phone, since
    when (--all: until when, the contact). `registrations remove` takes one away."""
    if ctx.invoked_subcommand is not None:
        return
    rows = [r for r in _bindings() if number is None or r["number"] == number]
    if as_json:
        print_rows(rows, True, "registrations")
        return
    short = [  # what an operator needs, in 80 columns; --all and --json have the rest
        {
            "ext": f"{r['number']}" + (f"@{r['tenant']}" if r["tenant"] != "default" else ""),
            "id": r["id"],
            "from": f"{r['transport'] or '?'} {r['address']}",
            "phone": (r["user_agent"] or "")[:20],
            "since": when(r["registered_at"], minutes=True),
        }
        for r in rows
    ]
    if show_all:
        print_rows(rows, False, "registrations")
    else:
        print_rows(short, False, "registrations", compact=True, keep=("ext", "id", "from"))


@registrations_app.command("remove")
def registrations_remove(
    number: Annotated[str, typer.Argument(help="The extension.")],
    binding: Annotated[str, typer.Argument(help="The registration's id (registrations list).")],
    tenant: Annotated[str, typer.Option(help="Tenant of the extension.")] = DEFAULT_TENANT,
) -> None:
    """Remove one registration: that phone gets no more calls until it registers again
    (a stolen password must be changed too, or it simply will)."""
    from pbxwarden.control import ControlError, ask

    request = {"cmd": "unregister", "tenant": tenant, "number": number, "id": binding}
    removed: dict[str, Any] | None = None
    try:
        removed = ask(state.data_dir, request, timeout=5.0)["removed"]
        assert removed is not None
        where = f"{removed.get('transport') or '?'} {removed.get('address')}"
    except ControlError as exc:
        if "no registration" in str(exc):
            raise fail(str(exc)) from None
        if not _in_store(lambda store: store.remove_binding(tenant, number, binding)):
            raise fail(
                f"extension {number} of tenant {tenant} has no registration {binding}"
            ) from None
        where = "the database (server not running)"
    resource = f"tenant/{tenant}/extension/{number}/registration/{binding}"
    before = removed or {"id": binding}
    _in_store(lambda store: record(store, "registration.remove", resource, before, None, tenant))
    out.print(f"extension {number}: registration {binding} removed ({where})")


@bans_app.command("list")
def bans_list(
    as_json: Annotated[bool, typer.Option("--json", help="JSON output for scripts.")] = False,
) -> None:
    """Active bans: address, reason, remaining time, and how many times it was banned."""
    store = _store(_config())
    now = time.time()
    try:
        rows = [
            {"address": a, "reason": r, "expires_in": int(u - now), "level": lv}
            for a, u, r, lv, _ in store.load_bans(now, now)
        ]
    finally:
        store.close()
    print_rows(sorted(rows, key=lambda r: str(r["address"])), as_json, "bans")


@bans_app.command("add")
def bans_add(
    address: str,
    duration: Annotated[float, typer.Option(help="Seconds.", min=1)] = 86400.0,
    reason: Annotated[str, typer.Option(help="Why, for the log and the list.")] = "manual ban",
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Ban even a trunk's carrier, loopback or your own address (not firewall.allow).",
        ),
    ] = False,
) -> None:
    """Ban an address now (the running server applies it within a second). Addresses
    the PBX depends on (trunks, loopback it listens on, yours) are refused unless --force."""
    import ipaddress

    from pbxwarden.control import ControlError, ask
    from pbxwarden.firewall.safety import ban_refusal, ssh_client_address

    try:
        address = str(ipaddress.ip_address(address))
    except ValueError:
        raise fail(f"not an IP address: {address!r}") from None
    config = _config()
    if any(
        ipaddress.ip_address(address) in ipaddress.ip_network(n, strict=False)
        for n in config.firewall.allow
    ):
        raise fail(f"{address} is in firewall.allow and would never be banned; remove it there")
    store = _store(config)
    now = time.time()
    try:
        from pbxwarden.config import parse_hostport

        listen = [config.sip.listen_address[0]]
        if config.sip.tls is not None:
            listen.append(parse_hostport(config.sip.tls.listen, 5061)[0])
        trunk_hosts = [t["host"] for t in store.list_trunks()]
        with contextlib.suppress(ControlError):  # a running server: its trunks' DNS addresses
            views = ask(state.data_dir, {"cmd": "stats"}, timeout=2.0).get("trunk_dns") or {}
            trunk_hosts += [a for view in views.values() for a in view.get("addresses", [])]
        why = ban_refusal(
            address,
            trunk_hosts=trunk_hosts,
            listen_hosts=listen,
            admin_address=ssh_client_address(dict(os.environ)),
        )
        if why is not None and not force:
            raise fail(f"not banned: {why} (--force to ban it all the same)")
        before = _ban(store, address)
        store.save_bans([(address, now + duration, reason[:255], 1, now)])
        record(store, "ban.add", f"ban/{address}", before, _ban(store, address))
    finally:
        store.close()
    _firewall_changed()
    out.print(f"banned {address} for {int(duration)} s")


@bans_app.command("remove")
def bans_remove(address: str) -> None:
    """Lift a ban (and forget it, so the next ban starts short again)."""
    import ipaddress

    try:
        address = str(ipaddress.ip_address(address))
    except ValueError:
        raise fail(f"not an IP address: {address!r}") from None
    store = _store(_config())
    try:
        before = _ban(store, address)
        removed = store.remove_ban(address)
        if removed:
            record(store, "ban.remove", f"ban/{address}", before, None)
    finally:
        store.close()
    if not removed:
        raise fail(f"{address} is not banned")
    _firewall_changed()
    out.print(f"unbanned {address}")


def _firewall_changed() -> None:
    """Tell a running server that bans were stored or lifted: it adopts them (and in a
    cluster shares them) at once rather than on its next round."""
    from pbxwarden.control import ControlError, ask

    with contextlib.suppress(ControlError):
        ask(state.data_dir, {"cmd": "firewall"}, timeout=2.0)


def _ban(store: Store, address: str) -> dict[str, Any] | None:
    """A ban as ``bans list`` shows it (what the audit log records before and after)."""
    now = time.time()
    for a, until, reason, level, _ in store.load_bans(now, now):
        if a == address:
            return {"address": a, "reason": reason, "expires_in": int(until - now), "level": level}
    return None


def _extension(store: Store, tenant: str, number: str) -> dict[str, Any]:
    """An extension as ``extension list`` shows it, or a StoreError naming it."""
    for row in store.list_extensions(tenant):
        if row["number"] == number:
            return row
    raise StoreError(f"no extension {number} in tenant {tenant}")


@trunk_app.command("add")
def trunk_add(
    name: str,
    host: Annotated[
        str,
        typer.Option(help="Carrier IP address or DNS name (calls from its addresses are inbound)."),
    ],
    port: Annotated[
        int | None, typer.Option(help="Carrier SIP port (default 5060; a name's from SRV).")
    ] = None,
    transport: Annotated[
        str | None, typer.Option(help="udp or tcp (default udp; a name's from NAPTR/SRV).")
    ] = None,
    prefix: Annotated[
        list[str] | None,
        typer.Option(help="E.164 prefix routed to this trunk (repeat; default: all)."),
    ] = None,
    tenant: Annotated[str, typer.Option(help="Tenant that owns the trunk.")] = DEFAULT_TENANT,
    username: Annotated[
        str | None, typer.Option(help="Digest user name the carrier gave you.")
    ] = None,
    password: Annotated[
        str | None,
        typer.Option(
            help="Digest password; '-' reads it from standard input (keeps it out of ps "
            "and shell history). Stored encrypted with the install secret."
        ),
    ] = None,
    realm: Annotated[
        str | None, typer.Option(help="The carrier's digest realm (informational).")
    ] = None,
    register: Annotated[
        bool, typer.Option("--register", help="Keep the PBX registered to the carrier.")
    ] = False,
    register_expires: Annotated[
        int | None, typer.Option(help="Registration lifetime to ask for, seconds (60-86400).")
    ] = None,
    emergency: Annotated[
        bool, typer.Option("--emergency", help="The tenant's emergency calls go out here.")
    ] = False,
    inbound_from: Annotated[
        list[str] | None,
        typer.Option(help="Network (CIDR) the carrier also calls from, beyond its DNS (repeat)."),
    ] = None,
) -> None:
    """Add a trunk: IP-authenticated, and with --username/--password also answering the
    carrier's digest challenges (and registering with --register). Calls still need the
    policy to allow them."""
    from pbxwarden.config import ConfigError, load_or_create_secret
    from pbxwarden.store.credentials import trunk_credential_key

    if password == "-":
        if sys.stdin.isatty():
            import getpass

            password = getpass.getpass("trunk password: ")
        else:
            password = sys.stdin.readline().rstrip("\r\n")
    key = None
    if password is not None:
        try:
            key = trunk_credential_key(load_or_create_secret(state.data_dir))
        except (OSError, ConfigError) as exc:
            raise fail(f"cannot read the install secret: {exc}") from None
    store = _store(_config())
    try:
        store.add_trunk(
            tenant,
            name,
            host,
            port,
            transport,
            prefix or ["+"],
            username=username,
            password=password,
            realm=realm,
            register=register,
            register_expires=register_expires,
            credential_key=key,
            emergency=emergency,
            inbound_from=inbound_from or (),
        )
        row = next(
            (r for r in store.list_trunks() if (r["tenant"], r["name"]) == (tenant, name)),
            {"tenant": tenant, "name": name, "host": host, "port": port},
        )
        record(store, "trunk.create", f"tenant/{tenant}/trunk/{name}", None, row, tenant)
    except StoreError as exc:
        raise fail(str(exc)) from None
    finally:
        store.close()
    auth = ""
    if username is not None:
        auth = f", digest user {username}" + (", registering" if register else "")
    where = f"{row['host']}:{row['port'] or 'SRV'}/{row['transport']}"
    out.print(f"trunk {name} added ({where}{auth})")


@trunk_app.command("emergency")
def trunk_emergency(
    name: str,
    off: Annotated[bool, typer.Option("--off", help="No longer the emergency trunk.")] = False,
    tenant: Annotated[str, typer.Option(help="Tenant that owns the trunk.")] = DEFAULT_TENANT,
) -> None:
    """Mark the trunk the tenant's emergency calls (911, 112, 999...) go out through.
    Without one they take the tenant's ordinary route to its own country."""

    def mark(store: Store) -> None:
        store.set_trunk_emergency(tenant, name, not off)
        resource = f"tenant/{tenant}/trunk/{name}"
        record(
            store, "trunk.emergency", resource, {"emergency": off}, {"emergency": not off}, tenant
        )

    _in_store(mark)
    out.print(f"trunk {name}: " + ("not for emergency calls" if off else "emergency calls go here"))


@trunk_app.command("list")
def trunk_list(
    as_json: Annotated[bool, typer.Option("--json", help="JSON output for scripts.")] = False,
) -> None:
    """List trunks: whether credentials are set (never the password) and, for registering
    trunks, the registration state of the running server; for trunks by DNS name, the
    addresses it resolves to now (asked of the running server)."""
    from pbxwarden.control import ControlError, ask
    from pbxwarden.pbx.locate import is_ip

    def registration_text(status: dict[str, Any] | None) -> str | None:
        """One table cell: ``registered (expires in 1800 s)``, ``failed: why (retry in 60 s)``."""
        if status is None:
            return None
        text = str(status.get("state", "?"))
        if "reason" in status:
            text += f": {status['reason']}"
        if "expires_in" in status:
            text += f" (expires in {status['expires_in']} s)"
        if "retry_in" in status:
            text += f" (retry in {status['retry_in']} s)"
        return text

    store = _store(_config())
    try:
        rows = store.list_trunks()
    finally:
        store.close()
    live: dict[str, Any] | None = None
    resolved: dict[str, Any] = {}
    named = [r for r in rows if not is_ip(r["host"])]
    if named or any(r["register"] for r in rows):
        try:
            answer = ask(state.data_dir, {"cmd": "stats"}, timeout=2.0)
        except ControlError:
            answer = None
        if answer is not None:
            live = answer.get("trunk_registrations") or {}
            resolved = answer.get("trunk_dns") or {}
    for row in rows:  # a DNS name: what it resolves to now, when the server runs
        view = None if is_ip(row["host"]) else resolved.get(f"{row['tenant']}/{row['name']}")
        addresses = [row["host"]] if is_ip(row["host"]) else view["addresses"] if view else None
        row["addresses"] = addresses if as_json or addresses is None else ", ".join(addresses)
        row["dns_error"] = view.get("error") if view else None
    for row in rows:
        status = None
        if row["register"]:
            status = (live or {}).get(f"{row['tenant']}/{row['name']}")
            if status is None:
                status = {"state": "server not running" if live is None else "not started"}
        if as_json:
            row["registration"] = status
        else:
            row["credentials"] = "yes" if row["credentials"] else "no"
            row["registration"] = registration_text(status)
    print_rows(rows, as_json, "trunks")


@did_app.command("add")
def did_add(
    number: str,
    extension: Annotated[str, typer.Option(help="Extension (or ring group) that rings.")],
    tenant: Annotated[str, typer.Option(help="Tenant that owns the number.")] = DEFAULT_TENANT,
) -> None:
    """Route an inbound number from the tenant's trunks to an extension or ring group."""

    def add(store: Store) -> str:
        e164 = store.add_did(number, tenant, extension)
        row = {"number": e164, "tenant": tenant, "extension": extension}
        record(store, "did.create", f"tenant/{tenant}/did/{e164}", None, row, tenant)
        return e164

    e164 = _in_store(add)
    out.print(f"DID {e164} rings extension {extension}")


@did_app.command("list")
def did_list(
    as_json: Annotated[bool, typer.Option("--json", help="JSON output for scripts.")] = False,
) -> None:
    """List DIDs."""
    store = _store(_config())
    try:
        print_rows(store.list_dids(), as_json, "DIDs")
    finally:
        store.close()


@forward_app.command("set")
def forward_set(
    extension: str,
    always: Annotated[str | None, typer.Option(help="Forward every call to NUMBER.")] = None,
    busy: Annotated[str | None, typer.Option(help="Forward when busy to NUMBER.")] = None,
    noanswer: Annotated[str | None, typer.Option(help="Forward when unanswered.")] = None,
    ring_time: Annotated[
        float | None,
        typer.Option(help="Seconds of ringing before --noanswer applies.", min=1, max=300),
    ] = None,
    tenant: Annotated[str, typer.Option(help="Tenant of the extension.")] = DEFAULT_TENANT,
) -> None:
    """Set forwarding. A target the extension may not call is refused, with the reason."""
    from pbxwarden.guard.engine import Guard
    from pbxwarden.guard.policy import with_stored
    from pbxwarden.pbx.forwarding import judge_target, normalise_target

    chosen = [
        (k, v)
        for k, v in (("always", always), ("busy", busy), ("noanswer", noanswer))
        if v is not None
    ]
    if len(chosen) != 1:
        raise fail("give exactly one of --always, --busy, --noanswer with a number")
    kind, target = chosen[0][0], normalise_target(chosen[0][1])  # "(202) 555-0143"
    config = _config()
    store = _store(config)
    try:
        if not store.extension_exists(tenant, extension):
            raise fail(f"no extension {extension} in tenant {tenant}")
        decision = judge_target(
            Guard(with_stored(config.guard, store.policies())),
            tenant,
            extension,
            target,
            store.tenant_country(tenant),
            store.is_internal_target(tenant, target),
            "cli",
            time.time(),
        )
        if not decision.allow:
            reason = "; ".join(decision.reasons)
            store.record_forwarding_refused(
                tenant, extension, kind, target, actor(), "cli", reason, time.time()
            )
            raise fail(f"forwarding refused: {reason}")
        old = store.set_forwarding(
            tenant, extension, kind, target, actor(), "cli", time.time(), ring_time
        )
        record(
            store,
            "forwarding.set",
            f"tenant/{tenant}/extension/{extension}/{kind}",
            {kind: old},
            {kind: target, "ring_time": ring_time},
            tenant,
        )
    except StoreError as exc:
        raise fail(str(exc)) from None
    finally:
        store.close()
    out.print(f"extension {extension}: forwarding {kind} {old or 'none'} -> {target}")


@forward_app.command("clear")
def forward_clear(
    extension: str,
    kind: Annotated[
        str | None, typer.Option(help="always, busy or noanswer; all kinds when omitted.")
    ] = None,
    tenant: Annotated[str, typer.Option(help="Tenant of the extension.")] = DEFAULT_TENANT,
) -> None:
    """Clear forwarding."""
    store = _store(_config())
    try:
        before: dict[str, str | None] = {}
        for k in [kind] if kind else ["always", "busy", "noanswer"]:
            before[k] = store.set_forwarding(
                tenant, extension, k, None, actor(), "cli", time.time()
            )
        resource = f"tenant/{tenant}/extension/{extension}/{kind or 'all'}"
        after = dict.fromkeys(before)
        record(store, "forwarding.clear", resource, before, after, tenant)
    except StoreError as exc:
        raise fail(str(exc)) from None
    finally:
        store.close()
    out.print(f"extension {extension}: forwarding cleared")


@forward_app.command("list")
def forward_list(
    history: Annotated[bool, typer.Option(help="Every change: who, from where, old, new.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output for scripts.")] = False,
) -> None:
    """Extensions with forwarding set, or the log of changes."""
    store = _store(_config())
    try:
        rows = store.forwarding_changes() if history else store.forwarding_table()
    finally:
        store.close()
    print_rows(rows, as_json, "forwarding changes" if history else "forwardings")


def _ask(request: dict[str, Any]) -> dict[str, Any]:
    from pbxwarden.control import ControlError, ask

    try:
        return ask(state.data_dir, request)
    except ControlError as exc:
        raise fail(str(exc)) from None


@calls_app.callback()
def calls_list(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output for scripts.")] = False,
) -> None:
    """List calls in progress (asks the running server; in a cluster, every node's)."""
    if ctx.invoked_subcommand is not None:
        return
    answer = _ask({"cmd": "calls"})
    rows = answer["calls"]
    columns = None
    if "scope" in answer:  # a cluster: the node of each call
        columns = ["call_id", "tenant", "caller", "callee", "state", "seconds", "node"]
        columns += ["node_state"] if any(r.get("node_state") != "up" for r in rows) else []
    print_rows(rows, as_json, "calls in progress", columns=columns)
    if answer.get("note"):
        err.print(f"note: {answer['note']}")


@app.command()
def stats(
    as_json: Annotated[bool, typer.Option("--json", help="JSON output for scripts.")] = False,
    show_all: Annotated[bool, typer.Option("--all", help="Every counter.")] = False,
) -> None:
    """Counters of the running server: messages, refusals, registrations, calls, bans."""
    from pbxwarden.cli.records import stats_all, stats_view

    answer = _ask({"cmd": "stats"})
    flat = {**answer["stats"], **{k: v for k, v in answer.items() if k != "stats"}}
    if as_json:
        out.print_json(json.dumps(flat))
    else:
        print_rows(stats_all(flat) if show_all else stats_view(flat), False, "stats", compact=True)


@calls_app.command("end")
def calls_end(call_id: str) -> None:
    """End a call in progress: both phones are hung up (BYE), or it stops ringing."""
    live = _ask({"cmd": "calls"}).get("calls", [])
    call = next((c for c in live if c.get("call_id") == call_id), None)
    request: dict[str, Any] = {"cmd": "end", "call_id": call_id}
    if call is not None and call.get("node") is not None:
        request["node"] = call["node"]  # a cluster: the node carrying it ends it
    answer = _ask(request)
    tenant = call.get("tenant") if call else None
    _in_store(lambda store: record(store, "call.end", f"call/{call_id}", call, None, tenant))
    node = answer.get("node")
    out.print(f"ended {call_id}" + (f" on node {node}" if isinstance(node, str) else ""))


@app.command()
def cdr(
    since: Annotated[float, typer.Option(help="Only calls started in the last SECONDS.")] = 0.0,
    limit: Annotated[int, typer.Option(help="At most this many records.", min=1)] = 1000,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output for scripts.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="CSV output for spreadsheets.")] = False,
    show_all: Annotated[
        bool, typer.Option("--all", help="Every column (reasons, E.164, trunk, cost...).")
    ] = False,
) -> None:
    """Call detail records: every attempt, answered, failed or blocked, with the reasons.

    Times are UTC (ISO 8601); --json keeps Unix times."""
    from pbxwarden.cli.records import CDR_COLUMNS, cdr_view, write_cdr_csv

    store = _store(_config())
    try:
        rows = store.list_cdrs(time.time() - since if since else 0.0, limit)
    finally:
        store.close()
    if as_csv:
        write_cdr_csv(rows, sys.stdout)
    elif as_json or show_all:
        print_rows(rows, as_json, "call records")
    else:
        keep = ("start", "from", "to", "result")
        print_rows(cdr_view(rows), False, "call records", CDR_COLUMNS, compact=True, keep=keep)


@app.command()
def serve(
    sip: Annotated[
        str | None,
        typer.Option(help="SIP listen address HOST:PORT (UDP and TCP); overrides the config."),
    ] = None,
    http: Annotated[
        str | None,
        typer.Option(help="Serve the admin API and /metrics on HOST:PORT; overrides the config."),
    ] = None,
) -> None:
    """Run the PBX until SIGINT or SIGTERM (calls in progress are hung up first).

    One server per data directory: a second one exits at once, changing nothing."""
    _pause_gc()  # until the start-up is over (_tune_gc, just before "ready")
    import asyncio

    from pbxwarden.config import ConfigError, parse_hostport
    from pbxwarden.lifecycle import AlreadyRunning, ListenError, PidLock

    config = _config()
    try:
        if sip is not None:
            parse_hostport(sip, 5060)
            config = config.model_copy(
                update={
                    "sip": config.sip.model_validate({**config.sip.model_dump(), "listen": sip})
                }
            )
        if http is not None:
            parse_hostport(http, 8080)
            config = config.model_copy(
                update={"http": config.http.model_copy(update={"listen": http, "enabled": True})}
            )
    except ValueError as exc:
        raise fail(f"bad listen address: {exc}".replace("\n", " ")) from None
    lock = PidLock(state.data_dir)
    try:
        lock.acquire()  # before anything is changed (migrations, open calls closed)
    except AlreadyRunning as exc:
        raise fail(f"{exc}: {state.data_dir} is in use by another pbxwarden serve") from None
    except OSError as exc:
        raise fail(f"cannot lock {lock.path}: {exc}") from None
    try:
        _setup_logging(config)
        store = _store(config)
        try:
            _install_fast_loop()
            asyncio.run(_serve(config, store))
        except ListenError as exc:
            raise fail(str(exc)) from None
        except OSError as exc:
            raise fail(f"cannot listen: {exc}") from None
        except ConfigError as exc:
            raise fail(str(exc)) from None
        finally:
            store.close()
    finally:
        lock.release()


async def _serve(config: Config, store: Store) -> None:
    import asyncio
    import signal

    from pbxwarden.config import load_or_create_secret, parse_hostport
    from pbxwarden.lifecycle import ListenError
    from pbxwarden.server import SipServer

    server = SipServer(config, store, state.data_dir)
    try:
        await server.start()
    except BaseException:
        await server.stop()  # what did start: workers, sockets, the CDR writer
        raise
    http = None
    if config.http.enabled:
        from pbxwarden.api import create_app
        from pbxwarden.api.serve import start_http
        from pbxwarden.server_metrics import SipCollector

        try:
            api = create_app(
                store,
                config,
                server.control,
                secret=load_or_create_secret(state.data_dir),
                events=server.events,
                live=server.control_async,
            )
            api.state.registry.register(SipCollector(server))
            host, port = parse_hostport(config.http.listen, 8080)
            try:
                http = await start_http(api, host, port)
            except OSError as exc:
                raise ListenError(host, port, "HTTP", exc) from None
        except BaseException:
            await server.stop()
            raise
    _tune_gc()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server.ready()
    print("pbxwarden ready", flush=True)
    await stop.wait()
    await server.end_calls()  # first, so that no call waits on the admin API's goodbyes
    server.events.close()  # live event streams end: the admin API need not wait for them
    if http is not None:
        await http.stop()
    await server.stop()


# -- suspension --------------------------------------------------------------------------


@extension_app.command("suspend")
def extension_suspend(
    number: str,
    reason: Annotated[str, typer.Option(help="Why (shown to whoever resumes it).")] = (
        "suspended by an administrator"
    ),
    tenant: Annotated[str, typer.Option(help="Tenant of the extension.")] = DEFAULT_TENANT,
) -> None:
    """Refuse every costly call of an extension (a running server follows within a second)."""

    def suspend(store: Store) -> bool:
        changed = store.suspend_extension(tenant, number, reason, by=actor())
        if changed:
            resource = f"tenant/{tenant}/extension/{number}"
            before, after = {"suspended": None}, {"suspended": reason}
            record(store, "extension.suspend", resource, before, after, tenant)
        return changed

    changed = _in_store(suspend)
    out.print(f"extension {number} suspended" if changed else f"{number} was already suspended")


@extension_app.command("password")
def extension_password(
    number: str,
    password: Annotated[
        str | None,
        typer.Option(help="The new password ('-': read from stdin); omit to generate one."),
    ] = None,
    tenant: Annotated[str, typer.Option(help="Tenant of the extension.")] = DEFAULT_TENANT,
) -> None:
    """Give an extension a new SIP password (after a suspected compromise, or a weak one)."""
    from pbxwarden.store.admin import AdminStore

    if password == "-":
        password = sys.stdin.readline().rstrip("\r\n")
    key = _fingerprint_key()

    def rotate(store: Store) -> str:
        new = AdminStore(store).rotate_extension_password(tenant, number, password, key)
        resource = f"tenant/{tenant}/extension/{number}"
        record(store, "extension.password", resource, None, {"password_rotated": True}, tenant)
        return new

    new = _in_store(rotate)
    if password is None:
        out.print(f"extension {number} password: {new}", highlight=False)
        err.print("shown once: only its digest hashes are stored")
    else:
        out.print(f"extension {number}: password changed")


@extension_app.command("resume")
def extension_resume(
    number: str,
    tenant: Annotated[str, typer.Option(help="Tenant of the extension.")] = DEFAULT_TENANT,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Resume although the guard suspended it for fraud and its SIP password has "
            "not changed since (recorded in the audit log with --reason).",
        ),
    ] = False,
    reason: Annotated[str | None, typer.Option(help="Why, for the audit log.")] = None,
) -> None:
    """Allow an extension's costly calls again. One the fraud guard suspended needs a new
    SIP password first (extension password), or the fraud simply starts again."""
    if force and not reason:
        raise fail("--force needs a --reason (it goes into the audit log)")

    def resume(store: Store) -> bool:
        before = _extension(store, tenant, number).get("suspended")
        changed = store.resume_extension(tenant, number, force=force)
        if changed:
            resource = f"tenant/{tenant}/extension/{number}"
            after: dict[str, Any] = {"suspended": None}
            if force:
                after.update(forced=True, reason=reason)
            action = "extension.resume.forced" if force else "extension.resume"
            record(store, action, resource, {"suspended": before}, after, tenant)
        return changed

    changed = _in_store(resume)
    out.print(f"extension {number} resumed" if changed else f"{number} was not suspended")


# -- alerts ------------------------------------------------------------------------------


@alerts_app.callback()
def alerts_default(ctx: typer.Context) -> None:
    """Without a command: the alerts not yet resolved."""
    if ctx.invoked_subcommand is None:
        alerts_list(status=None, tenant=None, limit=100, as_json=False)


@alerts_app.command("list")
def alerts_list(
    status: Annotated[
        str | None, typer.Option(help="open, acknowledged or resolved (default: not resolved).")
    ] = None,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's alerts.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100000)] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output for scripts.")] = False,
) -> None:
    """List alerts, newest first, with their reasons."""
    if status not in (None, "open", "acknowledged", "resolved"):
        raise fail(f"--status must be open, acknowledged or resolved, not {status!r}")
    store = _store(_config())
    try:
        rows = store.list_alerts(status=status, tenant=tenant, limit=limit)
    finally:
        store.close()
    if status is None:
        rows = [r for r in rows if r["status"] != "resolved"]
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table(title="alerts")
    for column in ("id", "severity", "status", "tenant", "extension", "count", "last", "summary"):
        table.add_column(column)
    for r in rows:
        colour = "red" if r["severity"] == "critical" else "yellow"
        table.add_row(
            str(r["id"]),
            f"[{colour}]{r['severity']}[/]",
            r["status"],
            r["tenant"],
            r["extension"] or "",
            str(r["count"]),
            when(r["last_at"]),
            r["summary"] + "".join(f"\n  - {x}" for x in r["reasons"][:6]),
        )
    out.print(table)


def _set_alert(alert_id: int, status: str, by: str | None) -> None:
    def change(store: Store) -> dict[str, Any]:
        before = store.get_alert(alert_id)
        if before is None:
            raise StoreError(f"no alert {alert_id}")
        after = store.set_alert_status(alert_id, status, by or actor())
        action = "alert.ack" if status == "acknowledged" else "alert.resolve"
        record(
            store,
            action,
            f"alert/{alert_id}",
            {"status": before["status"]},
            {"status": after["status"]},
            before["tenant"],
        )
        return after

    row = _in_store(change)
    out.print(f"alert {row['id']} {row['status']}")


@alerts_app.command("ack")
def alerts_ack(
    alert_id: int,
    by: Annotated[str | None, typer.Option(help="Who is handling it (default: you).")] = None,
) -> None:
    """Acknowledge an alert: someone is on it (repeats are still counted)."""
    _set_alert(alert_id, "acknowledged", by)


@alerts_app.command("resolve")
def alerts_resolve(
    alert_id: int,
    by: Annotated[str | None, typer.Option(help="Who resolved it (default: you).")] = None,
) -> None:
    """Resolve an alert: the next occurrence opens a new one and is sent again."""
    _set_alert(alert_id, "resolved", by)


# -- simulator ---------------------------------------------------------------------------


@app.command()
def simulate(
    tenants: Annotated[int, typer.Option(min=1, max=10000)] = 100,
    extensions: Annotated[int, typer.Option(min=2, max=1_000_000)] = 1000,
    days: Annotated[int, typer.Option(min=8, max=365)] = 30,
    seed: Annotated[int, typer.Option(help="Same seed, same traffic.")] = 1,
    attack: Annotated[
        list[str] | None,
        typer.Option(help="Only these attacks (repeat); default: all of them."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output for scripts.")] = False,
    run_set: Annotated[
        str | None,
        typer.Option(
            "--set",
            help="Run every seed of a fixed set instead: 'tuning', 'holdout' (the hold-out "
            "set's seeds and tenant mix are never used to tune the guard) or 'spent' (former "
            "hold-out seeds and mix, tuning data now).",
        ),
    ] = None,
    sip: Annotated[
        bool,
        typer.Option(
            "--sip",
            help="Play a few attacks in real time through a throwaway PBX and SIPp on "
            "loopback instead (other options are ignored).",
        ),
    ] = False,
) -> None:
    """Run the fraud guard on simulated traffic with injected attacks, and report.

    Uses the guard policy of this data directory's configuration when there is one
    (tenants t000, t001... get the [guard.default] policy), else the simulator's own
    mix of tenant policies. With --sip, the real server in a temporary data directory.
    """
    if sip:
        from pbxwarden.guard.simulate_sip import SipSimulationError, run_sip_simulation

        try:
            sip_report = run_sip_simulation()
        except SipSimulationError as exc:
            raise fail(str(exc)) from None
        if as_json:
            out.print_json(json.dumps(sip_report.to_json()))
        else:
            out.print(sip_report.markdown(), markup=False, highlight=False)
        return
    from pbxwarden.guard.simulate import ATTACKS, Simulation

    chosen = tuple(attack or ATTACKS)
    unknown = [a for a in chosen if a not in ATTACKS]
    if unknown:
        raise fail(f"unknown attack {unknown[0]!r}; the attacks are {', '.join(ATTACKS)}")
    from pbxwarden.config import CONFIG_FILE

    config = None
    if (state.data_dir / CONFIG_FILE).exists():
        config = _config().guard
        if not config.tenants and config.default == type(config.default)():
            config = None  # untouched defaults: use the simulator's realistic tenant mix
    if run_set is not None:
        from pbxwarden.guard.simulate import run_set as run_seeds

        if run_set not in ("tuning", "spent", "holdout"):
            raise fail(f"unknown set {run_set!r}: the sets are tuning, spent and holdout")
        reports = run_seeds(run_set, tenants, extensions, days, chosen, config)
        if as_json:
            out.print_json(json.dumps([r.to_json() for r in reports]))
        else:
            text = "\n\n".join(r.markdown() for r in reports)
            out.print(text, markup=False, highlight=False)
        return
    report = Simulation(tenants, extensions, days, seed, chosen, config).run()
    if as_json:
        out.print_json(json.dumps(report.to_json()))
        return
    out.print(report.markdown(), markup=False, highlight=False)


def run() -> None:
    os.umask(0o077)  # the database holds digest hashes: owner-only files by default
    try:
        app()
    except Exception as exc:
        # the database went away in the middle of a command: one line, not a traceback
        message = database_failure(exc)
        if not message.startswith("the database is unreachable"):
            raise
        sys.stderr.write(f"error: {message}\n")
        raise SystemExit(1) from None


if __name__ == "__main__":
    run()
