"""pyproxy's conntrack cleanup against a real conntrack table, with real UDP flows, in namespaces we create.

A client namespace (10.234.1.2) talks UDP to a node namespace (10.234.1.1) whose
iptables DNAT rules send service traffic to "pods" — addresses on the node's
loopback (10.234.2.11-13), enough for the kernel to track and confirm the flows.
Each flow uses its own client source port, which picks the DNAT rule, so we know
which endpoint every entry points at. Then the desired state changes and the
cleaner runs inside the node namespace; the entries are read back with pyroute2.
Nothing is written to, or sent in, the host's own namespace.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap

import pytest

from tests.integration.proxytopo import link_client, nsx, sh

pytestmark = pytest.mark.integration

PREFIX = f"pyproxy-c{os.getpid() % 100000}"
NODE, CLIENT = f"{PREFIX}-node", f"{PREFIX}-client"
NODE_IP, CLIENT_IP = "10.234.1.1", "10.234.1.2"
P1, P2, P3 = "10.234.2.11", "10.234.2.12", "10.234.2.13"
DNS_IP, LONELY_IP, NODE_PORT = "10.234.100.10", "10.234.100.20", 30053

# client source port -> (destination, destination port, the pod its DNAT rule picks or None)
FLOWS = {
    40001: (DNS_IP, 53, P1),  # cluster IP to p1, which stops serving: deleted
    40002: (DNS_IP, 53, P2),  # cluster IP to p2, still serving: kept
    40003: (NODE_IP, NODE_PORT, P1),  # NodePort to p1: deleted
    40004: (NODE_IP, NODE_PORT, P2),  # NodePort to p2: kept
    40005: (LONELY_IP, 53, None),  # service without endpoints, not NATed; gets its first endpoint: deleted
    40006: (NODE_IP, 9999, None),  # not a service: kept
}

SEND = r"""
import socket, sys
src, flows = sys.argv[1], sys.argv[2:]
for flow in flows:
    sport, dst, dport = flow.split(":")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((src, int(sport)))
    s.sendto(b"ping", (dst, int(dport)))
    s.close()
"""

LIST = r"""
import json, socket
from pyroute2 import Conntrack
from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple
out = []
with Conntrack() as ct:
    for e in ct.dump_entries(tuple_orig=NFCTAttrTuple(proto=socket.IPPROTO_UDP)):
        o, r = e.tuple_orig, e.tuple_reply
        out.append([o.saddr, o.sport, o.daddr, o.dport, r.saddr, r.sport])
print(json.dumps(out))
"""

CLEAN = textwrap.dedent(r"""
    import asyncio, json, sys
    from nodeagent import logs
    from pyproxy.conntrack import ConntrackCleaner
    from pyproxy.model import Endpoint, ServicePort
    logs.setup()
    state = json.loads(sys.argv[1])
    services = {tuple(s["key"]): ServicePort(**{**s["svc"], "cluster_ips": tuple(s["svc"]["cluster_ips"])})
                for s in state["services"]}
    endpoints = {tuple(e["key"]): [Endpoint(**ep) for ep in e["endpoints"]] for e in state["endpoints"]}
    cleaner = ConntrackCleaner()
    print(json.dumps({"deleted": asyncio.run(cleaner.clean(services, endpoints)), "errors": cleaner.errors}))
""")


@pytest.fixture(scope="module")
def netns():
    try:
        for ns in (NODE, CLIENT):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        link_client(NODE, CLIENT, NODE_IP, CLIENT_IP)
        # The pods, and the address of a service nothing answers for yet: local, so flows get confirmed.
        for ip in (P1, P2, P3, LONELY_IP):
            sh("ip", "-n", NODE, "addr", "add", f"{ip}/32", "dev", "lo")
        for sport, (dst, dport, pod) in FLOWS.items():
            if pod:
                nsx(NODE, "iptables", "-t", "nat", "-A", "PREROUTING", "-p", "udp", "-d", dst, "--dport", str(dport),
                    "--sport", str(sport), "-j", "DNAT", "--to-destination", f"{pod}:5353")
        yield
    finally:
        for ns in (NODE, CLIENT):
            sh("ip", "netns", "del", ns, check=False)


def entries() -> dict[int, list]:
    rows = json.loads(nsx(NODE, sys.executable, "-c", LIST).stdout)
    return {row[1]: row for row in rows if row[0] == CLIENT_IP}


def service(name: str, ip: str, node_port: int = 0) -> dict:
    return {"key": ["t", name, "dns"], "svc": {"namespace": "t", "name": name, "port_name": "dns", "protocol": "UDP",
                                               "port": 53, "cluster_ips": [ip], "node_port": node_port}}


def endpoints(name: str, *pods: str) -> dict:
    return {"key": ["t", name, "dns"], "endpoints": [{"ip": p, "port": 5353} for p in pods]}


def test_stale_udp_flows_are_deleted_and_the_rest_stay(netns):
    nsx(CLIENT, sys.executable, "-c", SEND, CLIENT_IP, *(f"{s}:{d}:{p}" for s, (d, p, _) in FLOWS.items()))
    before = entries()
    assert set(before) == set(FLOWS), before
    for sport, (dst, dport, pod) in FLOWS.items():  # the kernel tracked what we meant it to
        assert before[sport][2:4] == [dst, dport]
        assert before[sport][4:] == ([pod, 5353] if pod else [dst, dport])

    # p1 is gone from "dns"; "lonely" got its first endpoint.
    state = {"services": [service("dns", DNS_IP, NODE_PORT), service("lonely", LONELY_IP)],
             "endpoints": [endpoints("dns", P2), endpoints("lonely", P3)]}
    result = nsx(NODE, sys.executable, "-c", CLEAN, json.dumps(state))
    assert json.loads(result.stdout) == {"deleted": 3, "errors": 0}, result.stderr
    assert "Deleted stale conntrack entries" in result.stderr

    after = entries()
    assert set(after) == {40002, 40004, 40006}, after
    assert after == {s: before[s] for s in (40002, 40004, 40006)}

    # Nothing stale is left: a second run deletes nothing.
    again = nsx(NODE, sys.executable, "-c", CLEAN, json.dumps(state))
    assert json.loads(again.stdout) == {"deleted": 0, "errors": 0}
    assert set(entries()) == {40002, 40004, 40006}
