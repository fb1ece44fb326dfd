"""Which pod goes first under node pressure, and the message that says why — upstream's order and words.

memory: pods using more than they request first, then lower priority, then the most memory over the request;
disk (ephemeral-storage or inodes): the same with local storage; pids: lower priority, then the most processes.
A pod with no stats sorts before those with stats (upstream evicts what it cannot measure first).
"""

from __future__ import annotations


from ..pods import qos
from . import signals

NODE_LOW = "The node was low on resource: {}. "
THRESHOLD_MET = "Threshold quantity: {}, available: {}. "
CONTAINER_OVER = "Container {} was using {}, request is {}, has larger consumption of {}. "


def _priority(pod: dict) -> int:
    return int((pod.get("spec") or {}).get("priority") or 0)


def request(pod: dict, resource: str) -> int:
    """The pod's effective request of `resource` (pod-level if set, else containers and init peak)."""
    pod_level = qos.pod_level_requests(pod)
    if resource in pod_level:
        return int(pod_level[resource])
    return int(qos.aggregate(pod.get("spec") or {}, qos.container_requests).get(resource, 0))


def usage(resource: str, stats: dict) -> int:
    """What the pod uses of the starved resource, from its summary stats."""
    if resource == "memory":
        return int((stats.get("memory") or {}).get("workingSetBytes") or 0)
    if resource == "pids":
        return int((stats.get("process_stats") or {}).get("process_count") or 0)
    storage = stats.get("ephemeral-storage") or {}
    return int(storage.get("inodesUsed" if resource == "inodes" else "usedBytes") or 0)


def rank(signal: str, pods: list[dict], stats: dict[str, dict]) -> list[dict]:
    """`pods` in eviction order for `signal`; `stats` maps pod uid to its summary stats."""
    resource = signals.RESOURCE[signal]
    request_of = "ephemeral-storage" if resource == "inodes" else resource

    def key(pod: dict):
        found = stats.get(pod["metadata"]["uid"])
        if found is None:
            return (0,)
        used = usage(resource, found)
        if resource == "pids":
            return (1, _priority(pod), -used)
        requested = request(pod, request_of)
        return (1, 0 if used > requested else 1, _priority(pod), -(used - requested))

    return sorted(pods, key=key)


def message(signal: str, pod: dict, stats: dict | None, threshold: signals.Threshold,
            observation: signals.Observation | None) -> str:
    """Upstream's eviction message: the starved resource, the threshold, and each container over its request."""
    resource = signals.RESOURCE[signal]
    text = NODE_LOW.format(resource)
    if observation is not None:
        text += THRESHOLD_MET.format(signals.text(signal, threshold.quantity(observation.capacity)),
                                     signals.text(signal, observation.available))
    if stats is None or resource not in ("memory", "ephemeral-storage"):
        return text
    spec = pod.get("spec") or {}
    containers = {c.get("name"): c for c in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]}
    for container_stats in stats.get("containers") or []:
        container = containers.get(container_stats.get("name"))
        if container is None:
            continue
        if resource == "memory":
            used = (container_stats.get("memory") or {}).get("workingSetBytes")
        else:
            parts = [(container_stats.get(k) or {}).get("usedBytes") for k in ("rootfs", "logs")]
            used = None if None in parts else sum(parts)
        requested = int(qos.container_requests(container).get(resource, 0))
        if used is not None and used > requested:
            text += CONTAINER_OVER.format(container["name"], signals.text(signal, used),
                                          signals.text(signal, requested), resource)
    return text
