"""Request latency as a histogram of plain counts: cheap on the per-request path, turned
into Prometheus's form at scrape time. Registrar workers keep their own and hand over
what they counted, which the main process adds to its own."""

from __future__ import annotations

import bisect

from pbxwarden.sip.transaction import TransactionKey

LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0)


class Latency:
    """Time from a request's arrival to its final answer, by method: a histogram kept as
    plain counts (the scrape turns it into Prometheus's form)."""

    def __init__(self) -> None:
        self.started: dict[TransactionKey, tuple[str, float]] = {}
        self.counts: dict[str, list[int]] = {}  # per bucket, the last one is +Inf
        self.sums: dict[str, float] = {}

    def start(self, key: TransactionKey, method: str, now: float) -> None:
        if len(self.started) > 100_000:  # requests never answered (dropped): forget them
            self.started.clear()
        self.started[key] = (method, now)

    def finish(self, key: TransactionKey, now: float) -> None:
        begun = self.started.pop(key, None)
        if begun is None:
            return
        method, start = begun
        method = method if method in ("REGISTER", "INVITE", "OPTIONS") else "other"
        elapsed = now - start
        counts = self.counts.get(method)
        if counts is None:
            counts = self.counts[method] = [0] * (len(LATENCY_BUCKETS) + 1)
        counts[bisect.bisect_left(LATENCY_BUCKETS, elapsed)] += 1
        self.sums[method] = self.sums.get(method, 0.0) + elapsed

    def merge(self, counts: dict[str, list[int]], sums: dict[str, float]) -> None:
        """Add another process's counts (see :meth:`take`)."""
        for method, theirs in counts.items():
            if len(theirs) != len(LATENCY_BUCKETS) + 1:
                continue
            ours = self.counts.setdefault(method, [0] * (len(LATENCY_BUCKETS) + 1))
            for i, n in enumerate(theirs):
                ours[i] += int(n)
            self.sums[method] = self.sums.get(method, 0.0) + float(sums.get(method, 0.0))

    def take(self) -> tuple[dict[str, list[int]], dict[str, float]]:
        """What was counted since the last call, and start again from zero."""
        counts, sums = self.counts, self.sums
        self.counts, self.sums = {}, {}
        return counts, sums
