"""Run pynode's agents (pykubelet, pyproxy) as daemons of a local node.

They run inside the node's network namespace and cgroup, like its containerd,
log to logs/<program>-<node>.log, and are stopped by `down` with the rest.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from . import cgroups, procs
from .settings import Node

PROGRAMS = ("pykubelet", "pyproxy")


@dataclass
class Agent:
    node: Node
    program: str
    name: str  # the daemon's name: its pidfile and log file
    pid: int

    @property
    def log(self) -> Path:
        return procs.log_path(self.node.cluster, self.name)

    def running(self) -> bool:
        return procs.running(self.node.cluster, self.name) == self.pid

    def stop(self, grace: float = 10) -> None:
        procs.stop(self.node.cluster, self.name, grace)


def executable(program: str) -> str:
    """The console script next to the running interpreter (the virtualenv's), else on PATH."""
    beside = Path(sys.executable).parent / program
    found = str(beside) if beside.exists() else shutil.which(program)
    if not found:
        raise procs.UpError(f"{program}: not installed (run `make venv`)")
    return found


def kubelet_dir(node: Node) -> Path:
    return node.dir / "kubelet"


def kubelet_configuration(node: Node) -> dict:
    """The KubeletConfiguration of a local node: kubeadm's, with the node's own paths and ranges."""
    cluster = node.cluster
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(cluster.pki / "ca.crt")}},
        "authorization": {"mode": "Webhook"},
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": node.cgroup_path,
        "clusterDNS": [cluster.dns_service_ip],
        "clusterDomain": cluster.cluster_domain,
        "containerRuntimeEndpoint": f"unix://{node.containerd_socket}",
        "podCIDR": node.pod_cidr,
        "rotateCertificates": True,
        "serverTLSBootstrap": True,  # a kubelet-serving CSR, approved by localcluster.bootstrap
        "staticPodPath": str(kubelet_dir(node) / "manifests"),
        "failSwapOn": False,
        "fileCheckFrequency": "5s",  # static pod manifests are picked up within seconds (upstream: 20s)
        # Logs rotate small and often (upstream: 10Mi, 10s), so that the tests see rotation happen.
        "containerLogMaxSize": "1Mi",
        "containerLogMonitorInterval": "3s",
        # Volume usage walked every 15 s (upstream: 1m), so that an emptyDir over its sizeLimit is evicted soon.
        "volumeStatsAggPeriod": "15s",
        # Every node shares this host's pids: a fork bomb in a pod stops at 1024 (kubeadm leaves it unlimited).
        "podPidsLimit": 1024,
    }


def kubelet_flags(node: Node) -> list[str]:
    """Write the node's kubelet config file; return the flags kubeadm's drop-in would pass."""
    root = kubelet_dir(node)
    (root / "manifests").mkdir(parents=True, exist_ok=True)
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump(kubelet_configuration(node), sort_keys=False))
    return [
        f"--config={config}",
        f"--bootstrap-kubeconfig={node.cluster.bootstrap_kubeconfig}",
        f"--kubeconfig={root / 'kubelet.conf'}",
        f"--cert-dir={root / 'pki'}",
        f"--root-dir={root}",
        f"--hostname-override={node.name}",
        f"--node-ip={node.ip}",
    ]


def proxy_configuration(node: Node) -> dict:
    """The KubeProxyConfiguration of a local node (kubeadm's, with this node's names and ranges)."""
    cluster = node.cluster
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(cluster.kubeconfig("kube-proxy"))},
        "mode": cluster.proxy_mode,
        "clusterCIDR": str(cluster.pod_cidr),
        "hostnameOverride": node.name,
        # The node's own network namespace: every address there is the node's.
        "metricsBindAddress": "0.0.0.0:10249",
        "healthzBindAddress": "0.0.0.0:10256",
    }


def proxy_flags(node: Node) -> list[str]:
    """Write the node's kube-proxy config file; return the flags kubeadm's DaemonSet passes."""
    root = node.dir / "kube-proxy"
    root.mkdir(parents=True, exist_ok=True)
    config = root / "config.conf"
    config.write_text(yaml.safe_dump(proxy_configuration(node), sort_keys=False))
    return [f"--config={config}", f"--hostname-override={node.name}"]


def _wait_for(node: Node, program: str, ready, timeout: float, what: str) -> None:
    """Poll `ready()` until it is true; fail early if the agent exits, naming its log."""
    name = f"{program}-{node.name}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not procs.running(node.cluster, name):
            raise procs.UpError(f"{name} exited during start; see {procs.log_path(node.cluster, name)}")
        try:
            if ready():
                return
        except Exception:  # noqa: BLE001 - not there yet
            pass
        time.sleep(0.5)
    raise procs.UpError(f"{what} within {timeout:.0f}s; see {procs.log_path(node.cluster, name)}")


def wait_proxy_ready(node: Node, timeout: float = 60) -> None:
    """Wait until pyproxy's metrics show its first sync done."""
    import urllib.request

    def synced() -> bool:
        with urllib.request.urlopen(f"http://{node.ip}:10249/metrics", timeout=2) as response:
            return b"kubeproxy_sync_proxy_rules_last_timestamp_seconds{" in response.read()
    _wait_for(node, "pyproxy", synced, timeout, f"pyproxy on {node.name} did not sync")


def restart_kubelet(node: Node, config: dict | None = None) -> None:
    """Stop the node's pykubelet (its pods keep running) and start it again from its usual command line, or with
    `config` (a whole KubeletConfiguration) in place of its config file; returns once the node is Ready."""
    flags = kubelet_flags(node)  # rewrites the usual config file
    override = kubelet_dir(node) / "config-override.yaml"
    if config is None:
        override.unlink(missing_ok=True)
    else:
        override.write_text(yaml.safe_dump(config, sort_keys=False))
        flags = [f"--config={override}" if flag.startswith("--config=") else flag for flag in flags]
    procs.stop(node.cluster, f"pykubelet-{node.name}")
    start(node, "pykubelet", *flags)
    wait_node_ready(node)


def wait_node_ready(node: Node, timeout: float = 60, program: str = "pykubelet") -> None:
    """Wait until the apiserver shows the node Ready; fail naming the log of its kubelet, `program`."""
    from lightkube import Client, KubeConfig
    from lightkube.resources.core_v1 import Node as NodeResource

    client = Client(config=KubeConfig.from_file(str(node.cluster.admin_kubeconfig)))

    def ready() -> bool:
        status = client.get(NodeResource, node.name).status
        return any(c.type == "Ready" and c.status == "True" for c in (status.conditions or []))
    _wait_for(node, program, ready, timeout, f"node {node.name} did not become Ready")


def start(node: Node, program: str, *flags: str, instance: str = "") -> Agent:
    """Start `program` on `node`; `instance` tells apart a second copy (its log is <program>-<instance>-<node>)."""
    if program not in PROGRAMS:
        raise ValueError(f"unknown agent {program!r}; expected one of {PROGRAMS}")
    name = "-".join(filter(None, (program, instance, node.name)))
    if procs.running(node.cluster, name):
        raise procs.UpError(f"{name} is already running")
    pid = procs.start(node.cluster, name, [executable(program), *flags], netns=node.netns,
                      cgroup_procs=tuple(d / "cgroup.procs" for d in cgroups.recorded_dirs(node.dir)))
    return Agent(node, program, name, pid)
