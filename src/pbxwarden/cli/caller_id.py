"""``pbxwarden extension caller-id`` and ``trunk identity``: what calls to carriers present
(:mod:`pbxwarden.pbx.caller_id`). Both changes are audited."""

from __future__ import annotations

from typing import Annotated

import typer

from pbxwarden.cli.admin import _open
from pbxwarden.cli.audit_trail import record
from pbxwarden.cli.output import fail, out
from pbxwarden.store.basics import DEFAULT_TENANT, StoreError

TenantOption = Annotated[str, typer.Option(help="Tenant of the extension or trunk.")]


def extension_caller_id(
    ctx: typer.Context,
    number: str,
    present: Annotated[
        str | None,
        typer.Option(
            "--number",
            help="The number its calls to carriers present: one of the tenant's DIDs "
            "(as people write it, or E.164).",
        ),
    ] = None,
    default: Annotated[
        bool,
        typer.Option("--default", help="Present its own DID again (else the tenant's lowest)."),
    ] = False,
    withhold: Annotated[
        bool | None,
        typer.Option(
            "--withhold/--show",
            help="Withhold it on every call (Privacy: id; *67 or #31# withholds one call).",
        ),
    ] = None,
    tenant: TenantOption = DEFAULT_TENANT,
) -> None:
    """Choose the caller ID an extension presents to carriers, or withhold it.

    Only a number the tenant owns can be presented: anything else is spoofing."""
    from pbxwarden.store.caller_id import _UNSET, CallerIdStore

    if present is not None and default:
        raise fail("give --number or --default, not both")
    chosen = None if default else (present if present is not None else _UNSET)
    _, store, _ = _open(ctx)
    try:
        before, after = CallerIdStore(store).set_extension(tenant, number, chosen, withhold)
        record(
            store,
            "extension.caller_id",
            f"tenant/{tenant}/extension/{number}",
            before,
            after,
            tenant,
        )
    except StoreError as exc:
        raise fail(str(exc)) from None
    finally:
        store.close()
    shown = after["caller_id"] or "its own DID (else the tenant's lowest)"
    how = "withheld (Privacy: id)" if after["withhold_caller_id"] else "shown"
    out.print(f"extension {number} presents {shown}, {how}")


def trunk_identity(
    ctx: typer.Context,
    name: str,
    assert_identity: Annotated[
        bool,
        typer.Option(
            "--assert/--no-assert",
            help="Send P-Asserted-Identity (RFC 3325) to this carrier: only if it trusts "
            "the PBX. On by default.",
        ),
    ],
    tenant: TenantOption = DEFAULT_TENANT,
) -> None:
    """Whether the trunk's carrier gets P-Asserted-Identity on outgoing calls."""
    from pbxwarden.store.caller_id import CallerIdStore

    _, store, _ = _open(ctx)
    try:
        before = CallerIdStore(store).set_trunk_identity(tenant, name, assert_identity)
        record(
            store,
            "trunk.identity",
            f"tenant/{tenant}/trunk/{name}",
            {"assert_identity": before},
            {"assert_identity": assert_identity},
            tenant,
        )
    except StoreError as exc:
        raise fail(str(exc)) from None
    finally:
        store.close()
    what = "gets" if assert_identity else "no longer gets"
    out.print(f"trunk {name} {what} P-Asserted-Identity")
