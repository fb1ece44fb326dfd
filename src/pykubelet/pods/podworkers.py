"""One serialized worker per pod: sync it toward its spec, terminate it, clean it up.

A worker wakes when the pod changes in the API, when the PLEG sees its
containers change, when a probe result flips, or when a back-off it asked for
ends (and every resync period regardless). Each wake runs one idempotent step.
"""

from __future__ import annotations

import asyncio
import time

from cri import CRIError, api

from nodeagent import logs

from . import podstatus, resize
from .. import timestamps
from .events import WARNING, Recorder
from .kuberuntime import RuntimeManager, grace_period, pod_ref
from .pleg import Pleg
from .podstate import POD_UID
from .staticpods import HASH, MirrorPodError, StaticPods, is_mirror
from .statusmanager import StatusManager

log = logs.get(__name__)

RESYNC = 60.0
RESIZE_DEFERRED_RETRY = 10.0  # a resize that waits for room is tried again this often (and on each sync)
# What a step is for, in kubelet_pod_worker_duration_seconds' operation_type (upstream's SyncPodType): a wake
# of a higher rank decides the label of a step that several wakes asked for.
_RANK = {"sync": 0, "update": 1, "kill": 2, "create": 3}


class PodWorker:
    def __init__(self, owner: "PodWorkers", pod: dict, static: bool = False):
        self.owner = owner
        self.pod = pod
        self.static = static  # from a manifest file: its API face is the mirror pod
        self.uid = pod["metadata"]["uid"]
        self.facts = podstatus.Facts(node_ip=owner.node_ip, resize=owner.resize_checkpoint.allocation(self.uid)
                                     if owner.resize_checkpoint is not None else resize.Allocation())
        self.unhealthy: set[str] = set()
        self.removed = False  # the API object is gone
        self.wake_event = asyncio.Event()
        self.task = asyncio.create_task(self.run(), name=f"pod-{pod_ref(pod)}")
        self.terminal_status: dict | None = None
        self.last_step = 0.0  # monotonic end of the last step: the next one needs a newer runtime view
        self.first_seen = time.monotonic()
        self.start_observed = False  # kubelet_pod_start_duration_seconds has its sample
        self.pending: tuple[str, float] | None = ("create", self.first_seen)  # (operation, since) of the next step
        self.probes = owner.probe_manager(self) if owner.probe_manager else None
        self.eviction: str | None = None  # why the eviction manager wants the pod gone
        self.eviction_grace = 0  # seconds the evicted pod's containers get to stop
        self.cleaned_up = False  # finished, its volumes released (and, if evicted, its containers removed)
        # Its stopped containers and sandboxes are removed (evicted, or disk reclaimed): the last status it
        # reported stands, as nothing is left to compute a new one from.
        self.runtime_removed = False
        self.admitted = False  # passed admission (or was already running when we first saw it)

    def wake(self, operation: str = "sync") -> None:
        """Run a step soon; `operation` (sync, update, kill) is why, for the pod worker duration metric."""
        if self.pending is None:
            self.pending = (operation, time.monotonic())
        elif _RANK[operation] > _RANK[self.pending[0]]:
            self.pending = (operation, self.pending[1])
        self.wake_event.set()

    def evict(self, message: str, grace: int = 0) -> None:
        """Kill the pod (within `grace` seconds) and end it Failed with reason Evicted (it stays in the API)."""
        if self.eviction is None and self.terminal_status is None:
            self.eviction, self.eviction_grace = message, grace
            self.wake("kill")

    def api_view(self) -> dict | None:
        """The API object that shows this pod: itself, or for a static pod its mirror (None until it exists)."""
        return self.owner.mirrors.get(self.uid) if self.static else self.pod

    def with_api_status(self) -> dict:
        view = self.api_view()
        return {**self.pod, "status": (view or {}).get("status") or {}}

    async def _report(self, status: dict) -> None:
        view = self.api_view()
        if view is None:
            await self.owner.static.ensure_mirror(self.pod, None)
            return
        await self.owner.status.set(view, status)

    async def run(self) -> None:
        delay: float | None = 0.0
        while True:
            try:
                await asyncio.wait_for(self.wake_event.wait(), RESYNC if delay is None else delay)
            except asyncio.TimeoutError:
                pass
            self.wake_event.clear()
            operation, since = self.pending or ("sync", time.monotonic())
            self.pending = None
            try:
                await self.owner.pleg.wait_newer(self.last_step)
                done, delay = await self.step()
            except CRIError as err:
                log.warning("Pod sync failed; runtime unavailable", pod=pod_ref(self.pod), err=err)
                done, delay = False, 5.0
            except MirrorPodError as err:  # the static pod runs; only its face in the API is missing
                log.warning("Mirror pod not created; retrying", pod=pod_ref(self.pod), err=str(err))
                done, delay = False, 2.0
            except Exception as err:  # noqa: BLE001 - one pod's trouble must not stop the agent
                log.error("Pod sync failed", pod=pod_ref(self.pod), err=repr(err))
                done, delay = False, 10.0
            self.last_step = time.monotonic()
            if self.owner.metrics is not None:
                self.owner.metrics.pod_worker_duration.labels("terminated" if done else operation).observe(
                    self.last_step - since)
            if done:
                if self.probes:
                    self.probes.stop()
                self.owner.finished(self.uid)
                return

    async def step(self) -> tuple[bool, float | None]:
        owner, pod = self.owner, self.pod
        rt = owner.pleg.pod(self.uid)
        meta = pod["metadata"]

        if self.removed or meta.get("deletionTimestamp"):
            grace = 0 if self.removed and not meta.get("deletionTimestamp") else grace_period(pod)
            if rt.running or any(s.state == api.SANDBOX_READY for s in rt.sandboxes):
                await owner.runtime.kill_pod(pod, rt, grace)
                return False, 0.5  # wait for the PLEG to see them stop
            if not self.removed and not self.runtime_removed:  # removed: the last status it reported stands
                status = podstatus.compute(self.with_api_status(), rt, self.facts)
                status["phase"] = self._terminal_phase(status)
                await owner.status.set(pod, status)
            await owner.runtime.remove_pod(self.uid, rt)
            if self.static:
                if self.uid in owner.mirrors:
                    await owner.static.delete_mirror(pod)
            elif not self.removed:
                await owner.status.delete_pod(pod)
            return True, None

        if self.terminal_status is not None:
            if self.runtime_removed:
                return False, None
            if rt.running:
                await owner.runtime.kill_pod(pod, rt)
            else:
                owner.runtime.volumes.release(self.uid)
            # The containers' states as the runtime has them now (a kill may have just ended them); the phase and
            # its reason stay what ended the pod.
            status = podstatus.compute(self.with_api_status(), rt, self.facts)
            status.update({k: v for k, v in self.terminal_status.items() if k in ("phase", "reason", "message")})
            await self._report(status)
            if not rt.running:
                if self.eviction is not None:
                    # As upstream, an evicted pod's content goes at once: its writable layers and logs may be
                    # what the node ran short of, and the eviction manager waits for them before it looks again.
                    self.runtime_removed = True
                    await owner.runtime.remove_containers(rt)
                self.cleaned_up = True
            return False, None

        if not self.admitted:
            self.admitted = True
            refused = self._refused(rt)
            if refused:
                reason, message = refused
                log.info("Pod refused at admission", pod=pod_ref(pod), reason=reason, message=message)
                owner.events.record(pod, WARNING, reason, message)
                status = podstatus.compute(self.with_api_status(), rt, self.facts)
                status.update(phase="Failed", reason=reason, message=message)
                self.terminal_status = status
                await self._report(status)
                return False, None

        if self.eviction is not None:
            owner.events.record(pod, WARNING, "Evicted", self.eviction)
            await owner.runtime.kill_pod(pod, rt, grace=self.eviction_grace)
            # Failed is terminal: the containers it reports must be the stopped ones, not the view from before the
            # kill (a relist that starts now sees them exited).
            await owner.pleg.wait_newer(time.monotonic())
            status = podstatus.compute(self.with_api_status(), owner.pleg.pod(self.uid), self.facts)
            status.update(phase="Failed", reason="Evicted", message=self.eviction)
            status["conditions"] = [c for c in status["conditions"] if c.get("type") != "DisruptionTarget"] + [{
                "type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet",
                "message": self.eviction, "lastTransitionTime": timestamps.now(),
                "observedGeneration": status.get("observedGeneration", 0)}]
            self.terminal_status = status
            await self._report(status)
            return False, 0.5  # release its volumes once the PLEG sees the containers stopped

        deadline = pod["spec"].get("activeDeadlineSeconds")
        started = timestamps.parse((self.with_api_status().get("status") or {}).get("startTime"))
        if deadline is not None and started is not None and time.time() - started > deadline:
            owner.events.record(pod, WARNING, "DeadlineExceeded",
                                "Pod was active on the node longer than the specified deadline")
            await owner.runtime.kill_pod(pod, rt)
            status = podstatus.compute(self.with_api_status(), owner.pleg.pod(self.uid), self.facts)
            status.update(phase="Failed", reason="DeadlineExceeded",
                          message="Pod was active on the node longer than the specified deadline")
            self.terminal_status = status
            await self._report(status)
            return False, None

        self.facts.resize.allocate(pod, owner.resize_feasible)
        delay = await owner.runtime.sync(pod, rt, self.facts, self.unhealthy)
        if self.facts.resize.pending is not None and self.facts.resize.pending[0] == "Deferred":
            delay = RESIZE_DEFERRED_RETRY if delay is None else min(delay, RESIZE_DEFERRED_RETRY)
        if self.probes:
            self.probes.update(pod, owner.pleg.pod(self.uid))
        status = podstatus.compute(self.with_api_status(), owner.pleg.pod(self.uid), self.facts)
        self._observe_start(status)
        if status["phase"] in ("Succeeded", "Failed") and not owner.pleg.pod(self.uid).running:
            self.terminal_status = status
            if any(s.state == api.SANDBOX_READY for s in rt.sandboxes):
                await owner.runtime.kill_pod(pod, owner.pleg.pod(self.uid))
        await self._report(status)
        if deadline is not None and started is not None:
            left = deadline - (time.time() - started)
            delay = left if delay is None else min(delay, left)
        return False, delay

    def _refused(self, rt) -> tuple[str, str] | None:
        """(reason, message) if admission refuses this pod, else None; a pod that has run already (before a
        restart) is not asked."""
        if self.owner.admit is None or self.static or not rt.empty \
                or (self.with_api_status().get("status") or {}).get("startTime"):
            return None
        return self.owner.admit(self.pod)

    def _observe_start(self, status: dict) -> None:
        """kubelet_pod_start_duration_seconds: first seen → the first status that moves the pod to Running.

        A pod the API already shows Running (say, after a kubelet restart) gives no sample.
        """
        if self.start_observed or self.owner.metrics is None or status["phase"] != "Running":
            return
        self.start_observed = True
        if (self.with_api_status().get("status") or {}).get("phase") in (None, "Pending"):
            self.owner.metrics.pod_start_duration.observe(time.monotonic() - self.first_seen)

    def _terminal_phase(self, status: dict) -> str:
        if status["phase"] in ("Succeeded", "Failed"):
            return status["phase"]
        codes = [s["state"].get("terminated", {}).get("exitCode") for s in status["containerStatuses"]]
        return "Succeeded" if codes and all(c == 0 for c in codes) else "Failed"


class PodWorkers:
    def __init__(self, *, runtime: RuntimeManager, pleg: Pleg, status: StatusManager, events: Recorder,
                 node_ip: str, probe_manager=None, metrics=None, admit=None, resize_feasible=None,
                 resize_checkpoint: resize.Checkpoint | None = None):
        self.runtime = runtime
        self.admit = admit  # pod -> None, or (reason, message) when the node refuses it
        # the pod with new resources -> None, or (Infeasible | Deferred, message) when the node cannot hold them
        self.resize_feasible = resize_feasible or (lambda pod: None)
        self.resize_checkpoint = resize_checkpoint  # resized pods' allocations, kept across restarts
        self.metrics = metrics  # KubeletMetrics, or None
        self.pleg = pleg
        self.status = status
        self.events = events
        self.node_ip = node_ip
        self.probe_manager = probe_manager
        self.workers: dict[str, PodWorker] = {}
        self.known_uids: set[str] = set()  # uids the API has shown us since start
        self.mirrors: dict[str, dict] = {}  # static pod uid (its config hash) -> mirror pod from the API
        self.static: StaticPods | None = None
        self._tasks: set[asyncio.Task] = set()

    # --- from the pod source
    def replace(self, pods: list[dict]) -> None:
        uids = {p["metadata"]["uid"] for p in pods}
        mirrors = {p["metadata"]["annotations"][HASH] for p in pods if is_mirror(p)}
        for stale in set(self.mirrors) - mirrors:
            self.mirrors.pop(stale)
            self.wake(stale)
        for uid, worker in list(self.workers.items()):
            if uid not in uids and not worker.static:
                worker.removed = True
                worker.wake("kill")
        for pod in pods:
            self.update(pod)
        if self.resize_checkpoint is not None:  # pods deleted while we were away
            for uid in set(self.resize_checkpoint.pods) - uids - set(self.workers):
                self.resize_checkpoint.forget(uid)

    def update_static(self, pod: dict) -> None:
        uid = pod["metadata"]["uid"]
        self.known_uids.add(uid)
        if uid not in self.workers:
            self.workers[uid] = PodWorker(self, pod, static=True)

    def remove_static(self, pod: dict) -> None:
        worker = self.workers.get(pod["metadata"]["uid"])
        if worker is not None:
            worker.removed = True
            worker.wake("kill")

    def update(self, pod: dict) -> None:
        if is_mirror(pod):
            uid = pod["metadata"]["annotations"][HASH]
            if pod["metadata"].get("deletionTimestamp"):
                # Someone deleted the mirror: finish that at once; the static pod's worker makes a new one.
                self.mirrors.pop(uid, None)
                if self.static is not None:
                    self._background(self.static.delete_mirror(pod))
            else:
                self.mirrors[uid] = pod
            self.wake(uid)
            return
        uid = pod["metadata"]["uid"]
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed") and uid not in self.workers \
                and not pod["metadata"].get("deletionTimestamp"):
            # Finished before we started, whether seen on the first list or on any relist after: nothing to run.
            self.known_uids.add(uid)
            return
        self.known_uids.add(uid)
        if self.metrics is not None:
            self.metrics.pod_startup.observed_on_watch(pod)
        worker = self.workers.get(uid)
        if worker is None:
            log.info("Pod added", pod=pod_ref(pod), uid=uid)
            self.workers[uid] = PodWorker(self, pod)
        else:
            worker.pod = pod
            worker.wake("update")

    def remove(self, pod: dict) -> None:
        if is_mirror(pod):  # deleted by someone: the static pod's worker makes a new one
            uid = pod["metadata"]["annotations"][HASH]
            self.mirrors.pop(uid, None)
            self.wake(uid)
            return
        worker = self.workers.get(pod["metadata"]["uid"])
        if worker is None:
            self.known_uids.discard(pod["metadata"]["uid"])  # gone from the API and done with here
            return
        worker.pod = pod
        worker.removed = True
        worker.wake("kill")

    # --- from the PLEG and probes
    def wake(self, uid: str) -> None:
        worker = self.workers.get(uid)
        if worker is not None:
            worker.wake()

    def _background(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def finished(self, uid: str) -> None:
        """A worker is done: forget what was kept for its pod (a uid the API still shows stays known)."""
        worker = self.workers.pop(uid, None)
        self.status.forget(uid)
        self.events.forget(uid)
        if self.resize_checkpoint is not None:
            self.resize_checkpoint.forget(uid)
        if worker is not None and worker.removed:
            self.known_uids.discard(uid)
        if self.metrics is not None:
            self.metrics.pod_startup.forget(uid)

    async def remove_finished_runtime(self) -> int:
        """Upstream's DeleteAllUnusedContainers, for the eviction manager's disk reclaim: every container and
        sandbox of a pod that has finished (stopped, its volumes released) is removed, so the images they held
        can go too; its last status stands. So is what is left of a pod that had finished before this pykubelet
        started (it got no worker). Returns how many containers went."""
        removed = 0
        for worker in list(self.workers.values()):
            rt = self.pleg.pod(worker.uid)
            if worker.static or worker.runtime_removed or not worker.cleaned_up or rt.running or rt.empty:
                continue
            worker.runtime_removed = True  # first: a step woken meanwhile must not report the half-removed pod
            log.info("Removing the containers of a finished pod to reclaim disk", pod=pod_ref(worker.pod),
                     containers=len(rt.containers))
            removed += await self._remove_runtime(rt)
        for uid, rt in list(self.pleg.pods.items()):
            if uid in self.workers or uid not in self.known_uids or rt.running or rt.empty:
                continue
            log.info("Removing the containers of a pod that finished before this start, to reclaim disk", uid=uid,
                     containers=len(rt.containers))
            removed += await self._remove_runtime(rt)
        return removed

    async def _remove_runtime(self, rt) -> int:
        await self.runtime.remove_containers(rt)
        await self.runtime.remove_sandboxes(rt)
        return len(rt.containers)

    async def cleanup_orphans(self) -> None:
        """Kill and remove what the runtime runs for pods the API no longer has (after a restart, say)."""
        for uid, rt in list(self.pleg.pods.items()):
            ours = any(s.ours for s in rt.sandboxes) or any(c.labels.get(POD_UID) for c in rt.containers)
            if not uid or not ours or uid in self.workers or uid in self.known_uids:
                continue
            log.info("Removing pod the API no longer has", uid=uid)
            await self.runtime.remove_pod(uid, rt)
        self.runtime.volumes.clean_orphans({*self.workers, *self.pleg.pods})

    async def stop(self) -> None:
        tasks = [w.task for w in self.workers.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

