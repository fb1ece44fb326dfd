"""What the Node object says about this host: labels, addresses, capacity, nodeInfo, conditions, images.

Pure functions over facts gathered once (MachineInfo) or on every status sync
(the runtime's state, memory, disk and PID headroom), so that the status loop
can compare what it would send with what it sent last.
"""

from __future__ import annotations

import os
import platform
import socket
from dataclasses import dataclass
from pathlib import Path

import psutil

from nodeagent.version import KUBERNETES_VERSION

ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}
MAX_IMAGES = 50  # upstream's nodeStatusMaxImages

# (type, status) -> (reason, message), as the upstream kubelet words them.
_CONDITION_TEXT = {
    ("MemoryPressure", "False"): ("KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
    ("MemoryPressure", "True"): ("KubeletHasInsufficientMemory", "kubelet has insufficient memory available"),
    ("DiskPressure", "False"): ("KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
    ("DiskPressure", "True"): ("KubeletHasDiskPressure", "kubelet has disk pressure"),
    ("PIDPressure", "False"): ("KubeletHasSufficientPID", "kubelet has sufficient PID available"),
    ("PIDPressure", "True"): ("KubeletHasInsufficientPID", "kubelet has insufficient PID available"),
    ("Ready", "True"): ("KubeletReady", "kubelet is posting ready status"),
}


@dataclass(frozen=True)
class MachineInfo:
    cpus: int
    memory: int  # bytes
    ephemeral_storage: int  # bytes of the filesystem holding the kubelet's root dir
    hugepages: dict[str, int]  # "hugepages-2Mi" -> bytes
    machine_id: str
    system_uuid: str
    boot_id: str
    kernel_version: str
    os_image: str
    architecture: str


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def _os_image() -> str:
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return "Linux"


def _hugepages() -> dict[str, int]:
    sizes = {}
    for entry in sorted(Path("/sys/kernel/mm/hugepages").glob("hugepages-*kB")):
        kib = int(entry.name[len("hugepages-"):-2])
        pages = int(_read(str(entry / "nr_hugepages")) or 0)
        sizes[f"hugepages-{format_binary(kib * 1024)}"] = pages * kib * 1024
    return sizes


def read_machine_info(root_dir: Path) -> MachineInfo:
    root = root_dir if root_dir.exists() else Path("/")
    return MachineInfo(
        cpus=os.cpu_count() or 1,
        memory=psutil.virtual_memory().total,
        ephemeral_storage=psutil.disk_usage(str(root)).total,
        hugepages=_hugepages(),
        machine_id=_read("/etc/machine-id"),
        system_uuid=_read("/sys/class/dmi/id/product_uuid").lower(),
        boot_id=_read("/proc/sys/kernel/random/boot_id"),
        kernel_version=platform.release(),
        os_image=_os_image(),
        architecture=ARCH.get(platform.machine(), platform.machine()),
    )


def format_binary(n: int) -> str:
    """Bytes as the largest exact binary-suffixed quantity: 2097152 -> "2Mi"."""
    for suffix, size in (("Ei", 1 << 60), ("Pi", 1 << 50), ("Ti", 1 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20),
                         ("Ki", 1 << 10)):
        if n and n % size == 0:
            return f"{n // size}{suffix}"
    return str(n)


def _memory(n: int) -> str:
    """Memory as upstream prints it: in Ki when exact, else bytes."""
    return f"{n // 1024}Ki" if n % 1024 == 0 else str(n)


def _cpu(millis: int) -> str:
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def _threshold(value: str | None, total: int, parse_quantity) -> int:
    """An eviction threshold ("100Mi" or "10%") in bytes of `total`."""
    if not value:
        return 0
    if value.endswith("%"):
        return int(total * float(value[:-1]) / 100)
    return int(parse_quantity(value))


def capacity(info: MachineInfo, max_pods: int) -> dict[str, str]:
    cap = {
        "cpu": str(info.cpus),
        "memory": _memory(info.memory),
        "ephemeral-storage": _memory(info.ephemeral_storage),
        "pods": str(max_pods),
    }
    cap.update({name: format_binary(size) if size else "0" for name, size in info.hugepages.items()})
    return cap


def allocatable(info: MachineInfo, max_pods: int, *, kube_reserved: dict[str, str], system_reserved: dict[str, str],
                eviction_hard: dict[str, str], parse_quantity) -> dict[str, str]:
    """Capacity less what is reserved for the system and the kubelet and the hard eviction thresholds."""
    def reserved(resource: str) -> float:
        return sum(parse_quantity(r[resource]) for r in (kube_reserved, system_reserved) if resource in r)

    hugepages_total = sum(info.hugepages.values())
    memory = info.memory - reserved("memory") - hugepages_total - _threshold(
        eviction_hard.get("memory.available"), info.memory, parse_quantity)
    storage = info.ephemeral_storage - reserved("ephemeral-storage") - _threshold(
        eviction_hard.get("nodefs.available"), info.ephemeral_storage, parse_quantity)
    cpu_millis = info.cpus * 1000 - int(reserved("cpu") * 1000)
    alloc = capacity(info, max_pods)
    alloc.update({"cpu": _cpu(max(cpu_millis, 0)), "memory": _memory(max(int(memory), 0)),
                  "ephemeral-storage": str(max(int(storage), 0))})
    return alloc


@dataclass(frozen=True)
class Pressure:
    """The node's pressure conditions, as the eviction manager sees them."""

    memory: bool = False
    disk: bool = False
    pid: bool = False


def conditions(previous: list[dict], now: str, *, ready_problems: list[str], pressure: Pressure) -> list[dict]:
    """The four node conditions; lastTransitionTime moves only when a condition's status changes."""
    before = {c.get("type"): c for c in previous or []}
    wanted = [
        ("MemoryPressure", pressure.memory),
        ("DiskPressure", pressure.disk),
        ("PIDPressure", pressure.pid),
        ("Ready", not ready_problems),
    ]
    result = []
    for kind, truth in wanted:
        status = "True" if truth else "False"
        reason, message = _CONDITION_TEXT.get((kind, status), ("KubeletNotReady", ", ".join(ready_problems)))
        old = before.get(kind)
        transition = old["lastTransitionTime"] if old and old.get("status") == status and old.get(
            "lastTransitionTime") else now
        result.append({"type": kind, "status": status, "lastHeartbeatTime": now, "lastTransitionTime": transition,
                       "reason": reason, "message": message})
    return result


def runtime_problems(status_response) -> list[str]:
    """What keeps the node from Ready, read from a CRI StatusResponse (None: the runtime did not answer)."""
    if status_response is None:
        return ["container runtime is down"]
    problems = []
    found = {c.type: c for c in status_response.status.conditions}
    for kind, text in (("RuntimeReady", "container runtime status check may not have completed yet"),
                       ("NetworkReady", "container runtime network not ready")):
        cond = found.get(kind)
        if cond is None or not cond.status:
            detail = f"{kind}=false reason:{cond.reason} message:{cond.message}" if cond else f"{kind} missing"
            problems.append(f"{text}: {detail}")
    return problems


def images(list_images_response) -> list[dict]:
    """The largest MAX_IMAGES images, each with its tags and digests, as the upstream kubelet reports them."""
    entries = []
    for image in sorted(list_images_response.images, key=lambda i: i.size, reverse=True)[:MAX_IMAGES]:
        names = list(image.repo_digests) + list(image.repo_tags)
        if names:
            entries.append({"names": names, "sizeBytes": image.size})
    return entries


def node_info(info: MachineInfo, runtime_version: str) -> dict:
    return {
        "machineID": info.machine_id,
        "systemUUID": info.system_uuid,
        "bootID": info.boot_id,
        "kernelVersion": info.kernel_version,
        "osImage": info.os_image,
        "containerRuntimeVersion": runtime_version,
        "kubeletVersion": KUBERNETES_VERSION,
        "kubeProxyVersion": KUBERNETES_VERSION,
        "operatingSystem": "linux",
        "architecture": info.architecture,
    }


def node_name(hostname_override: str | None) -> str:
    return (hostname_override or socket.gethostname()).strip().lower()


def default_node_ip() -> str:
    """The first global IPv4 address of this network namespace (when --node-ip is not given)."""
    for name, addrs in psutil.net_if_addrs().items():
        if name == "lo":
            continue
        for addr in addrs:
            if addr.family == socket.AF_INET and not addr.address.startswith(("127.", "169.254.")):
                return addr.address
    raise RuntimeError("no IPv4 address to report as the node's InternalIP; pass --node-ip")


def labels(name: str, architecture: str, extra: dict[str, str]) -> dict[str, str]:
    return {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": architecture,
        "beta.kubernetes.io/os": "linux",
        "beta.kubernetes.io/arch": architecture,
        **extra,
    }
