"""Logging in and out, admin accounts and API tokens.

Login answers the same 401 for an unknown user, a wrong password and a wrong or missing
TOTP code, after the same argon2 work; too many failures for a user name or from an
address give 429 with Retry-After before any password is checked.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, HTTPException, Path, Request, Response

from pbxwarden.api.models import (
    AdminCreated,
    AdminIn,
    AdminOut,
    LoginIn,
    LoginOut,
    OkOut,
    TokenCreated,
    TokenIn,
    TokenOut,
    WhoAmI,
)
from pbxwarden.api.security import (
    API_PREFIX,
    Admin,
    Ctx,
    Principal,
    Reader,
    audit,
    client_ip,
)
from pbxwarden.store.admin import RANK, AdminInfo
from pbxwarden.store.db import StoreError, generate_password

router = APIRouter(prefix=API_PREFIX)
log = structlog.get_logger("pbxwarden.api")


@router.post(
    "/auth/login",
    response_model=LoginOut,
    tags=["auth"],
    summary="Log in: sets the session cookie and returns the CSRF token",
)
def login(body: LoginIn, request: Request, response: Response, ctx: Ctx) -> dict[str, Any]:
    http = ctx.config.http
    now = ctx.clock()
    source = client_ip(request)
    wait = ctx.admin.login_retry_after(
        body.username,
        source,
        now,
        http.login_failure_limit,
        http.login_source_failure_limit,
        http.login_failure_window,
        http.lockout_seconds,
    )
    if wait > 0:
        ctx.metrics.login_failures.inc()
        log.warning("login refused: locked out", source=source)
        raise HTTPException(
            429,
            "too many failed logins: try again later",
            headers={"Retry-After": str(math.ceil(wait))},
        )
    admin = ctx.admin.verify_login(body.username, body.password, body.totp, now)
    ctx.admin.record_login(body.username, source, admin is not None, now)
    if admin is None:
        ctx.metrics.login_failures.inc()
        known = ctx.admin.get_admin(body.username)  # never log what may be a typed password
        log.warning(
            "login failed", source=source, user=known.username if known is not None else None
        )
        raise HTTPException(401, "invalid user name, password or code")
    sid, csrf = ctx.admin.create_session(admin.id, source, now, http.session_lifetime)
    response.set_cookie(
        ctx.cookie_name,
        sid,
        max_age=int(http.session_lifetime),
        path="/",
        secure=http.cookie_secure,
        httponly=True,
        samesite="strict",
    )
    principal = Principal("session", admin.username, admin.role, admin.tenant, admin.username)
    audit(request, principal, "auth.login", f"admin/{admin.username}", tenant=admin.tenant)
    log.info("login", user=admin.username, source=source)
    return {
        "username": admin.username,
        "role": admin.role,
        "tenant": admin.tenant,
        "csrf_token": csrf,
        "expires_at": now + http.session_lifetime,
    }


@router.post("/auth/logout", response_model=OkOut, tags=["auth"])
def logout(request: Request, response: Response, ctx: Ctx, principal: Reader) -> dict[str, Any]:
    """End the session (needs the X-CSRF-Token header like any cookie POST)."""
    if principal.kind != "session":
        raise HTTPException(400, "API tokens have no session: revoke the token instead")
    ctx.admin.delete_session(request.cookies.get(ctx.cookie_name, ""))
    response.delete_cookie(
        ctx.cookie_name,
        path="/",
        secure=ctx.config.http.cookie_secure,
        httponly=True,
        samesite="strict",
    )
    audit(request, principal, "auth.logout", f"admin/{principal.admin_username}")
    return {"ok": True}


@router.get("/auth/me", response_model=WhoAmI, tags=["auth"])
def whoami(principal: Reader) -> dict[str, Any]:
    return {
        "name": principal.name,
        "kind": principal.kind,
        "role": principal.role,
        "tenant": principal.tenant,
    }


# -- admins ----------------------------------------------------------------------------


def _own_tenant(principal: Principal, tenant: str | None) -> str | None:
    """A tenant-bound caller creates only within its tenant."""
    if principal.tenant is None:
        return tenant
    if tenant not in (None, principal.tenant):
        raise StoreError(f"unknown tenant {tenant!r}")
    return principal.tenant


def _not_above(principal: Principal, role: str) -> None:
    if RANK[role] > RANK[principal.role]:
        raise HTTPException(403, f"cannot grant {role}: above your own role ({principal.role})")


@router.get("/admins", response_model=list[AdminOut], tags=["admins"])
def list_admins(ctx: Ctx, principal: Admin) -> list[dict[str, Any]]:
    return ctx.admin.list_admins(principal.tenant)


@router.post(
    "/admins",
    response_model=AdminCreated,
    status_code=201,
    tags=["admins"],
    summary="Add an admin; a weak password is refused, an omitted one generated (shown once)",
)
def create_admin(body: AdminIn, request: Request, ctx: Ctx, principal: Admin) -> dict[str, Any]:
    _not_above(principal, body.role)
    tenant = _own_tenant(principal, body.tenant)
    password = body.password if body.password is not None else generate_password()
    info: AdminInfo = ctx.admin.add_admin(body.username, password, body.role, tenant, ctx.clock())
    row = next(a for a in ctx.admin.list_admins(tenant) if a["id"] == info.id)
    after = {"username": info.username, "role": info.role, "tenant": info.tenant}
    audit(request, principal, "admin.create", f"admin/{info.username}", None, after, tenant)
    return {**row, "password": password if body.password is None else None}


# -- API tokens ------------------------------------------------------------------------


@router.get("/tokens", response_model=list[TokenOut], tags=["tokens"])
def list_tokens(ctx: Ctx, principal: Admin) -> list[dict[str, Any]]:
    return ctx.admin.list_tokens(principal.tenant)


@router.post(
    "/tokens",
    response_model=TokenCreated,
    status_code=201,
    tags=["tokens"],
    summary="Create an API token owned by you; the token is returned once",
)
def create_token(body: TokenIn, request: Request, ctx: Ctx, principal: Admin) -> dict[str, Any]:
    _not_above(principal, body.scope)
    tenant = _own_tenant(principal, body.tenant)
    now = ctx.clock()
    expires = None if body.expires_days is None else now + body.expires_days * 86400
    info, token = ctx.admin.create_token(
        principal.admin_username, body.name, body.scope, tenant, expires, now
    )
    audit(request, principal, "token.create", f"token/{info['id']}", None, info, info["tenant"])
    return {**info, "token": token}


@router.delete("/tokens/{token_id}", response_model=TokenOut, tags=["tokens"])
def revoke_token(
    token_id: Annotated[int, Path(ge=1, le=2**62)], request: Request, ctx: Ctx, principal: Admin
) -> dict[str, Any]:
    before = ctx.admin.revoke_token(token_id, ctx.clock(), principal.tenant)
    after = {**before, "revoked_at": ctx.clock()}
    audit(request, principal, "token.revoke", f"token/{token_id}", before, after, before["tenant"])
    return after
