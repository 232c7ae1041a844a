"""The security audit over HTTP: ``GET /api/v1/security-audit``.

The same findings as ``pbxwarden audit`` (``/api/v1/audit`` is the audit *log*). Admin
role only: the findings are a map of the PBX's weak spots. A tenant-bound caller gets
its tenant's findings and none of the server-wide ones (listeners, firewall, other
tenants' admins), which are not its business and would describe the platform to it.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from pbxwarden.api.security import API_PREFIX, Admin, Ctx
from pbxwarden.audit import Finding, Severity, at_least, run_audit

router = APIRouter(prefix=API_PREFIX)


@router.get(
    "/security-audit",
    response_model=list[Finding],
    tags=["security audit"],
    summary="Weaknesses that invite toll fraud, most severe first, each with its fix",
)
async def security_audit(
    request: Request,
    ctx: Ctx,
    principal: Admin,
    min_severity: Annotated[
        Severity, Query(description="only findings at least this severe")
    ] = "low",
) -> list[Finding]:
    secret: bytes | None = getattr(request.app.state, "secret", None)
    # hashes every extension's HA1 against the guess list: off the event loop
    findings = await run_in_threadpool(run_audit, ctx.config, ctx.store, ctx.admin, secret)
    return [
        f
        for f in findings
        if at_least(f.severity, min_severity)
        and (principal.tenant is None or f.tenant == principal.tenant)
    ]
