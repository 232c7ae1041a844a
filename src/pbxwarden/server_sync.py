"""The running server's side of the database and of the guard: what is written back,
what is read again, and what is acted on every second.

Bindings are written back in batches; extensions, tenants, trunks, DIDs, policies,
bans, suspensions and approved networks changed from the CLI or the API are adopted
within a second (a new SIP password throws the old one's phones and calls out); the
guard's alerts are stored, then sent; new bans are stored and mirrored into nftables;
trunk names are resolved again as their DNS answers expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import structlog

from pbxwarden.firewall.engine import Ban
from pbxwarden.firewall.nftables import NftablesError, NftablesOffload
from pbxwarden.guard.alerts import Alert
from pbxwarden.guard.engine import GuardAlert
from pbxwarden.guard.policy import with_stored
from pbxwarden.pbx.cdr import unreachable
from pbxwarden.pbx.directory import refresh_directory
from pbxwarden.pbx.registrar import aor_key
from pbxwarden.pbx.registration import (
    refresh_networks,
)
from pbxwarden.pbx.routing import Routing
from pbxwarden.store.db import ExtensionAuth, StoreError

if TYPE_CHECKING:
    from pbxwarden.server import SipServer

log = structlog.get_logger("pbxwarden.server")

BASELINE_SAVE_INTERVAL = 60.0  # seconds between saves (and merges) of learned baselines


class StoreSync:
    """Owned by :class:`pbxwarden.server.SipServer`; see the module docstring."""

    def __init__(self, server: SipServer) -> None:
        self.server = server
        self.unsaved_bans: dict[str, Ban] = {}
        # networks extensions registered from for the first time, written with the bindings
        self.pending_networks: list[tuple[int, str, float, bool]] = []
        self.approved_networks = -1.0  # the newest stored network change loaded
        self.stored_policies: dict[str, dict[str, Any]] = {}
        self.stored_routing = Routing()  # as the database has it; names not yet resolved
        # time condition overrides dialled on phones, not yet stored: (order, override)
        self.pending_overrides: dict[tuple[str, str], tuple[int, str | None]] = {}
        self._override_seq = 0
        self._override_lock = asyncio.Lock()
        self.firewall_due = False  # the CLI or the API changed bans: adopt them at once
        self.database_down: float | None = None  # when the database stopped answering

    async def write_back(self) -> None:
        interval = self.server.config.storage.flush_interval
        next_realm_check = 0.0
        every = self.baseline_interval()
        next_baseline_save = time.time() + every
        while True:
            await asyncio.sleep(interval)
            now = time.time()
            # what needs no database runs every round, whatever the database's state: a
            # call the guard cuts off must end while PostgreSQL is down too
            self.server.location.purge(now)
            if now >= next_realm_check:
                self.police(now)
            try:
                await self.flush()
                if self.firewall_due and now < next_realm_check:
                    await self.sync_firewall()
                if now >= next_realm_check:  # tenants and extensions added from the CLI
                    next_realm_check = now + 1.0
                    self.server._add_realms(await asyncio.to_thread(self.server.store.known_realms))
                    await self.refresh_directory()
                    await self.refresh_routing()
                    await self.refresh_networks()
                    await self.sync_firewall()
                    await self.server.lock_sync.sync(self.deliver, self.server.events.publish)
                    await self.guard_round(now)
                    if now >= next_baseline_save:  # learned behaviour survives a restart
                        await self.save_baselines()
                        next_baseline_save = now + every
            except Exception as exc:  # the database may be briefly locked; retry next round
                if unreachable(exc):
                    if self.database_down is None:  # once, without a traceback: it repeats
                        self.database_down = now
                        log.warning(
                            "database unreachable: the node goes on with what it holds; "
                            "changes made meanwhile wait, CDRs are spooled to disk",
                            error=(str(exc).strip().splitlines() or [""])[0][:200],
                        )
                else:
                    log.exception("registration write-back failed")
                continue
            if self.database_down is not None:
                log.info("database reachable again", after=round(now - self.database_down, 1))
                self.database_down = None

    def baseline_interval(self) -> float:
        """A single node saves every minute; a node of a cluster as configured."""
        cluster = self.server.config.cluster
        return cluster.baseline_interval if cluster.enabled else BASELINE_SAVE_INTERVAL

    async def save_baselines(self) -> None:
        """Store the guard's learned baselines; on several nodes, merge the others'."""
        await self.server.baselines.round()

    async def guard_round(self, now: float) -> None:
        """Cut off what the guard says must end, adopt suspensions an admin changed, and
        deliver the guard's alerts (stored first, then sent)."""
        policies = await asyncio.to_thread(self.server.store.policies)
        if policies != self.stored_policies:  # set through the API or the CLI
            self.server.guard.reconfigure(with_stored(self.server.config.guard, policies))
            self.stored_policies = policies
            log.info("guard policies updated", tenants=sorted(policies))
        stored = await asyncio.to_thread(self.server.store.suspended_extensions)
        self.server.guard.sync_suspensions(
            {(r["tenant"], r["extension"]): r["reason"] for r in stored},
            time.time(),  # when a lift was seen (a cluster shares it as of then)
            {(r["tenant"], r["extension"]): (r["at"] or now, r["by"] or "admin") for r in stored},
        )
        outbox = self.server.guard.outbox
        while outbox:
            alert = outbox[0]
            await self.deliver(alert)  # stored first: kept for the next round if it fails
            outbox.popleft()

    def police(self, now: float) -> None:
        """The guard's cut-offs, calls whose media stopped, expired presence: from memory."""
        self.server.calls.police(now)
        self.end_silent_calls(now)
        self.server.calls.presence.sweep()  # registrations that expired meanwhile

    def end_silent_calls(self, now: float) -> None:
        """Hang up answered calls whose media stopped: a phone that crashed or lost its
        network sends no BYE, and a call left up keeps costing until max_duration."""
        timeout = self.server.config.media.timeout
        if self.server.media is None or not timeout:
            return
        mono = time.monotonic()
        for call in self.server.calls.active:
            if call.answered is None or call.emergency:
                continue
            idle = self.server.media.idle_for(call.token, mono)
            if idle is not None and min(idle, now - call.answered) > timeout:
                log.warning("call without media hung up", call_id=call.id, seconds=int(idle))
                self.server.calls.end_call(call.id, f"no media for {int(timeout)} s")

    async def deliver(self, alert: GuardAlert) -> None:
        if alert.suspend and alert.extension:
            with contextlib.suppress(StoreError):  # the extension was deleted meanwhile
                await asyncio.to_thread(
                    self.server.store.suspend_extension,
                    alert.tenant,
                    alert.extension,
                    alert.reasons[0] if alert.reasons else alert.summary,
                    alert.at,
                    "guard",
                )
        alert_id, new = await asyncio.to_thread(
            self.server.store.record_alert,
            {
                "tenant": alert.tenant,
                "extension": alert.extension,
                "severity": alert.severity,
                "rule": alert.rule,
                "summary": alert.summary,
                "reasons": alert.reasons,
                "dedupe_key": alert.key,
                "at": alert.at,
            },
        )
        self.server.events.publish(
            "alert",
            {
                "id": alert_id,
                "new": new,
                "tenant": alert.tenant,
                "extension": alert.extension,
                "severity": alert.severity,
                "rule": alert.rule,
                "summary": alert.summary,
                "reasons": list(alert.reasons),
                "suspended": alert.suspend,
            },
            alert.at,
        )
        log.warning(
            "guard alert",
            id=alert_id,
            new=new,
            severity=alert.severity,
            rule=alert.rule,
            tenant=alert.tenant,
            extension=alert.extension,
            summary=alert.summary,
        )
        if new:
            self.send_alert(alert, alert_id)

    def send_alert(self, alert: GuardAlert, alert_id: int) -> None:
        """Hand a new alert to the configured channels (webhook, email, syslog)."""
        if not self.server.alert_channels.configured:
            return
        outgoing = Alert(
            alert_id,
            alert.tenant,
            alert.extension,
            alert.severity,
            alert.rule,
            alert.summary,
            alert.reasons,
            alert.at,
        )

        async def send() -> None:
            results = await self.server.alert_channels.send(outgoing, alert.key)
            log.info("alert sent", id=alert_id, results=results)

        self.server._tasks.add(task := asyncio.ensure_future(send()))
        task.add_done_callback(self.server._tasks.discard)

    async def refresh_directory(self) -> None:
        changed = await refresh_directory(self.server.store, self.server.directory)
        if changed is None:
            return
        log.debug("extensions reloaded", extensions=len(self.server.directory))
        for ext in changed:
            self.password_changed(ext)

    def password_changed(self, ext: ExtensionAuth) -> None:
        """Recovery after a compromise: a new SIP password means whoever had the old one
        must be out at once, not when their registration expires. Every binding of the
        extension goes (the legitimate phone registers again with the new password) and
        its calls in progress end, with the reason in their records."""
        aor = aor_key(ext.realm, ext.number)
        removed = 0
        for binding in self.server.location.lookup(aor, 0.0):
            self.server.location.remove(aor, binding.contact)
            removed += 1
        ended = self.server.calls.end_extension_calls(
            ext.tenant,
            ext.number,
            f"extension {ext.number}'s SIP password was changed: its calls were ended",
        )
        log.warning(
            "SIP password changed: registrations removed and calls ended",
            tenant=ext.tenant,
            extension=ext.number,
            registrations=removed,
            calls=ended,
        )

    async def refresh_networks(self) -> None:
        self.approved_networks = await refresh_networks(
            self.server.store, self.server.netwatch, self.approved_networks
        )

    def hours_override(
        self, tenant: str, number: str, override: str | None, actor: str, source: str
    ) -> None:
        """A phone's ``*62`` override of a time condition (already in effect in the
        dialplan): stored and audited in the background, in the order dialled; until it
        is stored, reloads of the routing keep it rather than what the database had."""
        self._override_seq += 1
        self.pending_overrides[(tenant, number)] = (self._override_seq, override)
        task = asyncio.ensure_future(
            self._store_override(tenant, number, override, actor, source, self._override_seq)
        )
        self.server._tasks.add(task)
        task.add_done_callback(self.server._tasks.discard)

    async def _store_override(
        self, tenant: str, number: str, override: str | None, actor: str, source: str, seq: int
    ) -> None:
        from pbxwarden.store.admin import AdminStore
        from pbxwarden.store.dialplan import TimeConditionStore

        store = self.server.store

        def write() -> None:
            before, after = TimeConditionStore(store).set_override(tenant, number, override)
            resource = f"tenant/{tenant}/hours/{number}"
            AdminStore(store).audit(
                actor, source, "hours.override", resource, before, after, tenant
            )

        async with self._override_lock:
            try:
                await asyncio.to_thread(write)
            except Exception:
                log.exception("saving a time condition override failed", number=number)
            if self.pending_overrides.get((tenant, number), (0, None))[0] == seq:
                del self.pending_overrides[(tenant, number)]
            await self.refresh_routing()

    async def refresh_routing(self) -> None:
        self.stored_routing = await asyncio.to_thread(
            self.server.store.routing_snapshot, self.server._trunk_key
        )
        self.apply_routing()

    def apply_routing(self) -> None:
        """The stored routing with the addresses DNS gave the trunks' names: inbound calls
        are recognised, and carriers trusted by the firewall, by those addresses."""
        stored = self.stored_routing
        routing = stored.with_addresses(self.server.resolver.addresses(stored.trunks))
        if self.pending_overrides:  # dialled on a phone, not stored yet
            conditions = dict(routing.time_conditions)
            for key, (_, override) in self.pending_overrides.items():
                if key in conditions:
                    conditions[key] = replace(conditions[key], override=override)
            routing = replace(routing, time_conditions=conditions)
        self.server.calls.routing = routing
        self.server.trunk_registrations.sync(routing.trunks)
        trusted = routing.trusted_hosts()  # IP hosts and what the names resolve to
        self.server.firewall.set_trusted(trusted, routing.trusted_networks())
        self.server.locks.trunk_hosts = frozenset(trusted)
        self.server.locks.trunk_networks = routing.inbound_networks()

    async def resolve_once(self) -> None:
        if await self.server.resolver.refresh(self.stored_routing.trunks):
            self.apply_routing()

    async def resolve_trunks(self) -> None:
        """Look trunk names up again as their answers expire (and new trunks within a
        second of being added)."""
        while True:
            try:
                await self.resolve_once()
            except Exception:
                log.exception("resolving trunk names failed")
            await asyncio.sleep(1.0)

    async def start_offload(self) -> None:
        fw = self.server.config.firewall
        if not fw.nftables:
            return
        ports = [self.server.config.sip.listen_address[1]]
        if self.server.config.sip.tls is not None:
            from pbxwarden.config import parse_hostport

            ports.append(parse_hostport(self.server.config.sip.tls.listen, 5061)[1])
        offload = NftablesOffload(fw.nftables_table, ports)
        try:
            await asyncio.to_thread(offload.setup)
        except NftablesError as exc:
            log.warning("nftables offload is off", reason=str(exc))
            return
        self.server.nft = offload
        log.info("nftables offload on", table=fw.nftables_table, ports=ports)

    async def sync_firewall(self) -> None:
        """Persist new bans, adopt the stored set (bans added or removed by the CLI), and
        mirror the changes into the kernel when nftables offload is on; in a cluster, bans
        stored or lifted here by the CLI or the API are shared."""
        self.firewall_due = False
        now = time.time()
        events = self.server.firewall.drain_events()
        own = list(events)
        for event in events:
            if event.kind == "ban" and event.address in self.server.firewall.bans:
                self.unsaved_bans[event.address] = self.server.firewall.bans[event.address]
        if self.unsaved_bans:
            saving = dict(self.unsaved_bans)
            rows = [(b.address, b.until, b.reason, b.level, b.created_at) for b in saving.values()]
            await asyncio.to_thread(self.server.store.save_bans, rows)
            for address, ban in saving.items():  # others may have come meanwhile
                if self.unsaved_bans.get(address) is ban:
                    del self.unsaved_bans[address]
        since = now - self.server.firewall.settings.repeat_memory
        stored = await asyncio.to_thread(self.server.store.load_bans, now, since)
        # Bans made while the database was read (a flood meanwhile, another node's) are
        # not in what it returned: kept, and stored on the next round.
        late = self.server.firewall.drain_events()
        own += late
        events += late
        for event in late:
            if event.kind == "ban" and event.address in self.server.firewall.bans:
                self.unsaved_bans[event.address] = self.server.firewall.bans[event.address]
        before = dict(self.server.firewall.bans)
        known = set(before)
        now = time.time()
        self.server.firewall.load(
            [Ban(*row) for row in stored] + list(self.unsaved_bans.values()), now
        )
        events += self.server.firewall.drain_events()
        cluster = self.server.cluster
        if cluster is not None:
            for address in set(self.server.firewall.bans) - known:  # the CLI's, the API's
                cluster.ban_stored(self.server.firewall.bans[address])
            for address, ban in before.items():  # lifted by the CLI or the API
                if address not in self.server.firewall.bans and ban.until > now:
                    cluster.ban_lifted(address, now, ban.until)
        # A banned source's TCP/TLS connections only hold slots: close them.
        for address in {e.address for e in own if e.kind == "ban"} | (
            set(self.server.firewall.bans) - known
        ):
            self.server.transports.drop_source(address)
        for event in events:
            self.server.events.publish(
                event.kind,
                {
                    "tenant": "provider",
                    "address": event.address,
                    "reason": event.reason,
                    "until": event.until,
                    "extension": event.extension,
                },
            )
            log.warning(
                "firewall " + event.kind,
                address=event.address,
                reason=event.reason,
                until=event.until,
                extension=event.extension,
            )
            if event.kind != "unban" and event in own:  # not bans other nodes made
                await self.deliver(
                    GuardAlert(  # one open alert per kind, and per extension attacked
                        "provider",
                        None,
                        "warning",
                        f"firewall-{event.kind}",
                        f"SIP firewall: {event.address} {event.reason}",
                        (
                            *(
                                [
                                    f"{event.address} is banned until "
                                    + time.strftime(
                                        "%Y-%m-%d %H:%M:%S UTC", time.gmtime(event.until)
                                    )
                                ]
                                if event.until is not None
                                else []
                            ),
                            f"reason: {event.reason}",
                            *(
                                [f"it tried the identity {event.extension}"]
                                if event.extension
                                else []
                            ),
                        ),
                        now,
                        dedupe=f"provider/{event.extension or '-'}/firewall-{event.kind}",
                    )
                )
        if self.server.nft is not None:
            added = {
                a: b.until
                for a, b in self.server.firewall.bans.items()
                if a not in known or any(e.kind == "ban" and e.address == a for e in events)
            }
            lifted = [e.address for e in events if e.kind == "unban"]
            if added or lifted:
                try:
                    await asyncio.to_thread(self.server.nft.sync, added, lifted, now)
                except NftablesError as exc:
                    log.error("nftables offload failed", error=str(exc))

    async def flush(self) -> None:
        """Write back what changed: bindings, then newly seen networks (each retried on
        the next round if its write fails)."""
        try:
            await self._flush_bindings()
        finally:
            await self._flush_networks()

    async def _flush_networks(self) -> None:
        if not self.pending_networks:
            return
        networks, self.pending_networks = self.pending_networks, []
        try:
            await asyncio.to_thread(self.server.store.record_networks, networks)
        except Exception:
            self.pending_networks[:0] = networks
            raise

    async def _flush_bindings(self) -> None:
        if not self.server.location.has_changes:
            return
        upserts, deletes = self.server.location.drain_changes()
        try:
            await asyncio.to_thread(self.server.store.write_bindings, upserts, deletes, time.time())
        except Exception:
            self.server.location.requeue(
                upserts, deletes
            )  # nothing is lost; the next round retries
            raise
