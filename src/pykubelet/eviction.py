"""The eviction manager: pods that outgrow the local storage they were given are evicted, as upstream does.

Every `period` (upstream's evictionMonitoringPeriod, 10 s) it reads the stats summary (volume usage is walked
at most once per volumeStatsAggPeriod) when some pod has such a limit, and evicts, at once and with no grace period, each pod whose
  - emptyDir holds more than its `sizeLimit`,
  - ephemeral storage (writable layers, logs, emptyDir and configMap volumes) exceeds its limit, or
  - container uses more writable layer and logs than its `ephemeral-storage` limit,
with upstream's messages. An evicted pod ends Failed with reason Evicted and a Warning Event; it stays in the
API until someone deletes it. Critical pods (static, mirror, or of system-critical priority) are never evicted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from nodeagent import logs

from .pods import qos

log = logs.get(__name__)

MONITORING_PERIOD = 10.0
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
        return POD_MESSAGE.format(_quantity_text(pod_limit))
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


def _quantity_text(value) -> str:
    """A byte count as the API writes a quantity: the largest binary suffix that divides it."""
    amount = int(value)
    for suffix, size in (("Ei", 2**60), ("Pi", 2**50), ("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if amount and amount % size == 0:
            return f"{amount // size}{suffix}"
    return str(amount)


class EvictionManager:
    def __init__(self, *, summary: Callable[[], Awaitable[dict]], pods: Callable[[], list[dict]],
                 evict: Callable[[dict, str], None], period: float = MONITORING_PERIOD):
        self.summary = summary  # the stats summary (stats.SummaryProvider.summary)
        self.pods = pods  # the active pods the kubelet runs
        self.evict = evict  # (pod, message): kill it and end it Failed/Evicted
        self.period = period

    async def check(self) -> list[str]:
        """One round; returns the uids of the pods it evicted. Stats are read only when some pod has a limit to
        check (a summary asks the runtime for every pod's stats)."""
        pods = [pod for pod in self.pods() if has_local_storage_limits(pod) and not is_critical(pod)]
        if not pods:
            return []
        summary = await self.summary()
        by_uid = {p["podRef"]["uid"]: p for p in summary.get("pods") or []}
        evicted = []
        for pod in pods:
            stats = by_uid.get(pod["metadata"]["uid"])
            if stats is None:
                continue
            message = local_storage_violation(pod, stats)
            if message:
                log.info("Evicting pod", pod=f"{pod['metadata'].get('namespace')}/{pod['metadata'].get('name')}",
                         message=message)
                self.evict(pod, message)
                evicted.append(pod["metadata"]["uid"])
        return evicted

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            try:
                await self.check()
            except Exception as err:  # noqa: BLE001 - a failed round is retried next period
                log.warning("Eviction check failed", err=repr(err))
