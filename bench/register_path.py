#!/usr/bin/env python3
"""CPU cost of one authenticated registration inside a registrar worker, in-process.

Why beside bench/register.py: that one measures the whole system against Kamailio
(the number that counts), but on a shared 2-vCPU host its run-to-run noise hides
changes of a few percent. This one feeds SIPp-shaped REGISTERs straight into
:class:`pbxwarden.registrar_workers.RegistrarWorker` (real parser, transaction layer,
digest, registrar; answers sent over a real loopback UDP socket) and times only the
worker's handling, so a change to the per-registration path shows as a ratio against
the code before it (``--compare REV``, built in a temporary git worktree and run
alternately in the same session).

    python3 bench/register_path.py                 # this tree
    python3 bench/register_path.py --compare HEAD~3
    python3 bench/register_path.py --interpreted   # compiled core vs its sources
    python3 bench/register_path.py --profile       # where the time goes (cProfile)
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

REGISTER = (
    "REGISTER sip:{domain} SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-{pid}-{n}-{step};rport\r\n"
    "Max-Forwards: 70\r\n"
    "From: <sip:{user}@{domain}>;tag={pid}SIPpTag00{n}\r\n"
    "To: <sip:{user}@{domain}>\r\n"
    "Call-ID: {n}-{pid}@127.0.0.1\r\n"
    "CSeq: {step} REGISTER\r\n"
    "Contact: <sip:{user}@127.0.0.1:{port};transport=UDP>\r\n"
    "{auth}"
    "Expires: 3600\r\n"
    "User-Agent: SIPp pbxwarden-bench\r\n"
    "Content-Length: 0\r\n\r\n"
)


def _measure(registrations: int, users: int, profile: bool) -> float:
    """Mean worker CPU microseconds per registration (both REGISTERs)."""
    sys.path.insert(0, str(Path.cwd() / "src"))
    from pbxwarden.cli.main import _tune_gc
    from pbxwarden.config import Config
    from pbxwarden.registrar_workers import RegistrarWorker
    from pbxwarden.sip.digest import build_authorization, parse_challenge
    from pbxwarden.sip.message import Response, parse_message
    from pbxwarden.sip.transaction import Address
    from pbxwarden.store.db import Store

    domain = "127.0.0.1"
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(f"sqlite:///{tmp}/pbx.db")
        store.migrate()
        store.ensure_tenant("default", domain)
        passwords = {str(1000 + i): f"Qx7#k{i * 7919:x}-mVb2Lp" for i in range(users)}
        store.add_extensions(passwords.items(), tenant="default")
        config = Config.model_validate({"sip": {"realm": domain}})
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.bind(("127.0.0.1", 0))
        sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        port = sink.getsockname()[1]
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        theirs.setblocking(False)
        ours.setblocking(False)
        worker = RegistrarWorker(0, config, store, b"s" * 32, udp, theirs)
        source = Address("UDP", "127.0.0.1", port)
        profiler = cProfile.Profile() if profile else None

        async def run() -> float:
            worker._loop = asyncio.get_running_loop()
            await worker._refresh()
            _tune_gc()  # as the worker process does
            spent = 0.0
            pid = os.getpid()
            for n in range(registrations):
                user = str(1000 + n % users)
                fields = dict(domain=domain, port=port, pid=pid, n=n, user=user)
                first = REGISTER.format(step=1, auth="", **fields).encode()
                t0 = time.process_time()
                if profiler:
                    profiler.enable()
                worker.on_datagram(first, source)
                if profiler:
                    profiler.disable()
                spent += time.process_time() - t0
                challenge = parse_message(sink.recv(65535))
                assert isinstance(challenge, Response) and challenge.status == 401, challenge
                header = challenge.headers.get("WWW-Authenticate")
                assert header is not None
                authorization = build_authorization(
                    parse_challenge(header),
                    "REGISTER",
                    f"sip:{domain}",
                    user,
                    passwords[user],
                    "0a4f113b",
                    1,
                )
                second = REGISTER.format(
                    step=2, auth=f"Authorization: {authorization}\r\n", **fields
                ).encode()
                t0 = time.process_time()
                if profiler:
                    profiler.enable()
                worker.on_datagram(second, source)
                worker.reporter.flush()
                if profiler:
                    profiler.disable()
                spent += time.process_time() - t0
                ok = parse_message(sink.recv(65535))
                assert isinstance(ok, Response) and ok.status == 200, ok
                while True:  # drain the reports the main process would read
                    try:
                        ours.recv(1 << 20)
                    except BlockingIOError:
                        break
                if n % 64 == 0:
                    await asyncio.sleep(0)  # the transactions' timers run, as in the worker
            return spent

        spent = asyncio.run(run())
        store.close()
        if profiler:
            pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
        return spent / registrations * 1e6


def _worktree(rev: str, where: Path) -> Path:
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(where), rev],
        check=True,
        capture_output=True,
    )
    return where


def _child(tree: Path, args: argparse.Namespace, pure: bool = False) -> float:
    env = {k: v for k, v in os.environ.items() if k != "PBXWARDEN_PURE_PYTHON"}
    if pure:
        env["PBXWARDEN_PURE_PYTHON"] = "1"
    out = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            "--registrations",
            str(args.registrations),
            "--users",
            str(args.users),
        ],
        cwd=tree,
        check=True,
        capture_output=True,
        text=True,
        env={**env, "PYTHONPATH": str(tree / "src")},
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--registrations", type=int, default=4000)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--compare", metavar="REV", help="also measure this git revision")
    parser.add_argument(
        "--interpreted", action="store_true", help="also measure the core's sources, uncompiled"
    )
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child or args.profile:
        print(f"{_measure(args.registrations, args.users, args.profile):.1f}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"this tree": (ROOT, False)}
        if args.compare:
            trees[args.compare] = (_worktree(args.compare, Path(tmp) / "base"), False)
        if args.interpreted:
            trees["interpreted"] = (ROOT, True)
        results: dict[str, list[float]] = {name: [] for name in trees}
        try:
            for _ in range(args.runs):  # alternate, so that host noise hits both alike
                for name, (tree, pure) in trees.items():
                    results[name].append(_child(tree, args, pure))
        finally:
            if args.compare:
                subprocess.run(
                    [
                        "git",
                        "-C",
                        str(ROOT),
                        "worktree",
                        "remove",
                        "--force",
                        str(Path(tmp) / "base"),
                    ],
                    check=False,
                )
    medians = {name: statistics.median(v) for name, v in results.items()}
    for name, values in results.items():
        runs = ", ".join(f"{v:.0f}" for v in values)
        print(f"{name:>12}: median {medians[name]:.1f} us/registration ({runs})")
    for other in trees:
        if other != "this tree":
            ratio = medians[other] / medians["this tree"]
            print(f"speed-up of this tree over {other}: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
