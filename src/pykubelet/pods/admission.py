"""Does a new pod fit the node? Upstream's predicate admission of resources (pkg/kubelet/lifecycle).

The scheduler already placed the pod, but a pod bound by nodeName, a static pod or a stale scheduler view can
ask for more than the node has left. The pod's requests (its containers' and init containers' as upstream
aggregates them, or pod-level ones, plus its overhead) against the node's allocatable less what the other
active pods request, for the pod count, cpu, memory, ephemeral-storage and every extended resource the
allocatable lists; a resource the pod does not request is not checked. The first shortfall refuses the pod,
with upstream's reason (OutOfcpu, OutOfmemory, OutOfephemeral-storage, OutOfpods, OutOf<resource>) and message.
Then its host ports (of its containers and sidecars) against those of the other active pods, as the scheduler's
NodePorts filter: a port on 0.0.0.0 (the default) conflicts with that protocol and port on any address.

Before the resources, the pod's OS (`os_refusal`: its `kubernetes.io/os` label, then `spec.os.name`, against
linux) and its sysctls (`sysctl_refusal`: each must be a safe one or in `allowedUnsafeSysctls`, and not of a
namespace the pod shares with the host), and after them AppArmor (`apparmor_refusal`: a pod that asks for a
profile on a host without AppArmor), with upstream's reasons and messages (pkg/kubelet/lifecycle: predicate.go,
handlers.go; pkg/kubelet/sysctl).
"""

from __future__ import annotations

import platform
from fractions import Fraction
from pathlib import Path

from . import qos

MESSAGE = "Node didn't have enough resource: {}, requested: {}, used: {}, capacity: {}"
PORTS_REASON = "NodePorts"
PORTS_MESSAGE = "Predicate NodePorts failed: node(s) didn't have free ports for the requested pod ports"
ANY_ADDRESS = "0.0.0.0"
NODE_OS = "linux"
OS_LABEL = "kubernetes.io/os"
APPARMOR_ANNOTATION_PREFIX = "container.apparmor.security.beta.kubernetes.io/"


def os_refusal(pod: dict) -> tuple[str, str] | None:
    """Upstream's two OS checks: the pod's own `kubernetes.io/os` label (its labels, not its node selector, as
    upstream reads it) and `spec.os.name`, each against the node's OS."""
    label = ((pod.get("metadata") or {}).get("labels") or {}).get(OS_LABEL)
    if label is not None and label != NODE_OS:
        return ("PodOSSelectorNodeLabelDoesNotMatch",
                "Failed to admit pod as the `kubernetes.io/os` label doesn't match node label")
    name = ((pod.get("spec") or {}).get("os") or {}).get("name")
    if name is not None and name != NODE_OS:
        return "PodOSNotSupported", "Failed to admit pod as the OS field doesn't match node OS"
    return None


# Upstream's safe sysctls (pkg/kubelet/sysctl/safe_sysctls.go): namespaced and isolated, each with the kernel
# version since which it is namespaced (None: always).
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced": None, "net.ipv4.ip_local_port_range": None, "net.ipv4.tcp_syncookies": None,
    "net.ipv4.ping_group_range": None, "net.ipv4.ip_unprivileged_port_start": None,
    "net.ipv4.ip_local_reserved_ports": (3, 16), "net.ipv4.tcp_keepalive_time": (4, 5),
    "net.ipv4.tcp_fin_timeout": (4, 6), "net.ipv4.tcp_keepalive_intvl": (4, 5),
    "net.ipv4.tcp_keepalive_probes": (4, 5), "net.ipv4.tcp_rmem": (4, 15), "net.ipv4.tcp_wmem": (4, 15),
}
# Which namespace a sysctl belongs to (k8s.io/component-helpers/node/util/sysctl): by name, else by prefix.
_IPC_NAMES = {"kernel.sem", "kernel.shmall", "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced",
              "kernel.shm", "kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.msg"}


def normalize_sysctl(name: str) -> str:
    """"net/ipv4/ip_forward" -> "net.ipv4.ip_forward": with '/' as the first separator, '.' and '/' swap."""
    first = next((i for i, ch in enumerate(name) if ch in "./"), -1)
    if first == -1 or name[first] == ".":
        return name
    return name.translate(str.maketrans("./", "/."))


def sysctl_namespace(name: str) -> str | None:
    if name in _IPC_NAMES:
        return "IPC"
    if name.startswith("net."):
        return "Net"
    if name.startswith("fs.mqueue."):
        return "IPC"
    return None


def _kernel_version() -> tuple[int, int]:
    try:
        major, minor = platform.release().split(".")[:2]
        return int(major), int(minor.split("-")[0])
    except ValueError:
        return (0, 0)


def sysctl_allowlist(allowed_unsafe: list[str], kernel: tuple[int, int] | None = None) -> list[str]:
    """The safe sysctls this kernel namespaces, then the configured unsafe ones (names or `prefix*` patterns)."""
    kernel = kernel or _kernel_version()
    return [name for name, since in SAFE_SYSCTLS.items() if since is None or kernel >= since] + list(allowed_unsafe)


def sysctl_refusal(pod: dict, allowlist: list[str]) -> tuple[str, str] | None:
    """Upstream's sysctl admission: every sysctl of the pod must be allowlisted (exactly or by a `prefix*`
    pattern), and none of the network or IPC namespace when the pod shares that one with the host."""
    spec = pod.get("spec") or {}
    for sysctl in (spec.get("securityContext") or {}).get("sysctls") or []:
        name = normalize_sysctl(sysctl.get("name", ""))
        matched = None
        for pattern in allowlist:
            pattern = normalize_sysctl(pattern)
            if pattern == name or (pattern.endswith("*") and name.startswith(pattern[:-1])):
                matched = pattern.rstrip("*")
                break
        if matched is None:
            return "SysctlForbidden", f'forbidden sysctl: "{name}" not allowlisted'
        namespace = sysctl_namespace(matched) or sysctl_namespace(name)
        if (namespace == "Net" and spec.get("hostNetwork")) or (namespace == "IPC" and spec.get("hostIPC")):
            return "SysctlForbidden", f'forbidden sysctl: "{name}" not allowed with host {namespace} enabled'
    return None


def apparmor_enabled(sys_dir: Path = Path("/sys")) -> bool:
    """As upstream (and runc) tell: the securityfs directory exists and the module parameter says Y."""
    try:
        return ((sys_dir / "kernel/security/apparmor").exists()
                and (sys_dir / "module/apparmor/parameters/enabled").read_text().startswith("Y"))
    except OSError:
        return False


def _apparmor_profiles(pod: dict) -> list[dict]:
    spec = pod.get("spec") or {}
    profiles = [((spec.get("securityContext") or {}).get("appArmorProfile"))]
    for kind in ("initContainers", "containers", "ephemeralContainers"):
        profiles += [(c.get("securityContext") or {}).get("appArmorProfile") for c in spec.get(kind) or []]
    return [p for p in profiles if p]


def apparmor_refusal(pod: dict, enabled: bool) -> tuple[str, str] | None:
    """A pod that asks for an AppArmor profile (a field or the deprecated annotation, other than unconfined)
    is refused where the host has no AppArmor, and a Localhost profile without a name anywhere."""
    profiles = _apparmor_profiles(pod)
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    required = any(p.get("type") != "Unconfined" for p in profiles) or any(
        value != "unconfined" for key, value in annotations.items() if key.startswith(APPARMOR_ANNOTATION_PREFIX))
    if not required:
        return None
    if not enabled:
        return "AppArmor", "Cannot enforce AppArmor: AppArmor is not enabled on the host"
    for profile in profiles:
        if profile.get("type") == "Localhost" and not (profile.get("localhostProfile") or "").strip():
            return "AppArmor", f"Cannot enforce AppArmor: invalid empty AppArmor profile name: {profile!r}"
    return None


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
