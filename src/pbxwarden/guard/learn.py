"""What the guard learns from each call, and what it remembers of inbound calls.

Attempts are learned into baselines an hour after they were made, and only while the
extension was under no alert (:func:`settle`): a burst cannot make itself usual, and
an attacker cannot widen the limits of the extension he is using. Inbound calls leave
two memories: short calls from callers never seen before, per extension (probes before
a diversion), and short or missed calls per caller, tenant-wide (wangiri).
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from collections.abc import Callable

from pbxwarden.guard import rules
from pbxwarden.guard.baseline import DAY, MAX_LEDGER, Baseline, NumberLedger
from pbxwarden.guard.state import HOUR, Active, ExtState, Inbound, TenantState
from pbxwarden.pbx.numbers import Destination, classify
from pbxwarden.pbx.policy import DIVERTED, CallAttempt

WITHHELD = frozenset(("", "anonymous", "unknown", "restricted", "private", "unavailable"))


def settle(ext: ExtState, tenant: TenantState, now: float) -> None:
    """Learn the attempts that are more than an hour old, unless the extension was
    under an alert in the last day (then they are dropped: not trainable)."""
    recent = ext.recent
    forwards = ext.forwards
    clean = ext.suspended is None and ext.alerted_at <= now - DAY
    while forwards and forwards[0][0] <= now - HOUR:
        at, e164 = forwards.popleft()
        if clean and at > ext.alerted_at + DAY:
            ext.baseline.learn_forward(e164)
            ext.dirty = True
    if not recent or recent[0][0] > now - HOUR:
        return
    while recent and recent[0][0] <= now - HOUR:
        at, hour_of_week, country, e164, day, hour, network, forwarded = recent.popleft()
        if not clean or at <= ext.alerted_at + DAY:
            continue
        if forwarded:
            ext.baseline.learn_forward(e164)
            ext.dirty = True
            continue
        ext.baseline.learn_call(hour_of_week, country, e164, day, hour)
        tenant.baseline.learn_call(hour_of_week, country, e164, day, hour)
        ext.baseline.learn_network(network)
        prefix = rules.range_of(e164)
        if prefix in tenant.ranges or tenant.baseline.range_days(prefix):
            tenant.baseline.learn_range(prefix, day)
        ext.dirty = tenant.dirty = True


def record(
    attempt: CallAttempt,
    ext: ExtState,
    dest: Destination,
    local: dt.datetime,
    network: str,
) -> None:
    now = attempt.at
    if ext.baseline.calls == 0:  # the first call starts the history (not a suspension)
        ext.baseline.started(now)
    hour_of_week = local.weekday() * 24 + local.hour
    ext.recent.append(
        (
            now,
            hour_of_week,
            dest.country,
            dest.e164,
            local.toordinal(),
            local.hour,
            network,
            attempt.kind in DIVERTED,
        )
    )
    if rules.costly(dest):
        ext.prefixes.append((now, dest.e164[:6]))
        if len(ext.prefixes) > 1000:
            ext.prefixes.popleft()


def _entry(base: Baseline, e164: str, at: float) -> NumberLedger | None:
    """The ledger entry of ``e164``, made if there is room (None if there is none)."""
    entry = base.ledger.get(e164)
    if entry is None:
        if len(base.ledger) >= MAX_LEDGER:
            horizon = at - rules.DRIP_DAYS * DAY
            base.ledger = {k: v for k, v in base.ledger.items() if v.first_at > horizon}
            if len(base.ledger) >= MAX_LEDGER:
                return None
        entry = base.ledger[e164] = NumberLedger(at)
    return entry


def ledger(
    ext: ExtState, tenant: TenantState, call: Active, at: float, talked: float, cost: float
) -> None:
    base = ext.baseline
    entry = _entry(base, call.e164, at)
    if entry is None:
        return
    # several nodes: the (merged) entry decides, this node's own entry records the same
    mine = _entry(base.own, call.e164, at) if base.own is not None else None
    new_day = entry.last_day != call.day
    for e in (entry, mine):
        if e is None:
            continue
        if new_day:
            e.days += 1
            e.last_day = call.day
        e.spend += cost
        if call.answered is not None:
            e.answered += 1
            e.talked += talked / 60.0
        if talked >= rules.DRIP_LONG * 60:
            e.long_calls += 1
    if entry.credited or entry.days < 2 or ext.alerted_at >= entry.first_at:
        return
    # a new number called again another day with no alert about the extension since it
    # was first called (a drip refused at its second day never counts): in the tenant,
    # any such (a hotel's guests phoning home); for the extension, long calls only, and
    # only once the pattern held for days (a drip let through cannot count for itself
    # before it is judged again)
    if not entry.tenant_credited:
        entry.tenant_credited = True
        if mine is not None:
            mine.tenant_credited = True
        tenant.baseline.credit_drip()
    if at - entry.first_at >= rules.DRIP_HOLD * DAY:
        entry.credited = True
        if mine is not None:
            mine.credited = True
        if entry.long_calls >= 2:
            base.credit_drip()


def inbound_ended(
    tenant: TenantState, ext_of: Callable[[], ExtState], inbound: Inbound, at: float
) -> None:
    """Remember who rang whom: unknown callers' short calls to an extension (probes
    before a diversion) and short or missed calls tenant-wide (wangiri)."""
    talked = at - inbound.answered if inbound.answered is not None else 0.0
    caller = inbound.caller.strip().lower()
    withheld = caller in WITHHELD or not any(c.isdigit() for c in caller)
    e164 = ""
    if not withheld:
        origin = classify(inbound.caller, inbound.home)
        e164 = origin.e164 if origin is not None and origin.valid else ""
    seen = bool(e164) and e164 in tenant.callers
    if e164:
        tenant.callers[e164] = at
        if len(tenant.callers) > 20_000:
            tenant.prune(at)
    if not inbound.extension:
        return
    if inbound.answered is not None and talked <= rules.PROBE_SECONDS and not seen:
        ext = ext_of()
        ext.probes.append((at, "withheld" if withheld else e164 or "invalid"))
        if len(ext.probes) > 50:
            ext.probes.popleft()
    if e164 and talked <= rules.WANGIRI_SECONDS:
        rang = tenant.rang.get(e164)
        if rang is None:
            rang = tenant.rang[e164] = deque(maxlen=100)
            if len(tenant.rang) > 5_000:
                tenant.prune(at)
        rang.append((at, inbound.extension))
