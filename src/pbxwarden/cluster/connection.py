"""The node's connection to the shared Redis: short timeouts, a health flag, no raising.

A SIP server must answer while its Redis is restarting, unreachable or slow, so every
command here is bounded by a short timeout (``cluster.timeout``), never retried in
place, and a failure is an answer (None) that marks the connection down, not an
exception for the caller. The change of health is logged once each way; a watcher
pings and says when it is back (:attr:`RedisLink.on_recovered`), so that
the node can reconcile what changed meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote

import structlog

try:
    import redis.asyncio as _redis_asyncio
    from redis.exceptions import RedisError

    AVAILABLE = True  # the Python client is installed (the ``cluster`` extra)
except ImportError:  # pragma: no cover - exercised where the extra is not installed
    AVAILABLE = False

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub

log = structlog.get_logger("pbxwarden.cluster")

T = TypeVar("T")


SENTINEL_SCHEME = "redis+sentinel://"


@dataclass(frozen=True)
class SentinelTarget:
    """``redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]``: the
    Redis that Sentinel names master of ``service``, found through any of the sentinels
    and found again after a failover (the password is the Redis servers')."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None


def parse_sentinel(url: str) -> SentinelTarget | None:
    """The sentinels of a ``redis+sentinel://`` URL, None for any other URL; ValueError
    with the reason for a malformed one."""
    if not url.startswith(SENTINEL_SCHEME):
        return None
    rest = url[len(SENTINEL_SCHEME) :]
    username = password = None
    if "@" in rest:
        auth, rest = rest.rsplit("@", 1)
        user, colon, secret = auth.partition(":")
        username, password = (user or None), (unquote(secret) if colon else None)
        if not colon:  # redis://secret@host: the password alone
            username, password = None, unquote(user)
    hosts, _, path = rest.partition("/")
    parts = [p for p in path.split("/") if p]
    if not parts or len(parts) > 2:
        raise ValueError("a sentinel URL names the service: redis+sentinel://host:port/mymaster")
    if len(parts) == 2 and not parts[1].isdigit():
        raise ValueError(f"the database must be a number, got {parts[1]!r}")
    sentinels: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, colon, port = item.strip().rpartition(":")
        if not colon:
            host, port = port, "26379"
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"a sentinel is host:port, got {item!r}")
        sentinels.append((host, int(port)))
    db = int(parts[1]) if len(parts) == 2 else 0
    return SentinelTarget(tuple(sentinels), unquote(parts[0]), db, username, password)


def _client_kwargs(timeout: float, name: str, asyncio_client: bool = False) -> dict[str, Any]:
    from redis.backoff import NoBackoff

    if asyncio_client:
        from redis.asyncio.retry import Retry as AsyncRetry

        retry: Any = AsyncRetry(NoBackoff(), 0)
    else:
        from redis.retry import Retry

        retry = Retry(NoBackoff(), 0)
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": retry,  # no retry in place: the caller moves on
        "decode_responses": True,
        "client_name": name,
    }


def _master(sentinel_class: Any, target: SentinelTarget, kwargs: dict[str, Any]) -> Any:
    """The client of the master Sentinel names for ``target`` (found again after a
    failover, on the next connection); the sentinels are asked within the timeout."""
    timeout = kwargs["socket_timeout"]
    sentinel = sentinel_class(
        list(target.sentinels),
        sentinel_kwargs={"socket_timeout": timeout, "socket_connect_timeout": timeout},
    )
    return sentinel.master_for(
        target.service,
        db=target.db,
        username=target.username,
        password=target.password,
        **kwargs,
    )


def sync_client(url: str, timeout: float, name: str) -> Any:
    """A blocking client of the shared Redis (plain URL, or Sentinel's master)."""
    import redis
    from redis.sentinel import Sentinel

    kwargs = _client_kwargs(timeout, name)
    target = parse_sentinel(url)
    if target is None:
        return redis.Redis.from_url(url, **kwargs)
    return _master(Sentinel, target, kwargs)


def async_client(url: str, timeout: float, name: str) -> Redis:
    """The node's asyncio client of the shared Redis (plain URL, or Sentinel's master:
    a failover is a few failed commands, then the new master, found through the
    sentinels on the next connection)."""
    from redis.asyncio.sentinel import Sentinel

    kwargs = _client_kwargs(timeout, name, asyncio_client=True)
    target = parse_sentinel(url)
    if target is None:
        return _redis_asyncio.Redis.from_url(url, **kwargs)
    client: Redis = _master(Sentinel, target, kwargs)
    return client


def blocking_client(
    url: str, timeout: float, name: str
) -> tuple[Any, tuple[type[BaseException], ...]]:
    """A synchronous client for the guard's decisions (``calls.py``, ``spend.py``): every
    command bounded by ``timeout``, never retried in place (a retry would double the wait
    of a call set-up). Answers the client and the errors that mean Redis failed."""
    import redis

    return sync_client(url, timeout, name), (redis.RedisError, OSError)


class RedisLink:
    """One node's view of Redis: :meth:`run` a command, :attr:`healthy`, :meth:`watch`."""

    def __init__(self, url: str, timeout: float, node: str) -> None:
        if not AVAILABLE:
            from pbxwarden.config import ConfigError

            raise ConfigError(
                "cluster.redis_url is set but the Redis client is not installed: "
                "pip install 'pbxwarden[cluster]'"
            )
        self.url = url
        self.timeout = timeout
        self.node = node
        self.client: Redis = async_client(url, timeout, f"pbxwarden-{node}")
        self.healthy = False
        self.known = False  # whether any command has been tried yet
        self.changed_at = time.time()
        self.failures = 0  # commands that failed (a counter for stats)
        # called when Redis answers again after being down (the node reconciles)
        self.on_recovered: Callable[[], None] | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "redis": "up" if self.healthy else "down",
            "redis_since": self.changed_at,
            "redis_failures": self.failures,
        }

    async def run(
        self, what: str, command: Callable[[Redis], Awaitable[T]], waits: float = 0.0
    ) -> T | None:
        """``command(client)`` within the timeout (plus ``waits``: a blocking read's own
        wait); None (and down) if it failed."""
        try:
            result = await asyncio.wait_for(command(self.client), self.timeout + waits)
        except (RedisError, OSError, TimeoutError) as exc:
            self.failures += 1
            self.mark_down(what, exc)
            return None
        self.mark_up()
        return result

    def mark_down(self, what: str, exc: BaseException) -> None:
        if self.healthy or not self.known:
            log.warning(
                "redis unreachable: this node goes on with its own state",
                url=_safe(self.url),
                command=what,
                error=f"{type(exc).__name__}: {exc}",
            )
            self.changed_at = time.time()
        self.healthy = False
        self.known = True

    def mark_up(self) -> None:
        if not self.healthy:
            if self.known:
                log.warning("redis reachable again: sharing state", url=_safe(self.url))
                if self.on_recovered is not None:
                    self.on_recovered()
            else:
                log.info("redis reachable: sharing state", url=_safe(self.url), node=self.node)
            self.changed_at = time.time()
        self.healthy = True
        self.known = True

    async def watch(self, interval: float = 1.0) -> None:
        """Ping now and then: a node that sends nothing learns of an outage and of the
        return all the same."""
        while True:
            await self.run("PING", lambda c: c.ping())
            await asyncio.sleep(interval)

    def pubsub(self) -> PubSub:
        return self.client.pubsub(ignore_subscribe_messages=True)

    async def close(self) -> None:
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await asyncio.wait_for(self.client.aclose(), self.timeout)


def _safe(url: str) -> str:
    """The URL without its password, for the log."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return scheme + sep + rest
