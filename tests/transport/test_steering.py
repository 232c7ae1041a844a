"""The kernel's steering of one UDP port over the main process's and the workers' sockets
(transport/steering.py), against real sockets on loopback."""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator

import pytest

from pbxwarden.transport.steering import bind_group, steering_program, worker_socket_for

WORKERS = 2


@pytest.fixture
def group() -> Iterator[list[socket.socket]]:
    sockets = bind_group("127.0.0.1", 0, WORKERS)
    if sockets is None:
        pytest.skip("SO_ATTACH_REUSEPORT_CBPF unsupported here")
    try:
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def landing(group: list[socket.socket], payload: bytes, source: str) -> int:
    """Which socket of the group ``payload`` sent from ``source`` arrives on."""
    port = group[0].getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.bind((source, 0))
        client.sendto(payload, ("127.0.0.1", port))
        readable, _, _ = select.select(group, [], [], 5.0)
    assert len(readable) == 1, readable
    sock = readable[0]
    data, addr = sock.recvfrom(65535)
    assert (data, addr[0]) == (payload, source)  # unchanged, with its real source
    return group.index(sock)


def test_one_port_for_all_sockets_of_the_group(group: list[socket.socket]) -> None:
    assert len(group) == WORKERS + 1
    assert len({s.getsockname() for s in group}) == 1


@pytest.mark.parametrize("source", ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"])
def test_registers_go_to_a_worker_by_source_and_the_rest_to_the_main_socket(
    group: list[socket.socket], source: str
) -> None:
    register = b"REGISTER sip:127.0.0.1 SIP/2.0\r\nTo: <sip:1000@127.0.0.1>\r\n\r\n"
    expected = worker_socket_for(source, WORKERS)
    assert 1 <= expected <= WORKERS
    for _ in range(3):  # a retransmission meets the same socket, hence the same worker
        assert landing(group, register, source) == expected
    for other in (
        b"INVITE sip:2000@127.0.0.1 SIP/2.0\r\n\r\n",
        b"OPTIONS sip:127.0.0.1 SIP/2.0\r\n\r\n",
        b"SUBSCRIBE sip:2000@127.0.0.1 SIP/2.0\r\n\r\n",
        b"SIP/2.0 200 OK\r\nCSeq: 1 INVITE\r\n\r\n",  # an answer to our own request
        b"RE",  # shorter than the four bytes the program reads
        b"\r\n\r\n",
    ):
        assert landing(group, other, source) == 0


def test_sources_are_spread_over_the_workers(group: list[socket.socket]) -> None:
    chosen = {worker_socket_for(f"127.0.0.{i}", WORKERS) for i in range(1, 9)}
    assert chosen == {1, 2}


def test_a_taken_port_is_refused_not_shared() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # even so
        other.bind(("127.0.0.1", 0))
        with pytest.raises(OSError):
            bind_group("127.0.0.1", other.getsockname()[1], WORKERS)


def test_ipv6_sources_are_steered_too() -> None:
    try:
        sockets = bind_group("::1", 0, WORKERS)
    except OSError:
        pytest.skip("no IPv6 loopback")
    if sockets is None:
        pytest.skip("SO_ATTACH_REUSEPORT_CBPF unsupported here")
    try:
        port = sockets[0].getsockname()[1]
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as client:
            client.sendto(b"REGISTER sip:x SIP/2.0\r\n\r\n", ("::1", port))
            readable, _, _ = select.select(sockets, [], [], 5.0)
        assert [sockets.index(s) for s in readable] == [worker_socket_for("::1", WORKERS)]
    finally:
        for sock in sockets:
            sock.close()


def test_program_bounds() -> None:
    assert len(steering_program(1)) == 15
    with pytest.raises(ValueError):
        steering_program(0)
