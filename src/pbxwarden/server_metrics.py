"""Prometheus view of the running SIP server, read at scrape time.

The hot path only bumps plain integers (``SipServer.stats``, the guard's decision
counts); this collector turns them into metric families when Prometheus asks, so
serving metrics costs nothing per packet.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)

from pbxwarden import _core
from pbxwarden.latency import LATENCY_BUCKETS

if TYPE_CHECKING:
    from pbxwarden.server import SipServer


class SipCollector:
    def __init__(self, server: SipServer) -> None:
        self.server = server

    def describe(self) -> Iterable[Metric]:
        return []  # collected on demand only (no duplicate-name check at registration)

    def collect(self) -> Iterable[Metric]:
        s = self.server
        stats = s.stats
        messages = CounterMetricFamily(
            "pbxwarden_sip_messages",
            "SIP messages received, and what became of the ones not processed",
            labels=["outcome"],
        )
        messages.add_metric(["received"], stats.received)
        messages.add_metric(["parse_error"], stats.parse_errors)
        messages.add_metric(["firewall_refused"], stats.refused)
        messages.add_metric(["shed_overload"], stats.shed)
        yield messages
        core = InfoMetricFamily(
            "pbxwarden_sip_core", "Which build of the SIP core runs: compiled or interpreted"
        )
        core.add_metric([], {"build": _core.mode()})
        yield core
        yield CounterMetricFamily(
            "pbxwarden_registrations", "Successful REGISTER transactions", value=stats.registers_ok
        )
        yield CounterMetricFamily(
            "pbxwarden_auth_failures", "Failed digest authentications", value=stats.auth_failures
        )
        yield GaugeMetricFamily(
            "pbxwarden_registrations_active", "Registered contacts", value=len(s.location)
        )
        yield GaugeMetricFamily(
            "pbxwarden_sip_transactions_active",
            "SIP transactions in progress",
            value=s.tx.active_count,
        )
        yield GaugeMetricFamily(
            "pbxwarden_calls_active", "Calls in progress", value=len(s.calls.active)
        )
        calls = CounterMetricFamily(
            "pbxwarden_calls", "Call attempts, by kind (rate() of it is CPS)", labels=["kind"]
        )
        for kind, count in sorted(s.calls.attempts.items()):
            calls.add_metric([kind], count)
        yield calls
        decisions = CounterMetricFamily(
            "pbxwarden_guard_decisions",
            "Fraud guard decisions, by attempt kind, outcome and alert severity",
            labels=["kind", "outcome", "severity"],
        )
        for (kind, outcome, severity), count in sorted(s.guard.decisions.items()):
            decisions.add_metric([kind, outcome, severity], count)
        yield decisions
        yield GaugeMetricFamily(
            "pbxwarden_bans_active",
            "Addresses banned by the SIP firewall",
            value=len(s.firewall.bans),
        )
        latency = HistogramMetricFamily(
            "pbxwarden_sip_transaction_seconds",
            "Time from a request's arrival to its final response, by method",
            labels=["method"],
        )
        for method, counts in sorted(s.latency.counts.items()):
            cumulative, buckets = 0, []
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), counts, strict=True):
                cumulative += count
                buckets.append((str(bound) if bound != float("inf") else "+Inf", cumulative))
            latency.add_metric([method], buckets, s.latency.sums.get(method, 0.0))
        yield latency
        if s.media is not None:
            media = s.media.counters
            yield GaugeMetricFamily(
                "pbxwarden_media_sessions",
                "Calls with media anchored at the relay",
                value=media.sessions,
            )
            packets = CounterMetricFamily(
                "pbxwarden_media_packets",
                "RTP/RTCP datagrams at the relay: relayed, from strangers (dropped), or from "
                "a phone whose peer has no address yet (dropped)",
                labels=["outcome"],
            )
            packets.add_metric(["relayed"], media.packets)
            packets.add_metric(["stranger"], media.strangers)
            packets.add_metric(["no_peer"], media.dropped)
            yield packets
            yield CounterMetricFamily(
                "pbxwarden_media_port_exhaustion",
                "Calls refused because the relay's port range was used up",
                value=media.no_ports,
            )
        if s.workers is not None:
            w = s.workers.describe()
            workers = GaugeMetricFamily(
                "pbxwarden_registrar_workers",
                "Registrar worker processes, configured and ready (REGISTERs of a worker "
                "that is not ready are handled by the main process)",
                labels=["state"],
            )
            workers.add_metric(["configured"], w["workers"])
            workers.add_metric(["ready"], w["workers_ready"])
            yield workers
            yield CounterMetricFamily(
                "pbxwarden_registrar_worker_restarts",
                "Registrar workers restarted after exiting",
                value=w["worker_restarts"],
            )
            handed = CounterMetricFamily(
                "pbxwarden_registrar_worker_datagrams",
                "REGISTER datagrams handed to workers, dropped because a worker's queue "
                "was full, read by workers from their own sockets, handled by workers",
                labels=["outcome"],
            )
            handed.add_metric(["dispatched"], w["worker_dispatched"])
            handed.add_metric(["dropped"], w["worker_dropped"])
            handed.add_metric(["read"], w["worker_read"])  # from their own sockets
            handed.add_metric(["handled"], w["worker_handled"])
            yield handed
        lag = GaugeMetricFamily(
            "pbxwarden_overloaded", "1 while new calls are shed for event-loop lag"
        )
        lag.add_metric([], 1.0 if s.overloaded else 0.0)
        yield lag
        if s.cluster is not None:
            yield GaugeMetricFamily(
                "pbxwarden_cluster_redis_up",
                "1 while this node shares state through Redis, 0 while it goes on alone",
                value=1.0 if s.cluster.link.healthy else 0.0,
            )
            yield from cluster_node_metrics(s.cluster.registry.view, s.cluster.registry.counts())


def cluster_node_metrics(view: list[dict[str, Any]], counts: dict[str, int]) -> Iterable[Metric]:
    """The node registry as this node last read it (its own heartbeat's answer): read at
    scrape time from memory, no Redis round trip."""
    nodes = GaugeMetricFamily(
        "pbxwarden_cluster_nodes", "Nodes in the cluster's registry, by state", labels=["state"]
    )
    for state, count in sorted(counts.items()):
        nodes.add_metric([state], count)
    yield nodes
    info = InfoMetricFamily(
        "pbxwarden_cluster_node", "Each node's state and version", labels=["node"]
    )
    families = {
        "calls": GaugeMetricFamily(
            "pbxwarden_cluster_node_calls", "Calls in progress on each node", labels=["node"]
        ),
        "contacts": GaugeMetricFamily(
            "pbxwarden_cluster_node_contacts", "Registered contacts on each node", labels=["node"]
        ),
        "cpu": GaugeMetricFamily(
            "pbxwarden_cluster_node_cpu",
            "Share of one core each node's process tree used between its last two heartbeats",
            labels=["node"],
        ),
        "age": GaugeMetricFamily(
            "pbxwarden_cluster_node_heartbeat_age_seconds",
            "Seconds since each node's last heartbeat (by Redis's clock), at this node's own "
            "last heartbeat",
            labels=["node"],
        ),
    }
    for node in view:
        name = str(node["node"])
        info.add_metric([name], {"state": str(node["state"]), "version": str(node.get("version"))})
        for key, family in families.items():
            value = node.get(key)
            if isinstance(value, int | float):
                family.add_metric([name], float(value))
    yield info
    yield from families.values()
