"""The provider's ceiling on what a tenant admin may open in the tenant's own policy.

A tenant's admin knows where its staff call, so the API lets it set its guard policy.
But the provider pays the carrier: a tenant admin (or whoever stole that login) who
could allow premium-rate numbers, high-risk destinations or a spend cap of a million
would turn the provider's trunks into the attacker's. So a tenant-bound admin's policy
must stay within ``[provider]`` of the configuration; the provider's own admins (not
bound to a tenant) and the local CLI are not bounded by it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from pbxwarden.guard.policy import PolicyOverride, TenantPolicy


class ProviderCeiling(BaseModel):
    """``[provider]``: the most a tenant admin may open. Defaults: what a careful provider
    allows a small company (national and allowed countries, no premium rate)."""

    model_config = ConfigDict(extra="forbid")

    allow_special: list[str] = Field(
        [],
        description="special number types a tenant admin may allow (e.g. shared-cost); "
        "premium-rate only if listed here",
    )
    allow_high_risk: bool = Field(False, description="may a tenant admin allow high-risk ones")
    allow_international_forwarding: bool = Field(
        True, description="may a tenant admin allow diversions abroad"
    )
    max_spend_per_hour: float = Field(100.0, ge=0, description="per extension")
    max_spend_per_day: float = Field(500.0, ge=0, description="per extension")
    max_tenant_spend_per_day: float = Field(2000.0, ge=0)
    max_concurrent_calls: int = Field(50, ge=0, description="costly calls at once per tenant")
    max_calls_per_hour: int = Field(600, ge=0, description="per extension")
    max_call_minutes: float = Field(480.0, gt=0)
    # the guard's own knobs: turning them down is opening the door as surely as a cap
    allow_report_only: bool = Field(
        False, description="may a tenant admin put fraud rules in report-only mode"
    )
    max_learning_days: float = Field(30.0, ge=0, description="longest learning period")
    max_block_score: int = Field(90, ge=1, le=100, description="highest anomaly block score")
    allow_no_suspension: bool = Field(
        False, description="may a tenant admin turn off suspension on corroborated fraud"
    )


def violations(policy: TenantPolicy, ceiling: ProviderCeiling) -> list[str]:
    """What in ``policy`` (including its per-extension and after-hours overrides) goes
    beyond the ceiling, one sentence each; empty when it stays within."""
    out: list[str] = []
    layers: list[tuple[str, TenantPolicy | PolicyOverride]] = [("", policy)]
    if policy.after_hours is not None:
        layers.append(("after_hours.", policy.after_hours))
    layers += [(f"extensions.{n}.", o) for n, o in sorted(policy.extensions.items())]
    for where, layer in layers:
        special = layer.allow_special or []
        for kind in special:
            if kind not in ceiling.allow_special:
                out.append(f"{where}allow_special: {kind} is not for tenant admins to open")
        if layer.allow_high_risk and not ceiling.allow_high_risk:
            out.append(f"{where}allow_high_risk: high-risk destinations stay closed")
        if layer.allow_international_forwarding and not ceiling.allow_international_forwarding:
            out.append(f"{where}allow_international_forwarding is not for tenant admins")
        for key, limit in (
            ("spend_per_hour", ceiling.max_spend_per_hour),
            ("spend_per_day", ceiling.max_spend_per_day),
            ("calls_per_hour", ceiling.max_calls_per_hour),
            ("max_call_minutes", ceiling.max_call_minutes),
        ):
            value = getattr(layer, key)
            if value is not None and value > limit:
                out.append(f"{where}{key} {value:g} is above the provider's maximum of {limit:g}")
    for key, limit in (
        ("tenant_spend_per_day", ceiling.max_tenant_spend_per_day),
        ("max_concurrent_calls", ceiling.max_concurrent_calls),
        ("learning_days", ceiling.max_learning_days),
        ("block_score", ceiling.max_block_score),
    ):
        value = getattr(policy, key)
        if value > limit:
            out.append(f"{key} {value:g} is above the provider's maximum of {limit:g}")
    if policy.report_only and not ceiling.allow_report_only:
        out.append("report_only: only the provider may switch fraud rules to report-only")
    if not policy.suspend_on_critical and not ceiling.allow_no_suspension:
        out.append("suspend_on_critical: only the provider may turn off suspension")
    return out
