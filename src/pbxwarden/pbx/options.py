"""SIP option tags (RFC 3261 8.2.2.3, 19.2): what the PBX itself supports, and what its B
legs may offer on a caller's behalf.

The B2BUA is the UAS of the caller's INVITE and the UAC of every leg it places, so an
extension the caller requires must be one the PBX performs itself. Session timers
(RFC 4028, :mod:`pbxwarden.pbx.session_timer`) are, on the caller's leg, and so are
``Replaces`` (RFC 3891: a busy lamp key's pickup, :mod:`pbxwarden.pbx.pickup`) and
reliable provisional responses (``100rel``, RFC 3262, :mod:`pbxwarden.pbx.prack`):
a ``Require`` naming anything else is answered 420 with ``Unsupported``.

On a B leg the PBX offers ``100rel`` itself (it PRACKs a callee's reliable provisionals)
when its INVITE carries an offer, whatever the caller supports; it never passes on the
caller's ``timer`` (the PBX does not refresh B legs: the keep-alive watches them). In a
relayed mid-call request (a re-INVITE) neither goes on: the PBX does not PRACK
provisionals to re-INVITEs.
"""

from __future__ import annotations

from pbxwarden.sip.message import Request

# option tags the PBX performs itself
SUPPORTED: frozenset[str] = frozenset({"timer", "replaces", "100rel"})
NOT_OFFERED = frozenset({"100rel", "timer"})  # never passed on from the caller's Supported


def _tags(values: list[str]) -> list[str]:
    return [t.strip() for v in values for t in v.split(",") if t.strip()]


def unsupported(request: Request) -> list[str]:
    """The option tags in ``Require`` the PBX does not support (empty: go on)."""
    seen: list[str] = []
    for tag in _tags(request.headers.get_all("Require")):
        if tag.lower() not in SUPPORTED and tag not in seen:
            seen.append(tag[:64])
    return seen[:16]


def offered(supported: str | None, *, prack: bool = False) -> str | None:
    """A caller's ``Supported`` as a B leg may carry it: without what the PBX cannot do
    on that leg, with ``100rel`` when ``prack`` (an initial INVITE with an offer). None
    when nothing is left."""
    kept = [t for t in _tags([supported or ""]) if t.lower() not in NOT_OFFERED]
    if prack:
        kept.append("100rel")
    return ", ".join(kept) or None
