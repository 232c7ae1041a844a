"""``pbxwarden hours``: time conditions, business hours (:mod:`pbxwarden.pbx.dialplan`).
Every change is audited; a running server follows within a second."""

from __future__ import annotations

from typing import Annotated

import typer

from pbxwarden.cli.admin import _open
from pbxwarden.cli.audit_trail import record
from pbxwarden.cli.output import fail, out, print_rows
from pbxwarden.store.basics import DEFAULT_TENANT, StoreError

hours_app = typer.Typer(
    no_args_is_help=True,
    help="Business hours: a number leading one way when open, another when closed.",
)
TenantOption = Annotated[str, typer.Option(help="Tenant of the time condition.")]


@hours_app.command("set")
def hours_set(
    ctx: typer.Context,
    number: Annotated[str, typer.Argument(help="Its number (like an extension's).")],
    hours: Annotated[
        str, typer.Option(help="Opening hours, as 'mon-fri 09:00-17:00; sat 10:00-13:00'.")
    ],
    open_to: Annotated[
        str, typer.Option("--open", help="Where calls go when open: extension, group, number.")
    ],
    closed_to: Annotated[str, typer.Option("--closed", help="Where calls go when closed.")],
    holiday: Annotated[
        list[str] | None, typer.Option(help="A closed date (2026-12-25); repeat.")
    ] = None,
    timezone: Annotated[
        str | None,
        typer.Option(help="IANA time zone (Europe/Madrid); default: the tenant policy's."),
    ] = None,
    name: Annotated[str, typer.Option(help="A name for people.")] = "",
    tenant: TenantOption = DEFAULT_TENANT,
) -> None:
    """Create or replace a time condition (a manual override is kept)."""
    from pbxwarden.store.dialplan import TimeConditionStore

    _, store, _ = _open(ctx)
    try:
        before, after = TimeConditionStore(store).put(
            tenant, number, hours, open_to, closed_to, timezone, holiday, name
        )
        action = "hours.update" if before is not None else "hours.create"
        record(store, action, f"tenant/{tenant}/hours/{number}", before, after, tenant)
    except StoreError as exc:
        raise fail(str(exc)) from None
    finally:
        store.close()
    out.print(
        f"{number}: {after['hours']} ({after['timezone']}) -> {after['open_to']}, "
        f"else {after['closed_to']}",
        highlight=False,
    )


@hours_app.command("override")
def hours_override(
    ctx: typer.Context,
    number: str,
    state: Annotated[str, typer.Argument(help="open, closed, or auto (follow the hours).")],
    tenant: TenantOption = DEFAULT_TENANT,
) -> None:
    """Force it open or closed (an unplanned closure), or back to its hours."""
    from pbxwarden.store.dialplan import TimeConditionStore

    if state not in ("open", "closed", "auto"):
        raise fail(f"{state!r}: open, closed or auto")
    _, store, _ = _open(ctx)
    try:
        before, after = TimeConditionStore(store).set_override(
            tenant, number, None if state == "auto" else state
        )
        record(store, "hours.override", f"tenant/{tenant}/hours/{number}", before, after, tenant)
    except StoreError as exc:
        raise fail(str(exc)) from None
    finally:
        store.close()
    out.print(f"{number}: {'follows its hours' if state == 'auto' else state + ' until auto'}")


@hours_app.command("list")
def hours_list(
    ctx: typer.Context,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output for scripts.")] = False,
) -> None:
    """List time conditions."""
    from pbxwarden.store.dialplan import TimeConditionStore

    _, store, _ = _open(ctx)
    try:
        rows = TimeConditionStore(store).list(tenant)
    finally:
        store.close()
    if not as_json:
        for row in rows:
            row["holidays"] = ", ".join(row["holidays"])
    print_rows(rows, as_json, "time conditions")


@hours_app.command("remove")
def hours_remove(ctx: typer.Context, number: str, tenant: TenantOption = DEFAULT_TENANT) -> None:
    """Delete a time condition (refused while a DID leads to it)."""
    from pbxwarden.store.dialplan import TimeConditionStore

    _, store, _ = _open(ctx)
    try:
        before = TimeConditionStore(store).remove(tenant, number)
        record(store, "hours.delete", f"tenant/{tenant}/hours/{number}", before, None, tenant)
    except StoreError as exc:
        raise fail(str(exc)) from None
    finally:
        store.close()
    out.print(f"time condition {number} removed")
