"""Helpers shared by the benchmark scripts (register.py, calls.py).

Plain functions over SIPp's statistics files, /proc CPU accounting and a SIP
OPTIONS ping; stdlib only, so a benchmark runs on a bare Python.
"""

from __future__ import annotations

import csv
import os
import resource
import secrets
import socket
import statistics
import time
from pathlib import Path

LOOPBACK = "127.0.0.1"


class BenchError(RuntimeError):
    """A failure that stops one target (or the whole benchmark) with a clear message."""


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.start = time.monotonic()
        self.end = self.start + seconds

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start


def children_cpu_seconds() -> float:
    """CPU time of waited-for children: around one SIPp run, that SIPp's usage."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def fmt_ms(value: float | None) -> str:
    if value is None:
        return "n/a"
    return "< 1 ms" if value < 0.5 else f"{value:.0f} ms"


def fmt_rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def median_or_none(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def parse_epoch(text: str) -> float:
    """SIPp time stamps look like 'YYYY-MM-DD<TAB>HH:MM:SS.ffffff<TAB>epoch.ffffff'."""
    return float(text.split("\t")[-1])


def free_port(host: str = LOOPBACK) -> int:
    """A port free for both UDP and TCP on ``host`` (`serve --sip` binds both)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port
    raise BenchError(f"no free port on {host}")


def _proc_stats() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, utime + stime in clock ticks) of every process (Linux /proc)."""
    stats: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # comm may contain spaces: split after the closing parenthesis.
        fields = raw[raw.rindex(")") + 2 :].split()
        stats[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    return stats


def _tree(root: int, stats: dict[int, tuple[int, int]]) -> list[int]:
    tree = [root]
    seen = {root}
    changed = True
    while changed:
        changed = False
        for pid, (ppid, _) in stats.items():
            if ppid in seen and pid not in seen:
                seen.add(pid)
                tree.append(pid)
                changed = True
    return tree


def tree_pids(root: int) -> list[int]:
    """``root`` and every process descending from it."""
    return _tree(root, _proc_stats())


def process_tree_cpu_seconds(root_pid: int) -> float:
    """utime + stime of root_pid and all of its descendants."""
    stats = _proc_stats()
    hz = os.sysconf("SC_CLK_TCK")
    return sum(stats[pid][1] for pid in _tree(root_pid, stats) if pid in stats) / hz


def read_final_stats(path: Path) -> dict[str, str]:
    with path.open(newline="") as fh:
        rows = [row for row in csv.reader(fh, delimiter=";") if row]
    if len(rows) < 2:
        raise BenchError(f"SIPp statistics file {path} has no data row")
    return dict(zip(rows[0], rows[-1], strict=False))


def sip_options_ping(port: int, domain: str, timeout: float = 0.5) -> str | None:
    """Send one SIP OPTIONS over UDP; return the status line of any reply, else None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOOPBACK, 0))
        sock.settimeout(timeout)
        lport = sock.getsockname()[1]
        token = secrets.token_hex(8)
        request = (
            f"OPTIONS sip:{domain} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {LOOPBACK}:{lport};branch=z9hG4bK{token};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:bench-probe@{domain}>;tag={token}\r\n"
            f"To: <sip:{domain}>\r\n"
            f"Call-ID: {token}@{LOOPBACK}\r\n"
            "CSeq: 1 OPTIONS\r\n"
            "User-Agent: pbxwarden-bench\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        try:
            sock.sendto(request.encode(), (LOOPBACK, port))
            data, _ = sock.recvfrom(65535)
        except OSError:  # timeout, ICMP port unreachable, ...
            return None
    first = data.split(b"\r\n", 1)[0].decode(errors="replace")
    return first if first.startswith("SIP/2.0 ") else None
