"""The admin API application: routes, the front door every request passes, error shapes.

The front door (an ASGI middleware, outside everything else) refuses addresses outside
``http.admin_networks`` before any other work, caps request bodies, adds the security
headers to every answer (errors included), counts requests for /metrics, and writes a
fallback audit entry should a successful change ever reach it unaudited.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pbxwarden.api import (
    routes_audit,
    routes_auth,
    routes_caller_id,
    routes_cluster,
    routes_events,
    routes_groups,
    routes_hours,
    routes_locks,
    routes_ops,
    routes_pbx,
    routes_policy,
)
from pbxwarden.api.docs import mount as mount_docs
from pbxwarden.api.metrics import HttpMetrics, make_registry
from pbxwarden.api.models import ErrorOut, Health
from pbxwarden.api.security import (
    AUDITED_KEY,
    PRINCIPAL_KEY,
    SAFE_METHODS,
    ApiContext,
    Control,
    IPNetwork,
    LiveControl,
    Principal,
    Reader,
    address_allowed,
    parse_networks,
    require_global,
)
from pbxwarden.config import Config
from pbxwarden.events import EventBus
from pbxwarden.guard.engine import Guard
from pbxwarden.store.admin import AdminStore
from pbxwarden.store.db import Store, StoreError
from pbxwarden.web import mount as mount_dashboard

log = structlog.get_logger("pbxwarden.api")

MAX_BODY = 64 * 1024
METHODS = frozenset({"GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"})
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
SECURITY_HEADERS = (
    ("content-security-policy", API_CSP),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
    ("permissions-policy", "camera=(), microphone=(), geolocation=()"),
)
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (400, 401, 403, 404, 409, 422, 429, 503)
}


def _json_message(status: int, detail: str) -> tuple[Message, Message]:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS]
    return (
        {"type": "http.response.start", "status": status, "headers": headers},
        {"type": "http.response.body", "body": body},
    )


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None when it is larger than MAX_BODY."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b""  # the client went away; the app will see the same
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


class FrontDoor:
    """Pure ASGI, so that it also sees (and decorates) answers to failed requests."""

    def __init__(
        self,
        app: ASGIApp,
        networks: tuple[IPNetwork, ...],
        metrics: HttpMetrics,
        admin: AdminStore,
        clock: Callable[[], float],
    ) -> None:
        self.app = app
        self.networks = networks
        self.metrics = metrics
        self.admin = admin
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        host = client[0] if client else ""
        method: str = scope["method"] if scope["method"] in METHODS else "other"
        if not address_allowed(host, self.networks):
            log.warning("admin API request from outside admin_networks", source=host)
            await self._answer(send, 403, "forbidden: this address may not use the admin API")
            self.metrics.requests.labels("denied", method, "403").inc()
            return
        length = next((v for k, v in scope["headers"] if k == b"content-length"), b"0")
        if not length.isdigit() or int(length) > MAX_BODY:
            await self._answer(send, 413, f"request body too large (at most {MAX_BODY} bytes)")
            self.metrics.requests.labels("unmatched", method, "413").inc()
            return
        status = 500
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = int(message["status"])
                message.setdefault("headers", [])
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS:
                    if name not in headers:
                        headers[name] = value
            await send(message)

        if any(k == b"transfer-encoding" for k, _ in scope["headers"]):
            # a chunked body carries no Content-Length: read it (bounded) before the app
            buffered = await _read_body(receive)
            if buffered is None:
                await self._answer(send, 413, f"request body too large (at most {MAX_BODY} bytes)")
                self.metrics.requests.labels("unmatched", method, "413").inc()
                return
            receive = _replay(buffered, receive)
        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            log.exception("admin API request failed", method=method, path=scope.get("path"))
            if started:
                raise
            await self._answer(send, 500, "internal error (logged on the server)")
            status = 500
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(template, method, str(status)).inc()
        if method not in SAFE_METHODS and 200 <= status < 400 and not scope.get(AUDITED_KEY):
            principal = scope.get(PRINCIPAL_KEY)
            if isinstance(principal, Principal):
                log.error("unaudited change; writing a fallback entry", path=scope.get("path"))
                await run_in_threadpool(
                    self.admin.audit,
                    principal.name,
                    host,
                    f"{method} {template}"[:64],
                    str(scope.get("path", "")),
                    None,
                    None,
                    principal.tenant,
                    self.clock(),
                )

    @staticmethod
    async def _answer(send: Send, status: int, detail: str) -> None:
        start, body = _json_message(status, detail)
        await send(start)
        await send(body)


def _store_error_status(message: str) -> int:
    lowered = message.lower()
    if lowered.startswith(("no ", "unknown ")) or "never registered" in lowered:
        return 404
    if "already" in lowered:
        return 409
    return 400


def _readable(exc: RequestValidationError) -> JSONResponse:
    errors = []
    parts = []
    for err in exc.errors()[:20]:
        loc = [p if isinstance(p, int) else str(p) for p in err.get("loc", ())]
        msg = str(err.get("msg", "invalid"))
        errors.append({"loc": loc, "msg": msg, "type": str(err.get("type", ""))})  # no input echo
        parts.append(f"{'.'.join(str(p) for p in loc)}: {msg}")
    detail = "invalid request: " + "; ".join(parts) if parts else "invalid request"
    return JSONResponse({"detail": detail, "errors": errors}, status_code=422)


def create_app(
    store: Store,
    config: Config,
    control: Control | None = None,
    clock: Callable[[], float] = time.time,
    secret: bytes | None = None,
    events: EventBus | None = None,
    live: LiveControl | None = None,
) -> FastAPI:
    """The admin API over ``store``; ``control`` answers live-call questions (the running
    SIP server's :meth:`~pbxwarden.server.SipServer.control`), None when not running;
    ``secret`` (the install secret) lets it fingerprint the SIP passwords it sets;
    ``live`` (the server's :meth:`~pbxwarden.server.SipServer.control_async`) lists and
    ends calls on every node of a cluster."""
    registry, metrics = make_registry(store)
    admin = AdminStore(store)
    ctx = ApiContext(store, admin, config, control, clock, Guard(config.guard), metrics, live)
    app = FastAPI(
        title="pbxwarden admin API",
        version="1",
        description=(
            "Administer a pbxwarden PBX. Authenticate with `Authorization: Bearer pbxw_...` "
            "(API token) or log in (session cookie; send the returned CSRF token as "
            "`X-CSRF-Token` with every POST, PUT and DELETE)."
        ),
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.ctx = ctx
    app.state.registry = registry
    app.state.admin_store = admin
    app.state.secret = secret  # the install secret: SIP password fingerprints
    app.state.events = events  # the running server's live events (GET /api/v1/events)

    @app.exception_handler(StoreError)
    async def _store_error(_request: Request, exc: StoreError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=_store_error_status(str(exc)))

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def _database_down(_request: Request, _exc: Exception) -> JSONResponse:
        return JSONResponse(
            {
                "detail": "the database is unreachable: nothing was changed; configuration "
                "changes are refused until it is back (calls go on, and their CDRs are kept "
                "on the node's disk and written later)"
            },
            status_code=503,
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return _readable(exc)

    for router in (
        routes_auth.router,
        routes_pbx.router,
        routes_locks.router,
        routes_caller_id.router,
        routes_groups.router,
        routes_hours.router,
        routes_ops.router,
        routes_audit.router,
        routes_events.router,
        routes_policy.router,
        routes_cluster.router,
    ):
        app.include_router(router, responses=ERROR_RESPONSES)

    @app.get("/healthz", response_model=Health, tags=["health"], responses={503: {"model": Health}})
    def healthz() -> Any:
        """Unauthenticated: is the database reachable?"""
        try:
            with store.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception:
            log.exception("health check: database unreachable")
            return JSONResponse(
                {"status": "unavailable", "detail": "database unreachable"}, status_code=503
            )
        return {"status": "ok", "detail": None}

    @app.get(
        "/metrics",
        tags=["health"],
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
    )
    def prometheus(principal: Reader) -> Response:
        """Prometheus text format; needs a credential that is not bound to a tenant."""
        require_global(principal, "metrics")
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    mount_docs(app)  # Swagger UI at /docs, from installed files (no CDN)
    mount_dashboard(app)  # the web dashboard at /ui/, behind the same front door

    app.add_middleware(
        FrontDoor,
        networks=parse_networks(config.http.admin_networks),
        metrics=metrics,
        admin=admin,
        clock=clock,
    )
    return app
