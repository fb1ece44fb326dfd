"""Every flag the upstream kubelet (v1.36, Linux build) accepts, and splitting argv with them.

The tables list every flag, so a command line written for the kubelet never fails
here just because pykubelet has not implemented a flag: config.py decides what each
one does. Splitting follows pflag (nodeagent.flags).
"""

from __future__ import annotations

from nodeagent import flags
from nodeagent.flags import Flag

# cmd/kubelet/app/options/options.go, KubeletFlags.AddFlags and addContainerRuntimeFlags:
# settings with no KubeletConfiguration field.
KUBELET_FLAGS = flags.table("""
    config config-dir kubeconfig bootstrap-kubeconfig hostname-override node-ip cert-dir
    cloud-provider root-dir seccomp-default:bool node-labels lock-file exit-on-lock-contention:bool
    runtime-cgroups image-credential-provider-config image-credential-provider-bin-dir
    minimum-container-ttl-duration maximum-dead-containers-per-container maximum-dead-containers
    experimental-mounter-path experimental-allocatable-ignore-eviction:bool
""")

# AddKubeletConfigFlags: each sets a KubeletConfiguration field and overrides the --config file.
CONFIG_FLAGS = flags.table("""
    enable-server:bool fail-swap-on:bool pod-manifest-path sync-frequency file-check-frequency
    http-check-frequency manifest-url manifest-url-header address port read-only-port
    fail-cgroupv1:bool container-runtime-endpoint image-service-endpoint anonymous-auth:bool
    authentication-token-webhook:bool authentication-token-webhook-cache-ttl client-ca-file
    authorization-mode authorization-webhook-cache-authorized-ttl
    authorization-webhook-cache-unauthorized-ttl tls-cert-file tls-private-key-file
    rotate-server-certificates:bool tls-cipher-suites tls-min-version rotate-certificates:bool
    registry-qps registry-burst event-qps event-burst enable-debugging-handlers:bool
    contention-profiling:bool healthz-port healthz-bind-address oom-score-adj cluster-domain
    volume-plugin-dir cluster-dns streaming-connection-idle-timeout node-status-update-frequency
    minimum-image-ttl-duration image-gc-high-threshold image-gc-low-threshold
    volume-stats-agg-period feature-gates kubelet-cgroups system-cgroups provider-id
    cgroups-per-qos:bool cgroup-driver cgroup-root cpu-manager-policy cpu-manager-policy-options
    cpu-manager-reconcile-period qos-reserved topology-manager-policy runtime-request-timeout
    hairpin-mode max-pods pod-cidr pod-max-pids resolv-conf runonce:bool cpu-cfs-quota:bool
    cpu-cfs-quota-period enable-controller-attach-detach:bool make-iptables-util-chains:bool
    container-log-max-size container-log-max-files allowed-unsafe-sysctls node-status-max-images
    kernel-memcg-notification:bool local-storage-capacity-isolation:bool max-open-files
    kube-api-content-type kube-api-qps kube-api-burst serialize-image-pulls:bool eviction-hard
    eviction-soft eviction-soft-grace-period eviction-pressure-transition-period
    eviction-max-pod-grace-period eviction-minimum-reclaim pods-per-core
    protect-kernel-defaults:bool reserved-cpus topology-manager-scope
    topology-manager-policy-options system-reserved kube-reserved enforce-node-allocatable
    system-reserved-cgroup kube-reserved-cgroup memory-manager-policy reserved-memory
    register-node:bool register-with-taints
    logging-format log-flush-frequency v vmodule log-text-split-stream:bool
    log-text-info-buffer-size log-json-split-stream:bool log-json-info-buffer-size
""")

# AddGlobalFlags: cadvisor's flags (all but housekeeping-interval deprecated), --version, and --help.
GLOBAL_FLAGS = flags.table("""
    housekeeping-interval application-metrics-count-limit boot-id-file container-hints containerd
    enable-load-reader:bool event-storage-age-limit event-storage-event-limit
    global-housekeeping-interval log-cadvisor-usage:bool machine-id-file storage-driver-user
    storage-driver-password storage-driver-host storage-driver-db storage-driver-table
    storage-driver-secure:bool storage-driver-buffer-duration containerd-namespace
    version:bool help:bool
""")

# Flags that print a deprecation notice upstream when used. Every KubeletConfiguration flag does
# ("set it in the --config file instead") except these five.
NOT_DEPRECATED_CONFIG_FLAGS = frozenset({"v", "vmodule", "log-flush-frequency", "provider-id", "fail-cgroupv1"})
DEPRECATED_FLAGS = (
    frozenset(CONFIG_FLAGS) - NOT_DEPRECATED_CONFIG_FLAGS
    | {"minimum-container-ttl-duration", "maximum-dead-containers-per-container", "maximum-dead-containers",
       "experimental-mounter-path", "experimental-allocatable-ignore-eviction"}
    | frozenset(GLOBAL_FLAGS) - {"housekeeping-interval", "version", "help"}
)

# Not an upstream flag any more (removed in v1.35; the sandbox image is the runtime's setting),
# still accepted here because kubeadm-flags.env files written by older kubeadm carry it.
PYNODE_FLAGS = flags.table("pod-infra-container-image")

UPSTREAM_FLAGS = KUBELET_FLAGS | CONFIG_FLAGS | GLOBAL_FLAGS
ALL_FLAGS = UPSTREAM_FLAGS | PYNODE_FLAGS
SHORTHANDS = {"v": "v", "h": "help"}


def split(argv: list[str]) -> list[Flag]:
    """argv -> flags in order, with values attached; ValueError for anything upstream rejects."""
    return flags.split(argv, ALL_FLAGS, SHORTHANDS, "the kubelet")
