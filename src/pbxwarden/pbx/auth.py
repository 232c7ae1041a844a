"""Digest authentication of requests from extensions (REGISTER now, INVITE and others later).

Sans-I/O: the caller looks the extension up (that may touch the database) and passes
it in. Unknown users, disabled extensions and wrong passwords get byte-for-byte the
same kind of answer, so that nobody can enumerate extensions through us.
"""

from __future__ import annotations

from typing import Final

from pbxwarden.sip.digest import (
    AuthStatus,
    Credentials,
    DigestError,
    DigestServer,
    parse_credentials,
)
from pbxwarden.sip.message import Request, Response, make_response
from pbxwarden.store.db import ExtensionAuth


class AuthOutcome:
    """Either ``extension`` is authenticated, or ``response`` must be sent back. Not a
    dataclass: compiled by mypyc, a dataclass keeps an interpreted __init__."""

    __slots__ = ("extension", "reason", "response")

    def __init__(
        self, extension: ExtensionAuth | None, response: Response | None, reason: str
    ) -> None:
        self.extension: Final = extension
        self.response: Final = response
        self.reason: Final = reason


class Authenticator:
    def __init__(
        self, digest_servers: dict[str, DigestServer], default_realm: str, server_header: str
    ) -> None:
        self._servers = digest_servers
        self.default_realm = default_realm
        self._server_header = server_header

    @property
    def realms(self) -> tuple[str, ...]:
        """Every realm this node authenticates in (the default one and the tenants')."""
        return tuple(self._servers)

    def realm_for(self, request: Request) -> str:
        """The tenant realm a request is addressed to: its domain if known, else the default."""
        host = request.to.uri.host if request.method == "REGISTER" else request.uri.host
        return host if host in self._servers else self.default_realm

    @staticmethod
    def credentials(request: Request) -> Credentials | None:
        """The request's digest credentials; None when absent. Raises DigestError if garbled."""
        header = request.headers.get("Authorization")
        if header is None:
            return None
        return parse_credentials(header)

    def challenge(
        self,
        request: Request,
        realm: str,
        now: float,
        *,
        stale: bool = False,
        to_tag: str | None = None,
    ) -> Response:
        server = self._servers[realm]
        headers = [("WWW-Authenticate", value) for value in server.challenges(now, stale=stale)]
        headers.append(("Server", self._server_header))
        return make_response(request, 401, to_tag=to_tag, headers=headers)

    def forbidden(self, request: Request, to_tag: str | None = None) -> Response:
        return make_response(request, 403, to_tag=to_tag, headers=[("Server", self._server_header)])

    def authenticate(
        self,
        request: Request,
        credentials: Credentials | None,
        extension: ExtensionAuth | None,
        now: float,
        *,
        to_tag: str | None = None,
    ) -> AuthOutcome:
        """Verify ``credentials`` (already parsed) against ``extension`` (None if unknown)."""
        realm = self.realm_for(request)
        if credentials is None:
            return AuthOutcome(
                None, self.challenge(request, realm, now, to_tag=to_tag), "no credentials"
            )
        if credentials.realm != realm:
            return AuthOutcome(
                None,
                self.challenge(request, realm, now, to_tag=to_tag),
                "credentials for another realm",
            )
        if extension is not None and not extension.enabled:
            extension = None  # a disabled extension must look exactly like an unknown one
        ha1 = extension.ha1.get(credentials.algorithm.base) if extension is not None else None
        result = self._servers[realm].verify(request.method, credentials, ha1, now)
        if result.status is AuthStatus.OK:
            return AuthOutcome(extension, None, "ok")
        if result.status is AuthStatus.STALE:
            return AuthOutcome(
                None, self.challenge(request, realm, now, stale=True, to_tag=to_tag), result.reason
            )
        return AuthOutcome(None, self.forbidden(request, to_tag), result.reason)


__all__ = ["AuthOutcome", "Authenticator", "DigestError"]
