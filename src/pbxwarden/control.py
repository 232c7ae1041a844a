"""A local control channel: the CLI asks the running server about live state.

Live calls exist only in the server's memory, so ``pbxwarden calls`` cannot read
them from the database. The server listens on a Unix socket in the data directory
(owner-only, like the database), one JSON request and one JSON answer per line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

SOCKET_NAME = "control.sock"
MAX_LINE = 64 * 1024

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class ControlError(Exception):
    """The server could not be asked (not running, or it answered an error)."""


async def serve_control(data_dir: Path, handler: Handler) -> asyncio.AbstractServer:
    path = data_dir / SOCKET_NAME
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a stale socket from a crashed run

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            try:
                request = json.loads(line[:MAX_LINE])
                if not isinstance(request, dict):
                    raise ValueError("request must be a JSON object")
                answer = await handler(request)
            except (ValueError, KeyError) as exc:
                answer = {"error": str(exc)}
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        finally:
            writer.close()

    old = os.umask(0o077)
    try:
        server = await asyncio.start_unix_server(client, path=str(path), limit=MAX_LINE)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    return server


def ask(data_dir: Path, request: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """Blocking client for the CLI."""
    path = data_dir / SOCKET_NAME
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(json.dumps(request).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError as exc:
        raise ControlError(f"the server is not running for {data_dir} ({exc.strerror})") from None
    try:
        answer = json.loads(data)
    except ValueError:
        raise ControlError("the server sent an unreadable answer") from None
    if not isinstance(answer, dict):
        raise ControlError("the server sent an unreadable answer")
    if "error" in answer:
        raise ControlError(str(answer["error"]))
    return answer
