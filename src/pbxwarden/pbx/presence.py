"""Busy lamps and presence: SUBSCRIBE/NOTIFY (RFC 6665) for the dialog event package
(RFC 4235: idle, ringing, on a call, for desk phones' BLF keys), presence (RFC 3856,
PIDF RFC 3863: registered or not, on the phone) and message summary (RFC 3842, MWI:
accepted now, "no messages" until voicemail fills it).

A subscriber is an extension that authenticated with digest, and it watches only its
own tenant's extensions (its own mailbox for MWI): an unknown target, another tenant's
and one it may not watch all answer the same 404, so SUBSCRIBE enumerates nothing.
Subscriptions last ``Expires`` seconds (60 to 3600), are refreshed or ended in their
dialog, are capped per subscriber, and end when the phone no longer takes NOTIFYs.

State is computed from the calls in progress and the registrations, never stored
twice: the B2BUA core says when an extension's line changed (:meth:`Presence.changed`)
and each watcher whose document differs from the last it got is notified. The
subscription records hold only what another node would need to take them over (the
dialog, the target, the expiry, the version), so they can move to a shared store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from xml.sax.saxutils import quoteattr

import structlog

from pbxwarden.pbx.call import Call, Cancellable
from pbxwarden.pbx.park import Parked
from pbxwarden.pbx.registrar import aor_key
from pbxwarden.sip.dialog import Dialog
from pbxwarden.sip.errors import ParseError
from pbxwarden.sip.message import (
    Request,
    Response,
    generate_tag,
    make_response,
    safe_reason,
)
from pbxwarden.sip.transaction import Address, TransactionKey
from pbxwarden.store.db import ExtensionAuth

if TYPE_CHECKING:
    from pbxwarden.pbx.calls import CallManager

log = structlog.get_logger("pbxwarden.presence")

CONTENT_TYPES = {
    "dialog": "application/dialog-info+xml",
    "presence": "application/pidf+xml",
    "message-summary": "application/simple-message-summary",
}
MIN_EXPIRES = 60
MAX_EXPIRES = 3600
MAX_PER_SUBSCRIBER = 200  # a receptionist's sidecars hold about a hundred BLF keys

# (call token, direction, state, the dialog's identifiers as attributes) per dialog
Line = tuple[tuple[int, str, str, str], ...]


def _ids(call_id: str, local: str | None, remote: str | None) -> str:
    """RFC 4235 call-id, local-tag and remote-tag of the watched phone's dialog with the
    PBX: what a busy lamp key puts in the Replaces of its pickup INVITE (RFC 3891)."""
    attrs = f" call-id={quoteattr(call_id)}"
    if local:
        attrs += f" local-tag={quoteattr(local)}"
    if remote:
        attrs += f" remote-tag={quoteattr(remote)}"
    return attrs


@dataclass(eq=False)
class Subscription:
    event: str
    subscriber: tuple[str, str]  # (tenant, number)
    target: tuple[str, str]  # (tenant, number) watched
    entity: str  # the watched AOR as the documents name it
    dialog: Dialog
    dest: Address
    expires_at: float
    version: int = 0
    last: str | None = None  # the document last sent (unchanged ones are not resent)
    timer: Cancellable | None = None
    ended: bool = False


def dialog_info(entity: str, version: int, line: Line) -> str:
    """An RFC 4235 document (always ``full``): one <dialog> per call of the line."""
    dialogs = "".join(
        f'<dialog id="{token}"{ids} direction="{direction}"><state>{state}</state></dialog>'
        for token, direction, state, ids in line
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="{version}" '
        f'state="full" entity={quoteattr(entity)}>{dialogs}</dialog-info>\n'
    )


def pidf(entity: str, registered: bool, line: Line) -> str:
    """An RFC 3863 document with an RPID activity (RFC 4480) while on the phone."""
    busy = any(state == "confirmed" for _, _, state, _ in line)
    note = "On the phone" if busy else ("Available" if registered else "Offline")
    activity = "<rpid:on-the-phone/>" if busy else "<rpid:unknown/>"
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<presence xmlns="urn:ietf:params:xml:ns:pidf" '
        'xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" '
        f'xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" entity={quoteattr(entity)}>'
        f'<tuple id="line"><status><basic>{"open" if registered else "closed"}</basic>'
        f"</status><note>{note}</note></tuple>"
        f'<dm:person id="user"><rpid:activities>{activity}</rpid:activities>'
        f"<dm:note>{note}</dm:note></dm:person></presence>\n"
    )


def message_summary(entity: str) -> str:
    return f"Messages-Waiting: no\r\nMessage-Account: {entity}\r\nVoice-Message: 0/0\r\n"


class Presence:
    """The subscriptions, for the dialplan (:class:`pbxwarden.pbx.calls.CallManager`)."""

    def __init__(self, core: CallManager) -> None:
        self.core = core
        self.subscriptions: dict[tuple[str, str], Subscription] = {}  # (Call-ID, our tag)
        self.watchers: dict[tuple[str, str], set[Subscription]] = {}  # by target
        self.counts: dict[tuple[str, str], int] = {}  # subscriptions per subscriber
        self.notified = 0  # NOTIFYs sent, for metrics

    # -- requests ---------------------------------------------------------------------------

    def owns(self, request: Request) -> bool:
        tag = request.to.tag
        return tag is not None and (request.call_id, tag) in self.subscriptions

    def subscribe(self, request: Request, source: Address, key: TransactionKey | None) -> None:
        """An out-of-dialog SUBSCRIBE: a new subscription (or a one-off fetch, Expires 0)."""
        core = self.core
        event = (request.headers.get("Event") or "").split(";", 1)[0].strip().lower()
        if event not in CONTENT_TYPES:
            core.port.respond(
                key,
                request,
                make_response(request, 489, headers=[("Allow-Events", ", ".join(CONTENT_TYPES))]),
            )
            return
        expires = self._expires(request, key)
        if expires is None:
            return
        subscriber = core.authenticated(request, source, key)
        if subscriber is None:
            return
        target = self._target(subscriber, request, event)
        if target is None:
            core.port.respond(key, request, make_response(request, 404, "Not Found"))
            return
        who = (subscriber.tenant, subscriber.number)
        if expires and self.counts.get(who, 0) >= MAX_PER_SUBSCRIBER:
            phrase = f"Forbidden (at most {MAX_PER_SUBSCRIBER} subscriptions per extension)"
            core.port.respond(key, request, make_response(request, 403, phrase))
            return
        tag = generate_tag()
        host, _ = core.port.local_address(source.transport)
        try:
            dialog = Dialog.as_uas(request, tag)
        except ParseError as exc:  # no From tag, an unreadable Contact
            phrase = f"Bad Request ({safe_reason(str(exc))})"
            core.port.respond(key, request, make_response(request, 400, phrase))
            return
        sub = Subscription(
            event,
            who,
            target,
            f"sip:{target[1]}@{host}",
            dialog,
            source,
            core.port.wall_time() + expires,
        )
        self._answer(request, key, tag, expires, source)
        if expires == 0:  # a fetch: the state once, then over
            self._notify(sub, final="timeout")
            return
        self.subscriptions[(request.call_id, tag)] = sub
        self.watchers.setdefault(sub.target, set()).add(sub)
        self.counts[who] = self.counts.get(who, 0) + 1
        self._arm_expiry(sub)
        log.info("subscribed", package=event, subscriber=who[1], target=target[1])
        self._notify(sub)

    def in_dialog(self, request: Request, source: Address, key: TransactionKey | None) -> None:
        """A refresh (or an end: Expires 0) of a subscription, in its dialog."""
        core = self.core
        assert request.to.tag is not None
        sub = self.subscriptions[(request.call_id, request.to.tag)]
        if request.method != "SUBSCRIBE" or source.host != sub.dest.host:
            core.port.respond(key, request, make_response(request, 481))
            return
        if not sub.dialog.accepts(request):
            core.port.respond(key, request, make_response(request, 500, "CSeq out of order"))
            return
        expires = self._expires(request, key)
        if expires is None:
            return
        self._answer(request, key, request.to.tag, expires, source)
        if expires == 0:
            self._end(sub, "timeout")
            return
        sub.expires_at = core.port.wall_time() + expires
        sub.dest = source
        self._arm_expiry(sub)
        sub.last = None  # RFC 6665 4.2.1.2: a NOTIFY follows every SUBSCRIBE
        self._notify(sub)

    def _expires(self, request: Request, key: TransactionKey | None) -> int | None:
        expires = MAX_EXPIRES if request.expires is None else request.expires  # parsed
        if 0 < expires < MIN_EXPIRES:
            self.core.port.respond(
                key,
                request,
                make_response(request, 423, headers=[("Min-Expires", str(MIN_EXPIRES))]),
            )
            return None
        return min(expires, MAX_EXPIRES)

    def _target(
        self, subscriber: ExtensionAuth, request: Request, event: str
    ) -> tuple[str, str] | None:
        """(tenant, number) watched: an extension of the subscriber's tenant, or one of its
        park slots (dialog package: a busy lamp lit while a call waits there)."""
        number = request.uri.user or ""
        if event == "message-summary" and number != subscriber.number:
            return None  # someone else's mailbox: answered as if it did not exist
        if not request.uri.is_sip:
            return None
        if event == "dialog" and self.core.park.slot_of(number) is not None:
            return subscriber.tenant, number
        target = self.core.directory.get(subscriber.realm, number)
        return (target.tenant, target.number) if target is not None and target.enabled else None

    def _answer(
        self,
        request: Request,
        key: TransactionKey | None,
        tag: str,
        expires: int,
        source: Address,
    ) -> None:
        contact = str(self.core.contact(source.transport))
        ok = make_response(
            request, 200, to_tag=tag, headers=[("Expires", str(expires)), ("Contact", contact)]
        )
        self.core.port.respond(key, request, ok)

    # -- state ------------------------------------------------------------------------------

    def changed(self, tenant: str, number: str) -> None:
        """The line of an extension changed (a call rang, was answered or ended; a
        registration came or went): its watchers get what is new."""
        watching = self.watchers.get((tenant, number))
        if not watching:
            return
        line = self.line(tenant, number)
        for sub in list(watching):
            self._notify(sub, line=line)

    def sweep(self) -> None:
        """Registrations also expire without a request: presence is looked at again."""
        for target, subs in list(self.watchers.items()):
            if any(s.event == "presence" for s in subs):
                self.changed(*target)

    def line(self, tenant: str, number: str) -> Line:
        """The extension's calls now: as caller (initiator) or as the callee (recipient);
        a park slot's: the call waiting there."""
        slot = self.core.park.slot_of(number)
        if slot is not None:
            parked = self.core.park.parked(tenant, slot)
            if parked is None or not parked.held():
                return ()
            return ((parked.call.token, "recipient", "confirmed", ""),)
        found = []
        for call in self.core.calls.values():
            if call.ended or call.finish_pending is not None:
                continue
            state = "confirmed" if call.answered is not None else "early"
            a = call.a_extension
            if a is not None and (a.tenant, a.number) == (tenant, number):
                ids = _ids(
                    call.a_request.call_id, call.a_request.from_.params.get("tag"), call.a_tag
                )
                found.append((call.token, "initiator", state, ids))
            rung = call.ringing
            if (
                rung is not None
                and call.b_trunk is None
                and call.b_request is not None
                and (rung.tenant, rung.number) == (tenant, number)
            ):
                b = call.b_request
                phone_tag = call.b_dialog.remote_tag if call.b_dialog is not None else None
                ids = _ids(b.call_id, phone_tag, b.from_.params.get("tag"))
                found.append((call.token, "recipient", state, ids))
            elif call.answered is None:  # a ring group's member, rung by its own leg
                for fork in call.forks:
                    ext = fork.extension
                    if (
                        ext is not None
                        and fork.final is None
                        and (ext.tenant, ext.number)
                        == (
                            tenant,
                            number,
                        )
                    ):
                        ids = _ids(fork.request.call_id, None, fork.request.from_.params.get("tag"))
                        found.append((call.token, "recipient", state, ids))
        return tuple(found)

    def _registered(self, tenant: str, number: str) -> bool:
        core = self.core
        realm = core.routing.realms.get(tenant, core.auth.default_realm)
        return bool(core.location.reach(aor_key(realm, number), core.port.wall_time()))

    def _document(self, sub: Subscription, line: Line | None) -> str:
        if sub.event == "message-summary":
            return message_summary(sub.entity)
        if line is None:
            line = self.line(*sub.target)
        if sub.event == "presence":
            return pidf(sub.entity, self._registered(*sub.target), line)
        return dialog_info(sub.entity, sub.version, line)

    # -- NOTIFY -----------------------------------------------------------------------------

    def _notify(
        self, sub: Subscription, line: Line | None = None, final: str | None = None
    ) -> None:
        if sub.ended:
            return
        body = self._document(sub, line)
        # the version lives inside a dialog document: compare without it
        if final is None and sub.last is not None and self._same(sub, body):
            return
        sub.version += 1
        if sub.event == "dialog":
            body = self._document(sub, line)
        sub.last = body
        core = self.core
        now = core.port.wall_time()
        if final is not None:
            state = f"terminated;reason={final}"
        else:
            state = f"active;expires={max(1, int(sub.expires_at - now))}"
        dest = sub.dest
        notify = core.dialog_request(
            sub.dialog,
            dest,
            "NOTIFY",
            body=body.encode(),
            headers=[
                ("Event", sub.event),
                ("Subscription-State", state),
                ("Content-Type", CONTENT_TYPES[sub.event]),
            ],
        )
        self.notified += 1
        core.request(notify, dest, lambda r: self._notified(sub, r))

    def _same(self, sub: Subscription, body: str) -> bool:
        if sub.event != "dialog":
            return body == sub.last
        assert sub.last is not None
        strip = f'version="{sub.version}"'
        return body.replace(strip, "") == sub.last.replace(strip, "")

    def _notified(self, sub: Subscription, response: Response | None) -> None:
        """A phone that no longer knows the subscription (481), or is gone, ends it."""
        if (response is None or response.status in (404, 408, 481)) and not sub.ended:
            log.info("subscription dropped", package=sub.event, target=sub.target[1])
            self._forget(sub)

    def _arm_expiry(self, sub: Subscription) -> None:
        if sub.timer is not None:
            sub.timer.cancel()
        delay = max(0.0, sub.expires_at - self.core.port.wall_time())
        sub.timer = self.core.port.schedule(delay, lambda: self._expired(sub))

    def _expired(self, sub: Subscription) -> None:
        if not sub.ended and self.core.port.wall_time() >= sub.expires_at - 0.5:
            self._end(sub, "timeout")

    def _end(self, sub: Subscription, reason: str) -> None:
        self._notify(sub, final=reason)
        self._forget(sub)

    def _forget(self, sub: Subscription) -> None:
        if sub.ended:
            return
        sub.ended = True
        if sub.timer is not None:
            sub.timer.cancel()
        self.subscriptions.pop((sub.dialog.call_id, sub.dialog.local_tag), None)
        watching = self.watchers.get(sub.target)
        if watching is not None:
            watching.discard(sub)
            if not watching:
                del self.watchers[sub.target]
        left = self.counts.get(sub.subscriber, 1) - 1
        if left > 0:
            self.counts[sub.subscriber] = left
        else:
            self.counts.pop(sub.subscriber, None)

    def line_of(self, call: Call) -> list[tuple[str, str]]:
        """The extensions (and park slot) whose line ``call`` is part of."""
        found = []
        if isinstance(call.joined, Parked):
            found.append((call.tenant, call.joined.number))
        if call.a_extension is not None:
            found.append((call.a_extension.tenant, call.a_extension.number))
        if call.ringing is not None and call.b_trunk is None:
            found.append((call.ringing.tenant, call.ringing.number))
        elif call.answered is None and not call.ended:  # a ring group's members ringing
            for fork in call.forks:
                if fork.extension is not None and fork.final is None:
                    found.append((fork.extension.tenant, fork.extension.number))
        return found
