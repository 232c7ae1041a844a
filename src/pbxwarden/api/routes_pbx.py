"""PBX configuration over HTTP: tenants, extensions, trunks, DIDs and call forwarding.

Thin on purpose: validation and the rules live in the store (the CLI uses the same
methods), so the API and the CLI cannot disagree about what is allowed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request

from pbxwarden.api.models import (
    NUMBER_PATTERN,
    TENANT_PATTERN,
    DidIn,
    DidOut,
    ExtensionIn,
    ExtensionOut,
    ForwardIn,
    ForwardingChangeOut,
    ForwardingOut,
    ForwardKind,
    NetworksIn,
    PasswordIn,
    PasswordOut,
    ResumeIn,
    SuspendIn,
    SuspensionOut,
    TenantIn,
    TenantOut,
    TrunkIn,
    TrunkOut,
)
from pbxwarden.api.security import (
    API_PREFIX,
    Admin,
    Ctx,
    Operator,
    Principal,
    Reader,
    audit,
    client_ip,
    require_global,
    tenant_filter,
    visible_tenant,
)
from pbxwarden.guard.policy import with_stored
from pbxwarden.pbx.forwarding import KINDS, judge_target, normalise_target
from pbxwarden.store.credentials import trunk_credential_key
from pbxwarden.store.db import (
    ResumeRefused,
    StoreError,
    generate_password,
    password_fingerprint_key,
)

router = APIRouter(prefix=API_PREFIX)

TenantPath = Annotated[str, Path(pattern=TENANT_PATTERN, description="tenant name")]
NumberPath = Annotated[str, Path(pattern=NUMBER_PATTERN, description="extension number")]
TenantQuery = Annotated[str | None, Query(pattern=TENANT_PATTERN, description="only this tenant's")]


def _fingerprint_key(request: Request) -> bytes | None:
    """Key of the password fingerprints (``pbxwarden audit`` sees reuse), from the install
    secret given to ``create_app``; None without one (no fingerprint is then kept)."""
    secret: bytes | None = getattr(request.app.state, "secret", None)
    return None if secret is None else password_fingerprint_key(secret)


def _extension(ctx: Ctx, principal: Principal, tenant: str, number: str) -> dict[str, Any]:
    visible_tenant(ctx, principal, tenant)
    for row in ctx.store.list_extensions(tenant):
        if row["number"] == number:
            return row
    raise StoreError(f"no extension {number} in tenant {tenant}")


# -- tenants ---------------------------------------------------------------------------


@router.get("/tenants", response_model=list[TenantOut], tags=["tenants"])
def list_tenants(ctx: Ctx, principal: Reader) -> list[dict[str, Any]]:
    rows = ctx.store.list_tenants()
    return [r for r in rows if principal.tenant in (None, r["tenant"])]


@router.post("/tenants", response_model=TenantOut, status_code=201, tags=["tenants"])
def create_tenant(body: TenantIn, request: Request, ctx: Ctx, principal: Admin) -> dict[str, Any]:
    require_global(principal, "creating tenants")
    ctx.store.add_tenant(body.name, body.realm, body.country)
    after = {"tenant": body.name, "realm": body.realm, "country": body.country, "extensions": 0}
    audit(request, principal, "tenant.create", f"tenant/{body.name}", None, after, body.name)
    return after


# -- extensions ------------------------------------------------------------------------


@router.get("/extensions", response_model=list[ExtensionOut], tags=["extensions"])
def list_all_extensions(
    ctx: Ctx, principal: Reader, tenant: TenantQuery = None
) -> list[dict[str, Any]]:
    visible, tenant = tenant_filter(principal, tenant)
    return ctx.store.list_extensions(tenant) if visible else []


@router.get("/tenants/{tenant}/extensions", response_model=list[ExtensionOut], tags=["extensions"])
def list_extensions(tenant: TenantPath, ctx: Ctx, principal: Reader) -> list[dict[str, Any]]:
    visible_tenant(ctx, principal, tenant)
    return ctx.store.list_extensions(tenant)


@router.post(
    "/tenants/{tenant}/extensions",
    response_model=PasswordOut,
    status_code=201,
    tags=["extensions"],
    summary="Add an extension; its generated SIP password is returned once",
)
def create_extension(
    tenant: TenantPath, body: ExtensionIn, request: Request, ctx: Ctx, principal: Admin
) -> dict[str, Any]:
    visible_tenant(ctx, principal, tenant)
    chosen = None if body.password is None else body.password.get_secret_value()
    password = generate_password() if chosen is None else chosen
    ctx.store.add_extensions(  # a weak chosen password: StoreError, 400 with the reason
        [(body.number, password)], tenant, body.display_name, _fingerprint_key(request)
    )
    after = {"tenant": tenant, "number": body.number, "display_name": body.display_name}
    audit(
        request,
        principal,
        "extension.create",
        f"tenant/{tenant}/extension/{body.number}",
        None,
        after,
        tenant,
    )
    return {"tenant": tenant, "number": body.number, "password": None if chosen else password}


@router.get(
    "/tenants/{tenant}/extensions/{number}", response_model=ExtensionOut, tags=["extensions"]
)
def get_extension(
    tenant: TenantPath, number: NumberPath, ctx: Ctx, principal: Reader
) -> dict[str, Any]:
    return _extension(ctx, principal, tenant, number)


@router.post(
    "/tenants/{tenant}/extensions/{number}/password",
    response_model=PasswordOut,
    tags=["extensions"],
    summary="Replace the SIP password (generated and returned once, or given and checked)",
)
def rotate_password(
    tenant: TenantPath,
    number: NumberPath,
    request: Request,
    ctx: Ctx,
    principal: Admin,
    body: PasswordIn | None = None,
) -> dict[str, Any]:
    visible_tenant(ctx, principal, tenant)
    given = body.password if body is not None else None
    chosen = None if given is None else given.get_secret_value()
    password = ctx.admin.rotate_extension_password(
        tenant, number, chosen, fingerprint_key=_fingerprint_key(request)
    )
    audit(
        request,
        principal,
        "extension.password",
        f"tenant/{tenant}/extension/{number}",
        None,
        {"password_rotated": True},
        tenant,
    )
    return {"tenant": tenant, "number": number, "password": None if chosen else password}


@router.put(
    "/tenants/{tenant}/extensions/{number}/networks",
    response_model=ExtensionOut,
    tags=["extensions"],
    summary="Networks the extension may register and call from (empty: anywhere)",
)
def set_networks(
    tenant: TenantPath,
    number: NumberPath,
    body: NetworksIn,
    request: Request,
    ctx: Ctx,
    principal: Admin,
) -> dict[str, Any]:
    before = _extension(ctx, principal, tenant, number)
    ctx.store.set_acl(tenant, number, ", ".join(body.networks) or None)
    after = _extension(ctx, principal, tenant, number)
    audit(
        request,
        principal,
        "extension.networks",
        f"tenant/{tenant}/extension/{number}",
        {"networks": before["networks"]},
        {"networks": after["networks"]},
        tenant,
    )
    return after


@router.post(
    "/tenants/{tenant}/extensions/{number}/suspend",
    response_model=SuspensionOut,
    tags=["extensions"],
    summary="Refuse every costly call of the extension until resumed",
)
def suspend(
    tenant: TenantPath,
    number: NumberPath,
    request: Request,
    ctx: Ctx,
    principal: Operator,
    body: SuspendIn | None = None,
) -> dict[str, Any]:
    visible_tenant(ctx, principal, tenant)
    reason = (body or SuspendIn()).reason
    if not ctx.store.suspend_extension(
        tenant, number, f"{reason} ({principal.name})", by=f"admin:{principal.name}"
    ):
        raise HTTPException(409, f"extension {number} is already suspended")
    audit(
        request,
        principal,
        "extension.suspend",
        f"tenant/{tenant}/extension/{number}",
        {"suspended": None},
        {"suspended": reason},
        tenant,
    )
    return {"tenant": tenant, "number": number, "suspended": True}


@router.post(
    "/tenants/{tenant}/extensions/{number}/resume",
    response_model=SuspensionOut,
    tags=["extensions"],
)
def resume(
    tenant: TenantPath,
    number: NumberPath,
    request: Request,
    ctx: Ctx,
    principal: Operator,
    body: ResumeIn | None = None,
) -> dict[str, Any]:
    """409 for an extension the guard suspended for fraud whose SIP password has not
    changed since: give it a new one first, or resume with ``force`` and a ``reason``."""
    before = _extension(ctx, principal, tenant, number)
    asked = body or ResumeIn()
    if asked.force and not asked.reason:
        raise HTTPException(422, "a forced resume needs a reason (it goes into the audit log)")
    try:
        resumed = ctx.store.resume_extension(tenant, number, force=asked.force)
    except ResumeRefused as exc:
        message = str(exc).replace("--force and a --reason", "force and a reason")
        raise HTTPException(409, message) from None
    if not resumed:
        raise HTTPException(409, f"extension {number} is not suspended")
    audit(
        request,
        principal,
        "extension.resume.forced" if asked.force else "extension.resume",
        f"tenant/{tenant}/extension/{number}",
        {"suspended": before["suspended"]},
        {"suspended": None, **({"forced": True, "reason": asked.reason} if asked.force else {})},
        tenant,
    )
    return {"tenant": tenant, "number": number, "suspended": False}


# -- forwarding ------------------------------------------------------------------------


def _forwarding(ctx: Ctx, tenant: str, number: str) -> dict[str, Any]:
    for row in ctx.store.forwarding_table():
        if row["tenant"] == tenant and row["extension"] == number:
            return row
    return {
        "tenant": tenant,
        "extension": number,
        "always": None,
        "busy": None,
        "noanswer": None,
        "ring_time": None,
    }


@router.get("/forwarding", response_model=list[ForwardingOut], tags=["forwarding"])
def list_forwarding(
    ctx: Ctx, principal: Reader, tenant: TenantQuery = None
) -> list[dict[str, Any]]:
    """Extensions with forwarding set."""
    visible, tenant = tenant_filter(principal, tenant)
    if not visible:
        return []
    return [r for r in ctx.store.forwarding_table() if tenant in (None, r["tenant"])]


@router.get("/forwarding/changes", response_model=list[ForwardingChangeOut], tags=["forwarding"])
def forwarding_changes(
    ctx: Ctx, principal: Reader, tenant: TenantQuery = None
) -> list[dict[str, Any]]:
    """Every forwarding change: who, from where, old and new target."""
    visible, tenant = tenant_filter(principal, tenant)
    return ctx.store.forwarding_changes(tenant) if visible else []


@router.get(
    "/tenants/{tenant}/extensions/{number}/forwarding",
    response_model=ForwardingOut,
    tags=["forwarding"],
)
def get_forwarding(
    tenant: TenantPath, number: NumberPath, ctx: Ctx, principal: Reader
) -> dict[str, Any]:
    _extension(ctx, principal, tenant, number)
    return _forwarding(ctx, tenant, number)


@router.put(
    "/tenants/{tenant}/extensions/{number}/forwarding/{kind}",
    response_model=ForwardingOut,
    tags=["forwarding"],
    summary="Set forwarding; a target the extension may not call is refused (422)",
)
def set_forwarding(
    tenant: TenantPath,
    number: NumberPath,
    kind: ForwardKind,
    body: ForwardIn,
    request: Request,
    ctx: Ctx,
    principal: Operator,
) -> dict[str, Any]:
    _extension(ctx, principal, tenant, number)
    target = normalise_target(body.target)  # '(202) 555-0143' as people write it
    source = f"{principal.name}@{client_ip(request)}"
    ctx.guard.reconfigure(with_stored(ctx.config.guard, ctx.store.policies()))
    decision = judge_target(
        ctx.guard,
        tenant,
        number,
        target,
        ctx.store.tenant_country(tenant),
        ctx.store.is_internal_target(tenant, target),
        source,
        time.time(),
    )
    if not decision.allow:
        reason = "; ".join(decision.reasons)
        ctx.store.record_forwarding_refused(
            tenant, number, kind, target, "api", source, reason, time.time()
        )
        raise HTTPException(422, f"forwarding refused: {reason}")
    old = ctx.store.set_forwarding(
        tenant, number, kind, target, "api", source, time.time(), body.ring_time
    )
    audit(
        request,
        principal,
        "forwarding.set",
        f"tenant/{tenant}/extension/{number}/{kind}",
        {kind: old},
        {kind: target, "ring_time": body.ring_time},
        tenant,
    )
    return _forwarding(ctx, tenant, number)


@router.delete(
    "/tenants/{tenant}/extensions/{number}/forwarding/{kind}",
    response_model=ForwardingOut,
    tags=["forwarding"],
)
def clear_forwarding(
    tenant: TenantPath,
    number: NumberPath,
    kind: Annotated[str, Path(pattern="^(always|busy|noanswer|all)$")],
    request: Request,
    ctx: Ctx,
    principal: Operator,
) -> dict[str, Any]:
    """Clear one kind of forwarding, or every kind with ``all``."""
    _extension(ctx, principal, tenant, number)
    source = f"{principal.name}@{client_ip(request)}"
    before: dict[str, str | None] = {}
    after: dict[str, str | None] = {}
    for k in KINDS if kind == "all" else (kind,):
        before[k] = ctx.store.set_forwarding(tenant, number, k, None, "api", source, time.time())
        after[k] = None
    audit(
        request,
        principal,
        "forwarding.clear",
        f"tenant/{tenant}/extension/{number}/{kind}",
        before,
        after,
        tenant,
    )
    return _forwarding(ctx, tenant, number)


# -- trunks and DIDs -------------------------------------------------------------------


def _visible_rows(
    principal: Principal, tenant: str | None, rows: Callable[[], list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """The rows of the tenants the caller may see (and asked for)."""
    visible, tenant = tenant_filter(principal, tenant)
    if not visible:
        return []
    return [r for r in rows() if tenant in (None, r["tenant"])]


@router.get("/trunks", response_model=list[TrunkOut], tags=["trunks"])
def list_trunks(ctx: Ctx, principal: Reader, tenant: TenantQuery = None) -> list[dict[str, Any]]:
    return _visible_rows(principal, tenant, ctx.store.list_trunks)


@router.post("/tenants/{tenant}/trunks", response_model=TrunkOut, status_code=201, tags=["trunks"])
def create_trunk(
    tenant: TenantPath, body: TrunkIn, request: Request, ctx: Ctx, principal: Admin
) -> dict[str, Any]:
    """Provider admins only: a trunk's host is trusted for inbound calls and volume, so a
    tenant admin who could name any host could make another tenant's phone at that address
    look like a carrier, or its own address unbannable."""
    visible_tenant(ctx, principal, tenant)
    if principal.tenant is not None:
        raise HTTPException(
            403,
            "trunks belong to the provider: only an admin not bound to a tenant may add or "
            "change one; ask your provider",
        )
    secret: bytes | None = getattr(request.app.state, "secret", None)
    password = body.password.get_secret_value() if body.password is not None else None
    if password is not None and secret is None:
        raise HTTPException(503, "trunk passwords need the install secret (serve --http)")
    ctx.store.add_trunk(
        tenant,
        body.name,
        body.host,
        body.port,
        body.transport,
        body.prefixes,
        username=body.username,
        password=password,
        realm=body.realm,
        register=body.keep_registered,
        register_expires=body.register_expires,
        credential_key=trunk_credential_key(secret) if secret is not None else None,
        emergency=body.emergency,
        inbound_from=body.inbound_from,
    )
    row = next(
        r for r in ctx.store.list_trunks() if r["tenant"] == tenant and r["name"] == body.name
    )
    audit(
        request, principal, "trunk.create", f"tenant/{tenant}/trunk/{body.name}", None, row, tenant
    )
    return row


@router.get("/dids", response_model=list[DidOut], tags=["dids"])
def list_dids(ctx: Ctx, principal: Reader, tenant: TenantQuery = None) -> list[dict[str, Any]]:
    return _visible_rows(principal, tenant, ctx.store.list_dids)


@router.post("/tenants/{tenant}/dids", response_model=DidOut, status_code=201, tags=["dids"])
def create_did(
    tenant: TenantPath, body: DidIn, request: Request, ctx: Ctx, principal: Admin
) -> dict[str, Any]:
    visible_tenant(ctx, principal, tenant)
    e164 = ctx.store.add_did(body.number, tenant, body.extension)
    row = {"number": e164, "tenant": tenant, "extension": body.extension}
    audit(request, principal, "did.create", f"tenant/{tenant}/did/{e164}", None, row, tenant)
    return row
