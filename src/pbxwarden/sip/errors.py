"""Errors raised by the SIP core; each carries the SIP status a server should answer with."""

from __future__ import annotations


class SipError(Exception):
    """Base class for protocol errors in the SIP core."""


class ParseError(SipError):
    """A message or header violates RFC 3261; ``status`` is the response to send."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
