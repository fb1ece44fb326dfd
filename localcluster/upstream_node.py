"""A local node that runs the upstream kubelet (and, if asked, the upstream kube-proxy) instead of pynode's.

For the benchmarks (pykubelet against the upstream kubelet, side by side) and the conformance harness's
`--agents upstream` run. `bring_up` gives the node its own network namespace, cgroup and containerd with
the cluster's images, and starts the upstream kubelet with exactly pykubelet's flags and
KubeletConfiguration plus the few settings it needs in this sandbox; cluster.remove_node takes it all away
again, and cluster.delete_node_objects its Node, Lease and CSRs.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from . import agents, cgroups, containerd, network, procs
from .settings import Node

# The host-wide sysctls the upstream kubelet insists on (setupKernelTunables in
# pkg/kubelet/cm/container_manager_linux.go): it rewrites any that differ, or, with
# protectKernelDefaults, refuses to start. See `isolated`.
KERNEL_TUNABLES = {
    "vm/overcommit_memory": 1, "vm/panic_on_oom": 0, "kernel/panic": 10, "kernel/panic_on_oops": 1,
    "kernel/keys/root_maxkeys": 1000000, "kernel/keys/root_maxbytes": 25000000,
}



def log(msg: str) -> None:
    print(f"[localcluster] {msg}", file=sys.stderr, flush=True)


def daemon(node: Node) -> str:
    return f"kubelet-{node.name}"


def upstream_configuration(node: Node) -> dict:
    """pykubelet's KubeletConfiguration, plus what the upstream kubelet needs in this sandbox."""
    root = agents.kubelet_dir(node)
    return {
        **agents.kubelet_configuration(node),
        # The host mounts the cgroup v1 controllers (v2 only as the hybrid "unified" extra), and
        # since 1.35 the kubelet refuses to start on cgroup v1 unless told it may.
        "failCgroupV1": False,
        # Both default to host paths (/var/log/pods, /usr/libexec/kubernetes/kubelet-plugins/...)
        # that the kubelet creates at start; keep them in the node's directory, which cleanup removes.
        "podLogsDir": str(root / "pod-logs"),
        "volumePluginDir": str(root / "volume-plugins"),
        # Keeps pods that others create during the run (the test suite's, say) off this node, so
        # that no one's pod depends on a node that goes away. The kubelet itself only refuses pods
        # over NoExecute taints, so pods bound with spec.nodeName still run here.
        "registerWithTaints": [{"key": "pynode.dev/bench", "value": "upstream-kubelet", "effect": "NoSchedule"}],
    }


def isolated(node: Node, argv: list[str]) -> list[str]:
    """`argv` in a mount namespace of its own, in which the kubelet cannot change the host.

    There, the host-wide sysctls of KERNEL_TUNABLES read as the kubelet wants them (files
    bind-mounted over /proc/sys), so it writes none of them; and /var/log is an empty tmpfs,
    so the /var/log/containers it always creates (a fixed path) is not created on the host.
    Every mount is a slave of the host's (host mounts propagate in, none out) except the kubelet's
    root dir, which `share_root` made a shared mount in the host's namespace and which stays in
    that peer group here: the tmpfs the kubelet mounts for a secret or projected volume shows
    through to containerd, which runs in the host's namespace. Everything is exec'd, so the pid
    procs.start records is the kubelet's.
    """
    root = shlex.quote(str(agents.kubelet_dir(node)))
    fake = node.dir / "sysctl"
    fake.mkdir(parents=True, exist_ok=True)
    # unshare --propagation unchanged keeps the copies of shared mounts in their host peer groups; every
    # shared one but the root dir then becomes a slave, and the kubelet does not start if one would not.
    outside = (f"awk -v keep={root} '{{s = 0; for (i = 7; $i != \"-\"; i++) if ($i ~ /^shared:/) s = 1}} "
               "s && $5 != keep && index($5, keep \"/\") != 1 {print $5}' /proc/self/mountinfo")
    steps = [f"{outside} | while read -r m; do mount --make-slave \"$(printf '%b' \"$m\")\"; done",
             f'test -z "$({outside})"']
    for key, value in KERNEL_TUNABLES.items():
        (fake / key.replace("/", ".")).write_text(f"{value}\n")
        steps.append(f"mount --bind {shlex.quote(str(fake / key.replace('/', '.')))} /proc/sys/{key}")
    steps += ["mount -t tmpfs -o size=1m tmpfs /var/log", 'exec "$@"']
    return ["unshare", "--mount", "--propagation", "unchanged", "--", "sh", "-c", " && ".join(steps), "sh", *argv]


def share_root(node: Node) -> None:
    """Make the kubelet's root dir a shared mount (bound onto itself) in the host's mount namespace.

    So the mounts the kubelet makes beneath it in its own namespace (`isolated`) propagate back to the
    host, where containerd bind-mounts them into containers. remove_node unmounts it (and whatever
    propagated) with the rest of the node's mounts, as `down` does.
    """
    root = agents.kubelet_dir(node)
    root.mkdir(parents=True, exist_ok=True)
    mounted = {line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()}
    if str(root) not in mounted:
        subprocess.run(["mount", "--bind", str(root), str(root)], check=True, capture_output=True)
    subprocess.run(["mount", "--make-rshared", str(root)], check=True, capture_output=True)


def start_upstream(node: Node, extra: dict | None = None) -> int:
    """The upstream kubelet on `node`, with `extra` settings on top of its configuration."""
    flags = agents.kubelet_flags(node)  # exactly pykubelet's flags; this writes pykubelet's config.yaml ...
    config = agents.kubelet_dir(node) / "config.yaml"  # ... which the upstream configuration replaces
    config.write_text(yaml.safe_dump({**upstream_configuration(node), **(extra or {})}, sort_keys=False))
    share_root(node)
    argv = isolated(node, [str(node.cluster.bin / "kubelet"), *flags])
    return procs.start(node.cluster, daemon(node), argv, netns=node.netns,
                       cgroup_procs=tuple(d / "cgroup.procs" for d in cgroups.recorded_dirs(node.dir)))


def bring_up(node: Node, extra: dict | None = None) -> None:
    network.ensure_node(node)
    containerd.start(node)
    containerd.import_images(node)
    start_upstream(node, extra)


def proxy_daemon(node: Node) -> str:
    return f"kube-proxy-{node.name}"


def start_upstream_proxy(node: Node) -> int:
    """The upstream kube-proxy on `node`, with pyproxy's KubeProxyConfiguration there, except that it leaves the
    conntrack sysctls alone (nf_conntrack_max is host-wide and read-only in a node's namespace)."""
    config = node.dir / "kube-proxy" / "upstream.conf"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump({
        **agents.proxy_configuration(node),
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
    }, sort_keys=False))
    return procs.start(node.cluster, proxy_daemon(node), [str(node.cluster.bin / "kube-proxy"), f"--config={config}"],
                       netns=node.netns)
