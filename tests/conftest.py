"""Shared fixtures: real database servers started on loopback for the session."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import free_port, stop_tracked, tracked
from tests.redis_server import RedisServer, redis_available


@pytest.fixture(autouse=True)
def _no_peer_left_running() -> Iterator[None]:
    """SIPp phones and carriers a test started are stopped after it, even when it failed
    or timed out before its own clean-up (not those of a fixture shared by a module)."""
    before = tracked()
    yield
    stop_tracked(before)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server on 127.0.0.1 for one test (skipped where not installed)."""
    if not redis_available():
        pytest.skip("redis-server not installed (Debian package redis-server)")
    try:
        import redis  # noqa: F401
    except ImportError:
        pytest.skip("the redis Python client is not installed (pbxwarden[cluster])")
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL server on 127.0.0.1, run as the ``postgres`` user under root."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL server binaries not installed (Debian package postgresql)")
    try:
        import psycopg
    except ImportError:
        pytest.skip("psycopg not installed")
    root = Path(tempfile.mkdtemp(prefix="pbxwarden-pg-"))
    data = root / "data"
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(root, "postgres")
        os.chmod(root, 0o700)
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    subprocess.run(
        [*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "pbx"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    subprocess.run(
        [
            *as_user,
            pg_ctl,
            "-D",
            str(data),
            "-l",
            str(root / "log"),
            "-w",
            "-t",
            "60",
            "-o",
            f"-h 127.0.0.1 -p {port} -k {root} -F",
            "start",
        ],
        check=True,
        capture_output=True,
        timeout=90,
    )
    try:
        url = f"postgresql+psycopg://pbx@127.0.0.1:{port}/postgres"
        deadline = time.monotonic() + 20
        import psycopg

        while True:
            try:
                psycopg.connect(f"host=127.0.0.1 port={port} user=pbx dbname=postgres").close()
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield url
    finally:
        subprocess.run(
            [*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(root, ignore_errors=True)
