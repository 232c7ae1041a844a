#!/usr/bin/env python3
"""The fraud guard's decision latency: ``Guard.authorize()`` on realistic state.

The guard sits on every costly call attempt (``pbxwarden.pbx.policy.CallAuthorizer``),
so its decision is on the call set-up path.  This script builds a guard the size of a
hosted PBX and measures how long one decision takes once the guard has real state:

* **Policy**: --tenants tenants (default 100) in a dozen home countries and time zones,
  --extensions extensions (default 10,000) spread over them with a long-tailed size
  distribution (a few large tenants, many small ones).  Most tenants allow a few
  foreign countries (some of them on the bundled high-risk list, so the list is walked),
  most have business hours with an ``after_hours`` override, large tenants have
  per-extension overrides (call-centre agents, lobby phones, executives), some have
  allow/deny prefixes, international forwarding or premium-rate numbers allowed.
* **State**: --weeks simulated weeks of outbound traffic (default 3) are replayed
  through ``authorize``/``on_call_start``/``on_call_answer``/``on_call_end`` on
  simulated time, ending on a Wednesday at 15:00 UTC (morning in America, afternoon in
  Europe, night in Asia-Pacific): national fixed and mobile numbers mostly, some calls to
  allowed countries, some diverted calls, office hours in each tenant's time zone.  Every
  extension makes 1.5 costly calls or more per working day, so all have a mature learned
  baseline.  On top of that traffic, --in-progress answered calls (default 3,000) are
  still running at the measurement time, a few extensions are at their concurrency limit
  and a few small tenants at theirs, and a dozen tenants received short inbound calls
  from withheld or foreign numbers in the last 72 hours (the reconnaissance pattern).
* **Measurement**: a fixed mix of --decisions attempts (default 20,000) of nine kinds
  (allowed national, allowed international, refused premium-rate, refused high-risk,
  refused country, diverted calls, diversion changes, internal calls, limit hits) is
  authorized one by one in time order, each call timed on its own with
  ``time.perf_counter_ns()``.  Destinations are classified before the timed region, as
  the PBX does before it asks the guard.  The attempts fall at random times in the half
  hour after the measurement time, from extensions drawn in shuffled rounds (none
  makes more than a few), the extensions that dial refused numbers apart from those
  whose ordinary calls are measured (a refusal raises the next calls' anomaly score for
  an hour); none of them is started, so the calls in progress stay as built.
  Every run restores the guard from a pickled snapshot of the warmed state, so each run
  judges the same attempts against the same state; --runs runs (default 5), medians of
  the per-run percentiles reported.
* **GC**: each pass starts with the state in the oldest generation (``gc.collect()``
  after the restore), and the collector tuned as ``pbxwarden serve`` does
  (``gc.freeze()`` after start-up, ``gc.set_threshold(50_000, 50, 100)``).  The headline
  figures have the collector enabled, as in the server; a second pass per run with it
  disabled shows what the collector adds.
* **Peer**: ``pbxwarden.pbx.numbers.classify()`` (phonenumbers parsing), the stage just
  before the guard on the same call path, is timed per attempt on the same attempts in
  the same runs, so the guard's cost can be quoted as a ratio on this noisy shared
  machine.
* ``police(now)`` (run every second by the server) is timed --police-repeats times per
  run with all those calls in progress.

Prints a Markdown section ready for docs/benchmarks.md.  Exits 1 if any ``authorize()``
raised (during the warm-up or the measurement), 0 otherwise.  --profile also prints the
top cProfile entries of one extra decision pass and one ``police()`` to stderr.

Deterministic: everything comes from one seeded ``random.Random`` (--seed).  Needs
pbxwarden installed (``pip install -e .``); nothing else.
"""

from __future__ import annotations

import argparse
import bisect
import cProfile
import datetime as dt
import gc
import hashlib
import heapq
import io
import math
import os
import pickle
import platform
import pstats
import random
import shlex
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo

import phonenumbers
from phonenumbers import PhoneNumberFormat, PhoneNumberType

from benchlib import fmt_rate
from pbxwarden.guard.baseline import DAY, WEEK
from pbxwarden.guard.engine import Guard
from pbxwarden.guard.policy import GuardConfig, PolicyBook, PolicyOverride, TenantPolicy
from pbxwarden.pbx.numbers import Destination, classify
from pbxwarden.pbx.policy import CallAttempt, Decision

NOW = dt.datetime(2026, 11, 25, 15, 0, tzinfo=dt.UTC).timestamp()  # a Wednesday
SOURCE = "udp:198.51.100.7:5060"
PERCENTILES = (("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("p99.9", 0.999))
AIM_P99_US = 100.0
SPAN = 1800.0  # the measured attempts fall in the half hour after NOW

# (home country, time zone, weight, foreign countries its tenants may allow)
HOMES: list[tuple[str, str, int, list[str]]] = [
    ("US", "America/New_York", 14, ["CA", "MX", "GB", "IN", "DE"]),
    ("US", "America/Chicago", 8, ["CA", "MX", "GB"]),
    ("US", "America/Los_Angeles", 10, ["CA", "MX", "JP", "IN", "AU"]),
    ("CA", "America/Toronto", 5, ["US", "GB", "FR"]),
    ("GB", "Europe/London", 14, ["IE", "FR", "DE", "ES", "US", "IN", "LV"]),
    ("DE", "Europe/Berlin", 12, ["AT", "CH", "FR", "NL", "PL", "LT", "LV", "EE"]),
    ("FR", "Europe/Paris", 9, ["BE", "CH", "ES", "DE", "GB", "IT"]),
    ("NL", "Europe/Amsterdam", 5, ["BE", "DE", "GB", "LT"]),
    ("ES", "Europe/Madrid", 5, ["FR", "PT", "MX", "GB"]),
    ("AU", "Australia/Sydney", 6, ["NZ", "GB", "US", "IN"]),
    ("IN", "Asia/Kolkata", 6, ["US", "GB", "AE"]),
    ("BR", "America/Sao_Paulo", 6, ["PT", "US", "AR"]),
]
# Destinations on the bundled high-risk list: reached through an allowed country (the
# list is walked) or not allowed at all (refused by the country rule first).
HIGH_RISK_ALLOWABLE = ("LV", "LT", "EE")
HIGH_RISK_OTHER = ("CU", "SO", "DO", "JM", "+882", "+881")
# Countries nobody allows: calls there are refused by the country rule.
NEVER_ALLOWED = ("NG", "PH", "EG", "RU", "VN", "ZA", "KE", "SN")

HOURS_VARIANTS = ("mon-fri 08:00-18:00", "mon-fri 07:30-17:30", "mon-fri 09:00-19:00")

# The attempt mix measured: (kind, label, share)
MIX: list[tuple[str, str, float]] = [
    ("national", "allowed national", 0.40),
    ("international", "allowed international", 0.10),
    ("premium", "refused premium-rate", 0.04),
    ("high-risk", "refused high-risk", 0.04),
    ("country", "refused country", 0.05),
    ("forwarded", "diverted call (forwarded)", 0.08),
    ("forward-change", "diversion change", 0.03),
    ("internal", "internal", 0.20),
    ("limit", "limit hit (concurrency)", 0.06),
]


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- numbers


class NumberBook:
    """Valid numbers by (region, type), and how each home country dials and classifies them.

    Classification happens here, once per number and home, never in a timed region.
    """

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self._e164: dict[tuple[str, str], list[phonenumbers.PhoneNumber]] = {}
        self._pools: dict[tuple[str, str, str], list[tuple[str, Destination]]] = {}

    def _numbers(self, region: str, kind: str, n: int) -> list[phonenumbers.PhoneNumber]:
        key = (region, kind)
        if key in self._e164:
            return self._e164[key]
        wanted = {
            "fixed": {PhoneNumberType.FIXED_LINE, PhoneNumberType.FIXED_LINE_OR_MOBILE},
            "mobile": {PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE},
            "premium": {PhoneNumberType.PREMIUM_RATE},
        }[kind]
        if region.startswith("+"):  # a non-geographic network such as +882
            example = phonenumbers.example_number_for_non_geo_entity(int(region[1:]))
        else:
            ptype = {
                "fixed": PhoneNumberType.FIXED_LINE,
                "mobile": PhoneNumberType.MOBILE,
                "premium": PhoneNumberType.PREMIUM_RATE,
            }[kind]
            example = phonenumbers.example_number_for_type(region, ptype)
        if example is None:
            raise SystemExit(f"phonenumbers has no example {kind} number for {region}")
        nsn = phonenumbers.national_significant_number(example)
        free = max(1, min(6, len(nsn) - 3))
        found: dict[str, phonenumbers.PhoneNumber] = {}
        for _ in range(n * 40):
            digits = nsn[:-free] + "".join(self.rng.choice("0123456789") for _ in range(free))
            number = phonenumbers.PhoneNumber(
                country_code=example.country_code,
                national_number=int(digits),
                italian_leading_zero=example.italian_leading_zero,
                number_of_leading_zeros=example.number_of_leading_zeros,
            )
            if region.startswith("+") or (
                phonenumbers.is_valid_number(number) and phonenumbers.number_type(number) in wanted
            ):
                found.setdefault(digits, number)
            if len(found) >= n:
                break
        numbers = list(found.values()) or [example]
        self._e164[key] = numbers
        return numbers

    def pool(
        self, home: str, region: str, kind: str, n: int = 150
    ) -> list[tuple[str, Destination]]:
        """(dialed as a user of ``home`` dials it, destination as classified for ``home``)."""
        key = (home, region, kind)
        if key in self._pools:
            return self._pools[key]
        pool: list[tuple[str, Destination]] = []
        for number in self._numbers(region, kind, n):
            if region == home:
                text = phonenumbers.format_number(number, PhoneNumberFormat.NATIONAL)
            else:
                text = phonenumbers.format_out_of_country_calling_number(number, home)
            dialed = "".join(c for c in text if c.isdigit() or c == "+")
            dest = classify(dialed, home)
            if dest is not None and dest.valid:
                pool.append((dialed, dest))
        if not pool:
            raise SystemExit(f"no valid {kind} numbers for {region} dialled from {home}")
        self._pools[key] = pool
        return pool


# ---------------------------------------------------------------------- the PBX


@dataclass(slots=True)
class Ext:
    index: int
    tenant: int
    number: str
    rate: float  # costly calls per working day
    favourites: list[tuple[str, Destination]]
    abroad: list[str]  # countries this extension calls
    abroad_share: float
    forward_to: tuple[str, Destination] | None  # a diversion to a mobile
    role: str = ""  # "agent", "lobby", "exec" when an override applies


@dataclass(slots=True)
class Tenant:
    index: int
    name: str
    home: str
    zone: str
    foreign: list[str]  # countries the tenant allows
    hours: list[str]
    size: int
    exts: list[Ext] = field(default_factory=list)


def tenant_sizes(rng: random.Random, tenants: int, extensions: int) -> list[int]:
    """A long tail: sizes proportional to rank**-0.8, at least 10, summing to ``extensions``."""
    weights = [(rank + 1) ** -0.8 for rank in range(tenants)]
    total = sum(weights)
    sizes = [max(10, round(extensions * w / total)) for w in weights]
    diff = extensions - sum(sizes)
    i = 0
    while diff != 0:
        step = 1 if diff > 0 else -1
        if sizes[i % tenants] + step >= 10:
            sizes[i % tenants] += step
            diff -= step
        i += 1
    rng.shuffle(sizes)
    return sizes


def build_pbx(
    rng: random.Random, book: NumberBook, n_tenants: int, n_ext: int
) -> tuple[GuardConfig, list[Tenant], list[Ext]]:
    policies: dict[str, TenantPolicy] = {}
    tenants: list[Tenant] = []
    exts: list[Ext] = []
    sizes = tenant_sizes(rng, n_tenants, n_ext)
    home_weights = [h[2] for h in HOMES]
    for t, size in enumerate(sizes):
        home, zone, _, candidates = rng.choices(HOMES, weights=home_weights)[0]
        name = f"t{t:03d}"
        foreign: list[str] = []
        if rng.random() < 0.7:
            foreign = sorted(rng.sample(candidates, rng.randint(1, min(4, len(candidates)))))
        hours: list[str] = []
        after: PolicyOverride | None = None
        if rng.random() < 0.75:
            hours = [rng.choice(HOURS_VARIANTS)]
            if rng.random() < 0.2:
                hours.append("sat 09:00-13:00")
            if rng.random() < 0.6:
                after = rng.choice(
                    [
                        PolicyOverride(allow_countries=[], calls_per_hour=10),
                        PolicyOverride(spend_per_hour=5.0, calls_per_minute=3),
                        PolicyOverride(allow_countries=foreign[:1], same_prefix_calls=2),
                    ]
                )
        overrides: dict[str, PolicyOverride] = {}
        high_risk_ok = rng.random() < 0.03
        tenant = Tenant(t, name, home, zone, foreign, hours, size)
        national = book.pool(home, home, "fixed", 400) + book.pool(home, home, "mobile", 400)
        mobiles = book.pool(home, home, "mobile", 400)
        for j in range(size):
            number = str(1000 + j)
            role = ""
            if size >= 40:
                roll = rng.random()
                if roll < 0.04:
                    role = "agent"
                    overrides[number] = PolicyOverride(
                        calls_per_minute=12,
                        calls_per_hour=200,
                        max_concurrent_per_extension=4,
                        spend_per_day=300.0,
                    )
                elif roll < 0.05:
                    role = "lobby"
                    overrides[number] = PolicyOverride(
                        allow_countries=[], calls_per_hour=10, spend_per_day=10.0
                    )
                elif roll < 0.055 and foreign:
                    role = "exec"
                    overrides[number] = PolicyOverride(
                        allow_countries=sorted({*foreign, *candidates}),
                        allow_international_forwarding=True,
                        spend_per_day=500.0,
                    )
            rate = 40.0 if role == "agent" else max(1.5, rng.lognormvariate(math.log(2.0), 0.8))
            # users call the allowed countries that are not refused as high-risk
            allowed_here = [
                c
                for c in ([] if role == "lobby" else foreign)
                if high_risk_ok or c not in HIGH_RISK_ALLOWABLE
            ]
            abroad = rng.sample(allowed_here, min(len(allowed_here), rng.randint(1, 2)))
            abroad_share = rng.uniform(0.02, 0.15) if abroad else 0.0
            ext = Ext(
                len(exts),
                t,
                number,
                rate,
                [rng.choice(national) for _ in range(12)],
                abroad,
                abroad_share,
                rng.choice(mobiles) if rng.random() < 0.12 else None,
                role,
            )
            tenant.exts.append(ext)
            exts.append(ext)
        extra: dict[str, object] = {}
        if rng.random() < 0.1:  # a partner abroad, allowed by prefix
            partner = rng.choice([c for c in ("GB", "DE", "US", "FR") if c != home])
            extra["allow_prefixes"] = [rng.choice(book.pool(home, partner, "fixed"))[1].e164[:7]]
        if rng.random() < 0.2:
            extra["deny_prefixes"] = [rng.choice(book.pool(home, home, "premium"))[1].e164[:5]]
        if rng.random() < 0.05:
            extra["allow_special"] = ["premium-rate"]
        if high_risk_ok:
            extra["allow_high_risk"] = True
        policies[name] = TenantPolicy(
            allow_countries=foreign,
            allow_international_forwarding=bool(foreign) and rng.random() < 0.2,
            max_concurrent_calls=max(10, math.ceil(size * 0.5)),
            tenant_spend_per_day=max(500.0, size * 20.0),
            timezone=zone,
            business_hours=hours,
            after_hours=after,
            extensions=overrides,
            **extra,
        )
        tenants.append(tenant)
    return GuardConfig(tenants=policies), tenants, exts


# ------------------------------------------------------------------------ warm-up


@dataclass(slots=True)
class WarmStats:
    calls: int = 0
    allowed: int = 0
    alerts: int = 0
    errors: list[str] = field(default_factory=list)
    probe_tenants: int = 0
    busy_exts: list[Ext] = field(default_factory=list)
    full_tenants: list[Tenant] = field(default_factory=list)
    seconds: float = 0.0


# a call to replay: (start, seq, ext index, kind, dialed, destination, ring s, talk s or
# None if unanswered, inf if still running at the measurement time, caller)
Call = tuple[float, int, int, str, str, Destination | None, float, float | None, str]


def poisson(rng: random.Random, lam: float) -> int:
    if lam > 30:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def local_midnights(zone: str, start: float, days: int) -> list[float]:
    tz = ZoneInfo(zone)
    first = dt.datetime.fromtimestamp(start, tz).date()
    return [
        dt.datetime.combine(first + dt.timedelta(days=d), dt.time(), tz).timestamp()
        for d in range(days + 2)
    ]


def pick_destination(
    rng: random.Random,
    book: NumberBook,
    tenant: Tenant,
    ext: Ext,
    abroad: list[str] | None = None,
) -> tuple[str, Destination]:
    abroad = ext.abroad if abroad is None else abroad
    if abroad and rng.random() < ext.abroad_share:
        return rng.choice(book.pool(tenant.home, rng.choice(abroad), "fixed"))
    if rng.random() < 0.7:
        return rng.choice(ext.favourites)
    kind = "mobile" if rng.random() < 0.5 else "fixed"
    return rng.choice(book.pool(tenant.home, tenant.home, kind))


def talk_seconds(rng: random.Random) -> float | None:
    if rng.random() < 0.2:
        return None  # not answered
    return min(3 * 3600.0, rng.lognormvariate(math.log(100.0), 1.0))


def generate_traffic(
    rng: random.Random,
    book: NumberBook,
    config: GuardConfig,
    tenants: list[Tenant],
    weeks: float,
    in_progress: int,
    stats: WarmStats,
) -> list[Call]:
    start = NOW - weeks * WEEK
    days = math.ceil(weeks * 7)
    calls: list[Call] = []
    seq = 0
    policies = PolicyBook(config)

    def abroad_now(tenant: Tenant, ext: Ext, at: float) -> list[str]:
        # People call abroad when the policy lets them: a user refused after hours
        # does not try again and again (that is what the guard calls probing).
        if not ext.abroad:
            return ext.abroad
        base = policies.tenant(tenant.name)
        allowed = policies.effective(
            tenant.name, ext.number, base.in_business_hours(base.local(at))
        ).allow_countries
        return [c for c in ext.abroad if c in allowed]

    for tenant in tenants:
        midnights = local_midnights(tenant.zone, start, days)
        for midnight in midnights:
            weekday = dt.datetime.fromtimestamp(midnight + 3 * 3600, ZoneInfo(tenant.zone))
            day = weekday.weekday()
            factor = 1.0 if day < 5 else (0.15 if day == 5 else 0.05)
            for ext in tenant.exts:
                for _ in range(poisson(rng, ext.rate * factor)):
                    if rng.random() < 0.93:
                        hour = rng.uniform(8.0, 18.0)
                    else:
                        hour = rng.choice((rng.uniform(6.0, 8.0), rng.uniform(18.0, 22.5)))
                    at = midnight + hour * 3600.0
                    if not (start <= at < NOW - 60.0):
                        continue
                    if ext.forward_to is not None and rng.random() < 0.1:
                        dialed, dest = ext.forward_to
                        kind = "forwarded"
                    else:
                        abroad = abroad_now(tenant, ext, at)
                        dialed, dest = pick_destination(rng, book, tenant, ext, abroad)
                        kind = "external"
                    ring = rng.uniform(2.0, 15.0)
                    calls.append(
                        (at, seq, ext.index, kind, dialed, dest, ring, talk_seconds(rng), "")
                    )
                    seq += 1
    # Calls still running at the measurement time: answered, never ended.  A few
    # extensions get two (the default per-extension limit), a few small tenants are
    # filled up to their tenant limit, the rest are spread over everybody by activity.
    all_exts = [e for t in tenants for e in t.exts]
    plain = [e for e in all_exts if e.role == ""]
    small = sorted(tenants, key=lambda t: t.size)[:15]
    stats.full_tenants = rng.sample(small, max(1, min(6, len(tenants) // 15)))
    full_ids = {t.index for t in stats.full_tenants}
    candidates = [e for e in plain if e.tenant not in full_ids]
    busy = rng.sample(candidates, min(400, len(candidates) // 20))
    stats.busy_exts = busy
    opens: list[Ext] = []
    for tenant in stats.full_tenants:
        limit = max(10, math.ceil(tenant.size * 0.5))
        opens += [tenant.exts[i % tenant.size] for i in range(limit)]
    for ext in busy:
        opens += [ext, ext]
    busy_ids = {e.index for e in busy} | {e.index for t in stats.full_tenants for e in t.exts}
    rest = [e for e in all_exts if e.index not in busy_ids]
    cum = list(_cumulative([e.rate for e in rest]))
    chosen: set[int] = set()
    while len(opens) < in_progress and len(chosen) < len(rest):
        ext = rest[bisect.bisect(cum, rng.random() * cum[-1])]
        if ext.index not in chosen:
            chosen.add(ext.index)
            opens.append(ext)
    for ext in opens:
        tenant = tenants[ext.tenant]
        at = NOW - rng.uniform(60.0, 45 * 60.0)
        dialed, dest = pick_destination(rng, book, tenant, ext, abroad_now(tenant, ext, at))
        ring = rng.uniform(2.0, 15.0)
        calls.append((at, seq, ext.index, "external", dialed, dest, ring, math.inf, ""))
        seq += 1
    # Reconnaissance: short inbound calls from withheld or foreign numbers, last 72 hours.
    probe_tenants = rng.sample(tenants, min(12, len(tenants)))
    stats.probe_tenants = len(probe_tenants)
    for tenant in probe_tenants:
        did = rng.choice(book.pool(tenant.home, tenant.home, "fixed"))
        for _ in range(rng.randint(1, 8)):
            ext = rng.choice(tenant.exts)
            caller = rng.choice(
                ("anonymous", "+2348031234567", "+37120001234", "+88216543210", "unknown")
            )
            at = NOW - rng.uniform(600.0, 70 * 3600.0)
            talk = rng.uniform(3.0, 40.0) if rng.random() < 0.6 else None
            calls.append((at, seq, ext.index, "inbound", did[0], did[1], 5.0, talk, caller))
            seq += 1
    calls.sort()
    return calls


def _cumulative(values: Sequence[float]) -> list[float]:
    out, total = [], 0.0
    for v in values:
        total += v
        out.append(total)
    return out


def warm_up(
    guard: Guard, calls: list[Call], tenants: list[Tenant], exts: list[Ext], stats: WarmStats
) -> None:
    began = time.monotonic()
    events: list[tuple[float, int, int]] = []  # (at, 0 answer / 1 end, ref)
    authorize = guard.authorize
    ref = 0
    busy_until = [0.0] * len(exts)  # a person on the phone does not dial another call
    for at, _seq, index, kind, dialed, dest, ring, talk, caller in calls:
        while events and events[0][0] <= at:
            when, op, r = heapq.heappop(events)
            if op == 0:
                guard.on_call_answer(r, when)
            else:
                guard.on_call_end(r, when)
        if kind == "external" and talk != math.inf:
            if at < busy_until[index]:
                continue
            busy_until[index] = at + ring + (talk or 0.0)
        ext = exts[index]
        tenant = tenants[ext.tenant]
        attempt = CallAttempt(
            tenant.name, ext.number, caller or ext.number, dialed, kind, SOURCE, at, dest
        )
        stats.calls += 1
        try:
            decision = authorize(attempt)
        except Exception as exc:  # reported, and the exit status says so
            stats.errors.append(f"warm-up {attempt}: {type(exc).__name__}: {exc}")
            continue
        if decision.severity is not None:
            stats.alerts += 1
        if not decision.allow:
            continue
        stats.allowed += 1
        ref += 1
        guard.on_call_start(attempt, ref)
        if talk is None:
            heapq.heappush(events, (at + ring, 1, ref))
        else:
            heapq.heappush(events, (at + ring, 0, ref))
            if talk != math.inf:
                heapq.heappush(events, (at + ring + talk, 1, ref))
    while events and events[0][0] <= NOW:
        when, op, r = heapq.heappop(events)
        if op == 0:
            guard.on_call_answer(r, when)
        else:
            guard.on_call_end(r, when)
    guard.outbox.clear()  # the server drains it every second
    stats.seconds = time.monotonic() - began


# ------------------------------------------------------------------- the attempts


@dataclass(frozen=True, slots=True)
class Probe:
    kind: str  # a MIX kind
    attempt: CallAttempt
    home: str


class Rounds:
    """Items in shuffled rounds: each comes back once all the others have."""

    def __init__(self, rng: random.Random, items: list[Ext]) -> None:
        self.rng, self.items, self.left = rng, items, list[Ext]()

    def next(self) -> Ext:
        if not self.left:
            self.left = list(self.items)
            self.rng.shuffle(self.left)
        return self.left.pop()


def effective(guard: Guard, tenant: Tenant, ext: Ext, at: float) -> TenantPolicy:
    policy = guard.book.tenant(tenant.name)
    in_hours = policy.in_business_hours(policy.local(at))
    return guard.book.effective(tenant.name, ext.number, in_hours)


def build_attempts(
    rng: random.Random,
    guard: Guard,
    book: NumberBook,
    tenants: list[Tenant],
    exts: list[Ext],
    stats: WarmStats,
    n: int,
) -> list[Probe]:
    full_ids = {t.index for t in stats.full_tenants}
    busy_ids = {e.index for e in stats.busy_exts}
    normal = [e for e in exts if e.tenant not in full_ids and e.index not in busy_ids]
    # Refused attempts raise the score of the extension's next calls for an hour (the
    # guard reads them as probing): the extensions that dial what they may not are kept
    # apart from those whose ordinary calls are measured.
    probing = set(rng.sample(range(len(normal)), len(normal) // 12))
    # Extensions are drawn in shuffled rounds, so that none makes more than a few of the
    # attempts in the half hour (a realistic rate per person, however many attempts).
    rounds = {
        "probing": Rounds(rng, [e for i, e in enumerate(normal) if i in probing]),
        "callers": Rounds(rng, [e for i, e in enumerate(normal) if i not in probing]),
        "forwarding": Rounds(
            rng, [e for i, e in enumerate(normal) if i not in probing and e.forward_to]
        ),
        "busy": Rounds(rng, stats.busy_exts),
        "full": Rounds(rng, [e for t in stats.full_tenants for e in t.exts]),
    }

    def make(kind: str) -> Probe:
        at = NOW + rng.uniform(0.0, SPAN)
        for _ in range(1000):
            if kind in ("premium", "high-risk", "country"):
                ext = rounds["probing"].next()
            elif kind in ("forwarded", "forward-change"):
                ext = rounds["forwarding"].next()
            elif kind == "limit":
                ext = rounds["busy" if rng.random() < 0.75 else "full"].next()
            else:
                ext = rounds["callers"].next()
            tenant = tenants[ext.tenant]
            home = tenant.home
            policy = effective(guard, tenant, ext, at)
            call_kind, pick = "external", None
            if kind == "national":
                pick = pick_destination(rng, book, tenant, ext) if rng.random() < 0.8 else None
                pick = pick or rng.choice(book.pool(home, home, rng.choice(("fixed", "mobile"))))
                if not pick[1].national:
                    continue
            elif kind == "international":
                countries = [c for c in policy.allow_countries if c not in HIGH_RISK_ALLOWABLE]
                if not countries:
                    continue
                pick = rng.choice(book.pool(home, rng.choice(countries), "fixed"))
            elif kind == "premium":
                if "premium-rate" in policy.allow_special:
                    continue
                pick = rng.choice(book.pool(home, home, "premium"))
            elif kind == "high-risk":
                reachable = [c for c in policy.allow_countries if c in HIGH_RISK_ALLOWABLE]
                if policy.allow_high_risk:
                    continue
                region = (
                    rng.choice(reachable)
                    if reachable and rng.random() < 0.7
                    else rng.choice(HIGH_RISK_OTHER)
                )
                if region in policy.allow_countries or region == home:
                    continue
                pick = rng.choice(book.pool(home, region, "fixed"))
            elif kind == "country":
                pick = rng.choice(book.pool(home, rng.choice(NEVER_ALLOWED), "fixed"))
            elif kind in ("forwarded", "forward-change"):
                call_kind = kind
                if ext.forward_to is None:
                    continue
                pick = ext.forward_to
                if kind == "forward-change" and rng.random() < 0.5:
                    pick = rng.choice(book.pool(home, home, "mobile"))
                    if rng.random() < 0.3 and policy.allow_countries:
                        country = rng.choice(policy.allow_countries)
                        pick = rng.choice(book.pool(home, country, "mobile"))
            elif kind == "internal":
                other = rng.choice(tenant.exts)
                attempt = CallAttempt(
                    tenant.name, ext.number, ext.number, other.number, "internal", SOURCE, at
                )
                return Probe(kind, attempt, home)
            elif kind == "limit":
                abroad = [c for c in ext.abroad if c in policy.allow_countries]
                pick = pick_destination(rng, book, tenant, ext, abroad)
            if pick is None:
                continue
            dialed, dest = pick
            attempt = CallAttempt(
                tenant.name, ext.number, ext.number, dialed, call_kind, SOURCE, at, dest
            )
            return Probe(kind, attempt, home)
        raise SystemExit(f"could not build an attempt of kind {kind}")

    probes: list[Probe] = []
    for kind, _, share in MIX:
        probes += [make(kind) for _ in range(round(n * share))]
    probes.sort(key=lambda p: p.attempt.at)
    return probes


LEDGER_BUCKETS = ("under 200", "200 to 999", "1,000 or more")


def ledger_buckets(guard: Guard, probes: list[Probe]) -> list[str]:
    """Per costly attempt, how many calls its tenant ended in the last 24 hours ("" if
    internal): the state a decision walks through when it estimates the tenant's spend."""
    out = []
    for probe in probes:
        state = guard._tenants.get(probe.attempt.tenant)  # benchmark introspection
        size = 0 if state is None else sum(1 for end, _ in state.spend.day if end > NOW - DAY)
        if probe.kind == "internal":
            out.append("")
        else:
            out.append(LEDGER_BUCKETS[0 if size < 200 else 1 if size < 1000 else 2])
    return out


# ------------------------------------------------------------------------ timing


def time_authorize(
    guard: Guard, probes: list[Probe], errors: list[str]
) -> tuple[list[int], list[Decision | None]]:
    """Nanoseconds per decision (-1 where it raised), and the decisions."""
    clock = time.perf_counter_ns
    authorize = guard.authorize
    latencies = [-1] * len(probes)
    decisions: list[Decision | None] = [None] * len(probes)
    for i, probe in enumerate(probes):
        attempt = probe.attempt
        try:
            t0 = clock()
            decision = authorize(attempt)
            t1 = clock()
        except Exception as exc:  # reported, and the exit status says so
            errors.append(f"{probe.kind} {attempt}: {type(exc).__name__}: {exc}")
            continue
        latencies[i] = t1 - t0
        decisions[i] = decision
    return latencies, decisions


def time_classify(probes: list[Probe]) -> list[int]:
    clock = time.perf_counter_ns
    latencies = []
    for probe in probes:
        dialed, home = probe.attempt.dialed, probe.home
        t0 = clock()
        classify(dialed, home)
        t1 = clock()
        latencies.append(t1 - t0)
    return latencies


def timer_overhead() -> int:
    clock = time.perf_counter_ns
    samples = []
    for _ in range(20_000):
        t0 = clock()
        t1 = clock()
        samples.append(t1 - t0)
    return int(statistics.median(samples))


def percentiles(values: list[int]) -> dict[str, float]:
    """Nearest-rank percentiles and max, in microseconds."""
    data = sorted(v for v in values if v >= 0)
    if not data:
        return {}
    out = {
        name: data[min(len(data) - 1, max(0, math.ceil(q * len(data)) - 1))] / 1000.0
        for name, q in PERCENTILES
    }
    out["max"] = data[-1] / 1000.0
    return out


def median_stats(runs: list[dict[str, float]]) -> dict[str, float]:
    runs = [r for r in runs if r]
    if not runs:
        return {}
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


# ------------------------------------------------------------------------ report


def fmt_us(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def pct(fraction: float) -> str:
    return "<1%" if 0 < fraction < 0.01 else f"{fraction:.0%}"


def outcome(decisions: list[Decision | None]) -> str:
    done = [d for d in decisions if d is not None]
    if not done:
        return "n/a"
    allowed = sum(d.allow for d in done) / len(done)
    rules = Counter(d.rule or "?" for d in done if not d.allow)
    alerts = sum(d.allow and d.severity is not None for d in done) / len(done)
    parts = []
    if allowed:
        parts.append(f"allowed {pct(allowed)}" + (f" ({pct(alerts)} with alert)" if alerts else ""))
    if rules:
        top = ", ".join(f"{rule} {pct(count / len(done))}" for rule, count in rules.most_common(3))
        parts.append(f"refused: {top}")
    return "; ".join(parts)


def cpu_busy_fraction(sample: float = 1.0) -> float:
    def read() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(values), values[3] + (values[4] if len(values) > 4 else 0)

    try:
        total0, idle0 = read()
        time.sleep(sample)
        total1, idle1 = read()
    except OSError:
        return 0.0
    total = total1 - total0
    return 1 - (idle1 - idle0) / total if total else 0.0


def code_digest() -> str:
    """Which guard was measured: the engine and policy sources change often."""
    import pbxwarden.guard.engine as engine
    import pbxwarden.guard.learn as learn
    import pbxwarden.guard.policy as policy
    import pbxwarden.guard.rules as rules
    import pbxwarden.guard.state as state

    digest = hashlib.sha256()
    for module in (engine, policy, rules, learn, state):
        digest.update(Path(str(module.__file__)).read_bytes())
    return digest.hexdigest()[:12]


def host_description() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} CPUs ({model}), Linux {platform.release()}, "
        f"Python {platform.python_version()}, phonenumbers {phonenumbers.__version__}"
    )


@dataclass
class Results:
    by_kind: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    by_ledger: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    overall: list[dict[str, float]] = field(default_factory=list)
    overall_nogc: list[dict[str, float]] = field(default_factory=list)
    external: list[dict[str, float]] = field(default_factory=list)  # guard, no internal
    classify: list[dict[str, float]] = field(default_factory=list)
    police_ms: list[float] = field(default_factory=list)
    police_cut: int = 0
    restore_s: list[float] = field(default_factory=list)
    decisions: list[Decision | None] = field(default_factory=list)
    gc_collections: list[int] = field(default_factory=list)


def render_markdown(
    args: argparse.Namespace,
    argv: list[str],
    probes: list[Probe],
    buckets: list[str],
    res: Results,
    state: dict[str, str],
    busy: float,
    overhead_ns: int,
    elapsed: float,
) -> str:
    cols = [name for name, _ in PERCENTILES] + ["max"]
    lines = [
        "### Fraud guard decision latency (`bench/guard.py`)",
        "",
        f"`Guard.authorize()` per decision, µs: median of {args.runs} runs of "
        f"{len(probes):,} decisions, garbage collector enabled and tuned as in "
        "`pbxwarden serve`"
        + (
            (
                f"; costly calls in progress and other nodes' spend read from Redis "
                f"({args.redis}), concurrency alone (`RESERVE_CALL`, `--calls-only`)"
                if args.calls_only
                else f"; costly calls in progress, attempt rates, dear ranges and other nodes' "
                f"spend read from Redis ({args.redis}) as on a cluster node (`RESERVE_ATTEMPT`)"
            )
            if args.redis
            else ""
        )
        + ":",
        "",
        "| Attempt | Share | Outcome | " + " | ".join(cols) + " |",
        "|---|---:|---|" + "---:|" * len(cols),
    ]
    counts = Counter(p.kind for p in probes)
    for kind, label, _ in MIX:
        stats = median_stats(res.by_kind.get(kind, []))
        decided = [d for p, d in zip(probes, res.decisions, strict=True) if p.kind == kind]
        lines.append(
            f"| {label} | {counts[kind] / len(probes):.0%} | {outcome(decided)} | "
            + " | ".join(fmt_us(stats.get(c)) for c in cols)
            + " |"
        )
    overall = median_stats(res.overall)
    nogc = median_stats(res.overall_nogc)
    external = median_stats(res.external)
    peer = median_stats(res.classify)
    lines.append(
        f"| **all attempts** | 100% | {outcome(res.decisions)} | "
        + " | ".join(f"**{fmt_us(overall.get(c))}**" for c in cols)
        + " |"
    )
    lines.append(
        "| all attempts, gc disabled | 100% | same | "
        + " | ".join(fmt_us(nogc.get(c)) for c in cols)
        + " |"
    )
    n_ext = len(probes) - counts["internal"]
    lines.append(
        f"| all but internal | {n_ext / len(probes):.0%} | | "
        + " | ".join(fmt_us(external.get(c)) for c in cols)
        + " |"
    )
    lines.append(
        f"| *peer:* `classify()` of the same attempts but internal | {n_ext / len(probes):.0%} "
        "| phonenumbers parse | " + " | ".join(fmt_us(peer.get(c)) for c in cols) + " |"
    )
    lines.append("")
    if overall and peer:
        lines.append(
            f"**Ratio guard / classify() at p50: {external['p50'] / peer['p50']:.2f}** "
            f"(p99: {external['p99'] / peer['p99']:.2f}; both over the "
            f"{n_ext:,} attempts that are classified, i.e. all but internal calls). "
            f"Aim: `authorize()` p99 under {AIM_P99_US:.0f} µs: "
            + (
                f"**met** ({fmt_us(overall['p99'])} µs over all attempts)."
                if overall["p99"] < AIM_P99_US
                else f"**not met** ({fmt_us(overall['p99'])} µs over all attempts)."
            )
        )
        lines.append("")
    lines += [
        "The same costly attempts (all but internal) by the size of their tenant's 24-hour "
        "cost ledger (calls ended in the last 24 hours), gc enabled:",
        "",
        "| Tenant's calls in the last 24 h | Share of attempts | " + " | ".join(cols) + " |",
        "|---|---:|" + "---:|" * len(cols),
    ]
    bucket_counts = Counter(buckets)
    for bucket in LEDGER_BUCKETS:
        stats = median_stats(res.by_ledger.get(bucket, []))
        lines.append(
            f"| {bucket} | {bucket_counts[bucket] / len(probes):.0%} | "
            + " | ".join(fmt_us(stats.get(c)) for c in cols)
            + " |"
        )
    lines.append("")
    if res.police_ms:
        lines.append(
            f"`police(now)` with {state['open']} costly calls in progress: median "
            f"**{statistics.median(res.police_ms):.1f} ms** per call (min "
            f"{min(res.police_ms):.1f}, max {max(res.police_ms):.1f} ms over "
            f"{len(res.police_ms)} calls; {res.police_cut} calls to cut off each time)."
        )
        lines.append("")
    lines += [
        f"- State at the measurement (Wednesday 15:00 UTC): {state['tenants']}; "
        f"{state['extensions']}; {state['replayed']}; {state['open_detail']}; "
        f"{state['recent']}; {state['ledgers']}; {state['probes']}; {state['suspended']}.",
        f"- Attempts: a fixed mix at random times in the {SPAN / 60:.0f} minutes after the "
        f"measurement time ({len(probes) / SPAN:.1f} a second), in time order, from "
        "extensions drawn in shuffled rounds; those dialling refused numbers are kept apart "
        "from those whose ordinary calls are measured (a refusal raises the extension's "
        "anomaly score for an hour). None is started (the calls in progress stay as built; "
        "the attempts' own records, alerts and suspensions accumulate as they would). "
        "Destinations are classified before the timed region, as in the PBX. "
        "Limit hits are extensions "
        "with 2 calls in progress (3/4) and extensions of small tenants at their tenant "
        "limit (1/4). Each run restores the warmed guard from a pickle and runs "
        "`gc.collect()` first, so every run judges the same attempts against the same state.",
        "- Timing: `time.perf_counter_ns()` around each `authorize()` call alone "
        f"(timer overhead ~{overhead_ns} ns, not subtracted); nearest-rank percentiles per "
        "run, the table gives the median of each column over the runs (the "
        "max column is the median of the runs' maxima). Small kinds have few samples: "
        "their p99.9 is close to their max. GC: `gc.freeze()` after start-up and "
        "`gc.set_threshold(50_000, 50, 100)`, as `pbxwarden serve`; "
        f"{statistics.median(res.gc_collections or [0]):.0f} collections per timed pass "
        "(median); 'gc disabled' is a second pass per run on a fresh restore.",
        "- Peer: `pbxwarden.pbx.numbers.classify(dialed, tenant home country)` on the "
        "same attempts, timed the same way in the same runs (alternating which goes "
        "first); it runs before the guard on every outbound call.",
        f"- Machine: {host_description()}; CPU busy before start: {busy:.0%}. The machine "
        "is shared and noisy: quote the ratio. Code measured: sha256 of "
        f"`guard/engine.py`, `policy.py`, `rules.py`, `learn.py`, `state.py` {code_digest()}.",
        f"- Command: `{shlex.join(['python3', 'bench/guard.py', *argv])}` "
        f"(finished in {elapsed:.0f} s; warm-up replay {state['warm_seconds']} s).",
    ]
    return "\n".join(lines) + "\n"


def describe_state(
    guard: Guard,
    tenants: list[Tenant],
    exts: list[Ext],
    stats: WarmStats,
    weeks: float,
) -> dict[str, str]:
    ext_states = guard._ext  # benchmark introspection of the guard's private state
    tenant_states = guard._tenants
    active = guard._active
    answered = sum(1 for call in active.values() if call.answered is not None)
    hour_ago = NOW - 3600.0
    recent = sum(sum(1 for r in s.recent if r[0] > hour_ago) for s in ext_states.values())
    mature = sum(1 for s in ext_states.values() if s.baseline.mature(NOW))
    suspended = sum(1 for s in ext_states.values() if s.suspended is not None)
    tenant_ledgers = sorted(
        sum(1 for end, _ in s.spend.day if end > NOW - DAY) for s in tenant_states.values()
    )
    tenant_active = sorted(len(s.active) for s in tenant_states.values())
    probes = sum(len(s.probes) for s in ext_states.values())
    sizes = sorted(t.size for t in tenants)
    with_hours = sum(1 for t in tenants if t.hours)
    with_after = sum(1 for t in tenants if guard.config.tenants[t.name].after_hours is not None)
    with_foreign = sum(1 for t in tenants if t.foreign)
    overrides = sum(len(guard.config.tenants[t.name].extensions) for t in tenants)
    zones = len({t.zone for t in tenants})
    return {
        "tenants": (
            f"{len(tenants)} tenants in {zones} time zones ({with_foreign} allow foreign "
            f"countries, {with_hours} have business hours, {with_after} an after-hours "
            f"override, {overrides} per-extension overrides)"
        ),
        "extensions": (
            f"{len(exts):,} extensions (tenants of {sizes[0]} to {sizes[-1]}, median "
            f"{statistics.median(sizes):.0f}), {mature:,} with a mature baseline"
        ),
        "replayed": (
            f"{fmt_rate(stats.calls)} attempts replayed over {weeks:g} simulated weeks "
            f"({fmt_rate(stats.allowed)} allowed and started, {fmt_rate(stats.alerts)} alerts)"
        ),
        "open": f"{len(active):,}",
        "open_detail": (
            f"{len(active):,} costly calls in progress ({answered:,} answered; up to "
            f"{tenant_active[-1]} in one tenant)"
        ),
        "recent": f"{recent:,} costly attempts in the last hour",
        "ledgers": (
            f"tenant 24-hour cost ledgers of median {statistics.median(tenant_ledgers):.0f} and "
            f"max {tenant_ledgers[-1]:,} entries"
        ),
        "probes": (
            f"{probes} inbound probes (short calls from unseen callers) held by extensions of "
            f"{stats.probe_tenants} tenants"
        ),
        "suspended": f"{suspended} extensions suspended by the warm-up",
        "warm_seconds": f"{stats.seconds:.0f}",
    }


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="2 runs of 5,000 decisions, 2 weeks")
    p.add_argument("--runs", type=int, default=5, help="measurement runs")
    p.add_argument("--decisions", type=int, default=20_000, help="decisions per run")
    p.add_argument("--tenants", type=int, default=100)
    p.add_argument("--extensions", type=int, default=10_000)
    p.add_argument("--weeks", type=float, default=3.0, help="simulated weeks of history")
    p.add_argument("--in-progress", type=int, default=3000, help="calls running at the end")
    p.add_argument("--police-repeats", type=int, default=3, help="police() calls per run")
    p.add_argument("--seed", type=int, default=20261125)
    p.add_argument("--profile", action="store_true", help="cProfile one pass, to stderr")
    p.add_argument(
        "--redis",
        metavar="URL",
        help="count costly calls in progress, attempt rates and dear ranges in this Redis, "
        "as a cluster node does (pbxwarden.cluster.rates, one RESERVE_ATTEMPT per allowed "
        "costly decision); the other nodes' spend is read from it too "
        "(pbxwarden.cluster.spend), synchronously on each extension's first decision",
    )
    p.add_argument(
        "--calls-only",
        action="store_true",
        help="with --redis: the shared concurrency alone (RESERVE_CALL), the shape before "
        "rates were shared: the peer of a --redis run",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.runs, args.decisions, args.weeks = 2, 5000, 2.0
    if args.weeks * 7 < 8:
        p.error("--weeks: at least 8 days, or baselines are not mature")
    return args


def profile(guard: Guard, probes: list[Probe]) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    for probe in probes:
        guard.authorize(probe.attempt)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
    print("==== cProfile: one decision pass, by tottime ====", file=sys.stderr)
    print(out.getvalue(), file=sys.stderr)
    profiler = cProfile.Profile()
    profiler.enable()
    guard.police(NOW + 60.0)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(12)
    print("==== cProfile: one police(now), by tottime ====", file=sys.stderr)
    print(out.getvalue(), file=sys.stderr)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    began = time.monotonic()
    busy = cpu_busy_fraction()
    if busy > 0.10:
        log(f"warning: the machine is {busy:.0%} busy before the benchmark starts")
    rng = random.Random(args.seed)
    book = NumberBook(rng)
    log(f"building {args.tenants} tenants and {args.extensions:,} extensions")
    config, tenants, exts = build_pbx(rng, book, args.tenants, args.extensions)
    guard = Guard(config)
    # As `pbxwarden serve` does once started: what exists now leaves the collector's view.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    stats = WarmStats()
    calls = generate_traffic(rng, book, config, tenants, args.weeks, args.in_progress, stats)
    log(f"replaying {len(calls):,} attempts over {args.weeks:g} simulated weeks")
    warm_up(guard, calls, tenants, exts, stats)
    del calls
    state = describe_state(guard, tenants, exts, stats, args.weeks)
    log(f"warm-up done in {stats.seconds:.0f} s: {state['open_detail']}; {state['suspended']}")
    probes = build_attempts(rng, guard, book, tenants, exts, stats, args.decisions)
    peer_probes = [p for p in probes if p.kind != "internal"]
    buckets = ledger_buckets(guard, probes)
    snapshot = pickle.dumps(guard, protocol=pickle.HIGHEST_PROTOCOL)
    del guard
    log(f"snapshot {len(snapshot) / 1e6:.0f} MB; {len(probes):,} attempts per run")
    overhead = timer_overhead()
    res = Results(
        by_kind={kind: [] for kind, _, _ in MIX},
        by_ledger={bucket: [] for bucket in LEDGER_BUCKETS},
    )
    errors: list[str] = list(stats.errors)
    kinds = [p.kind for p in probes]

    def restore() -> Guard:
        t0 = time.monotonic()
        fresh: Guard = pickle.loads(snapshot)
        if args.redis:
            from pbxwarden.cluster.rates import SharedAttempts
            from pbxwarden.cluster.spend import SharedSpend

            prefix = f"bench{time.time_ns()}:"
            shared = SharedAttempts(args.redis, 0.5, prefix, "bench")
            fresh.shared = shared  # a fresh key prefix: no reservations left from before
            if not args.calls_only:  # rates and dear ranges in the same script call
                fresh.shared_attempts = shared
            # the other nodes' spend: no refresh task here, so every extension's first
            # costly decision reads it synchronously (a cache miss, the worst case)
            fresh.shared_spend = SharedSpend(args.redis, 0.5, prefix, "bench")
        gc.collect()
        res.restore_s.append(time.monotonic() - t0)
        return fresh

    def guard_pass() -> None:
        g = restore()
        for _ in range(args.police_repeats):
            t0 = time.perf_counter_ns()
            cut = g.police(NOW)
            res.police_ms.append((time.perf_counter_ns() - t0) / 1e6)
            res.police_cut = len(cut)
        before = sum(s["collections"] for s in gc.get_stats())
        latencies, decisions = time_authorize(g, probes, errors)
        res.gc_collections.append(sum(s["collections"] for s in gc.get_stats()) - before)
        if not res.decisions:
            res.decisions = decisions
        res.overall.append(percentiles(latencies))
        res.external.append(
            percentiles([v for v, k in zip(latencies, kinds, strict=True) if k != "internal"])
        )
        for kind in res.by_kind:
            picked = [v for v, k in zip(latencies, kinds, strict=True) if k == kind]
            res.by_kind[kind].append(percentiles(picked))
        for bucket in res.by_ledger:
            picked = [v for v, b in zip(latencies, buckets, strict=True) if b == bucket]
            res.by_ledger[bucket].append(percentiles(picked))
        del g
        g = restore()
        gc.disable()
        try:
            latencies, _ = time_authorize(g, probes, errors)
        finally:
            gc.enable()
        res.overall_nogc.append(percentiles(latencies))

    def classify_pass() -> None:
        res.classify.append(percentiles(time_classify(peer_probes)))

    steps: list[Callable[[], None]] = [guard_pass, classify_pass]
    redis_stats = _RedisStats(args.redis) if args.redis else None
    for run in range(1, args.runs + 1):
        for step in steps if run % 2 else reversed(steps):
            step()
        log(
            f"run {run}: authorize p50/p99 {res.overall[-1]['p50']:.1f}/"
            f"{res.overall[-1]['p99']:.1f} µs (gc off {res.overall_nogc[-1]['p99']:.1f}), "
            f"classify p50 {res.classify[-1]['p50']:.1f} µs, "
            f"police {res.police_ms[-1]:.1f} ms"
        )
    if args.profile:
        profile(pickle.loads(snapshot), probes)
    report = render_markdown(
        args, argv, probes, buckets, res, state, busy, overhead, time.monotonic() - began
    )
    if redis_stats is not None:
        report = report.rstrip("\n") + "\n" + redis_stats.note()
    print(report)
    if errors:
        log(f"ERROR: {len(errors)} authorize() calls raised; first: {errors[0]}")
        return 1
    return 0


class _RedisStats:
    """Redis' own time per script call over the timed passes (``INFO commandstats``):
    what the shared counters cost inside Redis, apart from the round trip and the
    host's scheduling (this bench's Redis must serve nothing else meanwhile)."""

    def __init__(self, url: str) -> None:
        import redis

        self.client = redis.Redis.from_url(url, decode_responses=True)
        self.client.config_resetstat()

    def note(self) -> str:
        stats = self.client.info("commandstats")
        self.client.close()
        parts = [
            f"{name.removeprefix('cmdstat_')} {v['calls']:,} calls, "
            f"{v['usec_per_call']:.1f} µs each"
            for name, v in sorted(stats.items())
            if name in ("cmdstat_evalsha", "cmdstat_eval")
        ]
        note = "; ".join(parts) or "no script calls"
        log(f"redis server side: {note}")
        return f"- Redis, server side, over all passes (`INFO commandstats`): {note}.\n"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
