"""The shared counters' round trip alone: ``RESERVE_CALL`` (concurrency) against
``RESERVE_ATTEMPT`` (concurrency, rates, same prefix, and for one attempt in ten a dear
range answered back), interleaved call by call so that both meet the same host load.

    python3 bench/cluster_attempt.py --redis redis://127.0.0.1:6379/0 [--calls 5000]

Every call is a reservation that is allowed (limits far away, 50 extensions in turn),
as for the costly attempts a node admits; both scripts work on the same keys; the range
set holds up to 200 entries of another node, as for a range being pumped. Prints
percentiles (µs) of each and their ratio; keys under a fresh prefix, deleted after.
"""

from __future__ import annotations

import argparse
import sys
import time

from pbxwarden.cluster.calls import SharedCalls
from pbxwarden.cluster.rates import SharedAttempts
from pbxwarden.guard.shared import Ask

PERCENTILES = (("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("p99.9", 0.999))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--redis", required=True, metavar="URL")
    p.add_argument("--calls", type=int, default=5000, help="calls of each script")
    args = p.parse_args(argv)
    prefix = f"benchattempt{time.time_ns()}:"
    calls = SharedCalls(args.redis, 0.5, prefix, "a")
    attempts = SharedAttempts(args.redis, 0.5, prefix, "a")
    other = SharedAttempts(args.redis, 0.5, prefix, "b")
    now = time.time()
    big = 10**9  # limits never reached
    dear = Ask(big, big, big, big, "+53512", big, "+535123", "+5351230000")
    for k in range(200):  # another node's attempts into the range, in the last hour
        other.admit("acme", f"9{k:03d}", dear, now - 3000 + k)
    plain = Ask(big, big, big, big, "+12025", big)
    timings: dict[str, list[float]] = {"RESERVE_CALL": [], "RESERVE_ATTEMPT": []}
    ranged: list[float] = []  # RESERVE_ATTEMPT into the dear range (one in ten)
    for i in range(args.calls):
        ext = str(1000 + i % 50)
        at = now + i * 0.001
        t0 = time.perf_counter_ns()
        calls.reserve("acme", ext, big, big, at)
        t1 = time.perf_counter_ns()
        attempts.admit("acme", ext, dear if i % 10 == 0 else plain, at)
        t2 = time.perf_counter_ns()
        timings["RESERVE_CALL"].append((t1 - t0) / 1000)
        timings["RESERVE_ATTEMPT"].append((t2 - t1) / 1000)
        if i % 10 == 0:
            ranged.append((t2 - t1) / 1000)
    for name, values in timings.items():
        cols = ", ".join(f"{n} {percentile(values, q):.0f}" for n, q in PERCENTILES)
        print(f"{name}: {cols} µs ({len(values):,} calls)")
    cols = ", ".join(f"{n} {percentile(ranged, q):.0f}" for n, q in PERCENTILES)
    print(f"RESERVE_ATTEMPT into the dear range alone: {cols} µs ({len(ranged):,} calls)")
    base, new = timings["RESERVE_CALL"], timings["RESERVE_ATTEMPT"]
    ratios = ", ".join(
        f"{n} {percentile(new, q) / percentile(base, q):.2f}" for n, q in PERCENTILES[:3]
    )
    print(f"ratio RESERVE_ATTEMPT / RESERVE_CALL: {ratios}")
    keys = list(calls.client.scan_iter(f"{prefix}*"))
    if keys:
        calls.client.delete(*keys)
    for shared in (calls, attempts, other):
        shared.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
