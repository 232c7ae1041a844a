"""Writes call detail records in order, off the event loop, and never loses one.

A CDR row is inserted when the attempt starts and updated when it ends, each in its
own committed transaction: a crash can leave a row open (closed as ``interrupted``
at the next start) but never loses a call that ended.

When the database cannot be reached (PostgreSQL stopped, the network to it down,
SQLite locked), calls go on: each CDR operation is appended to a spool on the node's
own disk (``cdr-spool.jsonl`` in the data directory, one JSON line per operation,
flushed and fsynced before the next), in order, and from then on every operation goes
there until the spool is written to the database. The answer time is written when
the call is answered (an ``update`` of the open row), so that a killed node's answered
calls keep it. The writer tries that every
``retry`` seconds, the whole spool in one transaction; each spooled ``open`` carries a
key unique to this process and call (``cdrs.spool_key``), so a replay cut short by a
crash, or a spool left by a killed node and replayed at its next start, writes every
call once. Errors that are not about reaching the database (a row the database
refuses) are logged and that one operation dropped, as before: spooling them would
block every CDR behind one bad row.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from pbxwarden.store.db import Store

log = structlog.get_logger("pbxwarden.cdr")

SPOOL_FILE = "cdr-spool.jsonl"
RETRY = 1.0  # seconds between attempts to write the spool while the database is down


def unreachable(exc: BaseException) -> bool:
    """The database could not be reached (or lost the connection), as opposed to a
    statement it refused."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


class CdrWriter:
    def __init__(self, store: Store, spool: Path | None = None, retry: float = RETRY) -> None:
        self._store = store
        self._queue: asyncio.Queue[tuple[str, int, dict[str, Any]]] = asyncio.Queue()
        self._ids: dict[int, int] = {}  # token -> row id, for opens written to the database
        self._keys: dict[int, str] = {}  # token -> spool key, for opens in the spool
        self._task: asyncio.Task[None] | None = None
        self._spool = spool
        self._retry = retry
        self._prefix = secrets.token_hex(6)  # this process's spool keys
        self.node: str | None = None  # the cluster node's name, written in each CDR
        self.spooled = 0  # operations waiting in the spool (stats)
        self.down_since: float | None = None  # loop time the database was found unreachable

    def open(self, token: int, fields: dict[str, Any]) -> None:
        if self.node is not None:
            fields = {**fields, "node": self.node}
        self._queue.put_nowait(("open", token, fields))

    def answer(self, token: int, at: float) -> None:
        """The answer time, written when the call is answered (in order with the open
        and the close, spooled like them): a node killed mid-call leaves an answered
        call that the survivor's takeover can give a duration."""
        self._queue.put_nowait(("answer", token, {"answer_ts": at}))

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

    # -- the spool -------------------------------------------------------------------

    def pending(self) -> list[dict[str, Any]]:
        """The spool's operations, oldest first (a torn last line, from a crash in the
        middle of a write, is skipped: its call had not been acknowledged)."""
        if self._spool is None or not self._spool.exists():
            return []
        ops = []
        for line in self._spool.read_text().splitlines():
            with contextlib.suppress(ValueError):
                op = json.loads(line)
                if isinstance(op, dict):
                    ops.append(op)
        return ops

    def replay(self) -> int:
        """Write the spool to the database and empty it; raises if the database is
        still unreachable. Blocking: run in a thread."""
        ops = self.pending()
        if ops:
            ids = self._store.cdr_replay(ops)
            for token, key in list(self._keys.items()):
                if key in ids:
                    self._ids[token] = ids[key]
                    del self._keys[token]
        if self._spool is not None and self._spool.exists():
            self._spool.unlink()
        self.spooled = 0
        return len(ops)

    def _append(self, op: dict[str, Any]) -> None:
        assert self._spool is not None
        line = json.dumps(op, separators=(",", ":")) + "\n"
        fd = os.open(self._spool, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        self.spooled += 1

    def _spool_op(self, op: str, token: int, fields: dict[str, Any]) -> None:
        if op == "open":
            key = self._keys[token] = f"{self._prefix}-{token}"
            self._append({"op": "open", "key": key, "fields": fields})
            return
        # an answer updates the row and leaves it open; a close forgets the call
        update = op == "answer"
        record: dict[str, Any] = {"op": "update" if update else "close", "fields": fields}
        ids, keys = self._ids, self._keys
        if (cdr_id := ids.get(token) if update else ids.pop(token, None)) is not None:
            record["id"] = cdr_id
        elif key := keys.get(token, "") if update else keys.pop(token, ""):
            record["key"] = key
        else:
            return  # its open was dropped (refused by the database): nothing to close
        self._append(record)

    # -- the writer ------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self.down_since is None:
                op, token, fields = await self._queue.get()
            else:
                try:
                    op, token, fields = await asyncio.wait_for(self._queue.get(), self._retry)
                except TimeoutError:
                    await self._try_replay()
                    continue
            try:
                if self.down_since is not None:
                    await asyncio.to_thread(self._spool_op, op, token, fields)
                elif op == "open":
                    self._ids[token] = await asyncio.to_thread(self._store.cdr_open, fields)
                elif (cdr_id := self._ids.get(token)) is not None:
                    await asyncio.to_thread(self._store.cdr_close, cdr_id, fields)
                    if op == "close":
                        del self._ids[token]
                elif token in self._keys:  # opened in a spool not written yet
                    await asyncio.to_thread(self._spool_op, op, token, fields)
                    await self._try_replay()
            except Exception as exc:
                if self._spool is not None and unreachable(exc):
                    if self.down_since is None:
                        self.down_since = loop.time()
                        log.warning(
                            "database unreachable: CDRs are kept in the local spool",
                            spool=str(self._spool),
                        )
                    await asyncio.to_thread(self._spool_op, op, token, fields)
                else:
                    if op != "answer":  # a refused answer time: the close still comes
                        self._ids.pop(token, None)
                    log.exception("writing a CDR failed", op=op)
            finally:
                self._queue.task_done()

    async def _try_replay(self) -> None:
        try:
            written = await asyncio.to_thread(self.replay)
        except Exception as exc:
            if not unreachable(exc):
                log.exception("writing the CDR spool failed; it is kept and tried again")
            return
        if self.down_since is not None:
            log.info("database reachable again: CDR spool written", operations=written)
        self.down_since = None
