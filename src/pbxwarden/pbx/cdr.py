"""Writes call detail records in order, off the event loop.

A CDR row is inserted when the attempt starts and updated when it ends, each in its
own committed transaction: a crash can leave a row open (closed as ``interrupted``
at the next start) but never loses a call that ended.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog

from pbxwarden.store.db import Store

log = structlog.get_logger("pbxwarden.cdr")


class CdrWriter:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._queue: asyncio.Queue[tuple[str, int, dict[str, Any]]] = asyncio.Queue()
        self._ids: dict[int, int] = {}
        self._task: asyncio.Task[None] | None = None

    def open(self, token: int, fields: dict[str, Any]) -> None:
        self._queue.put_nowait(("open", token, fields))

    def close(self, token: int, fields: dict[str, Any]) -> None:
        self._queue.put_nowait(("close", token, fields))

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        await self._queue.join()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            op, token, fields = await self._queue.get()
            try:
                if op == "open":
                    self._ids[token] = await asyncio.to_thread(self._store.cdr_open, fields)
                elif (cdr_id := self._ids.pop(token, None)) is not None:
                    await asyncio.to_thread(self._store.cdr_close, cdr_id, fields)
            except Exception:
                log.exception("writing a CDR failed", op=op)
            finally:
                self._queue.task_done()
