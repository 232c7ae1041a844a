"""SIP dialogs (RFC 3261 section 12), sans-I/O: the state two user agents share for a call.

A B2BUA holds two dialogs per call, one towards each phone. This module keeps the
identifiers, sequence numbers, remote target and route set of one dialog and builds
the in-dialog requests (ACK for 2xx, BYE, re-INVITE) from them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from pbxwarden.sip.errors import ParseError
from pbxwarden.sip.message import (
    CSeq,
    Headers,
    Request,
    Response,
    Via,
    generate_branch,
)
from pbxwarden.sip.uri import URI, NameAddr, parse_name_addr

DialogId = tuple[str, str, str]  # (Call-ID, local tag, remote tag)


@dataclass(slots=True)
class Dialog:
    call_id: str
    local_tag: str
    remote_tag: str
    local: NameAddr  # our From (as UAC) or To (as UAS), tag included
    remote: NameAddr
    remote_target: URI
    route_set: list[str] = field(default_factory=list)
    local_cseq: int = 0
    remote_cseq: int | None = None

    @property
    def id(self) -> DialogId:
        return (self.call_id, self.local_tag, self.remote_tag)

    @classmethod
    def as_uac(cls, request: Request, response: Response) -> Dialog:
        """The dialog a 2xx (or tagged 1xx) to our INVITE creates (RFC 3261 12.1.2)."""
        tag = response.to.tag
        local_tag = request.from_.tag
        if not tag or not local_tag:
            raise ParseError("dialog-creating response without tags")
        target = _contact_uri(response.contacts, request.uri)
        routes = list(reversed(response.headers.get_all("Record-Route")))
        return cls(
            request.call_id,
            local_tag,
            tag,
            request.from_,
            response.to,
            target,
            routes,
            local_cseq=request.cseq.number,
        )

    @classmethod
    def as_uas(cls, request: Request, local_tag: str) -> Dialog:
        """The dialog we create by answering ``request`` with To tag ``local_tag`` (12.1.1)."""
        remote_tag = request.from_.tag
        if not remote_tag:
            raise ParseError("dialog-creating request without From tag")
        target = _contact_uri(request.contacts, request.from_.uri)
        routes = list(request.headers.get_all("Record-Route"))
        return cls(
            request.call_id,
            local_tag,
            remote_tag,
            request.to.with_tag(local_tag),
            request.from_,
            target,
            routes,
            local_cseq=0,
            remote_cseq=request.cseq.number,
        )

    def accepts(self, request: Request) -> bool:
        """Whether an in-dialog request is in order (CSeq grows; RFC 3261 12.2.2)."""
        if request.method in ("ACK", "CANCEL"):
            return True
        if self.remote_cseq is not None and request.cseq.number <= self.remote_cseq:
            return False
        self.remote_cseq = request.cseq.number
        return True

    def new_request(
        self,
        method: str,
        via: Via,
        contact: str | None = None,
        body: bytes = b"",
        headers: Iterable[tuple[str, str]] = (),
        cseq: int | None = None,
    ) -> Request:
        """An in-dialog request; ``via`` is ours (its branch is set here unless ACK)."""
        if cseq is None:
            self.local_cseq += 1
            cseq = self.local_cseq
        extra = Headers(("Route", r) for r in self.route_set)
        for name, value in headers:
            extra.add(name, value)
        top = Via(via.transport, via.host, via.port, dict(via.params))
        if "branch" not in top.params:
            top.params["branch"] = generate_branch()
        return Request(
            via=[top],
            from_=self.local,
            to=self.remote,
            call_id=self.call_id,
            cseq=CSeq(cseq, method),
            headers=extra,
            body=body,
            max_forwards=70,
            contacts=[parse_name_addr(contact, "Contact")] if contact else [],
            method=method,
            uri=self.remote_target,
        )


def _contact_uri(contacts: list[NameAddr], fallback: URI) -> URI:
    return contacts[0].uri if contacts else fallback
