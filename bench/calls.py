#!/usr/bin/env python3
"""Sustained short calls through a B2BUA: pbxwarden versus Sippy B2BUA, driven by SIPp.

    SIPp caller (UAC)  ->  B2BUA on 127.0.0.1  ->  SIPp callee (UAS)

One measured unit ("call") is one complete, answered and hung-up call, end to end:

    caller leg:  INVITE -> (100) 180 200 -> ACK -> BYE -> 200
    callee leg:  INVITE -> 180 200 -> ACK -> BYE -> 200

with the BYE sent right after the ACK (--hold-ms, default 0).  A call counts only if the
caller's SIPp finished it (the 200 to its BYE, checked to be the BYE's and not a
retransmitted 200 to the INVITE) AND the callee's SIPp saw the whole call (INVITE, ACK,
BYE) through the B2BUA.

Targets (all by default, --only to pick some):

* pbxwarden: extension 1000 calls extension 2000.  The caller authenticates every
  INVITE with digest, and SIPp keeps nothing between calls, so every call starts with
  INVITE -> 401 -> ACK before the INVITE with credentials: that is the real cost of a
  call from a phone (bench/sipp/call_uac_auth.xml).  The callee registers from the port
  where its SIPp then answers.
* pbxwarden-trunk: the same server code, a call from an IP-authenticated trunk
  (127.0.0.1) to a DID that rings extension 2000: pbxwarden's only call path without a
  digest challenge (bench/sipp/call_uac_noauth.xml).  A separate data directory, because
  with a trunk on 127.0.0.1 every INVITE from 127.0.0.1 without credentials is inbound.
* sippy: Sippy B2BUA's `b2bua_simple` (PyPI package `sippy`), a plain B2BUA that sends
  every call to one fixed next hop (-n 127.0.0.1:UAS_PORT).  It does not authenticate,
  so it gets the challenge-free caller scenario.

The search is the one of bench/register.py: each probe sends rate x --step-seconds calls
(at least --min-calls) with no UDP retransmissions from SIPp (-nr) and a receive timeout.
A probe passes when every call succeeded on both SIPp sides, SIPp exited 0, and the
achieved rate (successes / SIPp wall time) is at least --min-achieved of the requested
rate.  The first run of a target doubles the rate from --start-rate until a probe fails,
then bisects to --precision; later runs start at 85 % of the previous result.  The
server is started fresh for every search and restarted after every failed probe (a
failed probe leaves retransmitting transactions behind that would hit the next probe's
callee).  --runs per target, medians reported with the pbxwarden/Sippy ratios, as
Markdown.  Failed probes are diagnosed from SIPp's error logs (both sides) and the
server log, so the overload signature of each target is in the report.

Everything listens on 127.0.0.1 only and every process started here is killed before
the script exits.  Standard library only.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import math
import os
import platform
import re
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import string
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
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
REPO_DIR = BENCH_DIR.parent
SIPP_DIR = BENCH_DIR / "sipp"
UAC_AUTH = SIPP_DIR / "call_uac_auth.xml"
UAC_NOAUTH = SIPP_DIR / "call_uac_noauth.xml"
UAS_SCENARIO = SIPP_DIR / "call_uas.xml"
REGISTER_SCENARIO = SIPP_DIR / "call_register.xml"
LOOPBACK = "127.0.0.1"
SOCKET_BUFFER = 4 * 1024 * 1024  # SIPp -buff_size
RESERVE_SECONDS = 10.0  # kept back from --max-seconds for teardown and the report
OVERLOAD_SECONDS = 16.0  # one overload probe: start, 3 s of calls, timeouts, restart
CALLER, CALLEE = "1000", "2000"
DID = "2025550100"  # US national number; pbxwarden stores it as +12025550100
TARGET_NAMES = ("pbxwarden", "pbxwarden-trunk", "sippy")
PASSWORD_ALPHABET = string.ascii_letters + string.digits


class PortTaken(BenchError):
    """The callee's port was taken by another program between two probes."""


def log(message: str) -> None:
    print(f"[calls {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- time


# ---------------------------------------------------------------------- processes


class ProcessGroup:
    """Processes started here, each in its own session so that its whole tree can go."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self,
        name: str,
        cmd: list[str],
        logfile: Path,
        cwd: Path,
        env: dict[str, str] | None = None,
        quiet: bool = False,
    ) -> subprocess.Popen[bytes]:
        if not quiet:
            log(f"starting {name}: {shlex.join(cmd)}")
        with logfile.open("ab") as out:
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

    def stop(self, proc: subprocess.Popen[bytes], quiet: bool = False) -> None:
        for entry in [e for e in self.procs if e[1] is proc]:
            self.procs.remove(entry)
            stop_process_group(entry[0], proc, quiet)

    def stop_all(self) -> None:
        for name, proc in reversed(self.procs):
            stop_process_group(name, proc)
        self.procs.clear()


def stop_process_group(name: str, proc: subprocess.Popen[bytes], quiet: bool = False) -> None:
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
    elif not quiet:
        log(f"stopped {name} (pid {proc.pid})")


def host_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole host since boot, all CPUs (/proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    hz = os.sysconf("SC_CLK_TCK")
    total = sum(values[:8])
    return (total - idle) / hz, total / hz


def cpu_busy_fraction(sample: float = 1.0) -> float:
    busy0, total0 = host_cpu_seconds()
    time.sleep(sample)
    busy1, total1 = host_cpu_seconds()
    return (busy1 - busy0) / (total1 - total0) if total1 > total0 else 0.0


def tail(path: Path | None, lines: int = 15) -> str:
    if path is None:
        return "(no log)"
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no output)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty)"


# ----------------------------------------------------------------------- network


def port_range() -> tuple[int, int]:
    """Ports below the kernel's ephemeral range: no socket bound to port 0 (by this host's
    other programs) takes one of them while a SIPp restarts on it between probes."""
    low = 32768
    with contextlib.suppress(OSError, ValueError, IndexError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    return (10000, low - 1) if low > 12000 else (low, 65535)


def free_udp_port(taken: set[int]) -> int:
    """A port free for UDP and TCP on 127.0.0.1 (`pbxwarden serve --sip` binds both)."""
    first, last = port_range()
    for _ in range(200):
        port = first + secrets.randbelow(last - first + 1)
        if port in taken:
            continue
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.bind((LOOPBACK, port))
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                    tcp.bind((LOOPBACK, port))
        except OSError:
            continue
        taken.add(port)
        return port
    raise BenchError("could not find a free UDP port on 127.0.0.1")


def udp_port_bound(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return True
    return False


def udp_drops(port: int) -> int:
    """Datagrams the kernel dropped on the UDP sockets bound to 127.0.0.1:port."""
    local = f"0100007F:{port:04X}"
    drops = 0
    try:
        lines = Path("/proc/net/udp").read_text().splitlines()[1:]
    except OSError:
        return 0
    for line in lines:
        fields = line.split()
        if len(fields) >= 13 and fields[1] == local:
            drops += int(fields[-1])
    return drops


# ------------------------------------------------------------------------- users


def make_password(number: str, length: int = 24) -> str:
    """Random letters and digits, starting with a letter (SIPp reads a parameter that
    starts with "0x" as hex), with all three classes, never containing the number."""
    while True:
        pw = secrets.choice(string.ascii_letters) + "".join(
            secrets.choice(PASSWORD_ALPHABET) for _ in range(length - 1)
        )
        if (
            any(c.islower() for c in pw)
            and any(c.isupper() for c in pw)
            and any(c.isdigit() for c in pw)
            and number not in pw
        ):
            return pw


def write_sipp_csv(path: Path, number: str, password: str) -> None:
    """SIPp injection file; field1 carries the whole [authentication ...] keyword."""
    path.write_text(
        f"SEQUENTIAL\n{number};[authentication username={number} password={password}]\n"
    )


# ------------------------------------------------------------------ diagnostics


def scenario_steps(path: Path) -> list[str]:
    """What each SIPp message index of a scenario does, e.g. 'recv 200' or 'send BYE'."""
    steps: list[str] = []
    for element in ET.parse(path).getroot():
        if element.tag == "send":
            text = (element.text or "").strip()
            first = text.split(None, 2)
            what = first[1] if first and first[0] == "SIP/2.0" else (first[0] if first else "")
            steps.append(f"send {what}")
        elif element.tag == "recv":
            what = element.get("response") or element.get("request") or "?"
            steps.append(f"recv {what}" + (" (optional)" if element.get("optional") else ""))
        elif element.tag in ("pause", "nop", "sendCmd", "recvCmd"):
            steps.append(element.tag)
    return steps


EVENT_START = re.compile(r"\d{4}-\d\d-\d\d\t\d\d:\d\d:\d\d\.\d+\t\d+\.\d+: ")
STATE = r"while (pausing|sending[^,]*|expecting '[^']*')(?: \(index (\d+)\))?"


def start_line(message: str) -> str:
    """'SIP/2.0 200 OK' + CSeq method -> '200 OK (BYE)'; 'INVITE sip:...' -> 'INVITE'."""
    first = message.lstrip("'").split("\n", 1)[0].strip()
    cseq = re.search(r"CSeq:\s*\d+\s+([A-Z]+)", message)
    if first.startswith("SIP/2.0 "):
        return first[8:].strip() + (f" ({cseq.group(1)})" if cseq else "")
    return first.split(" ", 1)[0]


def classify_event(event: str, steps: list[str]) -> tuple[str, bool]:
    """A SIPp error-log event -> (normalised description, whether it failed the call)."""

    def step(index: str | None) -> str:
        if index is None or not index.isdigit() or int(index) >= len(steps):
            return ""
        i = int(index)
        if not steps[i].endswith(" (optional)"):
            return f" [{steps[i]}]"
        # Waiting at optional receives: SIPp takes any of them or the next mandatory one.
        names = []
        while i < len(steps) and steps[i].startswith("recv "):
            names.append(steps[i].removesuffix(" (optional)").removeprefix("recv "))
            if not steps[i].endswith(" (optional)"):
                break
            i += 1
        return f" [recv {'/'.join(names)}]"

    m = re.search(
        r"(Aborting|Continuing) call on unexpected message for Call-Id '[^']*': "
        + STATE
        + r", received '(.*)",
        event,
        re.S,
    )
    if m:
        verb = "aborted" if m.group(1) == "Aborting" else "ignored (no abortunexp)"
        state = m.group(2).replace("expecting", "waiting for")
        return f"{verb}: {start_line(m.group(4))} {state}{step(m.group(3))}", verb == "aborted"
    m = re.search(r"Aborting call on an unexpected (\w+) for call", event)
    if m:
        return f"aborted: unexpected {m.group(1)}", True
    m = re.search(r"receive timeout on message [^:]*:(\d+)", event)
    if m:
        return f"aborted: receive timeout{step(m.group(1))}", True
    m = re.search(r"Failed regexp match: looking in '(.*?)', with regexp '(.*?)'", event, re.S)
    if m:
        seen = re.sub(r"\d+", "N", m.group(1).strip())
        return f"aborted: check failed, {m.group(2)!r} not in {seen!r}", True
    m = re.search(r"Dead call \S+ \(([^)]*)\), received '(.*)", event, re.S)
    if m:
        return f"late: {start_line(m.group(2))} after the call ended ({m.group(1)})", False
    m = re.search(
        r"Discarding message which can't be mapped to a known SIPp call:\s*(.*)", event, re.S
    )
    if m:
        return f"out of call: {start_line(m.group(1))}", False
    text = re.sub(r"\s+", " ", event).strip()
    text = re.sub(r"'[^']*@[^']*'|\b[0-9a-f]{16,}\b", "X", text)
    return text[:160], "abort" in text.lower() or "fail" in text.lower()


def summarize_sipp_errors(path: Path, steps: list[str]) -> list[tuple[str, int, bool, str]]:
    """(description, count, fails the call, first raw line) for each kind of event."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    counts: collections.Counter[str] = collections.Counter()
    fatal: dict[str, bool] = {}
    example: dict[str, str] = {}
    for event in EVENT_START.split(text)[1:]:
        kind, fails = classify_event(event, steps)
        counts[kind] += 1
        fatal[kind] = fails
        example.setdefault(kind, re.sub(r"\s+", " ", event).strip()[:240])
    ordered = sorted(counts.items(), key=lambda kv: (not fatal[kv[0]], -kv[1]))
    return [(kind, n, fatal[kind], example[kind]) for kind, n in ordered]


def server_log_lines(path: Path | None, offset: int) -> list[str]:
    """New lines of a server log since offset, normalised and counted (top 5)."""
    if path is None:
        return []
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            text = fh.read(4_000_000).decode(errors="replace")
    except OSError:
        return []
    counts: collections.Counter[str] = collections.Counter()
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        line = re.sub(r"^\S*\d\d:\d\d:\d\d\S*\s*", "", line)  # time stamp
        line = re.sub(r"\b[0-9a-f]{12,}\b|\d+\.\d+\.\d+\.\d+:\d+", "X", line)
        counts[line[:200]] += 1
    return [f"{n}x {line}" for line, n in counts.most_common(5)]


# -------------------------------------------------------------------------- SIPp


@dataclass
class Probe:
    target: str
    run: int
    rate: int
    calls: int
    kind: str = "search"  # or "smoke", "overload"
    returncode: int = 0
    successful: int = 0
    failed: int = 0
    callee_successful: int = 0
    callee_failed: int = 0
    timeouts: int = 0
    unexpected: int = 0
    elapsed: float = 0.0
    achieved: float = 0.0
    call_length_ms: float = 0.0
    server_cpu: float = 0.0
    sipp_cpu: float = 0.0
    callee_cpu: float = 0.0
    host_busy: float = 0.0  # all CPUs of the host, seconds, during the caller's run
    drops: int = 0
    passed: bool = False
    note: str = ""
    caller_errors: list[tuple[str, int, bool, str]] = field(default_factory=list)
    callee_errors: list[tuple[str, int, bool, str]] = field(default_factory=list)
    server_log: list[str] = field(default_factory=list)

    def other_cpu(self) -> float:
        """Host CPU used by anything but this server and both SIPps, in cores."""
        if not self.elapsed:
            return 0.0
        own = self.server_cpu + self.sipp_cpu + self.callee_cpu
        return max(0.0, (self.host_busy - own) / self.elapsed)

    def line(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        cpu = ""
        if self.successful:
            cpu = f", server CPU {1e6 * self.server_cpu / self.successful:.0f} us/call"
        if self.elapsed:
            cpu += (
                f", SIPp CPU {self.sipp_cpu / self.elapsed:.0%}"
                f"/{self.callee_cpu / self.elapsed:.0%}"
                f", other load {self.other_cpu():.2f} CPUs"
            )
        return (
            f"{self.target} run {self.run}: {self.rate}/s x {self.calls} -> {verdict} "
            f"ok={self.successful} failed={self.failed} callee ok={self.callee_successful} "
            f"failed={self.callee_failed} achieved {self.achieved:.0f}/s in {self.elapsed:.2f}s, "
            f"mean call {self.call_length_ms:.0f} ms, socket drops {self.drops}{cpu}"
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
    return seconds


def stat_count(stats: dict[str, str], name: str) -> int:
    try:
        return int(stats.get(name, "0") or 0)
    except ValueError:
        return 0


@dataclass
class Target:
    name: str
    label: str
    scenario: Path
    dialed: str
    what: str  # one line: what one call is, for the report
    workdir: Path
    cmd: list[str] = field(default_factory=list)
    env: dict[str, str] | None = None
    port: int = 0
    uas_port: int = 0
    register: bool = False  # the callee registers from uas_port before calls
    proc: subprocess.Popen[bytes] | None = None
    logfile: Path | None = None
    starts: int = 0
    version: str = ""
    results: list[Probe] = field(default_factory=list)  # best passing probe per run
    probes: list[Probe] = field(default_factory=list)
    error: str = ""


class Sipp:
    def __init__(
        self,
        binary: str,
        args: argparse.Namespace,
        workdir: Path,
        ports: set[int],
        procs: ProcessGroup,
    ) -> None:
        self.binary = binary
        self.args = args
        self.workdir = workdir
        self.ports = ports
        self.procs = procs
        self.counter = 0
        self.caller_csv = workdir / "caller.csv"
        self.callee_csv = workdir / "callee.csv"
        self.steps = {path: scenario_steps(path) for path in (UAC_AUTH, UAC_NOAUTH, UAS_SCENARIO)}

    def files(self, tag: str) -> tuple[Path, Path]:
        self.counter += 1
        base = self.workdir / f"sipp-{self.counter:03d}-{tag}"
        return base.with_suffix(".stat.csv"), base.with_suffix(".errors.log")

    def register_callee(self, target: Target) -> None:
        """REGISTER extension 2000 (digest) from the port where its SIPp will answer."""
        stat, errors = self.files(f"{target.name}-register")
        cmd = [
            self.binary,
            f"{LOOPBACK}:{target.port}",
            "-sf",
            str(REGISTER_SCENARIO),
            "-inf",
            str(self.callee_csv),
            "-key",
            "domain",
            self.args.domain,
            "-auth_uri",
            self.args.domain,
            "-i",
            LOOPBACK,
            "-p",
            str(target.uas_port),
            "-t",
            "u1",
            "-m",
            "1",
            "-timeout",
            "10",
            "-timeout_error",
            "-nostdin",
            "-trace_stat",
            "-stf",
            str(stat),
            "-trace_err",
            "-error_file",
            str(errors),
        ]
        done = subprocess.run(cmd, cwd=self.workdir, capture_output=True, timeout=25, check=False)
        ok = 0
        with contextlib.suppress(OSError, BenchError):
            ok = stat_count(read_final_stats(stat), "SuccessfulCall(C)")
        if done.returncode != 0 or ok != 1:
            raise BenchError(
                f"{target.name}: could not register the callee {CALLEE} from port "
                f"{target.uas_port} (sipp exit {done.returncode}):\n{tail(errors, 30)}\n"
                f"server log:\n{tail(target.logfile)}"
            )

    def start_callee(
        self, target: Target, calls: int, bound: float, tag: str
    ) -> tuple[subprocess.Popen[bytes], Path, Path]:
        stat, errors = self.files(f"{tag}-callee")
        cmd = [
            self.binary,
            "-sf",
            str(UAS_SCENARIO),
            "-i",
            LOOPBACK,
            "-p",
            str(target.uas_port),
            "-t",
            "u1",
            "-m",
            str(calls),
            "-nr",
            "-recv_timeout",
            str(self.args.recv_timeout_ms),
            "-default_behaviors",
            "bye,pingreply",
            "-buff_size",
            str(SOCKET_BUFFER),
            "-timeout",
            str(max(1, math.ceil(bound + 3))),
            "-timeout_error",
            "-nostdin",
            "-trace_stat",
            "-stf",
            str(stat),
            "-fd",
            "1",
            "-trace_err",
            "-error_file",
            str(errors),
        ]
        if self.args.verbose:
            log(shlex.join(cmd))
        if udp_port_bound(target.uas_port):
            raise PortTaken(f"{LOOPBACK}:{target.uas_port} is in use")
        proc = self.procs.start(
            "sipp callee", cmd, stat.with_suffix(".out"), self.workdir, quiet=True
        )
        end = time.monotonic() + 5
        while not udp_port_bound(target.uas_port):
            if proc.poll() is not None or time.monotonic() > end:
                self.procs.stop(proc, quiet=True)
                if proc.returncode == 254:  # SIPp: fatal error binding a socket
                    raise PortTaken(f"{LOOPBACK}:{target.uas_port} is in use")
                raise BenchError(
                    f"the callee's SIPp did not listen on {LOOPBACK}:{target.uas_port} "
                    f"(exit {proc.returncode}):\n{tail(stat.with_suffix('.out'))}"
                )
            time.sleep(0.02)
        return proc, stat, errors

    def caller_command(
        self, target: Target, rate: int, calls: int, bound: float, stat: Path, errors: Path
    ) -> list[str]:
        limit = max(1000, rate * math.ceil(3 * self.args.recv_timeout_ms / 1000 + 1))
        return [
            self.binary,
            f"{LOOPBACK}:{target.port}",
            "-sf",
            str(target.scenario),
            "-inf",
            str(self.caller_csv),
            "-s",
            target.dialed,
            "-key",
            "domain",
            self.args.domain,
            "-auth_uri",
            self.args.domain,
            "-i",
            LOOPBACK,
            "-p",
            str(free_udp_port(self.ports)),  # a new port: nothing stale reaches it
            "-t",
            "u1",
            "-nr",
            "-recv_timeout",
            str(self.args.recv_timeout_ms),
            "-default_behaviors",
            "bye,pingreply",
            "-d",
            str(self.args.hold_ms),
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
            "-trace_err",
            "-error_file",
            str(errors),
        ]

    def run(
        self,
        target: Target,
        run: int,
        rate: int,
        calls: int,
        bound: float,
        tag: str,
        kind: str = "search",
    ) -> Probe:
        assert target.proc is not None
        probe = Probe(target=target.name, run=run, rate=rate, calls=calls, kind=kind)
        callee, callee_stat, callee_errors = self.start_callee(target, calls, bound, tag)
        stat, errors = self.files(f"{tag}-caller")
        cmd = self.caller_command(target, rate, calls, bound, stat, errors)
        if self.args.verbose:
            log(shlex.join(cmd))
        log_offset = target.logfile.stat().st_size if target.logfile else 0
        drops_before = udp_drops(target.port)
        cpu_before = process_tree_cpu_seconds(target.proc.pid)
        host_before = host_cpu_seconds()[0]
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
            probe.returncode = done.returncode
            stderr = done.stderr.decode(errors="replace").strip()
        except subprocess.TimeoutExpired:
            probe.returncode, stderr = -9, "SIPp killed: exceeded its time bound"
        probe.sipp_cpu = children_cpu_seconds() - sipp_before
        probe.host_busy = host_cpu_seconds()[0] - host_before
        probe.server_cpu = process_tree_cpu_seconds(target.proc.pid) - cpu_before
        probe.drops = udp_drops(target.port) - drops_before

        # The callee's SIPp ends by itself once it has seen every call; when the caller
        # is done, that is a matter of milliseconds.  Otherwise it missed some.
        callee_before = children_cpu_seconds()
        wait = self.args.recv_timeout_ms / 1000 + 1 if probe.returncode == 0 else 0.5
        with contextlib.suppress(subprocess.TimeoutExpired):
            callee.wait(timeout=wait)
        self.procs.stop(callee, quiet=True)  # kills it if it still waits for calls
        probe.callee_cpu = children_cpu_seconds() - callee_before

        with contextlib.suppress(OSError, BenchError):
            cstats = read_final_stats(callee_stat)
            probe.callee_successful = stat_count(cstats, "SuccessfulCall(C)")
            probe.callee_failed = stat_count(cstats, "FailedCall(C)")
        try:
            stats = read_final_stats(stat)
        except (OSError, BenchError) as exc:
            probe.note = f"no statistics (sipp exit {probe.returncode}): {stderr[-300:] or exc}"
            stats = {}
        if stats:
            probe.successful = stat_count(stats, "SuccessfulCall(C)")
            probe.failed = stat_count(stats, "FailedCall(C)")
            probe.timeouts = stat_count(stats, "FailedTimeoutOnRecv(C)")
            probe.unexpected = stat_count(stats, "FailedUnexpectedMessage(C)")
            probe.elapsed = parse_epoch(stats["CurrentTime"]) - parse_epoch(stats["StartTime"])
            probe.achieved = probe.successful / probe.elapsed if probe.elapsed > 0 else 0.0
            probe.call_length_ms = 1000 * parse_duration(stats.get("CallLength(C)", "0:0:0"))
        probe.passed = (
            probe.returncode == 0
            and probe.failed == 0
            and probe.successful == calls
            and probe.callee_successful == calls
            and probe.callee_failed == 0
            and probe.achieved >= self.args.min_achieved * rate
        )
        if probe.returncode not in (0, 1):
            probe.note = f"sipp exit {probe.returncode}" + (f": {stderr[-300:]}" if stderr else "")
        elif not probe.passed and probe.failed == 0 and probe.successful == calls:
            if probe.callee_successful != calls or probe.callee_failed:
                probe.note = "the callee did not see every call end to end"
            else:
                probe.note = f"achieved < {self.args.min_achieved:.0%} of target"
        probe.caller_errors = summarize_sipp_errors(errors, self.steps[target.scenario])
        probe.callee_errors = summarize_sipp_errors(callee_errors, self.steps[UAS_SCENARIO])
        probe.server_log = server_log_lines(target.logfile, log_offset)
        return probe


# ---------------------------------------------------------------------- targets


def tool_version(cmd: list[str], needle: str) -> str:
    try:
        out = subprocess.run(
            cmd, capture_output=True, timeout=20, check=False, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (out.stdout + out.stderr).decode(errors="replace")
    for line in text.splitlines():
        if needle.lower() in line.lower():
            return line.strip().rstrip(".")
    return "unknown"


def run_cli(
    cmd: list[str], what: str, timeout: float, cwd: Path, env: dict[str, str] | None = None
) -> str:
    if timeout <= 0:
        raise BenchError(f"no time left for {what}")
    try:
        done = subprocess.run(
            cmd,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{what} did not finish within {timeout:.0f}s") from exc
    except OSError as exc:
        raise BenchError(f"{what}: cannot run {cmd[0]}: {exc}") from exc
    output = (done.stdout + done.stderr).decode(errors="replace").strip()[-1500:]
    if done.returncode != 0:
        raise BenchError(f"{what} failed ({done.returncode}):\n{output}")
    return output


def pbxwarden_version() -> str:
    version = "unknown"
    with contextlib.suppress(Exception):
        from importlib.metadata import version as dist_version

        version = dist_version("pbxwarden")
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        git = ["git", "--no-optional-locks", "-C", str(REPO_DIR)]
        head = (
            subprocess.run(
                [*git, "rev-parse", "--short", "HEAD"], capture_output=True, timeout=10, check=True
            )
            .stdout.decode()
            .strip()
        )
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no", "--", "src"],
            capture_output=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        version += f" (commit {head}{', src/ modified' if dirty else ''})"
    return version


def setup_pbxwarden(
    args: argparse.Namespace,
    tmp: Path,
    name: str,
    passwords: dict[str, str],
    ports: set[int],
    deadline: Deadline,
    trunk: bool,
) -> Target:
    base = shlex.split(args.pbxwarden_cmd)
    if not shutil.which(base[0]):
        raise BenchError(f"pbxwarden CLI {base[0]!r} not found (use --pbxwarden-cmd)")
    workdir = tmp / name
    workdir.mkdir()
    datadir = workdir / "data"
    cli = [*base, "--data-dir", str(datadir)]
    budget = max(0.0, min(60.0, deadline.remaining() - RESERVE_SECONDS - 30))
    run_cli([*cli, "init"], f"{name}: pbxwarden init", budget, workdir)
    users = workdir / "extensions.csv"
    users.write_text("".join(f"{number},{pw}\n" for number, pw in passwords.items()))
    run_cli([*cli, "extension", "import", str(users)], f"{name}: extension import", budget, workdir)
    if trunk:
        run_cli(
            [*cli, "trunk", "add", "bench-carrier", "--host", LOOPBACK],
            f"{name}: trunk add",
            budget,
            workdir,
        )
        run_cli(
            [*cli, "did", "add", DID, "--extension", CALLEE], f"{name}: did add", budget, workdir
        )
        # the callee SIPp registers from the carrier's address (all on loopback): allowed
        # explicitly, as an admin would for phones behind an SBC at a trunk's address
        run_cli(
            [*cli, "extension", "trunk-access", CALLEE, "--allow"],
            f"{name}: extension trunk-access",
            budget,
            workdir,
        )
    port = free_udp_port(ports)
    # SIPp sends hundreds of requests a second from one address: allowlist it, or the
    # firewall's flood limit bans the load generator.
    env = {
        **os.environ,
        "PBXWARDEN_FIREWALL__ALLOW": f'["{LOOPBACK}/32"]',
        # and lift the cap on trusted sources, which would drop the excess
        "PBXWARDEN_FIREWALL__TRUSTED_RATE_LIMIT": "100000000",
        "PBXWARDEN_LOG__LEVEL": "warning",
    }
    if trunk:
        label = "pbxwarden, trunk → DID (no digest)"
        what = (
            f"INVITE from a trunk at {LOOPBACK} (IP-authenticated, no challenge) to DID "
            f"{DID}, which rings extension {CALLEE}; `call_uac_noauth.xml`"
        )
        scenario, dialed = UAC_NOAUTH, DID
    else:
        label = "pbxwarden, extension → extension (digest)"
        what = (
            f"extension {CALLER} calls {CALLEE}: INVITE → 401 → ACK → INVITE with "
            f"`Authorization` (MD5, qop=auth) → 100/180/200 → ACK → BYE → 200; "
            "`call_uac_auth.xml`"
        )
        scenario, dialed = UAC_AUTH, CALLEE
    return Target(
        name=name,
        label=label,
        scenario=scenario,
        dialed=dialed,
        what=what,
        workdir=workdir,
        cmd=[*cli, "serve", "--sip", f"{LOOPBACK}:{port}"],
        env=env,
        port=port,
        uas_port=free_udp_port(ports),
        register=True,
    )


def find_sippy(option: str | None) -> tuple[list[str], str]:
    """The b2bua_simple command and the Python interpreter that runs it."""
    script = (shutil.which(option) or option) if option else (shutil.which("b2bua_simple") or "")
    if script and Path(script).is_file():
        first = Path(script).read_bytes()[:200].split(b"\n", 1)[0].decode(errors="replace")
        python = first[2:].strip().split()[0] if first.startswith("#!") else sys.executable
        return [script], python
    if option:
        raise BenchError(f"--sippy {option}: no such file")
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(
            [sys.executable, "-c", "import sippy.b2bua_simple"],
            capture_output=True,
            timeout=20,
            check=True,
        )
        return [sys.executable, "-m", "sippy.b2bua_simple"], sys.executable
    raise BenchError(
        "Sippy B2BUA not found: `pip install sippy` (it pulls in flask, websockets, ...; a "
        "venv keeps them apart: python3 -m venv /opt/sippy-venv && /opt/sippy-venv/bin/pip "
        "install sippy) and pass --sippy /opt/sippy-venv/bin/b2bua_simple, or use --only"
    )


def setup_sippy(args: argparse.Namespace, tmp: Path, ports: set[int]) -> Target:
    base, python = find_sippy(args.sippy)
    workdir = tmp / "sippy"
    workdir.mkdir()
    port, uas_port = free_udp_port(ports), free_udp_port(ports)
    version = tool_version(
        [python, "-c", "from importlib.metadata import version; print('sippy', version('sippy'))"],
        "sippy",
    ).removeprefix("sippy ")
    # Sippy logs every SIP message at INFO; WARN keeps errors only (pbxwarden: warning).
    env = {**os.environ, "SIPLOG_LVL": "WARN", "SIPLOG_BEND": "stderr"}
    return Target(
        name="sippy",
        label=f"Sippy B2BUA {version} (b2bua_simple)",
        scenario=UAC_NOAUTH,
        dialed=CALLEE,
        what=(
            "INVITE (no authentication) → 100/180/200 → ACK → BYE → 200, every call sent to "
            "the fixed next hop; `call_uac_noauth.xml`"
        ),
        workdir=workdir,
        cmd=[*base, "-f", "-l", LOOPBACK, "-p", str(port), "-n", f"{LOOPBACK}:{uas_port}"],
        env=env,
        port=port,
        uas_port=uas_port,
        version=version,
    )


def move_callee(target: Target, port: int) -> None:
    target.uas_port = port
    if "-n" in target.cmd:  # Sippy: the fixed next hop is the callee
        target.cmd[target.cmd.index("-n") + 1] = f"{LOOPBACK}:{port}"


def start_server(target: Target, procs: ProcessGroup, sipp: Sipp, quiet: bool = False) -> None:
    target.starts += 1
    target.logfile = target.workdir / f"server-{target.starts:02d}.log"
    target.proc = procs.start(
        target.name, target.cmd, target.logfile, target.workdir, target.env, quiet=quiet
    )
    end = time.monotonic() + 30
    while True:
        if target.proc.poll() is not None:
            raise BenchError(
                f"{target.name} exited with code {target.proc.returncode}:\n{tail(target.logfile)}"
            )
        if sip_options_ping(target.port, sipp.args.domain):
            break
        if time.monotonic() > end:
            raise BenchError(
                f"{target.name} did not answer SIP OPTIONS within 30s:\n{tail(target.logfile)}"
            )
        time.sleep(0.1)
    if target.register:
        sipp.register_callee(target)


def stop_server(target: Target, procs: ProcessGroup, quiet: bool = False) -> None:
    if target.proc is not None:
        procs.stop(target.proc, quiet=quiet)
        target.proc = None


# ----------------------------------------------------------------------- search


class Searcher:
    def __init__(
        self, args: argparse.Namespace, sipp: Sipp, procs: ProcessGroup, deadline: Deadline
    ) -> None:
        self.args = args
        self.sipp = sipp
        self.procs = procs
        self.deadline = deadline

    def calls_for(self, rate: int) -> int:
        return max(int(self.args.min_calls), round(rate * float(self.args.step_seconds)))

    def probe_seconds(self, rate: int) -> float:
        """Time a probe is allowed to take (SIPp -timeout)."""
        steps = 3 * float(self.args.recv_timeout_ms) / 1000  # a call waits at most this
        return self.calls_for(rate) / rate + steps + self.args.hold_ms / 1000 + 3

    def expected_seconds(self, rate: int) -> float:
        return self.calls_for(rate) / rate + 1.5 + float(self.args.pause)

    def probe(self, target: Target, run: int, rate: int, kind: str = "search") -> Probe:
        bound = min(self.probe_seconds(rate), self.deadline.remaining() - RESERVE_SECONDS)
        tag = f"{target.name}-r{run}-{rate}"
        try:
            result = self.sipp.run(target, run, rate, self.calls_for(rate), bound, tag, kind)
        except PortTaken as exc:
            # Another program took the callee's port: move the callee, restart the server
            # (Sippy's next hop, pbxwarden's registration) and try once more.
            stop_server(target, self.procs, quiet=True)
            move_callee(target, free_udp_port(self.sipp.ports))
            log(f"{target.name}: {exc}; the callee moves to port {target.uas_port}")
            start_server(target, self.procs, self.sipp, quiet=True)
            result = self.sipp.run(target, run, rate, self.calls_for(rate), bound, tag, kind)
        target.probes.append(result)
        log(result.line())
        if target.proc is None or target.proc.poll() is not None:
            code = target.proc.returncode if target.proc else None
            raise BenchError(f"{target.name} died (exit {code}):\n{tail(target.logfile)}")
        if not result.passed and kind == "search":
            for side, errors in (
                ("caller", result.caller_errors),
                ("callee", result.callee_errors),
            ):
                for kind, count, _, _ in errors[:3]:
                    log(f"    {side} SIPp: {count} x {kind}")
            for line in result.server_log[:3]:
                log(f"    server log: {line}")
            # Leftover transactions would keep retransmitting into the next probe.
            stop_server(target, self.procs, quiet=True)
            start_server(target, self.procs, self.sipp, quiet=True)
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


def smoke_test(sipp: Sipp, target: Target) -> None:
    """Five calls at 5/s, both SIPp error logs kept on failure."""
    bound = 3 * sipp.args.recv_timeout_ms / 1000 + 6
    result = sipp.run(target, 0, 5, 5, bound, "smoke", kind="smoke")
    if result.passed or (result.successful == 5 and result.callee_successful == 5):
        log(f"{target.name}: smoke test passed (5 calls, mean {result.call_length_ms:.0f} ms)")
        return
    detail = "\n".join(
        f"{side}: {n} x {kind}\n    e.g. {example}"
        for side, errors in (("caller", result.caller_errors), ("callee", result.callee_errors))
        for kind, n, _, example in errors[:4]
    )
    raise BenchError(
        f"{target.name}: smoke test failed: {result.line()}\n{detail or '(no SIPp errors)'}\n"
        f"{target.name} log:\n{tail(target.logfile)}"
    )


# ----------------------------------------------------------------------- report


def host_description() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"{os.cpu_count()} CPUs ({model}), Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def event_lines(probes: list[Probe], limit: int = 6) -> list[str]:
    """The SIPp error-log events (both sides) and server log lines of some probes."""
    counts: dict[tuple[str, str], int] = collections.Counter()
    examples: dict[tuple[str, str], str] = {}
    fatal: dict[tuple[str, str], bool] = {}
    server: collections.Counter[str] = collections.Counter()
    for probe in probes:
        for side, errors in (("caller", probe.caller_errors), ("callee", probe.callee_errors)):
            for kind, n, fails, example in errors:
                counts[(side, kind)] += n
                examples.setdefault((side, kind), example)
                fatal[(side, kind)] = fails
        for line in probe.server_log:
            n, _, text = line.partition("x ")
            server[text] += int(n) if n.isdigit() else 1
    lines: list[str] = []
    ordered = sorted(counts.items(), key=lambda kv: (not fatal[kv[0]], -kv[1]))
    for (side, kind), n in ordered[:limit]:
        lines.append(f"  - {side} SIPp: {n} x {kind}")
        lines.append(f"    `{examples[(side, kind)][:200].replace('`', '')}`")
    for text, n in server.most_common(3):
        lines.append(f"  - server log: {n} x `{text[:160].replace('`', '')}`")
    if not any(fatal.values()) and all(p.failed == 0 for p in probes):
        lines.insert(
            0,
            "  - no call failed: every call completed, only more slowly than the requested "
            "rate (the server's CPU was the limit)",
        )
    return lines


def probe_summary(probe: Probe) -> str:
    cpu = ""
    if probe.successful:
        cpu = f", server CPU {1e6 * probe.server_cpu / probe.successful:,.0f} µs/call"
    return (
        f"{probe.successful} of {probe.calls} calls completed at the caller, "
        f"{probe.callee_successful} at the callee, {probe.achieved:,.0f}/s achieved, mean call "
        f"{probe.call_length_ms:,.0f} ms, {probe.drops} datagrams dropped by the server's "
        f"socket{cpu}" + (f", {probe.note}" if probe.note else "")
    )


def failure_section(target: Target) -> list[str]:
    """What went wrong in the failed probes of the searches (just above the capacity)."""
    failed = [p for p in target.probes if not p.passed and p.kind == "search"]
    if not failed:
        return []
    lowest = min(failed, key=lambda p: p.rate)
    rates = ", ".join(f"{r}/s" for r in sorted({p.rate for p in failed}))
    return [
        f"- **{target.label}**: {len(failed)} failed probes ({rates}). Lowest failing rate "
        f"{lowest.rate}/s: {probe_summary(lowest)}. Events in all failed probes:",
        *event_lines(failed),
    ]


def overload_section(target: Target, factor: float) -> list[str]:
    probes = [p for p in target.probes if p.kind == "overload"]
    if not probes:
        return []
    probe = probes[-1]
    return [
        f"- **{target.label}** at {probe.rate}/s ({factor:g} x its median sustained rate): "
        f"{probe_summary(probe)}.",
        *event_lines([probe]),
    ]


def render_markdown(
    targets: list[Target],
    args: argparse.Namespace,
    argv: list[str],
    versions: dict[str, str],
    busy_before: float,
    elapsed: float,
) -> str:
    lines = [
        "### Short calls through a B2BUA: highest sustained call rate, zero failed calls",
        "",
        "| Target | Median calls/s | Runs (achieved/s) | Requested rate (median) "
        "| Mean call length | Server CPU per call | SIPp CPU (caller/callee) "
        "| Other load on the host |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    medians: dict[str, float | None] = {}
    cpus: dict[str, float | None] = {}
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
        cpus[target.name] = cpu
        caller = median_or_none([p.sipp_cpu / p.elapsed for p in target.results if p.elapsed])
        callee = median_or_none([p.callee_cpu / p.elapsed for p in target.results if p.elapsed])
        other = median_or_none([p.other_cpu() for p in target.results if p.elapsed])
        lines.append(
            f"| {target.label} | **{fmt_rate(med)}** | {runs} | {fmt_rate(requested)} | "
            f"{fmt_ms(length)} | {'n/a' if cpu is None else f'{cpu:,.0f} µs'} | "
            + ("n/a" if caller is None or callee is None else f"{caller:.0%} / {callee:.0%}")
            + f" | {'n/a' if other is None else f'{other:.2f} CPUs'} |"
        )
    lines.append("")
    sippy = medians.get("sippy")
    sippy_cpu = cpus.get("sippy")
    for name, what in (
        ("pbxwarden", "extension calls with digest"),
        ("pbxwarden-trunk", "trunk → DID calls, no digest"),
    ):
        pbx, pbx_cpu = medians.get(name), cpus.get(name)
        if pbx is not None and sippy:
            text = f"**Ratio pbxwarden ({what}) / Sippy: {pbx / sippy:.2f}** (median calls/s"
            if pbx_cpu and sippy_cpu:
                text += f"; Sippy's CPU per call / pbxwarden's: {sippy_cpu / pbx_cpu:.2f}"
            lines.append(text + "). Aim: ≥ 1.5.")
            lines.append("")
    mode = (
        f"fixed rate {args.rate}/s"
        if args.rate
        else f"ramp from {args.start_rate}/s (x2 until a failure, then bisection to "
        f"{args.precision:.0%}; later runs start at 85% of the previous result)"
    )
    lines += [
        "- One call = SIPp caller → B2BUA → SIPp callee (`bench/sipp/call_uas.xml`: 180, 200 "
        "with SDP, ACK, BYE → 200), BYE "
        + (f"{args.hold_ms} ms after the ACK" if args.hold_ms else "right after the ACK")
        + ". A call counts only if the caller got the 200 to its BYE (checked by CSeq) and "
        "the callee's SIPp saw the same call through (INVITE, ACK, BYE).",
    ]
    lines += [f"- {t.label}: {t.what}." for t in targets]
    lines += [
        f"- Sustained = every call of a probe succeeded on both sides, no SIPp retransmissions "
        f"(`-nr`), {args.recv_timeout_ms} ms receive timeout, and an achieved rate (successes / "
        f"SIPp wall time) of at least {args.min_achieved:.0%} of the requested rate. Each probe "
        f"lasts {args.step_seconds:g} s (at least {args.min_calls} calls); {mode}; "
        f"{args.runs} runs per target, median reported. The server is started fresh for each "
        "search and restarted after a failed probe.",
        "- SIPp runs with `-default_behaviors bye,pingreply` (no `abortunexp`): a message "
        "that arrives out of order (Sippy sends the 180 and the 200 from different threads, "
        "so the 180 sometimes arrives after the 200) is ignored instead of failing the call. "
        "A missing or wrong message still fails it (receive timeout, or the CSeq check).",
        "- Server CPU = user+system time of the server's process tree during the best passing "
        "probe, divided by its calls. SIPp CPU = each SIPp's CPU time over the probe's duration "
        "(100% = one core). Other load = host CPU busy time during the probe minus the server "
        "and both SIPps, in CPUs: work of other programs on the same host.",
        "- Asymmetry: pbxwarden authenticates extension calls (every call from SIPp costs the "
        "401 round trip: 10 messages on the caller's leg instead of 7, one more transaction, "
        "a nonce and an MD5 digest check), runs its call policy (fraud guard) and writes the "
        "call record when the call starts and when it ends (SQLite). Sippy's `b2bua_simple` "
        "does no authentication, no policy and no accounting. pbxwarden has no challenge-free "
        "path for calls from an extension; its trunk → DID path (IP-authenticated carrier) is "
        "the closest like-for-like comparison.",
    ]
    if any(t.name == "sippy" for t in targets):
        sippy_target = next(t for t in targets if t.name == "sippy")
        lines.append(
            f"- Sippy: `{shlex.join(['SIPLOG_LVL=WARN', *sippy_target.cmd])}` "
            "(foreground, log level WARN; by default it logs every message). The UDP "
            "server of Sippy 2.5 uses 3 receiver and 3 sender threads on one socket."
        )
    lines += [
        f"- All on {LOOPBACK} (UDP), both SIPps and the server on the same host: "
        f"{host_description()}. CPU busy before start: {busy_before:.0%}.",
        f"- Versions: `sipp -v`: {versions.get('sipp', '?')}; pbxwarden: "
        f"{versions.get('pbxwarden', 'n/a')}; Sippy: {versions.get('sippy', 'n/a')}.",
        f"- Command: `{shlex.join(['python3', 'bench/calls.py', *argv])}` "
        f"(finished in {elapsed:.0f} s).",
        *errors,
    ]
    failures = [line for t in targets for line in failure_section(t)]
    if failures:
        lines += ["", "#### What failed just above the sustained rate", "", *failures]
    overload = [line for t in targets for line in overload_section(t, args.overload_factor)]
    if overload:
        lines += [
            "",
            f"#### Overload: one probe at {args.overload_factor:g} x the sustained rate",
            "",
            "After the measurements, each server gets one probe well beyond what it sustains, "
            "to show how it fails (not part of the results above).",
            "",
            *overload,
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
        action="append",
        choices=TARGET_NAMES,
        help="benchmark only this target (repeatable); omit for all",
    )
    p.add_argument("--runs", type=int, default=3, help="measurements per target")
    p.add_argument("--max-seconds", type=float, default=400, help="hard bound on total time")
    p.add_argument("--rate", type=int, help="fixed-rate mode: one probe per run at this rate")
    p.add_argument("--start-rate", type=int, default=100, help="first rate of the ramp")
    p.add_argument("--min-rate", type=int, default=5, help="lowest rate tried")
    p.add_argument("--max-rate", type=int, default=10000, help="highest rate tried")
    p.add_argument(
        "--precision",
        type=float,
        default=0.05,
        help="stop bisecting when fail/pass rates are within this fraction",
    )
    p.add_argument("--step-seconds", type=float, default=3.0, help="duration of one probe")
    p.add_argument("--min-calls", type=int, default=150, help="minimum calls per probe")
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
        help="SIPp -recv_timeout: a message not seen in time fails the call",
    )
    p.add_argument("--hold-ms", type=int, default=0, help="pause between ACK and BYE")
    p.add_argument("--pause", type=float, default=1.0, help="seconds of idle between probes")
    p.add_argument(
        "--overload-factor",
        type=float,
        default=2.0,
        help="after the runs, one probe per target at this multiple of its sustained rate, "
        "to report how it fails (0: none)",
    )
    p.add_argument("--domain", default=LOOPBACK, help="SIP domain in Request-URI/From/To")
    p.add_argument(
        "--pbxwarden-cmd",
        default="pbxwarden",
        help="pbxwarden CLI command (split like a shell would)",
    )
    p.add_argument(
        "--sippy",
        help="Sippy's b2bua_simple script (default: b2bua_simple on PATH, else "
        "python -m sippy.b2bua_simple if this Python has sippy)",
    )
    p.add_argument("--sipp", default="sipp", help="SIPp binary")
    p.add_argument("--json", type=Path, help="also write all probes and results as JSON here")
    p.add_argument("--output", type=Path, help="also write the Markdown report here")
    p.add_argument("--keep-temp", action="store_true", help="keep the temporary directory")
    p.add_argument("--verbose", action="store_true", help="log every SIPp command line")
    args = p.parse_args(argv)
    if args.runs < 1 or args.min_rate < 1 or args.max_rate < args.min_rate:
        p.error("--runs and --min-rate must be >= 1 and --max-rate >= --min-rate")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    deadline = Deadline(args.max_seconds)

    def on_signal(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    # Also when started from a non-interactive shell, where SIGINT is inherited as ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGHUP, on_signal)

    wanted = [n for n in TARGET_NAMES if not args.only or n in args.only]
    tmp = Path(tempfile.mkdtemp(prefix="pbxwarden-calls-"))
    procs = ProcessGroup()
    targets: list[Target] = []
    failed = False
    try:
        sipp_bin = shutil.which(args.sipp)
        if not sipp_bin:
            raise BenchError(f"{args.sipp} not found: apt-get install -y sip-tester")
        versions = {"sipp": tool_version([sipp_bin, "-v"], "SIPp v")}
        busy = cpu_busy_fraction()
        if busy > 0.10:
            log(
                f"warning: the machine is {busy:.0%} busy before the benchmark starts; "
                "results will be lower and noisier than on an idle host"
            )
        log(f"workdir {tmp}; {host_description()}")

        passwords = {CALLER: make_password(CALLER), CALLEE: make_password(CALLEE)}
        ports: set[int] = set()
        sipp = Sipp(sipp_bin, args, tmp, ports, procs)
        write_sipp_csv(sipp.caller_csv, CALLER, passwords[CALLER])
        write_sipp_csv(sipp.callee_csv, CALLEE, passwords[CALLEE])

        for name in wanted:
            target: Target | None = None
            try:
                if name == "sippy":
                    target = setup_sippy(args, tmp, ports)
                    versions["sippy"] = f"{target.version} (`{target.cmd[0]}`)"
                else:
                    target = setup_pbxwarden(
                        args, tmp, name, passwords, ports, deadline, name == "pbxwarden-trunk"
                    )
                    versions.setdefault("pbxwarden", pbxwarden_version())
                start_server(target, procs, sipp)
                smoke_test(sipp, target)
                stop_server(target, procs)
                targets.append(target)
            except BenchError as exc:
                failed = True
                log(f"ERROR: {exc}")
                if target is not None:
                    stop_server(target, procs)
                targets.append(
                    Target(name, name, UAC_NOAUTH, "", "", tmp, error=str(exc) or "error")
                )

        live = [t for t in targets if not t.error]
        searcher = Searcher(args, sipp, procs, deadline)
        overload_reserve = OVERLOAD_SECONDS * len(live) if args.overload_factor > 0 else 0.0
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
                left = deadline.remaining() - RESERVE_SECONDS - overload_reserve
                share = left * weight(target.name) / pending
                try:
                    start_server(target, procs, sipp)
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
                finally:
                    stop_server(target, procs)
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

        if args.overload_factor > 0:
            for target in live:
                if target.error or not target.results:
                    continue
                rate = round(
                    args.overload_factor * statistics.median(p.rate for p in target.results)
                )
                if deadline.remaining() - RESERVE_SECONDS < OVERLOAD_SECONDS:
                    log(f"{target.name}: no time left for the overload probe")
                    continue
                try:
                    start_server(target, procs, sipp)
                    searcher.probe(target, 0, rate, kind="overload")
                except BenchError as exc:
                    log(f"{target.name}: overload probe failed to run: {exc}")
                finally:
                    stop_server(target, procs)

        procs.stop_all()
        report = render_markdown(targets, args, argv, versions, busy, deadline.elapsed())
        print(report)
        if args.output:
            args.output.write_text(report)
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
                                "command": t.cmd,
                                "error": t.error,
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
