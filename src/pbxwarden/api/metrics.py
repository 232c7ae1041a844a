"""Prometheus metrics of the admin API and of the PBX's stored state.

One :class:`~prometheus_client.CollectorRegistry` per app (``app.state.registry``), not
the process-global default, so the SIP server can register its own collectors there
and tests can build several apps in one process.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from sqlalchemy import func, select

from pbxwarden.store.db import Store
from pbxwarden.store.models import AlertRow


class StoreCollector:
    """Gauges read from the database at scrape time (so they are never stale)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def _families(self) -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily("pbxwarden_extensions", "Extensions, by tenant", labels=["tenant"]),
            GaugeMetricFamily(
                "pbxwarden_extensions_suspended",
                "Extensions whose costly calls are refused until resumed",
                labels=["tenant"],
            ),
            GaugeMetricFamily(
                "pbxwarden_alerts_open",
                "Alerts not yet resolved (open or acknowledged), by severity",
                labels=["severity"],
            ),
        ]

    def collect(self) -> Iterable[Metric]:
        extensions, suspended, alerts = self._families()
        for row in self.store.list_tenants():
            extensions.add_metric([row["tenant"]], row["extensions"])
        per_tenant: dict[str, int] = {}
        for row in self.store.suspended_extensions():
            per_tenant[row["tenant"]] = per_tenant.get(row["tenant"], 0) + 1
        for tenant, count in sorted(per_tenant.items()):
            suspended.add_metric([tenant], count)
        stmt = (
            select(AlertRow.severity, func.count(AlertRow.id))
            .where(AlertRow.status != "resolved")
            .group_by(AlertRow.severity)
        )
        with self.store.engine.connect() as conn:
            counts = {str(s): int(n) for s, n in conn.execute(stmt)}
        for severity in sorted({"warning", "critical", *counts}):
            alerts.add_metric([severity], counts.get(severity, 0))
        return [extensions, suspended, alerts]


class HttpMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "pbxwarden_http_requests",
            "Admin API requests, by route template, method and status",
            ["route", "method", "status"],
            registry=registry,
        )
        self.login_failures = Counter(
            "pbxwarden_http_login_failures",
            "Failed admin logins (wrong credentials or locked out)",
            registry=registry,
        )


def make_registry(store: Store) -> tuple[CollectorRegistry, HttpMetrics]:
    registry = CollectorRegistry()
    registry.register(StoreCollector(store))
    return registry, HttpMetrics(registry)
