"""The upstream kubelet's command-line flags, and splitting argv the way it does.

The upstream kubelet (v1.36, Linux build) parses its command line with spf13/pflag:
``--name=value`` and ``--name value`` for flags that take a value, ``--name`` or
``--name=true|false`` for boolean ones (a boolean never takes the next argument),
``-v 3`` / ``-v=3`` / ``-v3`` and ``-h`` as shorthands, ``_`` read as ``-`` in names,
and ``--`` ending the flags. Anything that is not a flag is an error ("unknown command").

The tables below list every flag that kubelet accepts, so a command line written for it
never fails here just because pykubelet has not implemented a flag: config.py decides
what each one does.
"""

from __future__ import annotations

from typing import NamedTuple


def _table(text: str) -> dict[str, str]:
    """``"name name:bool ..."`` -> {name: "value" | "bool"}."""
    entries = (word.partition(":") for word in text.split())
    return {name: kind or "value" for name, _, kind in entries}


# cmd/kubelet/app/options/options.go, KubeletFlags.AddFlags and addContainerRuntimeFlags:
# settings with no KubeletConfiguration field.
KUBELET_FLAGS = _table("""
    config config-dir kubeconfig bootstrap-kubeconfig hostname-override node-ip cert-dir
    cloud-provider root-dir seccomp-default:bool node-labels lock-file exit-on-lock-contention:bool
    runtime-cgroups image-credential-provider-config image-credential-provider-bin-dir
    minimum-container-ttl-duration maximum-dead-containers-per-container maximum-dead-containers
    experimental-mounter-path experimental-allocatable-ignore-eviction:bool
""")

# AddKubeletConfigFlags: each sets a KubeletConfiguration field and overrides the --config file.
CONFIG_FLAGS = _table("""
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
GLOBAL_FLAGS = _table("""
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
PYNODE_FLAGS = _table("pod-infra-container-image")

UPSTREAM_FLAGS = KUBELET_FLAGS | CONFIG_FLAGS | GLOBAL_FLAGS
ALL_FLAGS = UPSTREAM_FLAGS | PYNODE_FLAGS
SHORTHANDS = {"v": "v", "h": "help"}


class Flag(NamedTuple):
    name: str           # normalized long name, without dashes
    value: str | None   # None for a boolean flag given without "=value"
    spelled: str        # as written, for messages


def split(argv: list[str]) -> list[Flag]:
    """argv -> flags in order, with values attached; ValueError for anything upstream rejects."""
    flags: list[Flag] = []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--":
            if args:
                raise ValueError(_positional(args[0], flags))
            break
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            name = name.replace("_", "-")
            if not name or name.startswith("-") or name not in ALL_FLAGS:
                raise ValueError(f"unknown flag: --{arg[2:].partition('=')[0]}")
            flags.append(_take(name, value if eq else None, f"--{name}", args))
        elif arg.startswith("-") and arg != "-":
            letter, rest = arg[1], arg[2:]
            if letter not in SHORTHANDS:
                raise ValueError(f"unknown shorthand flag: {letter!r} in {arg}")
            name = SHORTHANDS[letter]
            if ALL_FLAGS[name] == "bool":
                flags.append(Flag(name, rest[1:] if rest.startswith("=") else None, f"-{letter}"))
                if rest and not rest.startswith("="):
                    args.insert(0, f"-{rest}")  # -hv3: shorthands run together
            else:
                value = rest[1:] if rest.startswith("=") else rest
                flags.append(_take(name, value if rest else None, f"-{letter}", args))
        else:
            raise ValueError(_positional(arg, flags))
    return flags


def _take(name: str, value: str | None, spelled: str, rest: list[str]) -> Flag:
    """A flag's value: after "=", else (unless boolean) the next argument, whatever it looks like."""
    if value is None and ALL_FLAGS[name] != "bool":
        if not rest:
            raise ValueError(f"flag needs an argument: {spelled}")
        value = rest.pop(0)
    return Flag(name, value, spelled)


def _positional(arg: str, before: list[Flag]) -> str:
    message = f"unexpected argument {arg!r}: the kubelet takes only flags"
    if before and ALL_FLAGS[before[-1].name] == "bool" and before[-1].value is None:
        message += f" (a boolean flag takes its value as {before[-1].spelled}={arg})"
    return message
