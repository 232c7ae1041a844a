"""The guard's state in memory: spend windows, per-extension and per-tenant records.

Kept apart from the rules (engine, limits, score, correlate) so each rule module reads
one vocabulary. Everything here is bounded: deques trimmed by time and capped by
length, dictionaries pruned when they grow, so an attacker who floods the PBX with
distinct numbers fills a cap, not the memory.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from pbxwarden.guard.baseline import DAY, Baseline

HOUR = 3600.0


def _trim(ledger: deque[tuple[float, float]], horizon: float) -> float:
    """Drop entries ending before ``horizon``; returns the cost dropped."""
    dropped = 0.0
    while ledger and ledger[0][0] <= horizon:
        dropped += ledger.popleft()[1]
    return dropped


@dataclass(slots=True)
class Spend:
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
class Active:
    """A costly call the guard counts and prices while it runs."""

    tenant: str
    extension: str
    rate: float  # per minute
    weekday: int
    max_seconds: float
    e164: str = ""
    country: str = ""
    dear_range: str = ""  # the range, when the call goes to a dear one
    new_number: bool = False  # followed for the slow-drip pattern
    day: int = 0  # local day ordinal
    answered: float | None = None


@dataclass(slots=True)
class Inbound:
    tenant: str
    extension: str
    caller: str
    home: str  # the DID's country, to read the caller's number
    started: float
    answered: float | None = None


@dataclass(slots=True)
class Signal:
    """One sign that an extension is in an attacker's hands (see engine.SIGNALS)."""

    at: float
    kind: str
    why: str


@dataclass(slots=True)
class ExtState:
    baseline: Baseline
    # costly attempts of the last hour (at, hour of week, country, e164, local day, hour,
    # network, forwarded): learned into the baseline only when they leave the hour, so a
    # burst cannot make itself look usual
    recent: deque[tuple[float, int, str, str, int, int, str, bool]] = field(default_factory=deque)
    forwards: deque[tuple[float, str]] = field(default_factory=deque)  # diversions set, 1 h
    prefixes: deque[tuple[float, str]] = field(default_factory=deque)  # foreign, 10 min
    spend: Spend = field(default_factory=Spend)
    diverted: deque[tuple[float, str]] = field(default_factory=deque)  # forwarded legs, 1 h
    refused: deque[float] = field(default_factory=deque)  # costly attempts refused, 1 h
    unusual: deque[float] = field(default_factory=deque)  # anomaly warnings, 24 h
    night_risky: deque[float] = field(default_factory=deque)  # 24 h
    probes: deque[tuple[float, str]] = field(default_factory=deque)  # short calls to it, 24 h
    signals: list[Signal] = field(default_factory=list)  # compromise signs, 24 h
    active: set[int] = field(default_factory=set)
    forward_set: str = ""  # the diversion last set through the PBX and allowed
    refused_forward: dict[str, float] = field(default_factory=dict)  # target -> refused at
    alerted_at: float = float("-inf")  # last alert about this extension: learning pauses
    peak_day: int = -1  # local day of the running spend peak
    peak_hour: float = 0.0
    suspended: str | None = None
    dirty: bool = False  # baseline changed since it was last saved


@dataclass(slots=True)
class RangeState:
    """A dear range (E.164 prefix of 7 characters) the tenant has no history with."""

    first_at: float
    calls: deque[tuple[float, str, str]] = field(default_factory=deque)  # at, ext, e164, 1 h
    test: tuple[float, str, str] | None = None  # short answered call: at, ext, e164
    odd: dict[str, float] = field(default_factory=dict)  # ext -> last call from a new
    # network or to a country it never called: compromised phones, not their users
    blocked: float = 0.0  # refused until then: the pattern was found
    why: str = ""
    # the PBX's other nodes' attempts into the range in the last hour (at, ext, e164),
    # and their extensions calling from a new network or country: as Redis last answered
    remote: tuple[tuple[float, str, str], ...] = ()
    remote_odd: dict[str, float] = field(default_factory=dict)


@dataclass(slots=True)
class TenantState:
    baseline: Baseline
    active: set[int] = field(default_factory=set)
    dirty: bool = False
    spend: Spend = field(default_factory=Spend)
    # inbound callers seen (e164 -> last seen); probes are judged against it
    callers: dict[str, float] = field(default_factory=dict)
    # short or missed inbound calls per caller: e164 -> deque of (at, extension)
    rang: dict[str, deque[tuple[float, str]]] = field(default_factory=dict)
    ranges: dict[str, RangeState] = field(default_factory=dict)  # watched ranges, 1 h
    extensions: int = 0  # extensions the guard has seen in the tenant

    def prune(self, now: float) -> None:
        """Keep the memories bounded (called when one grows past its cap)."""
        if len(self.callers) > 20_000:
            horizon = now - 30 * DAY
            self.callers = {k: v for k, v in self.callers.items() if v > horizon}
            if len(self.callers) > 20_000:
                self.callers = dict(sorted(self.callers.items(), key=lambda kv: kv[1])[-10_000:])
        if len(self.rang) > 5_000:
            horizon = now - 3 * DAY
            self.rang = {k: v for k, v in self.rang.items() if v and v[-1][0] > horizon}
        if len(self.ranges) > 2_000:
            horizon = now - 3 * DAY
            self.ranges = {
                k: v
                for k, v in self.ranges.items()
                if max(v.first_at, *(c[0] for c in v.calls), v.test[0] if v.test else 0) > horizon
            }
