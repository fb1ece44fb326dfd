"""kube-proxy's Prometheus metrics and its :10249 server (/metrics, /proxyMode, /healthz).

A minimal registry (counters, gauges, histograms, with labels) rendering the
Prometheus text format 0.0.4 the way client_golang does: families sorted by name,
``[ALPHA]`` in front of the help of alpha metrics (component-base adds it), numbers
in Go's shortest ``%g`` form, histograms with cumulative buckets, ``+Inf``, ``_sum``
and ``_count``. The metric names, help texts, types, labels and buckets are
upstream's (pkg/proxy/metrics, Kubernetes v1.36); which of them a proxy mode
exposes follows upstream's RegisterMetrics. The process_* metrics come from
/proc/self like client_golang's process collector.
"""

from __future__ import annotations

import asyncio
import math
import os
import resource
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from decimal import Decimal

from nodeagent import httpserve, logs

log = logs.get(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PROCESS_START = time.time()
ALL_MODES = frozenset({"iptables", "ipvs", "nftables"})


def go_float(value: float) -> str:
    """A number as Go's strconv.FormatFloat(v, 'g', -1, 64) writes it (what client_golang emits)."""
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "-0" if math.copysign(1, value) < 0 else "0"
    sign, digits, exponent = Decimal(repr(value)).as_tuple()
    text = "".join(map(str, digits)).rstrip("0") or "0"
    exponent += len(digits) - len(text)  # value = text * 10**exponent
    point = len(text) + exponent  # digits before the decimal point
    exp = point - 1
    minus = "-" if sign else ""
    if exp < -4 or exp >= 6:  # Go's %g with the shortest precision switches to %e there
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        return f"{minus}{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if point <= 0:
        return f"{minus}0.{'0' * -point}{text}"
    if point >= len(text):
        return f"{minus}{text}{'0' * (point - len(text))}"
    return f"{minus}{text[:point]}.{text[point:]}"


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    text = ",".join(f'{k}="{_escape_label(v)}"' for k, v in pairs)
    return "{" + text + "}" if text else ""


class Metric:
    kind = "untyped"

    def __init__(self, name: str, help: str, labels: Sequence[str] = (), *, stability: str | None = "ALPHA",
                 modes: Iterable[str] = ALL_MODES):
        self.name, self.help, self.labelnames = name, help, tuple(labels)
        self.stability = stability
        self.modes = frozenset(modes)
        self._values: dict[tuple[str, ...], object] = {}

    def _key(self, labels: dict) -> tuple[str, ...]:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {tuple(labels)}")
        return tuple(str(labels[n]) for n in self.labelnames)

    def _series(self) -> list[tuple[tuple[str, ...], object]]:
        if not self.labelnames and not self._values:
            return [((), self._zero())]  # an unlabelled metric exists from the start, at zero
        return sorted(self._values.items())

    def _zero(self):
        return 0.0

    def clear(self) -> None:
        self._values.clear()

    def render(self) -> str:
        """The family's text; nothing for a labelled family never used (client_golang omits it too)."""
        series = self._series()
        if not series:
            return ""
        help = f"[{self.stability}] {self.help}" if self.stability else self.help
        lines = [f"# HELP {self.name} {_escape_help(help)}", f"# TYPE {self.name} {self.kind}"]
        for key, value in series:
            lines.extend(self._lines(list(zip(self.labelnames, key)), value))
        return "\n".join(lines) + "\n"

    def _lines(self, pairs, value) -> list[str]:
        return [f"{self.name}{_labels(pairs)} {go_float(value)}"]


class _Number(Metric):
    """A metric whose series are plain numbers."""

    def inc(self, amount: float = 1, **labels) -> None:
        key = self._key(labels)
        self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels) -> float:
        return self._values.get(self._key(labels), 0.0)


class Counter(_Number):
    kind = "counter"

    def inc(self, amount: float = 1, **labels) -> None:
        if amount < 0:
            raise ValueError("a counter cannot decrease")
        super().inc(amount, **labels)


class Gauge(_Number):
    kind = "gauge"

    def set(self, value: float, **labels) -> None:
        self._values[self._key(labels)] = float(value)


class Histogram(Metric):
    kind = "histogram"

    def __init__(self, name: str, help: str, labels: Sequence[str] = (), *, buckets: Sequence[float], **kw):
        super().__init__(name, help, labels, **kw)
        self.buckets = tuple(sorted(set(float(b) for b in buckets if not math.isinf(b))))

    def _zero(self):
        return [[0] * len(self.buckets), 0.0, 0]  # per-bucket (not cumulative) counts, sum, count

    def observe(self, value: float, **labels) -> None:
        key = self._key(labels)
        data = self._values.setdefault(key, self._zero())
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                data[0][i] += 1
                break
        data[1] += value
        data[2] += 1

    def count(self, **labels) -> int:
        data = self._values.get(self._key(labels))
        return data[2] if data else 0

    def _lines(self, pairs, value) -> list[str]:
        counts, total, n = value
        lines, cumulative = [], 0
        for bound, c in zip(self.buckets, counts):
            cumulative += c
            lines.append(f"{self.name}_bucket{_labels(pairs + [('le', go_float(bound))])} {cumulative}")
        lines.append(f"{self.name}_bucket{_labels(pairs + [('le', '+Inf')])} {n}")
        lines.append(f"{self.name}_sum{_labels(pairs)} {go_float(total)}")
        lines.append(f"{self.name}_count{_labels(pairs)} {n}")
        return lines


class Registry:
    def __init__(self):
        self.metrics: dict[str, Metric] = {}
        self.collectors: list[Callable[[], str]] = []

    def add(self, metric: Metric) -> Metric:
        if metric.name in self.metrics:
            raise ValueError(f"metric {metric.name} registered twice")
        self.metrics[metric.name] = metric
        return metric

    def counter(self, name: str, help: str, labels: Sequence[str] = (), **kw) -> Counter:
        return self.add(Counter(name, help, labels, **kw))

    def gauge(self, name: str, help: str, labels: Sequence[str] = (), **kw) -> Gauge:
        return self.add(Gauge(name, help, labels, **kw))

    def histogram(self, name: str, help: str, labels: Sequence[str] = (), *, buckets: Sequence[float],
                  **kw) -> Histogram:
        return self.add(Histogram(name, help, labels, buckets=buckets, **kw))

    def render(self, mode: str | None = None) -> str:
        """The exposition text; with `mode`, only the metrics upstream registers for that proxy mode."""
        parts = [m.render() for name, m in sorted(self.metrics.items()) if mode is None or mode in m.modes]
        for collect in self.collectors:
            try:
                parts.append(collect())
            except Exception as exc:
                log.warning("Metrics collector failed", err=exc)
        return "".join(parts)


def exponential_buckets(start: float, factor: float, count: int) -> list[float]:
    out = []
    for _ in range(count):
        out.append(start)
        start *= factor
    return out


def linear_buckets(start: float, width: float, count: int) -> list[float]:
    out = []
    for _ in range(count):
        out.append(start)
        start += width
    return out


def merge_buckets(*lists: Sequence[float]) -> list[float]:
    """component-base's MergeBuckets, leading 0 bucket included."""
    return [0.0] + [b for bounds in lists for b in bounds]


REGISTRY = Registry()
_r = REGISTRY
_SYNC_BUCKETS = exponential_buckets(0.001, 2, 15)
_IPTABLES, _NFTABLES = {"iptables"}, {"nftables"}

SYNC_PROXY_RULES_LATENCY = _r.histogram(
    "kubeproxy_sync_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds", ["ip_family"],
    buckets=_SYNC_BUCKETS)
SYNC_FULL_PROXY_RULES_LATENCY = _r.histogram(
    "kubeproxy_sync_full_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds for full resyncs",
    ["ip_family"], buckets=_SYNC_BUCKETS, modes=_IPTABLES | _NFTABLES)
SYNC_PARTIAL_PROXY_RULES_LATENCY = _r.histogram(
    "kubeproxy_sync_partial_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds for partial resyncs",
    ["ip_family"], buckets=_SYNC_BUCKETS, modes=_IPTABLES | _NFTABLES)
SYNC_PROXY_RULES_LAST_TIMESTAMP = _r.gauge(
    "kubeproxy_sync_proxy_rules_last_timestamp_seconds", "The last time proxy rules were successfully synced",
    ["ip_family"])
NETWORK_PROGRAMMING_LATENCY = _r.histogram(
    "kubeproxy_network_programming_duration_seconds", "In Cluster Network Programming Latency in seconds",
    ["ip_family"], buckets=merge_buckets(
        linear_buckets(0.25, 0.25, 2),  # 0.25s, 0.5s
        linear_buckets(1, 1, 59),  # 1s .. 59s
        linear_buckets(60, 5, 12),  # 60s .. 115s
        linear_buckets(120, 30, 7)))  # 2min .. 5min
ENDPOINT_CHANGES_PENDING = _r.gauge(
    "kubeproxy_sync_proxy_rules_endpoint_changes_pending", "Pending proxy rules Endpoint changes")
ENDPOINT_CHANGES_TOTAL = _r.counter(
    "kubeproxy_sync_proxy_rules_endpoint_changes_total", "Cumulative proxy rules Endpoint changes")
SERVICE_CHANGES_PENDING = _r.gauge(
    "kubeproxy_sync_proxy_rules_service_changes_pending", "Pending proxy rules Service changes")
SERVICE_CHANGES_TOTAL = _r.counter(
    "kubeproxy_sync_proxy_rules_service_changes_total", "Cumulative proxy rules Service changes")
IPTABLES_RESTORE_FAILURES_TOTAL = _r.counter(
    "kubeproxy_sync_proxy_rules_iptables_restore_failures_total", "Cumulative proxy iptables restore failures",
    ["ip_family"], modes={"iptables", "ipvs"})
IPTABLES_PARTIAL_RESTORE_FAILURES_TOTAL = _r.counter(
    "kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total",
    "Cumulative proxy iptables partial restore failures", ["ip_family"], modes=_IPTABLES)
IPTABLES_RULES_TOTAL = _r.gauge(
    "kubeproxy_sync_proxy_rules_iptables_total", "Total number of iptables rules owned by kube-proxy",
    ["ip_family", "table"], modes=_IPTABLES)
IPTABLES_RULES_LAST_SYNC = _r.gauge(
    "kubeproxy_sync_proxy_rules_iptables_last", "Number of iptables rules written by kube-proxy in last sync",
    ["ip_family", "table"], modes=_IPTABLES)
NFTABLES_SYNC_FAILURES_TOTAL = _r.counter(
    "kubeproxy_sync_proxy_rules_nftables_sync_failures_total", "Cumulative proxy nftables sync failures",
    ["ip_family"], modes=_NFTABLES)
NFTABLES_CLEANUP_FAILURES_TOTAL = _r.counter(
    "kubeproxy_sync_proxy_rules_nftables_cleanup_failures_total", "Cumulative proxy nftables cleanup failures",
    ["ip_family"], modes=_NFTABLES)
PROXY_HEALTHZ_TOTAL = _r.counter(
    "kubeproxy_proxy_healthz_total", "Cumulative proxy healthz HTTP status", ["code"])
PROXY_LIVEZ_TOTAL = _r.counter(
    "kubeproxy_proxy_livez_total", "Cumulative proxy livez HTTP status", ["code"])
SYNC_PROXY_RULES_LAST_QUEUED_TIMESTAMP = _r.gauge(
    "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds", "The last time a sync of proxy rules was queued",
    ["ip_family"])
SYNC_PROXY_RULES_NO_LOCAL_ENDPOINTS_TOTAL = _r.gauge(
    "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
    "Number of services with a Local traffic policy and no endpoints", ["ip_family", "traffic_policy"])
RECONCILE_CONNTRACK_FLOWS_LATENCY = _r.histogram(
    "kubeproxy_conntrack_reconciler_sync_duration_seconds", "ReconcileConntrackFlowsLatency latency in seconds",
    ["ip_family"], buckets=_SYNC_BUCKETS)
RECONCILE_CONNTRACK_FLOWS_DELETED_ENTRIES_TOTAL = _r.counter(
    "kubeproxy_conntrack_reconciler_deleted_entries_total",
    "Cumulative conntrack flows deleted by conntrack reconciler", ["ip_family"])


def record_sync(seconds: float, *, full: bool, ip_family: str = "IPv4", now: float | None = None) -> None:
    """After a successful sync: its duration (overall, and full or partial) and the last-sync timestamp."""
    SYNC_PROXY_RULES_LATENCY.observe(seconds, ip_family=ip_family)
    (SYNC_FULL_PROXY_RULES_LATENCY if full else SYNC_PARTIAL_PROXY_RULES_LATENCY).observe(seconds, ip_family=ip_family)
    SYNC_PROXY_RULES_LAST_TIMESTAMP.set(time.time() if now is None else now, ip_family=ip_family)


def conntrack_reconciled(ip_family: str, seconds: float, deleted: int) -> None:
    RECONCILE_CONNTRACK_FLOWS_LATENCY.observe(seconds, ip_family=ip_family)
    RECONCILE_CONNTRACK_FLOWS_DELETED_ENTRIES_TOTAL.inc(deleted, ip_family=ip_family)


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
    NETWORK_PROGRAMMING_LATENCY.observe(latency, ip_family=ip_family)
    return latency


def _process_metrics() -> str:
    """client_golang's process collector, from /proc/self."""
    with open("/proc/self/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()  # fields after the command name, from field 3 (state)
    ticks = os.sysconf("SC_CLK_TCK")
    page = os.sysconf("SC_PAGE_SIZE")
    with open("/proc/stat") as f:
        boot = next(float(line.split()[1]) for line in f if line.startswith("btime "))
    cpu = (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
    start = boot + int(fields[19]) / ticks
    vsize, rss = int(fields[20]), int(fields[21]) * page
    open_fds = len(os.listdir("/proc/self/fd"))
    max_fds = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    max_vm = resource.getrlimit(resource.RLIMIT_AS)[0]
    if max_vm == resource.RLIM_INFINITY:
        max_vm = 2 ** 64 - 1  # what Go reads for "unlimited"
    rows = [
        ("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.", cpu),
        ("process_max_fds", "gauge", "Maximum number of open file descriptors.", max_fds),
        ("process_open_fds", "gauge", "Number of open file descriptors.", open_fds),
        ("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", rss),
        ("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.", start),
        ("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", vsize),
        ("process_virtual_memory_max_bytes", "gauge", "Maximum amount of virtual memory available in bytes.",
         max_vm),
    ]
    return "".join(f"# HELP {n} {h}\n# TYPE {n} {t}\n{n} {go_float(v)}\n" for n, t, h, v in rows)


REGISTRY.collectors.append(_process_metrics)


async def serve(host: str, port: int, *, proxy_mode: str, registry: Registry = REGISTRY) -> asyncio.Server:
    """kube-proxy's metrics server (default 127.0.0.1:10249): /metrics, /proxyMode, /healthz."""

    def handle(method: str, path: str) -> httpserve.Response:
        if path == "/metrics":
            return 200, {"Content-Type": CONTENT_TYPE}, registry.render(proxy_mode).encode()
        if path == "/proxyMode":
            return 200, {"Content-Type": "text/plain; charset=utf-8", "X-Content-Type-Options": "nosniff"}, \
                proxy_mode.encode()
        if path == "/healthz":
            return 200, {"Content-Type": "text/plain; charset=utf-8", "X-Content-Type-Options": "nosniff"}, b"ok"
        return httpserve.not_found()

    server = await httpserve.serve_http(host, port, handle)
    log.info("Serving metrics", address=f"{host}:{port}", proxyMode=proxy_mode)
    return server
