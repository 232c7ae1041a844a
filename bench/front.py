#!/usr/bin/env python3
"""REGISTER with digest auth through the shipped Kamailio front: one node behind it
against two, on the same machine.

Issue 15 asks that two nodes behind Kamailio on this 2-core machine stay within 15 % of
one node's total: the point is that spreading phones over nodes (the front hashes each
phone to a node) and sharing state through Redis cost little, not that two processes
on two cores do more. Each configuration is: a redis-server, one or two pbxwarden nodes
(``sip.workers = 0``: one process each, so two nodes are two processes), each node's own
SQLite database with the same --users extensions, and Kamailio rendered from
``deploy/kamailio/kamailio.cfg`` in front of them (``tests/kamailio.py``). SIPp runs
``bench/sipp/register_auth.xml`` through the front at --rate for --calls
registrations without retransmissions; a run's result is the achieved rate
(successful registrations / SIPp's wall time) and the failures. Configurations
alternate, --runs each; medians and the ratio two nodes / one node are reported.

Everything listens on 127.0.x.x; every process started here is stopped before exit.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import kamailio as kam  # noqa: E402  (the tests' Kamailio runner)
from tests.helpers import PbxProcess, cli, free_port  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

from benchlib import parse_epoch, process_tree_cpu_seconds, read_final_stats  # noqa: E402

SCENARIO = ROOT / "bench" / "sipp" / "register_auth.xml"
FRONT = "127.0.21.1"
NODES = ("127.0.21.11", "127.0.21.12")
PHONES = "127.0.21.100"


def users(n: int) -> dict[str, str]:
    alphabet = "abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    return {str(100000 + i): "".join(secrets.choice(alphabet) for _ in range(24)) for i in range(n)}


@contextlib.contextmanager
def setup(
    work: Path, count: int, accounts: dict[str, str], pids: list[int]
) -> Iterator[kam.Kamailio]:
    """Redis, ``count`` nodes and the front (their pids into ``pids``), stopped however
    the block ends."""
    redis = RedisServer(work / "redis")
    nodes: list[PbxProcess] = []
    front = None
    try:
        redis.start()
        for k in range(count):
            data = work / f"node{k}"
            data.mkdir(parents=True)
            cli(data, "init")
            csv = data / "extensions.csv"
            csv.write_text("".join(f"{n},{p}\n" for n, p in accounts.items()))
            cli(data, "extension", "import", str(csv), timeout=600)
            pbx = PbxProcess(
                data,
                host=NODES[k],
                env={
                    "PBXWARDEN_CLUSTER__REDIS_URL": redis.url,
                    "PBXWARDEN_CLUSTER__NODE": f"n{k}",
                    "PBXWARDEN_CLUSTER__KEY_PREFIX": "bench:",
                    "PBXWARDEN_CLUSTER__FRONTS": f'["{FRONT}"]',
                    "PBXWARDEN_SIP__WORKERS": "0",
                    "PBXWARDEN_LOG__LEVEL": "warning",
                    # the benchmark's phones register from one address, many times a second
                    "PBXWARDEN_FIREWALL__ALLOW": f'["{PHONES}"]',
                },
            )
            pbx.start(timeout=120)
            nodes.append(pbx)
            assert pbx.proc is not None
            pids.append(pbx.proc.pid)
        front = kam.Kamailio(
            work / "kamailio", FRONT, free_port(FRONT), [(n.host, n.port) for n in nodes]
        )
        front.start()
        assert front.proc is not None and redis.proc is not None
        pids += [front.proc.pid, redis.proc.pid]
        yield front
    finally:
        if front is not None:
            front.stop()
        for pbx in nodes:
            pbx.stop()
        redis.stop()


def run_sipp(
    front: kam.Kamailio, csv: Path, rate: int, calls: int, work: Path, pids: list[int]
) -> tuple[int, int, float, float]:
    """(successful, failed, achieved rate by SIPp's clock, CPU µs per registration of the
    nodes, the front and Redis together)."""
    stat = work / f"sipp-{time.monotonic_ns()}.csv"
    cmd = [
        shutil.which("sipp") or "sipp",
        f"{front.host}:{front.port}",
        "-sf", str(SCENARIO),
        "-inf", str(csv),
        "-key", "domain", "127.0.0.1",
        "-auth_uri", "127.0.0.1",
        "-i", PHONES,
        "-p", str(free_port(PHONES)),
        "-t", "u1",
        "-nr",
        "-recv_timeout", "4000",
        "-default_behaviors", "abortunexp",
        "-r", str(rate),
        "-m", str(calls),
        "-l", str(max(1000, rate * 6)),
        "-nostdin", "-nd",
        "-trace_stat", "-stf", str(stat), "-fd", "3600",
        "-timeout", f"{calls // max(rate, 1) + 60}s",
    ]  # fmt: skip
    cpu0 = sum(process_tree_cpu_seconds(pid) for pid in pids)
    subprocess.run(cmd, cwd=work, capture_output=True, timeout=calls / max(rate, 1) + 120)
    cpu = sum(process_tree_cpu_seconds(pid) for pid in pids) - cpu0
    final = read_final_stats(stat)
    ok = int(final.get("SuccessfulCall(C)", 0))
    failed = int(final.get("FailedCall(C)", 0))
    wall = max(0.001, parse_epoch(final["CurrentTime"]) - parse_epoch(final["StartTime"]))
    return ok, failed, ok / wall, 1e6 * cpu / max(ok, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--rate", type=int, default=400, help="registrations per second")
    p.add_argument("--calls", type=int, default=6000, help="registrations per run")
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    if not kam.available() or shutil.which("sipp") is None or shutil.which("redis-server") is None:
        sys.exit("needs kamailio, sipp and redis-server")
    accounts = users(args.users)
    results: dict[int, list[tuple[int, int, float, float]]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory(prefix="pbxwarden-front-") as tmp:
        root = Path(tmp)
        csv = root / "users.csv"
        csv.write_text(
            "SEQUENTIAL\n"
            + "".join(
                f"{n};[authentication username={n} password={pw}]\n" for n, pw in accounts.items()
            )
        )
        for run in range(args.runs):
            for count in (1, 2) if run % 2 == 0 else (2, 1):
                work = root / f"run{run}-{count}"
                pids: list[int] = []
                with setup(work, count, accounts, pids) as front:
                    result = run_sipp(front, csv, args.rate, args.calls, work, pids)
                results[count].append(result)
                ok, failed, achieved, cpu = result
                print(f"run {run + 1}, {count} node(s): {ok} ok, {failed} failed, "
                      f"{achieved:.0f}/s achieved, {cpu:.0f} µs CPU each", flush=True)  # fmt: skip
    rows = []
    medians: dict[int, tuple[float, float]] = {}
    for count, runs in results.items():
        achieved = statistics.median(r[2] for r in runs)
        failures = statistics.median(r[1] for r in runs)
        cpu = statistics.median(r[3] for r in runs)
        medians[count] = (achieved, cpu)
        where = f"{count} node(s) behind the front"
        rows.append(f"| {where} | {achieved:,.0f}/s | {failures:.0f} | {cpu:,.0f} µs |")
    print("\n| configuration | achieved REGISTER rate | failed | CPU per registration (all) |")
    print("|---|---:|---:|---:|")
    print("\n".join(rows))
    rate_ratio = medians[2][0] / medians[1][0] if medians[1][0] else float("nan")
    cpu_ratio = medians[1][1] / medians[2][1] if medians[2][1] else float("nan")
    print(
        f"\nRatios two nodes / one node: achieved rate {rate_ratio:.2f}, registrations per "
        f"CPU second {cpu_ratio:.2f} (aim: at least 0.85). Medians of {args.runs} runs each "
        f"at {args.rate}/s offered, {args.calls} registrations per run, {args.users} users, "
        f"{os.cpu_count()} CPUs."
    )


if __name__ == "__main__":
    main()
