"""Who is asking, and what they may do: the admin API's authentication and authorisation.

Two kinds of credentials: a browser session (HttpOnly cookie plus a CSRF token for every
unsafe request) and a bearer API token. Either gives a role (read-only < operator <
admin) and maybe a tenant: a tenant-bound caller sees only that tenant, and other
tenants' resources answer exactly like resources that do not exist.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from pbxwarden.api.metrics import HttpMetrics
from pbxwarden.config import Config
from pbxwarden.guard.engine import Guard
from pbxwarden.store.admin import RANK, AdminStore, sha256_hex
from pbxwarden.store.db import Store, StoreError

API_PREFIX = "/api/v1"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
AUDITED_KEY = "pbxwarden.audited"
PRINCIPAL_KEY = "pbxwarden.principal"
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

Control = Callable[[dict[str, Any]], dict[str, Any]]
# live calls in a cluster: every node's, ended wherever they are (server_control.py)
LiveControl = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass
class ApiContext:
    """Everything a request handler needs, on ``app.state.ctx``."""

    store: Store
    admin: AdminStore
    config: Config
    control: Control | None
    clock: Callable[[], float]
    guard: Guard
    metrics: HttpMetrics
    live: LiveControl | None = None

    @property
    def cookie_name(self) -> str:
        # __Host-: the browser refuses it unless Secure, Path=/ and no Domain
        return "__Host-pbxw_session" if self.config.http.cookie_secure else "pbxw_session"


@dataclass(frozen=True, slots=True)
class Principal:
    kind: Literal["session", "token"]
    name: str  # for the audit log: "alice" or "alice/token:ci#3"
    role: str
    tenant: str | None
    admin_username: str
    token_id: int | None = None

    def at_least(self, role: str) -> bool:
        return RANK[self.role] >= RANK[role]


def get_ctx(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx


def parse_networks(networks: Sequence[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(n, strict=False) for n in networks)


def address_allowed(host: str, networks: tuple[IPNetwork, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in networks)


def client_ip(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


_bearer = HTTPBearer(auto_error=False, description="an API token: pbxw_...")


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


def authenticate(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller, from a bearer token or a session cookie (with CSRF check)."""
    ctx = get_ctx(request)
    now = ctx.clock()
    principal: Principal
    if request.headers.get("authorization") is not None:
        if credentials is None:
            raise _unauthorized("use 'Authorization: Bearer pbxw_...'")
        token = ctx.admin.token_info(credentials.credentials, now)
        if token is None:
            raise _unauthorized("invalid, expired or revoked token")
        principal = Principal(
            "token",
            f"{token.owner.username}/token:{token.name}#{token.id}",
            token.scope,
            token.tenant,
            token.owner.username,
            token.id,
        )
    else:
        sid = request.cookies.get(ctx.cookie_name)
        if not sid or len(sid) > 128:
            raise _unauthorized("authentication required: log in or send an API token")
        found = ctx.admin.session_admin(sid, now)
        if found is None:
            raise _unauthorized("session expired or invalid: log in again")
        admin, csrf_hash, _ = found
        if request.method not in SAFE_METHODS:
            sent = request.headers.get("x-csrf-token", "")
            if not hmac.compare_digest(sha256_hex(sent), csrf_hash):
                raise HTTPException(403, "missing or wrong X-CSRF-Token header")
        principal = Principal("session", admin.username, admin.role, admin.tenant, admin.username)
    request.scope[PRINCIPAL_KEY] = principal
    return principal


def _requirer(minimum: str) -> Callable[..., Principal]:
    def require(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        if not principal.at_least(minimum):
            raise HTTPException(
                403, f"your role ({principal.role}) does not allow this: {minimum} needed"
            )
        return principal

    return require


Reader = Annotated[Principal, Depends(_requirer("read-only"))]
Operator = Annotated[Principal, Depends(_requirer("operator"))]
Admin = Annotated[Principal, Depends(_requirer("admin"))]
Ctx = Annotated[ApiContext, Depends(get_ctx)]


def require_global(principal: Principal, what: str) -> None:
    """Server-wide state (bans, metrics, tenants) is not for tenant-bound callers."""
    if principal.tenant is not None:
        raise HTTPException(403, f"{what} is server-wide: a tenant-bound credential cannot")


def tenant_filter(principal: Principal, requested: str | None) -> tuple[bool, str | None]:
    """(anything visible, tenant to filter on) for a list request."""
    if principal.tenant is None:
        return True, requested
    if requested is not None and requested != principal.tenant:
        return False, None
    return True, principal.tenant


def visible_tenant(ctx: ApiContext, principal: Principal, tenant: str) -> None:
    """404 for a tenant that does not exist and, identically, for another tenant's."""
    if principal.tenant is not None and principal.tenant != tenant:
        raise StoreError(f"unknown tenant {tenant!r}")
    ctx.store.tenant_realm(tenant)  # raises the same StoreError when it does not exist


def audit(
    request: Request,
    principal: Principal,
    action: str,
    resource: str,
    before: Any = None,
    after: Any = None,
    tenant: str | None = None,
) -> None:
    """Record a change (call from a worker thread: this writes to the database)."""
    ctx = get_ctx(request)
    ctx.admin.audit(
        principal.name, client_ip(request), action, resource, before, after, tenant, ctx.clock()
    )
    request.scope[AUDITED_KEY] = True


async def audit_async(
    request: Request,
    principal: Principal,
    action: str,
    resource: str,
    before: Any = None,
    after: Any = None,
    tenant: str | None = None,
) -> None:
    await run_in_threadpool(audit, request, principal, action, resource, before, after, tenant)
