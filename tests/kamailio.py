"""Kamailio for the tests: the shipped front (``deploy/kamailio/kamailio.cfg``) rendered
for loopback addresses and run in the foreground, stopped whatever the test did.

The configuration's addresses are ``#!substdef`` lines; :func:`render` rewrites their
values, nothing else, so the tests run the very routing logic that is shipped.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import die_with_pytest

CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "kamailio" / "kamailio.cfg"
# Debian puts it in /usr/sbin, outside a normal user's PATH
KAMAILIO = shutil.which("kamailio") or shutil.which("kamailio", path="/usr/sbin:/usr/local/sbin")
_SUBSTDEF = re.compile(r'^#!substdef "!(\w+)!([^!]*)!g"$', re.MULTILINE)


def available() -> bool:
    return KAMAILIO is not None


def render(values: dict[str, str], source: Path = CONFIG) -> str:
    """The configuration with each named ``#!substdef`` given its value; an unknown
    name is an error (the shipped file and the tests must not drift apart)."""
    text = source.read_text()
    names = {m[0] for m in _SUBSTDEF.findall(text)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"not substituted in {source}: {sorted(unknown)}")

    def value(m: re.Match[str]) -> str:
        name = m.group(1)
        return f'#!substdef "!{name}!{values.get(name, m.group(2))}!g"'

    return _SUBSTDEF.sub(value, text)


def dispatcher_list(nodes: Iterable[tuple[str, int]]) -> str:
    return "".join(f"1 sip:{host}:{port} 0 0\n" for host, port in nodes)


@dataclass
class Kamailio:
    """One Kamailio front on ``host:port`` dispatching to ``nodes``."""

    workdir: Path
    host: str
    port: int
    nodes: list[tuple[str, int]]
    ping_interval: int = 1
    fr_timer_ms: int = 2000
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "kamailio.log"
        self.config_path = self.workdir / "kamailio.cfg"
        self.list_path = self.workdir / "dispatcher.list"

    def write(self) -> None:
        self.list_path.write_text(dispatcher_list(self.nodes))
        self.config_path.write_text(
            render(
                {
                    "FRONT_IP": self.host,
                    "FRONT_PORT": str(self.port),
                    "DISPATCHER_LIST": str(self.list_path),
                    "PING_INTERVAL": str(self.ping_interval),
                    "FR_TIMER": str(self.fr_timer_ms),
                }
            )
        )

    def check(self) -> subprocess.CompletedProcess[str]:
        """``kamailio -c``: the rendered configuration parses and its modules load."""
        assert KAMAILIO is not None
        self.write()
        return subprocess.run(
            [KAMAILIO, "-c", "-f", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=30,
        )

    def start(self, timeout: float = 20.0) -> None:
        """Run in the foreground (``-DD``), logging to stderr (``-E``), in a process group
        of its own so that :meth:`stop` ends its children too; ready once it answers
        an OPTIONS to itself."""
        assert KAMAILIO is not None
        self.write()
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                KAMAILIO,
                "-DD",
                "-E",
                "-f",
                str(self.config_path),
                "-m",
                "32",
                "-M",
                "4",
                "-Y",
                str(self.workdir),
                "-w",
                str(self.workdir),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            preexec_fn=die_with_pytest,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"kamailio exited early:\n{self.log()[-4000:]}")
            if self.answers():
                return
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"kamailio did not answer:\n{self.log()[-4000:]}")

    def answers(self, timeout: float = 0.5) -> bool:
        from tests.helpers import options_request, status_of

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((self.host, 0))
            sock.settimeout(timeout)
            sock.sendto(options_request((self.host, self.port)), (self.host, self.port))
            try:
                return status_of(sock.recv(65535)) == 200
            except OSError:
                return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """SIGTERM to the whole group, SIGKILL if it lingers: no Kamailio child survives."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # children left by a dead parent


@contextlib.contextmanager
def running(kamailio: Kamailio) -> Iterator[Kamailio]:
    kamailio.start()
    try:
        yield kamailio
    finally:
        kamailio.stop()
