"""What the main process and its registrar workers say to each other
(:mod:`pbxwarden.registrar_workers`, :mod:`pbxwarden.registrar_pool`): framed SIP
datagrams with their source, and marshalled reports. Kept apart so that both sides
import it and neither the other."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from pbxwarden.pbx.location import Binding
from pbxwarden.sip.transaction import Address

# Reports are marshalled: lists of str, int, float and None between two processes of
# ours over a socket pair nobody else holds (marshal is several times faster than JSON,
# and that is the main process's per-registration cost). A report event stays below a
# SIP message's 64 KB, so a packet of 64 stays below the 4 MB socket buffers.
EVENTS_PER_PACKET = 64
SYNC = b"SYNC\n"  # main -> worker: bindings; every other packet is "TRANSPORT host port\n" SIP
BANS = b"BANS\n"  # main -> worker: bans made, changed or lifted (until 0)
PEERS = b"PEERS\n"  # main -> worker: the workers ready for a hand-over
GO = b"GO\n"  # main -> worker: synced; read the steered socket now
MAX_EVENT_PACKET = 4 << 20
SYNC_TIMEOUT = 10.0  # seconds a starting worker may take to read its bindings
RESTART_DELAY = 1.0
MAX_RESTART_DELAY = 60.0


def frame(data: bytes, source: Address) -> bytes:
    head = b"%s %s %d" % (source.transport.encode(), source.host.encode(), source.port)
    if source.front is not None:  # relayed by a trusted front: the hop too
        front = source.front
        head += b" %s %s %d" % (front.transport.encode(), front.host.encode(), front.port)
    return head + b"\n" + data


def unframe(packet: bytes) -> tuple[bytes, Address]:
    head, _, data = packet.partition(b"\n")
    fields = head.split(b" ")
    front = None
    if len(fields) == 6:
        front = Address(fields[3].decode(), fields[4].decode(), int(fields[5]))
    transport, host, port = fields[:3]
    return data, Address(transport.decode(), host.decode(), int(port), front)


def binding_event(aor: str, contact: str, binding: Binding | None) -> list[Any]:
    if binding is None:
        return ["u", aor, contact]
    b = binding
    fields = (b.extension_id, contact, b.expires_at, b.q, b.call_id, b.cseq, b.source)
    return ["b", aor, *fields, b.user_agent, b.registered_at]


def binding_from_event(event: Sequence[Any]) -> tuple[str, Binding]:
    _, aor, ext_id, contact, expires_at, q, call_id, cseq, source, agent, since = event
    return str(aor), Binding(
        int(ext_id),
        str(contact),
        float(expires_at),
        None if q is None else float(q),
        str(call_id),
        int(cseq),
        str(source),
        None if agent is None else sys.intern(str(agent)),  # a few models: shared
        float(since),
    )
