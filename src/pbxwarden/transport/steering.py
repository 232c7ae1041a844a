"""One UDP port, several sockets: the kernel steers REGISTERs to the registrar workers.

Why: with ``sip.workers`` every REGISTER used to cross the main process (read, firewall
pre-check, hand-over, and the answer's way back), about 60 µs of the main process's CPU
per registration. Here the main process and each worker hold a socket of their own,
bound to the same address with ``SO_REUSEPORT``, and a classic BPF program attached to
the group (``SO_ATTACH_REUSEPORT_CBPF``, Linux 4.5+) chooses the socket per datagram:

- a datagram whose payload starts with ``REGI`` goes to worker socket
  ``1 + hash(source IP) % N``: one source's REGISTERs always meet one worker (its
  retransmissions, its per-source flood count, its enumeration count);
- everything else (INVITE, OPTIONS, SUBSCRIBE, ACK, BYE, responses to our own
  requests...) goes to socket 0, the main process's, unchanged: its source, its kernel
  arrival stamp, the admission lanes of :mod:`pbxwarden.transport.ingress`.

The hash is by source address alone, not the 4-tuple the kernel would use without a
program: the firewall counts per address. A worker that reads a REGISTER of a user
another worker owns forwards it there (``registrar_workers``), so ownership by user is
kept. Without the program (an old kernel, another OS) nothing of this is used: the
main process reads everything and hands REGISTERs over, as before.

The sockets of a group are created here, by the main process, in order (a socket's
index in the group is its place in the binding order) and stay open as long as the
main process listens: a worker that restarts is handed its socket again, and the
order never changes. The standard library has no BPF helper; the program is 15
instructions written out below.
"""

from __future__ import annotations

import ctypes
import socket
import struct

from pbxwarden.transport.network import grow_receive_buffer

SO_ATTACH_REUSEPORT_CBPF = 51  # Linux <asm-generic/socket.h>
_SKF_NET_OFF = -0x100000  # classic BPF: offsets from the network header

# struct sock_filter: u16 code, u8 jt, u8 jf, u32 k
_LD_W_ABS, _LD_B_ABS = 0x20, 0x30
_JEQ_K, _JA = 0x15, 0x05
_RSH_K, _XOR_X, _MOD_K, _ADD_K = 0x74, 0xAC, 0x94, 0x04
_TAX, _RET_A, _RET_K = 0x07, 0x16, 0x06
_REGI = int.from_bytes(b"REGI", "big")


def steering_program(workers: int) -> list[tuple[int, int, int, int]]:
    """The classic BPF program: the socket index for one datagram (its UDP payload)."""
    if not 0 < workers < 255:
        raise ValueError("workers must be between 1 and 254")
    net = _SKF_NET_OFF
    return [
        (_LD_W_ABS, 0, 0, 0),  # 0: A = first 4 bytes of the payload (short: returns 0)
        (_JEQ_K, 0, 12, _REGI),  # 1: not "REGI": to 14, socket 0
        (_LD_B_ABS, 0, 0, net & 0xFFFFFFFF),  # 2: A = IP version and header length
        (_RSH_K, 0, 0, 4),  # 3
        (_JEQ_K, 0, 2, 6),  # 4: IPv6: 5, IPv4 (also mapped on a dual-stack socket): 7
        (_LD_W_ABS, 0, 0, (net + 20) & 0xFFFFFFFF),  # 5: last word of the IPv6 source
        (_JA, 0, 0, 1),  # 6: to 8
        (_LD_W_ABS, 0, 0, (net + 12) & 0xFFFFFFFF),  # 7: the IPv4 source
        (_TAX, 0, 0, 0),  # 8: X = A
        (_RSH_K, 0, 0, 16),  # 9
        (_XOR_X, 0, 0, 0),  # 10: A = source ^ (source >> 16)
        (_MOD_K, 0, 0, workers),  # 11
        (_ADD_K, 0, 0, 1),  # 12
        (_RET_A, 0, 0, 0),  # 13: worker socket 1..N
        (_RET_K, 0, 0, 0),  # 14: the main process's socket
    ]


def worker_socket_for(host: str, workers: int) -> int:
    """What :func:`steering_program` computes, for tests and diagnostics: 1..N."""
    packed = socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    if len(packed) == 16 and packed[:12] == b"\0" * 10 + b"\xff\xff":
        packed = packed[12:]  # IPv4-mapped: the kernel sees the IPv4 header
    word = int.from_bytes(packed[-4:], "big")
    return 1 + ((word ^ (word >> 16)) % workers)


def attach(sock: socket.socket, workers: int) -> None:
    """Attach the program to the group ``sock`` belongs to; OSError where unsupported."""
    program = steering_program(workers)
    code = b"".join(struct.pack("=HBBI", *insn) for insn in program)
    buffer = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("@HP", len(program), ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


def bind_group(host: str, port: int, workers: int) -> list[socket.socket] | None:
    """Socket 0 (the main process's) and one per worker, bound to ``host:port`` in one
    ``SO_REUSEPORT`` group with the program attached; None where that cannot be done
    (the caller binds one socket as before). OSError when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if not hasattr(socket, "SO_REUSEPORT"):
        return None
    # A port already bound by anyone (another pbxwarden included) must fail as it would
    # without SO_REUSEPORT, not silently share the traffic: probe it the plain way.
    if port:
        probe = socket.socket(family, socket.SOCK_DGRAM)
        try:
            probe.bind((host, port))
        finally:
            probe.close()
    sockets: list[socket.socket] = []
    bound = False
    try:
        for _ in range(workers + 1):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.setblocking(False)
            sock.bind((host, port))
            port = sock.getsockname()[1]  # port 0: the others join the one given
        bound = True
        attach(sockets[0], workers)
    except OSError:
        for sock in sockets:
            sock.close()
        if not bound:  # the port is taken (or the address is not ours)
            raise
        return None  # no program: the kernel would spread by 4-tuple; not used
    for sock in sockets:  # each takes a storm's share, as the one socket did
        grow_receive_buffer(sock)
    return sockets
