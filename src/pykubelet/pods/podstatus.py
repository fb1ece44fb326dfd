"""A pod's status, computed from its spec, what the runtime holds, probe results and waiting reasons.

Pure: the pod worker gathers the facts, this decides phase, conditions and
container statuses as the upstream kubelet would.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cri import api

from .. import timestamps
from . import qos
from .podstate import Container, PodRuntime
from .resize import Allocation
from ..timestamps import from_ns


@dataclass
class Facts:
    """What the pod worker knows beyond the runtime."""

    node_ip: str
    waiting: dict[str, tuple[str, str]] = field(default_factory=dict)  # container -> (reason, message)
    ready: dict[str, bool] = field(default_factory=dict)  # readiness probe results
    started: dict[str, bool] = field(default_factory=dict)  # startup probe results
    messages: dict[str, str] = field(default_factory=dict)  # container id -> termination message
    resize: Allocation = field(default_factory=Allocation)  # allocated resources and in-place resize state


def _is_sidecar(container: dict) -> bool:
    return container.get("restartPolicy") == "Always"


def _terminated(record: Container, facts: Facts) -> dict:
    state = {
        "exitCode": record.exit_code,
        "reason": record.reason or ("Completed" if record.exit_code == 0 else "Error"),
        "startedAt": from_ns(record.started_at),
        "finishedAt": from_ns(record.finished_at),
        "containerID": f"containerd://{record.id}",
    }
    message = facts.messages.get(record.id) or record.message
    if message:
        state["message"] = message
    return {"terminated": state}


def container_status(spec: dict, rt: PodRuntime, facts: Facts, *, not_started: str = "ContainerCreating") -> dict:
    """The status of one container; `not_started` is the waiting reason before it was ever created."""
    name = spec["name"]
    latest, previous = rt.latest(name), rt.previous(name)
    status: dict = {"name": name, "image": spec.get("image", ""), "imageID": "", "ready": False,
                    "restartCount": 0, "started": False, "state": {}, "lastState": {}}
    reason, message = facts.waiting.get(name, (not_started, ""))
    if latest is None:
        status["state"] = {"waiting": {"reason": reason, **({"message": message} if message else {})}}
        return status
    status["restartCount"] = latest.restart_count
    status["containerID"] = f"containerd://{latest.id}"
    if facts.resize.allocated:
        allocated = facts.resize.allocated.get(name, {})
        given = facts.resize.actuated.get(latest.id, allocated) if latest.state == api.CONTAINER_RUNNING else allocated
        status["resources"] = {kind: dict(values) for kind, values in given.items()}
        if allocated.get("requests"):
            status["allocatedResources"] = dict(allocated["requests"])
    status["imageID"] = latest.image_ref
    if latest.state == api.CONTAINER_RUNNING:
        status["state"] = {"running": {"startedAt": from_ns(latest.started_at)}}
        status["started"] = facts.started.get(name, True)
        status["ready"] = status["started"] and facts.ready.get(name, True)
        if previous is not None and previous.state == api.CONTAINER_EXITED:
            status["lastState"] = _terminated(previous, facts)
    elif latest.state == api.CONTAINER_EXITED:
        if name in facts.waiting:  # it will run again: waiting (e.g. CrashLoopBackOff), last state is the exit
            status["state"] = {"waiting": {"reason": reason, **({"message": message} if message else {})}}
            status["lastState"] = _terminated(latest, facts)
        else:
            status["state"] = _terminated(latest, facts)
            if previous is not None and previous.state == api.CONTAINER_EXITED:
                status["lastState"] = _terminated(previous, facts)
    else:  # created, not started yet: still the pod's default waiting reason (upstream's is empty, briefly)
        status["state"] = {"waiting": {"reason": reason if name in facts.waiting else not_started}}
    return status


def _succeeded(status: dict) -> bool:
    return status["state"].get("terminated", {}).get("exitCode") == 0


def phase(pod: dict, init_statuses: list[dict], statuses: list[dict]) -> str:
    spec = pod["spec"]
    policy = spec.get("restartPolicy", "Always")
    init_specs = {c["name"]: c for c in spec.get("initContainers", [])}
    for status in init_statuses:
        if _is_sidecar(init_specs[status["name"]]):
            continue
        terminated = status["state"].get("terminated")
        if terminated and terminated["exitCode"] == 0:
            continue
        if policy == "Never" and (terminated or status["lastState"].get("terminated")):
            return "Failed"
        return "Pending"
    waiting = running = stopped = succeeded = 0
    for status in statuses:
        state = status["state"]
        if "running" in state:
            running += 1
        elif "terminated" in state:
            stopped += 1
            succeeded += state["terminated"]["exitCode"] == 0
        elif status["lastState"].get("terminated"):
            stopped += 1  # waiting to restart after an exit
        else:
            waiting += 1
    if waiting:
        return "Pending"
    if running:
        return "Running"
    if stopped:
        if policy == "Always":
            return "Running"
        if stopped == succeeded:
            return "Succeeded"
        return "Failed" if policy == "Never" else "Running"
    return "Pending"


KUBELET_CONDITIONS = ("PodScheduled", "PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady",
                      "PodResizePending", "PodResizeInProgress")


def _unmet_readiness_gates(spec: dict, conditions: list[dict]) -> list[str]:
    """Upstream's message for each readiness gate whose condition is missing or not True."""
    by_type = {c.get("type"): c for c in conditions}
    unmet = []
    for gate in spec.get("readinessGates") or []:
        kind = gate.get("conditionType", "")
        condition = by_type.get(kind)
        if condition is None:
            unmet.append(f'corresponding condition of pod readiness gate "{kind}" does not exist.')
        elif condition.get("status") != "True":
            unmet.append(f'the status of pod readiness gate "{kind}" is not "True", but {condition.get("status")}')
    return unmet


def _condition(kind: str, ok: bool, previous: dict, reason: str = "", message: str = "") -> dict:
    status = "True" if ok else "False"
    old = previous.get(kind)
    transition = old["lastTransitionTime"] if old and old.get("status") == status else timestamps.now()
    condition = {"type": kind, "status": status, "lastProbeTime": None, "lastTransitionTime": transition}
    if not ok and reason:
        condition["reason"] = reason
        condition["message"] = message
    return condition


def not_started_reason(spec: dict) -> str:
    """The waiting reason of a container not created yet: as upstream, PodInitializing for every container of a
    pod with init containers, else ContainerCreating."""
    return "PodInitializing" if spec.get("initContainers") else "ContainerCreating"


def compute(pod: dict, rt: PodRuntime, facts: Facts) -> dict:
    spec = pod["spec"]
    old = pod.get("status") or {}
    previous = {c["type"]: c for c in old.get("conditions") or []}
    init_specs = spec.get("initContainers", [])
    not_started = not_started_reason(spec)
    init_statuses = [container_status(c, rt, facts, not_started=not_started) for c in init_specs]
    for status, container in zip(init_statuses, init_specs):
        if not _is_sidecar(container):
            status["ready"] = _succeeded(status)  # an init container that completed is Ready
    statuses = [container_status(c, rt, facts, not_started=not_started) for c in spec.get("containers", [])]
    pod_phase = phase(pod, init_statuses, statuses)

    incomplete = [s["name"] for s, c in zip(init_statuses, init_specs)
                  if not _is_sidecar(c) and not _succeeded(s)]
    unready = [s["name"] for s in statuses if not s["ready"]]
    unready += [s["name"] for s, c in zip(init_statuses, init_specs) if _is_sidecar(c) and not s["ready"]]
    terminal = pod_phase in ("Succeeded", "Failed")
    sandbox = rt.sandbox
    sandbox_ready = sandbox is not None and sandbox.state == api.SANDBOX_READY
    generation = int((pod.get("metadata") or {}).get("generation") or 0)
    containers_ok = not unready and not terminal
    why = "PodCompleted" if terminal else "ContainersNotReady"
    message = "" if terminal else f"containers with unready status: [{' '.join(unready)}]"
    # Conditions others own (readiness gates', DisruptionTarget, …) stay as the pod has them: the status patch
    # replaces the whole list.
    conditions = [c for c in old.get("conditions") or [] if c.get("type") not in KUBELET_CONDITIONS]
    gates = _unmet_readiness_gates(spec, conditions) if containers_ok else []
    if gates:
        ready = _condition("Ready", False, previous, "ReadinessGatesNotReady", ", ".join(gates))
    else:
        ready = _condition("Ready", containers_ok, previous, why, message)
    conditions += [
        _condition("PodReadyToStartContainers", sandbox_ready, previous),
        _condition("Initialized", not incomplete, previous, "ContainersNotInitialized",
                   f"containers with incomplete status: [{' '.join(incomplete)}]"),
        ready,
        _condition("ContainersReady", containers_ok, previous, why, message),
        _condition("PodScheduled", True, previous),
    ]
    running = {c["name"]: record.id for c in init_specs + spec.get("containers", [])
               if (record := rt.latest(c["name"])) is not None and record.state == api.CONTAINER_RUNNING}
    conditions += facts.resize.conditions(running, previous, timestamps.now(), generation)
    for condition in conditions:
        if condition.get("type") in KUBELET_CONDITIONS:
            condition["observedGeneration"] = generation
    host_network = spec.get("hostNetwork", False)
    pod_ips = [facts.node_ip] if host_network else (sandbox.ips if sandbox_ready and sandbox.ips else [])
    if not pod_ips and old.get("podIPs"):
        pod_ips = [p["ip"] for p in old["podIPs"]]  # keep the address a stopped pod had
    status = {
        "observedGeneration": generation,
        "phase": pod_phase,
        "conditions": conditions,
        "hostIP": facts.node_ip,
        "hostIPs": [{"ip": facts.node_ip}],
        "startTime": old.get("startTime") or timestamps.now(),
        "qosClass": qos.qos_class(pod),
        "containerStatuses": statuses,
    }
    if pod_ips:
        status["podIP"] = pod_ips[0]
        status["podIPs"] = [{"ip": ip} for ip in pod_ips]
    if init_specs:
        status["initContainerStatuses"] = init_statuses
    ephemeral = spec.get("ephemeralContainers") or []
    if ephemeral:  # not part of the pod's phase or readiness; never Ready, as upstream reports them
        status["ephemeralContainerStatuses"] = [{**container_status(c, rt, facts), "ready": False} for c in ephemeral]
    return status
