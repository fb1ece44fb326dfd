"""A network topology for testing a proxy mode with real traffic, in namespaces we create.

A node namespace with bridge br0 (10.231.0.1/24, the pods' gateway, hairpin on its
ports, br_netfilter on where the kernel has it) and a veth to a client namespace
(node 10.233.0.1, client 10.233.0.2); three pod namespaces p1..p3 (10.231.0.11-13)
on br0, each running a TCP server on :8080 that answers "<name> <peer ip>" and a
UDP echo on :5353 that answers the same. Service IPs are 10.232.0.0/16, routed to
br0 in the node namespace, as on a real node. Every client runs inside a namespace,
never on the host; `topology(prefix)` deletes every namespace it made.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass

PODS = {f"p{i}": f"10.231.0.1{i}" for i in (1, 2, 3)}
NODE_IP, CLIENT_IP, BRIDGE_IP = "10.233.0.1", "10.233.0.2", "10.231.0.1"
CLUSTER_CIDR, SERVICE_CIDR = "10.231.0.0/16", "10.232.0.0/16"
NODE_NAME = "node-a"

SERVER = r"""
import socket, sys, threading
name = sys.argv[1]
def udp():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("0.0.0.0", 5353))
    while True:
        data, peer = u.recvfrom(2048)
        u.sendto(name.encode() + b" " + peer[0].encode(), peer)
threading.Thread(target=udp, daemon=True).start()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080))
s.listen(128)
print("ready", flush=True)
while True:
    c, peer = s.accept()
    c.sendall(f"{name} {peer[0]}\n".encode())
    c.close()
"""

CLIENT_SCRIPT = r"""
import json, socket, sys, time
host, port, n, proto = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
out = []
for _ in range(n):
    start = time.monotonic()
    try:
        if proto == "tcp":
            s = socket.create_connection((host, port), timeout=3)
            data = b""
            while chunk := s.recv(200):
                data += chunk
            s.close()
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(3)
            s.sendto(b"ping", (host, port))
            data = s.recv(200)
            s.close()
        out.append([data.decode().strip(), time.monotonic() - start])
    except Exception as exc:
        out.append(["ERR " + type(exc).__name__, time.monotonic() - start])
print(json.dumps(out))
"""


def sh(*argv: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, input=input, timeout=60)


def nsx(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return sh("ip", "netns", "exec", ns, *argv, check=check)


def write_sysctl(ns: str, path: str, value: str) -> None:
    nsx(ns, "sh", "-c", f"echo {value} > /proc/sys/{path}")


@dataclass
class Topology:
    node: str  # the node namespace, where rules go
    client: str  # a client outside the node
    prefix: str
    bridge_nf: bool  # br_netfilter: bridged pod-to-pod traffic passes through the rules (hairpin)

    def pod(self, name: str) -> str:
        return f"{self.prefix}-{name}"


def link_client(node: str, client_ns: str, node_ip: str, client_ip: str) -> None:
    """A veth from the node namespace (vethc, `node_ip`/24) to a client (eth0, `client_ip`/24, routed via the node)."""
    sh("ip", "-n", node, "link", "add", "vethc", "type", "veth", "peer", "name", "eth0", "netns", client_ns)
    sh("ip", "-n", node, "addr", "add", f"{node_ip}/24", "dev", "vethc")
    sh("ip", "-n", node, "link", "set", "vethc", "up")
    sh("ip", "-n", client_ns, "addr", "add", f"{client_ip}/24", "dev", "eth0")
    sh("ip", "-n", client_ns, "link", "set", "eth0", "up")
    sh("ip", "-n", client_ns, "route", "add", "default", "via", node_ip)


@contextlib.contextmanager
def topology(prefix: str):
    node, client_ns = f"{prefix}-node", f"{prefix}-client"
    namespaces = [node, client_ns, *(f"{prefix}-{p}" for p in PODS)]
    servers: list[subprocess.Popen] = []
    try:
        for ns in namespaces:
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        write_sysctl(node, "net/ipv4/ip_forward", "1")
        sh("ip", "-n", node, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", node, "addr", "add", f"{BRIDGE_IP}/24", "dev", "br0")
        sh("ip", "-n", node, "link", "set", "br0", "up")
        for pod, ip in PODS.items():
            pns = f"{prefix}-{pod}"
            sh("ip", "-n", node, "link", "add", f"veth{pod}", "type", "veth", "peer", "name", "eth0", "netns", pns)
            sh("ip", "-n", node, "link", "set", f"veth{pod}", "master", "br0", "up")
            sh("bridge", "-n", node, "link", "set", "dev", f"veth{pod}", "hairpin", "on")
            sh("ip", "-n", pns, "addr", "add", f"{ip}/24", "dev", "eth0")
            sh("ip", "-n", pns, "link", "set", "eth0", "up")
            sh("ip", "-n", pns, "route", "add", "default", "via", BRIDGE_IP)
        link_client(node, client_ns, NODE_IP, CLIENT_IP)
        # As on a real node: service IPs are routed to the pod bridge; only rules make them answer.
        sh("ip", "-n", node, "route", "add", SERVICE_CIDR, "dev", "br0")
        bridge_nf = nsx(node, "sh", "-c", "test -e /proc/sys/net/bridge/bridge-nf-call-iptables", check=False)
        has_bridge_nf = bridge_nf.returncode == 0
        if has_bridge_nf:
            write_sysctl(node, "net/bridge/bridge-nf-call-iptables", "1")
        for pod in PODS:
            proc = subprocess.Popen(["ip", "netns", "exec", f"{prefix}-{pod}", sys.executable, "-c", SERVER, pod],
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            servers.append(proc)
            assert proc.stdout.readline().strip() == "ready"
        for pod, ip in PODS.items():  # plain pod reachability, before any rule
            assert client(node, ip, 8080, 1)[0][0].startswith(pod)
        yield Topology(node=node, client=client_ns, prefix=prefix, bridge_nf=has_bridge_nf)
    finally:
        for proc in servers:
            proc.kill()
            proc.wait(timeout=10)
        for ns in namespaces:
            sh("ip", "netns", "del", ns, check=False)


def client(ns: str, host: str, port: int, n: int, proto: str = "tcp") -> list[list]:
    out = nsx(ns, sys.executable, "-c", CLIENT_SCRIPT, host, str(port), str(n), proto).stdout
    return json.loads(out)


def replies(results: list[list]) -> Counter:
    return Counter(r[0].split()[0] for r in results)


def service(name: str, ip: str, *, node_port: int | None = None, affinity: bool = False,
            etp: str = "Cluster") -> dict:
    ports = [{"name": "http", "port": 80, "protocol": "TCP"}, {"name": "dns", "port": 53, "protocol": "UDP"}]
    if node_port:
        ports[0]["nodePort"] = node_port
    spec = {"type": "NodePort" if node_port else "ClusterIP", "clusterIP": ip, "clusterIPs": [ip], "ports": ports}
    if node_port:
        spec["externalTrafficPolicy"] = etp
    if affinity:
        spec["sessionAffinity"] = "ClientIP"
        spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": 300}}
    return {"metadata": {"namespace": "t", "name": name}, "spec": spec}


def slice_for(name: str, pods: list[str], *, node_of: dict[str, str] | None = None, ready=True) -> dict:
    return {
        "metadata": {"namespace": "t", "name": f"{name}-abc", "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "dns", "port": 5353, "protocol": "UDP"}],
        "endpoints": [{"addresses": [PODS[p]], "conditions": {"ready": ready},
                       "nodeName": (node_of or {}).get(p, NODE_NAME)} for p in pods],
    }




UDP_FROM = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[3])))
s.settimeout(2)
s.sendto(b"ping", (sys.argv[1], int(sys.argv[2])))
try:
    print(s.recv(200).decode().strip())
except OSError as exc:
    print("ERR " + type(exc).__name__)
"""

CLEAN_CONNTRACK = r"""
import asyncio, base64, pickle, sys
from pyproxy.conntrack import ConntrackCleaner
services, endpoints = pickle.loads(base64.b64decode(sys.argv[1]))
print(asyncio.run(ConntrackCleaner().clean(services, endpoints)))
"""


def udp_from(ns: str, host: str, port: int, source_port: int) -> str:
    """One UDP request from a fixed source port (so every call is the same conntrack flow); the reply."""
    return nsx(ns, sys.executable, "-c", UDP_FROM, host, str(port), str(source_port)).stdout.strip()


def clean_conntrack(ns: str, services: dict, endpoints: dict) -> int:
    """Run pyproxy's conntrack clean-up inside `ns` for this desired state; how many entries it deleted."""
    import base64
    import pickle
    state = base64.b64encode(pickle.dumps((services, endpoints))).decode()
    return int(nsx(ns, sys.executable, "-c", CLEAN_CONNTRACK, state).stdout.strip())


def check_cluster_ip_spreads(client_ns: str, ip: str, pod_ns: str | None) -> None:
    """TCP connections to `ip`:80 reach all three pods, UDP to :53 reaches some; so does a pod (if given)."""
    results = client(client_ns, ip, 80, 60)
    counts = replies(results)
    assert set(counts) == {"p1", "p2", "p3"}, results
    assert all(c >= 5 for c in counts.values()), counts
    udp = replies(client(client_ns, ip, 53, 30, "udp"))
    assert set(udp) <= {"p1", "p2", "p3"} and len(udp) >= 2, udp
    if pod_ns:  # a pod reaching the ClusterIP needs br_netfilter for the reply path
        assert set(replies(client(pod_ns, ip, 80, 20))) <= {"p1", "p2", "p3"}


def check_udp_flow_moves_once_conntrack_is_cleaned(node: str, client_ns: str, source_port: int, program) -> None:
    """`program(services, slices, changed)` syncs the mode under test (changed None: a full sync)."""
    from pyproxy.model import endpoints_from_slices, services_from_api

    dns = service("dns", "10.232.0.80")
    program([dns], [slice_for("dns", ["p1"])], None)
    assert udp_from(client_ns, "10.232.0.80", 53, source_port).startswith("p1 ")
    program([dns], [slice_for("dns", ["p2"])], {("t", "dns")})
    # The flow's conntrack entry still points at p1: the new rules are not consulted for it...
    assert udp_from(client_ns, "10.232.0.80", 53, source_port).startswith("p1 ")
    ports = {sp.key: sp for sp in services_from_api(dns)}
    assert clean_conntrack(node, ports, endpoints_from_slices([slice_for("dns", ["p2"])])) >= 1
    # ...until pyproxy's clean-up deletes it; then the same flow reaches p2.
    assert udp_from(client_ns, "10.232.0.80", 53, source_port).startswith("p2 ")
