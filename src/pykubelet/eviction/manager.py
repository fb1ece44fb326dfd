"""The eviction manager's loop: local storage limits, node pressure conditions, pod eviction and admission.

Every `period` (upstream's evictionMonitoringPeriod, 10 s) one round, in upstream's order:
  1. observe the signals from the node's stats (cheap: a cgroup, two statvfs, one CRI call);
  2. thresholds met now, plus those met before whose minimum reclaim is not yet reached; a soft threshold counts
     once it has been met for its grace period; MemoryPressure/DiskPressure/PIDPressure hold while a threshold
     of theirs is met and for evictionPressureTransitionPeriod after;
  3. pods over their own local storage limits are evicted (local_storage.py);
  4. else, when a threshold counts (for a disk signal, after deleting unused images did not bring every
     threshold back: upstream's node-level reclaim), rank the pods for its signal (memory first) and evict at
     most one — with no grace period for a hard threshold, min(evictionMaxPodGracePeriod, the pod's own) for a
     soft one.
Pod stats (a full summary) are read only for steps 3 and 4, and only when there is something to check.
Under pressure new pods are refused (admit), except critical ones, and, with memory pressure alone, all but
BestEffort pods (or BestEffort pods that tolerate the memory-pressure taint).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from nodeagent import logs

from ..node.nodestatus import Pressure
from ..pods import qos
from . import ranking, signals
from .local_storage import has_local_storage_limits, is_critical, local_storage_violation

log = logs.get(__name__)

MONITORING_PERIOD = 10.0
CLEANUP_TIMEOUT = 30.0  # upstream's podCleanupTimeout: how long a round waits for its evicted pod to be gone
ADMIT_MESSAGE = "The node had condition: [{}]. "
MEMORY_PRESSURE_TAINT = "node.kubernetes.io/memory-pressure"
CONDITION_ORDER = ("MemoryPressure", "DiskPressure", "PIDPressure")


def tolerates_memory_pressure(pod: dict) -> bool:
    """Whether the pod tolerates node.kubernetes.io/memory-pressure:NoSchedule (a taint with no value)."""
    for toleration in (pod.get("spec") or {}).get("tolerations") or []:
        if toleration.get("effect") not in (None, "", "NoSchedule"):
            continue
        key, operator = toleration.get("key") or "", toleration.get("operator") or "Equal"
        if not key and operator == "Exists":
            return True
        if key == MEMORY_PRESSURE_TAINT and (operator == "Exists" or not toleration.get("value")):
            return True
    return False


class EvictionManager:
    def __init__(self, *, node_stats: Callable[[], Awaitable[dict]], summary: Callable[[], Awaitable[dict]],
                 pods: Callable[[], list[dict]], evict: Callable[[dict, str, int], None],
                 thresholds: list[signals.Threshold], transition_period: float = 300.0,
                 max_pod_grace_period: int = 0, node_event: Callable[[str, str, str], None] | None = None,
                 evictions=None, period: float = MONITORING_PERIOD, clock: Callable[[], float] = time.monotonic,
                 cleaned: Callable[[str], bool] | None = None, cleanup_timeout: float = CLEANUP_TIMEOUT,
                 reclaim_disk: Callable[[], Awaitable[object]] | None = None):
        self.node_stats = node_stats  # the summary's node part alone
        self.summary = summary  # the whole stats summary (asks the runtime for every pod's stats)
        self.pods = pods  # the active pods the kubelet runs
        self.evict = evict  # (pod, message, grace period seconds): kill it and end it Failed/Evicted
        self.thresholds = thresholds
        self.transition_period = transition_period
        self.max_pod_grace_period = max_pod_grace_period
        self.node_event = node_event  # (type, reason, message) about the Node
        self.evictions = evictions  # kubelet_evictions{eviction_signal}, or None
        self.period = period
        self.clock = clock
        # uid -> whether an evicted pod's containers have stopped and its volumes are released. As upstream, a
        # round that evicted waits for that (up to cleanup_timeout), so the next round observes the node without
        # the evicted pod's usage instead of evicting a second pod for the same shortfall.
        self.cleaned = cleaned
        self.cleanup_timeout = cleanup_timeout
        self.reclaim_disk = reclaim_disk  # node-level reclaim (unused images) tried before a pod goes for disk
        self.first_met: dict[signals.Threshold, float] = {}  # threshold -> when it was first seen met
        self.condition_seen: dict[str, float] = {}  # condition -> when a threshold of it was last seen met
        self.acting: list[signals.Threshold] = []  # thresholds past their grace period at the last round
        self.conditions: list[str] = []  # node pressure conditions now True, in upstream's order
        self.observations: dict[str, signals.Observation] = {}

    # --- what others ask
    def pressure(self) -> Pressure:
        return Pressure(memory="MemoryPressure" in self.conditions, disk="DiskPressure" in self.conditions,
                        pid="PIDPressure" in self.conditions)

    def admit(self, pod: dict) -> str | None:
        """None to admit a new pod, or why it is refused (the pod then ends Failed, reason Evicted)."""
        if not self.conditions or is_critical(pod):
            return None
        if self.conditions == ["MemoryPressure"] and (
                qos.qos_class(pod) != "BestEffort" or tolerates_memory_pressure(pod)):
            return None
        return ADMIT_MESSAGE.format(" ".join(self.conditions))

    # --- one round
    async def check(self) -> list[str]:
        """One round; returns the uids of the pods it evicted."""
        acting = await self._observe() if self.thresholds else []
        pods = [pod for pod in self.pods() if not is_critical(pod)]
        limited = [pod for pod in pods if has_local_storage_limits(pod)]
        if not acting and not limited:
            return []
        summary = await self.summary()
        stats = {p["podRef"]["uid"]: p for p in summary.get("pods") or []}
        evicted = self._evict_over_limits(limited, stats)
        if evicted or not acting or not pods:
            return evicted
        threshold = sorted(acting, key=lambda t: signals.RESOURCE[t.signal] != "memory")[0]
        resource = signals.RESOURCE[threshold.signal]
        log.info("Eviction manager: attempting to reclaim", resourceName=resource, signal=threshold.signal)
        if self.node_event is not None:
            self.node_event("Warning", "EvictionThresholdMet", f"Attempting to reclaim {resource}")
        if await self._reclaimed_without_eviction(threshold):
            return []
        pod = ranking.rank(threshold.signal, pods, stats)[0]
        uid = pod["metadata"]["uid"]
        message = ranking.message(threshold.signal, pod, stats.get(uid), threshold,
                                  self.observations.get(threshold.signal))
        grace = 0
        if not threshold.hard:
            own = (pod.get("spec") or {}).get("terminationGracePeriodSeconds")
            grace = self.max_pod_grace_period if own is None else min(self.max_pod_grace_period, int(own))
        log.info("Evicting pod", pod=f"{pod['metadata'].get('namespace')}/{pod['metadata'].get('name')}",
                 signal=threshold.signal, message=message, gracePeriod=grace)
        self.evict(pod, message, grace)
        if self.evictions is not None:
            self.evictions.labels(threshold.signal).inc()
        await self._wait_cleanup(uid)
        return [uid]

    async def _reclaimed_without_eviction(self, threshold: signals.Threshold) -> bool:
        """For a disk signal, upstream's reclaimNodeLevelResources: delete unused images, observe again, and
        evict no pod if no threshold (minimum reclaim included) is met any more."""
        resource = signals.RESOURCE[threshold.signal]
        if self.reclaim_disk is None or resource not in ("ephemeral-storage", "inodes"):
            return False
        try:
            await self.reclaim_disk()
        except Exception as err:  # noqa: BLE001 - what it freed still counts; pods are next
            log.info("Eviction manager: unexpected error when attempting to reduce resource pressure",
                     resourceName=resource, err=str(err))
        observations = signals.observe(await self.node_stats())
        if signals.met(self.thresholds, observations, with_min_reclaim=True):
            log.info("Eviction manager: must evict pod(s) to reclaim", resourceName=resource)
            return False
        self.observations = observations
        log.info("Eviction manager: able to reduce resource pressure without evicting pods.",
                 resourceName=resource)
        return True

    async def _wait_cleanup(self, uid: str) -> None:
        if self.cleaned is None:
            return
        deadline = self.clock() + self.cleanup_timeout
        while not self.cleaned(uid):
            if self.clock() >= deadline:
                log.warning("Eviction manager: timed out waiting for the evicted pod to be cleaned up", podUID=uid)
                return
            await asyncio.sleep(1)

    async def _observe(self) -> list[signals.Threshold]:
        """Update the observations, first-met times and conditions; the thresholds to act on now."""
        self.observations = signals.observe(await self.node_stats())
        now = self.clock()
        met = signals.met(self.thresholds, self.observations)
        unresolved = signals.met(self.acting, self.observations, with_min_reclaim=True)
        met += [t for t in unresolved if t not in met]
        self.first_met = {t: self.first_met.get(t, now) for t in met}
        for threshold in met:
            self.condition_seen[signals.CONDITION[threshold.signal]] = now
        conditions = [c for c in CONDITION_ORDER
                      if c in self.condition_seen and now - self.condition_seen[c] <= self.transition_period]
        if conditions != self.conditions:
            log.info("Node pressure conditions changed", before=self.conditions, now=conditions,
                     observed={t.signal: signals.text(t.signal, self.observations[t.signal].available) for t in met})
        self.conditions = conditions
        self.acting = [t for t in met if now - self.first_met[t] >= t.grace_period]
        return self.acting

    def _evict_over_limits(self, pods: list[dict], stats: dict[str, dict]) -> list[str]:
        evicted = []
        for pod in pods:
            found = stats.get(pod["metadata"]["uid"])
            message = local_storage_violation(pod, found) if found is not None else None
            if message:
                log.info("Evicting pod", pod=f"{pod['metadata'].get('namespace')}/{pod['metadata'].get('name')}",
                         message=message)
                self.evict(pod, message, 0)
                evicted.append(pod["metadata"]["uid"])
        return evicted

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            try:
                await self.check()
            except Exception as err:  # noqa: BLE001 - a failed round is retried next period
                log.warning("Eviction check failed", err=repr(err))
