"""Learned behaviour: what an extension (or a tenant) usually calls, when, and for how much.

A fraud call is rarely unusual in one way only: it goes to a country nobody called
before, at night, many times, for more money than that extension ever spends. Each
of those is scored against the extension's own history, so that a call centre and
a receptionist are judged by different yardsticks, and each score carries the
sentence a person reads in the alert.

Buckets are per hour of the week (168) and day of the week (7), averaged over the
weeks observed; no library does that small piece of bookkeeping better than a list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DAY = 86400.0
WEEK = 7 * DAY
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


@dataclass(slots=True)
class Baseline:
    first_at: float
    calls_by_hour: list[float] = field(default_factory=lambda: [0.0] * 168)
    spend_by_day: list[float] = field(default_factory=lambda: [0.0] * 7)
    countries: dict[str, int] = field(default_factory=dict)
    targets: set[str] = field(default_factory=set)  # E.164 numbers called
    calls: int = 0

    def weeks(self, now: float) -> float:
        return max(1.0, (now - self.first_at) / WEEK)

    def mature(self, now: float, min_days: float = 7.0, min_calls: int = 10) -> bool:
        """Enough history to call something unusual without crying wolf."""
        return now - self.first_at >= min_days * DAY and self.calls >= min_calls

    def learn_call(self, hour_of_week: int, country: str, e164: str) -> None:
        self.calls += 1
        self.calls_by_hour[hour_of_week] += 1.0
        self.countries[country] = self.countries.get(country, 0) + 1
        if len(self.targets) < 10_000:
            self.targets.add(e164)

    def learn_spend(self, weekday: int, cost: float) -> None:
        self.spend_by_day[weekday] += cost

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
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Baseline:
        def floats(key: str, n: int) -> list[float]:
            raw = data.get(key)
            values = [float(v) for v in raw] if isinstance(raw, list) else []
            return values if len(values) == n else [0.0] * n

        countries = data.get("countries")
        targets = data.get("targets")
        first_at = data.get("first_at")
        calls = data.get("calls")
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
        )
