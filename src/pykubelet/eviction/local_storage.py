"""Pods that outgrow the local storage they were given, as upstream's eviction manager finds them.

The eviction manager reads the stats summary (volume usage is walked at most once per volumeStatsAggPeriod) when
some pod has such a limit, and evicts, at once and with no grace period, each pod whose
  - emptyDir holds more than its `sizeLimit`,
  - ephemeral storage (writable layers, logs, emptyDir and configMap volumes) exceeds its limit, or
  - container uses more writable layer and logs than its `ephemeral-storage` limit,
with upstream's messages. An evicted pod ends Failed with reason Evicted and a Warning Event; it stays in the
API until someone deletes it. Critical pods (static, mirror, or of system-critical priority) are never evicted.
"""

from __future__ import annotations

from ..pods import qos
from .signals import quantity_text

SYSTEM_CRITICAL_PRIORITY = 2_000_000_000
EMPTY_DIR_MESSAGE = 'Usage of EmptyDir volume "{}" exceeds the limit "{}". '
POD_MESSAGE = "Pod ephemeral local storage usage exceeds the total limit of containers {}. "
CONTAINER_MESSAGE = 'Container {} exceeded its local ephemeral storage limit "{}". '


def is_critical(pod: dict) -> bool:
    meta = pod.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    if annotations.get("kubernetes.io/config.source", "api") != "api" or "kubernetes.io/config.mirror" in annotations:
        return True
    return int((pod.get("spec") or {}).get("priority") or 0) >= SYSTEM_CRITICAL_PRIORITY


def has_local_storage_limits(pod: dict) -> bool:
    spec = pod.get("spec") or {}
    if any((v.get("emptyDir") or {}).get("sizeLimit") for v in spec.get("volumes") or []):
        return True
    if qos.pod_level_limits(pod).get("ephemeral-storage"):
        return True
    return any(qos.container_limits(c).get("ephemeral-storage") for c in spec.get("containers") or [])


def _used(stats: dict | None) -> int:
    return int((stats or {}).get("usedBytes") or 0)


def local_storage_violation(pod: dict, stats: dict) -> str | None:
    """Why `pod` must be evicted for its local storage (upstream's message), or None."""
    spec = pod.get("spec") or {}
    used_by_volume = {v.get("name"): _used(v) for v in stats.get("volume") or []}
    for volume in spec.get("volumes") or []:
        source = volume.get("emptyDir")
        if source is not None and source.get("sizeLimit"):
            limit = qos.quantity(source["sizeLimit"])
            used = used_by_volume.get(volume.get("name"))
            if used is not None and limit > 0 and used > limit:
                return EMPTY_DIR_MESSAGE.format(volume["name"], source["sizeLimit"])
    containers = spec.get("containers") or []
    limits = [qos.container_limits(c).get("ephemeral-storage") for c in containers]
    pod_limit = qos.pod_level_limits(pod).get("ephemeral-storage")
    if pod_limit is None and containers and all(limits):
        pod_limit = sum(limits)  # upstream's PodLimits: only when every container has one
    if pod_limit is not None and _used(stats.get("ephemeral-storage")) > pod_limit:
        return POD_MESSAGE.format(quantity_text(pod_limit))
    by_name = {c.get("name"): c for c in containers}
    for container_stats in stats.get("containers") or []:
        container = by_name.get(container_stats.get("name"))
        limit_text = ((container or {}).get("resources") or {}).get("limits", {}).get("ephemeral-storage")
        if not limit_text or qos.quantity(limit_text) == 0:
            continue
        used = _used(container_stats.get("logs")) + _used(container_stats.get("rootfs"))
        if used > qos.quantity(limit_text):
            return CONTAINER_MESSAGE.format(container_stats["name"], limit_text)
    return None
