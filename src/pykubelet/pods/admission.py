"""Does a new pod fit the node? Upstream's predicate admission of resources (pkg/kubelet/lifecycle).

The scheduler already placed the pod, but a pod bound by nodeName, a static pod or a stale scheduler view can
ask for more than the node has left. The pod's requests (its containers' and init containers' as upstream
aggregates them, or pod-level ones, plus its overhead) against the node's allocatable less what the other
active pods request, for the pod count, cpu, memory, ephemeral-storage and every extended resource the
allocatable lists; a resource the pod does not request is not checked. The first shortfall refuses the pod,
with upstream's reason (OutOfcpu, OutOfmemory, OutOfephemeral-storage, OutOfpods, OutOf<resource>) and message.
Then its host ports (of its containers and sidecars) against those of the other active pods, as the scheduler's
NodePorts filter: a port on 0.0.0.0 (the default) conflicts with that protocol and port on any address.
"""

from __future__ import annotations

from fractions import Fraction

from . import qos

MESSAGE = "Node didn't have enough resource: {}, requested: {}, used: {}, capacity: {}"
PORTS_REASON = "NodePorts"
PORTS_MESSAGE = "Predicate NodePorts failed: node(s) didn't have free ports for the requested pod ports"
ANY_ADDRESS = "0.0.0.0"


def requests(pod: dict) -> dict[str, Fraction]:
    """What the pod asks of the node: pod-level requests where set, else the aggregate, plus the overhead."""
    total = dict(qos.aggregate(pod.get("spec") or {}, qos.container_requests))
    total.update(qos.pod_level_requests(pod))
    for name, amount in ((pod.get("spec") or {}).get("overhead") or {}).items():
        total[name] = total.get(name, Fraction(0)) + qos.quantity(amount)
    return total


def amount(resource: str, value: Fraction) -> int:
    """As upstream counts it: cpu in millicores, everything else in whole units."""
    return qos.milli_value(value) if resource == "cpu" else qos.int_value(value)


def fit(pod: dict, others: list[dict], allocatable: dict[str, str]) -> tuple[str, str] | None:
    """None if the pod fits beside `others` (the node's other active pods), else (reason, message)."""
    capacity = int(qos.quantity(allocatable.get("pods", "110")))
    if len(others) + 1 > capacity:
        return "OutOfpods", MESSAGE.format("pods", 1, len(others), capacity)
    wanted = requests(pod)
    used: dict[str, Fraction] = {}
    for other in others:
        for name, value in requests(other).items():
            used[name] = used.get(name, Fraction(0)) + value
    names = ["cpu", "memory", "ephemeral-storage"]
    names += sorted(n for n in wanted if n not in names and n != "pods" and n in allocatable)
    for name in names:
        asked = amount(name, wanted.get(name, Fraction(0)))
        if asked <= 0 or name not in allocatable:
            continue
        have, taken = amount(name, qos.quantity(allocatable[name])), amount(name, used.get(name, Fraction(0)))
        if asked > have - taken:
            return f"OutOf{name}", MESSAGE.format(name, asked, taken, have)
    if _ports_taken(host_ports(pod), [port for other in others for port in host_ports(other)]):
        return PORTS_REASON, PORTS_MESSAGE
    return None


def host_ports(pod: dict) -> list[tuple[str, str, int]]:
    """(host IP, protocol, host port) of every port the pod holds on the node while it runs: its containers'
    and its sidecars' (restartable init containers), not those of init containers that end."""
    spec = pod.get("spec") or {}
    containers = [c for c in spec.get("initContainers") or [] if c.get("restartPolicy") == "Always"]
    containers += spec.get("containers") or []
    return [(port.get("hostIP") or ANY_ADDRESS, port.get("protocol") or "TCP", int(port["hostPort"]))
            for container in containers for port in container.get("ports") or [] if int(port.get("hostPort") or 0) > 0]


def _ports_taken(wanted: list[tuple[str, str, int]], used: list[tuple[str, str, int]]) -> bool:
    for address, protocol, port in wanted:
        for other_address, other_protocol, other_port in used:
            same_port = (protocol, port) == (other_protocol, other_port)
            if same_port and (address == other_address or ANY_ADDRESS in (address, other_address)):
                return True
    return False
