"""pykubelet's configuration: the upstream kubelet's flags and its KubeletConfiguration file.

``parse(argv)`` reads a command line written for the upstream kubelet (v1.36) — kubeadm's
``10-kubeadm.conf`` + ``kubeadm-flags.env`` + ``/var/lib/kubelet/config.yaml`` work unchanged —
and returns a validated :class:`KubeletConfig`. The rules are upstream's:

- Precedence: built-in defaults < the ``--config`` file < command-line flags. A flag that
  upstream backs with a KubeletConfiguration field (``--container-runtime-endpoint``,
  ``--register-with-taints``, ``--max-pods``, ...) overrides the file; upstream marks those
  flags deprecated, and so does a warning here.
- Defaults are v1beta1's (``pkg/kubelet/apis/config/v1beta1/defaults.go``). A zero value in the
  file (``port: 0``, ``syncFrequency: 0s``, ``containerRuntimeEndpoint: ""``, as kubeadm writes)
  means "unset"; for fields that are pointers upstream (``healthzPort``, ``failSwapOn``, ...) an
  explicit zero or false is kept.
- Without ``--config`` upstream starts from its legacy command-line defaults: anonymous
  authentication on, webhook authentication off, authorization ``AlwaysAllow``, and no hard
  eviction thresholds. With a file, eviction thresholds default to upstream's Linux set unless
  the file sets ``evictionHard`` (``mergeDefaultEvictionSettings: true`` merges the two).
- Relative paths in the file resolve against the file's directory.
- Unknown fields in the file, and upstream fields or flags pykubelet does not implement, are
  warnings (``KubeletConfig.warnings``); anything invalid is a :class:`ConfigError`.

Departures from upstream, on purpose: ``--kubeconfig`` defaults to kubeadm's
``/etc/kubernetes/kubelet.conf`` (upstream's empty default means standalone mode, which
pykubelet does not have); an invalid ``--node-ip`` or ``clusterDNS`` entry is an error rather
than logged and skipped; ``--pod-infra-container-image`` (removed upstream in v1.35) is still
accepted, with a warning.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from nodeagent.durations import format_duration, parse_duration

from . import flags as upstream_flags

API_VERSION = "kubelet.config.k8s.io/v1beta1"
KIND = "KubeletConfiguration"

# pkg/kubelet/eviction/defaults_linux.go
DEFAULT_EVICTION_HARD = {
    "memory.available": "100Mi",
    "nodefs.available": "10%",
    "nodefs.inodesFree": "5%",
    "imagefs.available": "15%",
    "imagefs.inodesFree": "5%",
}
EVICTION_SIGNALS = frozenset(DEFAULT_EVICTION_HARD) | {
    "containerfs.available", "containerfs.inodesFree", "allocatableMemory.available", "pid.available"}
RESERVABLE_RESOURCES = frozenset({"cpu", "memory", "ephemeral-storage", "pid"})
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")

# Every top-level field of v1beta1 KubeletConfiguration (k8s.io/kubelet/config/v1beta1/types.go),
# so that one pykubelet does not implement is told apart from a misspelt one.
UPSTREAM_CONFIG_FIELDS = frozenset("""
    apiVersion kind enableServer staticPodPath podLogsDir syncFrequency fileCheckFrequency
    httpCheckFrequency staticPodURL staticPodURLHeader address port readOnlyPort tlsCertFile
    tlsPrivateKeyFile tlsCipherSuites tlsCurvePreferences tlsMinVersion rotateCertificates
    serverTLSBootstrap authentication authorization registryPullQPS registryBurst
    imagePullCredentialsVerificationPolicy preloadedImagesVerificationAllowlist eventRecordQPS
    eventBurst enableDebuggingHandlers enableContentionProfiling healthzPort healthzBindAddress
    oomScoreAdj clusterDomain clusterDNS streamingConnectionIdleTimeout nodeStatusUpdateFrequency
    nodeStatusReportFrequency nodeLeaseDurationSeconds imageMinimumGCAge imageMaximumGCAge
    imageGCHighThresholdPercent imageGCLowThresholdPercent volumeStatsAggPeriod kubeletCgroups
    systemCgroups cgroupRoot cgroupsPerQOS cgroupDriver cpuManagerPolicy singleProcessOOMKill
    cpuManagerPolicyOptions cpuManagerReconcilePeriod memoryManagerPolicy topologyManagerPolicy
    topologyManagerScope topologyManagerPolicyOptions qosReserved runtimeRequestTimeout
    hairpinMode maxPods podCIDR podPidsLimit resolvConf runOnce cpuCFSQuota cpuCFSQuotaPeriod
    nodeStatusMaxImages maxOpenFiles contentType kubeAPIQPS kubeAPIBurst serializeImagePulls
    maxParallelImagePulls evictionHard evictionSoft evictionSoftGracePeriod
    evictionPressureTransitionPeriod evictionMaxPodGracePeriod evictionMinimumReclaim
    mergeDefaultEvictionSettings podsPerCore enableControllerAttachDetach protectKernelDefaults
    makeIPTablesUtilChains iptablesMasqueradeBit iptablesDropBit featureGates failSwapOn
    memorySwap containerLogMaxSize containerLogMaxFiles containerLogMaxWorkers
    containerLogMonitorInterval configMapAndSecretChangeDetectionStrategy systemReserved
    kubeReserved reservedSystemCPUs showHiddenMetricsForVersion systemReservedCgroup
    kubeReservedCgroup enforceNodeAllocatable allowedUnsafeSysctls volumePluginDir providerID
    kernelMemcgNotification logging enableSystemLogHandler enableSystemLogQuery
    shutdownGracePeriod shutdownGracePeriodCriticalPods shutdownGracePeriodByPodPriority
    crashLoopBackOff reservedMemory enableProfilingHandler enableDebugFlagsHandler seccompDefault
    memoryThrottlingFactor memoryReservationPolicy registerWithTaints registerNode tracing
    localStorageCapacityIsolation containerRuntimeEndpoint imageServiceEndpoint failCgroupV1
    userNamespaces
""".split()) | {"logging.format", "logging.flushFrequency", "logging.vmodule", "logging.options"}

# Upstream's KubeletConfigurationPathRefs that pykubelet reads: relative to the file's directory.
RELATIVE_PATH_FIELDS = frozenset({
    "staticPodPath", "authentication.x509.clientCAFile", "tlsCertFile", "tlsPrivateKeyFile"})


class ConfigError(Exception):
    """A flag, the config file, or a value in it is unusable; the message says which and why."""


@dataclass(frozen=True)
class Taint:
    key: str
    value: str
    effect: str  # NoSchedule | PreferNoSchedule | NoExecute


@dataclass
class KubeletConfig:
    """The kubelet's effective settings. Durations are seconds, sizes bytes.

    Build one with :func:`parse` (``parse([])`` gives the defaults) and adjust it with
    ``dataclasses.replace``.
    """

    # From flags only.
    config_file: Path | None
    kubeconfig: Path
    bootstrap_kubeconfig: Path | None
    cert_dir: Path
    root_dir: Path
    pod_infra_container_image: str | None
    hostname_override: str | None  # trimmed and lower-cased, as upstream derives the node name
    node_ip: str | None  # the first of node_ips
    node_ips: list[str]  # one IP, or a dual-stack pair
    node_labels: dict[str, str]
    verbosity: int  # --v, or logging.verbosity in the file
    # KubeletConfiguration fields (the file, overridden by the flags that upstream backs with them).
    address: str
    port: int
    read_only_port: int  # 0: no plain-HTTP read-only server
    enable_server: bool
    tls_min_version: str  # "" or VersionTLS1x
    tls_cipher_suites: list[str]  # Go names; empty: the library's defaults
    allowed_unsafe_sysctls: list[str]  # names or `prefix*` patterns, beyond the safe ones
    healthz_bind_address: str
    healthz_port: int  # 0 disables
    # Upstream's shapes, durations as Go writes them ("2m0s"):
    # {"x509": {"clientCAFile"}, "webhook": {"enabled", "cacheTTL"}, "anonymous": {"enabled"}}
    authentication: dict
    # {"mode": "Webhook" | "AlwaysAllow", "webhook": {"cacheAuthorizedTTL", "cacheUnauthorizedTTL"}}
    authorization: dict
    cluster_dns: list[str]
    cluster_domain: str
    cgroup_driver: str
    cgroup_root: str
    container_runtime_endpoint: str
    max_pods: int
    pod_cidr: str | None
    register_node: bool
    register_with_taints: list[Taint]
    static_pod_path: Path | None
    node_status_update_frequency: float
    node_status_report_frequency: float
    node_lease_duration_seconds: int
    eviction_hard: dict[str, str]
    eviction_soft: dict[str, str]
    eviction_soft_grace_period: dict[str, str]  # signal -> Go duration
    eviction_minimum_reclaim: dict[str, str]
    eviction_pressure_transition_period: float
    eviction_max_pod_grace_period: int
    pod_pids_limit: int  # pids.max of each pod's cgroup when > 0
    system_reserved: dict[str, str]
    kube_reserved: dict[str, str]
    shutdown_grace_period: float
    shutdown_grace_period_critical_pods: float
    fail_swap_on: bool
    rotate_certificates: bool
    server_tls_bootstrap: bool
    tls_cert_file: Path | None
    tls_private_key_file: Path | None
    container_log_max_size: int
    container_log_max_files: int
    container_log_max_workers: int
    container_log_monitor_interval: float
    volume_stats_agg_period: float
    image_gc_high_threshold_percent: int
    image_gc_low_threshold_percent: int
    image_minimum_gc_age: float  # an unused image is younger than this (since first seen) stays
    image_maximum_gc_age: float  # 0, or an image unused for longer goes whatever the disk usage
    serialize_image_pulls: bool
    runtime_request_timeout: float
    file_check_frequency: float
    sync_frequency: float
    warnings: list[str]
    # The effective KubeletConfiguration (file keys, durations as Go writes them), for /configz.
    effective: dict


# --- Go durations and Kubernetes quantities -----------------------------------------------------

_QUANTITY = re.compile(r"([+-]?)(\d+(?:\.\d*)?|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?\d+)?")
_QUANTITY_SUFFIXES = {
    "": 1, "n": Fraction(1, 10**9), "u": Fraction(1, 10**6), "m": Fraction(1, 1000),
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}


def parse_quantity(text: str) -> int | float:
    """A Kubernetes resource quantity ("100Mi", "1G", "500m", "1e3", "10"): an int when whole,
    else a float ("500m" -> 0.5); ValueError if invalid."""
    match = _QUANTITY.fullmatch(text) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"invalid quantity {_q(str(text))}")
    sign, number, suffix = match.groups()
    suffix = suffix or ""
    scale = _QUANTITY_SUFFIXES.get(suffix) or Fraction(10) ** int(suffix[1:])  # else an exponent
    value = Fraction(number) * scale * (-1 if sign == "-" else 1)
    return value.numerator if value.denominator == 1 else float(value)


# --- Value kinds ---------------------------------------------------------------------------------
# Each kind checks a value as it comes from YAML and returns the Python value. Its ``shape``
# says how a flag's text becomes such a YAML value first, as upstream's flag types parse it.

class _Invalid(ValueError):
    """A value is unusable; the caller adds which file/field or flag it came from."""


def _q(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _type_name(value: Any) -> str:
    for kind, name in ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"),
                       (list, "list"), (dict, "mapping")):
        if isinstance(value, kind):
            return f"{name} {json.dumps(value)}" if kind in (bool, int, float) else name
    return "null" if value is None else type(value).__name__


def _expect(value: Any, kind: type, what: str) -> Any:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _Invalid(f"expected {what}, got {_type_name(value)}")
    return value


def _kind(shape: str) -> Callable:
    def mark(fn: Callable) -> Callable:
        fn.shape = shape
        return fn
    return mark


@_kind("str")
def _str(value: Any) -> str:
    return _expect(value, str, "a string")


@_kind("str")
def _nonempty(value: Any) -> str:
    if not _str(value):
        raise _Invalid("must not be empty")
    return value


@_kind("str")
def _path(value: Any) -> Path | None:
    return Path(_str(value)) if value else None


@_kind("bool")
def _bool(value: Any) -> bool:
    return _expect(value, bool, "true or false")


def _int(low: int, high: int) -> Callable:
    @_kind("int")
    def check(value: Any) -> int:
        _expect(value, int, "an integer")
        if not low <= value <= high:
            raise _Invalid(f"{value} must be between {low} and {high}, inclusive")
        return value
    return check


_INT32_MAX = 2**31 - 1


@_kind("duration")
def _duration(value: Any) -> float:
    _expect(value, str, 'a duration string such as "10s"')
    try:
        seconds = parse_duration(value)
    except ValueError as err:
        raise _Invalid(str(err)) from None
    if seconds < 0:
        raise _Invalid(f"{_q(value)} must not be negative")
    return seconds


@_kind("duration")
def _log_monitor_interval(value: Any) -> float:
    seconds = _duration(value)
    if seconds < 3:
        raise _Invalid(f"{_q(value)} must be a positive time duration greater than or equal to 3s")
    return seconds


@_kind("duration")
def _grace_period(value: Any) -> float:
    seconds = _duration(value)
    if 0 < seconds < 1:
        raise _Invalid(f"{_q(value)} must be either zero or otherwise >= 1s")
    return seconds


def _choice(*options: str) -> Callable:
    @_kind("str")
    def check(value: Any) -> str:
        if _str(value) not in options:
            raise _Invalid(f"{_q(value)} must be one of {', '.join(options)}")
        return value
    return check


# Go's crypto/tls names for the TLS 1.2 suites, as OpenSSL calls them. TLS 1.3 suites are
# accepted and, as in Go, not configurable.
TLS_CIPHER_SUITES = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_AES_128_GCM_SHA256": None, "TLS_AES_256_GCM_SHA384": None, "TLS_CHACHA20_POLY1305_SHA256": None,
}
TLS_VERSIONS = ("VersionTLS10", "VersionTLS11", "VersionTLS12", "VersionTLS13")


@_kind("list")
def _cipher_suites(value: Any) -> list[str]:
    names = [_str(item).strip() for item in _expect(value, list, "a list of cipher suite names")]
    unknown = [name for name in names if name not in TLS_CIPHER_SUITES]
    if unknown:
        raise _Invalid(f"unsupported cipher suite {_q(unknown[0])}")
    return names


@_kind("list")
def _sysctl_patterns(value: Any) -> list[str]:
    patterns = [_str(item).strip() for item in _expect(value, list, "a list of sysctl names or patterns")]
    for pattern in patterns:
        # Upstream's pattern: dot- or slash-separated segments, the last one optionally ending in `*`.
        if not re.fullmatch(r"([a-z0-9]([-_a-z0-9]*[a-z0-9])?[./])*([a-z0-9]([-_a-z0-9]*[a-z0-9])?\*?|\*)",
                            pattern) or len(pattern) > 253:
            raise _Invalid(f"invalid sysctl pattern {_q(pattern)}")
    return patterns


@_kind("str")
def _ip(value: Any) -> str:
    try:
        return str(ipaddress.ip_address(_str(value).strip()))
    except ValueError:
        raise _Invalid(f"invalid IP address {_q(value)}") from None


@_kind("list")
def _ip_list(value: Any) -> list[str]:
    return [_ip(item) for item in _expect(value, list, "a list of IP addresses")]


@_kind("str")
def _cidr(value: Any) -> str | None:
    if not _str(value):
        return None
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise _Invalid(f"invalid CIDR {_q(value)}") from None
    return value


@_kind("str")
def _byte_size(value: Any) -> int:
    _expect(value, str, 'a quantity string such as "10Mi"')
    try:
        size = parse_quantity(value)
    except ValueError as err:
        raise _Invalid(str(err)) from None
    if size < 0:
        raise _Invalid(f"{_q(value)} must not be negative")
    return math.ceil(size)


def format_byte_size(size: int) -> str:
    """Bytes as a Kubernetes quantity, as upstream's configz writes one: the largest binary suffix that divides
    it exactly (10485760 -> "10Mi"), else plain digits."""
    for power, suffix in ((6, "Ei"), (5, "Pi"), (4, "Ti"), (3, "Gi"), (2, "Mi"), (1, "Ki")):
        unit = 1024 ** power
        if size and size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)


def _string_map(value: Any) -> dict[str, str]:
    _expect(value, dict, "a mapping of strings")
    for key, item in value.items():
        _expect(key, str, "string keys")
        if not isinstance(item, str):
            raise _Invalid(f"{key}: expected a string, got {_type_name(item)} (quote it)")
    return dict(value)


@_kind("langle-map")
def _eviction_thresholds(value: Any) -> dict[str, str]:
    """Signal -> "N%" or a positive quantity, as pkg/kubelet/eviction parses them."""
    thresholds = _string_map(value)
    for signal, threshold in thresholds.items():
        _signal(signal)
        percent = threshold.endswith("%")
        try:
            amount = float(threshold[:-1]) if percent else parse_quantity(threshold)
        except ValueError:
            raise _Invalid(f"{signal}: invalid threshold {_q(threshold)}") from None
        if percent and not 0 <= amount <= 100:
            raise _Invalid(f"{signal}: percentage {_q(threshold)} must be between 0% and 100%")
        if not percent and amount <= 0:
            raise _Invalid(f"{signal}: threshold {_q(threshold)} must be positive")
    return thresholds


def _signal(signal: str) -> None:
    if signal not in EVICTION_SIGNALS:
        raise _Invalid(f"unsupported eviction signal {_q(signal)}")


@_kind("map")
def _eviction_grace_periods(value: Any) -> dict[str, str]:
    """Signal -> a Go duration, how long a soft threshold must hold before it evicts."""
    periods = _string_map(value)
    for signal, period in periods.items():
        _signal(signal)
        try:
            _duration(period)
        except _Invalid as err:
            raise _Invalid(f"{signal}: {err}") from None
    return periods


@_kind("map")
def _eviction_minimum_reclaim(value: Any) -> dict[str, str]:
    """Signal -> "N%" or a quantity: how far beyond its threshold a signal must recover to end the pressure."""
    amounts = _string_map(value)
    for signal, amount in amounts.items():
        _signal(signal)
        try:
            number = float(amount[:-1]) if amount.endswith("%") else parse_quantity(amount)
        except ValueError:
            raise _Invalid(f"{signal}: invalid minimum reclaim {_q(amount)}") from None
        if number < 0:
            raise _Invalid(f"{signal}: minimum reclaim {_q(amount)} must not be negative")
    return amounts


@_kind("map")
def _reserved(value: Any) -> dict[str, str]:
    """Resource -> quantity, for the resources upstream lets a node reserve."""
    reserved = _string_map(value)
    for resource, amount in reserved.items():
        if resource not in RESERVABLE_RESOURCES:
            raise _Invalid(f"cannot reserve {_q(resource)}: only {', '.join(sorted(RESERVABLE_RESOURCES))}")
        try:
            negative = parse_quantity(amount) < 0
        except ValueError:
            raise _Invalid(f"{resource}: invalid quantity {_q(amount)}") from None
        if negative:
            raise _Invalid(f"{resource}: quantity {_q(amount)} must not be negative")
    return reserved


@_kind("taints")
def _taints(value: Any) -> list[Taint]:
    taints: list[Taint] = []
    for index, item in enumerate(_expect(value, list, "a list of taints")):
        where = f"[{index}]"
        _expect(item, dict, "a taint (key, value, effect)")
        unknown = set(item) - {"key", "value", "effect", "timeAdded"}
        if unknown:
            raise _Invalid(f"{where}: unknown taint field {_q(sorted(unknown)[0])}")
        if item.get("timeAdded") is not None:
            raise _Invalid(f"{where}.timeAdded: must not be set")
        try:
            taint = Taint(_str(item.get("key")), _str(item.get("value") or ""), _str(item.get("effect")))
        except _Invalid as err:
            raise _Invalid(f"{where}: {err}") from None
        problem = _qualified_name_problem(taint.key) or _label_value_problem(taint.value)
        if problem:
            raise _Invalid(f"{where}: {problem}")
        if taint.effect not in TAINT_EFFECTS:
            raise _Invalid(f"{where}: invalid taint effect {_q(taint.effect)}: "
                           f"must be one of {', '.join(TAINT_EFFECTS)}")
        if any((t.key, t.effect) == (taint.key, taint.effect) for t in taints):
            raise _Invalid(f"{where}: duplicate taint {taint.key}:{taint.effect}")
        taints.append(taint)
    return taints


@_kind("str")
def _hostname(value: Any) -> str | None:
    if not _str(value):
        return None
    if not value.strip():
        raise _Invalid("empty hostname is invalid")
    return value.strip().lower()


@_kind("str")
def _node_ips(value: Any) -> list[str]:
    """--node-ip: one IP, or an IPv4 and an IPv6 one, comma-separated."""
    if not _str(value):
        return []
    ips = [ipaddress.ip_address(_ip(part)) for part in value.split(",")]
    if len(ips) > 2 or (len(ips) == 2 and ips[0].version == ips[1].version):
        raise _Invalid(f"{_q(value)} must contain either a single IP or a dual-stack pair of IPs")
    if len(ips) == 2 and any(ip.is_unspecified for ip in ips):
        raise _Invalid(f"{_q(value)}: a dual-stack node IP cannot include '0.0.0.0' or '::'")
    return [str(ip) for ip in ips]


@_kind("labels")
def _node_labels(value: Any) -> dict[str, str]:
    """--node-labels, validated as upstream's ValidateKubeletFlags does."""
    for key, label in _string_map(value).items():
        problem = _qualified_name_problem(key, "label key") or _label_value_problem(label)
        if problem:
            raise _Invalid(problem)
        namespace = key.partition("/")[0] if "/" in key else ""
        if _in_domain(namespace, "kubernetes.io", "k8s.io") and not _kubelet_label(key, namespace):
            raise _Invalid(
                f"label {_q(key)} is in the kubernetes.io or k8s.io namespace, which a node may only use "
                f"for {', '.join(sorted(_KUBELET_LABELS))} or under {', '.join(_KUBELET_LABEL_NAMESPACES)}")
    return dict(value)


_KUBELET_LABELS = frozenset({
    "kubernetes.io/hostname", "topology.kubernetes.io/zone", "topology.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone", "failure-domain.beta.kubernetes.io/region",
    "beta.kubernetes.io/instance-type", "node.kubernetes.io/instance-type", "kubernetes.io/os",
    "kubernetes.io/arch", "beta.kubernetes.io/os", "beta.kubernetes.io/arch"})
_KUBELET_LABEL_NAMESPACES = ("kubelet.kubernetes.io", "node.kubernetes.io")


def _in_domain(namespace: str, *domains: str) -> bool:
    return any(namespace == d or namespace.endswith("." + d) for d in domains)


def _kubelet_label(key: str, namespace: str) -> bool:
    return key in _KUBELET_LABELS or _in_domain(namespace, *_KUBELET_LABEL_NAMESPACES)


_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def _qualified_name_problem(key: str, what: str = "key") -> str | None:
    """Why ``key`` is not a Kubernetes qualified name ([prefix/]name), or None."""
    prefix, slash, name = key.rpartition("/") if key.count("/") == 1 else ("", "", key)
    if key.count("/") > 1:
        return f"invalid {what} {_q(key)}: at most one '/' allowed"
    if slash and (len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)):
        return f"invalid {what} {_q(key)}: the prefix must be a DNS subdomain"
    if len(name) > 63 or not _LABEL_NAME.fullmatch(name):
        return (f"invalid {what} {_q(key)}: the name must be 1-63 characters, alphanumerics, "
                "'-', '_' or '.', starting and ending with an alphanumeric")
    return None


def _label_value_problem(value: str) -> str | None:
    if value and (len(value) > 63 or not _LABEL_NAME.fullmatch(value)):
        return (f"invalid label value {_q(value)}: must be at most 63 characters, alphanumerics, "
                "'-', '_' or '.', starting and ending with an alphanumeric")
    return None


# --- The fields ----------------------------------------------------------------------------------

class _Field(NamedTuple):
    key: str | None  # path in the KubeletConfiguration file; None for a flag-only setting
    attr: str | None  # KubeletConfig attribute; "authentication.x" builds that dict; None: read only
    kind: Callable[[Any], Any]
    default: Any
    flag: str | None = None
    keep_zero: bool = False  # a pointer upstream: an explicit 0 / false in the file is kept


_FIELDS = [
    _Field(None, "config_file", _path, None, "config"),
    _Field(None, "kubeconfig", _path, Path("/etc/kubernetes/kubelet.conf"), "kubeconfig"),
    _Field(None, "bootstrap_kubeconfig", _path, None, "bootstrap-kubeconfig"),
    _Field(None, "cert_dir", _path, Path("/var/lib/kubelet/pki"), "cert-dir"),
    _Field(None, "root_dir", _path, Path("/var/lib/kubelet"), "root-dir"),
    _Field(None, "pod_infra_container_image", _str, None, "pod-infra-container-image"),
    _Field(None, "hostname_override", _hostname, None, "hostname-override"),
    _Field(None, "node_ips", _node_ips, [], "node-ip"),
    _Field(None, "node_labels", _node_labels, {}, "node-labels"),
    _Field("logging.verbosity", "verbosity", _int(0, 2**32 - 1), 0, "v"),
    _Field("address", "address", _ip, "0.0.0.0", "address"),
    _Field("port", "port", _int(1, 65535), 10250, "port"),
    _Field("readOnlyPort", "read_only_port", _int(0, 65535), 0, "read-only-port"),
    _Field("enableServer", "enable_server", _bool, True, "enable-server", keep_zero=True),
    _Field("tlsMinVersion", "tls_min_version", _choice(*TLS_VERSIONS), "", "tls-min-version"),
    _Field("tlsCipherSuites", "tls_cipher_suites", _cipher_suites, [], "tls-cipher-suites"),
    _Field("allowedUnsafeSysctls", "allowed_unsafe_sysctls", _sysctl_patterns, [], "allowed-unsafe-sysctls"),
    _Field("healthzBindAddress", "healthz_bind_address", _ip, "127.0.0.1", "healthz-bind-address"),
    _Field("healthzPort", "healthz_port", _int(0, 65535), 10248, "healthz-port", keep_zero=True),
    _Field("authentication.x509.clientCAFile", "authentication.x509.clientCAFile", _str, "",
           "client-ca-file"),
    _Field("authentication.webhook.enabled", "authentication.webhook.enabled", _bool, True,
           "authentication-token-webhook", keep_zero=True),
    _Field("authentication.webhook.cacheTTL", "authentication.webhook.cacheTTL", _duration, 120.0,
           "authentication-token-webhook-cache-ttl"),
    _Field("authentication.anonymous.enabled", "authentication.anonymous.enabled", _bool, False,
           "anonymous-auth", keep_zero=True),
    _Field("authorization.mode", "authorization.mode", _choice("Webhook", "AlwaysAllow"), "Webhook",
           "authorization-mode"),
    _Field("authorization.webhook.cacheAuthorizedTTL", "authorization.webhook.cacheAuthorizedTTL",
           _duration, 300.0, "authorization-webhook-cache-authorized-ttl"),
    _Field("authorization.webhook.cacheUnauthorizedTTL", "authorization.webhook.cacheUnauthorizedTTL",
           _duration, 30.0, "authorization-webhook-cache-unauthorized-ttl"),
    _Field("clusterDNS", "cluster_dns", _ip_list, [], "cluster-dns"),
    _Field("clusterDomain", "cluster_domain", _str, "", "cluster-domain"),
    _Field("cgroupDriver", "cgroup_driver", _choice("cgroupfs", "systemd"), "cgroupfs", "cgroup-driver"),
    _Field("cgroupRoot", "cgroup_root", _str, "", "cgroup-root"),
    _Field("containerRuntimeEndpoint", "container_runtime_endpoint", _nonempty,
           "unix:///run/containerd/containerd.sock", "container-runtime-endpoint"),
    _Field("maxPods", "max_pods", _int(0, _INT32_MAX), 110, "max-pods"),
    _Field("podCIDR", "pod_cidr", _cidr, None, "pod-cidr"),
    _Field("registerNode", "register_node", _bool, True, "register-node", keep_zero=True),
    _Field("registerWithTaints", "register_with_taints", _taints, [], "register-with-taints"),
    _Field("staticPodPath", "static_pod_path", _path, None, "pod-manifest-path"),
    _Field("nodeStatusUpdateFrequency", "node_status_update_frequency", _duration, 10.0,
           "node-status-update-frequency"),
    _Field("nodeStatusReportFrequency", "node_status_report_frequency", _duration, 300.0),
    _Field("nodeLeaseDurationSeconds", "node_lease_duration_seconds", _int(1, _INT32_MAX), 40),
    _Field("evictionHard", "eviction_hard", _eviction_thresholds, DEFAULT_EVICTION_HARD, "eviction-hard"),
    _Field("evictionSoft", "eviction_soft", _eviction_thresholds, {}, "eviction-soft"),
    _Field("evictionSoftGracePeriod", "eviction_soft_grace_period", _eviction_grace_periods, {},
           "eviction-soft-grace-period"),
    _Field("evictionMinimumReclaim", "eviction_minimum_reclaim", _eviction_minimum_reclaim, {},
           "eviction-minimum-reclaim"),
    _Field("evictionPressureTransitionPeriod", "eviction_pressure_transition_period", _duration, 300.0,
           "eviction-pressure-transition-period"),
    _Field("evictionMaxPodGracePeriod", "eviction_max_pod_grace_period", _int(-_INT32_MAX - 1, _INT32_MAX), 0,
           "eviction-max-pod-grace-period"),
    _Field("mergeDefaultEvictionSettings", None, _bool, False),
    _Field("podPidsLimit", "pod_pids_limit", _int(-1, 2**63 - 1), -1, "pod-max-pids"),
    _Field("systemReserved", "system_reserved", _reserved, {}, "system-reserved"),
    _Field("kubeReserved", "kube_reserved", _reserved, {}, "kube-reserved"),
    _Field("shutdownGracePeriod", "shutdown_grace_period", _grace_period, 0.0),
    _Field("shutdownGracePeriodCriticalPods", "shutdown_grace_period_critical_pods", _grace_period, 0.0),
    _Field("failSwapOn", "fail_swap_on", _bool, True, "fail-swap-on", keep_zero=True),
    _Field("rotateCertificates", "rotate_certificates", _bool, False, "rotate-certificates"),
    _Field("serverTLSBootstrap", "server_tls_bootstrap", _bool, False, "rotate-server-certificates"),
    _Field("tlsCertFile", "tls_cert_file", _path, None, "tls-cert-file"),
    _Field("tlsPrivateKeyFile", "tls_private_key_file", _path, None, "tls-private-key-file"),
    _Field("containerLogMaxSize", "container_log_max_size", _byte_size, 10 * 2**20, "container-log-max-size"),
    _Field("containerLogMaxFiles", "container_log_max_files", _int(2, _INT32_MAX), 5,
           "container-log-max-files", keep_zero=True),
    _Field("containerLogMaxWorkers", "container_log_max_workers", _int(1, _INT32_MAX), 1, keep_zero=True),
    _Field("containerLogMonitorInterval", "container_log_monitor_interval", _log_monitor_interval, 10.0),
    _Field("volumeStatsAggPeriod", "volume_stats_agg_period", _duration, 60.0, "volume-stats-agg-period"),
    _Field("imageGCHighThresholdPercent", "image_gc_high_threshold_percent", _int(0, 100), 85,
           "image-gc-high-threshold", keep_zero=True),
    _Field("imageGCLowThresholdPercent", "image_gc_low_threshold_percent", _int(0, 100), 80,
           "image-gc-low-threshold", keep_zero=True),
    _Field("imageMinimumGCAge", "image_minimum_gc_age", _duration, 120.0, "minimum-image-ttl-duration"),
    _Field("imageMaximumGCAge", "image_maximum_gc_age", _duration, 0.0),
    _Field("serializeImagePulls", "serialize_image_pulls", _bool, True, "serialize-image-pulls", keep_zero=True),
    _Field("maxParallelImagePulls", None, _int(1, _INT32_MAX), None),
    _Field("runtimeRequestTimeout", "runtime_request_timeout", _duration, 2 * 60.0, "runtime-request-timeout"),
    _Field("fileCheckFrequency", "file_check_frequency", _duration, 20.0, "file-check-frequency"),
    _Field("syncFrequency", "sync_frequency", _duration, 60.0, "sync-frequency"),
]
_BY_KEY = {f.key: f for f in _FIELDS if f.key}
_BY_FLAG = {f.flag: f for f in _FIELDS if f.flag}
_SECTIONS = {key.rsplit(".", i)[0] for key in _BY_KEY for i in range(1, key.count(".") + 1)}

# Upstream's defaults when no --config file is given (options.applyLegacyDefaults), and no
# eviction thresholds (they are only defaulted when a file is loaded).
_LEGACY_DEFAULTS = {
    "authentication.anonymous.enabled": True,
    "authentication.webhook.enabled": False,
    "authorization.mode": "AlwaysAllow",
    "evictionHard": {},
}


def _name(field: _Field) -> str:
    return field.key or field.attr


# --- Flags -----------------------------------------------------------------------------------------

_GO_BOOLS = {"1": True, "t": True, "T": True, "true": True, "TRUE": True, "True": True,
             "0": False, "f": False, "F": False, "false": False, "FALSE": False, "False": False}
_ACCUMULATING = {"list", "map", "labels", "langle-map"}  # repeated flags add up, as upstream's do


def _from_text(shape: str, text: str | None) -> Any:
    """A flag's text as the YAML value of the field it sets."""
    if shape == "bool":
        if text is None:
            return True
        if text not in _GO_BOOLS:
            raise _Invalid(f"invalid boolean {_q(text)}")
        return _GO_BOOLS[text]
    if shape == "int":
        try:  # Go's strconv.ParseInt(text, 0, ...): 0x, 0o, 0b prefixes, and a leading 0 is octal
            return int(text, 8) if re.fullmatch(r"[+-]?0[0-7]+", text) else int(text, 0)
        except ValueError:
            raise _Invalid(f"invalid integer {_q(text)}") from None
    if shape == "list":
        return text.split(",") if text else []
    if shape in ("map", "labels", "langle-map"):
        separator = "<" if shape == "langle-map" else "="
        pairs = {}
        for item in filter(None, text.split(",")):
            key, found, value = item.partition(separator)
            if not found and shape != "labels":
                raise _Invalid(f"malformed pair {_q(item)}, expected key{separator}value")
            pairs[key.strip()] = value.strip()
        return pairs
    if shape == "taints":
        return [_taint_spec(spec) for spec in text.split(",")] if text else []
    return text


def _taint_spec(spec: str) -> dict:
    """"key=value:Effect" or "key:Effect" -> the file's taint mapping."""
    key_value, colon, effect = spec.partition(":")
    key, equals, value = key_value.partition("=")
    if not colon or ":" in effect or "=" in value:
        raise _Invalid(f"invalid taint spec {_q(spec)}: expected key=value:Effect or key:Effect")
    return {"key": key, "value": value, "effect": effect}


def _parse_flags(argv: list[str], warnings: list[str]) -> dict[str, Any]:
    """The flags' values by field name, in command-line order (the last one given wins)."""
    try:
        given = upstream_flags.split(argv)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    values: dict[str, Any] = {}
    for flag in given:
        field = _BY_FLAG.get(flag.name)
        if field is None:  # an upstream flag pykubelet does not implement
            if upstream_flags.ALL_FLAGS[flag.name] == "bool" and flag.name != "version":
                _flag_value(flag, lambda v: v, "bool")
            warnings.append(f"{flag.spelled} is an upstream kubelet flag that pykubelet does not implement; "
                            "ignored")
            continue
        if flag.name in upstream_flags.DEPRECATED_FLAGS:
            warnings.append(f"{flag.spelled} is deprecated upstream: set {field.key} in the --config file instead")
        if flag.name in upstream_flags.PYNODE_FLAGS:
            warnings.append(f"{flag.spelled} was removed from the upstream kubelet in v1.35 "
                            "(the sandbox image is the container runtime's setting)")
        value = _flag_value(flag, field.kind, field.kind.shape)
        name = _name(field)
        if value is None:
            value = field.default
        elif field.kind.shape in _ACCUMULATING and name in values:
            value = {**values[name], **value} if isinstance(value, dict) else values[name] + value
        values[name] = value
    return values


def _flag_value(flag: upstream_flags.Flag, kind: Callable, shape: str) -> Any:
    try:
        return kind(_from_text(shape, flag.value))
    except _Invalid as err:
        raise ConfigError(f"{flag.spelled}: {err}") from None


# --- The file --------------------------------------------------------------------------------------

class _Loader(yaml.SafeLoader):
    """Safe YAML that records duplicate keys (upstream's lenient decoding keeps the last one)."""

    def __init__(self, stream):
        super().__init__(stream)
        self.duplicates: list[str] = []

    def construct_mapping(self, node, deep=False):
        keys = [key.value for key, _ in node.value if key.tag == "tag:yaml.org,2002:str"]
        self.duplicates += [key for i, key in enumerate(keys) if key in keys[:i]]
        return super().construct_mapping(node, deep)


def _load_file(path: Path, warnings: list[str]) -> dict[str, Any]:
    """The file's settings by field name (unset and zero values left out), resolved and checked."""
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the kubelet config file: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: the kubelet config file is not UTF-8 text (byte {err.start})") from None
    loader = None
    try:
        loader = _Loader(text)  # the reader refuses control characters here already
        document = loader.get_single_data()
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    finally:
        if loader is not None:
            loader.dispose()
    if document is None:
        raise ConfigError(f"{path}: the kubelet config file is empty")
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: expected a {KIND} mapping, got {_type_name(document)}")
    for key, expected in (("apiVersion", API_VERSION), ("kind", KIND)):
        if document.get(key) != expected:
            found = "missing" if key not in document else f"got {_q(str(document[key]))}"
            raise ConfigError(f"{path}: {key}: expected {_q(expected)}, {found}")
    warnings += [f"{path}: duplicate field {_q(key)}; the last one is used" for key in loader.duplicates]
    values: dict[str, Any] = {}
    _read_section(document, "", path, values, warnings)
    return values


def _read_section(section: dict, prefix: str, path: Path, values: dict, warnings: list[str]) -> None:
    for key, raw in section.items():
        name = f"{prefix}{key}"
        field = _BY_KEY.get(name)
        if name in _SECTIONS:
            if raw is not None:
                if not isinstance(raw, dict):
                    raise ConfigError(f"{path}: {name}: expected a mapping, got {_type_name(raw)}")
                _read_section(raw, f"{name}.", path, values, warnings)
        elif field is not None:
            if name in RELATIVE_PATH_FIELDS and isinstance(raw, str) and raw and not os.path.isabs(raw):
                raw = os.path.normpath(os.path.join(path.parent, raw))
            value = _file_value(field, raw, path)
            if value is not None:
                values[name] = value
        elif name in ("apiVersion", "kind"):
            pass
        elif name in UPSTREAM_CONFIG_FIELDS:
            if not _empty(raw):
                warnings.append(f"{path}: {name} is not implemented by pykubelet; ignored")
        else:
            warnings.append(f"{path}: unknown field {_q(name)}; ignored")


def _file_value(field: _Field, raw: Any, path: Path) -> Any:
    """The field's value, or None where upstream's defaulting would treat it as unset."""
    zero = raw == "" or (type(raw) is int and raw == 0)
    if raw is None or (zero and not field.keep_zero):
        return None
    try:
        value = field.kind(raw)
    except _Invalid as err:
        raise ConfigError(f"{path}: {field.key}: {err}") from None
    if field.kind.shape == "duration" and value == 0 and not field.keep_zero:
        return None
    return value


def _empty(value: Any) -> bool:
    """Whether a value is one that kubeadm writes for "unset" (0, "0s", "", {}, ...)."""
    if isinstance(value, dict):
        return all(_empty(v) for v in value.values())
    if isinstance(value, list):
        return not value
    return value in (None, False, 0, "", "0", "0s")


def _with_file_defaults(values: dict[str, Any]) -> dict[str, Any]:
    """Defaults that upstream derives from other fields in the file."""
    derived = dict(values)
    if "nodeStatusReportFrequency" not in values and "nodeStatusUpdateFrequency" in values:
        derived["nodeStatusReportFrequency"] = values["nodeStatusUpdateFrequency"]
    if "serializeImagePulls" not in values and values.get("maxParallelImagePulls", 1) > 1:
        derived["serializeImagePulls"] = False
    if "evictionHard" in values and values.get("mergeDefaultEvictionSettings"):
        derived["evictionHard"] = {**DEFAULT_EVICTION_HARD, **values["evictionHard"]}
    return derived


# --- Putting it together ---------------------------------------------------------------------------

def parse(argv: list[str], env: Mapping[str, str] | None = None) -> KubeletConfig:
    """The kubelet's settings from its command line (without the program name) and --config file.

    ``env`` is accepted for symmetry with the other agents' entry points; like upstream, the
    kubelet reads no settings from the environment (systemd expands kubeadm's variables into argv).
    """
    del env
    warnings: list[str] = []
    from_flags = _parse_flags(argv, warnings)
    values = {_name(f): f.default for f in _FIELDS}
    config_file = from_flags.get("config_file")
    if config_file is not None:
        config_file = from_flags["config_file"] = Path(os.path.abspath(config_file))
        values.update(_with_file_defaults(_load_file(config_file, warnings)))
    else:
        values.update(_LEGACY_DEFAULTS)
    values.update(from_flags)
    _check_together(values)

    settings: dict[str, Any] = {"authentication": {}, "authorization": {}}
    for field in _FIELDS:
        if field.attr and "." in field.attr:
            *parents, leaf = field.attr.split(".")
            target = settings
            for parent in parents:
                target = target.setdefault(parent, {})
            value = values[_name(field)]
            target[leaf] = format_duration(value) if field.kind.shape == "duration" else value
        elif field.attr:
            value = values[_name(field)]
            settings[field.attr] = type(value)(value) if isinstance(value, (dict, list)) else value
    settings["node_ip"] = settings["node_ips"][0] if settings["node_ips"] else None
    settings["effective"] = _effective(values)
    settings["warnings"] = list(dict.fromkeys(warnings))
    return KubeletConfig(**settings)


def _effective(values: dict[str, Any]) -> dict[str, Any]:
    """The merged settings as a KubeletConfiguration document (unset values left out)."""
    document: dict[str, Any] = {"kind": KIND, "apiVersion": API_VERSION}
    for field in _FIELDS:
        if not field.key or values.get(field.key) is None:
            continue
        value = values[field.key]
        if field.kind.shape == "duration":
            value = format_duration(value)
        elif field.kind is _byte_size:  # a quantity string in the file and in upstream's JSON, never a number
            value = format_byte_size(value)
        elif isinstance(value, Path):
            value = str(value)
        elif isinstance(value, list):
            value = [vars(item) if hasattr(item, "__dict__") else item for item in value]
        *parents, leaf = field.key.split(".")
        target = document
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    return document


def _check_together(values: dict[str, Any]) -> None:
    """Checks across fields (after defaults, file and flags are merged), as upstream validates."""
    low, high = values["imageGCLowThresholdPercent"], values["imageGCHighThresholdPercent"]
    if low >= high:
        raise ConfigError(
            f"invalid configuration: imageGCLowThresholdPercent (--image-gc-low-threshold) {low} must be "
            f"less than imageGCHighThresholdPercent (--image-gc-high-threshold) {high}")
    youngest, oldest = values["imageMinimumGCAge"], values["imageMaximumGCAge"]
    if 0 < oldest <= youngest:
        raise ConfigError(
            f"invalid configuration: imageMaximumGCAge {format_duration(oldest)} must be greater than "
            f"imageMinimumGCAge {format_duration(youngest)}")
    grace, critical = values["shutdownGracePeriod"], values["shutdownGracePeriodCriticalPods"]
    if critical > grace:
        raise ConfigError(
            f"invalid configuration: shutdownGracePeriodCriticalPods {format_duration(critical)} must be "
            f"<= shutdownGracePeriod {format_duration(grace)}")
    for signal in values["evictionSoft"]:
        if signal not in values["evictionSoftGracePeriod"]:
            raise ConfigError("invalid configuration: grace period must be specified for the soft eviction "
                              f"threshold {signal} (evictionSoftGracePeriod, --eviction-soft-grace-period)")
    if (values["tlsCertFile"] is None) != (values["tlsPrivateKeyFile"] is None):
        raise ConfigError(
            "invalid configuration: tlsCertFile (--tls-cert-file) and tlsPrivateKeyFile "
            "(--tls-private-key-file) must be given together")
