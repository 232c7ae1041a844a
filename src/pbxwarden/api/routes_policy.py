"""A tenant's fraud-guard policy over HTTP: read the one in force, replace it, or go
back to the configuration file's; see what its rules in report-only would have refused,
and promote a rule to enforcing.

The policy is validated whole by the guard's own model (`TenantPolicy`), so the API
accepts exactly what the configuration file accepts; a running server applies a
change within a second.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Request
from pydantic import BaseModel

from pbxwarden.api.models import TENANT_PATTERN
from pbxwarden.api.security import API_PREFIX, Admin, Ctx, Reader, audit, visible_tenant
from pbxwarden.guard.baseline import DAY
from pbxwarden.guard.ceiling import violations
from pbxwarden.guard.policy import REPORTABLE_RULES, TenantPolicy

router = APIRouter(prefix=API_PREFIX)
TenantPath = Annotated[str, Path(pattern=TENANT_PATTERN, description="tenant name")]
RulePath = Annotated[
    Literal["anomaly", "drip", "wangiri", "range", "recon"], Path(description="guard rule")
]
REPORT_ONLY = "report-only:"  # the rule of a "would have refused" alert: report-only:drip


class PolicyOut(BaseModel):
    tenant: str
    source: Literal["stored", "file", "default"]
    updated_at: float | None = None
    updated_by: str | None = None
    policy: TenantPolicy


def _current(ctx: Any, tenant: str) -> dict[str, Any]:
    stored = ctx.store.policies().get(tenant)
    if stored is not None:
        try:
            policy = TenantPolicy.model_validate(stored["policy"])
            return {
                "tenant": tenant,
                "source": "stored",
                "updated_at": stored["updated_at"],
                "updated_by": stored["updated_by"],
                "policy": policy,
            }
        except ValueError:
            pass  # an old stored policy that no longer validates: the file's is in force
    in_file = tenant in ctx.config.guard.tenants
    return {
        "tenant": tenant,
        "source": "file" if in_file else "default",
        "policy": ctx.config.guard.for_tenant(tenant),
    }


@router.get("/tenants/{tenant}/policy", response_model=PolicyOut, tags=["policies"])
def get_policy(tenant: TenantPath, ctx: Ctx, principal: Reader) -> dict[str, Any]:
    """The guard policy in force for the tenant, and where it comes from."""
    visible_tenant(ctx, principal, tenant)
    return _current(ctx, tenant)


@router.put("/tenants/{tenant}/policy", response_model=PolicyOut, tags=["policies"])
def put_policy(
    tenant: TenantPath, body: TenantPolicy, request: Request, ctx: Ctx, principal: Admin
) -> dict[str, Any]:
    """Replace the tenant's policy (every key; omitted ones take their defaults, which
    are closed: no international or premium dialling). A tenant's own admin gets 403
    for anything beyond the provider's ceiling (``[provider]`` in the configuration)."""
    visible_tenant(ctx, principal, tenant)
    if principal.tenant is not None:  # the tenant's own admin: within the provider's ceiling
        beyond = violations(body, ctx.config.provider)
        if beyond:
            raise HTTPException(403, "beyond what your provider allows: " + "; ".join(beyond[:10]))
    before = _current(ctx, tenant)["policy"].model_dump()
    after = body.model_dump(exclude_defaults=True)
    ctx.store.set_policy(tenant, after, principal.name)
    audit(request, principal, "policy.set", f"tenant/{tenant}/policy", before, after, tenant)
    return _current(ctx, tenant)


@router.delete("/tenants/{tenant}/policy", response_model=PolicyOut, tags=["policies"])
def delete_policy(tenant: TenantPath, request: Request, ctx: Ctx, principal: Admin) -> Any:
    """Forget the stored policy: the configuration file's (or the default) applies again."""
    visible_tenant(ctx, principal, tenant)
    before = _current(ctx, tenant)
    if ctx.store.delete_policy(tenant):
        audit(
            request,
            principal,
            "policy.delete",
            f"tenant/{tenant}/policy",
            before["policy"].model_dump(),
            None,
            tenant,
        )
    return _current(ctx, tenant)


class RuleMode(BaseModel):
    rule: str
    mode: Literal["report-only", "enforcing"]
    why: str
    would_have_refused: int  # occurrences in the alerts kept
    last_at: float | None = None


class ReportOnlyOut(BaseModel):
    tenant: str
    learning_days: float
    learning_until: float | None  # None: the tenant made no costly call yet
    rules: list[RuleMode]
    alerts: list[dict[str, Any]]  # the latest "would have refused" alerts


def _report_only(ctx: Any, tenant: str) -> dict[str, Any]:
    policy: TenantPolicy = _current(ctx, tenant)["policy"]
    base = ctx.store.load_baseline(tenant)
    first = base.get("first_at") if base else None
    until = float(first) + policy.learning_days * DAY if isinstance(first, int | float) else None
    learning = until is None or until > ctx.clock()
    alerts = [
        a
        for a in ctx.store.list_alerts(None, tenant, 0.0, 10_000)
        if a["rule"].startswith(REPORT_ONLY)
    ]
    rules = []
    for rule in REPORTABLE_RULES:
        mine = [a for a in alerts if a["rule"] == REPORT_ONLY + rule]
        reporting = policy.report_only_rule(rule, learning)
        if rule in policy.report_only:
            why = "listed in report_only"
        elif reporting:
            why = "the tenant is still learning (learning_days)"
        elif rule in policy.enforce:
            why = "promoted to enforcing"
        else:
            why = "enforcing by default"
        rules.append(
            {
                "rule": rule,
                "mode": "report-only" if reporting else "enforcing",
                "why": why,
                "would_have_refused": sum(a["count"] for a in mine),
                "last_at": max((a["last_at"] for a in mine), default=None),
            }
        )
    return {
        "tenant": tenant,
        "learning_days": policy.learning_days,
        "learning_until": until,
        "rules": rules,
        "alerts": alerts[:100],
    }


@router.get("/tenants/{tenant}/policy/report-only", response_model=ReportOnlyOut, tags=["policies"])
def get_report_only(tenant: TenantPath, ctx: Ctx, principal: Reader) -> dict[str, Any]:
    """Which guard rules only report for this tenant, and what they would have refused."""
    visible_tenant(ctx, principal, tenant)
    return _report_only(ctx, tenant)


@router.post(
    "/tenants/{tenant}/policy/enforce/{rule}", response_model=ReportOnlyOut, tags=["policies"]
)
def enforce_rule(
    tenant: TenantPath, rule: RulePath, request: Request, ctx: Ctx, principal: Admin
) -> dict[str, Any]:
    """Promote a rule to enforcing: it refuses from now on, learning period or not."""
    visible_tenant(ctx, principal, tenant)
    policy: TenantPolicy = _current(ctx, tenant)["policy"]
    before = policy.model_dump()
    data = policy.model_dump(exclude_defaults=True)
    data["report_only"] = [r for r in policy.report_only if r != rule]
    data["enforce"] = sorted({*policy.enforce, rule})
    after = TenantPolicy.model_validate(data).model_dump(exclude_defaults=True)
    ctx.store.set_policy(tenant, after, principal.name)
    audit(request, principal, "policy.enforce", f"tenant/{tenant}/policy", before, after, tenant)
    return _report_only(ctx, tenant)
