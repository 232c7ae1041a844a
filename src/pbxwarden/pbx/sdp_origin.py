"""One SDP session per dialog, whoever is behind it (RFC 3264 section 8).

A phone sees one session in its dialog with the PBX: every later offer or answer must
carry the same ``o=`` username, session id and address, with the version one higher
when the description changed and the same when it did not. A B2BUA that passes SDP
through breaks this as soon as the party behind a dialog changes (a transfer, a
retrieved parked call): the transferee would get the target's ``o=`` line, a different
session, which a strict phone ignores (no new media: one-way or no audio).

So the PBX presents, in each dialog, the origin it first sent there, and counts the
version itself. Keyed by the dialog as the PBX knows it (Call-ID and the PBX's own
tag), so a leg that moves to another call keeps its session. Pure: fed the outgoing
bodies, it returns them rewritten; the server calls it for every SDP it sends. Written
here because no SDP library keeps per-dialog origin state.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pbxwarden.sip.message import Request, Response

_ORIGIN = re.compile(rb"^o=([^\r\n]*)", re.MULTILINE)

DialogKey = tuple[str, str]  # (Call-ID, the PBX's tag in the dialog)


@dataclass(slots=True)
class _Presented:
    fields: tuple[bytes, bytes, bytes, bytes, bytes]  # username sess-id net addrtype addr
    version: int
    rest: bytes  # the last description sent, without its o= line


class SdpOrigins:
    def __init__(self) -> None:
        self._dialogs: dict[DialogKey, _Presented] = {}

    def __len__(self) -> int:
        return len(self._dialogs)

    def rewrite(self, key: DialogKey, body: bytes) -> bytes:
        """``body`` as the phone in dialog ``key`` gets it: that dialog's origin, its
        version counted by changes (unchanged: the same version, RFC 3264 8)."""
        found = _ORIGIN.search(body)
        if found is None:
            return body
        parts = found.group(1).split()
        if len(parts) != 6 or not parts[2].isdigit():
            return body  # not an origin we can keep: left as the phone wrote it
        rest = body[: found.start()] + body[found.end() :]
        seen = self._dialogs.get(key)
        if seen is None:
            user, session, version, net, kind, addr = parts
            self._dialogs[key] = _Presented((user, session, net, kind, addr), int(version), rest)
            return body
        if rest != seen.rest:
            seen.version += 1
            seen.rest = rest
        user, session, net, kind, addr = seen.fields
        origin = b"o=" + b" ".join((user, session, str(seen.version).encode(), net, kind, addr))
        return body[: found.start()] + origin + body[found.end() :]

    def outgoing(self, message: Request | Response) -> None:
        """Rewrite the SDP of a message the PBX sends, in place (the same object may be
        sent again: a retransmission is rewritten to the same bytes)."""
        if not message.body:
            return
        ctype = message.headers.get("Content-Type")
        if ctype is None or ctype.split(";", 1)[0].strip().lower() != "application/sdp":
            return
        ours = message.from_ if isinstance(message, Request) else message.to
        tag = ours.params.get("tag")
        if tag:
            message.body = self.rewrite((message.call_id, tag), message.body)

    def forget(self, key: DialogKey) -> None:
        self._dialogs.pop(key, None)
