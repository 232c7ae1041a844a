"""Extension locks over HTTP (:mod:`pbxwarden.firewall.locks`): lift one, and allow an
extension's credentials from a trunk's address. The lock itself shows in the extension
resource (``locked_until``, ``lock_reason``, ``trunk_access``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request

from pbxwarden.api.models import ExtensionOut, LockOut, TrunkAccessIn
from pbxwarden.api.routes_pbx import NumberPath, TenantPath, _extension
from pbxwarden.api.security import API_PREFIX, Admin, Ctx, Operator, audit
from pbxwarden.store.locks import LockStore

router = APIRouter(prefix=API_PREFIX)


@router.post(
    "/tenants/{tenant}/extensions/{number}/unlock",
    response_model=LockOut,
    tags=["extensions"],
    summary="Lift a lock after distributed password guessing (a new password lifts it too)",
)
def unlock(
    tenant: TenantPath, number: NumberPath, request: Request, ctx: Ctx, principal: Operator
) -> dict[str, Any]:
    before = _extension(ctx, principal, tenant, number)
    if not LockStore(ctx.store).lift(tenant, number, principal.name):
        raise HTTPException(409, f"extension {number} is not locked")
    audit(
        request,
        principal,
        "extension.unlock",
        f"tenant/{tenant}/extension/{number}",
        {"locked_until": before["locked_until"], "reason": before["lock_reason"]},
        {"locked_until": None},
        tenant,
    )
    return {"tenant": tenant, "number": number, "locked": False}


@router.put(
    "/tenants/{tenant}/extensions/{number}/trunk-access",
    response_model=ExtensionOut,
    tags=["extensions"],
    summary="Whether the extension may register and call from a trunk's address (off by default)",
)
def set_trunk_access(
    tenant: TenantPath,
    number: NumberPath,
    body: TrunkAccessIn,
    request: Request,
    ctx: Ctx,
    principal: Admin,
) -> dict[str, Any]:
    _extension(ctx, principal, tenant, number)
    before = LockStore(ctx.store).set_trunk_access(tenant, number, body.allow)
    audit(
        request,
        principal,
        "extension.trunk_access",
        f"tenant/{tenant}/extension/{number}",
        {"trunk_access": before},
        {"trunk_access": body.allow},
        tenant,
    )
    return _extension(ctx, principal, tenant, number)
