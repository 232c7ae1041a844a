"""SIP option tags (RFC 3261 8.2.2.3, 19.2): what the PBX itself supports, and what its B
legs may offer on a caller's behalf.

The B2BUA is the UAS of the caller's INVITE and the UAC of every leg it places, so an
extension the caller requires must be one the PBX performs itself. Session timers
(RFC 4028, :mod:`pbxwarden.pbx.session_timer`) are, on the caller's leg, and so is
``Replaces`` (RFC 3891: a busy lamp key's pickup, :mod:`pbxwarden.pbx.pickup`); reliable
provisional responses (100rel, RFC 3262) are not built yet, so a ``Require`` naming
them, or anything else unknown, is answered 420 with ``Unsupported``. Neither is
offered to a callee: it would send reliable 180s that nobody PRACKs (the call would die
after 32 s), or expect the PBX to refresh a session it does not refresh.
"""

from __future__ import annotations

from pbxwarden.sip.message import Request

SUPPORTED: frozenset[str] = frozenset({"timer", "replaces"})  # option tags the PBX performs itself
NOT_OFFERED = frozenset({"100rel", "timer"})  # never passed on in a B leg's Supported


def _tags(values: list[str]) -> list[str]:
    return [t.strip() for v in values for t in v.split(",") if t.strip()]


def unsupported(request: Request) -> list[str]:
    """The option tags in ``Require`` the PBX does not support (empty: go on)."""
    seen: list[str] = []
    for tag in _tags(request.headers.get_all("Require")):
        if tag.lower() not in SUPPORTED and tag not in seen:
            seen.append(tag[:64])
    return seen[:16]


def offered(supported: str | None) -> str | None:
    """A caller's ``Supported`` as a B leg may carry it: without what the PBX cannot do
    on that leg. None when nothing is left."""
    if supported is None:
        return None
    kept = [t for t in _tags([supported]) if t.lower() not in NOT_OFFERED]
    return ", ".join(kept) or None
