"""The merge of several nodes' learned baselines into the one a node judges with.

Each node stores only what it learned itself (one row per node, ``pbxwarden.baseline_sync``),
so the rows are disjoint shares of one history and merging them counts nothing twice:
counters are summed (calls, minutes, spend, distinct days: a node counts a day into its
own row only when its merged view had not counted it, see ``Baseline.own``), times take
their extreme (the first call: the earliest; a day last seen: the latest), sets are
united, flags are or-ed. Where a field is capped (targets, ranges, networks, diversion
targets, the numbers followed for the drip and guest-room patterns) the union is cut to
the cap by a deterministic order: by key for those a key alone ranks (then truncation
commutes with union, so the merge stays associative), and for ``runs`` and ``ledger`` by
the rule ``Baseline`` itself applies when full (one-offs first, then the stalest; the
oldest followed numbers), ties broken by key.

Properties (``tests/guard/test_baseline_merge.py``): ``merge`` is commutative, and
associative whenever the rows fit the caps (a ``runs`` or ``ledger`` entry cut at one
step might have ranked higher with a third row's part of it), and ``merge(*rows)`` does
not depend on the order of the rows in any case: a node merges all rows of a key at once.
Floating-point sums use ``math.fsum``, exactly rounded, so that order does not matter
either.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TypeVar

from pbxwarden.guard.baseline import (
    MAX_FORWARDS,
    MAX_LEDGER,
    MAX_NETWORKS,
    MAX_RANGES,
    MAX_RUNS,
    MAX_TARGETS,
    PEAK_DAYS,
    Baseline,
    NumberLedger,
)

__all__ = ["merge", "untie"]

T = TypeVar("T")


def merge(*parts: Baseline) -> Baseline:
    """One baseline holding what every part learned (new objects: no part is shared)."""
    if not parts:
        raise ValueError("nothing to merge")
    return Baseline(
        first_at=min(p.first_at for p in parts),
        calls_by_hour=_sum_lists([p.calls_by_hour for p in parts]),
        spend_by_day=_sum_lists([p.spend_by_day for p in parts]),
        countries=_sum_counts(p.countries for p in parts),
        targets=_cut_set(set().union(*(p.targets for p in parts)), MAX_TARGETS),
        calls=sum(p.calls for p in parts),
        hour_days=[sum(days) for days in zip(*(p.hour_days for p in parts), strict=True)],
        hour_last=[max(last) for last in zip(*(p.hour_last for p in parts), strict=True)],
        country_days=_days([p.country_days for p in parts], 0),
        forward_targets=_cut(_sum_counts(p.forward_targets for p in parts), MAX_FORWARDS),
        networks=_cut(_sum_counts(p.networks for p in parts), MAX_NETWORKS),
        network_calls=sum(p.network_calls for p in parts),
        peaks=_peaks(parts),
        drip_ok=sum(p.drip_ok for p in parts),
        ledger=_ledger(parts),
        ranges=_days([p.ranges for p in parts], MAX_RANGES),
        answered=sum(p.answered for p in parts),
        talked=math.fsum(p.talked for p in parts),
        runs=_runs(parts),
    )


def untie(own: Baseline, others: Sequence[tuple[str, Baseline]], node: str) -> bool:
    """Days two nodes both counted, before either read the other's row: the node whose
    name sorts later takes its count back. True if ``own`` changed (save it again).

    In a node's own share a key's last day is a day that node counted (``_add_day``), so
    the same last day in two shares is a day counted twice. Taken back, the last day
    is stored as ``-2 - day`` (below any day, so the merged last day is still the
    other's, and never again equal to it). Checked for the hours of the day, countries
    and dear ranges: the counts a busy tenant's nodes learn the same day at once."""
    rivals = [o for n, o in others if n < node]
    if not rivals:
        return False
    changed = False
    for hour, last in enumerate(own.hour_last):
        if last >= 0 and any(o.hour_last[hour] == last for o in rivals):
            own.hour_days[hour] -= 1
            own.hour_last[hour] = -2 - last
            changed = True
    for mine, theirs in (
        (own.country_days, [o.country_days for o in rivals]),
        (own.ranges, [o.ranges for o in rivals]),
    ):
        for key, seen in mine.items():
            last = seen[1]
            if last >= 0 and any(key in t and t[key][1] == last for t in theirs):
                seen[0] -= 1
                seen[1] = -2 - last
                changed = True
    return changed


def _sum_lists(lists: list[list[float]]) -> list[float]:
    return [math.fsum(values) for values in zip(*lists, strict=True)]


def _sum_counts(counts: Iterable[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in counts:
        for key, n in part.items():
            out[key] = out.get(key, 0) + n
    return out


def _cut(values: dict[str, T], cap: int) -> dict[str, T]:
    """At most ``cap`` entries, the smallest keys kept (truncation commutes with union)."""
    if len(values) <= cap:
        return values
    return {k: values[k] for k in sorted(values)[:cap]}


def _cut_set(values: set[str], cap: int) -> set[str]:
    return values if len(values) <= cap else set(sorted(values)[:cap])


def _days(parts: list[dict[str, list[int]]], cap: int) -> dict[str, list[int]]:
    """[distinct days, last day] per key: days summed (each counted by one node), the
    latest last day."""
    out: dict[str, list[int]] = {}
    for part in parts:
        for key, (days, last) in part.items():
            seen = out.get(key)
            if seen is None:
                out[key] = [days, last]
            else:
                seen[0] += days
                seen[1] = max(seen[1], last)
    return _cut(out, cap) if cap else out


def _peaks(parts: tuple[Baseline, ...]) -> list[tuple[int, float, float]]:
    """Per clean day: the highest hourly spend any node saw (a lower bound of the whole's:
    the nodes' peak hours may differ) and the day's spend summed (each node's calls are
    its own); the last PEAK_DAYS days."""
    hours: dict[int, float] = {}
    days: dict[int, list[float]] = {}
    for part in parts:
        for day, hour, spend in part.peaks:
            hours[day] = max(hours.get(day, hour), hour)
            days.setdefault(day, []).append(spend)
    kept = sorted(hours)[-PEAK_DAYS:]
    return [(day, hours[day], math.fsum(days[day])) for day in kept]


def _ledger(parts: tuple[Baseline, ...]) -> dict[str, NumberLedger]:
    entries: dict[str, list[NumberLedger]] = {}
    for part in parts:
        for key, entry in part.ledger.items():
            entries.setdefault(key, []).append(entry)
    out = {
        key: NumberLedger(
            first_at=min(e.first_at for e in es),
            days=sum(e.days for e in es),
            last_day=max(e.last_day for e in es),
            long_calls=sum(e.long_calls for e in es),
            spend=math.fsum(e.spend for e in es),
            credited=any(e.credited for e in es),
            tenant_credited=any(e.tenant_credited for e in es),
            tried_day=max(e.tried_day for e in es),
            answered=sum(e.answered for e in es),
            talked=math.fsum(e.talked for e in es),
        )
        for key, es in entries.items()
    }
    if len(out) > MAX_LEDGER:  # the numbers followed longest are forgotten first
        newest = sorted(out, key=lambda k: (out[k].first_at, k))[-MAX_LEDGER:]
        out = {k: out[k] for k in newest}
    return out


def _runs(parts: tuple[Baseline, ...]) -> dict[str, list[float]]:
    """[first day, last day, days, answered, minutes] per number; over MAX_RUNS, the
    rule of ``baseline.make_room``: one-offs go first, then the stalest."""
    runs: dict[str, list[list[float]]] = {}
    for part in parts:
        for key, run in part.runs.items():
            runs.setdefault(key, []).append(run)
    out = {
        key: [
            min(r[0] for r in rs),
            max(r[1] for r in rs),
            math.fsum(r[2] for r in rs),
            math.fsum(r[3] for r in rs),
            math.fsum(r[4] for r in rs),
        ]
        for key, rs in runs.items()
    }
    if len(out) > MAX_RUNS:
        kept = sorted(out, key=lambda k: (out[k][2] > 1, out[k][1], k))[-MAX_RUNS:]
        out = {k: out[k] for k in kept}
    return out
