"""Probe workers for each pod's running containers, and what their results mean for the pod.

Readiness feeds the container's `ready`; startup gates liveness and readiness
and feeds `started`; a liveness (or startup) failure marks the container
unhealthy, records an Unhealthy Event and wakes the pod worker, which restarts it.
"""

from __future__ import annotations

import asyncio
import time

from cri import CRIClient, DeadlineExceeded, api

from nodeagent import logs
from ..pods.events import WARNING, Recorder
from ..handlers import Result
from .prober import ProbeWorker
from ..pods.podstate import PodRuntime

log = logs.get(__name__)

KINDS = (("startupProbe", "startup"), ("livenessProbe", "liveness"), ("readinessProbe", "readiness"))
KUBELET_START = time.time()  # this process's start, near enough: the module loads as the kubelet starts
RESTART_GRACE = 10.0  # upstream's kubeletRestartGracePeriod


class _ContainerProbes:
    def __init__(self, container_id: str, workers: list[ProbeWorker], tasks: list[asyncio.Task],
                 started: asyncio.Event, on_stop=None):
        self.container_id = container_id
        self.workers = workers
        self.tasks = tasks
        self.started = started
        self.on_stop = on_stop

    def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        if self.on_stop is not None:
            self.on_stop()


class PodProbes:
    """The probe workers of one pod; owned by its pod worker."""

    def __init__(self, worker, cri: CRIClient, events: Recorder, metrics=None):
        self.worker = worker  # the PodWorker: .pod, .facts, .unhealthy, .wake()
        self.cri = cri
        self.events = events
        self.metrics = metrics  # KubeletMetrics: prober_probe_total, prober_probe_duration_seconds
        self.containers: dict[str, _ContainerProbes] = {}

    def _exec_fn(self, container_id: str):
        async def run(cmd: list[str], timeout: float) -> tuple[int, bytes]:
            try:
                result = await self.cri.exec_sync(api.ExecSyncRequest(container_id=container_id, cmd=cmd,
                                                                      timeout=max(int(timeout), 1)))
            except DeadlineExceeded as err:
                raise asyncio.TimeoutError() from err
            return result.exit_code, result.stdout + result.stderr
        return run

    def update(self, pod: dict, rt: PodRuntime) -> None:
        """Start workers for newly running containers; reset or stop those whose container changed."""
        facts = self.worker.facts
        for container in pod["spec"].get("containers", []):
            name = container["name"]
            record = rt.latest(name)
            has_probes = any(container.get(key) for key, _ in KINDS)
            running = record is not None and record.state == api.CONTAINER_RUNNING
            current = self.containers.get(name)
            if current and (not running or current.container_id != record.id):
                current.stop()
                del self.containers[name]
                current = None
            if not running or not has_probes or current:
                if not running:
                    facts.ready.pop(name, None)
                    facts.started.pop(name, None)
                continue
            started = asyncio.Event()
            was_started, was_ready = self._before_restart(name, record)
            if not container.get("startupProbe") or was_started:
                started.set()
            if container.get("startupProbe"):
                facts.started[name] = was_started
            if container.get("readinessProbe"):
                facts.ready[name] = was_ready
            workers, tasks = [], []
            for key, kind in KINDS:
                probe = container.get(key)
                if not probe or (kind == "startup" and was_started):  # upstream stops it once started
                    continue
                worker = ProbeWorker(kind, probe, container=container, pod_ip=self._pod_ip(rt),
                                     exec_fn=self._exec_fn(record.id), on_result=self._on_result(name, started),
                                     started=started, clock=time.time, on_outcome=self._on_outcome(name),
                                     on_probed=self._on_probed(name), kubelet_started=KUBELET_START)
                workers.append(worker)
                tasks.append(asyncio.create_task(worker.run(record.started_at / 1e9 if record.started_at else 0),
                                                 name=f"probe-{kind}-{name}"))
            self.containers[name] = _ContainerProbes(record.id, workers, tasks, started,
                                                     self._forget_series(name, [w.kind for w in workers]))

    def _before_restart(self, name: str, record) -> tuple[bool, bool]:
        """(started, ready) to begin with, before any probe has run. A container that was running before this
        kubelet started (by more than RESTART_GRACE, as upstream counts it) keeps what the API shows: `started`
        as its status says, and ready while the pod is Ready, so that a kubelet restart does not flap the
        pod's readiness (and its Service endpoints). Any other container starts not started and not ready."""
        if not record.started_at or record.started_at / 1e9 >= KUBELET_START - RESTART_GRACE:
            return False, False
        status = self.worker.with_api_status().get("status") or {}
        previous = next((c for c in status.get("containerStatuses") or [] if c.get("name") == name), {})
        if previous.get("containerID", "").rpartition("/")[2] != record.id:
            return False, False
        pod_ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
        return bool(previous.get("started")), pod_ready

    def _pod_ip(self, rt: PodRuntime):
        def current() -> str:
            sandbox = self.worker.owner.pleg.pod(self.worker.uid).sandbox
            return sandbox.ip if sandbox and sandbox.ip else self.worker.owner.node_ip
        return current

    def _on_probed(self, name: str):
        """prober_probe_total and _duration_seconds: successes and failures (a probe that could not run at
        all is thrown away, as upstream does with a probe that errored)."""
        def probed(kind: str, outcome, seconds: float) -> None:
            if self.metrics is not None and outcome.result is not Result.UNKNOWN:
                result = "successful" if outcome.result is Result.SUCCESS else "failed"
                self.metrics.probed(kind, result, seconds, self.worker.pod, name)
        return probed

    def _forget_series(self, name: str, kinds: list[str]):
        pod = self.worker.pod

        def forget() -> None:
            if self.metrics is not None:
                for kind in kinds:
                    self.metrics.probe_stopped(kind, pod, name)
        return forget

    def _on_outcome(self, name: str):
        """Every failed probe is an Unhealthy Event (repeats are counted), as upstream records them."""
        def finished(kind: str, outcome) -> None:
            if outcome.result == Result.FAILURE:
                self.events.record(self.worker.pod, WARNING, "Unhealthy",
                                   f"{kind.capitalize()} probe failed: {outcome.message}", container=name)
            elif outcome.warning:
                self.events.record(self.worker.pod, WARNING, "ProbeWarning",
                                   f"{kind.capitalize()} probe warning: {outcome.message}", container=name)
        return finished

    def _on_result(self, name: str, started: asyncio.Event):
        def changed(kind: str, result: Result, outcome) -> None:
            facts = self.worker.facts
            if kind == "readiness":
                facts.ready[name] = result == Result.SUCCESS
            elif kind == "startup":
                facts.started[name] = result == Result.SUCCESS
                if result == Result.SUCCESS:
                    started.set()
                elif result == Result.FAILURE:
                    self.worker.unhealthy.add(name)
            elif kind == "liveness" and result == Result.FAILURE:
                self.worker.unhealthy.add(name)
            self.worker.wake()
        return changed

    def stop(self) -> None:
        for probes in self.containers.values():
            probes.stop()
        self.containers.clear()
