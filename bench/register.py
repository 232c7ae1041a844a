#!/usr/bin/env python3
"""Sustained REGISTER-with-digest-auth rate: pbxwarden versus Kamailio, driven by SIPp.

One measured unit ("registration") is one SIPp call of bench/sipp/register_auth.xml:

    REGISTER -> 401 (WWW-Authenticate) -> REGISTER + Authorization -> 200 OK

i.e. two REGISTER transactions, one digest verification and one location update.

For every target the script looks for the highest SIPp call rate that the target
sustains with zero failed registrations: each probe sends rate x --step-seconds
registrations (at least --min-calls) with no UDP retransmissions (-nr) and a receive
timeout, so a lost datagram is a failure and not a hidden retry.  A probe passes when
every registration got its 200 OK and the achieved rate (successes / wall time of the
SIPp run) is at least --min-achieved of the requested rate.  The first run of a target
doubles the rate from --start-rate until a probe fails and then bisects down to
--precision; later runs start near the previous result.  --runs repetitions per
target, the median is reported together with the pbxwarden/Kamailio ratio, as a
Markdown table ready for docs/benchmarks.md.

Everything listens on 127.0.0.1 only and every process started here is killed before
the script exits.  Standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import platform
import secrets
import shlex
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchlib import (
    BenchError,
    Deadline,
    children_cpu_seconds,
    fmt_ms,
    fmt_rate,
    median_or_none,
    parse_epoch,
    process_tree_cpu_seconds,
    read_final_stats,
    sip_options_ping,
)

BENCH_DIR = Path(__file__).resolve().parent
SCENARIO = BENCH_DIR / "sipp" / "register_auth.xml"
KAMAILIO_CFG = BENCH_DIR / "kamailio" / "kamailio.cfg"
LOOPBACK = "127.0.0.1"
SOCKET_BUFFER = 4 * 1024 * 1024  # SIPp -buff_size; same as Kamailio's maxbuffer
RESERVE_SECONDS = 12.0  # kept back from --max-seconds for the refusal check and teardown
PASSWORD_ALPHABET = string.ascii_letters + string.digits


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- time


# ---------------------------------------------------------------------- processes


class ProcessGroup:
    """Long-running servers, each started in its own session so the whole tree can go."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self,
        name: str,
        cmd: list[str],
        logfile: Path,
        cwd: Path,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        log(f"starting {name}: {shlex.join(cmd)}")
        with logfile.open("wb") as out:
            proc = subprocess.Popen(
                cmd,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append((name, proc))
        return proc

    def stop_all(self) -> None:
        for name, proc in reversed(self.procs):
            stop_process_group(name, proc)
        self.procs.clear()


def stop_process_group(name: str, proc: subprocess.Popen[bytes]) -> None:
    pgid = proc.pid  # start_new_session=True: the process leads its own group
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; make sure no worker of that group survived it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        break
    if proc.poll() is None:  # pragma: no cover - only if SIGKILL did not work
        log(f"warning: {name} (pid {proc.pid}) did not exit")
    else:
        log(f"stopped {name} (pid {proc.pid})")


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no output)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty)"


# ----------------------------------------------------------------------- network


def free_udp_port(taken: set[int]) -> int:
    """A port free for UDP and TCP on 127.0.0.1 (`pbxwarden serve --sip` binds both)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((LOOPBACK, 0))
            port = int(sock.getsockname()[1])
        if port in taken:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                continue
        taken.add(port)
        return port
    raise BenchError("could not find a free UDP port on 127.0.0.1")


def wait_until_answering(
    name: str, proc: subprocess.Popen[bytes], port: int, domain: str, logfile: Path, limit: float
) -> str:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise BenchError(f"{name} exited with code {proc.returncode}:\n{tail(logfile)}")
        status = sip_options_ping(port, domain)
        if status:
            log(f"{name} answers OPTIONS on {LOOPBACK}:{port}: {status}")
            return status
        time.sleep(0.2)
    raise BenchError(f"{name} did not answer SIP OPTIONS within {limit:.0f}s:\n{tail(logfile)}")


# ------------------------------------------------------------------------- users


def make_password(length: int = 24) -> str:
    """Random letters and digits, starting with a letter: SIPp reads an [authentication]
    parameter that starts with "0x" as hex, and one that starts with '"' as quoted."""
    while True:
        pw = secrets.choice(string.ascii_letters) + "".join(
            secrets.choice(PASSWORD_ALPHABET) for _ in range(length - 1)
        )
        if (
            any(c.islower() for c in pw)
            and any(c.isupper() for c in pw)
            and any(c.isdigit() for c in pw)
        ):
            return pw


def make_users(count: int, first: int) -> list[tuple[str, str]]:
    return [(str(first + i), make_password()) for i in range(count)]


def write_import_csv(path: Path, users: list[tuple[str, str]]) -> None:
    """pbxwarden `extension import` input: number,password per line, no header."""
    path.write_text("".join(f"{number},{password}\n" for number, password in users))


def write_sipp_csv(path: Path, users: list[tuple[str, str]]) -> None:
    """SIPp injection file; field1 carries the whole [authentication ...] keyword."""
    lines = ["SEQUENTIAL\n"]
    lines += [
        f"{number};[authentication username={number} password={password}]\n"
        for number, password in users
    ]
    path.write_text("".join(lines))


def write_kamailio_db(dbdir: Path, users: list[tuple[str, str]], realm: str) -> None:
    """db_text tables for auth_db: `version` and `subscriber` (plaintext + HA1)."""
    dbdir.mkdir(parents=True, exist_ok=True)
    (dbdir / "version").write_text(
        "id(int,auto) table_name(string) table_version(int) \n0:subscriber:7\n"
    )
    rows = [
        "id(int,auto) username(string) domain(string) password(string) ha1(string) ha1b(string) \n"
    ]
    db_realm = realm.replace(":", "\\:")  # ':' separates db_text columns
    for i, (number, password) in enumerate(users, start=1):
        ha1 = hashlib.md5(f"{number}:{realm}:{password}".encode()).hexdigest()
        ha1b = hashlib.md5(f"{number}@{realm}:{realm}:{password}".encode()).hexdigest()
        rows.append(f"{i}:{number}:{db_realm}:{password}:{ha1}:{ha1b}\n")
    (dbdir / "subscriber").write_text("".join(rows))


# -------------------------------------------------------------------------- SIPp


@dataclass
class Probe:
    target: str
    run: int
    rate: int
    calls: int
    returncode: int
    successful: int = 0
    failed: int = 0
    retransmissions: int = 0
    timeouts: int = 0
    unexpected: int = 0
    elapsed: float = 0.0
    achieved: float = 0.0
    call_length_ms: float = 0.0
    server_cpu: float = 0.0
    sipp_cpu: float = 0.0
    passed: bool = False
    note: str = ""

    def line(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        cpu = ""
        if self.successful:
            cpu = f", server CPU {1e6 * self.server_cpu / self.successful:.0f} us/reg"
        if self.elapsed:
            cpu += f", SIPp CPU {self.sipp_cpu / self.elapsed:.0%}"
        return (
            f"{self.target} run {self.run}: {self.rate}/s x {self.calls} -> {verdict} "
            f"ok={self.successful} failed={self.failed} (recv-timeout {self.timeouts}, "
            f"unexpected {self.unexpected}) achieved {self.achieved:.0f}/s in "
            f"{self.elapsed:.2f}s, mean reg {self.call_length_ms:.2f} ms{cpu}"
            + (f" [{self.note}]" if self.note else "")
        )


def parse_duration(text: str) -> float:
    """SIPp 'HH:MM:SS:uuuuuu' (or 'HH:MM:SS') to seconds."""
    parts = text.strip().split(":")
    if len(parts) < 3:
        return 0.0
    seconds = float(int(parts[0]) * 3600 + int(parts[1]) * 60 + int(parts[2]))
    if len(parts) > 3:
        seconds += int(parts[3]) / 1e6
    return float(seconds)


@dataclass
class Target:
    name: str
    label: str
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    logfile: Path | None = None
    version: str = ""
    sipp_port: int = 0  # one SIPp address per target: each user keeps a single binding
    results: list[Probe] = field(default_factory=list)  # best passing probe per run
    probes: list[Probe] = field(default_factory=list)
    refusal: str = "not checked"
    error: str = ""


class Sipp:
    def __init__(self, binary: str, args: argparse.Namespace, workdir: Path, ports: set[int]):
        self.binary = binary
        self.args = args
        self.workdir = workdir
        self.ports = ports
        self.counter = 0

    def command(
        self,
        target: Target,
        users_csv: Path,
        rate: int,
        calls: int,
        bound: float,
        tag: str,
        trace_errors: bool = False,
    ) -> tuple[list[str], Path]:
        self.counter += 1
        stat = self.workdir / f"sipp-{self.counter:03d}-{tag}.csv"
        limit = max(1000, rate * math.ceil(2 * self.args.recv_timeout_ms / 1000 + 1))
        cmd = [
            self.binary,
            f"{LOOPBACK}:{target.port}",
            "-sf",
            str(SCENARIO),
            "-inf",
            str(users_csv),
            "-key",
            "domain",
            self.args.domain,
            "-auth_uri",
            self.args.domain,
            "-i",
            LOOPBACK,
            "-bind_local",
            "-p",
            str(target.sipp_port or free_udp_port(self.ports)),
            "-t",
            "u1",
            "-nr",
            "-recv_timeout",
            str(self.args.recv_timeout_ms),
            "-default_behaviors",
            "abortunexp",
            "-r",
            str(rate),
            "-rp",
            "1000",
            "-m",
            str(calls),
            "-l",
            str(limit),
            "-buff_size",
            str(SOCKET_BUFFER),
            "-timeout",
            str(max(1, math.ceil(bound))),
            "-timeout_error",
            "-nostdin",
            "-trace_stat",
            "-stf",
            str(stat),
            "-fd",
            "1",
        ]
        if trace_errors:
            cmd += ["-trace_err", "-error_file", str(stat.with_suffix(".errors.log"))]
        return cmd, stat

    def run(
        self,
        target: Target,
        run: int,
        users_csv: Path,
        rate: int,
        calls: int,
        bound: float,
        tag: str,
        trace_errors: bool = False,
    ) -> Probe:
        assert target.proc is not None
        cmd, stat = self.command(target, users_csv, rate, calls, bound, tag, trace_errors)
        if self.args.verbose:
            log(shlex.join(cmd))
        cpu_before = process_tree_cpu_seconds(target.proc.pid)
        sipp_before = children_cpu_seconds()
        try:
            done = subprocess.run(
                cmd,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=bound + 15,
                check=False,
            )
            returncode = done.returncode
            stderr = done.stderr.decode(errors="replace").strip()
        except subprocess.TimeoutExpired:
            returncode, stderr = -9, "SIPp killed: exceeded its time bound"
        probe = Probe(target=target.name, run=run, rate=rate, calls=calls, returncode=returncode)
        probe.server_cpu = process_tree_cpu_seconds(target.proc.pid) - cpu_before
        probe.sipp_cpu = children_cpu_seconds() - sipp_before
        try:
            stats = read_final_stats(stat)
        except (OSError, BenchError) as exc:
            probe.note = f"no statistics (sipp exit {returncode}): {stderr[-300:] or exc}"
            return probe

        def count(name: str) -> int:
            return int(stats.get(name, "0") or 0)

        probe.successful = count("SuccessfulCall(C)")
        probe.failed = count("FailedCall(C)")
        probe.retransmissions = count("Retransmissions(C)")
        probe.timeouts = count("FailedTimeoutOnRecv(C)")
        probe.unexpected = count("FailedUnexpectedMessage(C)")
        probe.elapsed = parse_epoch(stats["CurrentTime"]) - parse_epoch(stats["StartTime"])
        probe.achieved = probe.successful / probe.elapsed if probe.elapsed > 0 else 0.0
        probe.call_length_ms = 1000 * parse_duration(stats.get("CallLength(C)", "0:0:0"))
        probe.passed = (
            returncode == 0
            and probe.failed == 0
            and probe.successful == calls
            and probe.achieved >= self.args.min_achieved * rate
        )
        if returncode not in (0, 1):
            probe.note = f"sipp exit {returncode}" + (f": {stderr[-300:]}" if stderr else "")
        elif not probe.passed and probe.failed == 0 and probe.successful == calls:
            probe.note = f"achieved < {self.args.min_achieved:.0%} of target"
        return probe


# ---------------------------------------------------------------------- targets


def tool_version(cmd: list[str], needle: str, require_ok: bool = False) -> str:
    try:
        out = subprocess.run(
            cmd, capture_output=True, timeout=20, check=False, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if require_ok and out.returncode != 0:
        return "unknown"
    text = (out.stdout + out.stderr).decode(errors="replace")
    for line in text.splitlines():
        if needle.lower() in line.lower():
            return line.strip().rstrip(".")
    return "unknown"


def start_kamailio(
    args: argparse.Namespace,
    procs: ProcessGroup,
    tmp: Path,
    users: list[tuple[str, str]],
    ports: set[int],
    binary: str,
) -> Target:
    rundir = tmp / "kamailio"
    rundir.mkdir()
    dbdir = rundir / "db"
    write_kamailio_db(dbdir, users, args.domain)
    port = free_udp_port(ports)
    logfile = rundir / "kamailio.log"
    cmd = [
        binary,
        "-f",
        str(KAMAILIO_CFG),
        "-DD",
        "-E",
        "-l",
        f"udp:{LOOPBACK}:{port}",
        "-Y",
        str(rundir),
        "-P",
        str(rundir / "kamailio.pid"),
        "-w",
        str(rundir),
        "-m",
        "64",
        "-M",
        "8",
        "-A",
        f'DBURL="text://{dbdir}"',
    ]
    if args.kamailio_ha1:
        cmd += ["-A", "WITH_HA1"]
    proc = procs.start("kamailio", cmd, logfile, rundir)
    version = tool_version([binary, "-v"], "version:").replace("version:", "").strip()
    short = version.split(" (")[0].removeprefix("kamailio ")
    target = Target("kamailio", f"Kamailio {short}", port, proc, logfile, version)
    wait_until_answering("kamailio", proc, port, args.domain, logfile, 15)
    return target


def run_cli(
    cmd: list[str], what: str, timeout: float, cwd: Path
) -> subprocess.CompletedProcess[bytes]:
    if timeout <= 0:
        raise BenchError(f"no time left for {what}")
    try:
        return subprocess.run(
            cmd,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{what} did not finish within {timeout:.0f}s") from exc
    except OSError as exc:
        raise BenchError(f"{what}: cannot run {cmd[0]}: {exc}") from exc


def cli_output(done: subprocess.CompletedProcess[bytes]) -> str:
    return (done.stdout + done.stderr).decode(errors="replace").strip()[-1500:]


def start_pbxwarden(
    args: argparse.Namespace,
    procs: ProcessGroup,
    tmp: Path,
    users: list[tuple[str, str]],
    ports: set[int],
    deadline: Deadline,
) -> Target:
    base = shlex.split(args.pbxwarden_cmd)
    if not shutil.which(base[0]):
        raise BenchError(
            f"pbxwarden CLI {base[0]!r} not found (use --pbxwarden-cmd, or --only kamailio)"
        )
    workdir = tmp / "pbxwarden"
    workdir.mkdir()
    datadir = workdir / "data"
    cli = [*base, "--data-dir", str(datadir)]

    def budget() -> float:  # leave at least 30 s for measuring
        return deadline.remaining() - RESERVE_SECONDS - 30

    started = time.monotonic()
    done = run_cli([*cli, "init"], "pbxwarden init", budget(), workdir)
    if done.returncode != 0:
        raise BenchError(f"pbxwarden init failed ({done.returncode}):\n{cli_output(done)}")

    import_csv = workdir / "extensions.csv"
    write_import_csv(import_csv, users)
    done = run_cli(
        [*cli, "extension", "import", str(import_csv)], "extension import", budget(), workdir
    )
    if done.returncode != 0:
        log(
            f"`extension import` failed ({done.returncode}), adding extensions one by one:\n"
            f"{cli_output(done)}"
        )
        for i, (number, password) in enumerate(users):
            done = run_cli(
                [*cli, "extension", "add", number, "--password", password],
                f"extension add {number}",
                budget(),
                workdir,
            )
            if done.returncode != 0:
                raise BenchError(f"extension add {number} failed:\n{cli_output(done)}")
            if i and i % 100 == 0:
                log(f"added {i}/{len(users)} extensions")
    log(
        f"pbxwarden data dir ready with {len(users)} extensions "
        f"in {time.monotonic() - started:.1f}s"
    )

    port = free_udp_port(ports)
    logfile = workdir / "serve.log"
    # SIPp sends thousands of requests a second from one address: allowlist it, or the
    # firewall's flood limit bans the load generator (Kamailio runs without pike here).
    env = {
        **os.environ,
        "PBXWARDEN_FIREWALL__ALLOW": f'["{LOOPBACK}/32"]',
        # and lift the cap on trusted sources, which would drop the excess
        "PBXWARDEN_FIREWALL__TRUSTED_RATE_LIMIT": "100000000",
        "PBXWARDEN_LOG__LEVEL": "warning",
        # registrar worker processes, as Kamailio has its UDP children (kamailio.cfg: 2)
        "PBXWARDEN_SIP__WORKERS": str(args.pbxwarden_workers),
    }
    proc = procs.start(
        "pbxwarden", [*cli, "serve", "--sip", f"{LOOPBACK}:{port}"], logfile, workdir, env
    )
    version = tool_version([*base, "--version"], "", require_ok=True)
    if not any(c.isdigit() for c in version):
        version = pbxwarden_package_version()
    target = Target("pbxwarden", f"pbxwarden {version}", port, proc, logfile, version)
    wait_until_answering("pbxwarden", proc, port, args.domain, logfile, 30)
    return target


def pbxwarden_package_version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover
        return "unknown"
    try:
        return version("pbxwarden")
    except PackageNotFoundError:
        return "unknown"


# ----------------------------------------------------------------------- search


class Searcher:
    def __init__(self, args: argparse.Namespace, sipp: Sipp, users_csv: Path, deadline: Deadline):
        self.args = args
        self.sipp = sipp
        self.users_csv = users_csv
        self.deadline = deadline

    def calls_for(self, rate: int) -> int:
        return max(int(self.args.min_calls), round(rate * float(self.args.step_seconds)))

    def probe_seconds(self, rate: int) -> float:
        """Time a probe is allowed to take (SIPp -timeout)."""
        return self.calls_for(rate) / rate + 2 * float(self.args.recv_timeout_ms) / 1000 + 3

    def expected_seconds(self, rate: int) -> float:
        return self.calls_for(rate) / rate + 1.0 + float(self.args.pause)

    def probe(self, target: Target, run: int, rate: int) -> Probe:
        bound = min(self.probe_seconds(rate), self.deadline.remaining() - RESERVE_SECONDS)
        result = self.sipp.run(
            target,
            run,
            self.users_csv,
            rate,
            self.calls_for(rate),
            bound,
            f"{target.name}-r{run}-{rate}",
            trace_errors=self.args.trace_errors,
        )
        target.probes.append(result)
        log(result.line())
        if target.proc is None or target.proc.poll() is not None:
            code = target.proc.returncode if target.proc else None
            server_log = tail(target.logfile) if target.logfile else ""
            raise BenchError(f"{target.name} died (exit {code}):\n{server_log}")
        time.sleep(self.args.pause)
        return result

    def fixed(self, target: Target, run: int, rate: int) -> Probe | None:
        if self.deadline.remaining() - RESERVE_SECONDS < self.expected_seconds(rate):
            return None
        return self.probe(target, run, rate)

    def search(
        self, target: Target, run: int, start: int, growth: float, until: float
    ) -> tuple[Probe | None, bool]:
        """Highest passing rate.  Returns (best passing probe, converged)."""
        args = self.args
        best: Probe | None = None
        fail_rate: int | None = None
        rate = max(args.min_rate, min(start, args.max_rate))

        def time_for(r: int) -> bool:
            now = time.monotonic()
            hard = self.deadline.end - RESERVE_SECONDS
            if best is None:  # no result yet: may use time up to the global reserve
                return now + self.expected_seconds(r) <= hard
            return now + self.expected_seconds(r) <= min(until, hard)

        # Bracket: climb while passing, descend while failing.
        while True:
            if not time_for(rate):
                return best, False
            result = self.probe(target, run, rate)
            if result.passed:
                best = result
                if fail_rate is not None or rate >= args.max_rate:
                    break
                rate = min(args.max_rate, max(rate + 1, round(rate * growth)))
            else:
                fail_rate = rate
                if best is not None:
                    break
                if rate <= args.min_rate:
                    return None, True
                rate = max(args.min_rate, min(rate - 1, round(rate / growth)))

        if fail_rate is None:  # reached --max-rate without a failure
            return best, True
        assert best is not None  # the loop above only breaks with a passing probe

        # Bisect (geometric mean) until the bracket is narrow enough.
        while fail_rate / best.rate > 1 + args.precision:
            mid = round(math.sqrt(best.rate * fail_rate))
            if mid <= best.rate or mid >= fail_rate:
                break
            if not time_for(mid):
                return best, False
            result = self.probe(target, run, mid)
            if result.passed:
                best = result
            else:
                fail_rate = mid
        return best, True


def refusal_check(
    sipp: Sipp, target: Target, users: list[tuple[str, str]], tmp: Path, deadline: Deadline
) -> str:
    """Wrong password and unknown user must both be refused (it really authenticates)."""
    if deadline.remaining() < 8:
        return "not checked (out of time)"
    number, password = users[0]
    wrong = ("Y" if password[0] == "X" else "X") + password[1:]
    unknown = str(int(users[-1][0]) + 1000)
    bad_csv = tmp / "wrong-credentials.csv"
    write_sipp_csv(bad_csv, [(number, wrong), (unknown, make_password())])
    result = sipp.run(
        target,
        0,
        bad_csv,
        10,
        2,
        min(2 * sipp.args.recv_timeout_ms / 1000 + 4, deadline.remaining() - 2),
        f"{target.name}-refusal",
        trace_errors=True,
    )
    if result.successful == 0 and result.failed == 2:
        return "yes"
    return (
        f"NO: {result.successful} of 2 registrations with bad credentials succeeded"
        if result.successful
        else f"inconclusive ({result.line()})"
    )


def smoke_test(sipp: Sipp, target: Target, users_csv: Path, deadline: Deadline) -> None:
    """A handful of registrations at a low rate, with SIPp's error trace kept."""
    bound = min(2 * sipp.args.recv_timeout_ms / 1000 + 6, deadline.remaining() - RESERVE_SECONDS)
    if bound <= 1:
        raise BenchError("out of time before the smoke test")
    result = sipp.run(target, 0, users_csv, 10, 5, bound, f"{target.name}-smoke", trace_errors=True)
    if result.successful == 5 and result.failed == 0 and result.returncode == 0:
        log(
            f"{target.name}: smoke test passed (5 registrations, "
            f"mean {result.call_length_ms:.2f} ms)"
        )
        return
    errors = sorted(sipp.workdir.glob(f"*{target.name}-smoke*.errors.log"))
    detail = tail(errors[-1], 40) if errors else "(no SIPp error log)"
    server_log = tail(target.logfile) if target.logfile else "(none)"
    hint = ""
    if "must use MD5" in detail + result.note:
        hint = (
            "\nHint: this SIPp computes only MD5/AKAv1-MD5 digests, and it reads the"
            " algorithm, realm and nonce from the FIRST WWW-Authenticate header (it joins all"
            " of them with ', ' and takes the first match).  A first challenge with"
            " algorithm=SHA-256 aborts SIPp.  List MD5 first (or only) for this benchmark, or"
            " pass --sipp with SIPp >= 3.7.3 built with OpenSSL (SHA-256 support)."
        )
    raise BenchError(
        f"{target.name}: smoke test failed: {result.line()}\n"
        f"SIPp error log:\n{detail}\n{target.name} log:\n{server_log}{hint}"
    )


# ----------------------------------------------------------------------- report


def cpu_busy_fraction(sample: float = 1.0) -> float:
    def read() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        return sum(values), idle

    total0, idle0 = read()
    time.sleep(sample)
    total1, idle1 = read()
    total = total1 - total0
    return 1 - (idle1 - idle0) / total if total else 0.0


def host_description() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} CPUs ({model}), Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def render_markdown(
    targets: list[Target],
    args: argparse.Namespace,
    argv: list[str],
    versions: dict[str, str],
    busy_before: float,
    elapsed: float,
) -> str:
    lines = [
        "### REGISTER with digest authentication: highest sustained rate, zero failures",
        "",
        "| Target | Median registrations/s | Runs (achieved/s) | Requested rate (median) "
        "| Mean time per registration | Server CPU per registration | SIPp CPU "
        "| Rejects bad credentials |",
        "|---|---:|---|---:|---:|---:|---:|---|",
    ]
    medians: dict[str, float | None] = {}
    errors: list[str] = []
    for target in targets:
        achieved = [p.achieved for p in target.results]
        med = median_or_none(achieved)
        medians[target.name] = med
        runs = " / ".join(fmt_rate(v) for v in achieved) or "none"
        if target.error:
            runs += " (error, see notes)"
            errors.append(f"- {target.label} error: {target.error.splitlines()[0][:300]}")
        elif len(target.results) < args.runs:
            runs += f" ({len(target.results)} of {args.runs} runs)"
        requested = median_or_none([float(p.rate) for p in target.results])
        length = median_or_none([p.call_length_ms for p in target.results])
        cpu = median_or_none(
            [1e6 * p.server_cpu / p.successful for p in target.results if p.successful]
        )
        client = median_or_none([p.sipp_cpu / p.elapsed for p in target.results if p.elapsed])
        lines.append(
            f"| {target.label} | **{fmt_rate(med)}** | {runs} | {fmt_rate(requested)} | "
            f"{fmt_ms(length)} | {'n/a' if cpu is None else f'{cpu:.0f} µs'} | "
            f"{'n/a' if client is None else f'{client:.0%}'} | {target.refusal} |"
        )
    lines.append("")
    pbx, kam = medians.get("pbxwarden"), medians.get("kamailio")
    if pbx is not None and kam:
        lines.append(f"**Ratio pbxwarden / Kamailio: {pbx / kam:.2f}** (median sustained rates)")
        lines.append("")
    mode = (
        f"fixed rate {args.rate}/s"
        if args.rate
        else f"ramp from {args.start_rate}/s (x2 until a failure, then bisection to "
        f"{args.precision:.0%}; later runs start at 85% of the previous result)"
    )
    lines += [
        f"- One registration = REGISTER → 401 → REGISTER with `Authorization` (MD5, "
        f"`qop=auth`) → 200 OK, i.e. two REGISTER transactions; SIPp scenario "
        f"`bench/sipp/register_auth.xml`, {args.users} users with random 24-character "
        f"passwords injected sequentially, `Expires: 3600`.",
        f"- Sustained = every registration of a probe answered 200 OK: no retransmissions "
        f"(`-nr`), {args.recv_timeout_ms} ms receive timeout, and an achieved rate (successes / "
        f"SIPp wall time) of at least {args.min_achieved:.0%} of the requested rate. Each probe "
        f"lasts {args.step_seconds:g} s (at least {args.min_calls} registrations); {mode}; "
        f"{args.runs} runs per target, median reported.",
        "- Rejects bad credentials: after the measurements, one REGISTER with a wrong "
        "password and one for an unknown user must both end without a 200 OK.",
        "- Server CPU = user+system time of the server's whole process tree during the best "
        "passing probe, divided by its registrations. SIPp CPU = the load generator's CPU "
        "time during that probe over its duration (100% = one core; SIPp is single-threaded, "
        "near 100% the client, not the server, is the limit). "
        "Mean time per registration = SIPp call "
        "length (both round trips; SIPp measures in whole milliseconds).",
    ]
    if any(t.name == "kamailio" for t in targets):
        lines.append(
            "- Kamailio: `bench/kamailio/kamailio.cfg`: auth_db over db_text "
            + ("(HA1 column)" if args.kamailio_ha1 else "(plaintext password, HA1 computed)")
            + ', usrloc in memory (db_mode 0), registrar `save("location")`, 2 UDP workers, '
            "UDP receive buffer up to 4 MB, no DNS, log level ERR."
        )
    if any(t.name == "pbxwarden" for t in targets):
        lines.append(
            f"- pbxwarden: `sip.workers = {args.pbxwarden_workers}` "
            + (
                "(registrar worker processes reading REGISTERs from sockets of their own, "
                "steered by the kernel; the main process keeps everything else, the "
                "firewall's state, routing and write-back)."
                if args.pbxwarden_workers
                else "(everything in one process)."
            )
        )
    lines += [
        f"- All on {LOOPBACK} (UDP), SIPp and both servers on the same host: "
        f"{host_description()}. CPU busy before start: {busy_before:.0%}.",
        f"- Versions: `sipp -v`: {versions.get('sipp', '?')}; `kamailio -v`: "
        f"{versions.get('kamailio', 'n/a')}; pbxwarden: {versions.get('pbxwarden', 'n/a')}.",
        f"- Command: `{shlex.join(['python3', 'bench/register.py', *argv])}` "
        f"(finished in {elapsed:.0f} s).",
        *errors,
    ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--only",
        choices=["kamailio", "pbxwarden"],
        help="benchmark only this target; omit for both",
    )
    p.add_argument("--users", type=int, default=1000, help="number of users/extensions")
    p.add_argument("--first-extension", type=int, default=1000, help="first extension number")
    p.add_argument("--runs", type=int, default=3, help="measurements per target")
    p.add_argument("--max-seconds", type=float, default=300, help="hard bound on total time")
    p.add_argument("--rate", type=int, help="fixed-rate mode: one probe per run at this rate")
    p.add_argument("--start-rate", type=int, default=250, help="first rate of the ramp")
    p.add_argument("--min-rate", type=int, default=10, help="lowest rate tried")
    p.add_argument("--max-rate", type=int, default=50000, help="highest rate tried")
    p.add_argument(
        "--precision",
        type=float,
        default=0.05,
        help="stop bisecting when fail/pass rates are within this fraction",
    )
    p.add_argument("--step-seconds", type=float, default=3.0, help="duration of one probe")
    p.add_argument("--min-calls", type=int, default=200, help="minimum registrations per probe")
    p.add_argument(
        "--min-achieved",
        type=float,
        default=0.95,
        help="probe passes only if achieved rate >= this fraction of the target",
    )
    p.add_argument(
        "--recv-timeout-ms",
        type=int,
        default=2000,
        help="SIPp -recv_timeout: a reply not seen in time fails the registration",
    )
    p.add_argument("--pause", type=float, default=1.0, help="seconds of idle between probes")
    p.add_argument(
        "--domain",
        default=LOOPBACK,
        help="SIP domain in Request-URI/From/To (the realm the servers use)",
    )
    p.add_argument(
        "--pbxwarden-cmd",
        default="pbxwarden",
        help="pbxwarden CLI command (split like a shell would)",
    )
    p.add_argument("--sipp", default="sipp", help="SIPp binary")
    p.add_argument("--kamailio", default="kamailio", help="Kamailio binary")
    p.add_argument(
        "--pbxwarden-workers",
        type=int,
        default=2,
        help="pbxwarden's sip.workers (registrar processes; 0: one process, as before)",
    )
    p.add_argument(
        "--kamailio-ha1",
        action="store_true",
        help="Kamailio verifies against stored HA1 instead of plaintext passwords",
    )
    p.add_argument(
        "--no-refusal-check",
        action="store_true",
        help="skip the final wrong-password/unknown-user check",
    )
    p.add_argument("--json", type=Path, help="also write all probes and results as JSON here")
    p.add_argument("--keep-temp", action="store_true", help="keep the temporary directory")
    p.add_argument(
        "--trace-errors", action="store_true", help="keep SIPp's error log of every probe"
    )
    p.add_argument("--verbose", action="store_true", help="log every SIPp command line")
    args = p.parse_args(argv)
    if args.users < 1 or args.runs < 1 or args.min_rate < 1 or args.max_rate < args.min_rate:
        p.error("--users, --runs, --min-rate must be >= 1 and --max-rate >= --min-rate")
    return args


def which_or_fail(binary: str, package: str) -> str:
    found = shutil.which(binary)
    if not found:
        raise BenchError(f"{binary} not found: apt-get install -y {package}")
    return found


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    deadline = Deadline(args.max_seconds)

    def on_signal(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    # Also when started from a non-interactive shell, where SIGINT is inherited as ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGHUP, on_signal)

    wanted = [args.only] if args.only else ["kamailio", "pbxwarden"]
    tmp = Path(tempfile.mkdtemp(prefix="pbxwarden-bench-"))
    procs = ProcessGroup()
    targets: list[Target] = []
    failed = False
    try:
        sipp_bin = which_or_fail(args.sipp, "sip-tester")
        versions = {"sipp": tool_version([sipp_bin, "-v"], "SIPp v")}
        kam_bin = which_or_fail(args.kamailio, "kamailio") if "kamailio" in wanted else ""
        busy = cpu_busy_fraction()
        if busy > 0.10:
            log(
                f"warning: the machine is {busy:.0%} busy before the benchmark starts; "
                "results will be lower and noisier than on an idle host"
            )
        log(f"workdir {tmp}; {host_description()}")

        users = make_users(args.users, args.first_extension)
        users_csv = tmp / "sipp-users.csv"
        write_sipp_csv(users_csv, users)
        ports: set[int] = set()
        sipp = Sipp(sipp_bin, args, tmp, ports)

        for name in wanted:
            try:
                if name == "kamailio":
                    target = start_kamailio(args, procs, tmp, users, ports, kam_bin)
                    versions["kamailio"] = target.version
                else:
                    target = start_pbxwarden(args, procs, tmp, users, ports, deadline)
                    versions["pbxwarden"] = target.version
                target.sipp_port = free_udp_port(ports)
                smoke_test(sipp, target, users_csv, deadline)
                targets.append(target)
            except BenchError as exc:
                failed = True
                log(f"ERROR: {exc}")
                label = "pbxwarden" if name == "pbxwarden" else "Kamailio"
                targets.append(Target(name, label, error=str(exc)))

        live = [t for t in targets if not t.error]
        searcher = Searcher(args, sipp, users_csv, deadline)
        previous: dict[str, int] = {}
        for run in range(1, args.runs + 1):
            order = live if run % 2 else list(reversed(live))
            for index, target in enumerate(order):
                if target.error:
                    continue

                # Share the time left among the searches left; a target's first search
                # (full ramp from --start-rate) gets twice the weight of a later one.
                def weight(name: str) -> int:
                    return 1 if args.rate or name in previous else 2

                pending = weight(target.name) + sum(
                    weight(t.name) for t in order[index + 1 :] if not t.error
                )
                pending += (args.runs - run) * sum(1 for t in live if not t.error)
                share = (deadline.remaining() - RESERVE_SECONDS) * weight(target.name) / pending
                try:
                    if args.rate:
                        result = searcher.fixed(target, run, args.rate)
                        converged = result is not None
                        if result is not None and not result.passed:
                            log(f"{target.name} run {run}: {args.rate}/s not sustained")
                            result = None
                    elif target.name in previous:
                        result, converged = searcher.search(
                            target,
                            run,
                            round(previous[target.name] * 0.85),
                            1.15,
                            time.monotonic() + share,
                        )
                    else:
                        result, converged = searcher.search(
                            target, run, args.start_rate, 2.0, time.monotonic() + share
                        )
                except BenchError as exc:
                    failed = True
                    target.error = str(exc)
                    log(f"ERROR: {exc}")
                    continue
                if result is not None:
                    target.results.append(result)
                    previous[target.name] = result.rate
                    log(
                        f"{target.name} run {run}: sustained {result.achieved:.0f}/s "
                        f"(requested {result.rate}/s)"
                        + ("" if converged else " [time budget ran out before convergence]")
                    )
                else:
                    log(
                        f"{target.name} run {run}: no passing rate found"
                        + ("" if converged else " (out of time)")
                    )

        if not args.no_refusal_check:
            for target in live:
                if target.error or target.proc is None or target.proc.poll() is not None:
                    continue
                target.refusal = refusal_check(sipp, target, users, tmp, deadline)
                log(f"{target.name}: refuses bad credentials: {target.refusal}")
                if target.refusal.startswith("NO"):
                    failed = True

        procs.stop_all()
        report = render_markdown(targets, args, argv, versions, busy, deadline.elapsed())
        print(report)
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "argv": argv,
                        "versions": versions,
                        "targets": [
                            {
                                "name": t.name,
                                "label": t.label,
                                "error": t.error,
                                "refusal": t.refusal,
                                "results": [asdict(p) for p in t.results],
                                "probes": [asdict(p) for p in t.probes],
                            }
                            for t in targets
                        ],
                    },
                    indent=2,
                )
            )
        if any(not t.results for t in targets):
            failed = True
        return 1 if failed else 0
    except BenchError as exc:
        failed = True
        log(f"ERROR: {exc}")
        return 2
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        procs.stop_all()
        if args.keep_temp or failed:
            log(f"kept temporary files in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
