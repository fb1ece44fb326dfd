"""The CRI requests for a pod: PodSandboxConfig and ContainerConfig.

What upstream's kuberuntime (kuberuntime_sandbox.go, kuberuntime_container.go and
_linux.go, labels.go, security_context.go) puts in them, from API pod dicts:
metadata, labels and annotations under upstream's names, log paths, host ports,
namespaces, security contexts and cgroup resources with upstream's formulas.

Left to the runtime or not done: masked and read-only /proc paths (the runtime's
defaults), swap, MemoryQoS, user namespaces, devices, ephemeral containers' target
PID namespace, stop signals (ContainerStopSignals is off by default).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any

from cri import api

from . import qos
from .envvars import CREATE_CONTAINER_CONFIG_ERROR, ConfigProblem, describe_pod, expand

CREATE_POD_SANDBOX_ERROR = "CreatePodSandboxError"

# Label and annotation names (k8s.io/kubelet/pkg/types, kuberuntime/labels.go).
POD_NAME_LABEL = "io.kubernetes.pod.name"
POD_NAMESPACE_LABEL = "io.kubernetes.pod.namespace"
POD_UID_LABEL = "io.kubernetes.pod.uid"
CONTAINER_NAME_LABEL = "io.kubernetes.container.name"
CONTAINER_HASH = "io.kubernetes.container.hash"
CONTAINER_RESTART_COUNT = "io.kubernetes.container.restartCount"
CONTAINER_TERMINATION_MESSAGE_PATH = "io.kubernetes.container.terminationMessagePath"
CONTAINER_TERMINATION_MESSAGE_POLICY = "io.kubernetes.container.terminationMessagePolicy"
CONTAINER_PRESTOP_HANDLER = "io.kubernetes.container.preStopHandler"
CONTAINER_PORTS = "io.kubernetes.container.ports"
POD_DELETION_GRACE_PERIOD = "io.kubernetes.pod.deletionGracePeriod"
POD_TERMINATION_GRACE_PERIOD = "io.kubernetes.pod.terminationGracePeriod"

# cgroup CPU constants (pkg/kubelet/cm/helpers_linux.go) and OOM score adjustments (pkg/kubelet/qos).
MIN_SHARES, MAX_SHARES, SHARES_PER_CPU = 2, 262144, 1024
QUOTA_PERIOD, MIN_QUOTA = 100000, 1000
GUARANTEED_OOM_SCORE_ADJ, BEST_EFFORT_OOM_SCORE_ADJ = -997, 1000
SYSTEM_CRITICAL_PRIORITY = 2_000_000_000
MAX_USER_ID = 2**31 - 1

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_PROTOCOLS = {"TCP": api.TCP, "UDP": api.UDP, "SCTP": api.SCTP}


def _meta(pod: Mapping) -> Mapping:
    return pod.get("metadata") or {}


def _spec(pod: Mapping) -> Mapping:
    return pod.get("spec") or {}


def _all_containers(pod: Mapping) -> list[Mapping]:
    spec = _spec(pod)
    return [*(spec.get("initContainers") or []), *(spec.get("containers") or []),
            *(spec.get("ephemeralContainers") or [])]


def pod_labels(pod: Mapping) -> dict[str, str]:
    meta = _meta(pod)
    return {**(meta.get("labels") or {}), POD_NAME_LABEL: meta.get("name", ""),
            POD_NAMESPACE_LABEL: meta.get("namespace", ""), POD_UID_LABEL: meta.get("uid", "")}


def pod_log_directory(pod: Mapping, log_root: Path = Path("/var/log/pods")) -> Path:
    meta = _meta(pod)
    return Path(log_root) / f"{meta.get('namespace', '')}_{meta.get('name', '')}_{meta.get('uid', '')}"


# --- hostname -----------------------------------------------------------------------------------

def _sandbox_problem(message: str) -> ConfigProblem:
    return ConfigProblem(CREATE_POD_SANDBOX_ERROR, message)


def _is_dns_subdomain(name: str) -> bool:
    return len(name) <= 253 and all(_DNS_LABEL.fullmatch(part) for part in name.split("."))


def pod_hostname(pod: Mapping, cluster_domain: str) -> tuple[str, str]:
    """(hostname, domain) of a pod not on the host network: hostnameOverride, else
    spec.hostname, else the pod name, cut to 63 characters; the domain comes from subdomain."""
    meta, spec = _meta(pod), _spec(pod)
    override = spec.get("hostnameOverride")
    if override is not None:
        if not _is_dns_subdomain(override):
            raise _sandbox_problem(f'pod HostnameOverride "{override}" is not a valid DNS subdomain')
        return _truncate_hostname(pod, override), ""
    hostname = meta.get("name", "")
    if spec.get("hostname"):
        hostname = spec["hostname"]
        if not _DNS_LABEL.fullmatch(hostname) or len(hostname) > 63:
            raise _sandbox_problem(f'pod Hostname "{hostname}" is not a valid DNS label')
    hostname = _truncate_hostname(pod, hostname)
    domain = ""
    if spec.get("subdomain"):
        subdomain = spec["subdomain"]
        if not _DNS_LABEL.fullmatch(subdomain) or len(subdomain) > 63:
            raise _sandbox_problem(f'pod Subdomain "{subdomain}" is not a valid DNS label')
        domain = f"{subdomain}.{meta.get('namespace', '')}.svc.{cluster_domain}"
    return hostname, domain


def _truncate_hostname(pod: Mapping, hostname: str) -> str:
    if len(hostname) <= 63:
        return hostname
    truncated = hostname[:63].rstrip("-.")
    if not truncated:
        raise _sandbox_problem(f'hostname for pod "{_meta(pod).get("name", "")}" was invalid: "{hostname}"')
    return truncated


def _kernel_hostname(pod: Mapping, hostname: str, domain: str) -> str:
    if domain and _spec(pod).get("setHostnameAsFQDN"):
        fqdn = f"{hostname}.{domain}"
        if len(fqdn) > 64:
            raise _sandbox_problem(f"failed to construct FQDN from pod hostname and cluster domain, FQDN {fqdn} is "
                                   f"too long (64 characters is the max, {len(fqdn)} characters requested)")
        return fqdn
    return hostname


# --- ports --------------------------------------------------------------------------------------

def _ports(pod: Mapping, container: Mapping) -> list[dict[str, Any]]:
    """The container's ports, hostPort defaulting to containerPort on the host network."""
    host_network = bool(_spec(pod).get("hostNetwork"))
    ports = []
    for port in container.get("ports") or []:
        port = dict(port)
        port.setdefault("protocol", "TCP")
        if host_network and not port.get("hostPort"):
            port["hostPort"] = port.get("containerPort", 0)
        ports.append(port)
    return ports


def port_mappings(pod: Mapping) -> list[api.PortMapping]:
    """Every port of the regular containers (the runtime maps those with a hostPort); a
    port whose name (or family/protocol/ip/ports key) repeats in a container is dropped."""
    mappings = []
    for container in _spec(pod).get("containers") or []:
        seen: set[str] = set()
        for port in _ports(pod, container):
            host_ip = port.get("hostIP", "")
            family = "any" if not host_ip else ("v6" if ":" in host_ip else "v4")
            key = port.get("name") or (f"{family}-{port['protocol']}-{host_ip}:{port.get('containerPort', 0)}:"
                                       f"{port.get('hostPort', 0)}")
            if key in seen:
                continue
            seen.add(key)
            mappings.append(api.PortMapping(
                protocol=_PROTOCOLS.get(port["protocol"], api.TCP), container_port=port.get("containerPort", 0),
                host_port=port.get("hostPort", 0), host_ip=host_ip))
    return mappings


# --- security -----------------------------------------------------------------------------------

def namespace_options(pod: Mapping) -> api.NamespaceOption:
    spec = _spec(pod)
    pid = api.CONTAINER
    if spec.get("hostPID"):
        pid = api.NODE
    elif spec.get("shareProcessNamespace"):
        pid = api.POD
    return api.NamespaceOption(
        network=api.NODE if spec.get("hostNetwork") else api.POD,
        pid=pid,
        ipc=api.NODE if spec.get("hostIPC") else api.POD,
    )


def _selinux(options: Mapping | None) -> api.SELinuxOption | None:
    if not options:
        return None
    return api.SELinuxOption(user=options.get("user", ""), role=options.get("role", ""),
                             type=options.get("type", ""), level=options.get("level", ""))


def _groups(pod_sc: Mapping, reason: str) -> tuple[list[int], int]:
    """Supplemental groups (fsGroup first) and the SupplementalGroupsPolicy enum value."""
    groups = [pod_sc["fsGroup"]] if pod_sc.get("fsGroup") is not None else []
    groups += pod_sc.get("supplementalGroups") or []
    policy = pod_sc.get("supplementalGroupsPolicy")
    if policy is None:
        return groups, api.Merge
    if policy not in ("Merge", "Strict"):
        raise ConfigProblem(reason, f"unsupported supplementalGroupsPolicy: {policy}")
    return groups, api.SupplementalGroupsPolicy.Value(policy)


def effective_security_context(pod: Mapping, container: Mapping) -> dict[str, Any]:
    """The container's securityContext over the pod's (runAs*, seLinuxOptions), as upstream."""
    pod_sc = _spec(pod).get("securityContext") or {}
    effective = {k: pod_sc[k] for k in ("seLinuxOptions", "runAsUser", "runAsGroup", "runAsNonRoot")
                 if pod_sc.get(k) is not None}
    effective.update({k: v for k, v in (container.get("securityContext") or {}).items() if v is not None})
    return effective


def _seccomp(profile: Mapping | None, root: str, default: bool) -> api.SecurityProfile:
    if profile is None:
        kind = "RuntimeDefault" if default else "Unconfined"
    else:
        kind = profile.get("type")
    if kind == "RuntimeDefault":
        return api.SecurityProfile(profile_type=api.SecurityProfile.RuntimeDefault)
    if kind == "Localhost":
        name = (profile or {}).get("localhostProfile")
        if not name:
            raise ConfigProblem(CREATE_CONTAINER_CONFIG_ERROR,
                                "localhostProfile must be set if seccompProfile type is Localhost.")
        path = os.path.normpath(os.path.join(root, name))  # as Go's filepath.Join
        return api.SecurityProfile(profile_type=api.SecurityProfile.Localhost, localhost_ref=path)
    return api.SecurityProfile(profile_type=api.SecurityProfile.Unconfined)


def _apparmor(pod: Mapping, container: Mapping) -> tuple[api.SecurityProfile | None, str]:
    """The AppArmor profile (field, deprecated annotation, pod field) and its old string form."""
    profile = (container.get("securityContext") or {}).get("appArmorProfile")
    if profile is None:
        old = (_meta(pod).get("annotations") or {}).get(
            f"container.apparmor.security.beta.kubernetes.io/{container.get('name', '')}")
        if old == "runtime/default":
            profile = {"type": "RuntimeDefault"}
        elif old == "unconfined":
            profile = {"type": "Unconfined"}
        elif old is not None and old.startswith("localhost/"):
            profile = {"type": "Localhost", "localhostProfile": old.removeprefix("localhost/")}
    if profile is None:
        profile = (_spec(pod).get("securityContext") or {}).get("appArmorProfile")
    if profile is None:
        return None, ""
    kind = profile.get("type")
    if kind == "RuntimeDefault":
        return api.SecurityProfile(profile_type=api.SecurityProfile.RuntimeDefault), "runtime/default"
    if kind == "Unconfined":
        return api.SecurityProfile(profile_type=api.SecurityProfile.Unconfined), "unconfined"
    if kind == "Localhost":
        name = profile.get("localhostProfile")
        if name is None:
            raise ConfigProblem(CREATE_CONTAINER_CONFIG_ERROR, "missing localhost apparmor profile name")
        return api.SecurityProfile(profile_type=api.SecurityProfile.Localhost, localhost_ref=name), f"localhost/{name}"
    raise ConfigProblem(CREATE_CONTAINER_CONFIG_ERROR, f'unknown apparmor profile type: "{kind}"')


def parse_image_user(image_user: str | None) -> tuple[int | None, str]:
    """(uid, username) as the runtime reports an image's user: "1000" or "1000:1000" is uid
    1000, "app" or "app:grp" the username "app", none at all uid 0 (root)."""
    if not image_user:
        return 0, ""
    user = image_user.split(":", 1)[0]
    if re.fullmatch(r"[+-]?[0-9]+", user) and -(2**63) <= int(user) < 2**63:
        return int(user), ""
    return None, user


def verify_run_as_non_root(pod: Mapping, container: Mapping, uid: int | None, username: str) -> None:
    """Raise ConfigProblem(CreateContainerConfigError) when runAsNonRoot cannot hold."""
    sc = effective_security_context(pod, container)
    if not sc.get("runAsNonRoot"):
        return
    where = f'(pod: "{describe_pod(pod)}", container: {container.get("name", "")})'
    if sc.get("runAsUser") is not None:
        if sc["runAsUser"] == 0:
            raise ConfigProblem(CREATE_CONTAINER_CONFIG_ERROR, f"container's runAsUser breaks non-root policy {where}")
        return
    if uid is None and username:
        message = f"image has non-numeric user ({username}), cannot verify user is non-root"
    elif uid == 0:
        message = "image will run as root"
    elif uid is not None and not 0 <= uid <= MAX_USER_ID:
        message = (f"image has an invalid user id ({uid}). (Must be 1-({MAX_USER_ID})): must be between 0 and "
                   f"{MAX_USER_ID}, inclusive")
    else:
        return
    raise ConfigProblem(CREATE_CONTAINER_CONFIG_ERROR, f"container has runAsNonRoot and {message} {where}")


def container_security_context(pod: Mapping, container: Mapping, *, uid: int | None, username: str,
                               seccomp_profile_root: str, seccomp_default: bool) -> api.LinuxContainerSecurityContext:
    sc = effective_security_context(pod, container)
    pod_sc = _spec(pod).get("securityContext") or {}
    caps = sc.get("capabilities") or {}
    groups, policy = _groups(pod_sc, CREATE_CONTAINER_CONFIG_ERROR)
    apparmor, apparmor_name = _apparmor(pod, container)
    context = api.LinuxContainerSecurityContext(
        privileged=bool(sc.get("privileged")),
        readonly_rootfs=bool(sc.get("readOnlyRootFilesystem")),
        namespace_options=namespace_options(pod),
        supplemental_groups=groups,
        supplemental_groups_policy=policy,
        no_new_privs=sc.get("allowPrivilegeEscalation") is False,
        seccomp=_seccomp((container.get("securityContext") or {}).get("seccompProfile")
                         or pod_sc.get("seccompProfile"), seccomp_profile_root, seccomp_default),
        apparmor_profile=apparmor_name,
    )
    if "capabilities" in sc:
        context.capabilities.CopyFrom(api.Capability(add_capabilities=list(caps.get("add") or []),
                                                      drop_capabilities=list(caps.get("drop") or [])))
    if apparmor is not None:
        context.apparmor.CopyFrom(apparmor)
    if (selinux := _selinux(sc.get("seLinuxOptions"))) is not None:
        context.selinux_options.CopyFrom(selinux)
    if sc.get("runAsGroup") is not None:
        context.run_as_group.value = sc["runAsGroup"]
    if sc.get("runAsUser") is not None:
        context.run_as_user.value = sc["runAsUser"]
    else:
        if uid is not None:
            context.run_as_user.value = uid
        context.run_as_username = username
    return context


# --- resources ----------------------------------------------------------------------------------

def milli_cpu_to_shares(milli: int) -> int:
    if milli == 0:
        return MIN_SHARES
    return max(MIN_SHARES, min(MAX_SHARES, milli * SHARES_PER_CPU // 1000))


def milli_cpu_to_quota(milli: int, period: int = QUOTA_PERIOD) -> int:
    if milli == 0:
        return 0
    return max(MIN_QUOTA, milli * period // 1000)


def linux_resources(cpu_request: Fraction | None, cpu_limit: Fraction, memory_limit: Fraction, *,
                    oom_group: bool = False) -> api.LinuxContainerResources:
    """cpu shares from the request (the limit when no request), quota from the limit over a
    100 ms period, the memory limit; ``oom_group`` adds memory.oom.group=1 (cgroup v2)."""
    shares_from = cpu_limit if cpu_request is None else cpu_request
    resources = api.LinuxContainerResources(
        cpu_shares=milli_cpu_to_shares(qos.milli_value(shares_from)),
        cpu_period=QUOTA_PERIOD,
        cpu_quota=milli_cpu_to_quota(qos.milli_value(cpu_limit)),
        memory_limit_in_bytes=qos.int_value(memory_limit),
    )
    if oom_group:
        resources.unified["memory.oom.group"] = "1"
    return resources


def _go_div(a: int, b: int) -> int:
    """Integer division truncating toward zero, as Go's."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def _is_node_critical(pod: Mapping) -> bool:
    annotations = _meta(pod).get("annotations") or {}
    critical = (annotations.get("kubernetes.io/config.source", "api") != "api"
                or "kubernetes.io/config.mirror" in annotations
                or (_spec(pod).get("priority") or 0) >= SYSTEM_CRITICAL_PRIORITY)
    return critical and _spec(pod).get("priorityClassName") == "system-node-critical"


def oom_score_adj(pod: Mapping, container: Mapping, memory_capacity: int) -> int:
    """Upstream's GetContainerOOMScoreAdjust: -997 for node-critical and Guaranteed pods, 1000
    for BestEffort, else 1000 - 1000*request/capacity kept within 3..999."""
    if _is_node_critical(pod):
        return GUARANTEED_OOM_SCORE_ADJ
    qos_class = qos.qos_class(pod)
    if qos_class == qos.GUARANTEED:
        return GUARANTEED_OOM_SCORE_ADJ
    if qos_class == qos.BEST_EFFORT:
        return BEST_EFFORT_OOM_SCORE_ADJ
    spec = _spec(pod)

    def memory(c: Mapping) -> int:
        return qos.int_value(qos.container_requests(c).get("memory", Fraction(0)))

    remaining = 0
    pod_memory = qos.pod_level_requests(pod).get("memory")
    if pod_memory:
        count = len(spec.get("containers") or []) + len(spec.get("initContainers") or [])
        aggregated = qos.aggregate(spec, qos.container_requests).get("memory", Fraction(0))
        remaining = _go_div(qos.int_value(pod_memory) - qos.int_value(aggregated), count)
    capacity = max(memory_capacity, 1)
    adjust = 1000 - _go_div(1000 * (memory(container) + remaining), capacity)
    init_names = {c.get("name") for c in spec.get("initContainers") or []}
    if qos.is_sidecar(container) and container.get("name") in init_names and spec.get("containers"):
        smallest = min(memory(c) for c in spec["containers"]) + remaining
        adjust = min(adjust, 1000 - _go_div(1000 * smallest, capacity))
    if adjust < 1000 + GUARANTEED_OOM_SCORE_ADJ:
        return 1000 + GUARANTEED_OOM_SCORE_ADJ
    if adjust == BEST_EFFORT_OOM_SCORE_ADJ:
        return adjust - 1
    return adjust


def _hugepage_size(resource: str) -> str | None:
    """"hugepages-2Mi" -> "2MB", the runtime's page size names."""
    try:
        size = qos.int_value(qos.quantity(resource.removeprefix("hugepages-")))
    except ValueError:
        return None
    units = ["B", "KB", "MB", "GB", "TB", "PB"]
    index = 0
    while size and size % 1024 == 0 and index < len(units) - 1:
        size //= 1024
        index += 1
    return f"{size}{units[index]}"


def _hugepage_limits(pod: Mapping, container: Mapping, sizes: Iterable[str]) -> list[api.HugepageLimit]:
    limits = {size: 0 for size in sizes}
    if not limits:
        return []
    wanted = {**qos.pod_level_limits(pod), **qos.container_limits(container)}
    for resource, amount in wanted.items():
        if resource.startswith("hugepages-") and (size := _hugepage_size(resource)) in limits:
            limits[size] = qos.int_value(amount)
    return [api.HugepageLimit(page_size=size, limit=limit) for size, limit in limits.items()]


def container_resources(pod: Mapping, container: Mapping, *, node_memory_capacity: int, oom_group: bool = False,
                        hugepage_sizes: Iterable[str] = ()) -> api.LinuxContainerResources:
    """The container's cgroup settings; a zero container limit falls back to the pod-level one."""
    requests, limits = qos.container_requests(container), qos.container_limits(container)
    pod_limits = qos.pod_level_limits(pod)
    pod_level = bool(pod_limits or qos.pod_level_requests(pod))
    cpu_limit = limits.get("cpu") or (pod_limits.get("cpu") if pod_level else None) or Fraction(0)
    memory_limit = limits.get("memory") or (pod_limits.get("memory") if pod_level else None) or Fraction(0)
    resources = linux_resources(requests.get("cpu"), cpu_limit, memory_limit, oom_group=oom_group)
    resources.oom_score_adj = oom_score_adj(pod, container, node_memory_capacity)
    resources.hugepage_limits.extend(_hugepage_limits(pod, container, hugepage_sizes))
    return resources


def sandbox_resources(pod: Mapping) -> api.LinuxContainerResources:
    """The pod's aggregate requests and limits (pod-level ones where set), overhead excluded."""
    spec = _spec(pod)
    requests = qos.aggregate(spec, qos.container_requests)
    limits = qos.aggregate(spec, qos.container_limits)
    requests.update({k: v for k, v in qos.pod_level_requests(pod).items()})
    limits.update({k: v for k, v in qos.pod_level_limits(pod).items()})
    return linux_resources(requests.get("cpu"), limits.get("cpu", Fraction(0)), limits.get("memory", Fraction(0)))


# --- the sandbox --------------------------------------------------------------------------------

def sandbox_config(
    pod: Mapping,
    *,
    attempt: int,
    cgroup_parent: str,
    dns: api.DNSConfig | None,
    log_root: Path = Path("/var/log/pods"),
    node_hostname: str = "",
    cluster_domain: str = "cluster.local",
) -> api.PodSandboxConfig:
    """The PodSandboxConfig for RunPodSandbox. A host-network pod gets ``node_hostname``
    (upstream leaves it empty, and the runtime uses its own host name); other pods their
    own (see :func:`pod_hostname`). Raises ConfigProblem("CreatePodSandboxError")."""
    meta, spec = _meta(pod), _spec(pod)
    pod_sc = spec.get("securityContext") or {}
    config = api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name=meta.get("name", ""), uid=meta.get("uid", ""),
                                        namespace=meta.get("namespace", ""), attempt=attempt),
        log_directory=str(pod_log_directory(pod, log_root)),
        port_mappings=port_mappings(pod),
        labels=pod_labels(pod),
        annotations=dict(meta.get("annotations") or {}),
    )
    if dns is not None:
        config.dns_config.CopyFrom(dns)
    if spec.get("hostNetwork"):
        config.hostname = node_hostname
    else:
        config.hostname = _kernel_hostname(pod, *pod_hostname(pod, cluster_domain))

    linux = config.linux
    linux.cgroup_parent = cgroup_parent
    linux.sysctls.update({s["name"]: str(s.get("value", "")) for s in pod_sc.get("sysctls") or []})
    security = linux.security_context
    security.privileged = any((c.get("securityContext") or {}).get("privileged") for c in _all_containers(pod))
    security.seccomp.profile_type = api.SecurityProfile.RuntimeDefault
    security.namespace_options.CopyFrom(namespace_options(pod))
    if pod_sc.get("runAsUser") is not None:
        security.run_as_user.value = pod_sc["runAsUser"]
    if pod_sc.get("runAsGroup") is not None:
        security.run_as_group.value = pod_sc["runAsGroup"]
    groups, policy = _groups(pod_sc, CREATE_POD_SANDBOX_ERROR)
    security.supplemental_groups.extend(groups)
    security.supplemental_groups_policy = policy
    if (selinux := _selinux(pod_sc.get("seLinuxOptions"))) is not None:
        security.selinux_options.CopyFrom(selinux)

    linux.resources.CopyFrom(sandbox_resources(pod))
    overhead = {k: qos.quantity(v) for k, v in (spec.get("overhead") or {}).items()}
    if overhead:
        cpu = overhead.get("cpu", Fraction(0))
        linux.overhead.CopyFrom(linux_resources(cpu, cpu, overhead.get("memory", Fraction(0))))
    return config


# --- containers ---------------------------------------------------------------------------------

def container_hash(container: Mapping) -> str:
    """Hex digest (64 bits of SHA-256) of the canonical JSON of the container's name and image.

    Like upstream's HashContainer it covers only the fields that may change on a running
    pod and require a restart (the image); resources change in place and the rest of a
    container is immutable, so a changed hash means "restart the container"."""
    canonical = json.dumps({"image": container.get("image", ""), "name": container.get("name", "")},
                           sort_keys=True, separators=(",", ":"))
    return format(int.from_bytes(hashlib.sha256(canonical.encode()).digest()[:8], "big"), "x")


def _ports_json(ports: list[Mapping]) -> str:
    """container.ports as Go's json.Marshal writes them (field order, omitempty)."""
    out = []
    for port in ports:
        item: dict[str, Any] = {}
        if port.get("name"):
            item["name"] = port["name"]
        if port.get("hostPort"):
            item["hostPort"] = port["hostPort"]
        item["containerPort"] = port.get("containerPort", 0)
        if port.get("protocol"):
            item["protocol"] = port["protocol"]
        if port.get("hostIP"):
            item["hostIP"] = port["hostIP"]
        out.append(item)
    return json.dumps(out, separators=(",", ":"))


def container_annotations(pod: Mapping, container: Mapping, restart_count: int) -> dict[str, str]:
    meta, spec = _meta(pod), _spec(pod)
    annotations = {
        CONTAINER_HASH: container_hash(container),
        CONTAINER_RESTART_COUNT: str(restart_count),
        CONTAINER_TERMINATION_MESSAGE_PATH: container.get("terminationMessagePath", "/dev/termination-log"),
        CONTAINER_TERMINATION_MESSAGE_POLICY: container.get("terminationMessagePolicy", "File"),
    }
    if meta.get("deletionGracePeriodSeconds") is not None:
        annotations[POD_DELETION_GRACE_PERIOD] = str(meta["deletionGracePeriodSeconds"])
    if spec.get("terminationGracePeriodSeconds") is not None:
        annotations[POD_TERMINATION_GRACE_PERIOD] = str(spec["terminationGracePeriodSeconds"])
    pre_stop = (container.get("lifecycle") or {}).get("preStop")
    if pre_stop:
        annotations[CONTAINER_PRESTOP_HANDLER] = json.dumps(pre_stop, separators=(",", ":"))
    ports = _ports(pod, container)
    if ports:
        annotations[CONTAINER_PORTS] = _ports_json(ports)
    return annotations


def container_config(
    pod: Mapping,
    container: Mapping,
    *,
    attempt: int,
    env: list[tuple[str, str]],
    mounts: list[api.Mount],
    image: str,
    image_user: str | None = None,
    node_memory_capacity: int,
    oom_group: bool = False,
    hugepage_sizes: Iterable[str] = (),
    seccomp_profile_root: str = "/var/lib/kubelet/seccomp",
    seccomp_default: bool = False,
) -> api.ContainerConfig:
    """The ContainerConfig for CreateContainer.

    ``attempt`` is the restart count; ``image`` the resolved image reference (the spec's
    image goes to user_specified_image); ``image_user`` the user the runtime reports for the
    image ("1000", "1000:1000", "app", None for none). Raises ConfigProblem
    ("CreateContainerConfigError") for a runAsNonRoot violation or a bad profile.
    """
    uid, username = parse_image_user(image_user)
    verify_run_as_non_root(pod, container, uid, username)
    values = dict(env)
    name = container.get("name", "")
    config = api.ContainerConfig(
        metadata=api.ContainerMetadata(name=name, attempt=attempt),
        image=api.ImageSpec(image=image, user_specified_image=container.get("image", "")),
        command=[expand(c, values) for c in container.get("command") or []],
        args=[expand(a, values) for a in container.get("args") or []],
        working_dir=container.get("workingDir", ""),
        envs=[api.KeyValue(key=k, value=v.encode("utf-8", "surrogateescape")) for k, v in env],
        mounts=list(mounts),
        labels={POD_NAME_LABEL: _meta(pod).get("name", ""), POD_NAMESPACE_LABEL: _meta(pod).get("namespace", ""),
                POD_UID_LABEL: _meta(pod).get("uid", ""), CONTAINER_NAME_LABEL: name},
        annotations=container_annotations(pod, container, attempt),
        log_path=f"{name}/{attempt}.log",
        stdin=bool(container.get("stdin")),
        stdin_once=bool(container.get("stdinOnce")),
        tty=bool(container.get("tty")),
    )
    config.linux.resources.CopyFrom(container_resources(pod, container, node_memory_capacity=node_memory_capacity,
                                                        oom_group=oom_group, hugepage_sizes=hugepage_sizes))
    config.linux.security_context.CopyFrom(container_security_context(
        pod, container, uid=uid, username=username, seccomp_profile_root=seccomp_profile_root,
        seccomp_default=seccomp_default))
    return config
