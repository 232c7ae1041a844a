"""Live events (calls, guard decisions, alerts, bans) fanned out to API subscribers.

The SIP path publishes and never waits: each subscriber has a bounded queue, and a
subscriber too slow to keep up loses events (counted, and told so in the stream)
rather than slowing calls down. At shutdown every stream is told so and ends, so that
the admin API's graceful stop does not wait on open streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

QUEUE_SIZE = 1000
SHUTDOWN = "server.shutdown"  # the last event of every stream


class Subscription:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_SIZE)
        self.dropped = 0
        self.closed = False  # the server is stopping: end once the queue is drained


class EventBus:
    def __init__(self) -> None:
        self._subscribers: set[Subscription] = set()
        self.closed = False
        # several nodes (pbxwarden.cluster.events): every event of this node also goes
        # to ``tap``, marked with ``node``; the other nodes' come in through deliver()
        self.node: str | None = None
        self.tap: Callable[[dict[str, Any]], None] | None = None

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    @property
    def listening(self) -> bool:
        """Whether anyone hears an event published now (a subscriber, or other nodes)."""
        return bool(self._subscribers) or self.tap is not None

    def publish(self, kind: str, data: dict[str, Any], at: float | None = None) -> None:
        if not self._subscribers and self.tap is None:
            return
        event = {"type": kind, "at": time.time() if at is None else at, **data}
        if self.node is not None:
            event["node"] = self.node
        if self.tap is not None:
            self.tap(event)
        self.deliver(event)

    def deliver(self, event: dict[str, Any]) -> None:
        """To this node's subscribers only (an event another node published)."""
        for sub in self._subscribers:
            try:
                sub.queue.put_nowait(event)
            except asyncio.QueueFull:
                sub.dropped += 1

    def close(self) -> None:
        """The server is stopping: each stream gets a last event and ends."""
        self.closed = True
        event = {"type": SHUTDOWN, "at": time.time()}
        for sub in self._subscribers:
            sub.closed = True
            with contextlib.suppress(asyncio.QueueFull):  # else it ends once drained
                sub.queue.put_nowait(event)

    @contextmanager
    def subscribe(self) -> Iterator[Subscription]:
        sub = Subscription()
        sub.closed = self.closed
        self._subscribers.add(sub)
        try:
            yield sub
        finally:
            self._subscribers.discard(sub)
