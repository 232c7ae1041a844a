"""Run the admin API with uvicorn as a task on the caller's event loop.

The SIP server owns the process: uvicorn must not install signal handlers (the caller
has its own) nor configure logging (structlog does), and a port already in use must be
an ordinary ``OSError`` for the caller, not uvicorn's ``sys.exit`` inside a task. So the
listening socket is bound here and handed to uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import structlog
import uvicorn
from starlette.types import ASGIApp

log = structlog.get_logger("pbxwarden.api")


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the caller handles SIGINT and SIGTERM


@dataclass
class HttpHandle:
    server: uvicorn.Server
    task: asyncio.Task[None]
    host: str
    port: int

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, let requests in progress finish (up to ``timeout``), return."""
        self.server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self.task), timeout)
        except TimeoutError:
            self.server.force_exit = True
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        log.info("admin API stopped")


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def start_http(app: ASGIApp, host: str, port: int) -> HttpHandle:
    """Serve ``app`` on host:port (0: any free port, see ``handle.port``) until stopped."""
    sock = _bind(host, port)
    config = uvicorn.Config(
        app,
        lifespan="on",
        log_config=None,
        access_log=False,
        proxy_headers=False,  # the peer address is the client: admin_networks and throttling
        server_header=False,
        timeout_graceful_shutdown=5,
    )
    server = _Server(config)

    async def serve() -> None:
        try:
            await server.serve(sockets=[sock])
        except SystemExit:  # uvicorn's answer to a failed start-up; never end the loop
            raise RuntimeError("the admin API failed to start (see the log)") from None
        finally:
            sock.close()

    task = asyncio.create_task(serve(), name="pbxwarden-http")
    while not server.started:
        if task.done():
            task.result()  # raises what went wrong
            raise RuntimeError("the admin API stopped during start-up")
        await asyncio.sleep(0.01)
    bound_port = int(sock.getsockname()[1])
    log.info("admin API listening", address=f"{host}:{bound_port}")
    return HttpHandle(server, task, host, bound_port)
