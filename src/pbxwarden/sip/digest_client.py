"""Client side of SIP digest: answering a carrier's 401/407 (RFC 3261 22.2, RFC 7616, RFC 8760).

Carriers challenge the PBX's outbound INVITEs and REGISTERs. Sans-I/O like the server
side: given the challenging response, :class:`DigestClient` returns the header to add,
and :func:`with_credentials` turns the challenged request into the one to resend (same
Call-ID and From tag, CSeq + 1, a new branch: RFC 3261 8.1.3.5 and 22.2). The formula is
the one :class:`~pbxwarden.sip.digest.DigestServer` verifies with, so both sides agree.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from pbxwarden.sip.digest import Challenge, DigestError, build_authorization, parse_challenge
from pbxwarden.sip.message import CSeq, Request, Response, Via, generate_branch

__all__ = [
    "AUTH_HEADERS",
    "ClientCredentials",
    "DigestClient",
    "select_challenge",
    "with_credentials",
]

# status -> (challenge header, the header that answers it)
AUTH_HEADERS = {
    401: ("WWW-Authenticate", "Authorization"),
    407: ("Proxy-Authenticate", "Proxy-Authorization"),
}
_MAX_NONCES = 16  # nonces remembered for nc counting; a trunk sees one or two at a time


@dataclass(frozen=True, slots=True)
class ClientCredentials:
    """Who we are to a carrier; the password stays out of repr() and so out of logs."""

    username: str
    password: str = field(repr=False)
    realm: str | None = None  # when set, a challenge for this realm is preferred


def select_challenge(response: Response, realm: str | None = None) -> tuple[Challenge, str]:
    """The challenge to answer in a 401/407, and the name of the header answering it.

    RFC 8760 2.4: the first challenge whose algorithm we support, in the order sent (a
    server lists its preferred algorithm first); with ``realm`` set, that realm's first.
    """
    names = AUTH_HEADERS.get(response.status)
    if names is None:
        raise DigestError(f"a {response.status} response carries no digest challenge")
    usable: list[Challenge] = []
    for value in response.headers.get_all(names[0]):
        try:
            usable.append(parse_challenge(value))
        except DigestError:
            continue  # another scheme or an algorithm we do not support
    if not usable:
        raise DigestError(f"no usable digest challenge in the {response.status} response")
    if realm is not None:
        usable.sort(key=lambda c: c.realm != realm)  # stable: keeps the server's order
    return usable[0], names[1]


class DigestClient:
    """Answers challenges for one identity.

    Counts nonce uses so that a nonce met again (a carrier reusing it across requests)
    is never answered twice with the same ``nc``, which a server would take for a replay.
    """

    def __init__(
        self,
        credentials: ClientCredentials,
        cnonce_factory: Callable[[], str] | None = None,
    ) -> None:
        self.credentials = credentials
        self._cnonce = cnonce_factory or (lambda: secrets.token_hex(8))
        self._nc: OrderedDict[str, int] = OrderedDict()

    def answer(
        self, response: Response, method: str, uri: str, body: bytes = b""
    ) -> tuple[str, str]:
        """``(header name, value)`` answering the 401/407 ``response`` for a request with
        this method and Request-URI; raises :class:`DigestError` if it cannot be answered."""
        challenge, header = select_challenge(response, self.credentials.realm)
        nc = self._nc.pop(challenge.nonce, 0) + 1
        self._nc[challenge.nonce] = nc
        while len(self._nc) > _MAX_NONCES:
            self._nc.popitem(last=False)
        value = build_authorization(
            challenge,
            method,
            uri,
            self.credentials.username,
            self.credentials.password,
            cnonce=self._cnonce(),
            nc=nc,
            body=body,
        )
        return header, value


def with_credentials(request: Request, header: str, value: str) -> Request:
    """The challenged request again, with credentials: CSeq + 1 and a new branch (a new
    transaction), same Call-ID, From tag and To; an older answer of the same kind goes."""
    headers = request.headers.copy()
    headers.remove(header)
    headers.add(header, value)
    top = request.via[0]
    params = dict(top.params)
    params["branch"] = generate_branch()
    via = [Via(top.transport, top.host, top.port, params), *request.via[1:]]
    r = request
    return Request(
        via,
        r.from_,
        r.to,
        r.call_id,
        CSeq(r.cseq.number + 1, r.cseq.method),
        headers,
        r.body,
        r.max_forwards,
        list(r.contacts),
        r.contact_star,
        r.expires,
        r.method,
        r.uri,
    )
