"""The node network: a host bridge, and one network namespace per node.

    host: bridge pynode0 (10.221.0.1/24) -- the control plane listens here
      |-- veth pyn1-host <-> eth0 in netns pynode-n1 (10.221.0.11/24)
      |                       cni0 bridge 10.222.1.1/24 for the node's pods
      |-- veth pyn2-host <-> eth0 in netns pynode-n2 ...

A node namespace has no default route: it reaches the control plane and the
other nodes over its veth and nothing else. On the host, each node's pod CIDR is
routed to that node, and the whole pod and service CIDRs are held `unreachable`
behind those routes, so a packet for a cluster address never follows the
host's default route off the machine, whatever happens to a node. The service CIDR is routed to the
node's pod bridge, so a packet for a cluster address that no proxy rule
catches dies on that bridge instead of leaving the node. (A blackhole route
would also drop node-to-ClusterIP connections, because routing happens before
the DNAT that rewrites them.)
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from pathlib import Path

from .procs import UpError
from .settings import Cluster, Node


BRIDGE_MAC = "02:70:79:6e:6f:00"  # locally administered; "pyno"


def _ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    proc = subprocess.run(argv, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise UpError(f"network: `{' '.join(argv)}` failed: {proc.stderr.strip()}")
    return proc


def _link_exists(name: str, netns: str | None = None) -> bool:
    return _ip("link", "show", "dev", name, netns=netns, check=False).returncode == 0


def node_namespaces() -> list[str]:
    """Network namespaces named like local nodes."""
    netns_dir = Path("/run/netns")
    return sorted(p.name for p in netns_dir.glob("pynode-n*")) if netns_dir.is_dir() else []


def netns_exists(name: str) -> bool:
    return Path(f"/run/netns/{name}").exists()


def check_no_overlap(cluster: Cluster) -> None:
    """Refuse to start if one of our ranges overlaps a network this host already routes."""
    ours = {"node network": cluster.node_network, "pod CIDR": cluster.pod_cidr,
            "service CIDR": cluster.service_cidr}
    routes = json.loads(_ip("-j", "-4", "route", "show", "table", "all").stdout or "[]")
    for route in routes:
        dst = route.get("dst", "")
        if dst in ("default", "") or route.get("dev") == cluster.bridge:
            continue
        if route.get("type") == "unreachable" and dst in cluster_ranges(cluster):
            continue  # held by a previous `up`
        try:
            net = ipaddress.ip_network(dst if "/" in dst else f"{dst}/32", strict=False)
        except ValueError:
            continue
        if net.is_loopback or net.prefixlen == 0:
            continue
        for label, mine in ours.items():
            if net.overlaps(mine):
                raise UpError(f"network: the {label} {mine} overlaps {net} (dev {route.get('dev')}) on this host")


def cluster_ranges(cluster: Cluster) -> tuple[str, ...]:
    """The ranges that must never leave the host: the pod and service CIDRs."""
    return (str(cluster.pod_cidr), str(cluster.service_cidr))


def _sysctl(netns: str, key: str, value: str) -> None:
    proc = subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-qw", f"{key}={value}"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise UpError(f"network: cannot set {key}={value} in {netns}: {proc.stderr.strip()}")


def ensure_bridge(cluster: Cluster) -> None:
    if not _link_exists(cluster.bridge):
        # A fixed MAC: a bridge otherwise takes the lowest MAC of its ports, so a node joining or
        # leaving could change it and cut the other nodes off until their ARP entries expire.
        _ip("link", "add", cluster.bridge, "address", BRIDGE_MAC, "type", "bridge")
    addr = f"{cluster.host_ip}/{cluster.node_network.prefixlen}"
    if addr not in _ip("-br", "addr", "show", "dev", cluster.bridge).stdout:
        _ip("addr", "add", addr, "dev", cluster.bridge)
    _ip("link", "set", cluster.bridge, "up")
    for cidr in cluster_ranges(cluster):
        _ip("route", "replace", "unreachable", cidr)


def ensure_node(node: Node) -> None:
    """Create the node's namespace, veth, addresses, pod bridge and routes (idempotent)."""
    cluster = node.cluster
    ns = node.netns
    if not netns_exists(ns):
        _ip("netns", "add", ns)
    if not _link_exists(node.host_veth):
        _ip("link", "add", node.host_veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
    _ip("link", "set", node.host_veth, "master", cluster.bridge, "up")
    _ip("link", "set", "lo", "up", netns=ns)
    addr = f"{node.ip}/{cluster.node_network.prefixlen}"
    if addr not in _ip("-br", "addr", "show", "dev", "eth0", netns=ns).stdout:
        _ip("addr", "add", addr, "dev", "eth0", netns=ns)
    _ip("link", "set", "eth0", "up", netns=ns)

    # The pod bridge exists before the first pod so that the service route has a device;
    # the CNI bridge plugin adopts it.
    if not _link_exists("cni0", netns=ns):
        _ip("link", "add", "cni0", "type", "bridge", netns=ns)
    gateway = f"{node.pod_gateway}/{ipaddress.ip_network(node.pod_cidr).prefixlen}"
    if gateway not in _ip("-br", "addr", "show", "dev", "cni0", netns=ns).stdout:
        _ip("addr", "add", gateway, "dev", "cni0", netns=ns)
    _ip("link", "set", "cni0", "up", netns=ns)
    _ip("route", "replace", str(cluster.service_cidr), "dev", "cni0", netns=ns)
    # Pods of the other nodes are reached through those nodes, across the node network.
    for other in cluster.nodes:
        if other != node:
            _ip("route", "replace", other.pod_cidr, "via", other.ip, netns=ns)
            if netns_exists(other.netns):  # and this node's pods from the others (one added to a running cluster)
                _ip("route", "replace", node.pod_cidr, "via", node.ip, netns=other.netns)
    _sysctl(ns, "net.ipv4.ip_forward", "1")
    # The host (the apiserver's pods/proxy, webhooks) reaches the node's pods through the node.
    _ip("route", "replace", node.pod_cidr, "via", node.ip, "dev", cluster.bridge)


def remove_node(node: Node) -> None:
    """Delete the namespace (which takes its veth, bridges and all its firewall tables along) and the host's
    route to the node's pods (the cluster's `unreachable` route covers them again)."""
    _ip("route", "delete", node.pod_cidr, "via", node.ip, "dev", node.cluster.bridge, check=False)
    for other in node.cluster.nodes:
        if other != node and netns_exists(other.netns):
            _ip("route", "delete", node.pod_cidr, "via", node.ip, netns=other.netns, check=False)
    if netns_exists(node.netns):
        _ip("netns", "delete", node.netns, check=False)
    if _link_exists(node.host_veth):
        _ip("link", "delete", node.host_veth, check=False)


def remove_bridge(cluster: Cluster) -> None:
    """Delete the bridge (and the node routes through it), then the unreachable routes."""
    if _link_exists(cluster.bridge):
        _ip("link", "delete", cluster.bridge, check=False)
    for cidr in cluster_ranges(cluster):
        _ip("route", "delete", "unreachable", cidr, check=False)


def pids_in(netns: str) -> list[int]:
    """Processes whose network namespace is `netns` (a safety net for `down`)."""
    try:
        target = os.stat(f"/run/netns/{netns}")
    except OSError:
        return []
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                st = os.stat(proc / "ns" / "net")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
                found.append(int(proc.name))
    return found
