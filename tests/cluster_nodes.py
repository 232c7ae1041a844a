"""Cluster nodes for the tests: a data directory with extensions, started as a node of
the test's cluster (a real redis-server), on its own loopback address."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.helpers import PbxProcess, cli
from tests.redis_server import RedisServer


def start_node(
    root: Path,
    name: str,
    host: str,
    redis: RedisServer,
    users: dict[str, str],
    prepare: Callable[[Path], None] | None = None,
    **env: str,
) -> PbxProcess:
    """``root/name`` initialised with ``users`` (extension -> password), ``prepare``d,
    then served on ``host`` as cluster node ``name`` (keys under ``test:``)."""
    data = root / name
    data.mkdir(parents=True)
    cli(data, "init")
    (data / "extensions.csv").write_text("".join(f"{n},{p}\n" for n, p in users.items()))
    cli(data, "extension", "import", str(data / "extensions.csv"))
    if prepare is not None:
        prepare(data)
    pbx = PbxProcess(
        data,
        host=host,
        env={
            "PBXWARDEN_CLUSTER__REDIS_URL": redis.url,
            "PBXWARDEN_CLUSTER__NODE": name,
            "PBXWARDEN_CLUSTER__KEY_PREFIX": "test:",
            **env,
        },
    )
    pbx.start()
    return pbx
