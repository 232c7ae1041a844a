"""What a call is, to every part of the B2BUA: the call and its legs, the settings, and
the port the B2BUA drives the running server through.

A call is two dialogs joined by the PBX (never a plain proxy): the caller's leg (a) and
the leg the PBX places (b), or several b legs at once while an extension's phones ring
in parallel (forks). These plain data classes are shared by the core
(:mod:`pbxwarden.pbx.b2bua`, :mod:`pbxwarden.pbx.mid_call`), the dialplan
(:mod:`pbxwarden.pbx.calls`) and the features (:mod:`pbxwarden.pbx.outbound`,
:mod:`pbxwarden.pbx.emergency`, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

from pbxwarden.pbx.caller_id import Identity
from pbxwarden.pbx.locate import (
    Failover,
)
from pbxwarden.pbx.policy import Decision
from pbxwarden.pbx.routing import Trunk
from pbxwarden.pbx.session_timer import SessionTimer
from pbxwarden.sip.dialog import Dialog
from pbxwarden.sip.digest import DigestError
from pbxwarden.sip.digest_client import (
    select_challenge,
)
from pbxwarden.sip.message import (
    Request,
    Response,
)
from pbxwarden.sip.transaction import Address, TransactionKey
from pbxwarden.store.db import ExtensionAuth

if TYPE_CHECKING:
    from pbxwarden.pbx.groups import GroupRun


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class Joined(Protocol):
    """A feature whose call starts from a dialog that is already up (the transferee of a
    transfer, :mod:`pbxwarden.pbx.transfer`): the core hands it the new B leg's progress,
    its answer and the call's end, instead of answering an INVITE from the a leg."""

    def progress(self, call: Call, response: Response) -> None: ...
    def answered(self, call: Call, response: Response) -> None: ...
    def ended(self, call: Call, disposition: str, sip_code: int) -> None: ...


class CallPort(Protocol):
    """What the B2BUA needs from the running server."""

    def send_request(self, request: Request, dest: Address) -> TransactionKey: ...
    def send_direct(self, message: Request | Response, dest: Address) -> None: ...
    def respond(self, key: TransactionKey | None, request: Request, response: Response) -> None: ...
    def build_cancel(self, key: TransactionKey) -> Request: ...
    def local_address(self, transport: str) -> tuple[str, int]: ...
    def schedule(self, delay: float, callback: Callable[[], None]) -> Cancellable: ...
    def wall_time(self) -> float: ...
    def cdr_open(self, token: int, fields: dict[str, Any]) -> None: ...
    def cdr_answer(self, token: int, at: float) -> None:
        """The call was answered at ``at``: its CDR gets the answer time now, not only at
        the end (a node killed mid-call leaves it to the survivor's takeover)."""

    def cdr_close(self, token: int, fields: dict[str, Any]) -> None: ...
    def auth_failed(
        self, source: Address, username: str, extension: ExtensionAuth | None = None
    ) -> None: ...
    def refuse_credentials(self, extension: ExtensionAuth, source: Address) -> bool: ...
    def set_forwarding(
        self, tenant: str, number: str, kind: str, target: str | None, source: str
    ) -> None: ...
    def forwarding_refused(
        self, tenant: str, number: str, kind: str, target: str, source: str, reason: str
    ) -> None:
        """A phone's forwarding change was refused: it goes into the forwarding history."""

    def set_hours_override(
        self, tenant: str, number: str, override: str | None, actor: str, source: str
    ) -> None:
        """A phone overrode a time condition (or stopped overriding it): stored, audited."""

    def notify(
        self,
        tenant: str,
        extension: str,
        rule: str,
        summary: str,
        reasons: tuple[str, ...],
        dedupe: str,
    ) -> None:
        """A critical alert for the tenant's admins that is not the guard's (an emergency
        call): stored, streamed and sent on every alert channel."""


@dataclass(frozen=True, slots=True)
class CallSettings:
    ring_timeout: float = 60.0
    max_duration: float = 4 * 3600.0
    t1: float = 0.5
    t2: float = 4.0
    keepalive: float = 60.0  # seconds between in-dialog OPTIONS to both legs (0: never)
    min_se: int = 90  # the shortest session interval accepted (RFC 4028 Min-SE)
    park_code: str = "*70"  # transfer a call here to park it; slots are *701, *702...
    park_slots: int = 9  # per tenant (0: no parking)
    park_timeout: float = 120.0  # then a parked call rings the extension that parked it
    hours_code: str = "*62"  # *62 and a time condition's number: override it, or stop


@dataclass(frozen=True, slots=True)
class Relayed:
    """A mid-call request relayed to the other phone, and how to answer the original."""

    original: Request
    in_key: TransactionKey | None
    back_transport: str
    relayed: Request
    dest: Address
    dialog: Dialog
    call: Call
    leg: str  # the leg the original came from ("a" or "b")


@dataclass(eq=False)
class RelayedAnswer:
    """A 2xx to a relayed re-INVITE: resent to the sender until its ACK (RFC 3261
    13.3.1.4), which then goes on to the other phone as the ACK of the relayed one."""

    relayed: Relayed
    key: TransactionKey  # of the relayed re-INVITE
    ack: Request | None = None  # the ACK sent on, resent if the 2xx is retransmitted


MAX_FORWARDS = 3  # a diversion chain longer than this is a loop or an attack
MAX_FORKS = 10  # contacts rung at once for one extension (the registrar's default cap)
# RFC 3326: tells the phones that did not answer why they stop ringing (no "missed call")
COMPLETED_ELSEWHERE = 'SIP;cause=200;text="Call completed elsewhere"'
# Credentials go once per B leg; a second only after a stale=TRUE challenge (the password
# was right, the nonce had expired). Anything more is a wrong password: no retry loop.
MAX_TRUNK_AUTH_ATTEMPTS = 2
# RFC 4458 "cause" URI parameter in History-Info (RFC 7044) entries, per diversion reason
HISTORY_CAUSES = {"always": 302, "busy": 486, "noanswer": 408, "redirect": 480}

DISPOSITIONS = {
    486: "busy",
    600: "busy",
    603: "declined",
    408: "no-answer",
    480: "unavailable",
    487: "cancelled",
}


@dataclass(eq=False)
class Fork:
    """One of the legs ringing the registered contacts of an extension at once.

    Only used when an extension has more than one contact; the leg that answers first
    is copied into the call's ``b_*`` fields and the rest of the B2BUA sees one B leg.
    """

    key: TransactionKey
    request: Request
    dest: Address
    provisional: bool = False
    final: Response | None = None  # its final non-2xx response (or a stand-in 408)
    cancel_pending: str | None = None  # CANCEL wanted before any provisional (its Reason)
    cancelled: bool = False
    dialog: Dialog | None = None  # set by a 2xx
    hung_up: bool = False  # a losing 2xx was ACKed and BYEd
    # a ring group's member leg (pbxwarden.pbx.groups): the extension it rings, or the
    # carrier, guard reference and number of an external member
    extension: ExtensionAuth | None = None
    trunk: Trunk | None = None
    ref: int | None = None
    e164: str | None = None
    auth_attempts: int = 0


@dataclass(eq=False)
class Call:
    token: int
    tenant: str
    extension: str  # the extension the call belongs to: the caller's, or the DID's
    caller_id: str
    callee: str
    a_request: Request
    a_key: TransactionKey | None
    a_source: Address
    a_tag: str
    decision: Decision
    started: float
    b_request: Request | None = None
    b_key: TransactionKey | None = None
    b_dest: Address | None = None
    a_dialog: Dialog | None = None
    b_dialog: Dialog | None = None
    b_provisional: bool = False
    trunk: str | None = None
    b_trunk: Trunk | None = None  # the trunk the current B leg goes out through
    b_failover: Failover | None = None  # the carrier's servers the B leg may still try
    b_auth_attempts: int = 0  # INVITEs resent with credentials on the current B leg
    ringing: ExtensionAuth | None = None  # the extension whose phone the B leg rings
    forks: list[Fork] = field(default_factory=list)  # legs ringing several contacts at once
    provisional_relayed: bool = False  # forking: the caller got its one 180/183 already
    forwarded_by: list[str] = field(default_factory=list)
    visited: set[tuple[str, str]] = field(default_factory=set)  # (tenant, extension) rung
    diversion: str | None = None  # Diversion header value for the current B leg
    history: list[str] = field(default_factory=list)  # History-Info entries (RFC 7044)
    outcome: dict[str, Any] = field(default_factory=dict)  # CDR fields set on the way
    answered: float | None = None
    a_acked: bool = False
    a_final: Response | None = None
    ended: bool = False
    timers: list[Cancellable] = field(default_factory=list)
    offer: bytes | None = None  # the caller's SDP as the B legs get it (media anchored)
    # Delayed offer (an INVITE without SDP): the callee's 2xx carries the offer and the
    # caller's ACK the answer, so the callee's ACK waits for the caller's and carries it.
    b_ack: tuple[str | None, bytes] | None = None  # (Content-Type, body) once the caller ACKed
    out_e164: str | None = None  # the number the current B leg calls through a carrier
    emergency: bool = False  # never cut off: no maximum duration, keep-alive or media timeout
    # what legs to carriers present (pbxwarden.pbx.caller_id); None: the call came in
    # from a carrier and has not been forwarded out
    identity: Identity | None = None
    a_extension: ExtensionAuth | None = None  # the authenticated extension on the a leg
    # The a leg is a dialog that was already up, whose feature takes the answer (a
    # transfer: the B leg is placed without an offer, RFC 3725 flow I).
    joined: Joined | None = None
    # One of this call's legs now belongs to ``moved_to`` (it was transferred): this
    # call is accounted for until that leg ends; its own end waits in ``finish_pending``.
    moved_to: Call | None = None
    finish_pending: tuple[str, int, str] | None = None
    hung_up_by: str | None = None  # the leg whose BYE ended the call
    session_timer: SessionTimer | None = None  # the caller's (pbxwarden.pbx.session_timer)
    session_refreshed: float = 0.0  # when the session was last refreshed
    # the B leg is a call the PBX answered (a pickup: the picker dialled in), acked yet?
    b_uas: bool = False
    b_acked: bool = False
    group: GroupRun | None = None  # a ring group ringing for the call (pbxwarden.pbx.groups)
    display: str | None = None  # the ringing legs' From display name, quoted (a group's prefix)
    # further guard references of the call: legs to a ring group's external members
    refs: list[int] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.a_request.call_id

    def leg(self, leg: str) -> tuple[Dialog | None, Address | None]:
        """The PBX's dialog with the phone on ``leg`` ("a" or "b"), and where it is."""
        return (self.a_dialog, self.a_source) if leg == "a" else (self.b_dialog, self.b_dest)


def other_leg(leg: str) -> str:
    return "b" if leg == "a" else "a"


# RFC 3261 16.7: among failures of the same class, the more telling answer goes back
_VAGUE = {408: 2, 480: 2, 487: 3, 503: 2}


def best_response(responses: list[Response]) -> Response:
    """The final response the caller gets when every fork failed (RFC 3261 16.7): a 6xx,
    else the lowest class; within a class a busy 486 before "unavailable" or a timeout."""
    return min(
        responses,
        key=lambda r: (0 if r.status >= 600 else r.status // 100, _VAGUE.get(r.status, 1)),
    )


def history_info(entries: list[str], host: str, by: str, target: str, why: str) -> list[str]:
    """The History-Info entries (RFC 7044) after one more diversion of the call.

    The first entry is the original target (``index=1``); each diversion adds the new
    target, one level deeper (1.1, 1.1.1), with the RFC 4458 ``cause`` URI parameter and
    ``mp`` naming the entry it was retargeted from (RFC 7044 10.1: the user changed, so
    ``mp`` rather than ``rc``). The chain is capped by MAX_FORWARDS, so are the entries.
    """
    entries = entries or [f"<sip:{by}@{host}>;index=1"]
    parent = "1" + ".1" * (len(entries) - 1)
    user = quote(target, safe="+-_.!~*'()&=$")  # a 3xx Contact's user part: anything
    cause = HISTORY_CAUSES[why]
    return [*entries, f"<sip:{user}@{host};cause={cause}>;index={parent}.1;mp={parent}"]


def stale_challenge(response: Response) -> bool:
    """A challenge saying only that our nonce expired: the credentials themselves were fine."""
    try:
        return select_challenge(response)[0].stale
    except DigestError:
        return False


def parse_source(source: str) -> Address | None:
    """Bindings remember where a REGISTER came from as ``udp:host:port``, and when a
    trusted front relayed it, the front too: ``udp:host:port via udp:front:port``
    (:meth:`Address.flow`)."""
    own, _, hop = source.partition(" via ")
    front = None
    if hop:
        front = parse_source(hop)
        if front is None:
            return None
    transport, _, rest = own.partition(":")
    host, _, port = rest.rpartition(":")
    host = host.strip("[]")
    if not host or not (port.isascii() and port.isdigit()):
        return None
    return Address(transport.upper(), host, int(port), front)
