"""emptyDir volumes: a directory of the pod's own, on the node's disk or (`medium: Memory`) a tmpfs.

A tmpfs is sized as upstream sizes it: the node's allocatable memory, lowered to the pod's memory limit when
it has one, lowered again to the volume's `sizeLimit` when that is smaller. Its pages count against the
memory of the container that writes them. The wrapped volumes (secret, downwardAPI, projected) are tmpfs
emptyDirs with no sizeLimit.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

from ..pods import qos
from . import mounts

DIR_MODE = 0o777


def pod_memory_limit(pod: dict) -> Fraction | None:
    """The pod's memory limit as its cgroup gets it: the pod-level limit, else the containers' aggregate when
    every one of them has a limit; None when the pod is unbounded."""
    pod_level = qos.pod_level_limits(pod).get("memory")
    if pod_level:
        return pod_level
    spec = pod.get("spec") or {}
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    if not containers or any(not qos.container_limits(c).get("memory") for c in containers):
        return None
    return qos.aggregate(spec, qos.container_limits).get("memory")


def tmpfs_size(pod: dict, size_limit: str | None, node_allocatable_memory: str | None) -> int | None:
    size = qos.quantity(node_allocatable_memory) if node_allocatable_memory else None
    for lower in (pod_memory_limit(pod), qos.quantity(size_limit) if size_limit else None):
        if lower is not None and lower > 0 and (size is None or lower <= size):
            size = lower
    return qos.int_value(size) if size else None


def medium(source: dict) -> str:
    value = source.get("medium") or ""
    if value not in ("", "Memory"):
        raise ValueError(f"unknown storage medium {value!r}" if not value.startswith("HugePages")
                         else f"medium {value}: hugePages storage is not supported by pykubelet")
    return value


def set_up(path: Path, *, memory: bool, size: int | None) -> bool:
    """Make the directory (and mount its tmpfs); returns whether it was newly made."""
    fresh = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    if memory:
        if not mounts.is_tmpfs_mounted(path):
            mounts.mount_tmpfs(path, size)
            fresh = True
    elif fresh or (path.stat().st_mode & 0o777) != DIR_MODE:
        path.chmod(DIR_MODE)
    return fresh
