"""Where the local cluster keeps things and which addresses it uses.

Everything the cluster creates on the host lives under one state directory;
what is expensive to rebuild (the upstream binaries, image archives) lives in a
cache directory keyed by version. Both can be moved with environment variables:
PYNODE_STATE and PYNODE_CACHE. PYNODE_PROXY_MODE picks pyproxy's mode on the
nodes (iptables, the default, or nftables); PYNODE_CONTAINERD their runtime
(upstream: containerd 2.x and runc built from their Go modules, the default for
new nodes; debian: Debian 12's containerd 1.6 and runc packages). A node keeps
the runtime that made its state until `make down`.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
UPSTREAM_DIR = REPO / "localcluster" / "upstream"
METRICS_SERVER_DIR = UPSTREAM_DIR / "metrics-server"
CONTAINERD_DIR = UPSTREAM_DIR / "containerd"
COREDNS_DIR = UPSTREAM_DIR / "coredns"
RUNTIMES = ("upstream", "debian")  # PYNODE_CONTAINERD: containerd 2.x built here, or Debian 12's 1.6


def kubernetes_version() -> str:
    """The pinned Kubernetes version, read from the build recipe's go.mod."""
    text = (UPSTREAM_DIR / "go.mod").read_text()
    match = re.search(r"^require k8s\.io/kubernetes (v\d+\.\d+\.\d+)", text, re.M)
    if not match:
        raise RuntimeError(f"no 'require k8s.io/kubernetes vX.Y.Z' line in {UPSTREAM_DIR / 'go.mod'}")
    return match.group(1)


def metrics_server_version() -> str:
    """The pinned metrics-server release (a test fixture), read from its own build recipe's go.mod."""
    text = (METRICS_SERVER_DIR / "go.mod").read_text()
    match = re.search(r"^require sigs\.k8s\.io/metrics-server (v\d+\.\d+\.\d+)", text, re.M)
    if not match:
        raise RuntimeError(f"no 'require sigs.k8s.io/metrics-server vX.Y.Z' line in {METRICS_SERVER_DIR / 'go.mod'}")
    return match.group(1)


def coredns_version() -> str:
    """The pinned CoreDNS release (what kubeadm deploys), read from its build recipe's go.mod."""
    text = (COREDNS_DIR / "go.mod").read_text()
    match = re.search(r"^require github\.com/coredns/coredns (v\d+\.\d+\.\d+)", text, re.M)
    if not match:
        raise RuntimeError(f"no 'require github.com/coredns/coredns vX.Y.Z' line in {COREDNS_DIR / 'go.mod'}")
    return match.group(1)


def containerd_versions() -> tuple[str, str]:
    """The pinned containerd and runc releases, read from their build recipe's go.mod."""
    text = (CONTAINERD_DIR / "go.mod").read_text()
    found = [re.search(rf"^\s*(?:require )?{re.escape(m)} (v\d+\.\d+\.\d+)", text, re.M)
             for m in ("github.com/containerd/containerd/v2", "github.com/opencontainers/runc")]
    if not all(found):
        raise RuntimeError(f"no containerd and runc versions in {CONTAINERD_DIR / 'go.mod'}")
    return found[0].group(1), found[1].group(1)


@dataclass(frozen=True)
class Node:
    """One local node: a network namespace with its own containerd and agents."""

    index: int
    cluster: "Cluster"

    @property
    def name(self) -> str:
        return f"pynode-n{self.index}"

    @property
    def netns(self) -> str:
        return self.name

    @property
    def host_veth(self) -> str:
        return f"pyn{self.index}-host"

    @property
    def ip(self) -> str:
        return str(self.cluster.node_network.network_address + 10 + self.index)

    @property
    def pod_cidr(self) -> str:
        return str(list(self.cluster.pod_cidr.subnets(new_prefix=24))[self.index])

    @property
    def pod_gateway(self) -> str:
        return str(ipaddress.ip_network(self.pod_cidr).network_address + 1)

    @property
    def dir(self) -> Path:
        return self.cluster.state / "nodes" / self.name

    @property
    def containerd_socket(self) -> Path:
        return self.dir / "containerd" / "containerd.sock"

    @property
    def runtime(self) -> str:
        """The node's container runtime (RUNTIMES): the one that made its state, else the cluster's choice, else
        upstream. A node made before the choice existed ran Debian's."""
        mark = self.dir / "containerd" / "runtime"
        if mark.exists():
            return mark.read_text().strip()
        if (self.dir / "containerd" / "root").exists():
            return "debian"
        return self.cluster.containerd or "upstream"

    @property
    def containerd_bin(self) -> Path | None:
        """Where the node's containerd, shim, ctr and runc are: the cache (built by upstream/containerd/build.sh),
        or None for Debian's, found on PATH."""
        if self.runtime == "debian":
            return None
        containerd, runc = containerd_versions()
        return self.cluster.cache / "upstream" / f"containerd-{containerd}-runc-{runc}" / "bin"

    def runtime_program(self, name: str) -> str:
        """The path of containerd, containerd-shim-runc-v2, ctr or runc for the node's runtime ("" if missing)."""
        import shutil

        if self.containerd_bin is None:
            return shutil.which(name) or ""
        path = self.containerd_bin / name
        return str(path) if path.is_file() else ""

    @property
    def cgroup_name(self) -> str:
        """The node's cgroup, below the one `up` runs in (see localcluster/cgroups.py)."""
        return f"pynode/{self.name}"

    @property
    def cgroup_path(self) -> str:
        """The node's absolute cgroup path, as `up` created it; pods' cgroup parents go below it."""
        from .cgroups import recorded_path

        path = recorded_path(self.dir)
        if path is None:
            raise RuntimeError(f"node {self.name} has no cgroup yet; is the cluster up?")
        return path


@dataclass(frozen=True)
class Cluster:
    state: Path
    cache: Path
    version: str
    node_count: int = 1
    proxy_mode: str = "iptables"
    containerd: str = ""  # the nodes' runtime, one of RUNTIMES; "": a node keeps the one its state has, else upstream
    bridge: str = "pynode0"
    node_network: ipaddress.IPv4Network = ipaddress.ip_network("10.221.0.0/24")
    pod_cidr: ipaddress.IPv4Network = ipaddress.ip_network("10.222.0.0/16")
    service_cidr: ipaddress.IPv4Network = ipaddress.ip_network("10.223.0.0/16")
    cluster_domain: str = "cluster.local"
    apiserver_port: int = 6443
    etcd_client_port: int = 2379
    etcd_peer_port: int = 2380
    controller_manager_port: int = 10257
    scheduler_port: int = 10259

    @property
    def host_ip(self) -> str:
        """The host end of the node network: the control plane listens here."""
        return str(self.node_network.network_address + 1)

    @property
    def server(self) -> str:
        return f"https://{self.host_ip}:{self.apiserver_port}"

    @property
    def kubernetes_service_ip(self) -> str:
        return str(self.service_cidr.network_address + 1)

    @property
    def dns_service_ip(self) -> str:
        return str(self.service_cidr.network_address + 10)

    @cached_property
    def nodes(self) -> tuple[Node, ...]:
        return tuple(Node(i, self) for i in range(1, self.node_count + 1))

    @property
    def pki(self) -> Path:
        return self.state / "pki"

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def run(self) -> Path:
        return self.state / "run"

    @property
    def bin(self) -> Path:
        return self.cache / "upstream" / self.version / "bin"

    @property
    def metrics_server_bin(self) -> Path:
        """Where localcluster/upstream/metrics-server/build.sh puts the fixture's binary."""
        return self.cache / "upstream" / f"metrics-server-{metrics_server_version()}" / "bin"

    @property
    def coredns_bin(self) -> Path:
        """Where localcluster/upstream/coredns/build.sh puts CoreDNS."""
        return self.cache / "upstream" / f"coredns-{coredns_version()}" / "bin"

    @property
    def images(self) -> Path:
        return self.cache / "images"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.state / "admin.conf"

    @property
    def super_admin_kubeconfig(self) -> Path:
        return self.state / "super-admin.conf"

    @property
    def bootstrap_kubeconfig(self) -> Path:
        return self.state / "bootstrap-kubelet.conf"

    def kubeconfig(self, name: str) -> Path:
        return self.state / f"{name}.conf"


def load() -> Cluster:
    cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return Cluster(
        state=Path(os.environ.get("PYNODE_STATE", "/var/lib/pynode-local")),
        cache=Path(os.environ.get("PYNODE_CACHE", cache_home / "pynode")),
        version=kubernetes_version(),
        proxy_mode=os.environ.get("PYNODE_PROXY_MODE", "iptables"),
        containerd=os.environ.get("PYNODE_CONTAINERD", ""),
    )
