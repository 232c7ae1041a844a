"""The security audit (``pbxwarden audit``, ``GET /api/v1/security-audit``).

The fraud guard stops an attack while it happens; most successful toll fraud starts from
something an administrator could have seen the day before: a guessable SIP password, a
phone that registers from anywhere, international calls open without a spend cap, a
diversion to an outside number nobody remembers setting, an admin without a second
factor, an admin API on a public address. This module looks for those in the
configuration and the database and says, for each, what is wrong in one sentence a
non-expert can follow and the exact command or setting that fixes it.

It reads, never writes, and never outputs a password or a fingerprint: a weak password
is reported as weak, not as what it is.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections import defaultdict
from collections.abc import Iterable, Sequence
from functools import cache
from importlib import resources
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from pbxwarden.config import Config, parse_hostport
from pbxwarden.guard.policy import TenantPolicy
from pbxwarden.pbx.numbers import classify
from pbxwarden.pbx.policy import NATIONAL_ALLOWED
from pbxwarden.store.admin import AdminStore
from pbxwarden.store.db import (
    DEFAULT_TENANT,
    Store,
    password_fingerprint,
    password_fingerprint_key,
)
from pbxwarden.store.models import Extension, Tenant

Severity = Literal["critical", "high", "medium", "low"]
SEVERITIES: tuple[Severity, ...] = ("critical", "high", "medium", "low")
RANK: dict[str, int] = {"low": 0, "medium": 1, "high": 2, "critical": 3}
# A daily spend cap above this (per extension or per tenant) is no cap against fraud:
# a hijacked phone runs up that much in one night before the guard steps in.
SPEND_CAP_CEILING = 1000.0
FORWARD_WORDS = {"always": "every call", "busy": "calls when busy", "noanswer": "unanswered calls"}


class Finding(BaseModel):
    """One weakness: what, where, why it matters and how to fix it."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(description="stable code, e.g. sip-weak-password")
    severity: Severity
    tenant: str | None = Field(description="the tenant concerned; null: server-wide")
    subject: str = Field(description="what it is about, e.g. 'extension 1000'")
    problem: str = Field(description="what is wrong and why it matters, in one sentence")
    fix: str = Field(description="the command to run or the setting to change")


def at_least(severity: str, minimum: str) -> bool:
    return RANK[severity] >= RANK[minimum]


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda f: (-RANK[f.severity], f.tenant or "", f.id, f.subject))


# -- passwords -------------------------------------------------------------------------


@cache
def common_passwords() -> tuple[str, ...]:
    """The bundled list of passwords attackers try first (``data/common_passwords.txt``)."""
    text = resources.files("pbxwarden").joinpath("data/common_passwords.txt").read_text("utf-8")
    seen: dict[str, None] = {}
    for line in text.splitlines():
        word = line.strip()
        if word and not word.startswith("#"):
            seen[word] = None
    return tuple(seen)


def extension_guesses(number: str, tenant: str, realm: str) -> list[str]:
    """Passwords made from what an attacker already knows: the user name (the number),
    the tenant and the SIP domain."""
    reverse = number[::-1]
    out = [number, number * 2, number * 3, number * 4, reverse, number + reverse]
    words = {"password", "Password", "pass", "secret", "sip", "voip", "phone", "pbx", "ext"}
    words |= {"extension", "user", "admin", "welcome", tenant, realm, realm.split(".")[0]}
    for word in sorted(words):
        out += [word + number, number + word, f"{word}-{number}"]
    for suffix in ("1", "12", "123", "1234", "12345", "123456", "!", "@123", "#"):
        out.append(number + suffix)
    out += [f"{number}-{number}", f"{number}.{number}", f"{number}@{realm}"]
    return list(dict.fromkeys(out))


def _ha1_md5_matches(number: str, realm: str, ha1_md5: str, guesses: Iterable[str]) -> bool:
    """Does one of ``guesses`` give this MD5 HA1? MD5 is cheap: one copy of the hashed
    ``user:realm:`` prefix per guess."""
    try:
        target = bytes.fromhex(ha1_md5)
    except ValueError:
        return False
    prefix = hashlib.md5(f"{number}:{realm}:".encode(), usedforsecurity=False)
    for guess in guesses:
        h = prefix.copy()
        h.update(guess.encode("utf-8", "surrogatepass"))
        if h.digest() == target:
            return True
    return False


def _tenant_opt(tenant: str) -> str:
    return "" if tenant == DEFAULT_TENANT else f" --tenant {tenant}"


def _rotate_fix(tenant: str, number: str) -> str:
    return (
        f"give it a new generated password: POST /api/v1/tenants/{tenant}/extensions/"
        f"{number}/password (admin API), then enter it in the phone"
    )


def _listing(numbers: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(numbers[:limit])
    return shown + (f" and {len(numbers) - limit} more" if len(numbers) > limit else "")


def _extension_findings(
    config: Config, store: Store, secret: bytes | None
) -> tuple[list[Finding], dict[str, set[str]]]:
    """Password and ACL findings; also every tenant's extension numbers."""
    stmt = (
        select(
            Tenant.name,
            Extension.number,
            Extension.realm,
            Extension.ha1_md5,
            Extension.password_fingerprint,
            Extension.acl,
            Extension.enabled,
        )
        .join(Tenant, Tenant.id == Extension.tenant_id)
        .order_by(Tenant.name, Extension.number)
    )
    with Session(store.engine) as s:
        rows = list(s.execute(stmt))
    common = common_passwords()
    weak_fingerprints: set[str] = set()
    if secret is not None:
        # The same list through the fingerprints: a match settles it with one set lookup;
        # HA1 stays the authority for the rest (a fingerprint made under an older secret
        # matches nothing, the HA1 still does).
        key = password_fingerprint_key(secret)
        weak_fingerprints = {password_fingerprint(key, p) for p in common}
    findings: list[Finding] = []
    numbers: dict[str, set[str]] = defaultdict(set)
    by_fingerprint: dict[str, list[tuple[str, str]]] = defaultdict(list)
    unknown: dict[str, list[str]] = defaultdict(list)
    for tenant, number, realm, ha1_md5, fingerprint, acl, enabled in rows:
        numbers[tenant].add(number)
        weak = fingerprint is not None and fingerprint in weak_fingerprints
        if not weak:
            guesses = extension_guesses(number, tenant, realm)
            weak = _ha1_md5_matches(number, realm, ha1_md5, (*guesses, *common))
        if weak:
            findings.append(
                Finding(
                    id="sip-weak-password",
                    severity="critical",
                    tenant=tenant,
                    subject=f"extension {number}",
                    problem=(
                        f"Extension {number}'s SIP password is one attackers try first (a "
                        "common password or one made from the extension number): scanners "
                        "will guess it and make calls at the company's expense."
                    ),
                    fix=_rotate_fix(tenant, number),
                )
            )
        if fingerprint is None:
            unknown[tenant].append(number)
        else:
            by_fingerprint[fingerprint].append((tenant, number))
        if enabled and acl is None:
            findings.append(
                Finding(
                    id="extension-no-acl",
                    severity="medium",
                    tenant=tenant,
                    subject=f"extension {number}",
                    problem=(
                        f"Extension {number} may register from any network, so its stolen "
                        "password works for an attacker anywhere in the world."
                    ),
                    fix=(
                        f"pbxwarden extension acl {number} --allow <the phone's network, "
                        f"e.g. 192.0.2.0/24>{_tenant_opt(tenant)}"
                        + (
                            ""
                            if config.firewall.approve_new_networks
                            else " (or set firewall.approve_new_networks = true)"
                        )
                    ),
                )
            )
    for sharing in by_fingerprint.values():
        if len(sharing) < 2:
            continue
        tenants = sorted({t for t, _ in sharing})
        single = len(tenants) == 1
        names = [n if single else f"{t}/{n}" for t, n in sharing]
        path = f"{tenants[0]}/extensions/NUMBER" if single else "TENANT/extensions/NUMBER"
        findings.append(
            Finding(
                id="sip-password-reused",
                severity="high",
                tenant=tenants[0] if single else None,
                subject=f"extensions {_listing(names)}",
                problem=(
                    f"{len(sharing)} extensions"
                    + ("" if single else f" of {len(tenants)} tenants")
                    + " share one SIP password: whoever reads it from one phone (its web "
                    "page, a provisioning file) can register as all of them."
                ),
                fix=(
                    f"give {_listing(names[1:])} new generated passwords: POST "
                    f"/api/v1/tenants/{path}/password (admin API) for each, then enter it "
                    "in the phone"
                ),
            )
        )
    for tenant, missing in unknown.items():
        findings.append(
            Finding(
                id="sip-password-reuse-unknown",
                severity="low",
                tenant=tenant,
                subject=f"extensions {_listing(missing)}",
                problem=(
                    f"{len(missing)} extension password(s) were set without a fingerprint "
                    "(before this version, or by a tool without the install secret), so "
                    "the audit cannot tell whether they are used twice."
                ),
                fix=(
                    "give them new generated passwords: POST /api/v1/tenants/"
                    f"{tenant}/extensions/NUMBER/password (admin API); pbxwarden extension "
                    "add and import record fingerprints"
                ),
            )
        )
    return findings, numbers


# -- the fraud guard's policy ----------------------------------------------------------


def _opened(policy: TenantPolicy) -> list[str]:
    """The costly destinations a policy opens, in words."""
    out = []
    if policy.allow_countries:
        out.append("international calls to " + ", ".join(policy.allow_countries))
    if policy.allow_special:
        out.append(", ".join(policy.allow_special) + " numbers")
    if policy.allow_high_risk:
        out.append("high-risk destinations")
    if policy.allow_international_forwarding:
        out.append("diversions abroad")
    if policy.allow_prefixes:
        out.append("every number under " + ", ".join(policy.allow_prefixes))
    return out


def _policy_findings(tenant: str, label: str, section: str, policy: TenantPolicy) -> list[Finding]:
    findings = []
    subject = f"guard policy of tenant {tenant}{label}"
    if "premium-rate" in policy.allow_special:
        findings.append(
            Finding(
                id="guard-premium-rate-allowed",
                severity="high",
                tenant=tenant,
                subject=subject,
                problem=(
                    "Premium-rate numbers may be called: they are how toll fraud is cashed "
                    "in (the attacker rents the number and is paid per minute)."
                ),
                fix=f'remove "premium-rate" from allow_special under {section} in pbxwarden.toml',
            )
        )
    if policy.allow_high_risk:
        findings.append(
            Finding(
                id="guard-high-risk-allowed",
                severity="medium",
                tenant=tenant,
                subject=subject,
                problem=(
                    "Destinations on the high-risk list (ranges resold for revenue-share "
                    "fraud) may be called."
                ),
                fix=f"set allow_high_risk = false under {section} in pbxwarden.toml",
            )
        )
    opened = _opened(policy)
    day_cap = min(policy.spend_per_day, policy.spend_per_hour * 24)
    if opened and (day_cap > SPEND_CAP_CEILING or policy.tenant_spend_per_day > SPEND_CAP_CEILING):
        findings.append(
            Finding(
                id="guard-costly-calls-uncapped",
                severity="high",
                tenant=tenant,
                subject=subject,
                problem=(
                    f"Costly calls are open ({'; '.join(opened)}) and the spend caps allow "
                    f"an estimated {day_cap:g} a day per extension and "
                    f"{policy.tenant_spend_per_day:g} for the tenant: a hijacked phone can "
                    "run up that much before the guard stops it."
                ),
                fix=(
                    f"under {section} in pbxwarden.toml set spend_per_hour, spend_per_day "
                    "and tenant_spend_per_day to what a normal day costs (defaults 20, "
                    f"100, 500; at most {SPEND_CAP_CEILING:g})"
                ),
            )
        )
    return findings


def _guard_findings(config: Config, tenants: Sequence[str]) -> list[Finding]:
    findings: list[Finding] = []
    for tenant in tenants:
        own = tenant in config.guard.tenants
        section = f"[guard.tenants.{tenant}]" if own else "[guard.default]"
        base = config.guard.for_tenant(tenant)
        reported = _policy_findings(tenant, "", section, base)
        findings += reported
        # a variant only adds what neither the tenant's policy nor a wider variant said
        base_ids = {f.id for f in reported}
        seen: set[tuple[str, str]] = set()
        variants: list[tuple[str, str, TenantPolicy, tuple[str, ...]]] = []
        if base.after_hours is not None:
            after = base.merged(base.after_hours)
            variants.append((" after hours", f"{section[:-1]}.after_hours]", after, ("after",)))
        for number, override in sorted(base.extensions.items()):
            ext_section = f"{section[:-1]}.extensions.{number}]"
            variants.append(
                (f", extension {number}", ext_section, base.merged(override), (number,))
            )
            if base.after_hours is not None:
                variants.append(
                    (
                        f", extension {number} after hours",
                        ext_section,
                        base.merged(override, base.after_hours),
                        (number, "after"),
                    )
                )
        for label, where, policy, keys in variants:
            for finding in _policy_findings(tenant, label, where, policy):
                if finding.id in base_ids or any((finding.id, k) in seen for k in keys):
                    continue
                seen.add((finding.id, keys[0]))
                findings.append(finding)
    known = set(tenants)
    for name in sorted(config.guard.tenants):
        if name not in known:
            findings.append(
                Finding(
                    id="guard-policy-unknown-tenant",
                    severity="low",
                    tenant=None,
                    subject=f"[guard.tenants.{name}]",
                    problem=(
                        f"pbxwarden.toml has a guard policy for {name!r}, which is not a "
                        "tenant: a misspelt name leaves the real tenant on the default policy."
                    ),
                    fix=(
                        f"rename [guard.tenants.{name}] to an existing tenant (pbxwarden "
                        "tenant list) or remove it"
                    ),
                )
            )
    return findings


# -- forwarding ------------------------------------------------------------------------


def _forwarding_findings(store: Store, numbers: dict[str, set[str]]) -> list[Finding]:
    findings = []
    countries: dict[str, str] = {}
    for row in store.forwarding_table():
        tenant, number = row["tenant"], row["extension"]
        for kind in ("always", "busy", "noanswer"):
            target = row[kind]
            if target is None or target in numbers.get(tenant, set()):
                continue
            if tenant not in countries:
                countries[tenant] = store.tenant_country(tenant)
            dest = classify(target, countries[tenant])
            costly = dest is not None and (
                not dest.national or dest.number_type not in NATIONAL_ALLOWED
            )
            if costly and dest is not None:
                severity: Severity = "high"
                what = (
                    f"an international number ({dest.country})"
                    if not dest.national
                    else f"a {dest.number_type} number"
                )
            else:
                severity = "medium" if kind == "always" else "low"
                what = "an outside number"
            findings.append(
                Finding(
                    id="forwarding-external",
                    severity=severity,
                    tenant=tenant,
                    subject=f"extension {number}",
                    problem=(
                        f"Extension {number} forwards {FORWARD_WORDS[kind]} to {target}, "
                        f"{what}: every diverted call is paid by the company, and a "
                        "diversion set on a hijacked phone is how toll fraud is cashed in."
                    ),
                    fix=(
                        "if nobody expects it: pbxwarden forward clear "
                        f"{number} --kind {kind}{_tenant_opt(tenant)}"
                    ),
                )
            )
    return findings


# -- admin accounts --------------------------------------------------------------------


def _admin_findings(admin: AdminStore) -> list[Finding]:
    findings = []
    severities: dict[str, Severity] = {"admin": "high", "operator": "medium", "read-only": "low"}
    for row in admin.list_admins():
        if row["totp"] or not row["enabled"]:
            continue
        findings.append(
            Finding(
                id="admin-no-totp",
                severity=severities.get(row["role"], "high"),
                tenant=row["tenant"],
                subject=f"admin {row['username']}",
                problem=(
                    f"Admin {row['username']} ({row['role']}) logs in with a password "
                    "alone: a phished or reused password is enough to take over the PBX."
                ),
                fix=f"pbxwarden admin totp {row['username']}",
            )
        )
    return findings


# -- listeners, firewall, alerts -------------------------------------------------------


def _exposed(listen: str, default_port: int) -> bool:
    """Reachable from other machines: anything but a loopback address."""
    try:
        host, _ = parse_hostport(listen, default_port)
        return not ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return True


def _any_network(networks: Iterable[str]) -> bool:
    for net in networks:
        try:
            if ipaddress.ip_network(net, strict=False).prefixlen == 0:
                return True
        except ValueError:
            continue
    return False


def _server_findings(config: Config) -> list[Finding]:
    findings = []
    sip, http, fw = config.sip, config.http, config.firewall
    if sip.transports and sip.tls is None and _exposed(sip.listen, 5060):
        findings.append(
            Finding(
                id="sip-no-tls",
                severity="medium",
                tenant=None,
                subject=f"sip.listen = {sip.listen}",
                problem=(
                    f"SIP listens on {sip.listen}, reachable from other machines, and SIP "
                    "over TLS is not configured: anyone on the path sees who calls whom and "
                    "can take the digest exchanges offline to guess weak passwords."
                ),
                fix=(
                    "configure [sip.tls] (listen, cert_file, key_file) in pbxwarden.toml "
                    "and move the phones to TLS"
                ),
            )
        )
    if http.enabled and _exposed(http.listen, 8080):
        findings.append(
            Finding(
                id="http-api-exposed",
                severity="high",
                tenant=None,
                subject=f"http.listen = {http.listen}",
                problem=(
                    f"The admin API listens on {http.listen}, reachable from other "
                    "machines, and has no TLS of its own: passwords, session cookies and "
                    "API tokens cross the network in clear."
                ),
                fix=(
                    'set http.listen = "127.0.0.1:8080" in pbxwarden.toml and publish the '
                    "API through a TLS reverse proxy (nginx, Caddy) if it must be reached "
                    "from elsewhere"
                ),
            )
        )
    if _any_network(http.admin_networks):
        findings.append(
            Finding(
                id="http-admin-networks-any",
                severity="high" if http.enabled else "low",
                tenant=None,
                subject="http.admin_networks",
                problem=(
                    "http.admin_networks lets every address in the world talk to the admin "
                    "API"
                    + ("" if http.enabled else " (once it is enabled)")
                    + ", so only a password stands between an attacker and the PBX."
                ),
                fix=(
                    "list only your administrators' networks in http.admin_networks in "
                    'pbxwarden.toml (e.g. ["127.0.0.0/8", "192.0.2.0/24"])'
                ),
            )
        )
    if _any_network(fw.allow):
        findings.append(
            Finding(
                id="firewall-allow-any",
                severity="high",
                tenant=None,
                subject="firewall.allow",
                problem=(
                    "firewall.allow covers every address: no password guesser, scanner or "
                    "flood is ever banned."
                ),
                fix=(
                    "list only your trunks' and administrators' networks in firewall.allow "
                    "in pbxwarden.toml"
                ),
            )
        )
    if fw.reject_banned:
        findings.append(
            Finding(
                id="firewall-reject-banned",
                severity="low",
                tenant=None,
                subject="firewall.reject_banned",
                problem=(
                    "Banned addresses get a 403 answer, which tells scanners they were "
                    "noticed and that a PBX is there; silence teaches them nothing."
                ),
                fix="set firewall.reject_banned = false in pbxwarden.toml",
            )
        )
    alerts = config.alerts
    if alerts.webhook is None and alerts.email is None and alerts.syslog is None:
        findings.append(
            Finding(
                id="alerts-no-channel",
                severity="medium",
                tenant=None,
                subject="[alerts]",
                problem=(
                    "No alert channel is configured: fraud alerts only sit in the database, "
                    "where nobody looks at night or on week-ends, when toll fraud happens."
                ),
                fix=(
                    "add [alerts.webhook] (url, secret), [alerts.email] or [alerts.syslog] "
                    "to pbxwarden.toml (commented examples are in the file)"
                ),
            )
        )
    if "SHA-256" not in sip.digest_algorithms:
        findings.append(
            Finding(
                id="sip-digest-md5-only",
                severity="low",
                tenant=None,
                subject="sip.digest_algorithms",
                problem=(
                    "Phones authenticate with MD5 digest only; SHA-256 (RFC 8760) is "
                    "stronger against offline guessing of captured exchanges."
                ),
                fix=(
                    'set sip.digest_algorithms = ["SHA-256", "MD5"] in pbxwarden.toml once '
                    "every phone supports SHA-256"
                ),
            )
        )
    return findings


# -- the audit -------------------------------------------------------------------------


def run_audit(
    config: Config, store: Store, admin: AdminStore | None, secret: bytes | None = None
) -> list[Finding]:
    """Every finding, most severe first. ``admin`` None skips the admin accounts;
    ``secret`` (the install secret) also matches password fingerprints against the
    guess list."""
    findings, numbers = _extension_findings(config, store, secret)
    tenants = [t["tenant"] for t in store.list_tenants()]
    findings += _guard_findings(config, tenants)
    findings += _forwarding_findings(store, numbers)
    if admin is not None:
        findings += _admin_findings(admin)
    findings += _server_findings(config)
    return sort_findings(findings)
