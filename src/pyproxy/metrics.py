"""kube-proxy's Prometheus metrics and its :10249 server (/metrics, /proxyMode, /healthz).

The metrics are prometheus_client's, with upstream's names, help texts, types, labels and
buckets (pkg/proxy/metrics, Kubernetes v1.36) and ``[ALPHA]`` in front of the help, as
component-base writes it. They belong to no registry until `new_registry(mode)` builds an
agent's: the metrics upstream's RegisterMetrics registers for that proxy mode, and the
process_* collector.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics import MetricWrapperBase

from nodeagent import httpserve, logs
from nodeagent.metrics import UsedFamilies

log = logs.get(__name__)

PROCESS_START = time.time()
ALL_MODES = frozenset({"iptables", "ipvs", "nftables"})
MODES: dict[MetricWrapperBase, frozenset[str]] = {}  # every metric → the proxy modes upstream registers it for


def _alpha(kind, name: str, help: str, labels: Iterable[str] = (), *, modes: Iterable[str] = ALL_MODES, **kw):
    metric = kind(name, f"[ALPHA] {help}", labels, registry=None, **kw)
    MODES[metric] = frozenset(modes)
    return metric


def new_registry(mode: str) -> CollectorRegistry:
    """An agent's registry: the metrics upstream registers for proxy `mode`, and process_*."""
    registry = CollectorRegistry()
    registry.register(UsedFamilies(m for m, modes in MODES.items() if mode in modes))
    ProcessCollector(registry=registry)
    return registry


_SYNC_BUCKETS = [0.001 * 2 ** i for i in range(15)]  # ExponentialBuckets(0.001, 2, 15)
_IPTABLES, _NFTABLES = {"iptables"}, {"nftables"}

SYNC_PROXY_RULES_LATENCY = _alpha(
    Histogram, "kubeproxy_sync_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds", ["ip_family"],
    buckets=_SYNC_BUCKETS)
SYNC_FULL_PROXY_RULES_LATENCY = _alpha(
    Histogram, "kubeproxy_sync_full_proxy_rules_duration_seconds",
    "SyncProxyRules latency in seconds for full resyncs", ["ip_family"], buckets=_SYNC_BUCKETS,
    modes=_IPTABLES | _NFTABLES)
SYNC_PARTIAL_PROXY_RULES_LATENCY = _alpha(
    Histogram, "kubeproxy_sync_partial_proxy_rules_duration_seconds",
    "SyncProxyRules latency in seconds for partial resyncs", ["ip_family"], buckets=_SYNC_BUCKETS,
    modes=_IPTABLES | _NFTABLES)
SYNC_PROXY_RULES_LAST_TIMESTAMP = _alpha(
    Gauge, "kubeproxy_sync_proxy_rules_last_timestamp_seconds", "The last time proxy rules were successfully synced",
    ["ip_family"])
NETWORK_PROGRAMMING_LATENCY = _alpha(
    Histogram, "kubeproxy_network_programming_duration_seconds", "In Cluster Network Programming Latency in seconds",
    ["ip_family"], buckets=[0, 0.25, 0.5,  # MergeBuckets(LinearBuckets(0.25, 0.25, 2),
                            *range(1, 60),  # LinearBuckets(1, 1, 59),
                            *range(60, 120, 5),  # LinearBuckets(60, 5, 12),
                            *range(120, 301, 30)])  # LinearBuckets(120, 30, 7)), leading 0 included
ENDPOINT_CHANGES_PENDING = _alpha(
    Gauge, "kubeproxy_sync_proxy_rules_endpoint_changes_pending", "Pending proxy rules Endpoint changes")
ENDPOINT_CHANGES_TOTAL = _alpha(
    Counter, "kubeproxy_sync_proxy_rules_endpoint_changes_total", "Cumulative proxy rules Endpoint changes")
SERVICE_CHANGES_PENDING = _alpha(
    Gauge, "kubeproxy_sync_proxy_rules_service_changes_pending", "Pending proxy rules Service changes")
SERVICE_CHANGES_TOTAL = _alpha(
    Counter, "kubeproxy_sync_proxy_rules_service_changes_total", "Cumulative proxy rules Service changes")
IPTABLES_RESTORE_FAILURES_TOTAL = _alpha(
    Counter, "kubeproxy_sync_proxy_rules_iptables_restore_failures_total",
    "Cumulative proxy iptables restore failures", ["ip_family"], modes={"iptables", "ipvs"})
IPTABLES_PARTIAL_RESTORE_FAILURES_TOTAL = _alpha(
    Counter, "kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total",
    "Cumulative proxy iptables partial restore failures", ["ip_family"], modes=_IPTABLES)
IPTABLES_RULES_TOTAL = _alpha(
    Gauge, "kubeproxy_sync_proxy_rules_iptables_total", "Total number of iptables rules owned by kube-proxy",
    ["ip_family", "table"], modes=_IPTABLES)
IPTABLES_RULES_LAST_SYNC = _alpha(
    Gauge, "kubeproxy_sync_proxy_rules_iptables_last", "Number of iptables rules written by kube-proxy in last sync",
    ["ip_family", "table"], modes=_IPTABLES)
NFTABLES_SYNC_FAILURES_TOTAL = _alpha(
    Counter, "kubeproxy_sync_proxy_rules_nftables_sync_failures_total", "Cumulative proxy nftables sync failures",
    ["ip_family"], modes=_NFTABLES)
NFTABLES_CLEANUP_FAILURES_TOTAL = _alpha(
    Counter, "kubeproxy_sync_proxy_rules_nftables_cleanup_failures_total",
    "Cumulative proxy nftables cleanup failures", ["ip_family"], modes=_NFTABLES)
PROXY_HEALTHZ_TOTAL = _alpha(
    Counter, "kubeproxy_proxy_healthz_total", "Cumulative proxy healthz HTTP status", ["code"])
PROXY_LIVEZ_TOTAL = _alpha(
    Counter, "kubeproxy_proxy_livez_total", "Cumulative proxy livez HTTP status", ["code"])
SYNC_PROXY_RULES_LAST_QUEUED_TIMESTAMP = _alpha(
    Gauge, "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
    "The last time a sync of proxy rules was queued", ["ip_family"])
SYNC_PROXY_RULES_NO_LOCAL_ENDPOINTS_TOTAL = _alpha(
    Gauge, "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
    "Number of services with a Local traffic policy and no endpoints", ["ip_family", "traffic_policy"])
RECONCILE_CONNTRACK_FLOWS_LATENCY = _alpha(
    Histogram, "kubeproxy_conntrack_reconciler_sync_duration_seconds",
    "ReconcileConntrackFlowsLatency latency in seconds", ["ip_family"], buckets=_SYNC_BUCKETS)
RECONCILE_CONNTRACK_FLOWS_DELETED_ENTRIES_TOTAL = _alpha(
    Counter, "kubeproxy_conntrack_reconciler_deleted_entries_total",
    "Cumulative conntrack flows deleted by conntrack reconciler", ["ip_family"])


def record_sync(seconds: float, *, full: bool, ip_family: str = "IPv4", now: float | None = None) -> None:
    """After a successful sync: its duration (overall, and full or partial) and the last-sync timestamp."""
    SYNC_PROXY_RULES_LATENCY.labels(ip_family=ip_family).observe(seconds)
    (SYNC_FULL_PROXY_RULES_LATENCY if full else SYNC_PARTIAL_PROXY_RULES_LATENCY).labels(
        ip_family=ip_family).observe(seconds)
    SYNC_PROXY_RULES_LAST_TIMESTAMP.labels(ip_family=ip_family).set(time.time() if now is None else now)


def conntrack_reconciled(ip_family: str, seconds: float, deleted: int) -> None:
    RECONCILE_CONNTRACK_FLOWS_LATENCY.labels(ip_family=ip_family).observe(seconds)
    RECONCILE_CONNTRACK_FLOWS_DELETED_ENTRIES_TOTAL.labels(ip_family=ip_family).inc(deleted)


def parse_trigger_time(annotation: str) -> float | None:
    """Seconds since the epoch from an RFC 3339 time (the last-change-trigger-time annotation); None if invalid."""
    try:
        when = datetime.fromisoformat(annotation.strip())
    except (ValueError, AttributeError, TypeError):
        return None
    if when.tzinfo is None:  # RFC 3339 always carries an offset
        return None
    return when.timestamp()


def observe_network_programming(trigger_time_annotation: str, *, ip_family: str = "IPv4", now: float | None = None,
                                not_before: float | None = None) -> float | None:
    """Observe now − the EndpointSlice's ``endpoints.kubernetes.io/last-change-trigger-time``; returns it.

    Like upstream, a trigger older than this process (`not_before`, default: when
    this module was loaded) is not observed — it would only measure our own
    downtime — and neither is an unparsable one. Returns None when nothing was observed.
    """
    when = parse_trigger_time(trigger_time_annotation)
    if when is None or when < (PROCESS_START if not_before is None else not_before):
        return None
    latency = (time.time() if now is None else now) - when
    NETWORK_PROGRAMMING_LATENCY.labels(ip_family=ip_family).observe(latency)
    return latency


async def serve(host: str, port: int, *, proxy_mode: str, registry: CollectorRegistry) -> asyncio.Server:
    """kube-proxy's metrics server (default 127.0.0.1:10249): /metrics, /proxyMode, /healthz."""
    plain = {"Content-Type": "text/plain; charset=utf-8", "X-Content-Type-Options": "nosniff"}

    def handle(method: str, path: str) -> httpserve.Response:
        if path == "/metrics":
            return 200, {"Content-Type": CONTENT_TYPE_PLAIN_0_0_4}, generate_latest(registry)
        if path == "/proxyMode":
            return 200, plain, proxy_mode.encode()
        if path == "/healthz":
            return 200, plain, b"ok"
        return httpserve.not_found()

    server = await httpserve.serve_http(host, port, handle)
    log.info("Serving metrics", address=f"{host}:{port}", proxyMode=proxy_mode)
    return server
