"""Admission of new calls over UDP: what is already going on is served before what is new.

Past its capacity a B2BUA must choose. Serving datagrams in arrival order lets new
INVITEs delay the ACKs, BYEs and answers of calls already admitted, which then time out
and retransmit: every call fails a little, and throughput collapses (measured at 60 %
of the sustained rate at twice that rate). So datagrams are sorted as they are read:

- the *now* lane: every response, every request that is not a new call (ACK, BYE,
  re-INVITE, REGISTER, OPTIONS...), and an INVITE that answers our challenge (it carries
  credentials: the second half of an attempt already admitted), handled at once;
- the *new-call* lane, first in first out: INVITEs without a To tag or credentials, and
  CANCELs (so that a CANCEL never overtakes its INVITE). Served only when the socket
  has nothing more to read (nothing of the calls in progress waits); an INVITE that
  waited past ``wait`` is shed (503) instead. Its wait counts from its arrival in the
  socket's buffer (the kernel stamps it, ``SO_TIMESTAMPNS``): after a stall, a backlog
  of old INVITEs is refused, not served late.

A CANCEL is never shed. Past ``limit`` queued, a new INVITE is shed as it arrives. A
forged ``Authorization`` buys no more than the firewall's per-source limits allow: it is
answered like any request, and its failures count.
Pure and clock-free (times come from the caller); the reader is in
:mod:`pbxwarden.transport.network`, the 503 in the server, which still runs the
firewall on what it sheds. The module is written by hand because it is a few lines of
policy specific to SIP, not a queueing library's job.
"""

from __future__ import annotations

import re
from collections import deque
from enum import Enum

from pbxwarden.sip.transaction import Address

_TO = re.compile(rb"\r\n(?:to|t)[ \t]*:([^\r\n]*)", re.IGNORECASE)
_TAG = re.compile(rb";[ \t]*tag[ \t]*=", re.IGNORECASE)
_CREDENTIALS = re.compile(rb"\r\n(?:proxy-)?authorization[ \t]*:", re.IGNORECASE)


class Lane(Enum):
    NOW = "now"  # handle it at once
    QUEUED = "queued"  # waits in the new-call lane
    SHED = "shed"  # a new INVITE over the lane's limit: answer 503 at once


def new_call(data: bytes) -> bool:
    """A CANCEL, or an INVITE that starts a call (no tag in To) and answers no challenge;
    bytes only, no parse."""
    if data.startswith(b"CANCEL "):
        return True
    if not data.startswith(b"INVITE "):
        return False
    head = data.split(b"\r\n\r\n", 1)[0]
    to = _TO.search(head)
    if to is not None and _TAG.search(to.group(1)) is not None:
        return False
    return _CREDENTIALS.search(head) is None


def has_credentials(data: bytes) -> bool:
    head = data.split(b"\r\n\r\n", 1)[0]
    return _CREDENTIALS.search(head) is not None


class Ingress:
    """The new-call lane and its admission rule (see the module docstring)."""

    def __init__(self, wait: float = 0.25, limit: int = 4096) -> None:
        self.wait = wait
        self.limit = limit
        self._lane: deque[tuple[float, bytes, Address]] = deque()
        self.shed = 0

    def __len__(self) -> int:
        return len(self._lane)

    def offer(self, data: bytes, source: Address, now: float) -> Lane:
        if self.wait <= 0 or not new_call(data):
            return Lane.NOW
        if len(self._lane) >= self.limit and not data.startswith(b"CANCEL "):
            self.shed += 1
            return Lane.SHED
        self._lane.append((now, data, source))
        return Lane.QUEUED

    def take(self, now: float, admit: bool = True) -> tuple[bytes, Address, bool] | None:
        """The oldest waiting datagram and whether to shed it, or None when none waits.
        ``admit`` False (calls in progress still wait to be read): only one to shed."""
        if not self._lane:
            return None
        arrived, data, source = self._lane[0]
        shed = now - arrived > self.wait and data.startswith(b"INVITE ")
        if not shed and not admit:
            return None
        self._lane.popleft()
        if shed:
            self.shed += 1
        return data, source, shed
