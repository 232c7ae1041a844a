"""SIP transaction layer: RFC 3261 section 17 with the RFC 6026 corrections.

Sans-I/O in the style of h11 and aioquic: no sockets, no clocks, no asyncio. The
caller passes messages and the current time (``now``, seconds on any monotonic
clock) in and gets a list of actions back: messages to put on the wire, messages
for the Transaction User (TU), timeouts. Timers live in one heap; the caller sleeps
until :meth:`TransactionLayer.next_deadline` and then calls
:meth:`TransactionLayer.handle_timers`. Keeping time and I/O outside makes every
retransmission schedule testable exactly, with plain numbers as the clock.

RFC 6026 adds an "Accepted" state to both INVITE machines so that 2xx responses
(which may fork and are retransmitted end to end by the TUs) are never mistaken
for new requests or swallowed: the server absorbs INVITE retransmissions and hands
ACKs to the TU; the client hands every 2xx to the TU.

Deliberately not implemented: the Via ``maddr`` rule of RFC 3261 18.2.2 (it lets a
sender point our responses at a third party), and 2xx retransmission for INVITE,
which RFC 3261 13.3.1.4 assigns to the TU (it sends them through
:meth:`TransactionLayer.send_response` while the transaction is Accepted).
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass
from enum import Enum
from typing import Final

from pbxwarden.sip.errors import SipError
from pbxwarden.sip.message import (
    MAGIC_COOKIE,
    CSeq,
    Headers,
    Request,
    Response,
    Via,
    make_response,
)
from pbxwarden.sip.uri import NameAddr

RELIABLE_TRANSPORTS: Final = frozenset({"TCP", "TLS", "SCTP", "TLS-SCTP", "WS", "WSS"})
DEFAULT_SIP_PORT: Final = 5060
_TRANSPORT_VIA_PARAMS: Final = frozenset({"received", "rport"})


class TransactionError(SipError):
    """The TU asked for something the transaction layer cannot do (unknown key, wrong kind)."""


# The value classes made per message below are written out rather than dataclasses:
# compiled by mypyc (setup.py), a dataclass keeps an interpreted __init__ and __hash__,
# which were a tenth of a registrar worker's CPU. Immutable (Final) where they are keys.


class Address:
    """Where a message came from or goes to; ``transport`` is the Via spelling (UDP, TCP, TLS).

    ``front``: the hop a message really travels over when a trusted SIP front (Kamailio,
    :mod:`pbxwarden.transport.front`) relays it. ``host`` and ``port`` are then the
    phone's own source, which every judgement of the source sees, while Via, retransmission
    and the sockets go by the hop (``transport`` is the hop's: it says whether the link to
    the front is reliable)."""

    __slots__ = ("front", "host", "port", "transport")

    def __init__(self, transport: str, host: str, port: int, front: Address | None = None) -> None:
        self.transport: Final = transport
        self.host: Final = host
        self.port: Final = port
        self.front: Final = front

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Address)
            and self.port == other.port
            and self.host == other.host
            and self.transport == other.transport
            and self.front == other.front
        )

    def __hash__(self) -> int:
        return hash((self.transport, self.host, self.port, self.front))

    def __repr__(self) -> str:
        if self.front is not None:
            return f"Address({self.transport!r}, {self.host!r}, {self.port!r}, {self.front!r})"
        return f"Address({self.transport!r}, {self.host!r}, {self.port!r})"

    @property
    def reliable(self) -> bool:
        return self.transport.upper() in RELIABLE_TRANSPORTS

    @property
    def hop(self) -> Address:
        """Where bytes for this address go: the front that relayed it, or itself."""
        return self.front if self.front is not None else self

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport.lower()}:{host}:{self.port}"

    def flow(self) -> str:
        """What a binding records (``udp:192.0.2.7:5060``, relayed: ``... via udp:front``)
        so that calls to the phone take the same way back (``pbx.call.parse_source``)."""
        if self.front is None:
            return str(self)
        return f"{self} via {self.front}"


@dataclass(frozen=True, slots=True)
class TimerConfig:
    """RFC 3261 timer values (Table 4), in seconds.

    ``timer_d`` is the unreliable-transport Timer D (RFC: at least 32 s);
    ``trying_delay`` is how long the TU may stay silent on an INVITE before the
    layer sends 100 Trying itself (RFC 3261 17.2.1: 200 ms).
    """

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    timer_d: float = 32.0
    trying_delay: float = 0.2

    def __post_init__(self) -> None:
        for name in ("t1", "t2", "t4", "timer_d", "trying_delay"):
            if not getattr(self, name) > 0:
                raise ValueError(f"timer {name} must be positive")
        if self.t2 < self.t1:
            raise ValueError("t2 must not be smaller than t1")


DEFAULT_TIMERS: Final = TimerConfig()


class TransactionKey:
    """Identifies a transaction; hashable, cheap to compare.

    Server keys follow RFC 3261 17.2.3: ``branch`` + ``sent_by`` + ``method`` (ACK
    counted as INVITE) when the branch carries the magic cookie, otherwise
    ``legacy`` holds the RFC 2543 matching fields (Request-URI, From tag, To tag,
    Call-ID, CSeq number, top Via). Client keys are ``branch`` + CSeq method (17.1.3).
    """

    __slots__ = ("_hash", "branch", "legacy", "method", "sent_by", "server")

    def __init__(
        self,
        server: bool,
        method: str,
        branch: str = "",
        sent_by: tuple[str, int | None] | None = None,
        legacy: tuple[str, ...] | None = None,
    ) -> None:
        self.server: Final = server
        self.method: Final = method
        self.branch: Final = branch
        self.sent_by: Final = sent_by
        self.legacy: Final = legacy
        self._hash: Final = hash((server, method, branch, sent_by, legacy))

    def with_method(self, method: str) -> TransactionKey:
        return TransactionKey(self.server, method, self.branch, self.sent_by, self.legacy)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, TransactionKey)
            and self._hash == other._hash
            and self.branch == other.branch
            and self.method == other.method
            and self.server == other.server
            and self.sent_by == other.sent_by
            and self.legacy == other.legacy
        )

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return (
            f"TransactionKey(server={self.server!r}, method={self.method!r}, "
            f"branch={self.branch!r}, sent_by={self.sent_by!r}, legacy={self.legacy!r})"
        )


def client_key(message: Request | Response) -> TransactionKey:
    """The client transaction a request belongs to, or a response answers (17.1.3)."""
    branch = message.transaction_branch or ""
    return TransactionKey(server=False, method=message.cseq.method, branch=branch)


def _via_identity(via: Via) -> str:
    # received/rport are written by our own transport on arrival, not by the sender.
    params = ";".join(
        k if v is None else f"{k}={v}"
        for k, v in sorted(via.params.items())
        if k not in _TRANSPORT_VIA_PARAMS
    )
    return f"{via.transport} {via.host}:{via.port};{params}"


def _legacy_key(request: Request, method: str, to_tag: str | None) -> TransactionKey:
    return TransactionKey(
        server=True,
        method=method,
        legacy=(
            str(request.uri),
            request.from_.tag or "",
            to_tag or "",
            request.call_id,
            str(request.cseq.number),
            _via_identity(request.via[0]),
        ),
    )


def absorbs(request: Request, response: Response) -> bool:
    """Whether the server transaction should go on absorbing retransmissions of
    ``request`` after its final ``response`` (:meth:`TransactionLayer.send_response`).

    Not after a digest challenge (401, 407) to a non-INVITE request that carried no
    credentials: a retransmission is challenged afresh, and nothing is counted twice
    (a request with wrong credentials keeps its transaction: its retransmission must
    not count as a second failed attempt)."""
    if response.status not in (401, 407) or request.method == "INVITE":
        return True
    headers = request.headers
    return headers.get("Authorization") is not None or (
        headers.get("Proxy-Authorization") is not None
    )


def server_key(request: Request) -> TransactionKey:
    """The server transaction a received request belongs to (RFC 3261 17.2.3)."""
    if not request.via:
        raise ValueError("request has no Via header")
    method = "INVITE" if request.method == "ACK" else request.method
    top = request.via[0]
    branch = top.branch
    if branch is not None and branch.startswith(MAGIC_COOKIE):
        return TransactionKey(server=True, method=method, branch=branch, sent_by=top.sent_by)
    return _legacy_key(request, method, request.to.tag)


def response_destination(via: Via, source: Address) -> Address:
    """Where to send a response (RFC 3261 18.2.2, RFC 3581 section 4).

    Reliable: back to the connection the request came over. Unreliable: the packet's
    source address and port if the request asked for ``rport``, else ``received``
    (or the source host) and the sent-by port. Also usable for stateless responses.
    """
    if source.reliable or "rport" in via.params or source.front is not None:
        return source  # relayed by a front: back to it, which knows the phone
    host = via.params.get("received") or source.host
    return Address(source.transport, host, via.port or DEFAULT_SIP_PORT)


class _Action:
    """Equal when of one kind with equal fields (the tests compare action lists)."""

    __slots__ = ()

    def _fields(self) -> tuple[object, ...]:
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, _Action)
            and type(other) is type(self)
            and other._fields() == self._fields()
        )

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return f"{type(self).__name__}{self._fields()!r}"


class SendMessage(_Action):
    """Put ``message`` on the wire to ``dest`` (for reliable transports: over that
    connection). ``message`` may be bytes already: a completed non-INVITE server
    transaction keeps its final response serialized (see ``_Transaction.wire``)."""

    __slots__ = ("dest", "message")

    def __init__(self, message: Request | Response | bytes, dest: Address) -> None:
        self.message: Final = message
        self.dest: Final = dest

    def data(self) -> bytes:
        """The bytes to send."""
        message = self.message
        return message if isinstance(message, bytes) else message.to_bytes()

    def _fields(self) -> tuple[object, ...]:
        return (self.data(), self.dest)


class DeliverRequest(_Action):
    """A request for the TU; ``key`` is None for an ACK outside any transaction (ACK for 2xx)."""

    __slots__ = ("key", "request", "source")

    def __init__(self, request: Request, source: Address, key: TransactionKey | None) -> None:
        self.request: Final = request
        self.source: Final = source
        self.key: Final = key

    def _fields(self) -> tuple[object, ...]:
        return (self.request, self.source, self.key)


class DeliverResponse(_Action):
    """A response for the TU; ``stray`` means no live transaction took it (a late 2xx)."""

    __slots__ = ("key", "response", "stray")

    def __init__(self, response: Response, key: TransactionKey, stray: bool = False) -> None:
        self.response: Final = response
        self.key: Final = key
        self.stray: Final = stray

    def _fields(self) -> tuple[object, ...]:
        return (self.response, self.key, self.stray)


class TransactionTimeout(_Action):
    """Timer B/F (client: treat as 408) or Timer H (server: the ACK never came)."""

    __slots__ = ("key",)

    def __init__(self, key: TransactionKey) -> None:
        self.key: Final = key

    def _fields(self) -> tuple[object, ...]:
        return (self.key,)


class TransactionTerminated(_Action):
    """The transaction is gone; its key is no longer valid."""

    __slots__ = ("key",)

    def __init__(self, key: TransactionKey) -> None:
        self.key: Final = key

    def _fields(self) -> tuple[object, ...]:
        return (self.key,)


Action = SendMessage | DeliverRequest | DeliverResponse | TransactionTimeout | TransactionTerminated


class State(Enum):
    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"


class _Timer(Enum):
    A = "A"
    B = "B"
    D = "D"
    E = "E"
    F = "F"
    K = "K"
    G = "G"
    H = "H"
    I = "I"  # noqa: E741 - the RFC's name
    J = "J"
    L = "L"
    M = "M"
    TRYING = "100"


class _Transaction:
    """One transaction's state; behaviour lives in :class:`TransactionLayer`."""

    __slots__ = (
        "ack",
        "interval",
        "invite",
        "key",
        "last_response",
        "peer",
        "request",
        "state",
        "timers",
        "wire",
    )

    def __init__(self, key: TransactionKey, request: Request, peer: Address, state: State) -> None:
        self.key = key
        # Let go once a non-INVITE server transaction has its final response: it only
        # waits for retransmissions then (32 s over UDP), and without the request a
        # completed transaction holds a third less memory (a registrar keeps tens of
        # thousands of them).
        self.request: Request | None = request
        # Client: where requests go. Server: where responses go (computed once).
        self.peer = peer
        self.invite = request.method == "INVITE"
        self.state = state
        self.last_response: Response | None = None
        # A completed non-INVITE server transaction's final response as bytes, in place
        # of ``last_response``: it is only ever sent again, and the parsed message holds
        # three times the memory (a registrar keeps two such transactions per REGISTER
        # with digest auth for 32 s).
        self.wire: bytes | None = None
        self.ack: Request | None = None
        self.interval = 0.0
        # Live timers: name -> heap sequence number; heap entries not listed here are stale.
        self.timers: dict[_Timer, int] = {}


_HeapEntry = tuple[float, int, TransactionKey, _Timer]


def _copy_via(via: Via) -> Via:
    return Via(via.transport, via.host, via.port, dict(via.params))


def _routes(request: Request) -> Headers:
    return Headers(("Route", value) for value in request.headers.get_all("Route"))


def _derived_request(original: Request, method: str, to: NameAddr) -> Request:
    """An ACK for non-2xx (17.1.1.3) or a CANCEL (9.1): same identity, one Via, same Route."""
    return Request(
        via=[_copy_via(original.via[0])],
        from_=original.from_,
        to=to,
        call_id=original.call_id,
        cseq=CSeq(original.cseq.number, method),
        headers=_routes(original),
        max_forwards=70 if original.max_forwards is None else original.max_forwards,
        method=method,
        uri=original.uri,
    )


def _request(txn: _Transaction) -> Request:
    if txn.request is None:
        raise TransactionError("the transaction is completed and no longer holds its request")
    return txn.request


class TransactionLayer:
    """All client and server transactions of one SIP element, plus their timers."""

    def __init__(self, timers: TimerConfig = DEFAULT_TIMERS) -> None:
        self.timers = timers
        self._txns: dict[TransactionKey, _Transaction] = {}
        self._heap: list[_HeapEntry] = []
        self._seq = itertools.count()
        self._live_timers = 0

    # -- introspection ---------------------------------------------------------------

    @property
    def active_count(self) -> int:
        return len(self._txns)

    def __len__(self) -> int:
        return len(self._txns)

    def __contains__(self, key: object) -> bool:
        return key in self._txns

    @property
    def pending_timers(self) -> int:
        """Heap size including not-yet-discarded cancelled entries (for metrics and tests)."""
        return len(self._heap)

    def state(self, key: TransactionKey) -> State | None:
        txn = self._txns.get(key)
        return None if txn is None else txn.state

    def get_request(self, key: TransactionKey) -> Request:
        """The request that created the transaction (e.g. the INVITE a CANCEL targets)."""
        return _request(self._get(key))

    def peer(self, key: TransactionKey) -> Address:
        """Client: where the request went. Server: where responses go."""
        return self._get(key).peer

    def _get(self, key: TransactionKey) -> _Transaction:
        txn = self._txns.get(key)
        if txn is None:
            raise TransactionError(f"no such transaction: {key}")
        return txn

    # -- timers ----------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and not self._is_live(heap[0]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def handle_timers(self, now: float) -> list[Action]:
        out: list[Action] = []
        while self._heap and self._heap[0][0] <= now:
            entry = heapq.heappop(self._heap)
            if not self._is_live(entry):
                continue
            txn = self._txns[entry[2]]
            del txn.timers[entry[3]]
            self._live_timers -= 1
            self._fire(txn, entry[3], now, out)
        return out

    def _is_live(self, entry: _HeapEntry) -> bool:
        txn = self._txns.get(entry[2])
        return txn is not None and txn.timers.get(entry[3]) == entry[1]

    def _schedule(self, txn: _Transaction, timer: _Timer, deadline: float) -> None:
        seq = next(self._seq)
        if timer not in txn.timers:
            self._live_timers += 1
        txn.timers[timer] = seq
        heapq.heappush(self._heap, (deadline, seq, txn.key, timer))

    def _cancel(self, txn: _Transaction, *timers: _Timer) -> None:
        for timer in timers:
            if txn.timers.pop(timer, None) is not None:
                self._live_timers -= 1
        self._maybe_compact()

    def _maybe_compact(self) -> None:
        # Cancelled entries are skipped lazily; rebuild when they dominate so that a
        # burst of short transactions with long timers (B, F, H) cannot bloat the heap.
        if len(self._heap) > 64 and len(self._heap) > 2 * self._live_timers:
            self._heap = [e for e in self._heap if self._is_live(e)]
            heapq.heapify(self._heap)

    def _terminate(self, txn: _Transaction) -> TransactionTerminated:
        self._live_timers -= len(txn.timers)
        txn.timers.clear()
        txn.state = State.TERMINATED
        del self._txns[txn.key]
        self._maybe_compact()
        return TransactionTerminated(txn.key)

    def terminate(self, key: TransactionKey) -> list[Action]:
        """Drop a transaction the TU has given up on (e.g. an INVITE stuck in Proceeding)."""
        txn = self._txns.get(key)
        return [] if txn is None else [self._terminate(txn)]

    def _fire(self, txn: _Transaction, timer: _Timer, now: float, out: list[Action]) -> None:
        t = self.timers
        if timer is _Timer.A:
            out.append(SendMessage(_request(txn), txn.peer))
            txn.interval *= 2  # Timer A is not capped at T2; Timer B bounds it.
            self._schedule(txn, _Timer.A, now + txn.interval)
        elif timer is _Timer.E:
            out.append(SendMessage(_request(txn), txn.peer))
            if txn.state is State.PROCEEDING:
                txn.interval = t.t2
            else:
                txn.interval = min(2 * txn.interval, t.t2)
            self._schedule(txn, _Timer.E, now + txn.interval)
        elif timer is _Timer.G:
            assert txn.last_response is not None
            out.append(SendMessage(txn.last_response, txn.peer))
            txn.interval = min(2 * txn.interval, t.t2)
            self._schedule(txn, _Timer.G, now + txn.interval)
        elif timer is _Timer.TRYING:
            if txn.state is State.PROCEEDING and txn.last_response is None:
                trying = make_response(_request(txn), 100)
                txn.last_response = trying
                out.append(SendMessage(trying, txn.peer))
        elif timer in (_Timer.B, _Timer.F, _Timer.H):
            out.append(TransactionTimeout(txn.key))
            out.append(self._terminate(txn))
        else:  # D, I, J, K, L, M: the wait for retransmissions is over
            out.append(self._terminate(txn))

    # -- client transactions ---------------------------------------------------------

    def send_request(
        self, request: Request, dest: Address, now: float
    ) -> tuple[TransactionKey, list[Action]]:
        """Start a client transaction; the top Via must carry a fresh RFC 3261 branch."""
        if request.method == "ACK":
            raise ValueError("ACK is not a transaction; send it straight to the transport")
        if request.cseq.method != request.method:
            raise ValueError("CSeq method does not match the request method")
        branch = request.transaction_branch
        if branch is None or not branch.startswith(MAGIC_COOKIE):
            raise ValueError("top Via needs a branch starting with z9hG4bK (generate_branch)")
        key = client_key(request)
        if key in self._txns:
            raise TransactionError(f"client transaction {key} already exists")
        t = self.timers
        txn = _Transaction(
            key, request, dest, State.CALLING if request.method == "INVITE" else State.TRYING
        )
        self._txns[key] = txn
        if not dest.reliable:
            txn.interval = t.t1
            self._schedule(txn, _Timer.A if txn.invite else _Timer.E, now + t.t1)
        self._schedule(txn, _Timer.B if txn.invite else _Timer.F, now + 64 * t.t1)
        return key, [SendMessage(request, dest)]

    def build_cancel(self, key: TransactionKey) -> Request:
        """A CANCEL for a client INVITE (RFC 3261 9.1); send it with :meth:`send_request`.

        The TU must only send it once a provisional response has arrived (state
        Proceeding), and to the INVITE's destination (:meth:`peer`).
        """
        txn = self._get(key)
        if key.server or not txn.invite:
            raise TransactionError("only a client INVITE transaction can be cancelled")
        invite = _request(txn)
        return _derived_request(invite, "CANCEL", invite.to)

    def receive_response(self, response: Response, now: float) -> list[Action]:
        key = client_key(response)
        txn = self._txns.get(key)
        if txn is None:
            if response.cseq.method == "INVITE" and 200 <= response.status < 300:
                return [DeliverResponse(response, key, stray=True)]
            return []
        if txn.invite:
            return self._invite_client_response(txn, response, now)
        return self._non_invite_client_response(txn, response, now)

    def _invite_client_response(
        self, txn: _Transaction, response: Response, now: float
    ) -> list[Action]:
        status = response.status
        deliver = DeliverResponse(response, txn.key)
        if txn.state in (State.CALLING, State.PROCEEDING):
            self._cancel(txn, _Timer.A, _Timer.B)
            if status < 200:
                txn.state = State.PROCEEDING
                return [deliver]
            if status < 300:
                txn.state = State.ACCEPTED
                self._schedule(txn, _Timer.M, now + 64 * self.timers.t1)
                return [deliver]
            txn.state = State.COMPLETED
            txn.ack = _derived_request(_request(txn), "ACK", response.to)
            out: list[Action] = [SendMessage(txn.ack, txn.peer), deliver]
            if txn.peer.reliable:
                out.append(self._terminate(txn))
            else:
                self._schedule(txn, _Timer.D, now + self.timers.timer_d)
            return out
        if 200 <= status < 300:
            # Accepted: retransmissions and other forks' 2xx go to the TU (RFC 6026 8.4);
            # a 2xx after a non-2xx (Completed) is odd but must reach the dialog layer too.
            return [deliver]
        if txn.state is State.COMPLETED and status >= 300 and txn.ack is not None:
            return [SendMessage(txn.ack, txn.peer)]
        return []

    def _non_invite_client_response(
        self, txn: _Transaction, response: Response, now: float
    ) -> list[Action]:
        if txn.state is State.COMPLETED:
            return []
        deliver = DeliverResponse(response, txn.key)
        if response.status < 200:
            txn.state = State.PROCEEDING
            return [deliver]
        self._cancel(txn, _Timer.E, _Timer.F)
        txn.state = State.COMPLETED
        if txn.peer.reliable:
            return [deliver, self._terminate(txn)]
        self._schedule(txn, _Timer.K, now + self.timers.t4)
        return [deliver]

    # -- server transactions ---------------------------------------------------------

    def receive_request(self, request: Request, source: Address, now: float) -> list[Action]:
        key = server_key(request)
        if request.method == "ACK":
            return self._receive_ack(request, source, key, now)
        txn = self._txns.get(key)
        if txn is not None:
            return self._retransmission(txn)
        invite = request.method == "INVITE"
        txn = _Transaction(
            key,
            request,
            response_destination(request.via[0], source),
            State.PROCEEDING if invite else State.TRYING,
        )
        self._txns[key] = txn
        if invite:
            self._schedule(txn, _Timer.TRYING, now + self.timers.trying_delay)
        return [DeliverRequest(request, source, key)]

    def _retransmission(self, txn: _Transaction) -> list[Action]:
        # INVITE: Accepted and Confirmed absorb; non-INVITE: Trying absorbs.
        if txn.state in (State.PROCEEDING, State.COMPLETED):
            if txn.wire is not None:
                return [SendMessage(txn.wire, txn.peer)]
            if txn.last_response is not None:
                return [SendMessage(txn.last_response, txn.peer)]
        return []

    def _receive_ack(
        self, ack: Request, source: Address, key: TransactionKey, now: float
    ) -> list[Action]:
        txn = self._txns.get(key)
        if key.legacy is not None:
            # RFC 2543: the ACK carries the To tag of our response, which the INVITE
            # (outside a dialog) did not have; the tags must then agree.
            if txn is None and ack.to.tag is not None:
                txn = self._txns.get(_legacy_key(ack, "INVITE", None))
            if txn is not None and (
                txn.last_response is None or txn.last_response.to.tag != ack.to.tag
            ):
                txn = None
        if txn is None:
            return [DeliverRequest(ack, source, None)]
        if txn.state is State.ACCEPTED:
            return [DeliverRequest(ack, source, txn.key)]
        if txn.state is State.COMPLETED:
            self._cancel(txn, _Timer.G, _Timer.H)
            txn.state = State.CONFIRMED
            if txn.peer.reliable:
                return [self._terminate(txn)]
            self._schedule(txn, _Timer.I, now + self.timers.t4)
        return []

    def find_invite_server_transaction(self, cancel: Request) -> TransactionKey | None:
        """The INVITE server transaction a received CANCEL targets (RFC 3261 9.2)."""
        key = server_key(cancel).with_method("INVITE")
        return key if key in self._txns else None

    def send_response(
        self, key: TransactionKey, response: Response, now: float, *, absorb: bool = True
    ) -> list[Action]:
        """The TU answers a request; responses the state does not allow are discarded.

        ``absorb=False``: a final response to a non-INVITE request ends the transaction
        at once, as over a reliable transport, instead of absorbing retransmissions of
        the request for Timer J (32 s over UDP). For answers a retransmission may as
        well get afresh, as a stateless UAS gives them (RFC 3261 8.2.7): a registrar's
        digest challenge to a REGISTER without credentials, which is half of every
        registration's transactions (Kamailio challenges statelessly too)."""
        txn = self._get(key)
        if not key.server:
            raise TransactionError("responses are sent through server transactions")
        if txn.invite:
            return self._invite_server_response(txn, response, now)
        return self._non_invite_server_response(txn, response, now, absorb)

    def _invite_server_response(
        self, txn: _Transaction, response: Response, now: float
    ) -> list[Action]:
        status = response.status
        send = SendMessage(response, txn.peer)
        if txn.state is State.ACCEPTED and 200 <= status < 300:
            return [send]  # the TU's own 2xx retransmissions (RFC 6026 8.7)
        if txn.state is not State.PROCEEDING:
            return []
        self._cancel(txn, _Timer.TRYING)
        txn.last_response = response
        if status < 200:
            return [send]
        t = self.timers
        if status < 300:
            txn.state = State.ACCEPTED
            self._schedule(txn, _Timer.L, now + 64 * t.t1)
            return [send]
        txn.state = State.COMPLETED
        if not txn.peer.reliable:
            txn.interval = t.t1
            self._schedule(txn, _Timer.G, now + t.t1)
        self._schedule(txn, _Timer.H, now + 64 * t.t1)
        return [send]

    def _non_invite_server_response(
        self, txn: _Transaction, response: Response, now: float, absorb: bool = True
    ) -> list[Action]:
        if txn.state is State.COMPLETED:
            return []  # RFC 3261 17.2.2: later finals from the TU are discarded
        txn.last_response = response
        send = SendMessage(response, txn.peer)
        if response.status < 200:
            txn.state = State.PROCEEDING
            return [send]
        txn.state = State.COMPLETED
        if txn.peer.reliable or not absorb:
            return [send, self._terminate(txn)]
        txn.request = None
        txn.wire = response.to_bytes()
        txn.last_response = None
        self._schedule(txn, _Timer.J, now + 64 * self.timers.t1)
        return [SendMessage(txn.wire, txn.peer)]


def stamp_via(request: Request, source: Address) -> None:
    """RFC 3261 18.2.1 and RFC 3581: record where the request really came from (the
    hop: a front's Via is the top one of what it relays)."""
    source = source.hop
    top = request.via[0]
    if top.host != source.host:
        top.params["received"] = source.host
        top.raw = None
    elif "received" in top.params:
        # Only we may say where a request came from: a sender-written received= would
        # send our answers to any host it likes (reflection).
        del top.params["received"]
        top.raw = None
    if "rport" in top.params and top.params["rport"] is None:
        top.params["rport"] = str(source.port)
        top.raw = None
