"""Learned behaviour: what an extension (or a tenant) usually calls, when, and for how much.

A fraud call is rarely unusual in one way only: it goes to a country nobody called
before, at night, many times, for more money than that extension ever spends. Each
of those is scored against the extension's own history, so that a call centre and
a receptionist are judged by different yardsticks, and each score carries the
sentence a person reads in the alert.

What widens a limit or excuses a call must not be trainable by an attacker, so it
counts *distinct days* a behaviour held (an hour of the day, a country, a diversion
target), and the guard feeds this only with calls that are an hour old and were made
while the extension was under no alert (see ``Guard._settle``). Spend peaks are kept
per clean day for the last two weeks; a limit scales with the third highest, so a
single odd day cannot raise it.

Buckets are per hour of the week (168), hour of the day (24) and day of the week (7);
no library does that small piece of bookkeeping better than a list.

Several nodes (``pbxwarden.baseline_sync``): each node stores only what it learned itself
(:attr:`Baseline.own`), and judges with the merge of its own and the other nodes' rows
(``pbxwarden.guard.baseline_merge``). Learning goes into that merged view, which decides
(is this a new day for the hour? a number called back?), and the same effect goes into
:attr:`Baseline.own`: a day another node already counted is not counted again. On one
node ``own`` is None and nothing of this runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DAY = 86400.0
WEEK = 7 * DAY
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
PEAK_DAYS = 14  # clean days of spend peaks kept
MAX_TARGETS = 10_000
MAX_LEDGER = 500  # numbers followed for the slow-drip pattern
LEDGER_DAYS = 21
LONG_HABIT = 8.0  # minutes an answered call lasts on average where long calls are usual
LONG_HABIT_CALLS = 10
MAX_RUNS = 64  # numbers followed for the guest-room pattern (short runs of long calls)
RUN_SPAN = 6  # days: a run of calls to one number lasting at most this long...
RUN_QUIET = 3  # ...then no call to it for at least this many days has ended
RUN_HISTORY = 10  # days between a line's first and last calls before it can show that
MAX_RANGES = 5000
MAX_FORWARDS = 1000
MAX_NETWORKS = 200


def make_room(runs: dict[str, list[float]]) -> None:
    """Forget a one-off first, then the stalest, before a new number is followed: a
    lasting number must not be crowded out by a busy desk's one-offs."""
    if len(runs) >= MAX_RUNS:
        del runs[min(runs, key=lambda k: (runs[k][2] > 1, runs[k][1]))]


@dataclass(slots=True)
class NumberLedger:
    """Calls to one number first called after the extension's history was mature."""

    first_at: float
    days: int = 0  # distinct local days with a call
    last_day: int = -1
    long_calls: int = 0  # calls of 20 minutes or more
    spend: float = 0.0
    credited: bool = False  # counted as the extension's ordinary repeat (``learn.ledger``)
    tenant_credited: bool = False  # ... as the tenant's
    tried_day: int = -1  # last local day with an attempt (refused ones too)
    answered: int = 0  # answered calls to it, and their minutes
    talked: float = 0.0


@dataclass(slots=True)
class Baseline:
    first_at: float
    calls_by_hour: list[float] = field(default_factory=lambda: [0.0] * 168)
    spend_by_day: list[float] = field(default_factory=lambda: [0.0] * 7)
    countries: dict[str, int] = field(default_factory=dict)
    targets: set[str] = field(default_factory=set)  # E.164 numbers called
    calls: int = 0
    # distinct local days seen, per hour of the day and per country (day ordinal last seen)
    hour_days: list[int] = field(default_factory=lambda: [0] * 24)
    hour_last: list[int] = field(default_factory=lambda: [-1] * 24)
    country_days: dict[str, list[int]] = field(default_factory=dict)  # c -> [days, last]
    forward_targets: dict[str, int] = field(default_factory=dict)  # e164 -> days used
    networks: dict[str, int] = field(default_factory=dict)  # source /24 -> days seen
    # per clean day: (day ordinal, highest spend in an hour, spend of the day)
    peaks: list[tuple[int, float, float]] = field(default_factory=list)
    drip_ok: int = 0  # new numbers called again on another day while nothing was wrong
    # (for an extension: with long calls; for a tenant: any)
    ledger: dict[str, NumberLedger] = field(default_factory=dict)
    ranges: dict[str, list[int]] = field(default_factory=dict)  # dear range -> [days, last]
    answered: int = 0  # answered calls on clean days
    talked: float = 0.0  # their minutes
    network_calls: int = 0  # calls learned with a network (sum of ``networks``)
    # answered calls per number on clean days: e164 -> [first day, last day, days,
    # answered, minutes] (the guest-room pattern: ``ended_runs``)
    runs: dict[str, list[float]] = field(default_factory=dict)
    _peak_cache: tuple[list[float], list[float]] | None = field(
        default=None, repr=False, compare=False
    )
    # several nodes: what this node learned itself (stored in its own row); this baseline
    # is then the merge of it and the other nodes' rows. None on one node.
    own: Baseline | None = field(default=None, repr=False, compare=False)

    def learn_range(self, prefix: str, day: int) -> None:
        seen = self.ranges.get(prefix)
        if seen is None:
            if len(self.ranges) < MAX_RANGES:
                self.ranges[prefix] = [1, day]
                if self.own is not None:
                    self.own._add_day(self.own.ranges, prefix, day, MAX_RANGES)
        elif seen[1] != day:
            seen[0] += 1
            seen[1] = day
            if self.own is not None:
                self.own._add_day(self.own.ranges, prefix, day, MAX_RANGES)

    @staticmethod
    def _add_day(days: dict[str, list[int]], key: str, day: int, cap: int = 0) -> None:
        """A day the merged view counted, added to this node's own [days, last]."""
        seen = days.get(key)
        if seen is None:
            if not cap or len(days) < cap:
                days[key] = [1, day]
        else:
            seen[0] += 1
            seen[1] = day

    def learn_length(self, minutes: float) -> None:
        """One answered call on a clean day, and how long it lasted."""
        self.answered += 1
        self.talked += minutes
        if self.own is not None:
            self.own.learn_length(minutes)

    def talks_long(self, entry: NumberLedger | None = None) -> bool:
        """Long calls are this extension's habit: its answered calls last 8 minutes or more
        on average (a guest room phoning home), not a desk's few minutes. The calls to
        ``entry``'s number are left out: a drip cannot make its own long calls usual."""
        answered, talked = self.answered, self.talked
        if entry is not None:
            answered -= entry.answered
            talked -= entry.talked
        return answered >= LONG_HABIT_CALLS and talked >= LONG_HABIT * answered

    def learn_run(self, e164: str, day: int, minutes: float) -> None:
        """One answered call to ``e164`` on a clean day (for :meth:`ended_runs`)."""
        run = self.runs.get(e164)
        if run is None:
            make_room(self.runs)
            run = self.runs[e164] = [float(day), float(day), 0.0, 0.0, 0.0]
        counted = run[1] != day or run[2] == 0
        if counted:
            run[2] += 1
        run[1] = float(day)
        run[3] += 1
        run[4] += minutes
        if self.own is not None:  # the day counts in this node's row if the view counted it
            mine = self.own.runs.get(e164)
            if mine is None:
                make_room(self.own.runs)
                mine = self.own.runs[e164] = [float(day), float(day), 0.0, 0.0, 0.0]
            if counted:
                mine[2] += 1
            mine[1] = float(day)
            mine[3] += 1
            mine[4] += minutes

    def ended_runs(self, day: int, other_than: str) -> int:
        """Numbers this extension called on two or more days within RUN_SPAN days and
        then not for RUN_QUIET days, on a line that called over RUN_HISTORY days or more
        with no lasting number at all: a guest room, whose guests each phone home for
        the nights of a stay. 0 for a line with any number called over a longer span (a
        desk's customers, a family abroad, a drip let through): there a new number
        called back is no habit; 0 too for a line too new or too quiet to tell."""
        ended = 0
        first_day, last_day = float(day), 0.0
        for e164, (first, last, days, _, _) in self.runs.items():
            if e164 == other_than:  # the judged number cannot vouch for itself
                continue
            if last - first > RUN_SPAN:
                return 0
            first_day, last_day = min(first_day, first), max(last_day, last)
            if days >= 2 and day - last >= RUN_QUIET:
                ended += 1
        return ended if last_day - first_day >= RUN_HISTORY else 0

    def range_days(self, prefix: str) -> int:
        seen = self.ranges.get(prefix)
        return seen[0] if seen is not None else 0

    def weeks(self, now: float) -> float:
        return max(1.0, (now - self.first_at) / WEEK)

    def mature(self, now: float, min_days: float = 7.0, min_calls: int = 10) -> bool:
        """Enough history to call something unusual without crying wolf."""
        return now - self.first_at >= min_days * DAY and self.calls >= min_calls

    def learn_call(
        self, hour_of_week: int, country: str, e164: str, day: int = -1, hour: int = -1
    ) -> None:
        self.calls += 1
        self.calls_by_hour[hour_of_week] += 1.0
        self.countries[country] = self.countries.get(country, 0) + 1
        if len(self.targets) < MAX_TARGETS:
            self.targets.add(e164)
        own = self.own
        if own is not None:
            own.calls += 1
            own.calls_by_hour[hour_of_week] += 1.0
            own.countries[country] = own.countries.get(country, 0) + 1
            if len(own.targets) < MAX_TARGETS:
                own.targets.add(e164)
        if day < 0:
            return
        if 0 <= hour < 24 and self.hour_last[hour] != day:
            self.hour_last[hour] = day
            self.hour_days[hour] += 1
            if own is not None:
                own.hour_last[hour] = day
                own.hour_days[hour] += 1
        seen = self.country_days.get(country)
        if seen is None or seen[1] != day:
            if seen is None:
                self.country_days[country] = [1, day]
            else:
                seen[0] += 1
                seen[1] = day
            if own is not None:
                own._add_day(own.country_days, country, day)

    def started(self, now: float) -> None:
        """The first call starts the history (``learn.record``)."""
        self.first_at = min(self.first_at, now)
        if self.own is not None:
            self.own.first_at = min(self.own.first_at, now)

    def credit_drip(self) -> None:
        """A new number called back counts as this line's habit (``learn.ledger``)."""
        self.drip_ok += 1
        if self.own is not None:
            self.own.drip_ok += 1

    def tried(self, e164: str, day: int) -> None:
        """An attempt to a followed number on ``day`` (refused ones too: ``rules.drip``)."""
        entry = self.ledger.get(e164)
        if entry is not None:
            entry.tried_day = day
        mine = self.own.ledger.get(e164) if self.own is not None else None
        if mine is not None:
            mine.tried_day = day

    def learn_spend(self, weekday: int, cost: float) -> None:
        self.spend_by_day[weekday] += cost
        if self.own is not None:
            self.own.learn_spend(weekday, cost)

    def learn_peak(self, day: int, hour_peak: float, day_spend: float) -> None:
        """A clean day's highest hourly spend and its total (the last 14 kept)."""
        self._peak_cache = None
        if self.own is not None:  # the node's own spend: its own peaks
            self.own.learn_peak(day, hour_peak, day_spend)
        if self.peaks and self.peaks[-1][0] == day:
            _, h, d = self.peaks[-1]
            self.peaks[-1] = (day, max(h, hour_peak), max(d, day_spend))
            return
        self.peaks.append((day, hour_peak, day_spend))
        del self.peaks[:-PEAK_DAYS]

    def usual_peak(self) -> tuple[list[float], list[float]] | None:
        """The clean days' highest hourly spends and day totals, highest first, or None
        before three clean days: limits scale with a busy day, not with one odd day.
        Kept until the next peak is learned (every decision and police round reads it)."""
        if len(self.peaks) < 3:
            return None
        cached = self._peak_cache
        if cached is None:
            hours = sorted((p[1] for p in self.peaks), reverse=True)
            days = sorted((p[2] for p in self.peaks), reverse=True)
            cached = self._peak_cache = (hours, days)
        return cached

    def learn_forward(self, e164: str) -> None:
        if len(self.forward_targets) < MAX_FORWARDS:
            self.forward_targets[e164] = self.forward_targets.get(e164, 0) + 1
        if self.own is not None:
            self.own.learn_forward(e164)

    def learn_network(self, network: str) -> None:
        if network and (network in self.networks or len(self.networks) < MAX_NETWORKS):
            self.networks[network] = self.networks.get(network, 0) + 1
            self.network_calls += 1
        if self.own is not None:
            self.own.learn_network(network)

    def usual_hour(self, hour: int) -> int:
        """Days this extension called at this hour of the day or the hours beside it."""
        return max(
            self.hour_days[hour], self.hour_days[(hour - 1) % 24], self.hour_days[(hour + 1) % 24]
        )

    def country_seen_days(self, country: str) -> int:
        seen = self.country_days.get(country)
        return seen[0] if seen is not None else 0

    def expected_calls(self, hour_of_week: int, now: float) -> float:
        return self.calls_by_hour[hour_of_week] / self.weeks(now)

    def expected_spend(self, weekday: int, now: float) -> float:
        return self.spend_by_day[weekday] / self.weeks(now)

    def to_json(self) -> dict[str, Any]:
        return {
            "first_at": self.first_at,
            "calls_by_hour": self.calls_by_hour,
            "spend_by_day": self.spend_by_day,
            "countries": self.countries,
            "targets": sorted(self.targets),
            "calls": self.calls,
            "hour_days": self.hour_days,
            "hour_last": self.hour_last,
            "country_days": self.country_days,
            "forward_targets": self.forward_targets,
            "networks": self.networks,
            "peaks": [list(p) for p in self.peaks],
            "drip_ok": self.drip_ok,
            "ranges": self.ranges,
            "answered": self.answered,
            "talked": self.talked,
            "runs": self.runs,
            "ledger": {
                k: [
                    v.first_at,
                    v.days,
                    v.last_day,
                    v.long_calls,
                    v.spend,
                    int(v.credited),
                    v.tried_day,
                    v.answered,
                    v.talked,
                    int(v.tenant_credited),
                ]
                for k, v in self.ledger.items()
            },
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Baseline:
        """Rows of every version load: keys a row lacks start empty."""

        def floats(key: str, n: int) -> list[float]:
            raw = data.get(key)
            values = [float(v) for v in raw] if isinstance(raw, list) else []
            return values if len(values) == n else [0.0] * n

        def ints(key: str, n: int, empty: int) -> list[int]:
            raw = data.get(key)
            values = [int(v) for v in raw] if isinstance(raw, list) else []
            return values if len(values) == n else [empty] * n

        def counts(key: str) -> dict[str, int]:
            raw = data.get(key)
            return {str(k): int(v) for k, v in raw.items()} if isinstance(raw, dict) else {}

        countries = data.get("countries")
        targets = data.get("targets")
        first_at = data.get("first_at")
        calls = data.get("calls")
        days = data.get("country_days")
        peaks = data.get("peaks")
        ledger = data.get("ledger")
        drip_ok = data.get("drip_ok")
        ranges = data.get("ranges")
        answered = data.get("answered")
        talked = data.get("talked")
        runs = data.get("runs")
        return cls(
            first_at=float(first_at) if isinstance(first_at, int | float) else 0.0,
            calls_by_hour=floats("calls_by_hour", 168),
            spend_by_day=floats("spend_by_day", 7),
            countries=(
                {str(k): int(v) for k, v in countries.items()}
                if isinstance(countries, dict)
                else {}
            ),
            targets={str(t) for t in targets} if isinstance(targets, list) else set(),
            calls=int(calls) if isinstance(calls, int) else 0,
            hour_days=ints("hour_days", 24, 0),
            hour_last=ints("hour_last", 24, -1),
            country_days=(
                {str(k): [int(v[0]), int(v[1])] for k, v in days.items()}
                if isinstance(days, dict)
                else {}
            ),
            forward_targets=counts("forward_targets"),
            networks=counts("networks"),
            network_calls=sum(counts("networks").values()),
            peaks=(
                [(int(p[0]), float(p[1]), float(p[2])) for p in peaks][-PEAK_DAYS:]
                if isinstance(peaks, list)
                else []
            ),
            drip_ok=int(drip_ok) if isinstance(drip_ok, int) else 0,
            ranges=(
                {str(k): [int(v[0]), int(v[1])] for k, v in ranges.items()}
                if isinstance(ranges, dict)
                else {}
            ),
            answered=int(answered) if isinstance(answered, int) else 0,
            talked=float(talked) if isinstance(talked, int | float) else 0.0,
            runs=(
                {
                    str(k): [float(x) for x in v]
                    for k, v in runs.items()
                    if isinstance(v, list) and len(v) == 5
                }
                if isinstance(runs, dict)
                else {}
            ),
            ledger=(
                {
                    str(k): NumberLedger(
                        float(v[0]),
                        int(v[1]),
                        int(v[2]),
                        int(v[3]),
                        float(v[4]),
                        credited=bool(v[5]) if len(v) > 5 else v[1] >= 2,
                        tried_day=int(v[6]) if len(v) > 6 else -1,
                        answered=int(v[7]) if len(v) > 7 else 0,
                        talked=float(v[8]) if len(v) > 8 else 0.0,
                        tenant_credited=bool(v[9]) if len(v) > 9 else v[1] >= 2,
                    )
                    for k, v in ledger.items()
                }
                if isinstance(ledger, dict)
                else {}
            ),
        )
