"""Test helpers: run the real pbxwarden server and real SIP peers (SIPp) on loopback."""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCENARIOS = Path(__file__).parent / "integration" / "scenarios"
# Every peer process a test starts in the background; tests/conftest.py stops what is
# left of them after each test, so a failing or timed-out test leaves nothing running.
STARTED: list[subprocess.Popen[bytes]] = []


def die_with_pytest() -> None:
    """Run in a child before it starts: it ends when pytest dies, however pytest dies (a
    crash in a native library, SIGKILL on a CI timeout leave no time for fixtures)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def track(proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
    STARTED.append(proc)
    return proc


SERVERS: list[PbxProcess] = []


def tracked() -> tuple[int, int]:
    return len(SERVERS), len(STARTED)


def stop_tracked(since: tuple[int, int] = (0, 0)) -> None:
    """Stop the servers and peers started after ``since`` (see :func:`tracked`): those of
    one test, not a module's shared server."""
    while len(SERVERS) > since[0]:
        SERVERS.pop().stop()
    while len(STARTED) > since[1]:
        proc = STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)


# Ports handed to servers come from a block of their own per pytest-xdist worker, below
# the kernel's ephemeral range (32768-60999): a port another worker probed, or one the
# kernel gives a client socket meanwhile, is never handed out here before the server
# that was meant to get it has bound it.
_PORT_BLOCK = 3000
_PORT_BASE = 20000
_given: set[tuple[str, int]] = set()


def _worker() -> int:
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(name[2:]) % 4 if name[2:].isdigit() else 0


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0, step: float = 0.1) -> bool:
    """Poll ``predicate`` until it holds (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on ``host`` (IPv4 or IPv6), from this worker's
    block, never handed out twice by one test process."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    low = _PORT_BASE + _worker() * _PORT_BLOCK
    start = random.randrange(_PORT_BLOCK)
    for step in range(_PORT_BLOCK):
        port = low + (start + step) % _PORT_BLOCK
        if (host, port) in _given:
            continue
        with (
            socket.socket(family, socket.SOCK_DGRAM) as udp,
            socket.socket(family, socket.SOCK_STREAM) as tcp,
        ):
            try:
                udp.bind((host, port))
                tcp.bind((host, port))
            except OSError:
                continue
        _given.add((host, port))
        return port
    raise RuntimeError("no free port")


def cli(
    data_dir: Path,
    *args: str,
    check: bool = True,
    env: dict[str, str] | None = None,
    input_text: str | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess, as a user would."""
    cmd = [sys.executable, "-m", "pbxwarden.cli.main", "--data-dir", str(data_dir), *args]
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        input=input_text,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@dataclass
class PbxProcess:
    """A pbxwarden server started with ``pbxwarden serve`` in a subprocess."""

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    env: dict[str, str] = field(default_factory=dict)

    def start(self, timeout: float = 20.0) -> None:
        self.log_path = self.data_dir / f"server-{int(time.time() * 1000)}.log"
        log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pbxwarden.cli.main",
                "--data-dir",
                str(self.data_dir),
                "serve",
                "--sip",
                f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}",
            ],
            stdout=subprocess.PIPE,
            stderr=log,
            env={**os.environ, "PBXWARDEN_LOG__LEVEL": "debug", **self.env},
            preexec_fn=die_with_pytest,
        )
        SERVERS.append(self)
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        os.set_blocking(fd, False)
        buf = b""
        while time.monotonic() < deadline:
            with contextlib.suppress(BlockingIOError):
                buf += os.read(fd, 4096)
            if b"pbxwarden ready" in buf:
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited early:\n{self.log()}")
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"server did not become ready:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path and self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        code = self.proc.returncode
        self.proc = None
        return code

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@contextlib.contextmanager
def running_pbx(
    data_dir: Path, extensions: dict[str, str], env: dict[str, str] | None = None
) -> Iterator[PbxProcess]:
    cli(data_dir, "init")
    if extensions:
        csv_path = data_dir / "extensions.csv"
        csv_path.write_text("".join(f"{n},{p}\n" for n, p in extensions.items()))
        cli(data_dir, "extension", "import", str(csv_path))
    pbx = PbxProcess(data_dir, env=env or {})
    pbx.start()
    try:
        yield pbx
    finally:
        pbx.stop()


@dataclass
class SippResult:
    returncode: int
    successful: int
    failed: int
    output: str


def sipp_available() -> bool:
    return shutil.which("sipp") is not None


def run_sipp(
    scenario: str,
    target: str,
    *,
    users: dict[str, str] | None = None,
    calls: int = 1,
    rate: float = 10,
    local_ip: str = "127.0.0.1",
    local_port: int | None = None,
    transport: str = "u1",
    extra: list[str] | None = None,
    timeout: float = 30,
    recv_timeout_ms: int = 5000,
    workdir: Path,
    domain: str | None = None,
    background: bool = False,
) -> Any:
    """Run SIPp as a UAC against ``target``; counts come from its statistics file.

    ``users`` maps extension to password; each call takes the next user in order.
    ``domain``: the SIP domain (a tenant's realm) in the URIs; the target's host else.
    """
    for old in ("stat.csv", "sipp-errors.log"):
        (workdir / old).unlink(missing_ok=True)
    scenario_path = scenario if Path(scenario).is_absolute() else str(SCENARIOS / scenario)
    domain = domain or target.rsplit(":", 1)[0]
    args = [
        "sipp",
        target,
        "-sf",
        scenario_path,
        "-m",
        str(calls),
        "-r",
        str(rate),
        "-i",
        local_ip,
        "-p",
        str(local_port or free_port(local_ip)),
        "-t",
        transport,
        "-key",
        "domain",
        domain,
        "-auth_uri",
        domain,
        "-nostdin",
        "-timeout",
        f"{int(timeout)}s",
        "-timeout_error",
        "-trace_stat",
        "-stf",
        str(workdir / "stat.csv"),
        "-trace_err",
        "-error_file",
        str(workdir / "sipp-errors.log"),
        "-recv_timeout",
        str(recv_timeout_ms),
        "-max_retrans",
        "3",
        "-nd",
    ]
    if users is not None:
        inf = workdir / "users.csv"
        inf.write_text(
            "SEQUENTIAL\n"
            + "".join(f"{u};[authentication username={u} password={p}]\n" for u, p in users.items())
        )
        args += ["-inf", str(inf)]
    args += extra or []
    if background:
        return track(
            subprocess.Popen(
                args,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd=workdir,
                preexec_fn=die_with_pytest,
            )
        )
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout + 15, cwd=workdir)
    return sipp_result(workdir, proc.returncode, proc.stdout[-4000:] + proc.stderr[-4000:])


def start_sipp_uac(scenario: str, target: str, **kwargs: Any) -> subprocess.Popen[bytes]:
    """:func:`run_sipp` in the background (a subscriber waiting for NOTIFYs while the
    test makes calls); give it a ``workdir`` of its own, then :func:`finish_sipp_uac`."""
    proc = run_sipp(scenario, target, background=True, **kwargs)
    assert isinstance(proc, subprocess.Popen)
    return proc


def finish_sipp_uac(
    proc: subprocess.Popen[bytes], workdir: Path, timeout: float = 30
) -> SippResult:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    return sipp_result(workdir, proc.returncode, "")


def sipp_result(workdir: Path, returncode: int, output: str) -> SippResult:
    ok, failed = _sipp_counts(workdir / "stat.csv")
    errors = workdir / "sipp-errors.log"
    if errors.exists():
        output += "\n--- sipp errors ---\n" + errors.read_text()[-4000:]
    return SippResult(returncode, ok, failed, output)


def _sipp_counts(stat_file: Path) -> tuple[int, int]:
    if not stat_file.exists():
        return 0, 0
    lines = [ln for ln in stat_file.read_text().splitlines() if ln.strip()]
    if len(lines) < 2:
        return 0, 0
    header = lines[0].split(";")
    last = lines[-1].split(";")
    row = dict(zip(header, last, strict=False))
    return int(row.get("SuccessfulCall(C)", 0)), int(row.get("FailedCall(C)", 0))


def options_request(dest: tuple[str, int], user_agent: str = "pbxwarden-tests") -> bytes:
    from pbxwarden.sip.message import generate_branch

    return (
        f"OPTIONS sip:{dest[0]}:{dest[1]} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:9;branch={generate_branch()};rport\r\n"
        "From: <sip:probe@127.0.0.1>;tag=1\r\nTo: <sip:probe@127.0.0.1>\r\n"
        f"Call-ID: {generate_branch()}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
        f"User-Agent: {user_agent}\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def udp_exchange(
    data: bytes, dest: tuple[str, int], timeout: float = 10.0, source_ip: str = "127.0.0.1"
) -> bytes | None:
    """Send one datagram, return the first answer (or None on timeout)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source_ip, 0))
        sock.settimeout(timeout)
        sock.sendto(data, dest)
        try:
            return sock.recvfrom(65535)[0]
        except TimeoutError:
            return None


STATUS_RE = re.compile(rb"^SIP/2\.0 (\d{3}) ")


def status_of(reply: bytes | None) -> int | None:
    if reply is None:
        return None
    m = STATUS_RE.match(reply)
    return int(m.group(1)) if m else None


class SipClient:
    """A minimal UDP user agent built on pbxwarden's own sans-I/O pieces.

    SIPp is the independent peer in the tests; this client covers what SIPp 3.6 cannot
    (SHA-256 digest) and lets tests look at individual responses.
    """

    def __init__(
        self, server: tuple[str, int], source_ip: str = "127.0.0.1", domain: str | None = None
    ) -> None:
        self.server = server
        self.domain = domain or server[0]
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((source_ip, 0))
        self.sock.settimeout(10)  # answers are expected; a loaded host may be slow
        self.local = self.sock.getsockname()
        self.call_id = f"test-{os.getpid()}-{time.monotonic_ns()}"
        self.cseq = 0

    def close(self) -> None:
        self.sock.close()

    def request(
        self,
        user: str,
        *,
        expires: int | None = 3600,
        contact: str | None = "",
        authorization: str | None = None,
        extra: tuple[str, ...] = (),
    ) -> bytes:
        from pbxwarden.sip.message import generate_branch

        self.cseq += 1
        host = self.domain
        lines = [
            f"REGISTER sip:{host} SIP/2.0",
            f"Via: SIP/2.0/UDP {self.local[0]}:{self.local[1]};branch={generate_branch()};rport",
            "Max-Forwards: 70",
            f"From: <sip:{user}@{host}>;tag=t{self.cseq}",
            f"To: <sip:{user}@{host}>",
            f"Call-ID: {self.call_id}",
            f"CSeq: {self.cseq} REGISTER",
        ]
        if contact is not None:
            lines.append(f"Contact: {contact or f'<sip:{user}@{self.local[0]}:{self.local[1]}>'}")
        if expires is not None:
            lines.append(f"Expires: {expires}")
        if authorization:
            lines.append(f"Authorization: {authorization}")
        lines += [*extra, "Content-Length: 0"]
        self.sock.sendto(("\r\n".join(lines) + "\r\n\r\n").encode(), self.server)
        while True:
            data = self.sock.recv(65535)
            if not data.startswith(b"SIP/2.0 100 "):
                return data

    def register(self, user: str, password: str, **kwargs: object) -> bytes:
        """Challenge-response: first REGISTER, then again with credentials for the challenge."""
        from pbxwarden.sip.digest import build_authorization, choose_challenge
        from pbxwarden.sip.message import parse_message

        first = parse_message(self.request(user, **kwargs))  # type: ignore[arg-type]
        if first.status != 401:  # type: ignore[union-attr]
            return first.to_bytes()
        challenge = choose_challenge(first.headers.get_all("WWW-Authenticate"))
        host, port = self.server
        auth = build_authorization(
            challenge,
            "REGISTER",
            f"sip:{host}:{port}",
            user,
            password,
            cnonce=os.urandom(8).hex(),
            nc=1,
        )
        return self.request(user, authorization=auth, **kwargs)  # type: ignore[arg-type]


def start_sipp_uas(
    scenario: str | Path,
    local_port: int,
    workdir: Path,
    *,
    calls: int = 1,
    local_ip: str = "127.0.0.1",
    timeout: float = 30,
    extra: list[str] | None = None,
    name: str = "uas",
) -> subprocess.Popen[bytes]:
    """A SIPp phone waiting for calls on ``local_ip:local_port`` (server mode).

    ``name`` keeps the statistics of several phones in one test apart."""
    path = scenario if isinstance(scenario, Path) else SCENARIOS / scenario
    args = [
        "sipp",
        "-sf",
        str(path),
        "-i",
        local_ip,
        "-p",
        str(local_port),
        "-m",
        str(calls),
        "-nostdin",
        "-nd",
        "-timeout",
        f"{int(timeout)}s",
        "-timeout_error",
        "-trace_err",
        "-error_file",
        str(workdir / f"{name}-errors.log"),
        "-trace_stat",
        "-stf",
        str(workdir / f"{name}-stat.csv"),
        *(extra or []),
    ]
    proc = track(
        subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=workdir,
            preexec_fn=die_with_pytest,
        )
    )
    time.sleep(0.3)  # let it bind
    return proc


def finish_sipp_uas(
    proc: subprocess.Popen[bytes], workdir: Path, timeout: float = 30, name: str = "uas"
) -> SippResult:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    ok, failed = _sipp_counts(workdir / f"{name}-stat.csv")
    errors = workdir / f"{name}-errors.log"
    return SippResult(
        proc.returncode, ok, failed, errors.read_text()[-4000:] if errors.exists() else ""
    )


def carrier_invites(log: Path) -> list[dict[str, str]]:
    """The INVITEs a SIPp peer logged (``-trace_msg``): the request line (``uri``), its
    user part (``user``), the head as received (``raw``), and the From,
    P-Asserted-Identity and Privacy values (several joined with " | ")."""
    text = log.read_text(errors="replace") if log.exists() else ""
    out = []
    for block in re.split(r"\n(?=INVITE sip:)", text)[1:]:
        head = block.split("\n\n", 1)[0]
        user = re.match(r"INVITE sip:([^@;> ]+)@", head)
        fields = {"uri": head.split("\n", 1)[0], "raw": head, "user": user.group(1) if user else ""}
        for name in ("From", "P-Asserted-Identity", "Privacy"):
            found = re.findall(rf"^{name}:\s*(.*)$", head, re.M)
            fields[name] = " | ".join(f.strip() for f in found)
        out.append(fields)
    return out


def two_tenant_office(data: Path, users: dict[str, str]) -> None:
    """A data directory with ``users`` in the default tenant and, beside it, tenant
    ``other`` with extension 2000: what a phone must not reach across."""
    cli(data, "init")
    for number, password in users.items():
        cli(data, "extension", "add", number, "--password", password)
    cli(data, "tenant", "add", "other", "--realm", "other.example", "--country", "US")
    cli(data, "extension", "add", "2000", "--password", "Velvet-Canyon-24z", "--tenant", "other")


def cdr_rows(server: PbxProcess) -> list[dict[str, object]]:
    """The server's call records, oldest first, as the database has them."""
    import sqlite3

    with sqlite3.connect(server.data_dir / "pbxwarden.db") as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM cdrs ORDER BY id")]


def closed_cdrs(server: PbxProcess, before: int, count: int) -> list[dict[str, object]]:
    """The records after the first ``before``, once at least ``count`` exist, all closed."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rows = cdr_rows(server)[before:]
        if len(rows) >= count and all(r["end_ts"] is not None for r in rows):
            return rows
        time.sleep(0.1)
    raise AssertionError(f"CDRs not closed: {cdr_rows(server)[before:]}")
