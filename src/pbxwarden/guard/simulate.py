"""Attack simulator: the real guard on simulated weeks of a provider's traffic.

A guard is only as good as its misses and its false alarms, and neither can be
judged on a test bench with five calls. This generates a month of ordinary traffic
for many tenants (office hours in their own time zones, weekends and holidays,
national, mobile and international calls, inbound calls with the odd withheld or
foreign caller, people forwarding their phone to their mobile), injects the attacks
toll fraud is made of, runs the unmodified :class:`~pbxwarden.guard.engine.Guard`
on simulated time, and reports per attack whether it was stopped, how fast, and the
money lost with the guard against without it, plus the false alerts on clean
traffic. It is an event loop over a heap: no library models telephone fraud.
"""

from __future__ import annotations

import datetime as dt
import heapq
import itertools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pbxwarden.guard.engine import Guard, GuardAlert, GuardConfig, TenantPolicy
from pbxwarden.guard.policy import PolicyOverride
from pbxwarden.pbx.numbers import Destination, classify
from pbxwarden.pbx.policy import CallAttempt

DAY = 86400.0
HOUR = 3600.0
ZONES = ("America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles")
AREA_CODES = ("202", "212", "305", "312", "415", "512", "617", "713", "206", "303", "404")
FOREIGN = {  # a few valid number ranges per country, E.164 without the last digits
    "DE": "+49301234",
    "FR": "+3314236",
    "GB": "+4420794",
    "MX": "+5255123",
    "ES": "+3491123",
    "CA": "+1416555",
    "LV": "+3716712",
}
PREMIUM = "+1900555"  # US premium rate
IRSF = (("+88216", 12), ("+537", 10), ("+3712", 11), ("+682", 8), ("+252", 11))
ATTACKS = (
    "diversion-premium",
    "diversion-abroad",
    "direct-irsf",
    "slow-drip",
    "weekend-burst",
    "trunk-hairpin",
    "wangiri-callback",
)


@dataclass
class Extension:
    tenant: str
    number: str
    role: str  # office, sales, reception, lobby
    calls_per_day: float
    countries: tuple[str, ...]  # international destinations this person calls
    contacts: list[str] = field(default_factory=list)


@dataclass
class Tenant:
    name: str
    zone: str
    policy: TenantPolicy
    extensions: list[Extension]
    did: str
    holidays: set[int]  # day indexes


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
    alerted: bool = False
    started: float = 0.0

    @property
    def blocked(self) -> bool:
        return self.first_block_after_calls is not None


@dataclass
class Report:
    tenants: int
    extensions: int
    days: int
    clean_calls: int
    clean_refused: int
    clean_suspended: int
    false_alerts: int
    false_alert_reasons: dict[str, int]
    attacks: list[AttackResult]
    decisions: int
    seconds: float
    premium_rate: float

    @property
    def false_alerts_per_1000_extension_days(self) -> float:
        return 1000.0 * self.false_alerts / max(1, self.extensions * self.days)

    def to_json(self) -> dict[str, Any]:
        return {
            "tenants": self.tenants,
            "extensions": self.extensions,
            "days": self.days,
            "clean_calls": self.clean_calls,
            "clean_refused": self.clean_refused,
            "clean_refused_while_suspended": self.clean_suspended,
            "false_alerts": self.false_alerts,
            "false_alerts_per_1000_extension_days": round(
                self.false_alerts_per_1000_extension_days, 3
            ),
            "false_alert_reasons": self.false_alert_reasons,
            "decisions": self.decisions,
            "seconds": round(self.seconds, 2),
            "budget": round(10 * self.premium_rate, 2),
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
                    "lost_with_guard": round(a.lost, 2),
                    "lost_without_guard": round(a.without_guard, 2),
                }
                for a in self.attacks
            ],
        }

    def markdown(self) -> str:
        budget = 10 * self.premium_rate
        lines = [
            f"{self.tenants} tenants, {self.extensions} extensions, {self.days} days: "
            f"{self.clean_calls} clean calls ({self.clean_refused} refused by policy or limits, "
            f"{self.clean_suspended} from attacked extensions while suspended), "
            f"{self.decisions} guard decisions in {self.seconds:.1f} s.",
            "",
            "| attack | stopped | alert | calls until block | minutes until block "
            "| lost with guard | lost without | within budget |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for a in self.attacks:
            minutes = round(a.first_block_after_minutes or 0)
            lines.append(
                f"| {a.scenario} | {'yes' if a.blocked else 'NO'} | "
                f"{'yes' if a.alerted else 'no'} | "
                f"{'-' if a.first_block_after_calls is None else a.first_block_after_calls} | "
                f"{'-' if a.first_block_after_minutes is None else minutes} | "
                f"{a.lost:.2f} | {a.without_guard:.2f} | "
                f"{'yes' if a.lost < budget else 'NO'} |"
            )
        lines += [
            "",
            f"Budget: 10 minutes of premium-rate calls = {budget:.2f}. False alerts on clean "
            f"traffic: {self.false_alerts} = "
            f"{self.false_alerts_per_1000_extension_days:.2f} per 1,000 extension-days"
            + (
                " (" + ", ".join(f"{k}: {v}" for k, v in self.false_alert_reasons.items()) + ")"
                if self.false_alert_reasons
                else ""
            )
            + ".",
        ]
        return "\n".join(lines)


class _Numbers:
    """Classification is the PBX's job before the guard; cache it like a busy PBX would."""

    def __init__(self) -> None:
        self._cache: dict[str, Destination | None] = {}

    def __call__(self, number: str) -> Destination | None:
        dest = self._cache.get(number)
        if dest is None and number not in self._cache:
            dest = self._cache[number] = classify(number, "US")
        return dest


def _us_number(rng: random.Random) -> str:
    exchange = rng.randint(200, 999)
    while exchange in (555, 311, 411, 611, 711, 811, 911, 950, 958, 959, 976):
        exchange = rng.randint(200, 999)
    return f"+1{rng.choice(AREA_CODES)}{exchange}{rng.randint(0, 9999):04d}"


def _valid(rng: random.Random, prefix: str, length: int) -> str:
    """A number in ``prefix`` that is valid (``length`` digits after the +)."""
    for _ in range(100):
        number = prefix + "".join(str(rng.randint(0, 9)) for _ in range(length - len(prefix) + 1))
        dest = classify(number, "US")
        if dest is not None and dest.valid:
            return number
    raise ValueError(f"no valid number of {length} digits in {prefix}")


def _foreign(rng: random.Random, country: str) -> str:
    base = FOREIGN[country]
    digits = {"DE": 12, "FR": 11, "GB": 12, "MX": 12, "ES": 11, "CA": 11, "LV": 11}[country]
    rest = digits - (len(base) - 1)
    return base + "".join(str(rng.randint(0, 9)) for _ in range(rest))


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
    ) -> None:
        self.rng = random.Random(seed)
        self.days = days
        # a Monday at midnight UTC
        self.start = (
            start if start is not None else dt.datetime(2027, 3, 1, tzinfo=dt.UTC).timestamp()
        )
        self.tenants = self._make_tenants(tenants, extensions)
        self.config = config or GuardConfig(tenants={t.name: t.policy for t in self.tenants})
        self.guard = Guard(self.config)
        self.numbers = _Numbers()
        self.attack_names = attacks
        self._events: list[tuple[float, int, Callable[[float], None]]] = []
        self._seq = itertools.count()
        self._refs = itertools.count(1)
        self._live: dict[int, tuple[float, float, Any]] = {}  # ref -> (answered, rate, owner)
        self.results: list[AttackResult] = []
        self.clean_calls = 0
        self.clean_refused = 0
        self.clean_suspended = 0
        self.decisions = 0
        self.alerts: list[GuardAlert] = []
        self._wangiri_victims: dict[str, set[str]] = {}
        self._busy_until: dict[tuple[str, str], float] = {}

    # -- world -------------------------------------------------------------------------

    def _make_tenants(self, count: int, extensions: int) -> list[Tenant]:
        rng = self.rng
        per = max(2, extensions // count)
        out = []
        for i in range(count):
            name = f"t{i:03d}"
            countries = tuple(
                rng.sample(["DE", "FR", "GB", "MX", "ES", "CA"], rng.choice([0, 0, 1, 2, 3]))
            )
            baltic = i % 10 == 3  # a tenant doing business in Latvia (a high-risk range)
            if baltic:
                countries = (*countries, "LV")
            policy = TenantPolicy(
                allow_countries=list(countries),
                allow_high_risk=baltic,
                allow_international_forwarding=baltic or i % 7 == 0,
                timezone=ZONES[i % len(ZONES)],
                business_hours=["mon-fri 08:00-19:00"],
                after_hours=PolicyOverride(calls_per_hour=20),
            )
            exts = []
            for j in range(per):
                role = (
                    "reception"
                    if j == 0
                    else rng.choices(["office", "sales", "lobby"], [0.7, 0.25, 0.05])[0]
                )
                rate = {"reception": 6.0, "office": 4.0, "sales": 12.0, "lobby": 0.3}[role]
                mine = tuple(
                    c for c in countries if rng.random() < (0.8 if role == "sales" else 0.3)
                )
                ext = Extension(name, str(1000 + j), role, rate * rng.uniform(0.5, 1.5), mine)
                ext.contacts = [_us_number(rng) for _ in range(rng.randint(5, 30))]
                ext.contacts += [_foreign(rng, c) for c in mine for _ in range(rng.randint(1, 4))]
                exts.append(ext)
            holidays = {d for d in range(self.days) if rng.random() < 0.03}
            out.append(Tenant(name, policy.timezone, policy, exts, _us_number(rng), holidays))
        return out

    def _at(self, t: float, fn: Callable[[float], None]) -> None:
        heapq.heappush(self._events, (t, next(self._seq), fn))

    # -- clean traffic -----------------------------------------------------------------

    def _plan_clean(self) -> None:
        rng = self.rng
        for tenant in self.tenants:
            zone = tenant.policy.zone
            for day in range(self.days):
                midnight = dt.datetime.fromtimestamp(self.start + day * DAY, dt.UTC).replace(
                    tzinfo=zone
                )
                weekday = midnight.weekday()
                holiday = day in tenant.holidays
                base = midnight.timestamp()
                for ext in tenant.extensions:
                    n = ext.calls_per_day
                    if weekday >= 5 or holiday:
                        n *= 0.05
                    for _ in range(self._poisson(n)):
                        late = rng.random() < 0.04  # working late or early
                        hour = rng.uniform(6.5, 22.0) if late else rng.uniform(8.0, 18.5)
                        self._at(base + hour * HOUR, self._clean_call_fn(ext))
                    if rng.random() < 0.004:  # forwarding to one's own mobile, and back
                        when = base + rng.uniform(8.0, 18.0) * HOUR
                        self._at(when, self._clean_forward_fn(ext, tenant))
                # inbound calls to the company's number
                inbound = self._poisson(15 * (0.1 if weekday >= 5 or holiday else 1.0))
                for _ in range(inbound):
                    self._at(
                        base + rng.uniform(8.0, 18.5) * HOUR,
                        self._inbound_fn(tenant, tenant.extensions[0], None),
                    )

    def _poisson(self, mean: float) -> int:
        # Knuth; small means only
        limit, k, p = pow(2.718281828459045, -mean), 0, 1.0
        while True:
            p *= self.rng.random()
            if p <= limit:
                return k
            k += 1

    def _clean_call_fn(self, ext: Extension) -> Callable[[float], None]:
        def fire(now: float) -> None:
            rng = self.rng
            key = (ext.tenant, ext.number)
            if self._busy_until.get(key, 0.0) > now:  # one call at a time per person
                return
            if ext.countries and rng.random() < (0.25 if ext.role == "sales" else 0.08):
                target = _foreign(rng, rng.choice(ext.countries))
            elif rng.random() < 0.7:
                target = rng.choice(ext.contacts)
            else:
                target = _us_number(rng)
            minutes = min(rng.lognormvariate(0.8, 1.0), 180.0)
            self._busy_until[key] = now + 8 + minutes * 60
            allowed = self._call(
                ext.tenant, ext.number, ext.number, target, "external", now, minutes, None
            )
            self.clean_calls += 1
            if not allowed and self.guard.is_suspended(ext.tenant, ext.number):
                self.clean_suspended += 1  # the attacked extension's own user, after the attack
            else:
                self.clean_refused += not allowed

        return fire

    def _clean_forward_fn(self, ext: Extension, tenant: Tenant) -> Callable[[float], None]:
        def fire(now: float) -> None:
            mobile = _us_number(self.rng)
            decision = self._decide(
                ext.tenant, ext.number, ext.number, mobile, "forward-change", now
            )
            if decision is None:
                return
            # calls to the company get diverted for a while, then it is cleared
            for k in range(self.rng.randint(0, 3)):
                self._at(
                    now + (k + 1) * self.rng.uniform(600, 3600),
                    self._forwarded_fn(ext, mobile, None),
                )

        return fire

    def _forwarded_fn(
        self, ext: Extension, target: str, result: AttackResult | None, minutes: float = 3.0
    ) -> Callable[[float], None]:
        def fire(now: float) -> None:
            caller = _us_number(self.rng)
            self._call(ext.tenant, ext.number, caller, target, "forwarded", now, minutes, result)

        return fire

    def _inbound_fn(
        self, tenant: Tenant, ext: Extension, caller: str | None, talk: float | None = None
    ) -> Callable[[float], None]:
        def fire(now: float) -> None:
            rng = self.rng
            who = caller
            if who is None:
                r = rng.random()
                who = (
                    "anonymous"
                    if r < 0.01
                    else _foreign(rng, "GB")
                    if r < 0.03
                    else _us_number(rng)
                )
            attempt = CallAttempt(
                tenant.name,
                ext.number,
                who,
                tenant.did,
                "inbound",
                "sim",
                now,
                self.numbers(tenant.did),
            )
            self.guard.authorize(attempt)
            self.decisions += 1
            ref = next(self._refs)
            self.guard.on_call_start(attempt, ref)
            self.guard.on_call_answer(ref, now + 5)
            length = talk if talk is not None else rng.lognormvariate(1.0, 1.0) * 60
            self._at(now + 5 + length, lambda t: self._end(ref, t))

        return fire

    # -- the PBX's side of a call --------------------------------------------------------

    def _decide(
        self, tenant: str, ext: str, caller: str, target: str, kind: str, now: float
    ) -> Destination | None:
        dest = self.numbers(target)
        attempt = CallAttempt(tenant, ext, caller, target, kind, "sim", now, dest)
        decision = self.guard.authorize(attempt)
        self.decisions += 1
        self._collect()
        return dest if decision.allow else None

    def _call(
        self,
        tenant: str,
        ext: str,
        caller: str,
        target: str,
        kind: str,
        now: float,
        minutes: float,
        result: AttackResult | None,
    ) -> bool:
        dest = self.numbers(target)
        attempt = CallAttempt(tenant, ext, caller, target, kind, "sim", now, dest)
        rate = self.guard.rates.per_minute(dest) if dest is not None else 0.0
        if result is not None:
            result.attempts += 1
            result.without_guard += minutes * rate
        decision = self.guard.authorize(attempt)
        self.decisions += 1
        self._collect()
        if not decision.allow:
            if result is not None and result.first_block_after_calls is None:
                result.first_block_after_calls = result.connected
                result.first_block_after_minutes = result.minutes
            return False
        ref = next(self._refs)
        self.guard.on_call_start(attempt, ref)
        answered = now + 8
        self.guard.on_call_answer(ref, answered)
        self._live[ref] = (answered, rate, result)
        if result is not None:
            result.connected += 1
        self._at(answered + minutes * 60, lambda t: self._end(ref, t))
        return True

    def _end(self, ref: int, now: float) -> None:
        live = self._live.pop(ref, None)
        self.guard.on_call_end(ref, now)
        if live is None:
            return
        answered, rate, result = live
        if result is not None:
            minutes = max(0.0, now - answered) / 60
            result.minutes += minutes
            result.lost += minutes * rate

    def _police(self, now: float) -> None:
        for ref, _ in self.guard.police(now):
            if ref in self._live:
                self._end(ref, now)
        self._collect()
        if now + 60 < self.start + self.days * DAY:
            self._at(now + 60, self._police)

    def _collect(self) -> None:
        while self.guard.outbox:
            self.alerts.append(self.guard.outbox.popleft())

    # -- attacks -----------------------------------------------------------------------

    def _victim(self, rng: random.Random, need_baltic: bool = False) -> tuple[Tenant, Extension]:
        candidates = [
            t for t in self.tenants if not need_baltic or "LV" in t.policy.allow_countries
        ] or self.tenants
        used = {(r.tenant, r.extension) for r in self.results}
        for _ in range(100):  # one attack per extension, so each alert has one owner
            tenant = rng.choice(candidates)
            ext = rng.choice(tenant.extensions[1:] or tenant.extensions)
            if (tenant.name, ext.number) not in used:
                break
        return tenant, ext

    def _plan_attacks(self) -> None:
        rng = random.Random(self.rng.random())
        # the last Friday that leaves a week for the attacks; at least a week learned
        fridays = [d for d in range(4, self.days, 7) if d + 8 <= self.days] or [4]
        friday = fridays[-1]
        for index, name in enumerate(self.attack_names):
            baltic = name in ("diversion-abroad", "slow-drip", "weekend-burst", "direct-irsf")
            tenant, ext = self._victim(rng, baltic)
            date = dt.datetime.fromtimestamp(self.start + friday * DAY, dt.UTC).date()
            local_friday = dt.datetime.combine(date, dt.time(), tzinfo=tenant.policy.zone)
            # Friday 20:00 in the victim's time zone, then spread into the weekend
            t0 = local_friday.timestamp() + 20 * HOUR + index * 7 * HOUR
            result = AttackResult(name, tenant.name, ext.number, started=t0)
            self.results.append(result)
            getattr(self, "_attack_" + name.replace("-", "_"))(rng, tenant, ext, result, t0)

    def _probes(self, tenant: Tenant, t0: float) -> None:
        """'I think I dialled the wrong number, what number did I call?'"""
        self._at(t0, self._inbound_fn(tenant, tenant.extensions[0], "anonymous", talk=25))
        self._at(
            t0 + 40 * 60,
            self._inbound_fn(tenant, tenant.extensions[0], _foreign(self.rng, "GB"), talk=30),
        )

    def _diversion(
        self,
        rng: random.Random,
        tenant: Tenant,
        ext: Extension,
        result: AttackResult,
        t0: float,
        target: str,
    ) -> None:
        self._probes(tenant, t0 - 20 * HOUR)
        blocked_at_change: list[bool] = []

        def change(now: float) -> None:
            dest = self._decide(tenant.name, ext.number, ext.number, target, "forward-change", now)
            blocked_at_change.append(dest is None)

        self._at(t0, change)
        # The phone's own web page also diverts (a 3xx): the calls come whatever the PBX said.
        for k in range(40):
            self._at(t0 + 600 + k * 900, self._forwarded_fn(ext, target, result, minutes=10.0))

    def _attack_diversion_premium(
        self, rng: random.Random, tenant: Tenant, ext: Extension, result: AttackResult, t0: float
    ) -> None:
        self._diversion(rng, tenant, ext, result, t0, _valid(rng, PREMIUM, 11))

    def _attack_diversion_abroad(
        self, rng: random.Random, tenant: Tenant, ext: Extension, result: AttackResult, t0: float
    ) -> None:
        self._diversion(rng, tenant, ext, result, t0, _valid(rng, "+3712", 11))

    def _attack_direct_irsf(
        self, rng: random.Random, tenant: Tenant, ext: Extension, result: AttackResult, t0: float
    ) -> None:
        # a cracked password: many concurrent calls to revenue-share ranges at night
        for k in range(60):
            number = _valid(rng, *IRSF[k % len(IRSF)])
            self._at(t0 + k * 20, self._attacker_call_fn(tenant, ext, number, result, 30.0))

    def _attack_slow_drip(
        self, rng: random.Random, tenant: Tenant, ext: Extension, result: AttackResult, t0: float
    ) -> None:
        # one 20-minute call an hour to Latvia, nights only, for a week: under static limits
        for night in range(7):
            for k in range(6):
                number = _valid(rng, "+3716", 11)
                when = t0 + night * DAY + k * HOUR + rng.uniform(0, 600)
                self._at(when, self._attacker_call_fn(tenant, ext, number, result, 20.0))

    def _attack_weekend_burst(
        self, rng: random.Random, tenant: Tenant, ext: Extension, result: AttackResult, t0: float
    ) -> None:
        saturday = t0 + DAY
        for k in range(120):
            number = _valid(rng, "+3712", 11)
            self._at(saturday + k * 120, self._attacker_call_fn(tenant, ext, number, result, 45.0))

    def _attack_trunk_hairpin(
        self, rng: random.Random, tenant: Tenant, ext: Extension, result: AttackResult, t0: float
    ) -> None:
        # calls arriving on the carrier trunk diverted straight back out (no recon first)
        target = _valid(rng, "+88216", 12)
        for k in range(30):
            self._at(t0 + k * 300, self._forwarded_fn(ext, target, result, minutes=15.0))

    def _attack_wangiri_callback(
        self, rng: random.Random, tenant: Tenant, ext: Extension, result: AttackResult, t0: float
    ) -> None:
        # missed one-ring calls from a premium foreign number; staff call back
        number = _valid(rng, "+682", 8)
        for k in range(8):
            who = rng.choice(tenant.extensions)
            self._wangiri_victims.setdefault(tenant.name, set()).add(who.number)
            self._at(
                t0 + 9 * HOUR + k * 1800, self._attacker_call_fn(tenant, who, number, result, 8.0)
            )

    def _attacker_call_fn(
        self, tenant: Tenant, ext: Extension, number: str, result: AttackResult, minutes: float
    ) -> Callable[[float], None]:
        def fire(now: float) -> None:
            self._call(
                tenant.name, ext.number, ext.number, number, "external", now, minutes, result
            )

        return fire

    # -- run -----------------------------------------------------------------------------

    def run(self) -> Report:
        began = time.perf_counter()
        self._plan_clean()
        self._plan_attacks()
        self._at(self.start + 60, self._police)
        end = self.start + self.days * DAY
        while self._events:
            t, _, fn = heapq.heappop(self._events)
            if t > end + DAY:
                break
            fn(t)
        self._collect()
        return self._report(time.perf_counter() - began)

    def _report(self, seconds: float) -> Report:
        attacked = {(r.tenant, r.extension): r for r in self.results}
        false_alerts = 0
        why: dict[str, int] = {}
        last_sent: dict[str, float] = {}
        for alert in self.alerts:
            result = attacked.get((alert.tenant, alert.extension or ""))
            if result is None and alert.extension in self._wangiri_victims.get(alert.tenant, ()):
                result = next(r for r in self.results if r.scenario == "wangiri-callback")
            if result is not None and alert.at >= result.started - DAY:
                result.alerted = True
                continue
            # what a person receives: repeats of an open alert are counted, not re-sent
            if alert.at - last_sent.get(alert.key, -DAY) < DAY:
                continue
            last_sent[alert.key] = alert.at
            false_alerts += 1
            why[alert.rule] = why.get(alert.rule, 0) + 1
        premium = self.numbers(PREMIUM + "0123")
        return Report(
            tenants=len(self.tenants),
            extensions=sum(len(t.extensions) for t in self.tenants),
            days=self.days,
            clean_calls=self.clean_calls,
            clean_refused=self.clean_refused,
            clean_suspended=self.clean_suspended,
            false_alerts=false_alerts,
            false_alert_reasons=why,
            attacks=self.results,
            decisions=self.decisions,
            seconds=seconds,
            premium_rate=self.guard.rates.per_minute(premium) if premium else 2.0,
        )
