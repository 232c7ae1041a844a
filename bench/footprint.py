#!/usr/bin/env python3
"""One node's footprint with many registered phones: start-up, idle CPU, memory.

What a hosted PBX pays for phones that are merely registered: the time a restart
takes with N extensions, the CPU the process tree burns while nothing happens (with
no contacts, then with N), and the memory each registered contact holds.

    python3 bench/footprint.py                        # 50,000 extensions, 60 s windows
    python3 bench/footprint.py -n 10000 --idle-seconds 20 --json /tmp/fp.json
    python3 bench/footprint.py --redis                # a cluster node: bindings in Redis too
    python3 bench/footprint.py --startups 5 --only-startup   # start-up alone, median of 5

Steps, all on 127.0.0.1, every process started here stopped before it exits:

1. ``pbxwarden init`` in a temporary data directory, then N extensions written straight
   into its SQLite database (``extension import`` checks every password's strength,
   minutes for 50,000; the rows are the same: digest HA1s, enabled).
2. ``pbxwarden serve`` (with ``--workers`` registrar workers): start-up is the wall
   and CPU time from the process start to its ``pbxwarden ready`` line, and to its first
   answer to an OPTIONS.
3. Idle with no contacts: CPU seconds of the process tree (from /proc) over
   ``--idle-seconds``, as cores; memory: PSS of the tree (``/proc/PID/smaps_rollup``).
4. N registrations with digest authentication from SIPp (``sipp/register_auth.xml``,
   Expires 3600, one contact per extension, retransmissions on) at ``--rate``.
5. The settling after the burst (completed transactions absorb retransmissions for 32 s,
   then go): cores per 5 s over ``--settle-seconds``; then idle with N contacts over
   ``--idle-seconds``, and PSS again. Memory per contact = PSS growth / contacts.
6. Restart: stop (SIGTERM), count the bindings in the database, start again and
   measure start-up with the N bindings stored (``--no-restart`` skips it).
   With ``--startups K``, K start/stop cycles first (nothing registered): medians of
   the wall time to ready and of the CPU of the tree, split into the main process and
   the workers; ``--only-startup`` stops there.
7. With ``--redis``: a ``redis-server`` (no persistence) on a free loopback port and
   ``cluster.redis_url`` pointing at it, so the node keeps its bindings in Redis too
   (``pbxwarden.cluster.location``); Redis's ``used_memory`` is read when the tree's
   PSS is, and memory per contact is given for the node, for Redis, and for both.
8. With ``--kamailio``: steps 3-5 again for Kamailio with ``bench/kamailio/kamailio.cfg``
   (usrloc in memory), started on its own afterwards; its start-up is the time to its
   first answer to an OPTIONS. It saves the REGISTERs without digest authentication
   (``NO_AUTH``: db_text finds a subscriber by a scan, far too slow for 50,000; Kamailio's
   nonces hold no state per contact, so the footprint is usrloc's). SIPp still answers
   no challenge then: each registration is one REGISTER and its 200.

The process tree's CPU is read from /proc, not from wall time: on a shared host the
ratio of the two idle figures of one run is what counts. Standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchlib import (
    BenchError,
    free_port,
    process_tree_cpu_seconds,
    read_final_stats,
    sip_options_ping,
    tree_pids,
)

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
SCENARIO = BENCH_DIR / "sipp" / "register_auth.xml"
PLAIN_SCENARIO = BENCH_DIR / "sipp" / "register_plain.xml"  # Kamailio with NO_AUTH
LOOPBACK = "127.0.0.1"
DOMAIN = LOOPBACK  # Request-URI, From and To; the digest realm is the tenant's own


def log(message: str) -> None:
    print(f"[footprint {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ process tree


def tree_pss_kb(root: int) -> int:
    """Proportional set size of the tree, KB (shared pages split between sharers)."""
    total = 0
    for pid in tree_pids(root):
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1])
                break
    return total


def pid_cpu_seconds(pid: int) -> float:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_cores(root: int, seconds: float, split: list[float] | None = None) -> float:
    """Cores the tree used over ``seconds``; ``split`` gets [main process, the rest]."""
    before = process_tree_cpu_seconds(root)
    main_before = pid_cpu_seconds(root)
    start = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - start
    total = (process_tree_cpu_seconds(root) - before) / elapsed
    if split is not None:
        main = (pid_cpu_seconds(root) - main_before) / elapsed
        split[:] = [main, total - main]
    return total


# ---------------------------------------------------------------------- set-up


def make_users(count: int, first: int) -> list[tuple[str, str]]:
    # letters and digits, starting with a letter (SIPp reads "0x..." as hex)
    return [(str(first + i), "Pw" + secrets.token_hex(10)) for i in range(count)]


def add_extensions(db: Path, users: list[tuple[str, str]]) -> None:
    """The rows ``Store.add_extensions`` writes, without its password-strength checks."""
    now = time.time()
    conn = sqlite3.connect(db)
    try:
        tenant_id, realm = conn.execute(
            "SELECT id, realm FROM tenants WHERE name = 'default'"
        ).fetchone()
        conn.executemany(
            "INSERT INTO extensions (tenant_id, number, realm, ha1_md5, ha1_sha256, enabled,"
            " created_at, updated_at, noanswer_after, trunk_access, withhold_caller_id)"
            " VALUES (?, ?, ?, ?, ?, 1, ?, ?, 20, 0, 0)",
            (
                (
                    tenant_id,
                    number,
                    realm,
                    hashlib.md5(f"{number}:{realm}:{pw}".encode()).hexdigest(),
                    hashlib.sha256(f"{number}:{realm}:{pw}".encode()).hexdigest(),
                    now,
                    now,
                )
                for number, pw in users
            ),
        )
        conn.commit()
    finally:
        conn.close()


def stored_bindings(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(
            conn.execute(
                "SELECT count(*) FROM registrations WHERE expires_at > ?", (time.time(),)
            ).fetchone()[0]
        )
    finally:
        conn.close()


# ---------------------------------------------------------------------- server


@dataclass
class Startup:
    ready_s: float = 0.0  # wall: process start -> "pbxwarden ready"
    options_s: float = 0.0  # wall: process start -> first OPTIONS answered
    cpu_s: float = 0.0  # CPU of the tree until ready
    main_cpu_s: float = 0.0  # of the main process alone


class Server:
    def __init__(self, cmd: list[str], env: dict[str, str], workdir: Path, port: int) -> None:
        self.cmd, self.env, self.workdir, self.port = cmd, env, workdir, port
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, limit: float = 120.0) -> Startup:
        self.starts += 1
        logfile = self.workdir / f"serve-{self.starts}.log"
        out = logfile.open("wb")
        started = time.monotonic()
        self.proc = subprocess.Popen(
            self.cmd,
            cwd=self.workdir,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()
        result = Startup()
        deadline = started + limit
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"pbxwarden exited ({self.proc.returncode}):\n{tail(logfile)}")
            if b"pbxwarden ready" in logfile.read_bytes():
                result.ready_s = time.monotonic() - started
                result.cpu_s = process_tree_cpu_seconds(self.proc.pid)
                result.main_cpu_s = pid_cpu_seconds(self.proc.pid)
                break
            time.sleep(0.01)
        else:
            raise BenchError(f"pbxwarden not ready within {limit:.0f}s:\n{tail(logfile)}")
        while time.monotonic() < deadline:
            if sip_options_ping(self.port, DOMAIN, timeout=0.2):
                result.options_s = time.monotonic() - started
                break
        return result

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is None:
            return
        for sig, grace in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(ProcessLookupError):  # a worker left behind by its leader
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc = None


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no output)"


def register_all(
    sipp: str,
    port: int,
    users_csv: Path,
    count: int,
    rate: int,
    workdir: Path,
    scenario: Path = SCENARIO,
) -> tuple[int, int, float]:
    """SIPp registers every extension once; (successful, failed, seconds)."""
    stat = workdir / "sipp-register.csv"
    bound = count / rate + 60
    cmd = [
        sipp,
        f"{LOOPBACK}:{port}",
        "-sf",
        str(scenario),
        "-inf",
        str(users_csv),
        "-key",
        "domain",
        DOMAIN,
        "-auth_uri",
        DOMAIN,
        "-i",
        LOOPBACK,
        "-p",
        str(free_port()),
        "-t",
        "u1",
        "-r",
        str(rate),
        "-m",
        str(count),
        "-l",
        str(max(1000, rate * 10)),
        "-buff_size",
        str(4 << 20),
        "-recv_timeout",
        "20000",
        "-timeout",
        str(int(bound)),
        "-nostdin",
        "-trace_stat",
        "-stf",
        str(stat),
        "-fd",
        "1",
    ]
    log(f"registering {count} extensions at {rate}/s with SIPp")
    started = time.monotonic()
    subprocess.run(
        cmd,
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=bound + 30,
        check=False,
    )
    elapsed = time.monotonic() - started
    stats = read_final_stats(stat)
    ok = int(stats.get("SuccessfulCall(C)", "0") or 0)
    failed = int(stats.get("FailedCall(C)", "0") or 0)
    return ok, failed, elapsed


# ---------------------------------------------------------------------- report


@dataclass
class Result:
    name: str
    extensions: int
    workers: int
    sip_core: str
    startup: Startup = field(default_factory=Startup)
    restart: Startup | None = None
    idle_empty: float = 0.0  # cores
    idle_full: float = 0.0
    idle_empty_split: list[float] = field(default_factory=list)  # [main, workers]
    idle_full_split: list[float] = field(default_factory=list)
    settle: list[float] = field(default_factory=list)  # cores per 5 s after the burst
    pss_empty_kb: int = 0
    pss_registered_kb: int = 0  # right after the burst (transactions still held)
    pss_full_kb: int = 0  # after settling and the idle window
    registered: int = 0
    failed: int = 0
    register_seconds: float = 0.0
    register_cpu_s: float = 0.0
    stored_after_stop: int | None = None
    restored: int | None = None

    redis_empty_kb: int | None = None  # Redis used_memory (--redis)
    redis_full_kb: int | None = None
    startups: list[Startup] = field(default_factory=list)  # --startups
    startup_main_cpu: list[float] = field(default_factory=list)

    @property
    def per_contact_kb(self) -> float:
        return (self.pss_full_kb - self.pss_empty_kb) / max(1, self.registered)

    @property
    def redis_per_contact_kb(self) -> float | None:
        if self.redis_empty_kb is None or self.redis_full_kb is None:
            return None
        return (self.redis_full_kb - self.redis_empty_kb) / max(1, self.registered)

    def rows(self) -> list[tuple[str, str]]:
        s, r = self.startup, self.restart
        ready = f"{s.ready_s:.2f} s / " if s.ready_s else ""
        out = [
            (
                "extensions / registered contacts",
                f"{self.extensions:,} / {self.registered:,}"
                + (f" ({self.failed} failed)" if self.failed else ""),
            ),
            ("processes in the tree; SIP core", f"{self.workers}; {self.sip_core}"),
            (
                "start-up, nothing registered: to ready (wall) / CPU / to OPTIONS",
                f"{ready}{s.cpu_s:.2f} s CPU / {s.options_s:.2f} s",
            ),
            (
                "restart with the bindings stored: to ready / CPU",
                "n/a"
                if r is None
                else f"{r.ready_s:.2f} s / {r.cpu_s:.2f} s CPU "
                f"({self.stored_after_stop or 0:,} stored, {self.restored} back)",
            ),
            (
                "idle CPU, no contacts",
                f"{self.idle_empty:.3f} cores{_split(self.idle_empty_split)}",
            ),
            (
                "idle CPU, all contacts registered",
                f"{self.idle_full:.3f} cores{_split(self.idle_full_split)}",
            ),
            ("difference (aim: at most 0.05)", f"{self.idle_full - self.idle_empty:+.3f} cores"),
            ("after the burst, cores per 5 s", " ".join(f"{c:.2f}" for c in self.settle) or "n/a"),
            (
                "registration burst: seconds, CPU per registration",
                f"{self.register_seconds:.1f} s, "
                f"{1e6 * self.register_cpu_s / max(1, self.registered):.0f} µs",
            ),
            (
                "PSS of the tree: no contacts / just registered / settled",
                f"{self.pss_empty_kb / 1024:.0f} / {self.pss_registered_kb / 1024:.0f} / "
                f"{self.pss_full_kb / 1024:.0f} MB",
            ),
            ("memory per contact (settled PSS growth / contacts)", f"{self.per_contact_kb:.2f} KB"),
        ]
        redis = self.redis_per_contact_kb
        if redis is not None:
            out += [
                (
                    "Redis used_memory: no contacts / settled",
                    f"{(self.redis_empty_kb or 0) / 1024:.1f} / "
                    f"{(self.redis_full_kb or 0) / 1024:.1f} MB",
                ),
                ("memory per contact in Redis", f"{redis:.2f} KB"),
                ("memory per contact, node and Redis", f"{self.per_contact_kb + redis:.2f} KB"),
            ]
        if self.startups:
            walls = sorted(s.ready_s for s in self.startups)
            cpus = sorted(s.cpu_s for s in self.startups)
            mains = sorted(self.startup_main_cpu)
            out.append(
                (
                    f"start-up, median of {len(walls)}: wall to ready / CPU of the tree (main)",
                    f"{median(walls):.2f} s / {median(cpus):.2f} s ({median(mains):.2f} s) "
                    f"[wall {walls[0]:.2f}-{walls[-1]:.2f}]",
                )
            )
        return out


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def markdown(results: list[Result]) -> str:
    lines = ["| measure | " + " | ".join(r.name for r in results) + " |"]
    lines.append("| --- |" + " ---: |" * len(results))
    columns = [r.rows() for r in results]
    for i, (key, _) in enumerate(columns[0]):
        lines.append(f"| {key} | " + " | ".join(c[i][1] for c in columns) + " |")
    return "\n".join(lines)


def _split(split: list[float]) -> str:
    return f" (main {split[0]:.3f}, workers {split[1]:.3f})" if len(split) == 2 else ""


class Kamailio:
    """Kamailio with ``bench/kamailio/kamailio.cfg`` (the peer of ``bench/register.py``:
    usrloc in memory, auth_db over db_text), ready when it answers an OPTIONS."""

    def __init__(self, binary: str, workdir: Path, port: int, shm_mb: int) -> None:
        self.binary, self.workdir, self.port, self.shm_mb = binary, workdir, port, shm_mb
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, limit: float = 60.0) -> Startup:
        cfg = BENCH_DIR / "kamailio" / "kamailio.cfg"
        cmd = [
            self.binary,
            *("-f", str(cfg), "-DD", "-E", "-l", f"udp:{LOOPBACK}:{self.port}"),
            *("-Y", str(self.workdir), "-P", str(self.workdir / "kamailio.pid")),
            *("-w", str(self.workdir), "-m", str(self.shm_mb), "-M", "8"),
            *("-A", f'DBURL="text://{self.workdir / "db"}"', "-A", "NO_AUTH"),
        ]
        logfile = self.workdir / "kamailio.log"
        with logfile.open("wb") as out:
            started = time.monotonic()
            self.proc = subprocess.Popen(
                cmd,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        while time.monotonic() < started + limit:
            if self.proc.poll() is not None:
                raise BenchError(f"kamailio exited ({self.proc.returncode}):\n{tail(logfile)}")
            if sip_options_ping(self.port, DOMAIN, timeout=0.2):
                return Startup(0.0, time.monotonic() - started, process_tree_cpu_seconds(self.pid))
        raise BenchError(f"kamailio did not answer within {limit:.0f}s:\n{tail(logfile)}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        Server.stop(self)  # type: ignore[arg-type]


def measure(
    target: Server | Kamailio, result: Result, args: argparse.Namespace, users_csv: Path, tmp: Path
) -> None:
    """The same sequence for either target: idle and memory with no contacts, the burst,
    its settling, idle and memory with every contact."""
    time.sleep(5)  # past the start-up's own tail (first directory refreshes)
    result.idle_empty = idle_cores(target.pid, args.idle_seconds, result.idle_empty_split)
    result.pss_empty_kb = tree_pss_kb(target.pid)
    if args.redis_port:
        result.redis_empty_kb = redis_used_memory_kb(args.redis_port)
    log(
        f"{result.name}: idle, no contacts: {result.idle_empty:.3f} cores, "
        f"PSS {result.pss_empty_kb} KB"
    )
    cpu = process_tree_cpu_seconds(target.pid)
    scenario = SCENARIO if isinstance(target, Server) else PLAIN_SCENARIO
    ok, failed, seconds = register_all(
        args.sipp, target.port, users_csv, result.extensions, args.rate, tmp, scenario
    )
    result.register_cpu_s = process_tree_cpu_seconds(target.pid) - cpu
    result.workers = len(tree_pids(target.pid))  # every process of the tree, as measured
    result.registered, result.failed, result.register_seconds = ok, failed, seconds
    result.pss_registered_kb = tree_pss_kb(target.pid)
    log(f"{result.name}: {ok} registered, {failed} failed in {seconds:.1f}s")
    end = time.monotonic() + args.settle_seconds
    while time.monotonic() < end:
        result.settle.append(idle_cores(target.pid, min(5.0, end - time.monotonic())))
    log(f"{result.name}: after the burst: " + " ".join(f"{c:.2f}" for c in result.settle))
    result.idle_full = idle_cores(target.pid, args.idle_seconds, result.idle_full_split)
    result.pss_full_kb = tree_pss_kb(target.pid)
    if args.redis_port:
        result.redis_full_kb = redis_used_memory_kb(args.redis_port)
    log(
        f"{result.name}: idle, {ok} contacts: {result.idle_full:.3f} cores, "
        f"PSS {result.pss_full_kb} KB"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("-n", "--extensions", type=int, default=50_000)
    p.add_argument("--idle-seconds", type=float, default=60.0)
    p.add_argument("--settle-seconds", type=float, default=45.0)
    p.add_argument("--rate", type=int, default=1000, help="REGISTERs per second from SIPp")
    p.add_argument("--workers", type=int, default=2, help="sip.workers (0: one process)")
    p.add_argument("--python", default=sys.executable, help="interpreter running pbxwarden")
    p.add_argument("--sipp", default=shutil.which("sipp") or "sipp")
    p.add_argument(
        "--kamailio",
        nargs="?",
        const=shutil.which("kamailio") or "kamailio",
        help="measure Kamailio too, the same way (its binary; Debian: apt-get install kamailio)",
    )
    p.add_argument("--kamailio-shm", type=int, default=256, help="Kamailio -m (MB)")
    p.add_argument("--only-kamailio", action="store_true", help="skip pbxwarden")
    p.add_argument("--no-restart", action="store_true")
    p.add_argument(
        "--redis",
        nargs="?",
        const=shutil.which("redis-server") or "redis-server",
        help="run the node with cluster.redis_url (its own redis-server) and measure Redis too",
    )
    p.add_argument("--startups", type=int, default=0, help="start/stop cycles measured first")
    p.add_argument("--only-startup", action="store_true", help="stop after --startups")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--json", type=Path, help="also write the result here")
    args = p.parse_args()
    if not shutil.which(args.sipp):
        raise BenchError("SIPp not found (Debian: apt-get install sip-tester)")
    if args.kamailio and not shutil.which(args.kamailio):
        raise BenchError(f"Kamailio {args.kamailio!r} not found")
    if args.redis and not shutil.which(args.redis):
        raise BenchError(f"redis-server {args.redis!r} not found")
    args.redis_port = 0

    tmp = Path(tempfile.mkdtemp(prefix="pbxw-footprint-"))
    datadir = tmp / "data"
    cli = [args.python, "-m", "pbxwarden.cli.main", "--data-dir", str(datadir)]
    env = {  # bytecode cached, as an installed package has it
        **{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
        "PBXWARDEN_FIREWALL__ALLOW": f'["{LOOPBACK}/32"]',
        "PBXWARDEN_FIREWALL__TRUSTED_RATE_LIMIT": "100000000",
        "PBXWARDEN_LOG__LEVEL": "warning",
        "PBXWARDEN_SIP__WORKERS": str(args.workers),
        "PYTHONPYCACHEPREFIX": str(tmp / "pycache"),  # not in the source tree
    }
    server: Server | None = None
    kamailio: Kamailio | None = None
    redis: subprocess.Popen[bytes] | None = None
    results: list[Result] = []
    try:
        if args.redis:
            args.redis_port = free_port()
            redis = start_redis(args.redis, args.redis_port, tmp)
            env["PBXWARDEN_CLUSTER__REDIS_URL"] = f"redis://{LOOPBACK}:{args.redis_port}/0"
        subprocess.run([*cli, "init"], env=env, check=True, capture_output=True)
        warm = (  # every module start-up imports, the admin API's too
            "import pbxwarden.cli.main, pbxwarden.server, pbxwarden.registrar_workers,"
            " pbxwarden.api"
        )
        subprocess.run([args.python, "-c", warm], env=env, check=True)  # bytecode written
        users = make_users(args.extensions, 100_000)
        t = time.monotonic()
        add_extensions(datadir / "pbxwarden.db", users)
        log(f"{len(users):,} extensions written in {time.monotonic() - t:.1f}s")
        users_csv = tmp / "users.csv"
        users_csv.write_text(
            "SEQUENTIAL\n"
            + "".join(f"{n};[authentication username={n} password={pw}]\n" for n, pw in users)
        )
        core = (
            subprocess.run(
                [args.python, "-c", "from pbxwarden import _core; print(_core.mode())"],
                env=env,
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()
            or "unknown"
        )
        if not args.only_kamailio:
            port = free_port()
            server = Server([*cli, "serve", "--sip", f"{LOOPBACK}:{port}"], env, tmp, port)
            result = Result("pbxwarden", args.extensions, 1 + args.workers, core)
            results.append(result)
            for _ in range(args.startups):
                once = server.start()
                server.stop()
                result.startups.append(once)
                result.startup_main_cpu.append(once.main_cpu_s)
                log(f"start-up: ready in {once.ready_s:.2f}s (CPU {once.cpu_s:.2f}s)")
            result.startup = server.start()
            log(f"ready in {result.startup.ready_s:.2f}s (CPU {result.startup.cpu_s:.2f}s)")
            if not args.only_startup:
                measure(server, result, args, users_csv, tmp)
            if not args.no_restart and not args.only_startup:
                server.stop()
                result.stored_after_stop = stored_bindings(datadir / "pbxwarden.db")
                result.restart = server.start()
                log(f"restart: ready in {result.restart.ready_s:.2f}s")
                result.restored = restored_count(datadir)
            server.stop()
            server = None

        if args.kamailio:
            from register import write_kamailio_db  # the same subscriber table as there

            rundir = tmp / "kamailio"
            rundir.mkdir()
            write_kamailio_db(rundir / "db", users, DOMAIN)
            kamailio = Kamailio(args.kamailio, rundir, free_port(), args.kamailio_shm)
            version = subprocess.run(
                [args.kamailio, "-v"], capture_output=True, text=True, check=False
            ).stdout.splitlines()
            short = version[0].split()[2] if version and len(version[0].split()) > 2 else "?"
            peer = Result(f"Kamailio {short}", args.extensions, 1 + 2, "C (children=2)")
            results.append(peer)
            peer.startup = kamailio.start()
            log(f"kamailio answers in {peer.startup.options_s:.2f}s")
            measure(kamailio, peer, args, users_csv, tmp)
        print(markdown(results))
        if args.json:
            data = [
                {
                    **asdict(r),
                    "per_contact_kb": r.per_contact_kb,
                    "redis_per_contact_kb": r.redis_per_contact_kb,
                }
                for r in results
            ]
            args.json.write_text(json.dumps(data, indent=1) + "\n")
    finally:
        for target in (server, kamailio):
            if target is not None:
                target.stop()
        if redis is not None:
            redis.terminate()
            try:
                redis.wait(timeout=10)
            except subprocess.TimeoutExpired:
                redis.kill()
                redis.wait()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


def control(datadir: Path, request: dict[str, object], timeout: float = 30.0) -> dict[str, object]:
    """One question to the running server over its control socket (one JSON line each way)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(datadir / "control.sock"))
        sock.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    answer = json.loads(data)
    assert isinstance(answer, dict)
    return answer


def start_redis(binary: str, port: int, tmp: Path) -> subprocess.Popen[bytes]:
    """A redis-server without persistence on ``port``, answering PING."""
    workdir = tmp / "redis"
    workdir.mkdir()
    proc = subprocess.Popen(
        [
            *(binary, "--bind", LOOPBACK, "--port", str(port), "--save", "", "--appendonly"),
            *("no", "--dir", str(workdir), "--logfile", str(workdir / "redis.log")),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if redis_command(port, "PING").startswith("+PONG"):
                return proc
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise BenchError(f"redis-server did not start:\n{tail(workdir / 'redis.log')}")


def redis_command(port: int, command: str) -> str:
    """One inline command, its whole answer as text (enough for PING and INFO)."""
    with socket.create_connection((LOOPBACK, port), timeout=5) as sock:
        sock.sendall(command.encode() + b"\r\n")
        data = sock.recv(65536)
        if data.startswith(b"$"):  # bulk string: read until its announced length
            head, _, body = data.partition(b"\r\n")
            size = int(head[1:])
            while len(body) < size:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                body += chunk
            return body.decode(errors="replace")
        return data.decode(errors="replace")


def redis_used_memory_kb(port: int) -> int:
    info = redis_command(port, "INFO memory")
    for line in info.splitlines():
        if line.startswith("used_memory:"):
            return int(line.split(":", 1)[1]) // 1024
    raise BenchError("Redis INFO memory has no used_memory")


def restored_count(datadir: Path) -> int | None:
    """Bindings the restarted server holds (its ``stats``, over the control socket)."""
    try:
        return int(control(datadir, {"cmd": "stats"})["bindings"])  # type: ignore[call-overload]
    except (OSError, ValueError, KeyError) as exc:
        log(f"cannot ask the server for its bindings: {exc}")
        return None


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        log(f"error: {exc}")
        sys.exit(1)
