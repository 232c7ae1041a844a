#!/usr/bin/env python3
"""Legitimate calls through pbxwarden while an attacker floods it, driven by SIPp.

Legitimate traffic: extension 1000 (SIPp, 127.0.0.1, tests/integration/scenarios/
call_uac.xml: INVITE, 401, ACK, INVITE + digest, 180/200, ACK, 1 s of talk, BYE) calls
extension 2000 (SIPp UAS, 127.0.0.1, registered first with register.xml) at --rate
calls/s, --calls calls per run.  A call succeeds when SIPp's caller completes it.

Scenarios (a fresh server and data directory for each run of each scenario):

* ``baseline``   no flood.
* ``banned``     SIPp on 127.0.0.66 sends OPTIONS (bench/sipp/flood_options.xml) as fast
                 as it can; it exceeds firewall.rate_limit within milliseconds and is
                 banned, so pbxwarden drops its datagrams after one dict lookup.
* ``allowed``    the same flood from 127.0.0.67, which is in firewall.allow: it is never
                 banned and every OPTIONS is parsed and answered (a trusted peer gone mad).
* ``nftables``   like ``banned`` with firewall.nftables=true: the kernel drops the banned
                 source before the process sees it (root and nft needed; else skipped).

TCP connection exhaustion (bench/tcp_exhaustion.py): a phone on 127.0.0.9 registers as
extension 1000 over a fresh TCP connection every --tcp-interval seconds (REGISTER, 401,
REGISTER with digest, 200) while a flood process opens idle connections
(--tcp-open-rate per second; 0: as fast as it can) and then, until the phone is done,
reopens those the server closes (at most --tcp-reopen-rate per second).  Unpaced, most
connections of a burst wait in the kernel's accept queue (or, past the listen backlog,
never complete their handshake on the server's side) instead of reaching the server.
A registration succeeds when its 200 arrives within 1 s of its connect.

* ``tcp-baseline`` no flood.
* ``tcp-one``      4,100 idle connections from 127.0.0.2.
* ``tcp-forty``    10,000 idle connections from 127.0.1.1-127.0.1.40 (250 each).

The flood starts one second before the caller and stops (SIPp -timeout) when the caller
should be done.  Server CPU% = utime+stime of the server process over the caller's wall
time; flood datagrams sent come from the flood SIPp's statistics, and the server's
``received``/``refused`` deltas from ``pbxwarden stats --json``.

firewall.rate_limit is raised to --rate-limit (default 300 per 2 s) for every scenario:
one call is 5 requests from 127.0.0.1 (INVITE, ACK, INVITE, ACK, BYE), so 10 calls/s is
100 requests per 2 s, exactly the default limit.  Everything runs on 127.0.0.0/8 and all
processes started here are killed before exit.  Standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchlib import BenchError, free_port

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
SCENARIOS = REPO / "tests" / "integration" / "scenarios"
FLOOD_XML = BENCH_DIR / "sipp" / "flood_options.xml"
LEGIT_IP = "127.0.0.1"
BANNED_IP = "127.0.0.66"
ALLOWED_IP = "127.0.0.67"
PASSWORDS = {"1000": "Caller-Passw0rd-bench", "2000": "Callee-Passw0rd-bench"}
TCP_PHONE_IP = "127.0.0.9"
TCP_FLOODS = {
    "tcp-baseline": ([], 0),
    "tcp-one": (["127.0.0.2"], 4_100),
    "tcp-forty": ([f"127.0.1.{i}" for i in range(1, 41)], 10_000),
}
TCP_AIM = 1.0  # seconds from connect to 200 OK
ALL_SCENARIOS = ("baseline", "banned", "allowed", "nftables", *TCP_FLOODS)


def log(message: str) -> None:
    print(f"[flood {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- helpers


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill a process started with start_new_session=True, and its whole group."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=5)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=2)


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (Linux /proc)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sipp_stats(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    with path.open(newline="") as fh:
        rows = [row for row in csv.reader(fh, delimiter=";") if row]
    return dict(zip(rows[0], rows[-1], strict=False)) if len(rows) >= 2 else {}


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no output)"


def version_of(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (out.stdout + out.stderr).strip()
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), "unknown")


# ----------------------------------------------------------------------- server


@dataclass
class Server:
    cmd: list[str]
    data: Path
    env: dict[str, str]
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    logfile: Path | None = None

    def cli(self, *args: str, timeout: float = 30) -> str:
        cmd = [*self.cmd, "--data-dir", str(self.data), *args]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=self.env)
        if out.returncode != 0:
            raise BenchError(f"{shlex.join(cmd)} failed: {out.stdout}{out.stderr}")
        return out.stdout

    def start(self, workdir: Path) -> None:
        self.cli("init")
        users = workdir / "users.csv"
        users.write_text("".join(f"{n},{p}\n" for n, p in PASSWORDS.items()))
        self.cli("extension", "import", str(users))
        self.port = free_port(LEGIT_IP)
        self.logfile = workdir / "server.log"
        cmd = [*self.cmd, "--data-dir", str(self.data), "serve", "--sip", f"{LEGIT_IP}:{self.port}"]
        with self.logfile.open("wb") as out:
            self.proc = subprocess.Popen(
                cmd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        end = time.monotonic() + 30
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise BenchError(f"server exited:\n{tail(self.logfile)}")
            if b"pbxwarden ready" in self.logfile.read_bytes():
                return
            time.sleep(0.1)
        raise BenchError(f"server not ready within 30 s:\n{tail(self.logfile)}")

    def pid(self) -> int:
        """The Python process that serves SIP (the CLI may exec or be a wrapper)."""
        assert self.proc is not None
        return self.proc.pid

    def stats(self) -> dict[str, object]:
        try:
            result: dict[str, object] = json.loads(self.cli("stats", "--json", timeout=20))
        except (BenchError, subprocess.TimeoutExpired, ValueError) as exc:
            log(f"warning: stats failed: {exc}")
            return {}
        if isinstance(result, list):  # one row
            result = result[0] if result else {}
        return result

    def bans(self) -> list[dict[str, object]]:
        try:
            out = self.cli("bans", "list", "--json").strip()
            rows = json.loads(out) if out.startswith("[") else []
        except (BenchError, subprocess.TimeoutExpired, ValueError):
            return []
        return rows if isinstance(rows, list) else []

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)
            self.proc = None


# ------------------------------------------------------------------------- runs


@dataclass
class Run:
    scenario: str
    run: int
    attempted: int = 0
    succeeded: int = 0
    failed: int = 0
    wall: float = 0.0
    server_cpu: float = 0.0  # fraction of one core
    flood_sent: int = 0
    flood_rate: float = 0.0
    received: int = 0
    refused: int = 0
    bans: list[str] = field(default_factory=list)
    note: str = ""
    latencies: list[float] = field(default_factory=list)  # TCP: seconds of each 200 OK
    connections: dict[str, int] = field(default_factory=dict)  # TCP: the server's counters
    flood: dict[str, float] = field(default_factory=dict)  # TCP: the flood's summary

    @property
    def success(self) -> float:
        return 100.0 * self.succeeded / self.attempted if self.attempted else 0.0


def sipp_base(target: str, scenario: Path, ip: str, port: int, stat: Path) -> list[str]:
    return [
        "sipp",
        target,
        "-sf",
        str(scenario),
        "-i",
        ip,
        "-p",
        str(port),
        "-t",
        "u1",
        "-key",
        "domain",
        LEGIT_IP,
        "-auth_uri",
        LEGIT_IP,
        "-nostdin",
        "-nd",
        "-trace_stat",
        "-stf",
        str(stat),
    ]


def user_file(path: Path, number: str) -> Path:
    password = PASSWORDS[number]
    path.write_text(
        f"SEQUENTIAL\n{number};[authentication username={number} password={password}]\n"
    )
    return path


def scenario_env(args: argparse.Namespace, name: str, run: int) -> dict[str, str]:
    env = {
        **os.environ,
        "PBXWARDEN_LOG__LEVEL": "warning",
        "PBXWARDEN_FIREWALL__RATE_LIMIT": str(args.rate_limit),
    }
    if name == "allowed":
        env["PBXWARDEN_FIREWALL__ALLOW"] = json.dumps([f"{ALLOWED_IP}/32"])
    if name == "nftables":
        env["PBXWARDEN_FIREWALL__NFTABLES"] = "true"
        env["PBXWARDEN_FIREWALL__NFTABLES_TABLE"] = f"pbxwflood{os.getpid()}r{run}"
    return env


def tcp_run(args: argparse.Namespace, name: str, run: int, work: Path, result: Run) -> None:
    """The phone registering over TCP while the flood holds its connections."""
    from tcp_exhaustion import register_tcp

    server = Server(shlex.split(args.pbxwarden_cmd), work / "data", scenario_env(args, name, run))
    flood: subprocess.Popen[bytes] | None = None
    try:
        server.start(work)
        dest = (LEGIT_IP, server.port)
        sources, total = TCP_FLOODS[name]
        seconds = args.tcp_registrations * args.tcp_interval + 1.0
        before = server.stats()
        if total:
            flood = subprocess.Popen(
                [
                    sys.executable,
                    str(BENCH_DIR / "tcp_exhaustion.py"),
                    LEGIT_IP,
                    str(server.port),
                    str(total),
                    ",".join(sources),
                    str(seconds),
                    str(args.tcp_reopen_rate),
                    str(args.tcp_open_rate),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        cpu0, t0 = cpu_seconds(server.pid()), time.monotonic()
        for k in range(args.tcp_registrations):  # the first ones while the flood opens
            time.sleep(max(0.0, t0 + 0.05 + k * args.tcp_interval - time.monotonic()))
            reg = register_tcp(dest, TCP_PHONE_IP, "1000", PASSWORDS["1000"])
            result.attempted += 1
            if reg.status == 200:
                result.latencies.append(reg.seconds)
            if reg.status == 200 and reg.seconds < TCP_AIM:
                result.succeeded += 1
            else:
                result.failed += 1
                if not result.note:
                    result.note = f"status {reg.status} after {reg.seconds:.3f} s {reg.error}"
        result.wall = time.monotonic() - t0
        result.server_cpu = (cpu_seconds(server.pid()) - cpu0) / result.wall
        if flood is not None:
            out, _ = flood.communicate(timeout=seconds + 60)
            lines = out.decode(errors="replace").strip().splitlines()
            try:
                result.flood = json.loads(lines[-1])
            except (ValueError, IndexError):
                raise BenchError("the flood failed:\n" + "\n".join(lines[-15:])) from None
            result.flood_sent = int(result.flood.get("opened", 0) + result.flood.get("reopened", 0))
        after = server.stats()
        result.connections = {
            k.removeprefix("connections_"): int(v) - int(before.get(k, 0))  # type: ignore[call-overload]
            for k, v in after.items()
            if k.startswith("connections_")
        }
        result.bans = [str(b.get("address")) for b in server.bans()]
    finally:
        if flood is not None:
            stop_group(flood)
        server.stop()


def one_run(args: argparse.Namespace, name: str, run: int, tmp: Path) -> Run:
    work = tmp / f"{name}-{run}"
    work.mkdir()
    result = Run(name, run)
    if name in TCP_FLOODS:
        tcp_run(args, name, run, work, result)
        log(
            f"{name} run {run}: {result.succeeded}/{result.attempted} registered within "
            f"{TCP_AIM:.0f} s, median {1000 * median(result.latencies):.1f} ms, max "
            f"{1000 * max(result.latencies, default=0):.1f} ms, server CPU "
            f"{result.server_cpu:.0%}, flood {result.flood}, connections "
            f"{result.connections}, bans {len(result.bans)}"
        )
        return result
    server = Server(shlex.split(args.pbxwarden_cmd), work / "data", scenario_env(args, name, run))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        server.start(work)
        target = f"{LEGIT_IP}:{server.port}"
        # Callee 2000: register from a fixed port, then answer calls there.
        callee_port = free_port(LEGIT_IP)
        reg_stat = work / "register.csv"
        reg = sipp_base(target, SCENARIOS / "register.xml", LEGIT_IP, callee_port, reg_stat)
        reg += ["-m", "1", "-inf", str(user_file(work / "callee.csv", "2000"))]
        reg += ["-timeout", "10s", "-timeout_error"]
        subprocess.run(reg, cwd=work, capture_output=True, timeout=30)
        if sipp_stats(reg_stat).get("SuccessfulCall(C)") != "1":
            raise BenchError(f"callee registration failed:\n{tail(server.logfile or reg_stat)}")
        duration = args.calls / args.rate
        uas_stat = work / "uas.csv"
        uas = sipp_base(target, SCENARIOS / "call_uas.xml", LEGIT_IP, callee_port, uas_stat)
        uas += ["-timeout", f"{math.ceil(duration + 40)}s"]
        with (work / "uas.log").open("wb") as out:
            procs.append(
                subprocess.Popen(
                    uas, cwd=work, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                )
            )

        before = server.stats()
        flood_stat = work / "flood.csv"
        flood_ip = ALLOWED_IP if name == "allowed" else BANNED_IP
        if name != "baseline":
            flood = sipp_base(target, FLOOD_XML, flood_ip, free_port(flood_ip), flood_stat)
            flood += ["-s", "flood", "-r", "100000", "-rp", "1000", "-l", "100000"]
            flood += ["-m", "1000000000", "-buff_size", str(4 * 1024 * 1024)]
            flood += ["-timeout", f"{math.ceil(duration + 3)}s"]
            with (work / "flood.log").open("wb") as out:
                procs.append(
                    subprocess.Popen(
                        flood,
                        cwd=work,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
            time.sleep(1.0)

        caller_stat = work / "caller.csv"
        caller = sipp_base(
            target, SCENARIOS / "call_uac.xml", LEGIT_IP, free_port(LEGIT_IP), caller_stat
        )
        caller += ["-s", "2000", "-inf", str(user_file(work / "caller-users.csv", "1000"))]
        caller += ["-r", str(args.rate), "-m", str(args.calls), "-l", str(args.calls)]
        caller += ["-recv_timeout", "5000", "-max_retrans", "5"]
        caller += ["-timeout", f"{math.ceil(duration + 30)}s", "-timeout_error"]
        caller += ["-trace_err", "-error_file", str(work / "caller-errors.log")]
        cpu0, t0 = cpu_seconds(server.pid()), time.monotonic()
        subprocess.run(caller, cwd=work, capture_output=True, timeout=duration + 45)
        result.wall = time.monotonic() - t0
        result.server_cpu = (cpu_seconds(server.pid()) - cpu0) / result.wall
        stats = sipp_stats(caller_stat)
        result.succeeded = int(stats.get("SuccessfulCall(C)", 0))
        result.failed = int(stats.get("FailedCall(C)", 0))
        result.attempted = int(stats.get("OutgoingCall(C)", 0)) or args.calls

        if name != "baseline":
            with contextlib.suppress(subprocess.TimeoutExpired):
                procs[-1].wait(timeout=duration + 10)
            fstats = sipp_stats(flood_stat)
            result.flood_sent = int(fstats.get("OutgoingCall(C)", 0))
            elapsed = fstats.get("ElapsedTime(C)", "0:0:0").split(":")
            secs = int(elapsed[0]) * 3600 + int(elapsed[1]) * 60 + int(elapsed[2])
            result.flood_rate = result.flood_sent / secs if secs else 0.0
        after = server.stats()
        for key in ("received", "refused"):
            if key in before and key in after:
                setattr(result, key, int(after[key]) - int(before[key]))  # type: ignore[call-overload]
        result.bans = [str(b.get("address")) for b in server.bans()]
        if result.failed:
            errors = work / "caller-errors.log"
            result.note = tail(errors, 6).replace("\n", " | ")[:300] if errors.exists() else ""
        if name == "nftables":
            logtext = (server.logfile or work).read_text(errors="replace")
            if "nftables" in logtext and "fail" in logtext:
                result.note = ("nftables offload failed: " + tail(server.logfile, 3))[:300]
    finally:
        for proc in reversed(procs):
            stop_group(proc)
        server.stop()
    log(
        f"{name} run {run}: {result.succeeded}/{result.attempted} ok "
        f"({result.success:.1f}%), server CPU {result.server_cpu:.0%}, flood sent "
        f"{result.flood_sent} ({result.flood_rate:.0f}/s), server received {result.received} "
        f"refused {result.refused}, bans {result.bans}"
    )
    return result


# ----------------------------------------------------------------------- report


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def render(runs: list[Run], argv: list[str], versions: dict[str, str], total: float) -> str:
    lines = [
        "# Legitimate calls under a SIP flood (bench/flood.py)",
        "",
        f"Command: `{shlex.join(['python3', 'bench/flood.py', *argv])}`",
        "",
        f"Host: {platform.platform()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}; {versions.get('sipp')}; pbxwarden "
        f"{versions.get('pbxwarden')}; total wall time {total:.0f} s.",
    ]
    calls = [r for r in runs if r.scenario not in TCP_FLOODS]
    lines += (
        []
        if not calls
        else [
            "",
            "Median over runs (per-run values below). Success = SIPp caller completed the call "
            "(INVITE/401/INVITE/200/ACK/BYE/200). CPU = server process utime+stime / caller wall "
            "time (100% = one core). Flood sent = OPTIONS the flood SIPp sent; received/refused = "
            "delta of `pbxwarden stats` counters over the run (flood and legit traffic).",
            "",
            "| scenario | runs | attempted | succeeded | failed | success % | server CPU % "
            "| flood sent | flood rate /s | server received | server refused |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
    )
    for name in ALL_SCENARIOS:
        mine = [r for r in calls if r.scenario == name]
        if not mine:
            continue
        lines.append(
            f"| {name} | {len(mine)} | {median([r.attempted for r in mine]):.0f} "
            f"| {median([r.succeeded for r in mine]):.0f} "
            f"| {median([r.failed for r in mine]):.0f} "
            f"| {median([r.success for r in mine]):.1f} "
            f"| {100 * median([r.server_cpu for r in mine]):.0f} "
            f"| {median([r.flood_sent for r in mine]):.0f} "
            f"| {median([r.flood_rate for r in mine]):.0f} "
            f"| {median([r.received for r in mine]):.0f} "
            f"| {median([r.refused for r in mine]):.0f} |"
        )
    lines += render_tcp([r for r in runs if r.scenario in TCP_FLOODS])
    lines += ["", "Per run:", ""]
    for r in runs:
        if r.scenario in TCP_FLOODS:
            lines.append(
                f"- {r.scenario} #{r.run}: {r.succeeded}/{r.attempted} within {TCP_AIM:.0f} s, "
                f"latency median {1000 * median(r.latencies):.1f} ms, max "
                f"{1000 * max(r.latencies, default=0):.1f} ms, CPU {100 * r.server_cpu:.0f}%, "
                f"flood {r.flood or '-'}, connections {r.connections or '-'}, "
                f"bans {len(r.bans)}" + (f"; first failure: {r.note}" if r.note else "")
            )
            continue
        lines.append(
            f"- {r.scenario} #{r.run}: {r.succeeded}/{r.attempted} ({r.success:.1f}%), "
            f"CPU {100 * r.server_cpu:.0f}%, wall {r.wall:.1f} s, flood sent {r.flood_sent} "
            f"({r.flood_rate:.0f}/s), received {r.received}, refused {r.refused}, "
            f"bans {r.bans or '-'}" + (f"; errors: {r.note}" if r.note else "")
        )
    return "\n".join(lines) + "\n"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def render_tcp(runs: list[Run]) -> list[str]:
    if not runs:
        return []
    lines = [
        "",
        f"TCP connection exhaustion: the phone's registrations over fresh TCP connections "
        f"(success = 200 OK within {TCP_AIM:.0f} s of connect; latencies of those answered 200, "
        "pooled over runs). "
        "Flood = idle connections opened (and reopened after the server closed them); "
        "refused/banned = server counters over the run.",
        "",
        "| scenario | runs | registrations | within 1 s % | median ms | p95 ms | max ms "
        "| server CPU % | flood connections | refused at accept | bans |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in TCP_FLOODS:
        mine = [r for r in runs if r.scenario == name]
        if not mine:
            continue
        pooled = [x for r in mine for x in r.latencies]
        attempted = sum(r.attempted for r in mine)
        refused = [
            sum(v for k, v in r.connections.items() if k.startswith("refused")) for r in mine
        ]
        lines.append(
            f"| {name} | {len(mine)} | {attempted} "
            f"| {100 * sum(r.succeeded for r in mine) / max(1, attempted):.1f} "
            f"| {1000 * median(pooled):.1f} | {1000 * percentile(pooled, 0.95):.1f} "
            f"| {1000 * max(pooled, default=0):.1f} "
            f"| {100 * median([r.server_cpu for r in mine]):.0f} "
            f"| {median([r.flood_sent for r in mine]):.0f} | {median(refused):.0f} "
            f"| {median([len(r.bans) for r in mine]):.0f} |"
        )
    return lines


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--calls", type=int, default=200, help="legitimate calls per run")
    p.add_argument("--rate", type=float, default=10.0, help="legitimate calls per second")
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--rate-limit", type=int, default=300, help="firewall.rate_limit (per 2 s)")
    p.add_argument("--scenarios", default=",".join(ALL_SCENARIOS))
    p.add_argument("--tcp-registrations", type=int, default=40, help="per TCP run")
    p.add_argument("--tcp-interval", type=float, default=0.1, help="seconds between them")
    p.add_argument("--tcp-reopen-rate", type=float, default=2000.0, help="flood reopens/s")
    p.add_argument("--tcp-open-rate", type=float, default=5000.0, help="flood opens/s (0: unpaced)")
    p.add_argument("--max-seconds", type=float, default=300.0)
    p.add_argument("--pbxwarden-cmd", default="pbxwarden")
    p.add_argument("--output", type=Path, help="also write the Markdown report here")
    p.add_argument("--keep-temp", action="store_true")
    args = p.parse_args(argv)
    wanted = [s for s in args.scenarios.split(",") if s]
    if unknown := set(wanted) - set(ALL_SCENARIOS):
        p.error(f"unknown scenarios {sorted(unknown)}")
    if "nftables" in wanted and (os.geteuid() != 0 or shutil.which("nft") is None):
        log("skipping nftables: needs root and nft")
        wanted.remove("nftables")
    if shutil.which("sipp") is None:
        log("sipp not found: apt-get install -y sip-tester")
        return 2

    def on_signal(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    start = time.monotonic()
    per_run = args.calls / args.rate + 20  # caller + setup + teardown, roughly
    versions = {
        "sipp": version_of(["sipp", "-v"]),
        "pbxwarden": version_of(
            [sys.executable, "-c", "import importlib.metadata as m; print(m.version('pbxwarden'))"]
        ),
    }
    tmp = Path(tempfile.mkdtemp(prefix="pbxwarden-flood-"))
    runs: list[Run] = []
    failed = False
    try:
        for run in range(1, args.runs + 1):
            for name in wanted:
                left = args.max_seconds - (time.monotonic() - start)
                if left < per_run:
                    log(f"skipping {name} run {run}: {left:.0f} s left of --max-seconds")
                    continue
                try:
                    runs.append(one_run(args, name, run, tmp))
                except (BenchError, subprocess.TimeoutExpired) as exc:
                    failed = True
                    log(f"ERROR {name} run {run}: {exc}")
        report = render(runs, argv, versions, time.monotonic() - start)
        print(report)
        if args.output:
            args.output.write_text(report)
        return 1 if failed or not runs else 0
    finally:
        if args.keep_temp or failed:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
