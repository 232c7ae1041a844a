#!/usr/bin/env python3
"""TCP connection exhaustion for bench/flood.py: an idle-connection flood and a phone
that registers over TCP meanwhile.  Standard library only.

As a program it is the flood (a process of its own, so that its CPU does not slow the
phone's measurement):

    python3 bench/tcp_exhaustion.py HOST PORT TOTAL SOURCES SECONDS REOPEN_RATE OPEN_RATE

opens TOTAL idle connections round robin from SOURCES (comma-separated loopback
addresses), OPEN_RATE per second (0: as fast as it can), prints ``opened`` on stdout,
then until SECONDS after its start reopens those the server closed, at most
REOPEN_RATE per second (a persistent attacker), and prints a JSON summary.  Every
socket is closed before it exits.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import resource
import selectors
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass

CHALLENGE_PARAM = re.compile(r'(\w+)=(?:"([^"]*)"|([^,\s]*))')


def raise_open_files(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


# ------------------------------------------------------------------------ flood


def _open(source: str, dest: tuple[str, int]) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        sock.bind((source, 0))
        code = sock.connect_ex(dest)
        if code not in (0, errno.EINPROGRESS):
            raise OSError(code, os.strerror(code))
    except OSError:
        sock.close()
        raise
    return sock


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError as exc:
        return exc.errno not in (errno.ENOTCONN, errno.EAGAIN)


def flood(
    dest: tuple[str, int],
    total: int,
    sources: list[str],
    seconds: float,
    reopen_rate: float,
    open_rate: float = 0.0,
) -> dict[str, float]:
    raise_open_files(total + 256)
    socks: dict[int, socket.socket] = {}  # slot -> socket
    watch = selectors.DefaultSelector()  # epoll: a closed connection becomes readable
    start = time.monotonic()
    summary = {"opened": 0.0, "open_errors": 0.0, "reopened": 0.0, "closed_by_server": 0.0}

    def open_slot(slot: int) -> bool:
        try:
            sock = _open(sources[slot % len(sources)], dest)
        except OSError:
            summary["open_errors"] += 1
            return False
        socks[slot] = sock
        watch.register(sock, selectors.EVENT_READ, slot)
        return True

    try:
        for slot in range(total):
            if open_rate > 0 and slot % 50 == 0:  # paced: the first connections wait for none
                time.sleep(max(0.0, start + slot / open_rate - time.monotonic()))
            open_slot(slot)
        summary["opened"] = len(socks)
        summary["open_seconds"] = time.monotonic() - start
        print("opened", flush=True)
        end = start + seconds
        budget, last = 0.0, time.monotonic()
        waiting: deque[int] = deque()  # closed by the server, reopened as the rate allows
        while (now := time.monotonic()) < end:
            for key, _ in watch.select(timeout=0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if not _closed(sock):
                    with contextlib.suppress(OSError):
                        sock.recv(65536)  # something to read (not expected): discard it
                else:
                    summary["closed_by_server"] += 1
                    watch.unregister(sock)
                    sock.close()
                    del socks[key.data]
                    waiting.append(key.data)
            budget = min(reopen_rate, budget + (now - last) * reopen_rate)
            last = now
            while waiting and budget >= 1:
                budget -= 1
                if open_slot(waiting.popleft()):
                    summary["reopened"] += 1
        summary["held_at_end"] = sum(1 for s in socks.values() if not _closed(s))
    finally:
        watch.close()
        for sock in socks.values():
            sock.close()
    return summary


# ------------------------------------------------------------------------ phone


@dataclass
class Registration:
    status: int  # 0: no final answer (timeout, closed connection)
    seconds: float
    error: str = ""


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def _authorization(challenge: str, user: str, password: str, uri: str) -> str:
    params = {
        m.group(1).lower(): m.group(2) or m.group(3) for m in CHALLENGE_PARAM.finditer(challenge)
    }
    realm, nonce = params["realm"], params["nonce"]
    ha1 = _md5(f"{user}:{realm}:{password}")
    ha2 = _md5(f"REGISTER:{uri}")
    cnonce, nc = os.urandom(8).hex(), "00000001"
    parts = [f'username="{user}"', f'realm="{realm}"', f'nonce="{nonce}"', f'uri="{uri}"']
    if "auth" in params.get("qop", "").split(","):
        response = _md5(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")
        parts += ["qop=auth", f"nc={nc}", f'cnonce="{cnonce}"']
    else:
        response = _md5(f"{ha1}:{nonce}:{ha2}")
    parts += [f'response="{response}"', "algorithm=MD5"]
    if "opaque" in params:
        parts.append(f'opaque="{params["opaque"]}"')
    return "Digest " + ", ".join(parts)


def _read_final(sock: socket.socket, buf: bytearray) -> tuple[int, str]:
    """The next final response on the stream: (status, its WWW-Authenticate)."""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = bytes(buf[:end]).decode("utf-8", "replace")
            length = re.search(r"(?im)^(?:content-length|l)\s*:\s*(\d+)", head)
            total = end + 4 + (int(length.group(1)) if length else 0)
            if len(buf) >= total:
                del buf[:total]
                status = int(head.split(" ", 2)[1])
                if status >= 200:
                    auth = re.search(r"(?im)^www-authenticate\s*:\s*(.*)$", head)
                    return status, auth.group(1) if auth else ""
                continue
        data = sock.recv(65535)
        if not data:
            raise ConnectionError("closed by the server")
        buf += data


_CALL_ID = f"bench-{os.getpid()}-{time.monotonic_ns()}"
_cseq = 0


def register_tcp(
    server: tuple[str, int], source: str, user: str, password: str, timeout: float = 5.0
) -> Registration:
    """One registration on a fresh TCP connection: REGISTER, 401, REGISTER, 200.

    The same Call-ID and Contact every time, with a growing CSeq: a phone refreshing its
    one binding after reconnecting (a new Contact each time would hit max_contacts)."""
    global _cseq
    start = time.monotonic()
    host, port = server
    uri = f"sip:{host}:{port}"
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.bind((source, 0))
            sock.connect(server)
            local = sock.getsockname()
            buf = bytearray()
            status, challenge = 0, ""
            for attempt in (1, 2):
                _cseq += 1
                branch = "z9hG4bK" + os.urandom(8).hex()
                lines = [
                    f"REGISTER {uri} SIP/2.0",
                    f"Via: SIP/2.0/TCP {local[0]}:{local[1]};branch={branch};rport",
                    "Max-Forwards: 70",
                    f"From: <sip:{user}@{host}>;tag=b{_cseq}",
                    f"To: <sip:{user}@{host}>",
                    f"Call-ID: {_CALL_ID}",
                    f"CSeq: {_cseq} REGISTER",
                    f"Contact: <sip:{user}@{source}:5999;transport=tcp>",
                    "Expires: 600",
                ]
                if attempt == 2:
                    lines.append(f"Authorization: {_authorization(challenge, user, password, uri)}")
                lines += ["Content-Length: 0", "", ""]
                sock.sendall("\r\n".join(lines).encode())
                status, challenge = _read_final(sock, buf)
                if status != 401:
                    break
            return Registration(status, time.monotonic() - start)
    except (OSError, ValueError, IndexError, KeyError) as exc:
        return Registration(0, time.monotonic() - start, f"{type(exc).__name__}: {exc}")


def main(argv: list[str]) -> int:
    host, port, total, sources, seconds, reopen_rate, open_rate = argv
    summary = flood(
        (host, int(port)),
        int(total),
        sources.split(","),
        float(seconds),
        float(reopen_rate),
        float(open_rate),
    )
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
