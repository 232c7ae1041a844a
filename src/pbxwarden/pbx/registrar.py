"""The registrar (RFC 3261 section 10.3), sans-I/O: an authenticated REGISTER in, a response out.

Processing follows the RFC's steps: authenticate, check that the authenticated
extension is the one whose bindings change (no third-party registration: an
extension can only move its own calls), then apply every Contact with its expiry,
Call-ID and CSeq ordering, and answer with the full current set of bindings.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from email.utils import formatdate

from pbxwarden.pbx.location import Binding, LocationService
from pbxwarden.sip.message import Request, Response, make_response
from pbxwarden.store.db import ExtensionAuth


@dataclass(frozen=True, slots=True)
class RegistrarPolicy:
    min_expires: int = 60
    max_expires: int = 3600
    default_expires: int = 3600
    max_contacts: int = 10


_date_cache: tuple[int, str] = (-1, "")


def _http_date(now: float) -> str:
    """RFC 1123 date for the Date header; formatted once per second, not per REGISTER."""
    global _date_cache
    second = int(now)
    if _date_cache[0] != second:
        _date_cache = (second, formatdate(second, usegmt=True))
    return _date_cache[1]


def aor_key(realm: str, number: str) -> str:
    return f"{realm}/{number}"


class Registrar:
    def __init__(
        self, location: LocationService, policy: RegistrarPolicy, server_header: str = "pbxwarden"
    ) -> None:
        self.location = location
        self.policy = policy
        self._server = server_header

    def _reply(
        self,
        request: Request,
        status: int,
        reason: str | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> Response:
        extra = [("Server", self._server), *(headers or [])]
        return make_response(request, status, reason, headers=extra)

    def register(
        self, request: Request, extension: ExtensionAuth, source: str, now: float
    ) -> Response:
        """Apply an already-authenticated REGISTER for ``extension``."""
        if not request.uri.is_sip:
            return self._reply(request, 416)
        to_uri = request.to.uri
        if not to_uri.is_sip or to_uri.user != extension.number:
            # Authenticated as one extension but asking to bind another: refuse.
            return self._reply(request, 403, "Forbidden (may only register itself)")
        aor = aor_key(extension.realm, extension.number)
        if request.contact_star:
            if request.expires != 0:
                return self._reply(request, 400, "Bad Request (Contact * needs Expires: 0)")
            for binding in self.location.lookup(aor, now):
                if binding.call_id == request.call_id and request.cseq.number <= binding.cseq:
                    return self._reply(request, 400, "Bad Request (CSeq out of order)")
            for binding in list(self.location.lookup(aor, now)):
                self.location.remove(aor, binding.contact)
            return self._ok(request, aor, now)
        changes: list[tuple[str, int, float | None]] = []
        for contact in request.contacts:
            expires_param = contact.params.get("expires")
            if expires_param is not None:
                expires = int(expires_param)  # validated by the parser
            elif request.expires is not None:
                expires = request.expires
            else:
                expires = self.policy.default_expires
            if 0 < expires < self.policy.min_expires:
                return self._reply(
                    request, 423, headers=[("Min-Expires", str(self.policy.min_expires))]
                )
            q_text = contact.params.get("q")
            try:
                q = float(q_text) if q_text is not None else None
            except ValueError:
                return self._reply(request, 400, "Bad Request (invalid q value)")
            if q is not None and not 0.0 <= q <= 1.0:
                return self._reply(request, 400, "Bad Request (q out of range)")
            uri = str(contact.uri)
            existing = self.location.get(aor, uri)
            if (
                existing is not None
                and existing.call_id == request.call_id
                and request.cseq.number <= existing.cseq
            ):
                return self._reply(request, 400, "Bad Request (CSeq out of order)")
            changes.append((uri, min(expires, self.policy.max_expires), q))
        live = {b.contact for b in self.location.lookup(aor, now)}
        after = set(live)
        for uri, expires, _ in changes:
            if expires == 0:
                after.discard(uri)
            else:
                after.add(uri)
        if len(after) > self.policy.max_contacts and len(after) > len(live):
            return self._reply(request, 403, "Forbidden (too many contacts)")
        user_agent = request.headers.get("User-Agent")
        for uri, expires, q in changes:
            if expires == 0:
                self.location.remove(aor, uri)
            else:
                known = self.location.get(aor, uri)
                self.location.put(
                    aor,
                    Binding(
                        extension.id,
                        uri,
                        now + expires,
                        q,
                        request.call_id,
                        request.cseq.number,
                        source,
                        sys.intern(user_agent[:255]) if user_agent else None,
                        known.registered_at if known is not None else now,
                    ),
                )
        return self._ok(request, aor, now)

    def _ok(self, request: Request, aor: str, now: float) -> Response:
        headers = [("Date", _http_date(now))]
        response = self._reply(request, 200, headers=headers)
        for binding in self.location.lookup(aor, now):
            contact = f"<{binding.contact}>;expires={max(0, int(binding.expires_at - now))}"
            if binding.q is not None:
                contact += f";q={binding.q:g}"
            response.headers.add("Contact", contact)
        return response
