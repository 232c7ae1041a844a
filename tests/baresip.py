"""A real softphone for the integration tests: Debian's baresip 1.0, headless (no sound
card: the ``aubridge`` null device) and scripted over its ``ctrl_tcp`` interface
(netstring-framed JSON commands and events) on loopback."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from tests.helpers import PbxProcess, die_with_pytest, free_port, track

# Only what a headless phone needs: G.711, the aubridge null audio device (no ALSA or
# PulseAudio), the menu (its commands: dial, hangup, accept, transfer) and ctrl_tcp to
# drive it. baresip 1.0.0 also listens for TLS on sip_listen's port + 1. net_interface
# takes an IP address too (its only address then: ::1 for a phone on IPv6 alone; baresip
# 1.0 has no net_prefer_ipv6). ctrl_tcp stays on IPv4 loopback: it is the test's line.
CONFIG = """\
poll_method		epoll
sip_listen		{sip_listen}
net_interface		{host}
call_local_timeout	30
call_max_calls		2
audio_player		aubridge,pbxwarden
audio_source		aubridge,pbxwarden
audio_alert		aubridge,pbxwarden
module_path		/usr/lib/baresip/modules
module			g711.so
module			aubridge.so
module_tmp		account.so
module_app		menu.so
module_app		ctrl_tcp.so
ctrl_tcp_listen		127.0.0.1:{ctrl_port}
"""
# The address book and the presence module: a SUBSCRIBE (RFC 3856) for every contact
# written with ;presence=p2p (and a PUBLISH of the phone's own status).
PRESENCE = "module_app\t\tcontact.so\nmodule_app\t\tpresence.so\n"
ACCOUNT = "<sip:{user}@{pbx};transport=udp>;auth_pass={password};regint=600;answermode=auto\n"


class Audio(NamedTuple):
    """The current call's audio stream as baresip's ``audio_debug`` shows it: RTP
    packets received from the peer (its RTCP session's member ``rcvd``) and sent
    (``TX: packets``), and where it sends them (``remote``, as ``[::1]:port`` on IPv6);
    zeros and "" with no call."""

    received: int
    sent: int
    remote: str


def hostport(host: str, port: int) -> str:
    """``host:port``, an IPv6 address in brackets (RFC 5118)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _free_port_pair(host: str = "127.0.0.1") -> int:
    """A free port on ``host`` whose successor is free too (baresip's TLS listener)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        port = free_port(host)
        with socket.socket(family, socket.SOCK_STREAM) as tcp:
            try:
                tcp.bind((host, port + 1))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port pair")


class Baresip:
    """A baresip process with its own config dir, log file and ctrl_tcp connection.

    ``watch``: extensions to put in its address book with ``;presence=p2p`` (the
    presence module is loaded then). The phone binds SIP and RTP to the PBX's address
    (``pbx.host``: 127.0.0.1, or ::1 for calls over IPv6)."""

    def __init__(
        self,
        workdir: Path,
        pbx: PbxProcess,
        user: str,
        password: str,
        tone: bool = False,
        watch: tuple[str, ...] = (),
    ) -> None:
        self.dir = workdir / "baresip"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ctrl_port = free_port()
        host = pbx.host
        sip_listen = hostport(host, _free_port_pair(host))
        config = CONFIG.format(sip_listen=sip_listen, host=host, ctrl_port=self.ctrl_port)
        if tone:  # a microphone that says something: ausine's 440 Hz (48 kHz stereo only)
            config = config.replace(
                "audio_source\t\taubridge,pbxwarden", "audio_source\t\tausine,440"
            )
            config += "module\t\t\tausine.so\nausrc_srate\t\t48000\nausrc_channels\t\t2\n"
        if watch:
            config += PRESENCE
        (self.dir / "config").write_text(config)
        (self.dir / "accounts").write_text(
            ACCOUNT.format(user=user, pbx=hostport(host, pbx.port), password=password)
        )
        (self.dir / "contacts").write_text(
            "".join(
                f'"{number}" <sip:{number}@{hostport(host, pbx.port)}>;presence=p2p\n'
                for number in watch
            )
        )
        self.log_path = workdir / "baresip.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None
        self.buf = b""
        self.events: list[dict[str, Any]] = []
        self.tokens = 0

    def start(self, timeout: float = 10) -> None:
        with self.log_path.open("wb") as log:
            self.proc = track(
                subprocess.Popen(
                    ["baresip", "-f", str(self.dir), "-v", "-s"],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=die_with_pytest,
                )
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"baresip exited ({self.proc.returncode}):\n{self.log()}")
            try:
                self.sock = socket.create_connection(("127.0.0.1", self.ctrl_port), timeout=1)
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"baresip's ctrl_tcp did not come up:\n{self.log()}")

    def stop(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
            self.proc = None

    def log(self, tail: int = 6000) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n--- baresip log ---\n" + text[-tail:]

    def trace(self) -> str:
        """All baresip wrote (with ``-s``, every SIP message it sent and received)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _parse(self) -> dict[str, Any] | None:
        """The next whole netstring message already received, if any."""
        head, sep, rest = self.buf.partition(b":")
        if sep:
            size = int(head)
            if len(rest) > size:
                self.buf = rest[size + 1 :]  # drop the trailing ","
                message: dict[str, Any] = json.loads(rest[:size])
                return message
        return None

    def _read(self, deadline: float) -> dict[str, Any] | None:
        """The next netstring message, or None at the deadline."""
        assert self.sock is not None
        while (message := self._parse()) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return None
            if not data:
                raise AssertionError(f"baresip closed its control connection{self.log()}")
            self.buf += data
        return message

    def command(self, command: str, params: str = "", timeout: float = 5) -> dict[str, Any]:
        """Send a command; return its response (events seen meanwhile are kept)."""
        assert self.sock is not None
        self.tokens += 1
        token = str(self.tokens)
        body = json.dumps({"command": command, "params": params, "token": token}).encode()
        self.sock.sendall(str(len(body)).encode() + b":" + body + b",")
        deadline = time.monotonic() + timeout
        while (message := self._read(deadline)) is not None:
            if message.get("response") and message.get("token") == token:
                return message
            self.events.append(message)
        raise AssertionError(f"no response to {command!r}{self.log()}")

    def audio(self) -> Audio:
        data = str(self.command("audio_debug").get("data", ""))
        sent = re.search(r"TX: packets=(\d+)", data)
        remote = re.search(r" remote: (\S+?)/", data)
        return Audio(
            sum(int(n) for n in re.findall(r"\brcvd=(\d+)", data)),
            int(sent.group(1)) if sent else 0,
            remote.group(1) if remote else "",
        )

    def pump(self) -> None:
        """Keep the events that arrived meanwhile (without waiting for any)."""
        assert self.sock is not None
        self.sock.settimeout(0.0)
        try:
            while data := self.sock.recv(65536):
                self.buf += data
            raise AssertionError(f"baresip closed its control connection{self.log()}")
        except BlockingIOError:
            pass
        while (message := self._parse()) is not None:
            self.events.append(message)

    def seen(self, kind: str) -> dict[str, Any] | None:
        """The first event of type ``kind`` so far (events that came are read first)."""
        self.pump()
        for event in self.events:
            if event.get("event") and event.get("type") == kind:
                return event
        return None

    def wait_event(self, kind: str, timeout: float = 10) -> dict[str, Any]:
        """The first event of type ``kind`` (already seen or still to come)."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event.get("event") and event.get("type") == kind:
                    return event
            message = self._read(deadline)
            if message is None:
                seen = [e.get("type") for e in self.events]
                raise AssertionError(f"no {kind} event from baresip (saw {seen}){self.log()}")
            self.events.append(message)


@contextlib.contextmanager
def running_baresip(
    workdir: Path, pbx: PbxProcess, user: str, password: str, **kwargs: Any
) -> Iterator[Baresip]:
    ua = Baresip(workdir, pbx, user, password, **kwargs)
    try:
        ua.start()
        yield ua
    finally:
        ua.stop()


def wait_for(
    condition: Callable[[], object], what: str, timeout: float = 15, step: float = 0.1
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        time.sleep(step)
