"""Guard policy: what a tenant's extensions may call, closed by default.

A tenant's policy can be narrowed (or widened) per extension and outside business
hours. The effective policy for (tenant, extension, in hours) is computed once and
cached, so a decision never merges dictionaries on the hot path.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pbxwarden.pbx.numbers import compile_pattern

# rules that can run report-only; the learned ones do while a tenant is learning
REPORTABLE_RULES = ("anomaly", "drip", "wangiri", "range", "recon")
LEARNED_RULES = ("anomaly", "drip")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WINDOW = re.compile(
    r"^(?P<d1>[a-z]{3})(?:-(?P<d2>[a-z]{3}))?\s+(?P<h1>\d{2}):(?P<m1>\d{2})-(?P<h2>\d{2}):(?P<m2>\d{2})$"
)


@dataclass(frozen=True, slots=True)
class Window:
    """Days of the week (0 = Monday) and minutes since midnight, end exclusive."""

    days: frozenset[int]
    start: int
    end: int

    def contains(self, weekday: int, minute: int) -> bool:
        return weekday in self.days and self.start <= minute < self.end


def parse_window(text: str) -> Window:
    """``"mon-fri 08:00-18:00"`` or ``"sat 09:00-13:00"``."""
    m = _WINDOW.match(text.strip().lower())
    if m is None:
        raise ValueError(f"business hours {text!r}: expected like 'mon-fri 08:00-18:00'")
    d1, d2 = m["d1"], m["d2"] or m["d1"]
    if d1 not in DAYS or d2 not in DAYS:
        raise ValueError(f"business hours {text!r}: days are {', '.join(DAYS)}")
    i, j = DAYS.index(d1), DAYS.index(d2)
    days = frozenset(range(i, j + 1)) if i <= j else frozenset([*range(i, 7), *range(0, j + 1)])
    start = int(m["h1"]) * 60 + int(m["m1"])
    end = int(m["h2"]) * 60 + int(m["m2"])
    if not (0 <= start < end <= 24 * 60) or int(m["m1"]) > 59 or int(m["m2"]) > 59:
        raise ValueError(f"business hours {text!r}: times must be 00:00-24:00, start before end")
    return Window(days, start, end)


class PolicyOverride(BaseModel):
    """Any subset of the policy's keys; unset keys keep the tenant's value."""

    model_config = ConfigDict(extra="forbid")

    allow_countries: list[str] | None = None
    allow_special: list[str] | None = None
    allow_high_risk: bool | None = None
    allow_prefixes: list[str] | None = None
    deny_prefixes: list[str] | None = None
    allow_international_forwarding: bool | None = None
    max_concurrent_per_extension: int | None = Field(None, ge=0)
    calls_per_minute: int | None = Field(None, ge=0)
    calls_per_hour: int | None = Field(None, ge=0)
    same_prefix_calls: int | None = Field(None, ge=0)
    spend_per_hour: float | None = Field(None, ge=0)
    spend_per_day: float | None = Field(None, ge=0)
    max_call_minutes: float | None = Field(None, gt=0)


class TenantPolicy(BaseModel):
    """What a tenant's extensions may call, and how much. Closed by default."""

    model_config = ConfigDict(extra="forbid")

    # destinations
    allow_countries: list[str] = Field([], description="ISO codes callable besides home")
    allow_special: list[str] = Field(
        [], description="special number types allowed, e.g. premium-rate, shared-cost"
    )
    allow_high_risk: bool = Field(False, description="allow destinations on the high-risk list")
    allow_prefixes: list[str] = Field([], description="E.164 prefixes always allowed")
    deny_prefixes: list[str] = Field([], description="E.164 prefixes always refused")
    premium_ranges: list[str] = Field(
        [],
        description="costly ranges of this tenant's carriers, treated as premium rate like "
        "the bundled ones: dialplan patterns such as +1NXX976XXXX (X 0-9, Z 1-9, N 2-9)",
    )
    allow_international_forwarding: bool = Field(
        False, description="diversions to international numbers (set or followed)"
    )
    # limits: the limit refuses; warn_at * limit raises a warning alert first
    max_concurrent_calls: int = Field(10, ge=0, description="costly calls at once, per tenant")
    max_concurrent_per_extension: int = Field(2, ge=0)
    calls_per_minute: int = Field(6, ge=0, description="costly attempts per extension")
    calls_per_hour: int = Field(60, ge=0)
    same_prefix_calls: int = Field(
        5, ge=0, description="international/special calls to one prefix per 10 minutes"
    )
    spend_per_hour: float = Field(20.0, ge=0, description="estimated spend per extension")
    spend_per_day: float = Field(100.0, ge=0)
    tenant_spend_per_day: float = Field(500.0, ge=0)
    max_call_minutes: float = Field(240.0, gt=0, description="costly calls are cut off after")
    warn_at: float = Field(0.8, gt=0, le=1, description="fraction of a limit that warns")
    # hours
    timezone: str = "UTC"
    business_hours: list[str] = Field(
        [], description="e.g. ['mon-fri 08:00-18:00']; empty: always business hours"
    )
    after_hours: PolicyOverride | None = None
    extensions: dict[str, PolicyOverride] = {}
    # anomaly scores (0-100) from learned behaviour
    alert_score: int = Field(50, ge=1, le=100, description="score that raises a warning")
    block_score: int = Field(80, ge=1, le=100, description="score that refuses the call")
    suspend_on_critical: bool = Field(
        True,
        description="corroborated fraud (two independent signs) suspends the extension "
        "until an admin resumes it",
    )
    # report-only: a rule that would refuse raises a "would have refused" alert instead
    learning_days: float = Field(
        7.0,
        ge=0,
        le=365,
        description="days from a tenant's first costly call in which the learned rules "
        "(anomaly, drip) only report",
    )
    report_only: list[str] = Field([], description="rules that only report, whatever the age")
    enforce: list[str] = Field([], description="rules enforcing even while learning")

    @field_validator("premium_ranges")
    @classmethod
    def _ranges(cls, value: list[str]) -> list[str]:
        for pattern in value:
            compile_pattern(pattern)  # ValueError names what is wrong
        return value

    @cached_property
    def premium_patterns(self) -> tuple[tuple[str, re.Pattern[str]], ...]:
        return tuple((p, compile_pattern(p)) for p in self.premium_ranges)

    @field_validator("report_only", "enforce")
    @classmethod
    def _rules(cls, value: list[str]) -> list[str]:
        for rule in value:
            if rule not in REPORTABLE_RULES:
                raise ValueError(
                    f"unknown rule {rule!r}: the rules are {', '.join(REPORTABLE_RULES)}"
                )
        return value

    def report_only_rule(self, rule: str, learning: bool) -> bool:
        """Whether ``rule`` reports instead of refusing for this tenant now."""
        if rule in self.report_only:
            return True
        return learning and rule in LEARNED_RULES and rule not in self.enforce

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @field_validator("business_hours")
    @classmethod
    def _hours(cls, value: list[str]) -> list[str]:
        for text in value:
            parse_window(text)
        return value

    @cached_property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @cached_property
    def windows(self) -> tuple[Window, ...]:
        return tuple(parse_window(t) for t in self.business_hours)

    def local(self, at: float) -> dt.datetime:
        return dt.datetime.fromtimestamp(at, self.zone)

    def in_business_hours(self, local: dt.datetime) -> bool:
        if not self.windows:
            return True
        minute = local.hour * 60 + local.minute
        weekday = local.weekday()
        return any(w.contains(weekday, minute) for w in self.windows)

    def merged(self, *overrides: PolicyOverride | None) -> TenantPolicy:
        update: dict[str, Any] = {}
        for override in overrides:
            if override is not None:
                update.update(override.model_dump(exclude_none=True))
        return self.model_copy(update=update) if update else self


class GuardConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default: TenantPolicy = TenantPolicy()
    tenants: dict[str, TenantPolicy] = {}
    rates_file: str | None = Field(
        None, description="TOML rate table replacing the bundled one (price per minute)"
    )

    def for_tenant(self, tenant: str) -> TenantPolicy:
        return self.tenants.get(tenant, self.default)


class PolicyBook:
    """Effective policies, cached per (tenant, extension, in business hours)."""

    def __init__(self, config: GuardConfig) -> None:
        self.config = config
        self._cache: dict[tuple[str, str, bool], TenantPolicy] = {}

    def tenant(self, tenant: str) -> TenantPolicy:
        return self.config.for_tenant(tenant)

    def effective(self, tenant: str, extension: str, in_hours: bool) -> TenantPolicy:
        key = (tenant, extension, in_hours)
        policy = self._cache.get(key)
        if policy is None:
            base = self.config.for_tenant(tenant)
            policy = base.merged(
                base.extensions.get(extension), None if in_hours else base.after_hours
            )
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[key] = policy
        return policy


def with_stored(config: GuardConfig, stored: dict[str, dict[str, Any]]) -> GuardConfig:
    """The file's guard configuration with the policies stored at run time on top.

    A stored policy that no longer validates (an older version's keys) is skipped: the
    file's policy for that tenant stays in force rather than nothing.
    """
    tenants = dict(config.tenants)
    for tenant, row in stored.items():
        try:
            tenants[tenant] = TenantPolicy.model_validate(row["policy"])
        except ValueError:
            continue
    return config.model_copy(update={"tenants": tenants})
