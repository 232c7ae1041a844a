#!/usr/bin/env python3
"""A node killed behind the shipped Kamailio front: how long until its phones are
reachable again, and can call again.

Issue 15 asks for the time from a node's death to its phones being reachable. Each run
starts a redis-server, two nodes (A and B, each its own SQLite with the same
extensions, sharing location through Redis) and Kamailio rendered from
``deploy/kamailio/kamailio.cfg`` with its shipped probing (``--ping-interval``,
``--fr-timer``); phones register through the front (it hashes each phone's user onto a
node). Then node A is killed with SIGKILL and, at once and at the same time:

* **called**: a phone of B calls a phone that had registered through A (SIPp UAS on
  the phone's registered address): B has A's bindings (shared location) and sends the
  call through the front, which holds the phone's flow;
* **calls out**: a phone hashed onto A calls a phone of B: the front sends its INVITE
  to A until the probe marks A down, or fails over to B after ``fr_timer``;
* **registers**: a phone of A sends REGISTER (a fresh challenge, as a phone does when
  its refresh got no answer), every time its previous attempt timed out (5 s);
* **marked down**: when the front's log says A is down (its probe, or a request that
  timed out on it).

Each is the time from the SIGKILL to its success. The two calls are first made with A
alive ("A alive"): SIPp's start and the call itself, the part of each figure that is
not the failover. ``--runs`` fresh setups; medians.
Everything listens on 127.0.x.x; every process started here is stopped before exit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import kamailio as kam  # noqa: E402  (the tests' Kamailio runner)
from tests.cluster_nodes import start_node  # noqa: E402
from tests.helpers import (  # noqa: E402
    PbxProcess,
    finish_sipp_uas,
    free_port,
    run_sipp,
    start_sipp_uas,
)
from tests.integration.test_kamailio_front import (  # noqa: E402
    NUMBERS,
    PASSWORDS,
    Front,
    placement,
)
from tests.redis_server import RedisServer  # noqa: E402

FRONT = "127.0.22.1"
NODES = ("127.0.22.11", "127.0.22.12")
SUBNET = 23  # phones: 127.0.23.x


@contextlib.contextmanager
def cluster(work: Path, ping_interval: int, fr_timer_ms: int) -> Iterator[Front]:
    """Redis, nodes A and B and the front, stopped however the block ends."""
    redis = RedisServer(work / "redis")
    nodes: list[PbxProcess] = []
    front = None
    try:
        redis.start()
        for name, host in zip("ab", NODES, strict=True):
            nodes.append(
                start_node(
                    work,
                    name,
                    host,
                    redis,
                    PASSWORDS,
                    PBXWARDEN_CLUSTER__FRONTS=f'["{FRONT}"]',
                    PBXWARDEN_CLUSTER__RECONCILE_INTERVAL="1",
                )
            )
        front = kam.Kamailio(
            work / "kamailio",
            FRONT,
            free_port(FRONT),
            [(n.host, n.port) for n in nodes],
            ping_interval=ping_interval,
            fr_timer_ms=fr_timer_ms,
        )
        front.start()
        yield Front(front, nodes[0], nodes[1])
    finally:
        if front is not None:
            front.stop()
        for node in nodes:
            node.stop()
        redis.stop()


def one_run(work: Path, ping_interval: int, fr_timer_ms: int) -> dict[str, float | None]:
    uas: dict[str, tuple[Path, subprocess.Popen[bytes]]] = {}
    try:
        return _measure(work, ping_interval, fr_timer_ms, uas)
    finally:
        for _, proc in uas.values():  # stopped however the run ended
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def _measure(
    work: Path,
    ping_interval: int,
    fr_timer_ms: int,
    uas: dict[str, tuple[Path, subprocess.Popen[bytes]]],
) -> dict[str, float | None]:
    with cluster(work, ping_interval, fr_timer_ms) as front:
        placed = placement(front, NUMBERS, subnet=SUBNET)
        on = {name: [n for n, (where, _) in placed.items() if where == name] for name in "ab"}
        if len(on["a"]) < 2 or not on["b"]:
            raise RuntimeError(f"the front hashed too few phones onto a node: {on}")
        callee_a, caller_a = on["a"][0], on["a"][1]
        callee_b, caller_b = on["b"][0], on["b"][-1]
        for number in (callee_a, callee_b):
            phone = placed[number][1]
            phone.close()  # SIPp answers on the very address its binding recorded
            workdir = work / f"uas-{number}"
            workdir.mkdir()
            proc = start_sipp_uas(
                "call_uas.xml",
                phone.port,
                workdir,
                local_ip=phone.host,
                timeout=90,
                name=number,
                calls=2,
            )
            uas[number] = (workdir, proc)
        registering = placed[caller_a][1]
        for number in set(placed) - {callee_a, callee_b, caller_a}:
            placed[number][1].close()
        time.sleep(1.0)  # the UAS are listening (SIPp binds at once; a margin on a busy host)
        found: dict[str, float | None] = {}
        killed = time.monotonic()

        def call(key: str, caller: str, callee: str, address: str) -> None:
            workdir = work / f"uac-{key}"
            workdir.mkdir(exist_ok=True)
            result = run_sipp(
                "call_uac.xml",
                front.target,
                users={caller: PASSWORDS[caller]},
                extra=["-s", callee],
                local_ip=address,
                workdir=workdir,
                timeout=40,
            )
            found[key] = time.monotonic() - killed if result.successful == 1 else None

        # the same calls with A alive: what SIPp's start and a call cost anyway
        for key, caller, callee, last in (
            ("called, A alive", caller_b, callee_a, 50),
            ("calls out, A alive", caller_a, callee_b, 51),
        ):
            killed = time.monotonic()
            call(key, caller, callee, f"127.0.{SUBNET}.{last}")
        assert front.a.proc is not None
        front.a.proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()

        threads = [
            threading.Thread(
                target=call, args=("called", caller_b, callee_a, f"127.0.{SUBNET}.50")
            ),
            threading.Thread(
                target=call, args=("calls out", caller_a, callee_b, f"127.0.{SUBNET}.51")
            ),
        ]
        for thread in threads:
            thread.start()

        def probed() -> None:
            while time.monotonic() - killed < 40:
                if "pbxwarden node down" in front.kamailio.log():
                    found["marked down"] = time.monotonic() - killed
                    return
                time.sleep(0.02)
            found["marked down"] = None

        watcher = threading.Thread(target=probed)
        watcher.start()
        registering.client.sock.settimeout(5)
        found["registers"] = None
        while time.monotonic() - killed < 40:
            if registering.register(caller_a) == 200:
                found["registers"] = time.monotonic() - killed
                break
        registering.close()
        for thread in (*threads, watcher):
            thread.join(60)
        for number, (workdir, proc) in uas.items():
            finish_sipp_uas(proc, workdir, timeout=30, name=number)
        return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--ping-interval", type=int, default=2, help="the shipped: 2 s")
    parser.add_argument("--fr-timer", type=int, default=2000, help="ms; the shipped: 2000")
    parser.add_argument("--json", type=Path, help="also write the runs here")
    args = parser.parse_args()
    if not kam.available():
        print("kamailio is not installed (Debian kamailio)", file=sys.stderr)
        return 2
    runs: list[dict[str, float | None]] = []
    for k in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="pbxwarden-failover-") as tmp:
            found = one_run(Path(tmp), args.ping_interval, args.fr_timer)
        runs.append(found)
        shown = ", ".join(
            f"{key} {'failed' if v is None else f'{v:.2f} s'}" for key, v in sorted(found.items())
        )
        print(f"run {k + 1}: {shown}", flush=True)
    print(f"\nping interval {args.ping_interval} s, fr_timer {args.fr_timer} ms; medians:")
    keys = ("marked down", "called", "called, A alive", "calls out", "calls out, A alive")
    for key in (*keys, "registers"):
        values = [v for r in runs if (v := r.get(key)) is not None]
        failed = sum(1 for r in runs if r.get(key) is None)
        median = f"{statistics.median(values):.2f} s" if values else "n/a"
        spread = f" ({min(values):.2f}-{max(values):.2f})" if values else ""
        print(f"  {key:20} {median}{spread}" + (f", {failed} failed" if failed else ""))
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
