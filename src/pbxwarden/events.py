"""Live events (calls, guard decisions, alerts, bans) fanned out to API subscribers.

The SIP path publishes and never waits: each subscriber has a bounded queue, and a
subscriber too slow to keep up loses events (counted, and told so in the stream)
rather than slowing calls down.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

QUEUE_SIZE = 1000


class Subscription:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_SIZE)
        self.dropped = 0


class EventBus:
    def __init__(self) -> None:
        self._subscribers: set[Subscription] = set()

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def publish(self, kind: str, data: dict[str, Any], at: float | None = None) -> None:
        if not self._subscribers:
            return
        event = {"type": kind, "at": time.time() if at is None else at, **data}
        for sub in self._subscribers:
            try:
                sub.queue.put_nowait(event)
            except asyncio.QueueFull:
                sub.dropped += 1

    @contextmanager
    def subscribe(self) -> Iterator[Subscription]:
        sub = Subscription()
        self._subscribers.add(sub)
        try:
            yield sub
        finally:
            self._subscribers.discard(sub)
