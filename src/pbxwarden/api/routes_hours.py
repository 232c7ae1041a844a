"""Time conditions (business hours) over HTTP (:mod:`pbxwarden.pbx.dialplan`): the same
store methods and checks as ``pbxwarden hours``; every change audited."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Request
from pydantic import BaseModel, Field, StringConstraints

from pbxwarden.api.models import NO_CONTROL, NUMBER_PATTERN, _In
from pbxwarden.api.routes_pbx import TenantPath, TenantQuery, _visible_rows
from pbxwarden.api.security import API_PREFIX, Admin, Ctx, Operator, Reader, audit, visible_tenant
from pbxwarden.store.dialplan import TimeConditionStore

router = APIRouter(prefix=API_PREFIX)
HoursPath = Annotated[str, Path(pattern=NUMBER_PATTERN, description="time condition number")]
Target = Annotated[str, StringConstraints(min_length=1, max_length=32, pattern=NO_CONTROL)]


class HoursIn(_In):
    hours: Annotated[str, StringConstraints(max_length=500, pattern=NO_CONTROL)] = Field(
        description="Opening hours, as 'mon-fri 09:00-17:00; sat 10:00-13:00'."
    )
    open_to: Target
    closed_to: Target
    timezone: Annotated[str, StringConstraints(max_length=64, pattern=NO_CONTROL)] | None = None
    holidays: list[Annotated[str, StringConstraints(max_length=10)]] = Field(
        default_factory=list, max_length=366
    )
    name: Annotated[str, StringConstraints(max_length=64, pattern=NO_CONTROL)] = ""


class OverrideIn(_In):
    override: Literal["open", "closed"] | None = Field(
        description="Force open or closed; null follows the hours again."
    )


class HoursOut(BaseModel):
    tenant: str
    number: str
    name: str
    timezone: str
    hours: str
    holidays: list[str]
    open_to: str
    closed_to: str
    override: str | None


@router.get("/time-conditions", response_model=list[HoursOut], tags=["time conditions"])
def list_hours(ctx: Ctx, principal: Reader, tenant: TenantQuery = None) -> list[dict[str, Any]]:
    return _visible_rows(principal, tenant, TimeConditionStore(ctx.store).list)


@router.put(
    "/tenants/{tenant}/time-conditions/{number}",
    response_model=HoursOut,
    tags=["time conditions"],
    summary="Create or replace a time condition (business hours); its override is kept",
)
def put_hours(
    tenant: TenantPath,
    number: HoursPath,
    body: HoursIn,
    request: Request,
    ctx: Ctx,
    principal: Admin,
) -> dict[str, Any]:
    visible_tenant(ctx, principal, tenant)
    before, after = TimeConditionStore(ctx.store).put(
        tenant,
        number,
        body.hours,
        body.open_to,
        body.closed_to,
        body.timezone,
        body.holidays,
        body.name,
    )
    action = "hours.update" if before is not None else "hours.create"
    audit(request, principal, action, f"tenant/{tenant}/hours/{number}", before, after, tenant)
    return after


@router.put(
    "/tenants/{tenant}/time-conditions/{number}/override",
    response_model=HoursOut,
    tags=["time conditions"],
    summary="Force a time condition open or closed (an operator may), or back to its hours",
)
def override_hours(
    tenant: TenantPath,
    number: HoursPath,
    body: OverrideIn,
    request: Request,
    ctx: Ctx,
    principal: Operator,
) -> dict[str, Any]:
    visible_tenant(ctx, principal, tenant)
    before, after = TimeConditionStore(ctx.store).set_override(tenant, number, body.override)
    resource = f"tenant/{tenant}/hours/{number}"
    audit(request, principal, "hours.override", resource, before, after, tenant)
    return after


@router.get(
    "/tenants/{tenant}/time-conditions/{number}", response_model=HoursOut, tags=["time conditions"]
)
def get_hours(tenant: TenantPath, number: HoursPath, ctx: Ctx, principal: Reader) -> dict[str, Any]:
    visible_tenant(ctx, principal, tenant)
    row = TimeConditionStore(ctx.store).get(tenant, number)
    if row is None:
        raise HTTPException(404, f"no time condition {number} in tenant {tenant}")
    return row


@router.delete(
    "/tenants/{tenant}/time-conditions/{number}", status_code=204, tags=["time conditions"]
)
def delete_hours(
    tenant: TenantPath, number: HoursPath, request: Request, ctx: Ctx, principal: Admin
) -> None:
    visible_tenant(ctx, principal, tenant)
    before = TimeConditionStore(ctx.store).remove(tenant, number)
    resource = f"tenant/{tenant}/hours/{number}"
    audit(request, principal, "hours.delete", resource, before, None, tenant)
