"""The live event stream of every node, on every node: a Redis Stream.

Each node's events (calls, guard decisions, alerts, bans: :mod:`pbxwarden.events`) are
appended to one capped stream (``<prefix>events:stream``, about ``STREAM_LENGTH``
entries), and each node reads the others' from it into its own bus, so that the admin
API and the dashboard of any node show what the whole PBX does. A Stream rather than
pub/sub: a reader that was busy or briefly disconnected resumes after the last entry it
saw instead of losing what was said meanwhile (up to the cap).

The SIP path never waits: publishing only appends to a bounded local queue, which a task
writes out in batches. Events are live information, not records (the database keeps
CDRs, alerts and the audit): while Redis is down they are dropped and counted, not
replayed hours later.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections import deque
from typing import TYPE_CHECKING, Any

import structlog

from pbxwarden.events import EventBus

if TYPE_CHECKING:
    from pbxwarden.cluster.connection import RedisLink

log = structlog.get_logger("pbxwarden.cluster")

STREAM_LENGTH = 10_000  # entries kept (approximately: MAXLEN ~)
QUEUE_LIMIT = 5_000  # events waiting to be written; past it the oldest are dropped
BATCH = 200  # events per write (one pipeline) and per read


class SharedEvents:
    """Tap the node's bus, write its events to the stream, read the other nodes'."""

    def __init__(self, link: RedisLink, key: str, node: str, bus: EventBus) -> None:
        self.link, self.key, self.node, self.bus = link, key, node, bus
        self._out: deque[dict[str, Any]] = deque()
        self._wake = asyncio.Event()
        self._last_id: str | None = None  # the last entry read (None: start at the end)
        self._tasks: list[asyncio.Task[None]] = []
        self.written = 0
        self.read = 0  # other nodes' events delivered here
        self.dropped = 0  # not written: queue full or Redis down

    def start(self) -> None:
        self.bus.node = self.node
        self.bus.tap = self.published
        self._tasks = [asyncio.create_task(self._writing()), asyncio.create_task(self._reading())]

    async def stop(self) -> None:
        self.bus.tap = None
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def published(self, event: dict[str, Any]) -> None:
        """From the SIP path, through the bus: queue only."""
        if len(self._out) >= QUEUE_LIMIT:
            self._out.popleft()
            self.dropped += 1
        self._out.append(event)
        self._wake.set()

    async def _writing(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._out:
                batch = [self._out.popleft() for _ in range(min(BATCH, len(self._out)))]
                if await self.write(batch) is None:
                    self.dropped += len(batch) + len(self._out)  # live news goes stale
                    self._out.clear()
                    break

    async def write(self, events: list[dict[str, Any]]) -> bool | None:
        async def append(client: Any) -> bool:
            pipe = client.pipeline(transaction=False)
            for event in events:
                fields = {"node": self.node, "event": json.dumps(event, default=str)}
                pipe.xadd(self.key, fields, maxlen=STREAM_LENGTH, approximate=True)
            await pipe.execute()
            return True

        done = await self.link.run("XADD", append)
        if done:
            self.written += len(events)
        return done

    async def _reading(self) -> None:
        # a blocking read waits at most this long (ms) for news, well within the client's
        # socket timeout; the command's own timeout allows for the wait
        block = max(50, min(250, int(self.link.timeout * 500)))
        while True:
            if self._last_id is None:
                newest = await self.link.run("XREVRANGE", lambda c: c.xrevrange(self.key, count=1))
                if newest is None:
                    await asyncio.sleep(1.0)
                    continue
                self._last_id = str(newest[0][0]) if newest else "0-0"
            streams = {self.key: self._last_id}
            answer = await self.link.run(
                "XREAD", functools.partial(_xread, streams=streams, block=block), block / 1000
            )
            if answer is None:  # down: resume after the last entry read once it is back
                await asyncio.sleep(1.0)
                continue
            for _stream, entries in answer or ():
                for entry_id, fields in entries:
                    self._last_id = entry_id
                    self.deliver(fields)

    def deliver(self, fields: dict[str, str]) -> None:
        if fields.get("node") == self.node:
            return  # our own, already on our bus
        try:
            event = json.loads(fields.get("event", ""))
        except ValueError:
            log.warning("unreadable event in the shared stream", node=fields.get("node"))
            return
        if isinstance(event, dict):
            event.setdefault("node", fields.get("node"))
            self.bus.deliver(event)
            self.read += 1


async def _xread(client: Any, *, streams: dict[str, str], block: int) -> Any:
    return await client.xread(streams, count=BATCH, block=block)
