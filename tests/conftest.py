"""Shared fixtures: real database servers started on loopback for the session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import stop_tracked, tracked
from tests.postgres_server import PostgresServer, postgres_available
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


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL server on 127.0.0.1, run as the ``postgres`` user under root."""
    if not postgres_available():
        pytest.skip("PostgreSQL server binaries or psycopg not installed (Debian postgresql)")
    server = PostgresServer()
    try:
        server.start()
        yield server.url
    finally:
        server.destroy()


@pytest.fixture
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server of one test's own, which it may stop and start (an outage)."""
    if not postgres_available():
        pytest.skip("PostgreSQL server binaries or psycopg not installed (Debian postgresql)")
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.destroy()
