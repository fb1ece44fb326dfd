"""Pod QoS classes, resource quantities and pod cgroup parents.

Upstream: pkg/apis/core/v1/helper/qos (ComputePodQOS), component-helpers/resource
(the sidecar-aware aggregation of container requests) and the kubelet's cgroupfs
naming of pod cgroups. Pods are API dicts. Requests missing from a container
default to its limits, as the API server's defaulting does (pods from the API are
already defaulted, so this only matters for hand-made or static pods).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from fractions import Fraction
from typing import Any

GUARANTEED = "Guaranteed"
BURSTABLE = "Burstable"
BEST_EFFORT = "BestEffort"

_QOS_RESOURCES = ("cpu", "memory")

_QUANTITY = re.compile(r"([+-]?)(\d+(?:\.\d*)?|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?\d+)?")
_SUFFIX = {
    "": 1, "n": Fraction(1, 10**9), "u": Fraction(1, 10**6), "m": Fraction(1, 1000),
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}


def quantity(value: Any) -> Fraction:
    """A resource quantity ("500m", "1Gi", 2, "1e3") as an exact Fraction; ValueError if invalid."""
    if isinstance(value, bool):
        raise ValueError(f"invalid quantity {value!r}")
    if isinstance(value, (int, Fraction)):
        return Fraction(value)
    if isinstance(value, float):
        return Fraction(str(value))
    match = _QUANTITY.fullmatch(str(value).strip())
    if not match:
        raise ValueError(f"invalid quantity {value!r}")
    sign, number, suffix = match.groups()
    suffix = suffix or ""
    scale = _SUFFIX[suffix] if suffix in _SUFFIX else Fraction(10) ** int(suffix[1:])
    return Fraction(number) * scale * (-1 if sign == "-" else 1)


def milli_value(q: Fraction) -> int:
    """Quantity.MilliValue(): thousandths, rounded up."""
    return math.ceil(q * 1000)


def int_value(q: Fraction) -> int:
    """Quantity.Value(): rounded up to a whole number."""
    return math.ceil(q)


def _resources(obj: Mapping | None) -> Mapping:
    return (obj or {}).get("resources") or {}


def _parse_list(items: Mapping | None) -> dict[str, Fraction]:
    return {name: quantity(v) for name, v in (items or {}).items()}


def container_limits(container: Mapping) -> dict[str, Fraction]:
    return _parse_list(_resources(container).get("limits"))


def container_requests(container: Mapping) -> dict[str, Fraction]:
    """The container's requests, a missing one defaulting to its limit (API defaulting)."""
    requests = _parse_list(_resources(container).get("requests"))
    for name, limit in container_limits(container).items():
        requests.setdefault(name, limit)
    return requests


def is_sidecar(container: Mapping) -> bool:
    """A restartable init container (restartPolicy Always)."""
    return container.get("restartPolicy") == "Always"


def _add(total: dict[str, Fraction], more: Mapping[str, Fraction]) -> None:
    for name, q in more.items():
        total[name] = total.get(name, Fraction(0)) + q


def _max(total: dict[str, Fraction], other: Mapping[str, Fraction]) -> None:
    for name, q in other.items():
        if name not in total or q > total[name]:
            total[name] = q


def aggregate(spec: Mapping, per_container) -> dict[str, Fraction]:
    """Sum over regular containers and sidecars, at least what any init container needs
    while it runs (itself plus the sidecars started before it) — the KEP-753 formula."""
    total: dict[str, Fraction] = {}
    for c in spec.get("containers") or []:
        _add(total, per_container(c))
    sidecars: dict[str, Fraction] = {}
    init_peak: dict[str, Fraction] = {}
    for c in spec.get("initContainers") or []:
        own = per_container(c)
        if is_sidecar(c):
            _add(total, own)
            _add(sidecars, own)
            during = dict(sidecars)
        else:
            during = dict(own)
            _add(during, sidecars)
        _max(init_peak, during)
    _max(total, init_peak)
    return total


def _pod_level(pod: Mapping, kind: str) -> dict[str, Fraction]:
    """Pod-level (spec.resources) requests or limits of the supported resources."""
    items = _parse_list(_resources(pod.get("spec")).get(kind))
    return {k: v for k, v in items.items() if k in _QOS_RESOURCES or k.startswith("hugepages-")}


def pod_level_requests(pod: Mapping) -> dict[str, Fraction]:
    """spec.resources.requests, defaulted as the API server does when only limits are set."""
    limits = _pod_level(pod, "limits")
    requests = _pod_level(pod, "requests")
    if limits:
        aggregated = aggregate(pod.get("spec") or {}, container_requests)
        for name, q in aggregated.items():
            if name in _QOS_RESOURCES:
                requests.setdefault(name, q)
        for name, q in limits.items():
            requests.setdefault(name, q)
    return requests


def pod_level_limits(pod: Mapping) -> dict[str, Fraction]:
    return _pod_level(pod, "limits")


def _positive(items: Mapping[str, Fraction]) -> dict[str, Fraction]:
    return {k: v for k, v in items.items() if k in _QOS_RESOURCES and v > 0}


def _compute(pod: Mapping) -> str:
    spec = pod.get("spec") or {}
    requests: dict[str, Fraction] = {}
    limits: dict[str, Fraction] = {}
    guaranteed = True
    pod_requests, pod_limits = pod_level_requests(pod), pod_level_limits(pod)
    if pod_requests or pod_limits:
        requests, limits = _positive(pod_requests), _positive(pod_limits)
        if pod_limits and set(limits) != set(_QOS_RESOURCES):
            guaranteed = False
    else:
        containers: Iterable[Mapping] = [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]
        for c in containers:
            _add(requests, _positive(container_requests(c)))
            own_limits = _positive(container_limits(c))
            _add(limits, own_limits)
            if set(own_limits) != set(_QOS_RESOURCES):
                guaranteed = False
    if not requests and not limits:
        return BEST_EFFORT
    if guaranteed and requests.keys() == limits.keys() and all(limits[k] == q for k, q in requests.items()):
        return GUARANTEED
    return BURSTABLE


def qos_class(pod: Mapping) -> str:
    """"Guaranteed", "Burstable" or "BestEffort": status.qosClass when the API set it,
    else computed from the containers' (or the pod-level) requests and limits."""
    recorded = (pod.get("status") or {}).get("qosClass")
    if recorded in (GUARANTEED, BURSTABLE, BEST_EFFORT):
        return recorded
    return _compute(pod)


def pod_cgroup_parent(cgroup_root: str, pod: Mapping) -> str:
    """The pod's cgroup with cgroupfs naming: <root>/kubepods[/burstable|/besteffort]/pod<uid>."""
    root = "/" + (cgroup_root or "").strip("/")
    tier = {GUARANTEED: "", BURSTABLE: "burstable/", BEST_EFFORT: "besteffort/"}[qos_class(pod)]
    uid = pod["metadata"]["uid"]
    return f"{root.rstrip('/')}/kubepods/{tier}pod{uid}"
