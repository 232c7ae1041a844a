"""Ring and hunt groups over HTTP (:mod:`pbxwarden.pbx.groups`): the same store methods
and checks as ``pbxwarden group``, so the two cannot disagree; every change audited."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Request
from pydantic import BaseModel, Field, StringConstraints

from pbxwarden.api.models import NO_CONTROL, NUMBER_PATTERN, _In
from pbxwarden.api.routes_pbx import TenantPath, TenantQuery, _visible_rows
from pbxwarden.api.security import API_PREFIX, Admin, Ctx, Reader, audit, visible_tenant
from pbxwarden.pbx.dialplan import MAX_MEMBERS, MAX_RING_TIME, MIN_RING_TIME, STRATEGIES
from pbxwarden.store.dialplan import GroupStore

router = APIRouter(prefix=API_PREFIX)
GroupPath = Annotated[str, Path(pattern=NUMBER_PATTERN, description="group number")]
Target = Annotated[str, StringConstraints(min_length=1, max_length=32, pattern=NO_CONTROL)]


class GroupIn(_In):
    members: list[Target] = Field(
        min_length=1,
        max_length=MAX_MEMBERS,
        description="Extensions or telephone numbers, in ringing order.",
    )
    strategy: str = Field("ringall", description=f"One of {', '.join(STRATEGIES)}.")
    ring_time: float = Field(20.0, ge=MIN_RING_TIME, le=MAX_RING_TIME)
    fallback: Target | None = None
    cid_prefix: Annotated[str, StringConstraints(max_length=24, pattern=NO_CONTROL)] = ""
    name: Annotated[str, StringConstraints(max_length=64, pattern=NO_CONTROL)] = ""


class GroupOut(BaseModel):
    tenant: str
    number: str
    name: str
    strategy: str
    members: list[str]
    ring_time: float
    fallback: str | None
    cid_prefix: str


@router.get("/groups", response_model=list[GroupOut], tags=["groups"])
def list_groups(ctx: Ctx, principal: Reader, tenant: TenantQuery = None) -> list[dict[str, Any]]:
    return _visible_rows(principal, tenant, GroupStore(ctx.store).list)


@router.put(
    "/tenants/{tenant}/groups/{number}",
    response_model=GroupOut,
    tags=["groups"],
    summary="Create or replace a ring group (external members are judged by the guard)",
)
def put_group(
    tenant: TenantPath,
    number: GroupPath,
    body: GroupIn,
    request: Request,
    ctx: Ctx,
    principal: Admin,
) -> dict[str, Any]:
    visible_tenant(ctx, principal, tenant)
    before, after = GroupStore(ctx.store).put(
        tenant,
        number,
        list(body.members),
        body.strategy,
        body.ring_time,
        body.fallback,
        body.cid_prefix,
        body.name,
    )
    action = "group.update" if before is not None else "group.create"
    audit(request, principal, action, f"tenant/{tenant}/group/{number}", before, after, tenant)
    return after


@router.get("/tenants/{tenant}/groups/{number}", response_model=GroupOut, tags=["groups"])
def get_group(tenant: TenantPath, number: GroupPath, ctx: Ctx, principal: Reader) -> dict[str, Any]:
    visible_tenant(ctx, principal, tenant)
    row = GroupStore(ctx.store).get(tenant, number)
    if row is None:
        raise HTTPException(404, f"no group {number} in tenant {tenant}")
    return row


@router.delete("/tenants/{tenant}/groups/{number}", status_code=204, tags=["groups"])
def delete_group(
    tenant: TenantPath, number: GroupPath, request: Request, ctx: Ctx, principal: Admin
) -> None:
    visible_tenant(ctx, principal, tenant)
    before = GroupStore(ctx.store).remove(tenant, number)
    resource = f"tenant/{tenant}/group/{number}"
    audit(request, principal, "group.delete", resource, before, None, tenant)
