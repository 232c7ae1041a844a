#!/usr/bin/env python3
"""How long ``pbxwarden`` commands take to answer, against another revision in the same run.

A command line is used interactively: ``--help`` or ``extension list`` should answer
before the operator notices a wait. Most of the time is Python importing modules, so
each command runs in a fresh interpreter, as a user's would, with its bytecode cached
(as an installed package has it; one warm-up run each), alternately for this tree and
``--compare REV`` (a temporary git worktree), each tree with its own initialised data
directory (100 extensions, a few hundred call records) and, for ``stats``, its own
running server. Both run their sources (``PBXWARDEN_PURE_PYTHON=1``): the other tree
has no compiled core, and the comparison is about start-up, not SIP.

Reported per command: the median wall-clock time and the median CPU time (user +
system) of the process; CPU is the steadier number on a shared host.

    python3 bench/cli_startup.py --compare main
    python3 bench/cli_startup.py --runs 21 --compare HEAD~5
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = (
    ("--help",),
    ("--version",),
    ("extension", "list"),
    ("cdr",),
    ("alerts",),
    ("registrations",),
    ("stats",),
)


def _env(tree: Path, cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(
        PYTHONPATH=str(tree / "src"),
        PYTHONPYCACHEPREFIX=str(cache),
        PBXWARDEN_PURE_PYTHON="1",
        COLUMNS="100",
    )
    return env


def _run(tree: Path, data: Path, cache: Path, args: tuple[str, ...]) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, exit code) of one command in a fresh interpreter."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pbxwarden.cli.main", "--data-dir", str(data), *args],
        cwd=tree,
        env=_env(tree, cache),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall, cpu, proc.returncode


def _prepare(tree: Path, data: Path, cache: Path) -> None:
    """A data directory as after a few days: extensions, call records, an alert."""
    env = _env(tree, cache)
    main = [sys.executable, "-m", "pbxwarden.cli.main", "--data-dir", str(data)]
    subprocess.run([*main, "init"], cwd=tree, env=env, check=True, capture_output=True)
    users = data / "users.csv"
    users.write_text("".join(f"{n},{secrets.token_urlsafe(18)}\n" for n in range(1000, 1100)))
    subprocess.run(
        [*main, "extension", "import", str(users)],
        cwd=tree,
        env=env,
        check=True,
        capture_output=True,
    )
    seed = (
        "import sys, time\n"
        "from pbxwarden.config import load_config\n"
        "from pbxwarden.store.db import Store\n"
        "d = sys.argv[1]; store = Store(load_config(__import__('pathlib').Path(d))"
        ".database_url(__import__('pathlib').Path(d)))\n"
        "now = time.time()\n"
        "for i in range(300):\n"
        "    f = dict(call_id=f'c{i}', tenant='default', extension='1000', caller='1000',\n"
        "             callee='1001', kind='internal',\n"
        "             decision='allow', reasons='internal call', start_ts=now - 600 + i)\n"
        "    store.cdr_close(store.cdr_open(f), dict(disposition='answered', sip_code=200,\n"
        "                    end_ts=now - 500 + i, answer_ts=now - 599 + i, duration=99.0))\n"
        "store.close()\n"
    )
    subprocess.run(
        [sys.executable, "-c", seed, str(data)], cwd=tree, env=env, check=True, capture_output=True
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _server(tree: Path, data: Path, cache: Path) -> Iterator[None]:
    """The tree's own server on the data directory, for ``stats``."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pbxwarden.cli.main",
            "--data-dir",
            str(data),
            "serve",
            "--sip",
            f"127.0.0.1:{_free_port()}",
        ],
        cwd=tree,
        env=_env(tree, cache),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        line = b""
        while b"ready" not in line and time.monotonic() < deadline and proc.poll() is None:
            line = proc.stdout.readline()
        if b"ready" not in line:
            raise RuntimeError(f"the server of {tree} did not start")
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument("--compare", metavar="REV", help="also measure this git revision")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pbxwarden-cli-bench-") as tmp_name:
        tmp = Path(tmp_name)
        trees = {"this tree": ROOT}
        if args.compare:
            base = tmp / "base"
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), args.compare],
                check=True,
                capture_output=True,
            )
            trees[args.compare] = base
        try:
            datas = {name: tmp / f"data-{i}" for i, name in enumerate(trees)}
            caches = {name: tmp / f"cache-{i}" for i, name in enumerate(trees)}
            for name, tree in trees.items():
                _prepare(tree, datas[name], caches[name])
            results: dict[tuple[str, tuple[str, ...]], list[tuple[float, float]]] = {}
            with contextlib.ExitStack() as servers:
                for name, tree in trees.items():
                    servers.enter_context(_server(tree, datas[name], caches[name]))
                for command in COMMANDS:
                    for name, tree in trees.items():  # warm-up: bytecode cached
                        _run(tree, datas[name], caches[name], command)
                    for _ in range(args.runs):  # alternate, so that host noise hits both
                        for name, tree in trees.items():
                            wall, cpu, code = _run(tree, datas[name], caches[name], command)
                            if code != 0 and name == "this tree":
                                raise RuntimeError(f"{name}: {' '.join(command)} exited {code}")
                            if code == 0:  # (an older tree may lack the command)
                                results.setdefault((name, command), []).append((wall, cpu))
        finally:
            if args.compare:
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tmp / "base")],
                    check=False,
                    capture_output=True,
                )
    print(f"medians of {args.runs} runs, wall / CPU seconds\n")
    header = "| command | " + " | ".join(trees) + (" | ratio (wall) |" if len(trees) > 1 else " |")
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for command in COMMANDS:
        cells, walls = [], []
        for name in trees:
            runs = results.get((name, command))
            if not runs:
                cells.append("(no such command)")
                continue
            wall = statistics.median(w for w, _ in runs)
            cpu = statistics.median(c for _, c in runs)
            walls.append(wall)
            cells.append(f"{wall:.3f} / {cpu:.3f}")
        ratio = f" | {walls[1] / walls[0]:.1f}x" if len(walls) > 1 else " | " * (len(trees) > 1)
        print(f"| `pbxwarden {' '.join(command)}` | " + " | ".join(cells) + ratio + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
