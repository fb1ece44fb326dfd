"""In-place pod resize: what each container is allocated, whether a resize fits, and the resize conditions.

As upstream's allocation manager: a pod's resources as first admitted are its allocation. When the spec's
resources change (PATCH or PUT on the pod's `resize` subresource), the new ones become the allocation if the
node can hold them beside its other pods; if not, the pod keeps running on the old allocation and shows
`PodResizePending` — reason `Infeasible` when the node could never hold them, `Deferred` while other pods'
requests are in the way (retried at every sync). A running container whose allocation changed is given it
through CRI UpdateContainerResources (kuberuntime.py), or, where its `resizePolicy` says RestartContainer for a
changed resource, stopped and started again at once with it (a restart, whatever the pod's restartPolicy).
Until that succeeds the pod shows `PodResizeInProgress` (reason `Error` with the runtime's message when it
failed). The container statuses report `allocatedResources` (the allocated requests) and `resources` (what the
container was last given).

A pod that has been resized is kept in a checkpoint (`Checkpoint`, `<root dir>/pod_resources_state`, as
upstream keeps allocated_pods_state): its allocation and what each running container was given. A pykubelet that
starts takes them from there; a pod with no entry never changed, and its spec is its allocation. A checkpoint
that cannot be read is logged and set aside: the pods' specs are taken as allocated.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from nodeagent import logs

from . import admission, qos

log = logs.get(__name__)

CHECKPOINT = "pod_resources_state"  # below the kubelet's root dir
INFEASIBLE_MESSAGE = "Node didn't have enough capacity: {}, requested: {}, capacity: {}"


def resources_of(container: Mapping) -> dict:
    """The container's requests and limits, as the API has them; empty lists left out."""
    resources = container.get("resources") or {}
    return {kind: dict(resources[kind]) for kind in ("requests", "limits") if resources.get(kind)}


def _all_containers(pod: Mapping) -> list[dict]:
    spec = pod.get("spec") or {}
    return list(spec.get("initContainers") or []) + list(spec.get("containers") or [])


def wanted(pod: Mapping) -> dict[str, dict]:
    """Each container's resources as the spec asks now."""
    return {c["name"]: resources_of(c) for c in _all_containers(pod)}


def with_resources(pod: dict, allocation: Mapping[str, dict]) -> dict:
    """The pod with each container's resources replaced by `allocation` (the pod itself if nothing differs)."""
    if all(resources_of(c) == allocation.get(c["name"], resources_of(c)) for c in _all_containers(pod)):
        return pod
    spec = dict(pod["spec"])
    for kind in ("initContainers", "containers"):
        if spec.get(kind):
            spec[kind] = [{**c, "resources": {**(c.get("resources") or {}), **_explicit(allocation[c["name"]])}}
                          if c["name"] in allocation else c for c in spec[kind]]
    return {**pod, "spec": spec}


def _explicit(resources: Mapping) -> dict:
    """requests and limits both present (an allocation without one must clear it in the merged container)."""
    return {"requests": dict(resources.get("requests") or {}), "limits": dict(resources.get("limits") or {})}


def feasibility(candidate: dict, others: list[dict], allocatable: Mapping[str, str]) -> tuple[str, str] | None:
    """None if the resized pod fits beside `others`; else ("Infeasible" | "Deferred", message) as upstream."""
    asked = admission.requests(candidate)
    for name in ("cpu", "memory"):
        if name not in allocatable or name not in asked:
            continue
        want = admission.amount(name, asked[name])
        have = admission.amount(name, qos.quantity(allocatable[name]))
        if want > have:
            return "Infeasible", INFEASIBLE_MESSAGE.format(name, want, have)
    refused = admission.fit(candidate, others, dict(allocatable))
    return ("Deferred", refused[1]) if refused else None


def changed(given: Mapping, want: Mapping) -> set[str]:
    """The resources (cpu, memory) whose request or limit differs between two allocations of a container."""
    return {name for name in ("cpu", "memory") for kind in ("requests", "limits")
            if (given.get(kind) or {}).get(name) != (want.get(kind) or {}).get(name)}


class Checkpoint:
    """The allocations of resized pods, by uid, in one JSON file replaced whole at each change."""

    def __init__(self, path: Path):
        self.path = path
        self.pods: dict[str, dict] = {}
        try:
            document = json.loads(path.read_text())
            pods = document["pods"]
            if not isinstance(pods, dict) or not all(isinstance(e.get("allocated"), dict) and
                                                     isinstance(e.get("actuated"), dict) for e in pods.values()):
                raise ValueError("not a map of uid to allocated and actuated resources")
            self.pods = pods
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            log.error("Pod resources checkpoint unreadable; pods' specs taken as allocated", path=str(path),
                      err=str(err))

    def allocation(self, uid: str) -> "Allocation":
        saved = self.pods.get(uid) or {}
        return Allocation(allocated=saved.get("allocated"), actuated=saved.get("actuated"),
                          save=lambda allocation: self.save(uid, allocation))

    def save(self, uid: str, allocation: "Allocation") -> None:
        self.pods[uid] = {"allocated": allocation.allocated, "actuated": allocation.actuated}
        self._write()

    def forget(self, uid: str) -> None:
        if self.pods.pop(uid, None) is not None:
            self._write()

    def _write(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_text(json.dumps({"pods": self.pods}, separators=(",", ":")))
            os.replace(tmp, self.path)
        except OSError as err:
            log.error("Pod resources checkpoint not written", path=str(self.path), err=str(err))


class Allocation:
    """One pod's allocated resources, what its running containers were given, and its resize state."""

    def __init__(self, allocated: dict | None = None, actuated: dict | None = None,
                 save: Callable[["Allocation"], None] | None = None) -> None:
        self.allocated: dict[str, dict] = dict(allocated or {})  # container name -> its allocated resources
        self.actuated: dict[str, dict] = dict(actuated or {})  # container id -> the resources it was last given
        self._save = save  # to the checkpoint, once the pod has been resized (before, its spec says it all)
        self.resized = bool(allocated)  # it has an entry in the checkpoint
        self.pending: tuple[str, str] | None = None  # (Infeasible | Deferred, message)
        self.error: str | None = None  # the last failed UpdateContainerResources
        self.restarting: set[str] = set()  # ids of containers stopped to be restarted with their new allocation

    def allocate(self, pod: dict, feasible: Callable[[dict], tuple[str, str] | None]) -> None:
        """Take the spec's resources as the allocation if they fit (`feasible` says why not)."""
        now = wanted(pod)
        if not self.allocated:
            self.allocated = now  # the pod as admitted
            return
        if now == self.allocated:
            self.pending = None
            return
        refused = feasible(with_resources(pod, now))
        if refused is None:
            self.allocated, self.pending = now, None
            self.resized = True
            self.saved()
        else:
            self.pending = refused

    def gave(self, container_id: str, resources: dict) -> None:
        """The running container now has `resources` (it was created or updated with them)."""
        if self.actuated.get(container_id) != resources:
            self.actuated[container_id] = resources
            self.saved()

    def saved(self) -> None:
        if self.resized and self._save is not None:
            self._save(self)

    def pod(self, pod: dict) -> dict:
        """The pod as allocated: what its containers are created and updated with."""
        if not self.allocated or (not self.resized and self.pending is None):
            return pod  # never resized, nothing refused: the spec is the allocation
        return with_resources(pod, self.allocated)

    def given(self, name: str, container_id: str) -> dict:
        """What the running container has: as last given, else (it ran before we started) its allocation,
        recorded at first sight so that a later resize finds the container on the old one."""
        return self.actuated.setdefault(container_id, self.allocated.get(name, {}))

    def in_progress(self, running: Mapping[str, str]) -> bool:
        """`running`: container name -> id of its running container. True while one lacks its allocation."""
        return any(self.given(name, cid) != self.allocated.get(name, {}) for name, cid in running.items())

    def forget_except(self, container_ids: set[str]) -> None:
        kept = {cid: r for cid, r in self.actuated.items() if cid in container_ids}
        if kept != self.actuated:
            self.actuated = kept
            self.saved()
        self.restarting &= container_ids

    def conditions(self, running: Mapping[str, str], previous: Mapping[str, dict], now: str,
                   generation: int) -> list[dict]:
        """PodResizePending and PodResizeInProgress, when they hold; a kept condition keeps its transition time."""
        found = []
        if self.pending is not None:
            found.append(("PodResizePending", self.pending[0], self.pending[1]))
        if self.in_progress(running):
            found.append(("PodResizeInProgress", "Error" if self.error else "", self.error or ""))
        out = []
        for kind, reason, message in found:
            before = previous.get(kind) or {}
            condition = {"type": kind, "status": "True", "lastProbeTime": None,
                         "lastTransitionTime": before.get("lastTransitionTime") or now,
                         "observedGeneration": generation}
            if reason:
                condition["reason"] = reason
            if message:
                condition["message"] = message
            out.append(condition)
        return out
