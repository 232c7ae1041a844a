"""The server's life cycle with real phones (SIPp): one server per data directory, a
shutdown that hangs up calls properly, and overload detection that is not fooled by
start-up or a stall with nothing waiting, yet sheds calls when SIP really piles up."""

from __future__ import annotations

import json
import os
import secrets
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from pbxwarden.sip.message import Response, generate_branch, parse_message
from tests.helpers import (
    PbxProcess,
    cli,
    finish_sipp_uas,
    free_port,
    run_sipp,
    running_pbx,
    sipp_available,
    start_sipp_uas,
)
from tests.integration.test_calls import (
    CALLEE,
    USERS,
    cdrs,
    refused_scenario,
    register_callee,
    start_caller,
    wait_cdr,
)

pytestmark = [
    pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) not installed"),
    pytest.mark.timeout(180),
]

T = TypeVar("T")


def wait_for(condition: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll ``condition`` until it returns something, or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value is not None and value is not False:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def live_calls(pbx: PbxProcess) -> list[dict[str, object]]:
    out = cli(pbx.data_dir, "calls", "--json", check=False).stdout.strip()
    return json.loads(out) if out.startswith("[") else []


def stats(pbx: PbxProcess) -> dict[str, object]:
    return dict(json.loads(cli(pbx.data_dir, "stats", "--json").stdout))


def invite(pbx: PbxProcess, call_id: str, timeout: float = 3.0) -> int | None:
    """A new call without credentials from 127.0.0.1; the status of its first answer
    (401 when the server takes calls, 503 when it sheds them)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(timeout)
        sock.sendto(invite_bytes(pbx, sock.getsockname()[1], call_id), (pbx.host, pbx.port))
        try:
            while True:
                reply = parse_message(sock.recv(65535))
                if isinstance(reply, Response) and reply.status >= 200:
                    return reply.status
        except TimeoutError:
            return None


def invite_bytes(pbx: PbxProcess, port: int, call_id: str) -> bytes:
    return (
        f"INVITE sip:2000@{pbx.host} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch={generate_branch()};rport\r\n"
        f"From: <sip:1000@{pbx.host}>;tag=lc\r\nTo: <sip:2000@{pbx.host}>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """SIPp phones started by a test, killed whatever happens."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
            proc.wait(5)


class LossyLink:
    """A UDP hop in front of a phone that loses the first ``drop`` BYEs the PBX sends
    it, as a bad network would; everything else passes both ways."""

    def __init__(self, port: int, phone_port: int, drop: int) -> None:
        self.outside = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.outside.bind(("127.0.0.1", port))
        self.inside = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.inside.bind(("127.0.0.1", 0))
        self.phone = ("127.0.0.1", phone_port)
        self.pbx: tuple[str, int] | None = None
        self.drop, self.dropped = drop, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.outside, self.inside], [], [], 0.1)
            for sock in ready:
                data, source = sock.recvfrom(65535)
                if sock is self.outside:
                    self.pbx = source
                    if data.startswith(b"BYE ") and self.dropped < self.drop:
                        self.dropped += 1
                        continue
                    self.inside.sendto(data, self.phone)
                elif self.pbx is not None:
                    self.outside.sendto(data, self.pbx)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.outside.close()
        self.inside.close()


def answered_call(
    pbx: PbxProcess,
    workdir: Path,
    procs: list[subprocess.Popen[bytes]],
    callee: str,
    links: list[LossyLink] | None = None,
) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes], float]:
    """1000 calls 2000 and 2000 answers; returns (callee, caller, when it was seen up).

    With ``links``, 2000 sits behind a :class:`LossyLink` losing two BYEs (appended)."""
    if links is None:
        port = register_callee(pbx, workdir)
        phone = start_sipp_uas(callee, port, workdir, timeout=60)
    else:
        link_port, port = free_port(), free_port()
        target = f"{pbx.host}:{pbx.port}"
        reg = run_sipp("register.xml", target, users=CALLEE, local_port=link_port, workdir=workdir)
        assert reg.successful == 1, reg.output
        links.append(LossyLink(link_port, port, drop=2))
        extra = ["-key", "contact_port", str(link_port)]
        phone = start_sipp_uas(callee, port, workdir, timeout=60, extra=extra)
    procs.append(phone)
    caller = start_caller(pbx, workdir, "call_uac_wait_bye.xml", timeout=60)
    procs.append(caller)

    def up() -> float | None:
        calls = live_calls(pbx)
        return time.time() if calls and calls[0]["state"] == "answered" else None

    return phone, caller, wait_for(up, 20, "the call to be answered")


# -- one server per data directory ----------------------------------------------------


def test_a_second_server_on_the_same_data_directory_exits_and_changes_nothing(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    with running_pbx(tmp_path / "data", USERS) as pbx:
        assert pbx.proc is not None
        phone, caller, _ = answered_call(pbx, tmp_path, procs, "call_uas.xml")
        assert (pbx.data_dir / "pbxwarden.pid").read_text().strip() == str(pbx.proc.pid)
        second = cli(pbx.data_dir, "serve", "--sip", f"127.0.0.1:{free_port()}", check=False)
        assert second.returncode == 1, second.stdout + second.stderr
        assert f"already running (pid {pbx.proc.pid})" in second.stderr
        assert "Traceback" not in second.stderr and "ready" not in second.stdout
        # The first server's call goes on, and its record is still open (a second
        # start-up would have closed it as interrupted).
        [call] = live_calls(pbx)
        assert call["state"] == "answered" and pbx.alive()
        [row] = cdrs(pbx)
        assert row["disposition"] == "in-progress"
        cli(pbx.data_dir, "calls", "end", str(call["call_id"]))
        [ended] = json.loads(cli(pbx.data_dir, "audit-log", "--json", "--limit", "1").stdout)
        assert (ended["action"], ended["resource"]) == ("call.end", f"call/{call['call_id']}")
        assert ended["actor"].startswith("cli:") and ended["before"]["callee"] == "2000"
        assert caller.wait(20) == 0
        assert finish_sipp_uas(phone, tmp_path).successful == 1
        [row] = wait_cdr(pbx)
        assert row["disposition"] == "answered" and "administrator" in str(row["reasons"])


def test_a_killed_servers_pid_file_does_not_block_the_next_start(tmp_path: Path) -> None:
    with running_pbx(tmp_path / "data", {}) as pbx:
        assert pbx.proc is not None
        killed = pbx.proc.pid
        pbx.stop(signal.SIGKILL)
        pid_file = pbx.data_dir / "pbxwarden.pid"
        assert pid_file.read_text().strip() == str(killed)  # left behind, stale
        pbx.start()
        assert pbx.proc is not None and pid_file.read_text().strip() == str(pbx.proc.pid)
    assert pid_file.read_text() == ""  # a clean stop empties it


# -- shutdown ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sig", "callee", "admin_api"),
    [
        # The callee's first two BYEs are lost on the way: the server must retransmit
        # before it exits. An event stream is open on the admin API, whose graceful
        # stop must not delay the hang-up (nor lengthen the recorded duration).
        (signal.SIGTERM, "call_uas_lossy.xml", True),
        (signal.SIGINT, "call_uas.xml", False),
    ],
    ids=["sigterm-lost-byes-admin-api", "sigint"],
)
def test_shutdown_hangs_up_both_phones_and_records_the_real_duration(
    tmp_path: Path,
    procs: list[subprocess.Popen[bytes]],
    sig: signal.Signals,
    callee: str,
    admin_api: bool,
) -> None:
    env: dict[str, str] = {}
    if admin_api:
        http_port = free_port()
        env = {
            "PBXWARDEN_HTTP__ENABLED": "true",
            "PBXWARDEN_HTTP__LISTEN": f"127.0.0.1:{http_port}",
        }
    data = tmp_path / "data"
    lossy = callee == "call_uas_lossy.xml"
    links: list[LossyLink] = []
    with running_pbx(data, USERS, env=env) as pbx:
        stream = None
        if admin_api:
            stream = open_event_stream(data, http_port)
        try:
            phone, caller, seen = answered_call(
                pbx, tmp_path, procs, callee, links if lossy else None
            )
            wait_for(
                lambda: any(int(str(c["seconds"])) >= 1 for c in live_calls(pbx)),
                10,
                "the call to last a second",
            )
            assert pbx.proc is not None
            signalled = time.time()
            pbx.proc.send_signal(sig)
            if lossy:
                # While the server waits for the callee, new calls are refused (503).
                tries = iter(range(1000))
                status = wait_for(
                    lambda: invite(pbx, f"late-{next(tries)}", 0.5) == 503 or None,
                    5,
                    "a new call to be refused during the shutdown",
                )
                assert status
            assert pbx.proc.wait(20) == 0
            exited = time.time()
        finally:
            if stream is not None:
                stream.close()
            for link in links:
                link.close()
        assert [link.dropped for link in links] == ([2] if lossy else [])
        assert caller.wait(20) == 0, "the caller got no BYE"
        answered = finish_sipp_uas(phone, tmp_path)
        assert answered.successful == 1, answered.output + pbx.log()[-3000:]
        [row] = cdrs(pbx)  # the database, the server gone
        assert row["disposition"] == "answered" and row["sip_code"] == 200
        assert "server shutting down" in str(row["reasons"])
        answer_ts, end_ts, duration = (
            float(str(row[k])) for k in ("answer_ts", "end_ts", "duration")
        )
        assert answer_ts <= seen and signalled - 0.05 <= end_ts <= exited
        assert end_ts - signalled < 2.0, "the calls were ended late in the shutdown"
        assert abs(duration - (end_ts - answer_ts)) < 0.01
        assert duration >= signalled - seen and duration >= 1.0  # the server saw 1 s
        assert "ERROR" not in pbx.log() and "Traceback" not in pbx.log()


def open_event_stream(data: Path, port: int) -> socket.socket:
    """An admin's live event stream (Server-Sent Events), left open."""
    cli(data, "admin", "add", "alice", "--password", "correct horse battery staple 42")
    token = cli(data, "admin", "token", "alice", "--scope", "read-only").stdout.split()[-1]
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(
        f"GET /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}"
        "\r\nAccept: text/event-stream\r\n\r\n".encode()
    )
    head = b""
    while b"pbxwarden events" not in head:
        chunk = sock.recv(4096)
        assert chunk, head
        head += chunk
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock


def test_shutdown_cancels_a_ringing_call(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    with running_pbx(tmp_path / "data", USERS) as pbx:
        port = register_callee(pbx, tmp_path)
        phone = start_sipp_uas("call_uas_ring.xml", port, tmp_path, timeout=60)
        procs.append(phone)
        caller = start_caller(pbx, tmp_path, str(refused_scenario(tmp_path, 480)), timeout=60)
        procs.append(caller)
        wait_for(lambda: any(c["state"] == "ringing" for c in live_calls(pbx)), 20, "ringing")
        assert pbx.stop(signal.SIGTERM) == 0
        assert caller.wait(20) == 0, "the caller got no 480"
        assert finish_sipp_uas(phone, tmp_path).successful == 1, "the callee got no CANCEL"
        [row] = cdrs(pbx)
        assert (row["disposition"], row["sip_code"]) == ("terminated", 480)
        assert "server shutting down" in str(row["reasons"])


# -- overload ---------------------------------------------------------------------------


def test_an_idle_server_never_sheds_calls(tmp_path: Path) -> None:
    """Start-up with two thousand extensions and the admin API, then the process
    stopped for a second with nothing arriving (a stall, as a VM pause or a long
    collection): late timers, but nothing waiting, so no call is refused."""
    data = tmp_path / "data"
    cli(data, "init")
    rows = "".join(f"{n},{secrets.token_urlsafe(18)}\n" for n in range(20000, 22000))
    (tmp_path / "many.csv").write_text(rows)
    cli(data, "extension", "import", str(tmp_path / "many.csv"))
    admin_api = {"PBXWARDEN_HTTP__ENABLED": "true", "PBXWARDEN_HTTP__LISTEN": "127.0.0.1:0"}
    pbx = PbxProcess(data, env=admin_api)  # its start-up (FastAPI) once looked like load
    pbx.start()
    try:
        assert pbx.proc is not None
        assert "overloaded" not in pbx.log()
        for round_ in range(3):
            os.kill(pbx.proc.pid, signal.SIGSTOP)
            stalled = time.monotonic()
            try:
                while time.monotonic() - stalled < 1.0:  # the stall itself: nothing to wait for
                    time.sleep(0.05)
            finally:
                os.kill(pbx.proc.pid, signal.SIGCONT)
            now = stats(pbx)  # answers once the loop runs again
            assert (now["overload"], now["shed"]) == (0, 0), now
            assert invite(pbx, f"idle-{round_}") == 401
        assert "overloaded" not in pbx.log()
    finally:
        pbx.stop()


def test_sip_piling_up_in_the_kernel_sheds_new_calls_until_it_drains(tmp_path: Path) -> None:
    """A stall with 150 new calls arriving meanwhile: they wait in the kernel's buffer,
    and the time counts (the kernel stamps their arrival), so the server answers 503 to
    those that waited past calls.admission_wait rather than working through a backlog
    late; then it takes calls again."""
    env = {
        "PBXWARDEN_CALLS__ADMISSION_WAIT": "0.1",
        "PBXWARDEN_FIREWALL__RATE_LIMIT": "100000",  # one source, many calls: no flood ban
    }
    with running_pbx(tmp_path / "data", USERS, env=env) as pbx:
        assert pbx.proc is not None
        assert invite(pbx, "before") == 401
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.settimeout(1.0)
            port = sock.getsockname()[1]
            os.kill(pbx.proc.pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                for i in range(150):  # over half a second, while the server cannot read
                    sock.sendto(invite_bytes(pbx, port, f"pile-{i}"), (pbx.host, pbx.port))
                    while time.monotonic() - started < i / 300:
                        time.sleep(0.002)
            finally:
                os.kill(pbx.proc.pid, signal.SIGCONT)
            answers: dict[str, int] = {}
            deadline = time.monotonic() + 15
            while len(answers) < 150 and time.monotonic() < deadline:
                try:
                    reply = parse_message(sock.recv(65535))
                except TimeoutError:
                    continue
                if isinstance(reply, Response) and reply.status >= 200:
                    answers[reply.call_id] = reply.status
        shed = sum(1 for s in answers.values() if s == 503)
        assert shed >= 75, answers
        assert set(answers.values()) <= {401, 503}
        wait_for(lambda: stats(pbx)["overload"] == 0, 10, "the overload to end")
        assert stats(pbx)["shed"] == shed
        assert invite(pbx, "after") == 401
