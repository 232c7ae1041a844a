"""The fraud guard: authorizes every costly call attempt, with reasons a person can read.

Pure logic behind the :class:`pbxwarden.pbx.policy.CallAuthorizer` hook: a decision
depends on the attempt, the tenant's policy and the guard's own state (calls in
progress, recent attempts, spend, learned baselines, inbound probes), all in memory
here; the clock is the attempt's time, so the simulator runs it on simulated days.
Side effects leave as data: alerts (with a suspension flag) in :attr:`Guard.outbox`
and calls to cut off from :meth:`Guard.police`; the server acts on them.

Rules, in order (the first that refuses decides):
1. a suspended extension makes no costly call;
2. the destination must be a valid number;
3. the tenant's deny list, then its allow list (an allowed prefix skips 4-6);
4. international calls only to countries the tenant allows (diversions abroad only
   with ``allow_international_forwarding``);
5. premium-rate, shared-cost and other special numbers only if allowed;
6. destinations on the bundled high-risk list (revenue-share fraud) only if allowed;
7. calls in progress, attempts per minute and per hour, calls to one foreign prefix
   in 10 minutes, and estimated spend per hour and per day, below their limits
   (a warning alert at ``warn_at`` of each);
8. the anomaly score from learned behaviour and correlations below ``block_score``
   (a warning alert from ``alert_score``).
"""

from __future__ import annotations

import datetime as dt
import tomllib
from collections import deque
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from pbxwarden.guard.baseline import DAY, WEEKDAYS, Baseline
from pbxwarden.guard.policy import GuardConfig, PolicyBook, PolicyOverride, TenantPolicy
from pbxwarden.guard.rates import RateTable
from pbxwarden.pbx.numbers import Destination, classify
from pbxwarden.pbx.policy import NATIONAL_ALLOWED, CallAttempt, Decision

__all__ = [
    "Guard",
    "GuardAlert",
    "GuardConfig",
    "PolicyOverride",
    "RiskEntry",
    "TenantPolicy",
    "load_high_risk",
]

COSTLY_KINDS = ("external", "forwarded", "forward-change")
HOUR = 3600.0
PREFIX_WINDOW = 600.0
PROBE_WINDOW = 72 * HOUR
PROBE_MAX_SECONDS = 60.0
WITHHELD = frozenset(("", "anonymous", "unknown", "restricted", "private", "unavailable"))
# Rules whose critical alerts mean the extension is in an attacker's hands.
FRAUD_RULES = frozenset(("forwarding-destination", "anomaly", "recon"))

# anomaly score weights (0-100 overall); tuned with `pbxwarden simulate`
W_NEW_COUNTRY = 30
W_NEW_COUNTRY_TENANT = 20
W_RARE_COUNTRY = 15
W_BURST = 30
W_SPEND = 40
W_SAME_PREFIX = 25
W_OFF_HOURS = 20
W_HIGH_RISK_ALLOWED = 10
W_NIGHT_RISKY = 20  # per earlier call abroad to a risky or dear destination out of hours
SPEND_FLOOR = 10.0  # a day's spend below this is never "unusual" (in the rate currency)
RISKY_RATE = 0.20  # per minute: "dear" for W_NIGHT_RISKY
W_EXPENSIVE = 20
W_DIVERTED_ABROAD = 20
W_RECON = 50
W_NEW_FORWARD_TARGET = 20
W_REPEAT_DIVERSION = 30
W_REFUSED = 25  # per costly attempt refused in the last hour (probing for what works)
W_REPEAT_UNUSUAL = 35  # another suspicious call after an unusual one, within 24 hours
REPEAT_UNUSUAL_FROM = 30  # the score from which a repeat counts


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


@dataclass(frozen=True, slots=True)
class GuardAlert:
    tenant: str
    extension: str | None
    severity: str  # "warning" or "critical"
    rule: str
    summary: str
    reasons: tuple[str, ...]
    at: float
    suspend: bool = False  # the guard suspended the extension
    kind: str = ""  # what was judged (a call out, a diversion being set, one followed)
    dedupe: str | None = None  # repeats with the same key count into one open alert

    @property
    def key(self) -> str:
        """Repeats of the same thing share an open alert; a different kind of event for
        the same extension (a diversion set, then one followed) is an alert of its own."""
        if self.dedupe is not None:
            return self.dedupe
        key = f"{self.tenant}/{self.extension or '-'}/{self.rule}"
        return f"{key}/{self.kind}" if self.kind else key


@dataclass(slots=True)
class _Active:
    """A costly call the guard counts and prices while it runs."""

    tenant: str
    extension: str
    rate: float  # per minute
    weekday: int
    max_seconds: float
    answered: float | None = None


@dataclass(slots=True)
class _Inbound:
    tenant: str
    extension: str
    caller: str
    suspicious: str | None  # why the caller looks like a prober, or None
    started: float
    answered: float | None = None


@dataclass(slots=True)
class _Spend:
    """Estimated spend over the last hour and 24 hours, calls in progress included.

    Running sums, so a decision costs the same for a tenant with ten calls a day as
    for one with ten thousand: ended calls enter two windows and leave them when
    they expire; calls in progress are the sum of their rates and of rate x answer
    time, so their cost so far is ``(now * rate - rate_at) / 60``.
    """

    hour: deque[tuple[float, float]] = field(default_factory=deque)  # (end, cost)
    day: deque[tuple[float, float]] = field(default_factory=deque)
    hour_sum: float = 0.0
    day_sum: float = 0.0
    running: int = 0  # answered calls in progress
    rate: float = 0.0
    rate_at: float = 0.0

    def add(self, end: float, cost: float) -> None:
        self.hour.append((end, cost))
        self.day.append((end, cost))
        self.hour_sum += cost
        self.day_sum += cost

    def start(self, rate: float, answered: float) -> None:
        self.running += 1
        self.rate += rate
        self.rate_at += rate * answered

    def stop(self, rate: float, answered: float) -> None:
        self.running -= 1
        if self.running <= 0:  # no drift left behind by floating-point sums
            self.running, self.rate, self.rate_at = 0, 0.0, 0.0
        else:
            self.rate -= rate
            self.rate_at -= rate * answered

    def totals(self, now: float) -> tuple[float, float]:
        if self.hour and self.hour[0][0] <= now - HOUR:
            self.hour_sum = max(0.0, self.hour_sum - _trim(self.hour, now - HOUR))
            if not self.hour:
                self.hour_sum = 0.0
        if self.day and self.day[0][0] <= now - DAY:
            self.day_sum = max(0.0, self.day_sum - _trim(self.day, now - DAY))
            if not self.day:
                self.day_sum = 0.0
        running = max(0.0, (now * self.rate - self.rate_at) / 60.0) if self.running else 0.0
        return self.hour_sum + running, self.day_sum + running


@dataclass(slots=True)
class _ExtState:
    baseline: Baseline
    # costly attempts of the last hour (at, hour of week, country, e164): learned into the
    # baseline only when they leave the hour, so a burst cannot make itself look usual
    recent: deque[tuple[float, int, str, str]] = field(default_factory=deque)
    prefixes: deque[tuple[float, str]] = field(default_factory=deque)  # foreign, 10 min
    spend: _Spend = field(default_factory=lambda: _Spend())
    diverted: deque[tuple[float, str]] = field(default_factory=deque)  # forwarded legs, 1 h
    refused: deque[float] = field(default_factory=deque)  # costly attempts refused, 1 h
    unusual: deque[float] = field(default_factory=deque)  # anomaly warnings, 24 h
    night_risky: deque[float] = field(default_factory=deque)  # see W_NIGHT_RISKY, 24 h
    active: set[int] = field(default_factory=set)
    suspended: str | None = None
    dirty: bool = False  # baseline changed since it was last saved


@dataclass(slots=True)
class _TenantState:
    baseline: Baseline
    active: set[int] = field(default_factory=set)
    dirty: bool = False
    spend: _Spend = field(default_factory=lambda: _Spend())
    probes: deque[tuple[float, str, str]] = field(default_factory=deque)  # at, ext, why


def _trim(ledger: deque[tuple[float, float]], horizon: float) -> float:
    """Drop entries ending before ``horizon``; returns the cost dropped."""
    dropped = 0.0
    while ledger and ledger[0][0] <= horizon:
        dropped += ledger.popleft()[1]
    return dropped


def _money(value: float, currency: str) -> str:
    return f"{value:.2f} {currency}"


class Guard:
    def __init__(
        self,
        config: GuardConfig | None = None,
        high_risk: list[RiskEntry] | None = None,
        rates: RateTable | None = None,
    ) -> None:
        self.config = config or GuardConfig()
        self.book = PolicyBook(self.config)
        self.high_risk = high_risk if high_risk is not None else load_high_risk()
        by_length: dict[int, dict[str, RiskEntry]] = {}
        for entry in self.high_risk:
            by_length.setdefault(len(entry.prefix), {}).setdefault(entry.prefix, entry)
        self._risk_by_length = sorted(by_length.items(), reverse=True)
        if rates is None:
            rates = (
                RateTable.from_file(self.config.rates_file)
                if self.config.rates_file
                else RateTable.bundled()
            )
        self.rates = rates
        self.outbox: deque[GuardAlert] = deque(maxlen=10_000)
        # (kind, allow/deny, severity) -> count, for metrics
        self.decisions: dict[tuple[str, str, str], int] = {}
        self._ext: dict[tuple[str, str], _ExtState] = {}
        self._tenants: dict[str, _TenantState] = {}
        self._active: dict[int, _Active] = {}
        self._inbound: dict[int, _Inbound] = {}
        self._cutoffs: list[tuple[int, str]] = []
        self._stored_suspensions: dict[tuple[str, str], str] = {}

    def reconfigure(self, config: GuardConfig) -> None:
        """New policies (stored ones changed): counters and baselines are kept."""
        self.config = config
        self.book = PolicyBook(config)

    # -- state -----------------------------------------------------------------------------

    def _ext_state(self, tenant: str, extension: str, now: float) -> _ExtState:
        state = self._ext.get((tenant, extension))
        if state is None:
            state = self._ext[(tenant, extension)] = _ExtState(Baseline(now))
        return state

    def _tenant_state(self, tenant: str, now: float) -> _TenantState:
        state = self._tenants.get(tenant)
        if state is None:
            state = self._tenants[tenant] = _TenantState(Baseline(now))
        return state

    def suspend(self, tenant: str, extension: str, reason: str) -> None:
        """Refuse the extension's costly calls and cut off those in progress."""
        state = self._ext_state(tenant, extension, float("inf"))
        state.suspended = reason
        for ref in state.active:
            self._cutoffs.append((ref, f"extension {extension} suspended: {reason}"))

    def resume(self, tenant: str, extension: str) -> None:
        state = self._ext.get((tenant, extension))
        if state is not None:
            state.suspended = None

    def sync_suspensions(self, stored: dict[tuple[str, str], str]) -> None:
        """Apply what changed in the stored suspensions since the last sync.

        Only changes: a suspension the guard just made may not be stored yet, and must
        not be undone by a snapshot taken before it was.
        """
        for key in self._stored_suspensions.keys() - stored.keys():
            self.resume(*key)
        for key in stored.keys() - self._stored_suspensions.keys():
            if self.is_suspended(*key) is None:
                self.suspend(key[0], key[1], stored[key])
        self._stored_suspensions = dict(stored)

    def is_suspended(self, tenant: str, extension: str) -> str | None:
        state = self._ext.get((tenant, extension))
        return state.suspended if state is not None else None

    def baseline(self, tenant: str, extension: str) -> Baseline | None:
        state = self._ext.get((tenant, extension))
        return state.baseline if state is not None else None

    def set_baseline(self, tenant: str, extension: str, baseline: Baseline) -> None:
        self._ext_state(tenant, extension, baseline.first_at).baseline = baseline

    def export_baselines(self, everything: bool = False) -> list[tuple[str, str, dict[str, Any]]]:
        """Baselines changed since the last export (or all): (tenant, extension, data);
        a tenant's own baseline has the extension "". For the store, across restarts."""
        out: list[tuple[str, str, dict[str, Any]]] = []
        for (tenant, number), ext in self._ext.items():
            if ext.dirty or (everything and ext.baseline.calls):
                out.append((tenant, number, ext.baseline.to_json()))
                ext.dirty = False
        for tenant, state in self._tenants.items():
            if state.dirty or (everything and state.baseline.calls):
                data = state.baseline.to_json()
                data["targets"] = []  # only extensions' own targets are ever consulted
                out.append((tenant, "", data))
                state.dirty = False
        return out

    def import_baselines(self, rows: list[tuple[str, str, dict[str, Any]]]) -> None:
        for tenant, number, data in rows:
            baseline = Baseline.from_json(data)
            if number:
                self._ext_state(tenant, number, baseline.first_at).baseline = baseline
            else:
                self._tenant_state(tenant, baseline.first_at).baseline = baseline

    # -- the hook ------------------------------------------------------------------------

    def authorize(self, attempt: CallAttempt) -> Decision:
        decision = self._authorize(attempt)
        key = (attempt.kind, decision.label, decision.severity or "none")
        self.decisions[key] = self.decisions.get(key, 0) + 1
        return decision

    def _authorize(self, attempt: CallAttempt) -> Decision:
        if attempt.kind == "internal":
            return Decision(True, ("internal call between extensions",))
        if attempt.kind == "inbound":
            return Decision(True, ("inbound call to a DID",))
        now = attempt.at
        ext = self._ext_state(attempt.tenant, attempt.extension, now)
        if ext.suspended is not None:
            return Decision(
                False,
                (
                    f"extension {attempt.extension} is suspended ({ext.suspended}); an "
                    "administrator must resume it: pbxwarden extension resume",
                ),
                rule="suspended",
            )
        tenant_policy = self.book.tenant(attempt.tenant)
        local = tenant_policy.local(now)
        in_hours = tenant_policy.in_business_hours(local)
        policy = self.book.effective(attempt.tenant, attempt.extension, in_hours)
        dest = attempt.destination
        verdict = self._destination(policy, attempt, dest, in_hours)
        if isinstance(verdict, Decision):
            return self._decided(attempt, verdict)
        assert dest is not None
        reasons = verdict
        rate = self.rates.per_minute(dest)
        tenant = self._tenant_state(attempt.tenant, now)
        self._settle(ext, tenant, now)
        warnings: list[str] = []
        refusal = None
        if attempt.kind != "forward-change":
            refusal = self._limits(policy, attempt, ext, tenant, dest, warnings)
        # Scored even when a limit refuses: an attacker hammering a limit at night is more
        # than a limit reached, and must be stopped (and its calls cut), not just slowed.
        score, why = self._score(attempt, policy, ext, tenant, dest, rate, local, in_hours)
        if refusal is not None and score < policy.block_score:
            return self._decided(attempt, refusal)
        if score >= policy.block_score:
            return self._decided(
                attempt,
                Decision(
                    False,
                    (
                        f"refused as likely fraud (risk score {score}/100): " + "; ".join(why),
                        *reasons,
                    ),
                    score=score,
                    severity="critical",
                    rule="recon" if any("reconnaissance" in w for w in why) else "anomaly",
                ),
                suspend=policy.suspend_on_critical,
            )
        if attempt.kind != "forward-change":
            self._record(attempt, ext, tenant, dest, local)
        severity, rule = None, ""
        if score >= policy.alert_score:
            ext.unusual.append(now)
            severity, rule = "warning", "anomaly"
            warnings.insert(0, f"unusual call (risk score {score}/100): " + "; ".join(why))
        else:
            reasons.extend(why)
        if severity is None and warnings:
            severity, rule = "warning", "limit"
        decision = Decision(True, (*warnings, *reasons), score=score, severity=severity, rule=rule)
        if severity is not None:
            self._alert(attempt, decision)
        return decision

    # -- rules ---------------------------------------------------------------------------

    def _destination(
        self,
        policy: TenantPolicy,
        attempt: CallAttempt,
        dest: Destination | None,
        in_hours: bool,
    ) -> Decision | list[str]:
        if dest is None or not dest.valid:
            return Decision(False, (f"{attempt.dialed!r} is not a valid telephone number",), 404)
        diversion = attempt.kind in ("forwarded", "forward-change")
        rule = "forwarding-destination" if diversion else "destination"
        # A diversion to a number the extension may not call is the attack itself when
        # it is followed; when it is only being set, someone tried.
        severity = "critical" if attempt.kind == "forwarded" else "warning"
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
        if dest.number_type not in NATIONAL_ALLOWED and dest.number_type not in (
            policy.allow_special
        ):
            what = f" ({dest.costly_range})" if dest.costly_range else ""
            return Decision(
                False,
                (
                    f"{dest.number_type} number {dest.e164}{what} is not allowed by the "
                    f"policy{hours}",
                ),
                severity=severity,
                rule=rule,
            )
        risk = self._high_risk(dest)
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
        reasons.append(
            f"{'national' if dest.national else 'international'} {dest.number_type} number"
        )
        return reasons

    def _high_risk(self, dest: Destination) -> RiskEntry | None:
        e164 = dest.e164
        for length, entries in self._risk_by_length:
            entry = entries.get(e164[:length])
            if entry is not None:
                return entry
        return None

    def _limits(
        self,
        policy: TenantPolicy,
        attempt: CallAttempt,
        ext: _ExtState,
        tenant: _TenantState,
        dest: Destination,
        warnings: list[str],
    ) -> Decision | None:
        now = attempt.at
        number = attempt.extension

        def check(count: float, limit: float, what: str, status: int = 403) -> Decision | None:
            if count >= limit:
                return Decision(False, (f"{what} (limit {limit:g})",), status, rule="limit")
            if count + 1 >= policy.warn_at * limit and limit >= 5:
                warnings.append(f"{what}, close to the limit of {limit:g}")
            return None

        checks: list[tuple[float, float, str, int]] = [
            (
                len(tenant.active),
                policy.max_concurrent_calls,
                f"tenant {attempt.tenant} has {len(tenant.active)} costly calls in progress",
                486,
            ),
            (
                len(ext.active),
                policy.max_concurrent_per_extension,
                f"extension {number} has {len(ext.active)} costly calls in progress",
                486,
            ),
        ]
        recent = ext.recent
        if recent:
            last_minute = sum(1 for r in recent if r[0] > now - 60)
            checks.append(
                (
                    last_minute,
                    policy.calls_per_minute,
                    f"extension {number} made {last_minute} costly calls in the last minute",
                    403,
                )
            )
            checks.append(
                (
                    len(recent),
                    policy.calls_per_hour,
                    f"extension {number} made {len(recent)} costly calls in the last hour",
                    403,
                )
            )
        if not dest.national or dest.number_type not in NATIONAL_ALLOWED:
            prefixes = ext.prefixes
            while prefixes and prefixes[0][0] <= now - PREFIX_WINDOW:
                prefixes.popleft()
            prefix = dest.e164[:6]
            same = sum(1 for _, p in prefixes if p == prefix)
            checks.append(
                (
                    same,
                    policy.same_prefix_calls,
                    f"extension {number} called the {prefix} prefix {same} times in 10 minutes",
                    403,
                )
            )
        spend_hour, spend_day = ext.spend.totals(now)
        cur = self.rates.currency
        checks.append(
            (
                spend_hour,
                policy.spend_per_hour,
                f"extension {number} spent an estimated {_money(spend_hour, cur)} in the last hour",
                403,
            )
        )
        checks.append(
            (
                spend_day,
                policy.spend_per_day,
                f"extension {number} spent an estimated {_money(spend_day, cur)} in 24 hours",
                403,
            )
        )
        tenant_day = tenant.spend.totals(now)[1]
        checks.append(
            (
                tenant_day,
                policy.tenant_spend_per_day,
                f"tenant {attempt.tenant} spent an estimated {_money(tenant_day, cur)} in 24 hours",
                403,
            )
        )
        for count, limit, what, status in checks:
            refusal = check(count, limit, what, status)
            if refusal is not None:
                return Decision(
                    False,
                    refusal.reasons,
                    refusal.status,
                    severity="critical" if "spent" in what else "warning",
                    rule="spend-cap" if "spent" in what else "limit",
                )
        return None

    def _score(
        self,
        attempt: CallAttempt,
        policy: TenantPolicy,
        ext: _ExtState,
        tenant: _TenantState,
        dest: Destination,
        rate: float,
        local: dt.datetime,
        in_hours: bool,
    ) -> tuple[int, list[str]]:
        """The anomaly score (0-100) and one sentence per thing that is unusual."""
        now = attempt.at
        score = 0
        why: list[str] = []
        base = ext.baseline
        mature = base.mature(now)
        number = attempt.extension
        country_name = dest.country
        cur = self.rates.currency
        if not dest.national:
            seen = base.countries.get(dest.country, 0)
            if seen == 0 and mature:
                score += W_NEW_COUNTRY
                why.append(f"first call ever from extension {number} to {country_name}")
                if tenant.baseline.countries.get(dest.country, 0) == 0:
                    score += W_NEW_COUNTRY_TENANT
                    why.append(f"nobody in tenant {attempt.tenant} ever called {country_name}")
            elif 0 < seen < 3 and mature:
                score += W_RARE_COUNTRY
                why.append(f"extension {number} called {country_name} only {seen} times before")
            if not in_hours:
                score += W_OFF_HOURS
                why.append("international call outside business hours")
            risk = self._high_risk(dest)
            if risk is not None:
                score += W_HIGH_RISK_ALLOWED
                why.append(f"{risk.name} is a high-risk destination (allowed for this tenant)")
            if not in_hours and (risk is not None or rate >= RISKY_RATE):
                night = ext.night_risky
                while night and night[0] <= now - DAY:
                    night.popleft()
                if night:
                    score += W_NIGHT_RISKY * min(2, len(night))
                    why.append(
                        f"{len(night)} other call(s) from extension {number} to risky or "
                        "expensive destinations abroad outside business hours in 24 hours"
                    )
                if attempt.kind == "external":
                    night.append(now)
        if rate >= 1.0:
            score += W_EXPENSIVE
            why.append(f"the destination costs about {_money(rate, cur)} a minute")
        if not dest.national or dest.number_type not in NATIONAL_ALLOWED:
            prefix = dest.e164[:6]
            same = sum(1 for t, p in ext.prefixes if p == prefix and t > now - PREFIX_WINDOW)
            if same >= 2:
                score += W_SAME_PREFIX
                why.append(f"{same + 1} calls to the same {prefix} prefix in 10 minutes")
        if mature and attempt.kind != "forward-change":
            day = local.weekday()
            hour_of_week = day * 24 + local.hour
            expected = base.expected_calls(hour_of_week, now)
            count = len(ext.recent) + 1
            if count >= 5 and count >= 4 * expected + 3:
                score += W_BURST
                why.append(
                    f"{count} costly calls in the last hour; extension {number} usually makes "
                    f"{expected:.1f} on {WEEKDAYS[day]}s at {local.hour:02d}:00"
                )
            usual = base.expected_spend(day, now)
            spent = ext.spend.totals(now)[1]
            if spent >= SPEND_FLOOR and spent >= 10 * max(usual, 0.1):
                score += W_SPEND
                why.append(
                    f"spend {_money(spent, cur)} in 24 hours, {spent / max(usual, 0.01):.0f}x "
                    f"this extension's usual {WEEKDAYS[day]} ({_money(usual, cur)})"
                )
        if attempt.kind in ("forwarded", "forward-change"):
            if not dest.national:
                score += W_DIVERTED_ABROAD
                why.append(f"a diversion abroad, to {country_name}")
            if attempt.kind == "forward-change" and dest.e164 not in base.targets:
                score += W_NEW_FORWARD_TARGET
                why.append(f"extension {number} never called {dest.e164} itself")
            costly = not dest.national or dest.number_type not in NATIONAL_ALLOWED
            probes = self._probes(tenant, now) if costly else []
            if probes:
                score += W_RECON
                why.append(
                    f"{len(probes)} short inbound call(s) from withheld or foreign numbers in the "
                    "last 72 hours before this diversion (the reconnaissance pattern: "
                    + ", ".join(sorted({p for _, _, p in probes}))[:200]
                    + ")"
                )
            if attempt.kind == "forwarded":
                diverted = ext.diverted
                while diverted and diverted[0][0] <= now - HOUR:
                    diverted.popleft()
                repeats = sum(1 for _, target in diverted if target == dest.e164)
                if repeats >= 2:
                    score += W_REPEAT_DIVERSION
                    why.append(
                        f"{repeats + 1} inbound calls diverted to {dest.e164} in the last hour"
                    )
                diverted.append((now, dest.e164))
        refused = ext.refused
        while refused and refused[0] <= now - HOUR:
            refused.popleft()
        if refused and attempt.kind == "external":
            score += W_REFUSED * min(2, len(refused))
            why.append(
                f"{len(refused)} call(s) from extension {number} to numbers it may not call "
                "were refused in the last hour"
            )
        unusual = ext.unusual
        while unusual and unusual[0] <= now - DAY:
            unusual.popleft()
        if unusual and score >= REPEAT_UNUSUAL_FROM:
            score += W_REPEAT_UNUSUAL
            why.append(
                f"extension {number} already made {len(unusual)} unusual call(s) in 24 hours"
            )
        return min(score, 100), why

    @staticmethod
    def _settle(ext: _ExtState, tenant: _TenantState, now: float) -> None:
        """Learn the attempts that are more than an hour old."""
        recent = ext.recent
        while recent and recent[0][0] <= now - HOUR:
            _, hour_of_week, country, e164 = recent.popleft()
            ext.baseline.learn_call(hour_of_week, country, e164)
            tenant.baseline.learn_call(hour_of_week, country, e164)
            ext.dirty = tenant.dirty = True

    def _probes(self, tenant: _TenantState, now: float) -> list[tuple[float, str, str]]:
        probes = tenant.probes
        while probes and probes[0][0] <= now - PROBE_WINDOW:
            probes.popleft()
        return list(probes)

    def _record(
        self,
        attempt: CallAttempt,
        ext: _ExtState,
        tenant: _TenantState,
        dest: Destination,
        local: dt.datetime,
    ) -> None:
        now = attempt.at
        if ext.baseline.calls == 0:  # the first call starts the history (not a suspension)
            ext.baseline.first_at = min(ext.baseline.first_at, now)
        hour_of_week = local.weekday() * 24 + local.hour
        ext.recent.append((now, hour_of_week, dest.country, dest.e164))
        if not dest.national or dest.number_type not in NATIONAL_ALLOWED:
            ext.prefixes.append((now, dest.e164[:6]))
            if len(ext.prefixes) > 1000:
                ext.prefixes.popleft()

    # -- outcomes ------------------------------------------------------------------------

    def _decided(self, attempt: CallAttempt, decision: Decision, suspend: bool = False) -> Decision:
        if not decision.allow and attempt.kind == "external" and decision.rule == "destination":
            state = self._ext.get((attempt.tenant, attempt.extension))
            if state is not None:
                state.refused.append(attempt.at)
                if len(state.refused) > 100:
                    state.refused.popleft()
        if decision.severity is not None:
            self._alert(attempt, decision, suspend)
        return decision

    def _alert(self, attempt: CallAttempt, decision: Decision, suspend: bool = False) -> None:
        suspend = suspend or (
            decision.severity == "critical"
            and decision.rule in FRAUD_RULES
            and self.book.tenant(attempt.tenant).suspend_on_critical
        )
        what = {
            "external": f"a call from extension {attempt.extension} to {attempt.dialed}",
            "forwarded": f"a call diverted by extension {attempt.extension} to {attempt.dialed}",
            "forward-change": f"a diversion of extension {attempt.extension} to {attempt.dialed}",
        }.get(attempt.kind, f"a call to {attempt.dialed}")
        verb = "was refused" if not decision.allow else "was allowed but looks unusual"
        summary = f"{what[0].upper()}{what[1:]} {verb}"
        if suspend:
            reason = f"{decision.rule}: {decision.reasons[0]}"[:500]
            self.suspend(attempt.tenant, attempt.extension, reason)
            summary += f"; extension {attempt.extension} is suspended until an admin resumes it"
        self.outbox.append(
            GuardAlert(
                attempt.tenant,
                attempt.extension or None,
                decision.severity or "warning",
                decision.rule or "guard",
                summary,
                decision.reasons,
                attempt.at,
                suspend,
                kind=attempt.kind,
            )
        )

    def _raise(
        self,
        tenant: str,
        extension: str,
        rule: str,
        summary: str,
        reasons: tuple[str, ...],
        at: float,
    ) -> None:
        self.outbox.append(GuardAlert(tenant, extension, "critical", rule, summary, reasons, at))

    # -- call life cycle -----------------------------------------------------------------

    def on_call_start(self, attempt: CallAttempt, ref: int) -> None:
        if attempt.kind == "inbound":
            self._inbound[ref] = _Inbound(
                attempt.tenant,
                attempt.extension,
                attempt.caller,
                self._suspicious_caller(attempt),
                attempt.at,
            )
            return
        if attempt.kind not in COSTLY_KINDS or attempt.destination is None:
            return
        old = self._active.pop(ref, None)
        if old is not None:
            self._release(ref, old)
        policy = self.book.effective(attempt.tenant, attempt.extension, True)
        local = policy.local(attempt.at)
        self._active[ref] = _Active(
            attempt.tenant,
            attempt.extension,
            self.rates.per_minute(attempt.destination),
            local.weekday(),
            policy.max_call_minutes * 60.0,
        )
        self._ext_state(attempt.tenant, attempt.extension, attempt.at).active.add(ref)
        self._tenant_state(attempt.tenant, attempt.at).active.add(ref)

    def _suspicious_caller(self, attempt: CallAttempt) -> str | None:
        caller = attempt.caller.strip().lower()
        if caller in WITHHELD or not any(c.isdigit() for c in caller):
            return "withheld"
        home = attempt.destination.country if attempt.destination is not None else "US"
        origin = classify(attempt.caller, home)
        if origin is None or not origin.valid:
            return f"invalid {attempt.caller[:20]}"
        if not origin.national:
            return f"foreign {origin.e164}"
        return None

    def on_call_answer(self, ref: int, at: float) -> None:
        call = self._active.get(ref)
        if call is not None and call.answered is None:
            call.answered = at
            ext = self._ext.get((call.tenant, call.extension))
            tenant = self._tenants.get(call.tenant)
            if ext is not None and tenant is not None:
                ext.spend.start(call.rate, at)
                tenant.spend.start(call.rate, at)
        inbound = self._inbound.get(ref)
        if inbound is not None and inbound.answered is None:
            inbound.answered = at

    def on_call_end(self, ref: int, at: float) -> float | None:
        inbound = self._inbound.pop(ref, None)
        if inbound is not None and inbound.suspicious is not None:
            talked = at - inbound.answered if inbound.answered is not None else 0.0
            if talked <= PROBE_MAX_SECONDS:
                probes = self._tenant_state(inbound.tenant, at).probes
                probes.append((at, inbound.extension, inbound.suspicious))
                if len(probes) > 1000:
                    probes.popleft()
        call = self._active.pop(ref, None)
        if call is None:
            return None
        self._release(ref, call)
        if call.answered is None:
            return 0.0
        cost = max(0.0, at - call.answered) / 60.0 * call.rate
        ext = self._ext_state(call.tenant, call.extension, at)
        tenant = self._tenant_state(call.tenant, at)
        ext.spend.add(at, cost)
        tenant.spend.add(at, cost)
        ext.baseline.learn_spend(call.weekday, cost)
        tenant.baseline.learn_spend(call.weekday, cost)
        ext.dirty = tenant.dirty = True
        return round(cost, 4)

    def _release(self, ref: int, call: _Active) -> None:
        ext = self._ext.get((call.tenant, call.extension))
        if ext is not None:
            ext.active.discard(ref)
            if call.answered is not None:
                ext.spend.stop(call.rate, call.answered)
        tenant = self._tenants.get(call.tenant)
        if tenant is not None:
            tenant.active.discard(ref)
            if call.answered is not None:
                tenant.spend.stop(call.rate, call.answered)

    def police(self, now: float) -> list[tuple[int, str]]:
        """Calls to cut off now: suspended extensions, spend caps, maximum duration."""
        cut, self._cutoffs = self._cutoffs, []
        over: set[tuple[str, str]] = set()
        for ref, call in self._active.items():
            if call.answered is None:
                continue
            if now - call.answered > call.max_seconds:
                cut.append((ref, f"costly call longer than {call.max_seconds / 60:g} minutes"))
                continue
            over.add((call.tenant, call.extension))
        for tenant_name, number in over:
            ext = self._ext[(tenant_name, number)]
            policy = self.book.effective(tenant_name, number, True)
            hour, day = ext.spend.totals(now)
            tenant = self._tenants[tenant_name]
            tenant_day = tenant.spend.totals(now)[1]
            cur = self.rates.currency
            breach = None
            if hour > policy.spend_per_hour:
                breach = (
                    f"spent an estimated {_money(hour, cur)} in the last hour "
                    f"(cap {policy.spend_per_hour:g})"
                )
            elif day > policy.spend_per_day:
                breach = (
                    f"spent an estimated {_money(day, cur)} in 24 hours "
                    f"(cap {policy.spend_per_day:g})"
                )
            elif tenant_day > policy.tenant_spend_per_day:
                breach = (
                    f"tenant {tenant_name} spent an estimated {_money(tenant_day, cur)} in 24 "
                    f"hours (cap {policy.tenant_spend_per_day:g})"
                )
            if breach is None:
                continue
            refs = [r for r in ext.active if r in self._active]
            for ref in refs:
                cut.append((ref, f"spend cap: extension {number} {breach}"))
            self._raise(
                tenant_name,
                number,
                "spend-cap",
                f"{len(refs)} call(s) of extension {number} cut off: spend cap reached",
                (f"extension {number} {breach}",),
                now,
            )
        return cut
