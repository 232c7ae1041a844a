"""Operations over HTTP: call records, live calls, alerts, bans and the audit log.

Live calls exist only in the running server's memory: they are read and ended through
the server's ``control`` function, called on the event loop (the server's state is not
thread-safe), never from a worker thread.
"""

from __future__ import annotations

import contextlib
import csv
import io
import ipaddress
import re
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.responses import Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from pbxwarden.api.models import (
    ADDRESS_PATTERN,
    NO_CONTROL,
    NUMBER_PATTERN,
    TENANT_PATTERN,
    AlertOut,
    AuditPage,
    BanIn,
    BanOut,
    CallOut,
    CdrOut,
    CdrPage,
    RegistrationOut,
)
from pbxwarden.api.security import (
    API_PREFIX,
    ApiContext,
    Ctx,
    Operator,
    Principal,
    Reader,
    audit,
    audit_async,
    client_ip,
    get_ctx,
    require_global,
    tenant_filter,
)
from pbxwarden.config import parse_hostport
from pbxwarden.firewall.safety import ban_refusal
from pbxwarden.store.db import Store, StoreError
from pbxwarden.store.models import Cdr

router = APIRouter(prefix=API_PREFIX)

TenantQuery = Annotated[str | None, Query(pattern=TENANT_PATTERN, description="only this tenant's")]
Since = Annotated[float | None, Query(ge=0, le=1e11, description="Unix time, inclusive")]
Id = Annotated[int, Path(ge=1, le=2**62)]
CDR_FIELDS = list(CdrOut.model_fields)
# A cell a spreadsheet would run as a formula; phone numbers (+4930...) are left alone.
_FORMULA = re.compile(r"^[=@\t\r]|^[+-](?![0-9 ().-]*$)")


# -- call detail records ---------------------------------------------------------------


def search_cdrs(
    store: Store,
    tenant: str | None,
    extension: str | None,
    since: float | None,
    until: float | None,
    disposition: str | None,
    limit: int,
    offset: int,
) -> list[dict[str, Any]]:
    stmt = select(Cdr)
    if tenant is not None:
        stmt = stmt.where(Cdr.tenant == tenant)
    if extension is not None:
        stmt = stmt.where(Cdr.extension == extension)
    if since is not None:
        stmt = stmt.where(Cdr.start_ts >= since)
    if until is not None:
        stmt = stmt.where(Cdr.start_ts < until)
    if disposition is not None:
        stmt = stmt.where(Cdr.disposition == disposition)
    stmt = stmt.order_by(Cdr.start_ts.desc(), Cdr.id.desc()).limit(limit).offset(offset)
    with Session(store.engine) as s:
        return [{f: getattr(row, f) for f in CDR_FIELDS} for row in s.scalars(stmt)]


def _csv_cell(value: Any) -> Any:
    if isinstance(value, str) and _FORMULA.search(value):
        return "'" + value
    return value


def _wants_csv(request: Request, fmt: str | None) -> bool:
    if fmt is not None:
        return fmt == "csv"
    accept = request.headers.get("accept", "")
    return "text/csv" in accept and "application/json" not in accept


@router.get(
    "/cdrs",
    response_model=CdrPage,
    tags=["cdrs"],
    summary="Search call records, newest first (JSON, or CSV with format=csv / Accept)",
    responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}}},
)
def list_cdrs(
    request: Request,
    ctx: Ctx,
    principal: Reader,
    tenant: TenantQuery = None,
    extension: Annotated[str | None, Query(pattern=NUMBER_PATTERN)] = None,
    since: Since = None,
    until: Since = None,
    disposition: Annotated[str | None, Query(max_length=16, pattern=NO_CONTROL)] = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    format: Annotated[Literal["json", "csv"] | None, Query()] = None,
) -> Any:
    visible, tenant = tenant_filter(principal, tenant)
    rows = (
        search_cdrs(ctx.store, tenant, extension, since, until, disposition, limit, offset)
        if visible
        else []
    )
    if _wants_csv(request, format):
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CDR_FIELDS)
        writer.writeheader()
        writer.writerows({k: _csv_cell(v) for k, v in row.items()} for row in rows)
        return Response(
            buffer.getvalue(),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="cdrs.csv"'},
        )
    return {
        "items": rows,
        "limit": limit,
        "offset": offset,
        "next_offset": offset + len(rows) if len(rows) == limit else None,
    }


def _resolved_trunks(ctx: ApiContext) -> list[str]:
    """The addresses the running server resolved trunk names to (none if not running)."""
    if ctx.control is None:
        return []
    try:
        views = ctx.control({"cmd": "stats"}).get("trunk_dns") or {}
    except (ValueError, KeyError):
        return []
    return [address for view in views.values() for address in view.get("addresses", [])]


# -- live calls ------------------------------------------------------------------------


def _ask(request: Request, command: dict[str, Any]) -> dict[str, Any]:
    control = get_ctx(request).control
    if control is None:
        raise HTTPException(503, "live calls are unavailable: the SIP server is not running here")
    try:
        answer = control(command)
    except (ValueError, KeyError) as exc:
        raise HTTPException(404, str(exc)) from None
    if "error" in answer:
        raise HTTPException(404, str(answer["error"]))
    return answer


async def _ask_live(request: Request, command: dict[str, Any]) -> dict[str, Any]:
    """Asked of the running server with the calls of every node of a cluster."""
    live = get_ctx(request).live
    if live is None:
        return _ask(request, command)
    try:
        answer = await live(command)
    except (ValueError, KeyError) as exc:
        raise HTTPException(404, str(exc)) from None
    if "error" in answer:
        raise HTTPException(int(answer.get("status", 404)), str(answer["error"]))
    return answer


async def _calls(request: Request, principal: Principal) -> tuple[list[dict[str, Any]], Any]:
    answer = await _ask_live(request, {"cmd": "calls"})
    calls = [c for c in answer.get("calls", []) if principal.tenant in (None, c.get("tenant"))]
    return calls, answer


@router.get("/calls", response_model=list[CallOut], tags=["calls"])
async def list_calls(
    request: Request, response: Response, principal: Reader
) -> list[dict[str, Any]]:
    """Calls in progress (asked of the running server). In a cluster, every node's,
    each with its ``node``; the header ``X-Calls-Scope`` says ``cluster``, or ``local``
    when Redis is unreachable and only this node's are listed (``X-Calls-Note`` says
    why)."""
    calls, answer = await _calls(request, principal)
    if "scope" in answer:
        response.headers["X-Calls-Scope"] = str(answer["scope"])
        if answer.get("note"):
            response.headers["X-Calls-Note"] = str(answer["note"])
    return calls


@router.delete("/calls/{call_id:path}", response_model=CallOut, tags=["calls"])
async def end_call(
    call_id: Annotated[str, Path(max_length=255, pattern=r"^[!-~]+$")],
    request: Request,
    principal: Operator,
) -> dict[str, Any]:
    """End a call in progress: both phones are hung up, or it stops ringing. In a
    cluster the node that carries it ends it; 503 if it does not confirm in time."""
    calls, _ = await _calls(request, principal)
    call = next((c for c in calls if c.get("call_id") == call_id), None)
    if call is None:
        raise HTTPException(404, f"no call {call_id!r} in progress")
    command: dict[str, Any] = {"cmd": "end", "call_id": call_id}
    if call.get("node") is not None:
        command["node"] = call["node"]
    await _ask_live(request, command)
    await audit_async(
        request, principal, "call.end", f"call/{call_id}", call, None, call.get("tenant")
    )
    return call


# -- registrations ---------------------------------------------------------------------


def _registrations(request: Request, principal: Principal) -> list[dict[str, Any]]:
    rows = _ask(request, {"cmd": "registrations"}).get("registrations", [])
    return [r for r in rows if principal.tenant in (None, r.get("tenant"))]


@router.get("/registrations", response_model=list[RegistrationOut], tags=["registrations"])
async def list_registrations(
    request: Request, principal: Reader, tenant: TenantQuery = None
) -> list[dict[str, Any]]:
    """Every registered phone (one row per binding), asked of the running server: from
    where, over what, which phone, since and until when."""
    return [r for r in _registrations(request, principal) if tenant in (None, r["tenant"])]


@router.delete(
    "/tenants/{tenant}/extensions/{number}/registrations/{binding}",
    response_model=RegistrationOut,
    tags=["registrations"],
)
async def remove_registration(
    tenant: Annotated[str, Path(pattern=TENANT_PATTERN)],
    number: Annotated[str, Path(pattern=NUMBER_PATTERN)],
    binding: Annotated[str, Path(pattern=r"^[0-9a-f]{12}$")],
    request: Request,
    principal: Operator,
) -> dict[str, Any]:
    """Remove one registration: that phone gets no calls until it registers again (change
    the extension's password too if it is not yours: then it cannot)."""
    found = next(
        (
            r
            for r in _registrations(request, principal)
            if (r["tenant"], r["number"], r["id"]) == (tenant, number, binding)
        ),
        None,
    )
    if found is None:
        raise HTTPException(404, f"extension {number} has no registration {binding}")
    _ask(request, {"cmd": "unregister", "tenant": tenant, "number": number, "id": binding})
    await audit_async(
        request,
        principal,
        "registration.remove",
        f"tenant/{tenant}/extension/{number}/registration/{binding}",
        found,
        None,
        tenant,
    )
    return dict(found)


# -- alerts ----------------------------------------------------------------------------


@router.get("/alerts", response_model=list[AlertOut], tags=["alerts"])
def list_alerts(
    ctx: Ctx,
    principal: Reader,
    status: Annotated[Literal["open", "acknowledged", "resolved"] | None, Query()] = None,
    tenant: TenantQuery = None,
    since: Since = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
) -> list[dict[str, Any]]:
    visible, tenant = tenant_filter(principal, tenant)
    if not visible:
        return []
    return ctx.store.list_alerts(status, tenant, since or 0.0, limit)


def _set_alert(
    request: Request, ctx: Ctx, principal: Principal, alert_id: int, status: str
) -> dict[str, Any]:
    before = ctx.store.get_alert(alert_id)
    if before is None or principal.tenant not in (None, before["tenant"]):
        raise StoreError(f"no alert {alert_id}")
    after = ctx.store.set_alert_status(alert_id, status, principal.name)
    audit(
        request,
        principal,
        "alert.ack" if status == "acknowledged" else "alert.resolve",
        f"alert/{alert_id}",
        {"status": before["status"]},
        {"status": after["status"]},
        before["tenant"],
    )
    return after


@router.post("/alerts/{alert_id}/ack", response_model=AlertOut, tags=["alerts"])
def ack_alert(alert_id: Id, request: Request, ctx: Ctx, principal: Operator) -> dict[str, Any]:
    """Acknowledge: someone is on it."""
    return _set_alert(request, ctx, principal, alert_id, "acknowledged")


@router.post("/alerts/{alert_id}/resolve", response_model=AlertOut, tags=["alerts"])
def resolve_alert(alert_id: Id, request: Request, ctx: Ctx, principal: Operator) -> dict[str, Any]:
    """Resolve: it is over."""
    return _set_alert(request, ctx, principal, alert_id, "resolved")


# -- bans ------------------------------------------------------------------------------


def _bans(ctx: Ctx) -> list[dict[str, Any]]:
    now = time.time()
    rows = [
        {"address": a, "reason": r, "expires_in": int(u - now), "level": lv}
        for a, u, r, lv, _ in ctx.store.load_bans(now, now)
    ]
    return sorted(rows, key=lambda r: str(r["address"]))


def _address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise HTTPException(400, f"not an IP address: {text!r}") from None


@router.get("/bans", response_model=list[BanOut], tags=["bans"])
def list_bans(ctx: Ctx, principal: Reader) -> list[dict[str, Any]]:
    """Active SIP firewall bans."""
    require_global(principal, "the SIP firewall")
    return _bans(ctx)


@router.post("/bans", response_model=BanOut, status_code=201, tags=["bans"])
def add_ban(body: BanIn, request: Request, ctx: Ctx, principal: Operator) -> dict[str, Any]:
    """Ban an address from SIP now (the running server applies it within a second)."""
    require_global(principal, "the SIP firewall")
    address = _address(body.address)
    ip = ipaddress.ip_address(address)
    if any(ip in ipaddress.ip_network(n, strict=False) for n in ctx.config.firewall.allow):
        raise HTTPException(
            409, f"{address} is in firewall.allow and would never be banned; remove it there"
        )
    sip = ctx.config.sip
    listen = [sip.listen_address[0]]
    if sip.tls is not None:
        listen.append(parse_hostport(sip.tls.listen, 5061)[0])
    why = ban_refusal(
        address,
        trunk_hosts=[t["host"] for t in ctx.store.list_trunks()] + _resolved_trunks(ctx),
        listen_hosts=listen,
        admin_address=client_ip(request),
    )
    if why is not None and not body.force:
        raise HTTPException(409, f"not banned: {why} (force: true to ban it all the same)")
    before = next((b for b in _bans(ctx) if b["address"] == address), None)
    now = time.time()
    ctx.store.save_bans([(address, now + body.duration, body.reason, 1, now)])
    after = next(b for b in _bans(ctx) if b["address"] == address)
    audit(request, principal, "ban.add", f"ban/{address}", before, after)
    _firewall_changed(ctx)
    return after


@router.delete("/bans/{address}", response_model=BanOut, tags=["bans"])
def remove_ban(
    address: Annotated[str, Path(max_length=45, pattern=ADDRESS_PATTERN)],
    request: Request,
    ctx: Ctx,
    principal: Operator,
) -> dict[str, Any]:
    """Lift a ban (and forget it, so the next ban starts short again)."""
    require_global(principal, "the SIP firewall")
    address = _address(address)
    before = next((b for b in _bans(ctx) if b["address"] == address), None)
    if before is None or not ctx.store.remove_ban(address):
        raise HTTPException(404, f"{address} is not banned")
    audit(request, principal, "ban.remove", f"ban/{address}", before, None)
    _firewall_changed(ctx)
    return before


def _firewall_changed(ctx: ApiContext) -> None:
    """The running server adopts (and in a cluster shares) the change at once."""
    if ctx.control is not None:
        with contextlib.suppress(ValueError, KeyError):
            ctx.control({"cmd": "firewall"})


# -- audit log -------------------------------------------------------------------------


@router.get("/audit", response_model=AuditPage, tags=["audit"])
def list_audit(
    ctx: Ctx,
    principal: Reader,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[int | None, Query(ge=1, le=2**62, description="entries older than")] = None,
) -> dict[str, Any]:
    """Every change made through the API or the admin CLI, newest first."""
    items = ctx.admin.list_audit(principal.tenant, limit, before)
    return {"items": items, "next_before": items[-1]["id"] if len(items) == limit else None}
