"""``pbxwarden trunk transfers``: whether a carrier may ask the PBX to transfer a call
(:mod:`pbxwarden.pbx.transfer`). Off by default; the change is audited."""

from __future__ import annotations

from typing import Annotated

import typer

from pbxwarden.cli.admin import _open
from pbxwarden.cli.audit_trail import record
from pbxwarden.cli.output import fail, out
from pbxwarden.store.basics import DEFAULT_TENANT, StoreError


def trunk_transfers(
    ctx: typer.Context,
    name: str,
    accept: Annotated[
        bool,
        typer.Option(
            "--accept/--refuse",
            help="Perform the carrier's REFERs (blind transfers its party asks for; the "
            "target is judged as a call of our extension in the call), or answer them 403 "
            "(the default).",
        ),
    ],
    tenant: Annotated[str, typer.Option(help="Tenant of the trunk.")] = DEFAULT_TENANT,
) -> None:
    """Whether the trunk's carrier may ask the PBX to transfer a call."""
    from pbxwarden.store.trunk_settings import TrunkSettings

    _, store, _ = _open(ctx)
    try:
        before = TrunkSettings(store).set_transfers(tenant, name, accept)
        record(
            store,
            "trunk.transfers",
            f"tenant/{tenant}/trunk/{name}",
            {"accept_transfers": before},
            {"accept_transfers": accept},
            tenant,
        )
    except StoreError as exc:
        raise fail(str(exc)) from None
    finally:
        store.close()
    what = "are performed (each target judged by the guard)" if accept else "are refused (403)"
    out.print(f"trunk {name}: transfers its carrier asks for {what}")
