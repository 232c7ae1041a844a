"""What the call manager asks of the server (:class:`pbxwarden.pbx.b2bua.CallPort`):
send requests and responses, schedule, write CDRs, count failed authentications, store
what a phone changed, deliver alerts. A mixin of :class:`pbxwarden.server.SipServer`,
kept apart so that the server module holds the data flow (transport, firewall, parse,
transactions, dispatch) and this one the B2BUA's side of it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import structlog

from pbxwarden.guard.engine import GuardAlert
from pbxwarden.sip.message import Request, Response
from pbxwarden.sip.transaction import Action, Address, TransactionKey
from pbxwarden.transport.front import front_route

if TYPE_CHECKING:
    from pbxwarden.cluster import ClusterNode
    from pbxwarden.cluster.relay import NodeRelay
    from pbxwarden.events import EventBus
    from pbxwarden.firewall.engine import Firewall
    from pbxwarden.firewall.locks import ExtensionLocks
    from pbxwarden.pbx.calls import CallManager, Cancellable
    from pbxwarden.pbx.cdr import CdrWriter
    from pbxwarden.server_sync import StoreSync
    from pbxwarden.sip.transaction import TransactionLayer
    from pbxwarden.store.db import ExtensionAuth, Store
    from pbxwarden.transport.network import Transports

log = structlog.get_logger("pbxwarden.server")

# what the live event stream says of a call starting and ending (GET /api/v1/events)
EVENT_CALL_FIELDS = (
    "call_id",
    "tenant",
    "extension",
    "caller",
    "callee",
    "kind",
    "decision",
    "reasons",
    "score",
    "severity",
    "callee_e164",
    "dest_country",
    "number_type",
)
EVENT_END_FIELDS = ("disposition", "sip_code", "duration", "cost", "reasons", "decision")


class CallPortMixin:
    """The server's side of :class:`~pbxwarden.pbx.b2bua.CallPort`."""

    if TYPE_CHECKING:  # set by SipServer.__init__
        calls: CallManager
        relay: NodeRelay | None
        tx: TransactionLayer
        transports: Transports
        cdrs: CdrWriter
        cluster: ClusterNode | None
        events: EventBus
        firewall: Firewall
        locks: ExtensionLocks
        store: Store
        sync: StoreSync
        _farewells: list[tuple[TransactionKey, bool]] | None
        _loop: asyncio.AbstractEventLoop | None
        _live_calls: dict[int, tuple[str, str]]
        _tasks: set[asyncio.Future[None]]

        def _run(self, actions: Sequence[Action]) -> None: ...

        def _now(self) -> float: ...

        def _background_write(self, fn: Callable[..., object], *args: object) -> None: ...

    def send_request(self, request: Request, dest: Address) -> TransactionKey:
        self.calls.origins.outgoing(request)
        if dest.front is not None and "Route" not in request.headers:
            request.headers.add("Route", front_route(dest, request.uri))
            if self.relay is not None:  # through another node: signed (cluster/relay.py)
                self.relay.sign(request, dest)
        key, actions = self.tx.send_request(request, dest, self._now())
        if self._farewells is not None:  # a BYE or CANCEL of the shutdown: wait for it
            self._farewells.append((key, True))
        self._run(actions)
        return key

    def send_direct(self, message: Request | Response, dest: Address) -> None:
        self.calls.origins.outgoing(message)
        relayed = isinstance(message, Request) and dest.front is not None
        if relayed and "Route" not in message.headers:  # an ACK for a 2xx: as any request
            assert isinstance(message, Request)
            message.headers.add("Route", front_route(dest, message.uri))
        self.transports.send(message.to_bytes(), dest)

    def build_cancel(self, key: TransactionKey) -> Request:
        return self.tx.build_cancel(key)

    def local_address(self, transport: str) -> tuple[str, int]:
        bound = self.transports.bound.get(transport) or self.transports.bound["UDP"]
        return bound[0], bound[1]

    def schedule(self, delay: float, callback: Callable[[], None]) -> Cancellable:
        assert self._loop is not None
        return self._loop.call_later(delay, callback)

    def wall_time(self) -> float:
        return time.time()

    def cdr_open(self, token: int, fields: dict[str, Any]) -> None:
        self.cdrs.open(token, fields)
        if self.cluster is not None:
            self.cluster.callreg.changed()
        if self.events.listening:
            self._live_calls[token] = (fields["tenant"], fields["call_id"])
            self.events.publish(
                "call.start", {k: fields.get(k) for k in EVENT_CALL_FIELDS}, fields["start_ts"]
            )

    def cdr_answer(self, token: int, at: float) -> None:
        self.cdrs.answer(token, at)
        if self.cluster is not None:
            self.cluster.callreg.changed()

    def cdr_close(self, token: int, fields: dict[str, Any]) -> None:
        self.cdrs.close(token, fields)
        if self.cluster is not None:
            self.cluster.callreg.changed()
        opened = self._live_calls.pop(token, None)
        if opened is not None:
            tenant, call_id = opened
            self.events.publish(
                "call.end",
                {
                    "tenant": tenant,
                    "call_id": call_id,
                    **{k: fields.get(k) for k in EVENT_END_FIELDS if k in fields},
                },
            )

    def auth_failed(
        self, source: Address, username: str, extension: ExtensionAuth | None = None
    ) -> None:
        now = time.time()
        self.firewall.auth_failed(source.host, username, now)
        if extension is not None:
            self.locks.failed(extension, source.host, now)

    def refuse_credentials(self, extension: ExtensionAuth, source: Address) -> bool:
        """Right credentials that must get a wrong password's answer (a locked extension
        from an unknown network, a trunk's address): counted like a wrong password."""
        why = self.locks.refusal(extension, source.host, time.time())
        if why is None:
            return False
        self.auth_failed(source, extension.number, extension)
        log.info("request refused", source=str(source), user=extension.number, reason=why)
        return True

    def forwarding_refused(
        self, tenant: str, number: str, kind: str, target: str, source: str, reason: str
    ) -> None:
        self._background_write(
            self.store.record_forwarding_refused,
            tenant,
            number,
            kind,
            target,
            "phone",
            source,
            reason,
            time.time(),
        )

    def notify(
        self,
        tenant: str,
        extension: str,
        rule: str,
        summary: str,
        reasons: tuple[str, ...],
        dedupe: str,
    ) -> None:
        alert = GuardAlert(
            tenant, extension, "critical", rule, summary, reasons, time.time(), dedupe=dedupe
        )

        async def deliver() -> None:
            try:
                await self.sync.deliver(alert)
            except Exception:
                log.exception("delivering an alert failed", rule=rule, extension=extension)

        self._tasks.add(task := asyncio.ensure_future(deliver()))
        task.add_done_callback(self._tasks.discard)

    def set_hours_override(
        self, tenant: str, number: str, override: str | None, actor: str, source: str
    ) -> None:
        self.sync.hours_override(tenant, number, override, actor, source)

    def set_forwarding(
        self, tenant: str, number: str, kind: str, target: str | None, source: str
    ) -> None:
        async def write() -> None:
            try:
                old = await asyncio.to_thread(
                    self.store.set_forwarding,
                    tenant,
                    number,
                    kind,
                    target,
                    "phone",
                    source,
                    time.time(),
                )
            except Exception:
                log.exception("saving a forwarding change failed", extension=number)
                return
            log.warning(
                "call forwarding changed",
                tenant=tenant,
                extension=number,
                kind=kind,
                old=old,
                new=target,
                actor="phone",
                source=source,
            )
            await self.sync.refresh_directory()

        self._tasks.add(task := asyncio.ensure_future(write()))
        task.add_done_callback(self._tasks.discard)
