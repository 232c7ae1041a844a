"""A real PostgreSQL server for the tests, on a free loopback port.

``initdb`` a fresh cluster in a temporary directory, run as the ``postgres`` user
under root (PostgreSQL refuses to run as root); ``stop`` and ``start`` again on the
same port and data, as an outage and its end. Stopped with ``-m immediate`` at the
end, however the test ended.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.helpers import free_port


def pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def postgres_available() -> bool:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return False
    return pg_bin("initdb") is not None and pg_bin("pg_ctl") is not None


class PostgresServer:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="pbxwarden-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            os.chmod(self.root, 0o700)
            self._as_user = ["runuser", "-u", "postgres", "--"]
        self._initialised = False

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://pbx@127.0.0.1:{self.port}/postgres"

    def _pg_ctl(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[bytes]:
        pg_ctl = pg_bin("pg_ctl")
        assert pg_ctl is not None
        return subprocess.run(
            [*self._as_user, pg_ctl, "-D", str(self.data), *args],
            capture_output=True,
            timeout=timeout,
        )

    def start(self) -> None:
        """Start (the first time: create the cluster) and wait until it accepts logins."""
        if not self._initialised:
            initdb = pg_bin("initdb")
            assert initdb is not None
            subprocess.run(
                [*self._as_user, initdb, "-D", str(self.data), "-A", "trust", "-U", "pbx"],
                check=True,
                capture_output=True,
                timeout=120,
            )
            self._initialised = True
        done = self._pg_ctl(
            "-l",
            str(self.root / "log"),
            "-w",
            "-t",
            "60",
            "-o",
            f"-h 127.0.0.1 -p {self.port} -k {self.root} -F",
            "start",
        )
        if done.returncode != 0:
            raise RuntimeError(f"PostgreSQL did not start: {done.stderr.decode()[-2000:]}")
        import psycopg

        deadline = time.monotonic() + 20
        while True:
            try:
                psycopg.connect(f"host=127.0.0.1 port={self.port} user=pbx dbname=postgres").close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: clients are disconnected, as in an outage)."""
        self._pg_ctl("-m", mode, "-w", "stop", timeout=60)

    def destroy(self) -> None:
        self._pg_ctl("-m", "immediate", "stop", timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)
