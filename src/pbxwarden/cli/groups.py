"""``pbxwarden group``: ring and hunt groups (:mod:`pbxwarden.pbx.groups`). Every change
is audited; a running server follows within a second."""

from __future__ import annotations

from typing import Annotated

import typer

from pbxwarden.cli.admin import _open
from pbxwarden.cli.audit_trail import record
from pbxwarden.cli.output import fail, out, print_rows
from pbxwarden.store.basics import DEFAULT_TENANT, StoreError

group_app = typer.Typer(no_args_is_help=True, help="Ring and hunt groups: one number, many phones.")
TenantOption = Annotated[str, typer.Option(help="Tenant of the group.")]


@group_app.command("set")
def group_set(
    ctx: typer.Context,
    number: Annotated[str, typer.Argument(help="The group's number (like an extension's).")],
    member: Annotated[
        list[str],
        typer.Option(
            "--member",
            "-m",
            help="An extension or a telephone number; repeat, in ringing order.",
        ),
    ],
    strategy: Annotated[
        str,
        typer.Option(help="ringall (all at once), hunt (in order) or roundrobin."),
    ] = "ringall",
    ring_time: Annotated[
        float, typer.Option(help="Seconds each step rings (ringall: the whole group).")
    ] = 20.0,
    fallback: Annotated[
        str | None,
        typer.Option(help="Where the call goes when nobody answers: extension, group, number."),
    ] = None,
    cid_prefix: Annotated[
        str, typer.Option(help="Shown before the caller's number on members' phones.")
    ] = "",
    name: Annotated[str, typer.Option(help="A name for people.")] = "",
    tenant: TenantOption = DEFAULT_TENANT,
) -> None:
    """Create or replace a group. External members' calls are judged by the guard."""
    from pbxwarden.store.dialplan import GroupStore

    _, store, _ = _open(ctx)
    try:
        before, after = GroupStore(store).put(
            tenant, number, member, strategy, ring_time, fallback, cid_prefix, name
        )
        action = "group.update" if before is not None else "group.create"
        record(store, action, f"tenant/{tenant}/group/{number}", before, after, tenant)
    except StoreError as exc:
        raise fail(str(exc)) from None
    finally:
        store.close()
    out.print(
        f"group {number} ({after['strategy']}) rings {', '.join(after['members'])}",
        highlight=False,
    )


@group_app.command("list")
def group_list(
    ctx: typer.Context,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's groups.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output for scripts.")] = False,
) -> None:
    """List groups."""
    from pbxwarden.store.dialplan import GroupStore

    _, store, _ = _open(ctx)
    try:
        rows = GroupStore(store).list(tenant)
    finally:
        store.close()
    if not as_json:
        for row in rows:
            row["members"] = ", ".join(row["members"])
    print_rows(rows, as_json, "groups")


@group_app.command("remove")
def group_remove(ctx: typer.Context, number: str, tenant: TenantOption = DEFAULT_TENANT) -> None:
    """Delete a group (refused while a DID rings it)."""
    from pbxwarden.store.dialplan import GroupStore

    _, store, _ = _open(ctx)
    try:
        before = GroupStore(store).remove(tenant, number)
        record(store, "group.delete", f"tenant/{tenant}/group/{number}", before, None, tenant)
    except StoreError as exc:
        raise fail(str(exc)) from None
    finally:
        store.close()
    out.print(f"group {number} removed")
