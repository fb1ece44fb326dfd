"""The pod lifecycle event generator: relist the runtime every second and wake the pods that changed.

One ListPodSandbox and one ListContainers per relist; a ContainerStatus call
only for a container that is new or changed state (its details never change
after it exits), and a PodSandboxStatus only for a new sandbox (for its IP).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from cri import CRIClient, CRIError, api

from nodeagent import logs
from .podstate import CONTAINER_NAME, POD_UID, Container, PodRuntime, Sandbox

log = logs.get(__name__)

RELIST_PERIOD = 1.0


class Pleg:
    def __init__(self, runtime: CRIClient, on_change: Callable[[str], None], metrics=None):
        self.runtime = runtime
        self.on_change = on_change
        self.metrics = metrics  # KubeletMetrics: relist durations and intervals
        self.pods: dict[str, PodRuntime] = {}
        self._containers: dict[str, Container] = {}
        self._sandboxes: dict[str, Sandbox] = {}
        self.last_relist = 0.0  # monotonic time the last successful relist *started*
        self.healthy = True
        self._kick = asyncio.Event()
        self._relisted = asyncio.Condition()

    def pod(self, uid: str) -> PodRuntime:
        return self.pods.get(uid) or PodRuntime()

    async def _detail(self, record: Container) -> None:
        status = (await self.runtime.container_status(api.ContainerStatusRequest(container_id=record.id))).status
        record.started_at, record.finished_at = status.started_at, status.finished_at
        record.exit_code, record.reason, record.message = status.exit_code, status.reason, status.message
        record.image_ref = status.image_ref

    async def wait_newer(self, since: float) -> None:
        """Wait for a relist that started after `since`, asking for one at once.

        A pod worker calls this before each step, so that it never acts on a view
        older than its own last step (which would, say, start a container twice).
        """
        async with self._relisted:
            while self.last_relist <= since:
                self._kick.set()
                await self._relisted.wait()

    async def relist(self) -> set[str]:
        """Refresh the view of the runtime; returns the pod uids whose containers or sandboxes changed."""
        started = time.monotonic()
        interval = started - self.last_relist if self.last_relist else None
        try:
            return await self._relist(started)
        finally:
            if self.metrics is not None:
                self.metrics.pleg_relisted(time.monotonic() - started, interval)

    async def _relist(self, started: float) -> set[str]:
        sandboxes = (await self.runtime.list_pod_sandbox()).items
        containers = (await self.runtime.list_containers()).containers
        changed: set[str] = set()

        seen_sandboxes: dict[str, Sandbox] = {}
        by_uid: dict[str, PodRuntime] = {}
        for item in sandboxes:
            uid = item.labels.get(POD_UID) or item.metadata.uid
            record = self._sandboxes.get(item.id)
            if record is None or record.state != item.state:
                record = Sandbox(item.id, item.metadata.attempt, item.state, item.created_at,
                                 ours=POD_UID in item.labels)
                if item.state == api.SANDBOX_READY:
                    try:
                        status = (await self.runtime.pod_sandbox_status(
                            api.PodSandboxStatusRequest(pod_sandbox_id=item.id))).status
                        record.ip = status.network.ip
                        record.ips = [status.network.ip] + [i.ip for i in status.network.additional_ips]
                    except CRIError as err:
                        log.warning("Sandbox status failed", sandbox=item.id, err=err)
                changed.add(uid)
            seen_sandboxes[item.id] = record
            by_uid.setdefault(uid, PodRuntime()).sandboxes.append(record)

        seen_containers: dict[str, Container] = {}
        for item in containers:
            uid = item.labels.get(POD_UID, "")
            record = self._containers.get(item.id)
            if record is None or record.state != item.state:
                record = Container(
                    id=item.id, name=item.labels.get(CONTAINER_NAME, item.metadata.name),
                    attempt=item.metadata.attempt, state=item.state, created_at=item.created_at,
                    sandbox_id=item.pod_sandbox_id, image=item.image.image, labels=dict(item.labels),
                    annotations=dict(item.annotations))
                if item.state in (api.CONTAINER_RUNNING, api.CONTAINER_EXITED):
                    try:
                        await self._detail(record)
                    except CRIError as err:
                        log.warning("Container status failed", container=item.id, err=err)
                changed.add(uid)
            seen_containers[item.id] = record
            by_uid.setdefault(uid, PodRuntime()).containers.append(record)

        changed |= {uid for uid, pod in self.pods.items() if uid not in by_uid}  # everything of it went away
        for pod in by_uid.values():
            pod.sandboxes.sort(key=lambda s: s.created_at, reverse=True)
            pod.containers.sort(key=lambda c: (c.attempt, c.created_at), reverse=True)
        self._sandboxes, self._containers, self.pods = seen_sandboxes, seen_containers, by_uid
        self.last_relist = started
        async with self._relisted:
            self._relisted.notify_all()
        return changed

    async def run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                changed = await self.relist()
                self.healthy = True
                for uid in changed:
                    self.on_change(uid)
            except CRIError as err:
                if self.healthy:
                    log.warning("PLEG relist failed", err=err)
                self.healthy = False
            self._kick.clear()
            try:
                await asyncio.wait_for(self._kick.wait(), max(0.0, RELIST_PERIOD - (time.monotonic() - started)))
            except asyncio.TimeoutError:
                pass
