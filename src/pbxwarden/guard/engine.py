"""The fraud guard: authorizes every costly call attempt, with reasons a person can read.

Pure logic behind the :class:`pbxwarden.pbx.policy.CallAuthorizer` hook: a decision
depends on the attempt, the tenant's policy and the guard's own counters (calls in
progress, recent attempts), all in memory here; the clock is the attempt's time.

Rules, in order (the first that refuses decides):
1. the destination must be a valid number;
2. the tenant's deny list, then its allow list (an allowed prefix skips 3-5);
3. international calls only to countries the tenant allows;
4. premium-rate, shared-cost and other special numbers only if allowed;
5. destinations on the bundled high-risk list (revenue-share fraud) only if allowed;
6. calls in progress per tenant and per extension below their limits;
7. attempts per minute and per hour per extension below their limits.
"""

from __future__ import annotations

import tomllib
from collections import deque
from dataclasses import dataclass, field
from importlib import resources

from pydantic import BaseModel, ConfigDict, Field

from pbxwarden.pbx.numbers import Destination
from pbxwarden.pbx.policy import NATIONAL_ALLOWED, CallAttempt, Decision

COSTLY_KINDS = ("external", "forwarded", "forward-change")


class TenantPolicy(BaseModel):
    """What a tenant's extensions may call. Closed by default."""

    model_config = ConfigDict(extra="forbid")

    allow_countries: list[str] = Field([], description="ISO codes callable besides home")
    allow_special: list[str] = Field(
        [], description="special number types allowed, e.g. premium-rate, shared-cost"
    )
    allow_high_risk: bool = Field(False, description="allow destinations on the high-risk list")
    allow_prefixes: list[str] = Field([], description="E.164 prefixes always allowed")
    deny_prefixes: list[str] = Field([], description="E.164 prefixes always refused")
    max_concurrent_calls: int = Field(10, ge=0, description="costly calls at once, per tenant")
    max_concurrent_per_extension: int = Field(2, ge=0)
    calls_per_minute: int = Field(6, ge=0, description="costly attempts per extension")
    calls_per_hour: int = Field(60, ge=0)


class GuardConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default: TenantPolicy = TenantPolicy()
    tenants: dict[str, TenantPolicy] = {}

    def for_tenant(self, tenant: str) -> TenantPolicy:
        return self.tenants.get(tenant, self.default)


@dataclass(frozen=True, slots=True)
class RiskEntry:
    prefix: str
    name: str


def load_high_risk() -> list[RiskEntry]:
    """The bundled list (``guard/data/high_risk.toml``), longest prefixes first."""
    text = resources.files("pbxwarden.guard").joinpath("data/high_risk.toml").read_text()
    entries = [RiskEntry(d["prefix"], d["name"]) for d in tomllib.loads(text)["destination"]]
    return sorted(entries, key=lambda e: len(e.prefix), reverse=True)


def _longest(prefixes: list[str], e164: str) -> str | None:
    matches = [p for p in prefixes if e164.startswith(p)]
    return max(matches, key=len) if matches else None


@dataclass
class _Counters:
    active: dict[int, tuple[str, str]] = field(default_factory=dict)  # ref -> (tenant, ext)
    recent: dict[tuple[str, str], deque[float]] = field(default_factory=dict)


class Guard:
    def __init__(
        self, config: GuardConfig | None = None, high_risk: list[RiskEntry] | None = None
    ) -> None:
        self.config = config or GuardConfig()
        self.high_risk = high_risk if high_risk is not None else load_high_risk()
        self._c = _Counters()

    # -- the hook ------------------------------------------------------------------------

    def authorize(self, attempt: CallAttempt) -> Decision:
        if attempt.kind == "internal":
            return Decision(True, ("internal call between extensions",))
        if attempt.kind == "inbound":
            return Decision(True, ("inbound call to a DID",))
        policy = self.config.for_tenant(attempt.tenant)
        refusal = self._destination(policy, attempt.dialed, attempt.destination)
        if isinstance(refusal, Decision):
            return refusal
        if attempt.kind != "forward-change":
            limit = self._limits(policy, attempt)
            if limit is not None:
                return limit
            self._c.recent.setdefault((attempt.tenant, attempt.extension), deque()).append(
                attempt.at
            )
        return Decision(True, tuple(refusal))

    def _destination(
        self, policy: TenantPolicy, dialed: str, dest: Destination | None
    ) -> Decision | list[str]:
        if dest is None or not dest.valid:
            return Decision(False, (f"{dialed!r} is not a valid telephone number",), 404)
        denied = _longest(policy.deny_prefixes, dest.e164)
        if denied:
            return Decision(False, (f"{dest.e164} matches {denied}, on the tenant's deny list",))
        allowed = _longest(policy.allow_prefixes, dest.e164)
        if allowed:
            return [f"{dest.e164} matches {allowed}, on the tenant's allow list"]
        reasons = []
        if not dest.national:
            if dest.country not in policy.allow_countries:
                return Decision(
                    False,
                    (
                        f"international call to {dest.e164} ({dest.country}) is not allowed: "
                        "add the country to the tenant's allow_countries if it is expected",
                    ),
                )
            reasons.append(f"calls to {dest.country} are allowed")
        if dest.number_type not in NATIONAL_ALLOWED and dest.number_type not in (
            policy.allow_special
        ):
            return Decision(
                False, (f"{dest.number_type} number {dest.e164} is not allowed by the policy",)
            )
        risk = next((r for r in self.high_risk if dest.e164.startswith(r.prefix)), None)
        if risk is not None and not policy.allow_high_risk:
            return Decision(
                False,
                (
                    f"{dest.e164} is in {risk.name} ({risk.prefix}), a high-risk destination "
                    "for revenue-share fraud",
                ),
            )
        reasons.append(
            f"{'national' if dest.national else 'international'} {dest.number_type} number"
        )
        return reasons

    def _limits(self, policy: TenantPolicy, attempt: CallAttempt) -> Decision | None:
        active = self._c.active.values()
        tenant_calls = sum(1 for t, _ in active if t == attempt.tenant)
        if tenant_calls >= policy.max_concurrent_calls:
            return Decision(
                False,
                (
                    f"tenant {attempt.tenant} already has {tenant_calls} costly calls in progress "
                    f"(limit {policy.max_concurrent_calls})",
                ),
                486,
            )
        ext_calls = sum(1 for t, e in active if (t, e) == (attempt.tenant, attempt.extension))
        if ext_calls >= policy.max_concurrent_per_extension:
            return Decision(
                False,
                (
                    f"extension {attempt.extension} already has {ext_calls} costly calls in "
                    f"progress (limit {policy.max_concurrent_per_extension})",
                ),
                486,
            )
        recent = self._c.recent.get((attempt.tenant, attempt.extension))
        if recent:
            while recent and recent[0] <= attempt.at - 3600:
                recent.popleft()
            last_minute = sum(1 for t in recent if t > attempt.at - 60)
            if last_minute >= policy.calls_per_minute:
                return Decision(
                    False,
                    (
                        f"extension {attempt.extension} made {last_minute} costly calls in the "
                        f"last minute (limit {policy.calls_per_minute})",
                    ),
                )
            if len(recent) >= policy.calls_per_hour:
                return Decision(
                    False,
                    (
                        f"extension {attempt.extension} made {len(recent)} costly calls in the "
                        f"last hour (limit {policy.calls_per_hour})",
                    ),
                )
        return None

    # -- call life cycle (concurrency) ---------------------------------------------------

    def on_call_start(self, attempt: CallAttempt, ref: int) -> None:
        if attempt.kind in COSTLY_KINDS:
            self._c.active[ref] = (attempt.tenant, attempt.extension)

    def on_call_end(self, ref: int) -> None:
        self._c.active.pop(ref, None)
