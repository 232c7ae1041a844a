"""What the guard remembers per extension and tenant, and how it is kept: suspensions
(its own, an administrator's, another node's) and learned baselines (exported for the
store, imported at start, merged with the other nodes' rows). A mixin of
:class:`pbxwarden.guard.engine.Guard`, apart from its decisions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pbxwarden.guard.baseline import DAY, Baseline
from pbxwarden.guard.baseline_merge import merge, untie
from pbxwarden.guard.state import ExtState, TenantState

if TYPE_CHECKING:
    from pbxwarden.guard.policy import PolicyBook
    from pbxwarden.guard.shared import SharedSuspensions


class GuardMemory:
    """The guard's per-extension and per-tenant state (set up by ``Guard.__init__``)."""

    if TYPE_CHECKING:
        book: PolicyBook
        merging: bool
        shared_suspensions: SharedSuspensions | None
        _ext: dict[tuple[str, str], ExtState]
        _tenants: dict[str, TenantState]
        _cutoffs: list[tuple[int, str]]
        _stored_suspensions: dict[tuple[str, str], str]

    # -- state -----------------------------------------------------------------------------

    def _ext_state(self, tenant: str, extension: str, now: float) -> ExtState:
        state = self._ext.get((tenant, extension))
        if state is None:
            state = self._ext[(tenant, extension)] = ExtState(self._fresh(now))
            self._tenant_state(tenant, now).extensions += 1
        return state

    def _tenant_state(self, tenant: str, now: float) -> TenantState:
        state = self._tenants.get(tenant)
        if state is None:
            state = self._tenants[tenant] = TenantState(self._fresh(now))
        return state

    def _fresh(self, now: float) -> Baseline:
        base = Baseline(now)
        if self.merging:
            base.own = Baseline(now)
        return base

    def suspend(self, tenant: str, extension: str, reason: str) -> None:
        """Refuse the extension's costly calls and cut off those in progress."""
        state = self._ext_state(tenant, extension, float("inf"))
        state.suspended = reason
        for ref in state.active:
            self._cutoffs.append((ref, f"extension {extension} suspended: {reason}"))

    def resume(self, tenant: str, extension: str) -> None:
        state = self._ext.get((tenant, extension))
        if state is not None:
            state.suspended = None
            state.signals.clear()

    def sync_suspensions(
        self,
        stored: dict[tuple[str, str], str],
        now: float = 0.0,
        made: dict[tuple[str, str], tuple[float, str]] | None = None,
    ) -> None:
        """Apply what changed in the stored suspensions since the last sync.

        Only changes: a suspension the guard just made may not be stored yet, and must
        not be undone by a snapshot taken before it was. A change that alters the
        guard's state (an administrator's, not one adopted from another node and stored
        since) is told to :attr:`shared_suspensions`, a suspension with when and by whom
        it was stored (``made``), a lift as of ``now``.
        """
        share = self.shared_suspensions
        for key in self._stored_suspensions.keys() - stored.keys():
            was = self.is_suspended(*key)
            self.resume(*key)
            if share is not None and was is not None:
                share.changed(key[0], key[1], None, now, "admin")
        for key in stored.keys() - self._stored_suspensions.keys():
            if self.is_suspended(*key) is None:
                self.suspend(key[0], key[1], stored[key])
                if share is not None:
                    at, by = (made or {}).get(key, (now, "admin"))
                    share.changed(key[0], key[1], stored[key], at, by)
        self._stored_suspensions = dict(stored)

    def adopt_suspension(self, tenant: str, extension: str, reason: str | None) -> bool:
        """Another node's suspension (``reason``) or lift (None), applied here and not
        told back; True if it changed anything."""
        if reason is None:
            if self.is_suspended(tenant, extension) is None:
                return False
            self.resume(tenant, extension)
            return True
        if self.is_suspended(tenant, extension) is not None:
            return False
        self.suspend(tenant, extension, reason)
        return True

    def is_suspended(self, tenant: str, extension: str) -> str | None:
        state = self._ext.get((tenant, extension))
        return state.suspended if state is not None else None

    def baseline(self, tenant: str, extension: str) -> Baseline | None:
        state = self._ext.get((tenant, extension))
        return state.baseline if state is not None else None

    def set_baseline(self, tenant: str, extension: str, baseline: Baseline) -> None:
        self._ext_state(tenant, extension, baseline.first_at).baseline = baseline

    def learning(self, tenant: str, now: float) -> bool:
        """Whether the tenant is still in its learning period (learned rules report)."""
        state = self._tenants.get(tenant)
        first = state.baseline.first_at if state is not None else now
        return now - first < self.book.tenant(tenant).learning_days * DAY

    def export_baselines(self, everything: bool = False) -> list[tuple[str, str, dict[str, Any]]]:
        """Baselines changed since the last export (or all): (tenant, extension, data);
        a tenant's own baseline has the extension "". For the store, across restarts.
        With :attr:`merging`, what this node learned itself (its own row)."""
        out: list[tuple[str, str, dict[str, Any]]] = []
        for (tenant, number), ext in self._ext.items():
            base = ext.baseline.own or ext.baseline
            if ext.dirty or (everything and base.calls):
                out.append((tenant, number, base.to_json()))
                ext.dirty = False
        for tenant, state in self._tenants.items():
            base = state.baseline.own or state.baseline
            if state.dirty or (everything and base.calls):
                data = base.to_json()
                data["targets"] = []  # only extensions' own targets are ever consulted
                out.append((tenant, "", data))
                state.dirty = False
        return out

    def import_baselines(self, rows: list[tuple[str, str, dict[str, Any]]]) -> None:
        """Stored baselines (this node's own rows, with :attr:`merging`)."""
        for tenant, number, data in rows:
            baseline = Baseline.from_json(data)
            if self.merging:
                own, baseline = baseline, merge(baseline)
                baseline.own = own
            if number:
                self._ext_state(tenant, number, baseline.first_at).baseline = baseline
            else:
                self._tenant_state(tenant, baseline.first_at).baseline = baseline

    def adopt_baselines(
        self, others: dict[tuple[str, str], list[tuple[str, dict[str, Any]]]], node: str
    ) -> None:
        """The other nodes' latest rows of these keys (tenant, extension or ""), as
        (node, data): each baseline becomes the merge of this node's (``node``) own
        learning and theirs, days both counted taken back by one of them (``untie``)."""
        if not self.merging:
            raise RuntimeError("adopt_baselines needs merging (several nodes)")
        for (tenant, number), rows in others.items():
            parts = [(n, Baseline.from_json(data)) for n, data in rows]
            first = min((p.first_at for _, p in parts), default=float("inf"))
            if number:
                state: ExtState | TenantState = self._ext_state(tenant, number, first)
            else:
                state = self._tenant_state(tenant, first)
            own = state.baseline.own
            if own is None:  # made before merging was turned on
                own = state.baseline
            if untie(own, parts, node):
                state.dirty = True
            view = merge(own, *(p for _, p in parts))
            if not number:  # the tenant's targets are not stored: this node's are kept
                view.targets = set(state.baseline.targets)
            view.own = own
            state.baseline = view
