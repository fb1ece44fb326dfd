"""/metrics/resource and /metrics/cadvisor: Prometheus text built from one Summary per scrape.

/metrics/resource has upstream's families (pkg/kubelet/metrics/collectors/resource_metrics.go),
each sample stamped with the time it was measured, as metrics-server reads them. /metrics/cadvisor
carries the cadvisor families that the Summary's figures can honestly fill (cpu, memory, start
time, last seen, network bytes), with the kubelet's label set (container, id, image, name,
namespace, pod); cadvisor's disk, I/O and spec families are not served.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from nodeagent.metrics import exposition

_SECOND = 1_000_000_000
_CONTAINER = ["container", "pod", "namespace"]
_POD = ["pod", "namespace"]
_CADVISOR = ["container", "id", "image", "name", "namespace", "pod"]


class _Families:
    """A one-shot collector over families built before the scrape."""

    def __init__(self, families):
        self.families = sorted(families, key=lambda f: f.name + ("_total" if f.type == "counter" else ""))

    def collect(self):
        return [f for f in self.families if f.samples]


def _text(families) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return exposition(registry)


def _stamp(ns: int) -> float:
    return ns / _SECOND


def resource_metrics(summary: dict | None) -> bytes:
    """The /metrics/resource body; `summary` None (the stats could not be read) gives only the error gauges."""
    node_cpu = CounterMetricFamily("node_cpu_usage_seconds_total",
                                   "[STABLE] Cumulative cpu time consumed by the node in core-seconds")
    node_memory = GaugeMetricFamily("node_memory_working_set_bytes", "[STABLE] Current working set of the node in bytes")
    container_cpu = CounterMetricFamily("container_cpu_usage_seconds_total",
                                        "[STABLE] Cumulative cpu time consumed by the container in core-seconds",
                                        labels=_CONTAINER)
    container_memory = GaugeMetricFamily("container_memory_working_set_bytes",
                                         "[STABLE] Current working set of the container in bytes", labels=_CONTAINER)
    container_start = GaugeMetricFamily("container_start_time_seconds",
                                        "[STABLE] Start time of the container since unix epoch in seconds",
                                        labels=_CONTAINER)
    pod_cpu = CounterMetricFamily("pod_cpu_usage_seconds_total",
                                  "[STABLE] Cumulative cpu time consumed by the pod in core-seconds", labels=_POD)
    pod_memory = GaugeMetricFamily("pod_memory_working_set_bytes", "[STABLE] Current working set of the pod in bytes",
                                   labels=_POD)
    error = 0 if summary is not None else 1
    scrape_error = GaugeMetricFamily("scrape_error",
                                     "[ALPHA] 1 if there was an error while getting container metrics, 0 otherwise")
    resource_error = GaugeMetricFamily("resource_scrape_error",
                                       "[STABLE] 1 if there was an error while getting container metrics, 0 otherwise")
    scrape_error.add_metric([], error)
    resource_error.add_metric([], error)
    families = [node_cpu, node_memory, container_cpu, container_memory, container_start, pod_cpu, pod_memory,
                scrape_error, resource_error]
    if summary is None:
        return _text(families)

    node = summary["node"]
    if "usageCoreNanoSeconds" in node.get("cpu", {}):
        node_cpu.add_metric([], node["cpu"]["usageCoreNanoSeconds"] / _SECOND, timestamp=_stamp(node["cpu"]["time"]))
    if "workingSetBytes" in node.get("memory", {}):
        node_memory.add_metric([], node["memory"]["workingSetBytes"], timestamp=_stamp(node["memory"]["time"]))
    for pod in summary["pods"]:
        ref = pod["podRef"]
        for c in pod["containers"]:
            labels = [c["name"], ref["name"], ref["namespace"]]
            if c.get("startTime", 0) > 0:
                container_start.add_metric(labels, c["startTime"] / _SECOND)
            if "usageCoreNanoSeconds" in c.get("cpu", {}):
                container_cpu.add_metric(labels, c["cpu"]["usageCoreNanoSeconds"] / _SECOND,
                                         timestamp=_stamp(c["cpu"]["time"]))
            if "workingSetBytes" in c.get("memory", {}):
                container_memory.add_metric(labels, c["memory"]["workingSetBytes"],
                                            timestamp=_stamp(c["memory"]["time"]))
        labels = [ref["name"], ref["namespace"]]
        if "usageCoreNanoSeconds" in pod.get("cpu", {}):
            pod_cpu.add_metric(labels, pod["cpu"]["usageCoreNanoSeconds"] / _SECOND, timestamp=_stamp(pod["cpu"]["time"]))
        if "workingSetBytes" in pod.get("memory", {}):
            pod_memory.add_metric(labels, pod["memory"]["workingSetBytes"], timestamp=_stamp(pod["memory"]["time"]))
    return _text(families)


def _cadvisor_rows(summary: dict):
    """(stats, labels) for the node, each pod and each container, with the kubelet's cadvisor labels: `id` the
    cgroup, `name` the runtime's container id; the builder's private ``_cgroup``/``_id``/``_image`` keys."""
    node = summary["node"]
    yield node, {"id": node.get("_cgroup", "/")}
    for pod in summary["pods"]:
        ref, cgroup = pod["podRef"], pod.get("_cgroup", "")
        yield pod, {"id": cgroup, "namespace": ref["namespace"], "pod": ref["name"]}
        for c in pod["containers"]:
            yield c, {"container": c["name"], "id": f"{cgroup}/{c.get('_id', '')}" if cgroup else "",
                      "image": c.get("_image", ""), "name": c.get("_id", ""), "namespace": ref["namespace"],
                      "pod": ref["name"]}


def cadvisor_metrics(summary: dict, now: int) -> bytes:
    """The /metrics/cadvisor body from a full Summary (as SummaryProvider builds it, before `as_api`)."""
    cpu = CounterMetricFamily("container_cpu_usage_seconds_total", "Cumulative cpu time consumed in seconds.",
                              labels=[*_CADVISOR, "cpu"])
    usage = GaugeMetricFamily("container_memory_usage_bytes",
                              "Current memory usage in bytes, including all memory regardless of when it was accessed",
                              labels=_CADVISOR)
    working = GaugeMetricFamily("container_memory_working_set_bytes", "Current working set in bytes.",
                                labels=_CADVISOR)
    rss = GaugeMetricFamily("container_memory_rss", "Size of RSS in bytes.", labels=_CADVISOR)
    start = GaugeMetricFamily("container_start_time_seconds", "Start time of the container since unix epoch in seconds.",
                              labels=_CADVISOR)
    seen = GaugeMetricFamily("container_last_seen", "Last time a container was seen by the exporter",
                             labels=_CADVISOR)
    rx = CounterMetricFamily("container_network_receive_bytes_total", "Cumulative count of bytes received",
                             labels=[*_CADVISOR, "interface"])
    tx = CounterMetricFamily("container_network_transmit_bytes_total", "Cumulative count of bytes transmitted",
                             labels=[*_CADVISOR, "interface"])
    for stats, label_set in _cadvisor_rows(summary):
        labels = [label_set.get(k, "") for k in _CADVISOR]
        seen.add_metric(labels, now // _SECOND, timestamp=_stamp(now))
        if stats.get("startTime"):
            start.add_metric(labels, stats["startTime"] // _SECOND, timestamp=_stamp(now))
        c = stats.get("cpu", {})
        if c.get("usageCoreNanoSeconds"):
            cpu.add_metric([*labels, "total"], c["usageCoreNanoSeconds"] / _SECOND, timestamp=_stamp(c["time"]))
        m = stats.get("memory", {})
        for family, key in ((usage, "usageBytes"), (working, "workingSetBytes"), (rss, "rssBytes")):
            if key in m:
                family.add_metric(labels, m[key], timestamp=_stamp(m["time"]))
        network = stats.get("network")
        if network:
            for interface in network.get("interfaces", []):
                if "rxBytes" in interface:
                    rx.add_metric([*labels, interface["name"]], interface["rxBytes"], timestamp=_stamp(network["time"]))
                if "txBytes" in interface:
                    tx.add_metric([*labels, interface["name"]], interface["txBytes"], timestamp=_stamp(network["time"]))
    return _text([cpu, usage, working, rss, start, seen, rx, tx])
