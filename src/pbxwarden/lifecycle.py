"""The life of a ``pbxwarden serve`` process: one per data directory, clear start-up errors.

Two servers on one data directory would share a database and each believe it owns
it: the second one's start-up closes the first one's live calls as ``interrupted``,
and both write registrations back. So ``serve`` takes an exclusive ``flock`` on
``pbxwarden.pid`` in the data directory before it changes anything and holds it until
the process ends. The kernel drops the lock when the process dies however it dies, so
a pid file left by a killed server never blocks the next start (the pid inside is only
for the message), and no timestamp or liveness guess is involved.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from pathlib import Path

PID_FILE = "pbxwarden.pid"


class AlreadyRunning(Exception):
    """Another server holds the data directory's lock."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        super().__init__(f"already running (pid {pid})" if pid else "already running")


class PidLock:
    """The exclusive lock on ``DIR/pbxwarden.pid``, with our pid written in it."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / PID_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`AlreadyRunning` (without waiting)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            pid = _read_pid(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise AlreadyRunning(pid) from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Empty the file and drop the lock (the file stays: removing it would let a
        process that opened it just before lock a file nobody else sees)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> PidLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


class ListenError(Exception):
    """A listener could not be opened; the message names its address and transport."""

    def __init__(self, host: str, port: int, what: str, cause: OSError) -> None:
        self.host, self.port, self.what, self.cause = host, port, what, cause
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        # asyncio words its own strerror ("error while attempting to bind on address
        # ('127.0.0.1', 5060): address already in use"): the errno says it plainly.
        code = cause.errno
        if code is not None and code > 0 and not isinstance(cause, socket.gaierror):
            reason = os.strerror(code).lower()
        else:
            reason = (cause.strerror or str(cause)).lower()
        super().__init__(f"cannot listen on {address} ({what}): {reason}")
