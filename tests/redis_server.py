"""A real redis-server for the cluster's tests, on a free loopback port.

No persistence (no RDB snapshot, no append-only file): each start is an empty Redis,
as a restarted cache without persistence is. The process dies with pytest however
pytest dies (``die_with_pytest``), and the fixture stops it after the test.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests.helpers import die_with_pytest, free_port, track


def redis_available() -> bool:
    return shutil.which("redis-server") is not None


class RedisServer:
    """``extra``: more redis-server arguments (``--replicaof host port`` for a replica)."""

    def __init__(self, workdir: Path, host: str = "127.0.0.1", extra: tuple[str, ...] = ()) -> None:
        self.workdir = workdir
        self.host = host
        self.port = free_port(host)
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def command(self) -> list[str]:
        return ["redis-server"]

    def start(self, timeout: float = 15.0) -> None:
        """Start (again, on the same port) and wait until it answers PING."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.workdir / "redis.log"
        self.proc = track(
            subprocess.Popen(
                [
                    *self.command(),
                    "--bind",
                    self.host,
                    "--port",
                    str(self.port),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.workdir),
                    "--logfile",
                    str(log),
                    "--daemonize",
                    "no",
                    *self.extra,
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                preexec_fn=die_with_pytest,
            )
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ping():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        text = log.read_text() if log.exists() else ""
        self.stop()
        raise AssertionError(f"redis-server did not start:\n{text[-2000:]}")

    def ping(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(5)
        self.proc = None


class SentinelServer(RedisServer):
    """One Redis Sentinel watching ``master`` as service ``name`` (quorum 1: a test's
    single sentinel decides alone; production runs three). It notices a dead master
    after ``down_after_ms`` and promotes a replica."""

    def __init__(
        self, workdir: Path, master: RedisServer, name: str = "pbx", down_after_ms: int = 500
    ) -> None:
        super().__init__(workdir, master.host)
        self.master, self.name, self.down_after_ms = master, name, down_after_ms

    @property
    def url(self) -> str:
        return f"redis+sentinel://{self.host}:{self.port}/{self.name}/0"

    def command(self) -> list[str]:
        conf = self.workdir / "sentinel.conf"  # Sentinel rewrites its file: its own
        conf.write_text(
            f"sentinel monitor {self.name} {self.master.host} {self.master.port} 1\n"
            f"sentinel down-after-milliseconds {self.name} {self.down_after_ms}\n"
            f"sentinel failover-timeout {self.name} 2000\n"
        )
        return ["redis-server", str(conf), "--sentinel"]
