"""TCP/TLS connections through the real transport, on real loopback sockets, under the
stdlib loop and uvloop (which the server uses when installed)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from pbxwarden.sip.transaction import Address
from pbxwarden.transport.connections import ConnectionLimits
from pbxwarden.transport.network import SourceKind, Transports, tls_context

LOOPS = ["asyncio"]
with contextlib.suppress(ImportError):
    import uvloop  # noqa: F401

    LOOPS.append("uvloop")

OPTIONS = b"OPTIONS sip:x SIP/2.0\r\nCall-ID: 1\r\nContent-Length: 0\r\n\r\n"


def run(kind: str, test: Callable[[], Awaitable[None]]) -> None:
    if kind == "uvloop":
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    else:
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(asyncio.wait_for(test(), 30))


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def closed_by_peer(reader: asyncio.StreamReader, timeout: float = 10.0) -> bool:
    """True once the server has closed (EOF or reset) within ``timeout``."""
    try:
        while await asyncio.wait_for(reader.read(4096), timeout):
            pass
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return True


class Server:
    """A Transports listening on TCP (and TLS) that confirms every message, as the
    server does for a request that parses and passes the firewall."""

    def __init__(
        self,
        limits: ConnectionLimits,
        kinds: dict[str, SourceKind] | None = None,
    ) -> None:
        self.received: list[tuple[bytes, Address]] = []
        self.reported: list[tuple[str, int]] = []
        self.kinds = kinds or {}
        self.transports = Transports(
            self.on_message,
            limits,
            classify=lambda host: self.kinds.get(host, SourceKind.NORMAL),
            over_limit=lambda host, count: self.reported.append((host, count)),
        )

    def on_message(self, data: bytes, source: Address) -> None:
        self.received.append((data, source))
        self.transports.confirm(source)

    async def start(self, tls: ssl.SSLContext | None = None) -> int:
        await self.transports.listen_stream("127.0.0.1", 0, tls)
        return self.transports.bound["TLS" if tls else "TCP"][1]


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def connect(port: int, source: str, tls: ssl.SSLContext | None = None) -> Conn:
    return await asyncio.open_connection(
        "127.0.0.1", port, local_addr=(source, 0), ssl=tls, server_hostname=None if not tls else ""
    )


async def refused(port: int, source: str, data: bytes = b"") -> bool:
    """Connect and see the server close at once (the reset may beat the connect)."""
    try:
        reader, writer = await connect(port, source)
    except ConnectionResetError:
        return True
    try:
        if data:
            with contextlib.suppress(OSError):
                writer.write(data)
        return await closed_by_peer(reader)
    finally:
        writer.close()


@pytest.mark.parametrize("kind", LOOPS)
def test_banned_source_is_refused_before_anything_is_read(kind: str) -> None:
    async def test() -> None:
        server = Server(ConnectionLimits(), {"127.0.0.2": SourceKind.BANNED})
        port = await server.start()
        try:
            assert await refused(port, "127.0.0.2", OPTIONS)
            assert server.transports.counters.refused_banned == 1
            assert server.received == [] and len(server.transports.table) == 0
            _reader, writer = await connect(port, "127.0.0.3")  # anyone else is served
            writer.write(OPTIONS)
            await until(lambda: len(server.received) == 1)
            assert server.received[0][1].host == "127.0.0.3"
            writer.close()
        finally:
            await server.transports.close()

    run(kind, test)


@pytest.mark.parametrize("kind", LOOPS)
def test_a_source_over_its_limit_is_refused_and_reported(kind: str) -> None:
    async def test() -> None:
        limits = ConnectionLimits(per_source=3, trusted_per_source=5)
        server = Server(limits, {"127.0.0.4": SourceKind.TRUSTED})
        port = await server.start()
        conns: list[Conn] = []
        try:
            for _ in range(3):
                conns.append(await connect(port, "127.0.0.3"))
            await until(lambda: server.transports.table.source_count("127.0.0.3") == 3)
            assert await refused(port, "127.0.0.3")
            assert server.reported == [("127.0.0.3", 3)]
            for _reader, writer in conns:  # the first three still work
                writer.write(OPTIONS)
            await until(lambda: len(server.received) == 3)
            for _ in range(5):  # a trusted source has the higher limit
                conns.append(await connect(port, "127.0.0.4"))
            await until(lambda: server.transports.table.source_count("127.0.0.4") == 5)
            assert await refused(port, "127.0.0.4")
            assert server.reported[-1] == ("127.0.0.4", 5)
            # What the server does on a ban: every connection of the source is closed.
            assert server.transports.drop_source("127.0.0.3") == 3
            for reader, _writer in conns[:3]:
                assert await closed_by_peer(reader)
            assert server.transports.table.source_count("127.0.0.3") == 0
            assert server.transports.table.source_count("127.0.0.4") == 5
        finally:
            for _reader, writer in conns:
                writer.close()
            await server.transports.close()

    run(kind, test)


@pytest.mark.parametrize("kind", LOOPS)
def test_a_connection_without_a_valid_request_is_closed_at_its_deadline(kind: str) -> None:
    async def test() -> None:
        server = Server(ConnectionLimits(new_timeout=0.6, idle_timeout=30.0))
        port = await server.start()
        conns: list[Conn] = []
        try:
            idle = await connect(port, "127.0.0.5")
            drip = await connect(port, "127.0.0.6")
            phone = await connect(port, "127.0.0.7")
            conns += [idle, drip, phone]
            phone[1].write(OPTIONS)
            await until(lambda: len(server.received) == 1)
            start = asyncio.get_running_loop().time()
            for char in b"OPTIONS sip:x SIP/2.0\r\n":  # a slow drip never completes
                drip[1].write(bytes([char]))
                await asyncio.sleep(0.02)
                if drip[1].is_closing() or drip[0].at_eof():
                    break
            assert await closed_by_peer(idle[0]) and await closed_by_peer(drip[0])
            assert asyncio.get_running_loop().time() - start < 5.0
            assert server.transports.counters.expired == 2
            phone[1].write(b"\r\n\r\n")  # established: still there, keep-alive answered
            assert await asyncio.wait_for(phone[0].readexactly(2), 5) == b"\r\n"
            assert len(server.transports.table) == 1
        finally:
            for _reader, writer in conns:
                writer.close()
            await server.transports.close()

    run(kind, test)


@pytest.mark.parametrize("kind", LOOPS)
def test_a_full_table_makes_room_for_a_phone_by_closing_idle_newcomers(kind: str) -> None:
    async def test() -> None:
        server = Server(ConnectionLimits(max_connections=16, per_source=4, new_timeout=30.0))
        port = await server.start()
        conns: list[Conn] = []
        try:
            phone = await connect(port, "127.0.0.9")
            phone[1].write(OPTIONS)
            await until(lambda: len(server.received) == 1)
            for i in range(15):
                conns.append(await connect(port, f"127.0.1.{i // 4 + 1}"))
            await until(lambda: len(server.transports.table) == 16)
            late = await connect(port, "127.0.0.10")  # full: the oldest idle one goes
            late[1].write(OPTIONS)
            await until(lambda: len(server.received) == 2)
            assert await closed_by_peer(conns[0][0])
            assert server.transports.counters.evicted == 1
            phone[1].write(OPTIONS)  # the established phone was not touched
            await until(lambda: len(server.received) == 3)
            conns += [phone, late]
        finally:
            for _reader, writer in conns:
                writer.close()
            await server.transports.close()

    run(kind, test)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI missing")
@pytest.mark.parametrize("kind", LOOPS)
def test_a_tls_handshake_holds_a_slot_only_until_the_deadline(kind: str, tmp_path: Path) -> None:
    from tests.integration.test_tls import make_cert

    cert, key = make_cert(tmp_path)
    client = ssl.create_default_context(cafile=str(cert))
    client.check_hostname = False

    async def test() -> None:
        server = Server(ConnectionLimits(new_timeout=0.6, per_source=2))
        port = await server.start(tls_context(str(cert), str(key)))
        conns: list[Conn] = []
        try:
            stuck = [await connect(port, "127.0.0.11") for _ in range(2)]  # no handshake
            conns += stuck
            await until(lambda: len(server.transports.table) == 2)
            # Counted during the handshake: the source is at its limit already.
            assert await refused(port, "127.0.0.11")
            assert server.reported == [("127.0.0.11", 2)]
            for reader, _writer in stuck:
                assert await closed_by_peer(reader, 5.0)
            assert len(server.transports.table) == 0
            phone = await connect(port, "127.0.0.12", client)
            conns.append(phone)
            phone[1].write(OPTIONS)
            await until(lambda: len(server.received) == 1)
            assert server.received[0][1].transport == "TLS"
            passed = asyncio.get_running_loop().time() + 1.0
            await until(lambda: asyncio.get_running_loop().time() > passed)  # its deadline
            phone[1].write(OPTIONS)
            await until(lambda: len(server.received) == 2)
        finally:
            for _reader, writer in conns:
                writer.close()
            await server.transports.close()

    run(kind, test)


LIMIT_PROBE = """
import asyncio, resource, sys
from pbxwarden.transport.connections import ConnectionLimits
from pbxwarden.transport.network import Transports

async def main():
    transports = Transports(lambda data, source: None, ConnectionLimits(max_connections=4096))
    await transports.listen_stream("127.0.0.1", 0)
    print(transports.table.limits.max_connections, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    await transports.close()

asyncio.run(main())
"""


@pytest.mark.parametrize(
    ("soft", "hard", "cap", "raised"),
    [(256, 16_384, 4096, 4096 + 512), (256, 2048, 2048 - 512, 2048), (8192, 8192, 4096, 8192)],
)
def test_the_open_files_limit_is_raised_to_fit_the_cap_or_the_cap_lowered(
    soft: int, hard: int, cap: int, raised: int
) -> None:
    import resource
    import subprocess
    import sys

    own_hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if own_hard != resource.RLIM_INFINITY and own_hard < hard:
        pytest.skip(f"hard limit {own_hard} below {hard}")

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    out = subprocess.run(
        [sys.executable, "-c", LIMIT_PROBE],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=limit,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1].split() == [str(cap), str(raised)]
    if cap < 4096:
        assert "max_connections lowered" in out.stdout + out.stderr
