"""The kubelet's Prometheus registry, with upstream's metric names and help texts (component-base's
"[ALPHA] " marker included). Gauges about what runs are computed from the PLEG's view at scrape time.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Gauge, ProcessCollector
from prometheus_client.core import GaugeMetricFamily

from cri import api


class _RunningCollector:
    """kubelet_running_pods and kubelet_running_containers, from the runtime view."""

    def __init__(self, runtime_pods: Callable):
        self.runtime_pods = runtime_pods

    def describe(self):
        return []

    def collect(self):
        pods = GaugeMetricFamily("kubelet_running_pods",
                                 "[ALPHA] Number of pods that have a running pod sandbox")
        containers = GaugeMetricFamily("kubelet_running_containers",
                                       "[ALPHA] Number of containers currently running",
                                       labels=["container_state"])
        states = {"created": 0, "running": 0, "exited": 0, "unknown": 0}
        names = {api.CONTAINER_CREATED: "created", api.CONTAINER_RUNNING: "running",
                 api.CONTAINER_EXITED: "exited"}
        ready = 0
        for _uid, rt in self.runtime_pods():
            ready += any(s.state == api.SANDBOX_READY for s in rt.sandboxes)
            for container in rt.containers:
                states[names.get(container.state, "unknown")] += 1
        pods.add_metric([], ready)
        for state, count in states.items():
            containers.add_metric([state], count)
        yield pods
        yield containers


def registry(node_name: str, runtime_pods: Callable) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    Gauge("kubelet_node_name", "[ALPHA] The node's name. The count is always 1.", ["node"],
          registry=reg).labels(node_name).set(1)
    reg.register(_RunningCollector(runtime_pods))
    ProcessCollector(registry=reg)
    return reg
