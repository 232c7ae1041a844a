"""Caller ID over HTTP (:mod:`pbxwarden.pbx.caller_id`): the number an extension presents
to carriers, withholding, and whether a trunk's carrier gets P-Asserted-Identity; and
the trunk's other switch, whether its carrier's transfers are performed. Every change
is audited; the number must be one of the tenant's DIDs (400 otherwise)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request

from pbxwarden.api.models import (
    CallerIdIn,
    ExtensionOut,
    TrunkIdentityIn,
    TrunkOut,
    TrunkTransfersIn,
)
from pbxwarden.api.routes_pbx import NumberPath, TenantPath, _extension
from pbxwarden.api.security import API_PREFIX, Admin, Ctx, Principal, audit, require_global
from pbxwarden.store.caller_id import _UNSET, CallerIdStore
from pbxwarden.store.db import StoreError
from pbxwarden.store.trunk_settings import TrunkSettings

router = APIRouter(prefix=API_PREFIX)


@router.put(
    "/tenants/{tenant}/extensions/{number}/caller-id",
    response_model=ExtensionOut,
    tags=["extensions"],
    summary="The caller ID the extension presents to carriers (one of the tenant's DIDs), "
    "or withhold it",
)
def set_caller_id(
    tenant: TenantPath,
    number: NumberPath,
    body: CallerIdIn,
    request: Request,
    ctx: Ctx,
    principal: Admin,
) -> dict[str, Any]:
    _extension(ctx, principal, tenant, number)
    chosen: Any = None if body.default else (body.number if body.number is not None else _UNSET)
    before, after = CallerIdStore(ctx.store).set_extension(tenant, number, chosen, body.withhold)
    audit(
        request,
        principal,
        "extension.caller_id",
        f"tenant/{tenant}/extension/{number}",
        before,
        after,
        tenant,
    )
    return _extension(ctx, principal, tenant, number)


@router.put(
    "/tenants/{tenant}/trunks/{name}/identity",
    response_model=TrunkOut,
    tags=["trunks"],
    summary="Whether the trunk's carrier gets P-Asserted-Identity (RFC 3325)",
)
def set_trunk_identity(
    tenant: TenantPath,
    name: str,
    body: TrunkIdentityIn,
    request: Request,
    ctx: Ctx,
    principal: Admin,
) -> dict[str, Any]:
    return _switch(
        request,
        ctx,
        principal,
        tenant,
        name,
        ("trunk.identity", "assert_identity", body.assert_identity),
        lambda: CallerIdStore(ctx.store).set_trunk_identity(tenant, name, body.assert_identity),
    )


def _switch(
    request: Request,
    ctx: Ctx,
    principal: Principal,
    tenant: str,
    name: str,
    what: tuple[str, str, bool],
    change: Callable[[], bool],
) -> dict[str, Any]:
    """A trunk's on/off setting: the provider's (global admins only), audited as
    ``what`` = (action, field, new value); ``change`` stores it and returns the old."""
    require_global(principal, "changing a trunk")  # trunks belong to the provider
    action, field, value = what
    before = change()
    resource = f"tenant/{tenant}/trunk/{name}"
    audit(request, principal, action, resource, {field: before}, {field: value}, tenant)
    for trunk in ctx.store.list_trunks():
        if trunk["tenant"] == tenant and trunk["name"] == name:
            return trunk
    raise StoreError(f"no trunk {name!r} in tenant {tenant}")


@router.put(
    "/tenants/{tenant}/trunks/{name}/transfers",
    response_model=TrunkOut,
    tags=["trunks"],
    summary="Whether the trunk's carrier may ask the PBX to transfer a call (REFER)",
)
def set_trunk_transfers(
    tenant: TenantPath,
    name: str,
    body: TrunkTransfersIn,
    request: Request,
    ctx: Ctx,
    principal: Admin,
) -> dict[str, Any]:
    return _switch(
        request,
        ctx,
        principal,
        tenant,
        name,
        ("trunk.transfers", "accept_transfers", body.accept),
        lambda: TrunkSettings(ctx.store).set_transfers(tenant, name, body.accept),
    )
