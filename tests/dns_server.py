"""A small authoritative DNS server on loopback for the tests, built from dnspython's own
message classes (no dnsmasq needed): real UDP, real DNS wire format, records the test can
change while it runs, a count of the questions asked, and names that get no answer (a
DNS outage) or SERVFAIL.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset


@dataclass
class DnsServer:
    """Answers from ``records``: (name, type) -> (ttl, [rdata text]). Names absent from
    every key get NXDOMAIN; a name with other types only, an empty answer (NOERROR)."""

    host: str = "127.0.0.1"
    records: dict[tuple[str, str], tuple[int, list[str]]] = field(default_factory=dict)
    # names (or "name/TYPE") whose questions get no answer
    silent: set[str] = field(default_factory=set)
    servfail: set[str] = field(default_factory=set)
    asked: list[tuple[str, str]] = field(default_factory=list)
    port: int = 0
    _sock: socket.socket | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def set(self, name: str, rdtype: str, ttl: int, *values: str) -> None:
        with self._lock:
            self.records[(name.lower().rstrip("."), rdtype)] = (ttl, list(values))

    def remove(self, name: str, rdtype: str) -> None:
        with self._lock:
            self.records.pop((name.lower().rstrip("."), rdtype), None)

    def count(self, name: str, rdtype: str) -> int:
        with self._lock:
            return self.asked.count((name.lower().rstrip("."), rdtype))

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((self.host, self.port))
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True, name="test-dns")
        self._thread.start()

    def stop(self) -> None:
        sock, self._sock = self._sock, None
        if self._thread is not None:
            self._thread.join(5)
        if sock is not None:
            sock.close()

    def _serve(self) -> None:
        while self._sock is not None:
            sock = self._sock
            try:
                data, peer = sock.recvfrom(4096)
            except (TimeoutError, OSError):
                continue
            try:
                reply = self._answer(dns.message.from_wire(data))
            except Exception:  # a malformed question: no answer, like a real server's drop
                continue
            if reply is not None:
                with contextlib.suppress(OSError):
                    sock.sendto(reply.to_wire(), peer)

    def _answer(self, query: dns.message.Message) -> dns.message.Message | None:
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        with self._lock:
            self.asked.append((name, rdtype))
            if name in self.silent or f"{name}/{rdtype}" in self.silent:
                return None
            reply = dns.message.make_response(query)
            reply.flags |= dns.flags.AA
            if name in self.servfail:
                reply.set_rcode(dns.rcode.SERVFAIL)
                return reply
            found = self.records.get((name, rdtype))
            if found is not None:
                ttl, values = found
                reply.answer.append(
                    dns.rrset.from_text_list(question.name, ttl, "IN", rdtype, values)
                )
            elif not any(key[0] == name for key in self.records):
                reply.set_rcode(dns.rcode.NXDOMAIN)
            return reply


@contextlib.contextmanager
def dns_server(host: str = "127.0.0.1") -> Iterator[DnsServer]:
    server = DnsServer(host)
    server.start()
    try:
        yield server
    finally:
        server.stop()
