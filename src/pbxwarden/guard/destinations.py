"""The destination rules: what a tenant's extensions may call at all, closed by default.

Valid numbers only; the tenant's deny list, then its allow list; international calls
only to allowed countries (diversions abroad only with
``allow_international_forwarding``); special numbers only if allowed; ranges on the
bundled high-risk list (revenue-share fraud) only with ``allow_high_risk``.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

from pbxwarden.guard.policy import TenantPolicy
from pbxwarden.pbx.numbers import Destination
from pbxwarden.pbx.policy import DIVERSIONS, DIVERTED, NATIONAL_ALLOWED, CallAttempt, Decision


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


def judge_destination(
    policy: TenantPolicy,
    attempt: CallAttempt,
    dest: Destination | None,
    in_hours: bool,
    high_risk: Callable[[Destination], RiskEntry | None],
) -> Decision | list[str]:
    """Rules 2-6: a valid number, deny and allow lists, countries, special numbers,
    high-risk ranges. A list of reasons when the destination may be called."""
    if dest is None or not dest.valid:
        return Decision(False, (f"{attempt.dialed!r} is not a valid telephone number",), 404)
    diversion = attempt.kind in DIVERSIONS
    rule = "forwarding-destination" if diversion else "destination"
    # A diversion to a number the extension may not call is the attack itself when
    # it is followed; when it is only being set, someone tried.
    severity = "critical" if attempt.kind in DIVERTED else "warning"
    denied = _longest(policy.deny_prefixes, dest.e164)
    if denied:
        return Decision(
            False,
            (f"{dest.e164} matches {denied}, on the tenant's deny list",),
            severity=severity,
            rule=rule,
        )
    allowed = _longest(policy.allow_prefixes, dest.e164)
    if allowed:
        return [f"{dest.e164} matches {allowed}, on the tenant's allow list"]
    reasons = []
    hours = "" if in_hours else " outside business hours"
    if not dest.national:
        if dest.country not in policy.allow_countries:
            return Decision(
                False,
                (
                    f"international call to {dest.e164} ({dest.country}) is not allowed"
                    f"{hours}: add the country to the tenant's allow_countries if it is "
                    "expected",
                ),
                severity=severity,
                rule=rule,
            )
        if diversion and not policy.allow_international_forwarding:
            return Decision(
                False,
                (
                    f"diversion to the international number {dest.e164} is not allowed: "
                    "set allow_international_forwarding if it is expected",
                ),
                severity=severity,
                rule=rule,
            )
        reasons.append(f"calls to {dest.country} are allowed")
    number_type, costly = dest.number_type, dest.costly_range
    if number_type != "premium-rate" and not dest.short:
        for pattern, regex in policy.premium_patterns:
            if regex.fullmatch(dest.e164):
                number_type, costly = "premium-rate", f"in the tenant's premium range {pattern}"
                break
    if number_type not in NATIONAL_ALLOWED and number_type not in (policy.allow_special):
        what = f" ({costly})" if costly else ""
        return Decision(
            False,
            (f"{number_type} number {dest.e164}{what} is not allowed by the policy{hours}",),
            severity=severity,
            rule=rule,
        )
    risk = high_risk(dest)
    if risk is not None and not policy.allow_high_risk:
        return Decision(
            False,
            (
                f"{dest.e164} is in {risk.name} ({risk.prefix}), a high-risk destination "
                "for revenue-share fraud",
            ),
            severity=severity,
            rule=rule,
        )
    reasons.append(f"{'national' if dest.national else 'international'} {dest.number_type} number")
    return reasons
