"""Attack simulator: the real guard on simulated weeks of a provider's traffic.

A guard is only as good as its misses and its false alarms, and neither can be
judged on a test bench with five calls. This generates a month of ordinary traffic
for tenants of several kinds (:mod:`pbxwarden.guard.sim_world`: offices, law firms,
call centres dialling abroad all day, hotels whose guests phone home at night, shops,
staff who forward their phone to their mobile and abroad, diaspora tenants), injects
the attacks toll fraud is made of (:mod:`pbxwarden.guard.sim_attacks`), drives the
unmodified :class:`~pbxwarden.guard.engine.Guard` only through its public hook on
simulated time, as ``pbx/calls.py`` does, and reports per attack whether it was
stopped and the money lost, and on clean traffic what an operator would live with:
alerts, refused calls, suspended extensions and calls cut off, per 1,000
extension-days.

Two sets of runs: the *tuning* set (seeds and the mix in this package) that the
weights may be tuned on, and the *hold-out* set (:mod:`pbxwarden.guard.holdout`, other
seeds and another mix) that tuning does not look at. Each report names its set.
It is an event loop over a heap: no library models telephone fraud.
"""

from __future__ import annotations

import datetime as dt
import heapq
import itertools
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pbxwarden.guard.engine import Guard, GuardAlert, GuardConfig
from pbxwarden.guard.sim_world import TUNING_MIX, Extension, Mix, NumberMaker, Tenant, make_tenants
from pbxwarden.pbx.numbers import Destination, classify
from pbxwarden.pbx.policy import CallAttempt

DAY = 86400.0
HOUR = 3600.0
PREMIUM = "+19005550123"  # prices the budget: 10 minutes of US premium rate
TUNING_SEEDS = (1, 2, 3)
ATTACKS = (
    "diversion-premium",
    "diversion-abroad",
    "quiet-diversion",
    "direct-irsf",
    "slow-drip",
    "weekend-burst",
    "trunk-hairpin",
    "wangiri-callback",
    "test-call-pump",
    "spread",
)


@dataclass
class AttackResult:
    scenario: str
    tenant: str
    extension: str
    attempts: int = 0
    connected: int = 0
    minutes: float = 0.0
    lost: float = 0.0
    without_guard: float = 0.0
    first_block_after_calls: int | None = None
    first_block_after_minutes: float | None = None
    first_block_at: float | None = None
    first_costly_at: float | None = None
    alerted: bool = False
    started: float = 0.0
    extensions: set[str] = field(default_factory=set)  # every extension the attack used

    @property
    def blocked(self) -> bool:
        return self.first_block_after_calls is not None

    @property
    def hours_to_block(self) -> float | None:
        if self.first_block_at is None or self.first_costly_at is None:
            return None
        return max(0.0, self.first_block_at - self.first_costly_at) / HOUR


@dataclass
class Report:
    set_name: str
    seed: int
    tenants: int
    extensions: int
    days: int
    clean_calls: int
    clean_refused: int
    clean_suspended: int  # attempts of attacked extensions' own users while suspended
    false_alerts: int  # distinct (extension, rule, day) on clean extensions
    critical_alerts: int
    false_alert_reasons: dict[str, int]
    suspended_clean: int  # clean extensions the guard suspended
    cut_clean: int  # clean calls cut off
    would_have_refused: int  # clean attempts a rule in report-only would have refused
    attacks: list[AttackResult]
    decisions: int
    seconds: float
    premium_rate: float
    refused_reasons: dict[str, int] = field(default_factory=dict)
    kinds: dict[str, int] = field(default_factory=dict)

    @property
    def extension_days(self) -> int:
        return max(1, self.extensions * self.days)

    def per_1000(self, count: int) -> float:
        return 1000.0 * count / self.extension_days

    @property
    def false_alerts_per_1000_extension_days(self) -> float:
        return self.per_1000(self.false_alerts)

    @property
    def budget(self) -> float:
        return 10 * self.premium_rate

    @property
    def lost(self) -> float:
        return sum(a.lost for a in self.attacks)

    def met(self) -> dict[str, bool]:
        """The aims of issue 13, on this run."""
        return {
            "alerts < 1 per 1,000 extension-days": self.per_1000(self.false_alerts) < 1.0,
            "refused < 1 per 1,000 extension-days": self.per_1000(self.clean_refused) < 1.0,
            "no clean extension suspended": self.suspended_clean == 0,
            "every attack stopped within budget": all(
                a.lost < self.budget and (a.blocked or a.without_guard < self.budget)
                for a in self.attacks
            ),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "set": self.set_name,
            "seed": self.seed,
            "tenants": self.tenants,
            "tenant_kinds": self.kinds,
            "extensions": self.extensions,
            "days": self.days,
            "clean_calls": self.clean_calls,
            "clean_refused": self.clean_refused,
            "clean_refused_per_1000_extension_days": round(self.per_1000(self.clean_refused), 3),
            "clean_refused_reasons": self.refused_reasons,
            "clean_refused_while_suspended": self.clean_suspended,
            "false_alerts": self.false_alerts,
            "false_alerts_per_1000_extension_days": round(
                self.false_alerts_per_1000_extension_days, 3
            ),
            "critical_alerts_per_1000_extension_days": round(
                self.per_1000(self.critical_alerts), 3
            ),
            "false_alert_reasons": self.false_alert_reasons,
            "clean_extensions_suspended": self.suspended_clean,
            "clean_calls_cut_off": self.cut_clean,
            "would_have_refused": self.would_have_refused,
            "decisions": self.decisions,
            "seconds": round(self.seconds, 2),
            "budget": round(self.budget, 2),
            "lost_with_guard": round(self.lost, 2),
            "lost_without_guard": round(sum(a.without_guard for a in self.attacks), 2),
            "met": self.met(),
            "attacks": [
                {
                    "scenario": a.scenario,
                    "tenant": a.tenant,
                    "extension": a.extension,
                    "blocked": a.blocked,
                    "alerted": a.alerted,
                    "attempts": a.attempts,
                    "connected": a.connected,
                    "calls_until_block": a.first_block_after_calls,
                    "minutes_until_block": (
                        None
                        if a.first_block_after_minutes is None
                        else round(a.first_block_after_minutes, 1)
                    ),
                    "hours_from_first_costly_event_to_block": (
                        None if a.hours_to_block is None else round(a.hours_to_block, 2)
                    ),
                    "lost_with_guard": round(a.lost, 2),
                    "lost_without_guard": round(a.without_guard, 2),
                }
                for a in self.attacks
            ],
        }

    def markdown(self) -> str:
        budget = self.budget
        lines = [
            f"Set {self.set_name}, seed {self.seed}: {self.tenants} tenants "
            f"({', '.join(f'{k} {v}' for k, v in sorted(self.kinds.items()))}), "
            f"{self.extensions} extensions, {self.days} days: {self.clean_calls} clean costly "
            f"attempts, {self.decisions} guard decisions in {self.seconds:.1f} s.",
            "",
            "| attack | stopped | alert | connected until block | hours to block "
            "| lost with guard | lost without | within budget |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for a in self.attacks:
            hours = a.hours_to_block
            lines.append(
                f"| {a.scenario} | "
                f"{'yes' if a.blocked else 'NO' if a.without_guard >= budget else 'no (cheap)'} | "
                f"{'yes' if a.alerted else 'no'} | "
                f"{'-' if a.first_block_after_calls is None else a.first_block_after_calls} | "
                f"{'-' if hours is None else f'{hours:.2f}'} | "
                f"{a.lost:.2f} | {a.without_guard:.2f} | "
                f"{'yes' if a.lost < budget else 'NO'} |"
            )
        reasons = ", ".join(f"{k}: {v}" for k, v in self.false_alert_reasons.items())
        refused = ", ".join(f"{k}: {v}" for k, v in self.refused_reasons.items())
        lines += [
            "",
            f"Budget: 10 minutes of premium-rate calls = {budget:.2f}; lost {self.lost:.2f} "
            f"in all. Clean traffic, per 1,000 extension-days: alerts "
            f"{self.per_1000(self.false_alerts):.2f}"
            + (f" ({reasons})" if reasons else "")
            + f", critical {self.per_1000(self.critical_alerts):.2f}, refused "
            f"{self.per_1000(self.clean_refused):.2f}"
            + (f" ({refused})" if refused else "")
            + f"; {self.suspended_clean} clean extensions suspended, {self.cut_clean} clean "
            f"calls cut off, {self.would_have_refused} would-have-refused in report-only.",
            "Aims: "
            + "; ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in self.met().items()),
        ]
        return "\n".join(lines)


class _Numbers:
    """Classification is the PBX's job before the guard; cache it like a busy PBX would."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], Destination | None] = {}

    def __call__(self, number: str, home: str = "US") -> Destination | None:
        key = (number, home)
        dest = self._cache.get(key)
        if dest is None and key not in self._cache:
            dest = self._cache[key] = classify(number, home)
        return dest


@dataclass(slots=True)
class _Live:
    answered: float | None
    rate: float
    result: AttackResult | None
    clean: bool


class Simulation:
    def __init__(
        self,
        tenants: int = 100,
        extensions: int = 1000,
        days: int = 30,
        seed: int = 1,
        attacks: tuple[str, ...] = ATTACKS,
        config: GuardConfig | None = None,
        start: float | None = None,
        mix: Mix = TUNING_MIX,
    ) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.mix = mix
        self.days = days
        # a Monday at midnight UTC
        self.start = (
            start if start is not None else dt.datetime(2027, 3, 1, tzinfo=dt.UTC).timestamp()
        )
        self.make = NumberMaker(self.rng)
        self.tenants = make_tenants(self.rng, mix, tenants, extensions, days)
        self.by_name = {t.name: t for t in self.tenants}
        self.config = config or GuardConfig(tenants={t.name: t.policy for t in self.tenants})
        self.guard = Guard(self.config)
        self.numbers = _Numbers()
        self.attack_names = attacks
        self._events: list[tuple[float, int, Callable[[float], None]]] = []
        self._seq = itertools.count()
        self._refs = itertools.count(1)
        self._live: dict[int, _Live] = {}
        self.results: list[AttackResult] = []
        self.clean_calls = 0
        self.clean_refused = 0
        self.clean_suspended = 0
        self.cut_clean = 0
        self.would_have = 0
        self.refused_reasons: dict[str, int] = {}
        self.decisions = 0
        self.alerts: list[GuardAlert] = []
        self.attack_owner: dict[tuple[str, str], AttackResult] = {}
        self._busy_until: dict[tuple[str, str], float] = {}
        self.stays: dict[str, tuple[int, str]] = {}
        self.forward_ok: dict[
            tuple[str, str], str | None
        ] = {}  # diversion the PBX set  # hotel room -> (last night, home number)

    def at(self, t: float, fn: Callable[[float], None]) -> None:
        heapq.heappush(self._events, (t, next(self._seq), fn))

    def local_midnight(self, tenant: Tenant, day: int) -> float:
        date = dt.datetime.fromtimestamp(self.start + day * DAY, dt.UTC).date()
        return dt.datetime.combine(date, dt.time(), tzinfo=tenant.policy.zone).timestamp()

    def poisson(self, mean: float) -> int:
        if mean > 30:  # normal approximation for the busy ones
            return max(0, round(self.rng.gauss(mean, math.sqrt(mean))))
        limit, k, p = math.exp(-mean), 0, 1.0
        while True:
            p *= self.rng.random()
            if p <= limit:
                return k
            k += 1

    # -- clean traffic -----------------------------------------------------------------

    def _plan_clean(self) -> None:
        from pbxwarden.guard import sim_traffic

        for tenant in self.tenants:
            sim_traffic.plan_tenant(self, tenant)

    def clean_call(
        self, ext: Extension, target: str, minutes: float, answered: bool = True
    ) -> Callable[[float], None]:
        def fire(now: float) -> None:
            key = (ext.tenant, ext.number)
            if self._busy_until.get(key, 0.0) > now:  # one call at a time per person
                return
            self._busy_until[key] = now + 30 + minutes * 60
            self.call(
                ext.tenant,
                ext.number,
                ext.number,
                target,
                "external",
                now,
                minutes,
                None,
                answered=answered,
                source=ext.source,
            )

        return fire

    def inbound(
        self,
        tenant: Tenant,
        ext: Extension,
        caller: str,
        did: str,
        talk: float | None,
        forward_to: str | None = None,
        result: AttackResult | None = None,
        minutes: float = 3.0,
    ) -> Callable[[float], None]:
        """A carrier's call to a DID: ``talk`` seconds (None: missed, rang 10 s);
        with ``forward_to``, diverted there as a new costly call paid by ``ext``."""

        def fire(now: float) -> None:
            divert = forward_to
            if result is None and divert != self.forward_ok.get((tenant.name, ext.number)):
                divert = None  # the PBX refused that diversion: the call rings the desk
            attempt = CallAttempt(
                tenant.name,
                ext.number,
                caller,
                did,
                "inbound",
                "sim",
                now,
                self.numbers(did, tenant.home),
            )
            self.guard.authorize(attempt)
            self.decisions += 1
            ref = next(self._refs)
            self.guard.on_call_start(attempt, ref)
            if divert is not None:
                self.call(
                    tenant.name, ext.number, caller, divert, "forwarded", now, minutes, result
                )
                self.at(now + 2, lambda t: self._inbound_end(ref, t))
                return
            if talk is None:
                self.at(now + 10, lambda t: self._inbound_end(ref, t))
                return
            self.guard.on_call_answer(ref, now + 5)
            self.at(now + 5 + talk, lambda t: self._inbound_end(ref, t))

        return fire

    def _inbound_end(self, ref: int, now: float) -> None:
        self.guard.on_call_end(ref, now)

    def forward_change(
        self, ext: Extension, target: str, result: AttackResult | None = None
    ) -> Callable[[float], None]:
        def fire(now: float) -> None:
            tenant = self.by_name[ext.tenant]
            attempt = CallAttempt(
                ext.tenant,
                ext.number,
                ext.number,
                target,
                "forward-change",
                ext.source,
                now,
                self.numbers(target, tenant.home),
            )
            decision = self.guard.authorize(attempt)
            self.decisions += 1
            self._collect()
            if result is None:
                self.forward_ok[(ext.tenant, ext.number)] = target if decision.allow else None
            if result is not None and not decision.allow:
                self._blocked(result, now)
            elif (
                result is None
                and not decision.allow
                and self.guard.is_suspended(ext.tenant, ext.number)
                and (ext.tenant, ext.number) in self.attack_owner
            ):
                self.clean_suspended += 1  # the attacked extension's own user, after the attack
            elif result is None and not decision.allow:
                self.clean_refused += 1
                self.refused_reasons[decision.rule or "?"] = (
                    self.refused_reasons.get(decision.rule or "?", 0) + 1
                )

        return fire

    # -- the PBX's side of a call --------------------------------------------------------

    def call(
        self,
        tenant: str,
        ext: str,
        caller: str,
        target: str,
        kind: str,
        now: float,
        minutes: float,
        result: AttackResult | None,
        answered: bool = True,
        source: str = "sim",
    ) -> bool:
        home = self.by_name[tenant].home
        dest = self.numbers(target, home)
        attempt = CallAttempt(tenant, ext, caller, target, kind, source, now, dest)
        rate = self.guard.rates.per_minute(dest) if dest is not None else 0.0
        if result is not None:
            result.attempts += 1
            result.extensions.add(ext)
            if answered:
                result.without_guard += minutes * rate
            if result.first_costly_at is None:
                result.first_costly_at = now
        decision = self.guard.authorize(attempt)
        self.decisions += 1
        self._collect()
        if result is None:
            self.clean_calls += 1
            if any(r.startswith("would have refused") for r in decision.reasons):
                self.would_have += 1
        if not decision.allow:
            if result is not None:
                self._blocked(result, now)
            elif (tenant, ext) in self.attack_owner and self.guard.is_suspended(tenant, ext):
                self.clean_suspended += 1  # the attacked extension's own user, after the attack
            else:
                self.clean_refused += 1
                rule = decision.rule or "?"
                self.refused_reasons[rule] = self.refused_reasons.get(rule, 0) + 1
            return False
        ref = next(self._refs)
        self.guard.on_call_start(attempt, ref)
        if not answered:
            self._live[ref] = _Live(None, rate, result, result is None)
            self.at(now + 20, lambda t: self._end(ref, t))
            return True
        answer = now + 8
        self.guard.on_call_answer(ref, answer)
        self._live[ref] = _Live(answer, rate, result, result is None)
        if result is not None:
            result.connected += 1
        self.at(answer + minutes * 60, lambda t: self._end(ref, t))
        return True

    def _blocked(self, result: AttackResult, now: float) -> None:
        if result.first_block_after_calls is None:
            result.first_block_after_calls = result.connected
            result.first_block_after_minutes = result.minutes
            result.first_block_at = now

    def _end(self, ref: int, now: float, cut: bool = False) -> None:
        live = self._live.pop(ref, None)
        self.guard.on_call_end(ref, now)
        if live is None:
            return
        if cut and live.clean:
            self.cut_clean += 1
        result = live.result
        if result is not None and live.answered is not None:
            minutes = max(0.0, now - live.answered) / 60
            result.minutes += minutes
            result.lost += minutes * live.rate
            if cut:
                self._blocked(result, now)

    def _police(self, now: float) -> None:
        for ref, _ in self.guard.police(now):
            if ref in self._live:
                self._end(ref, now, cut=True)
        self._collect()
        if now + 60 < self.start + self.days * DAY:
            self.at(now + 60, self._police)

    def _collect(self) -> None:
        while self.guard.outbox:
            self.alerts.append(self.guard.outbox.popleft())

    # -- run -----------------------------------------------------------------------------

    def run(self, set_name: str = "tuning") -> Report:
        from pbxwarden.guard import sim_attacks

        began = time.perf_counter()
        self._plan_clean()
        sim_attacks.plan(self, random.Random(self.rng.random()))
        self.at(self.start + 60, self._police)
        end = self.start + self.days * DAY
        while self._events:
            t, _, fn = heapq.heappop(self._events)
            if t > end + DAY:
                break
            fn(t)
        self._collect()
        return self._report(time.perf_counter() - began, set_name)

    def _report(self, seconds: float, set_name: str) -> Report:
        seen: set[tuple[str, str, str, int]] = set()
        critical: set[tuple[str, str, str, int]] = set()
        why: dict[str, int] = {}
        suspended: set[tuple[str, str]] = set()
        for alert in self.alerts:
            key = (alert.tenant, alert.extension or "")
            result = self.attack_owner.get(key)
            if result is not None and alert.at >= result.started - DAY:
                result.alerted = True
                continue
            day = int((alert.at - self.start) // DAY)
            distinct = (alert.tenant, alert.extension or "-", alert.rule, day)
            if alert.suspend:
                suspended.add(key)
            if distinct in seen:
                continue
            seen.add(distinct)
            why[alert.rule] = why.get(alert.rule, 0) + 1
            if alert.severity == "critical":
                critical.add(distinct)
        premium = self.numbers(PREMIUM)
        kinds: dict[str, int] = {}
        for t in self.tenants:
            kinds[t.kind] = kinds.get(t.kind, 0) + 1
        return Report(
            set_name=set_name,
            seed=self.seed,
            tenants=len(self.tenants),
            extensions=sum(len(t.extensions) for t in self.tenants),
            days=self.days,
            clean_calls=self.clean_calls,
            clean_refused=self.clean_refused,
            clean_suspended=self.clean_suspended,
            false_alerts=len(seen),
            critical_alerts=len(critical),
            false_alert_reasons=why,
            suspended_clean=len(suspended),
            cut_clean=self.cut_clean,
            would_have_refused=self.would_have,
            attacks=self.results,
            decisions=self.decisions,
            seconds=seconds,
            premium_rate=self.guard.rates.per_minute(premium) if premium else 2.0,
            refused_reasons=self.refused_reasons,
            kinds=kinds,
        )


def run_set(
    name: str,
    tenants: int = 50,
    extensions: int = 700,
    days: int = 30,
    attacks: tuple[str, ...] = ATTACKS,
    config: GuardConfig | None = None,
) -> list[Report]:
    """Every seed of a set: ``tuning`` (here), ``holdout`` or ``spent`` (the former
    hold-out seeds and mix, tuning data now; both in guard/holdout.py)."""
    seeds: tuple[int, ...]
    if name == "holdout":
        from pbxwarden.guard.holdout import HOLDOUT_MIX, HOLDOUT_SEEDS

        seeds, mix = HOLDOUT_SEEDS, HOLDOUT_MIX
    elif name == "spent":
        from pbxwarden.guard.holdout import SPENT_MIX, SPENT_SEEDS

        seeds, mix = SPENT_SEEDS, SPENT_MIX
    elif name == "tuning":
        seeds, mix = TUNING_SEEDS, TUNING_MIX
    else:
        raise ValueError(f"unknown set {name!r}: tuning, spent or holdout")
    return [
        Simulation(tenants, extensions, days, seed, attacks, config, mix=mix).run(name)
        for seed in seeds
    ]
