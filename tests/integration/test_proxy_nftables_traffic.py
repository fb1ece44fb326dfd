"""pyproxy's nftables mode against a real kernel table and real traffic (topology: proxytopo).

Everything runs in namespaces the topology creates (and always deletes); nothing is
written to the host's own ruleset.
"""

from __future__ import annotations

import json
import os
from collections import Counter

import pytest

from pyproxy import nftables as nft
from pyproxy.backend import NodeContext, SyncFailed
from pyproxy.model import endpoints_from_slices, services_from_api
from tests.integration.proxytopo import (BRIDGE_IP, CLIENT_IP, CLUSTER_CIDR, NODE_IP, NODE_NAME, check_cluster_ip_spreads,
                                         check_udp_flow_moves_once_conntrack_is_cleaned, client, nsx, replies,
                                         service, slice_for, topology)

pytestmark = pytest.mark.integration

PREFIX = f"pyproxy-n{os.getpid() % 100000}"
NODE, CLIENT = f"{PREFIX}-node", f"{PREFIX}-client"
CONTEXT = NodeContext(node_name=NODE_NAME, node_ips=(NODE_IP,), cluster_cidr=CLUSTER_CIDR)


@pytest.fixture(scope="module")
def topo():
    with topology(PREFIX) as t:
        yield t


@pytest.fixture
def backend(topo):
    """A fresh backend for the node namespace (its first sync is a full one)."""
    return nft.NftablesBackend(CONTEXT, netns=NODE)


def state(services: list[dict], slices: list[dict]):
    ports = {sp.key: sp for s in services for sp in services_from_api(s)}
    return ports, endpoints_from_slices(slices)


def program(b: nft.NftablesBackend, services: list[dict], slices: list[dict], changed=None) -> bool:
    return b.sync(*state(services, slices), changed)


def listing() -> str:
    return nsx(NODE, "nft", "list", "table", "ip", "kube-proxy").stdout


def table_state() -> tuple[dict, dict, dict]:
    """The table as data, independent of handles, creation order and element order.

    Elements of affinity sets (client IPs with a running timeout) are left out.
    """
    data = json.loads(nsx(NODE, "nft", "-j", "list", "table", "ip", "kube-proxy").stdout)["nftables"]
    chains, rules, sets = {}, {}, {}
    for obj in data:
        [(kind, body)] = obj.items()
        if kind == "chain":
            chains[body["name"]] = tuple(body.get(k) for k in ("type", "hook", "prio", "policy"))
        elif kind == "rule":
            rules.setdefault(body["chain"], []).append(json.dumps(body["expr"], sort_keys=True)
                                                       + body.get("comment", ""))
        elif kind in ("set", "map"):
            elems = [] if body["name"].startswith("affinity-") else body.get("elem", [])
            sets[body["name"]] = (kind, json.dumps(body.get("type")), body.get("map"), tuple(body.get("flags", ())),
                                  body.get("timeout"), sorted(json.dumps(e, sort_keys=True) for e in elems))
    return chains, rules, sets


def lb_service(name: str, ip: str, ranges: list[str], **kw) -> dict:
    s = service(name, ip, **kw)
    s["spec"].update(type="LoadBalancer", loadBalancerSourceRanges=ranges,
                     externalIPs=[ip.replace("10.232.0.", "10.232.1.")])
    s["status"] = {"loadBalancer": {"ingress": [{"ip": ip.replace("10.232.0.", "10.232.2.")}]}}
    return s


def test_check_passes(backend):
    backend.check()


def test_cluster_ip_spreads_then_follows_partial_syncs(topo, backend):
    web = service("web", "10.232.0.10")
    assert program(backend, [web], [slice_for("web", ["p1", "p2", "p3"])]) is True
    check_cluster_ip_spreads(CLIENT, "10.232.0.10", topo.pod("p3") if topo.bridge_nf else None)

    assert program(backend, [web], [slice_for("web", ["p2"])], changed={("t", "web")}) is False
    assert replies(client(CLIENT, "10.232.0.10", 80, 20)) == Counter({"p2": 20})
    # Not-ready endpoints get no traffic.
    not_ready = slice_for("web", ["p3"], ready=False)
    not_ready["metadata"]["name"] = "web-def"
    assert program(backend, [web], [slice_for("web", ["p1"]), not_ready], changed={("t", "web")}) is False
    assert replies(client(CLIENT, "10.232.0.10", 80, 20)) == Counter({"p1": 20})
    assert replies(client(CLIENT, "10.232.0.10", 53, 10, "udp")) == Counter({"p1": 10})


def test_service_without_endpoints_is_rejected_quickly(backend):
    program(backend, [service("empty", "10.232.0.20")], [])
    results = client(CLIENT, "10.232.0.20", 80, 3)
    for text, elapsed in results:
        assert text == "ERR ConnectionRefusedError", results
        assert elapsed < 1.0, results
    assert '10.232.0.20 . tcp . 80 comment "t/empty:http" : goto reject-chain' in listing()
    # An endpoint appears (partial sync): traffic flows; it goes away again: rejected again.
    program(backend, [service("empty", "10.232.0.20")], [slice_for("empty", ["p3"])], changed={("t", "empty")})
    assert replies(client(CLIENT, "10.232.0.20", 80, 5)) == Counter({"p3": 5})
    program(backend, [service("empty", "10.232.0.20")], [], changed={("t", "empty")})
    assert client(CLIENT, "10.232.0.20", 80, 1)[0][0] == "ERR ConnectionRefusedError"


def test_nodeport_on_node_ip_is_masqueraded(backend):
    program(backend, [service("np", "10.232.0.30", node_port=30080)], [slice_for("np", ["p1", "p2", "p3"])])
    counts = replies(client(CLIENT, NODE_IP, 30080, 45))
    assert set(counts) == {"p1", "p2", "p3"}, counts
    # External traffic is masqueraded: the pod sees the node's bridge address, not the client.
    assert {r[0].split()[1] for r in client(CLIENT, NODE_IP, 30080, 5)} == {BRIDGE_IP}
    # From the node itself, on its own IP.
    assert set(replies(client(NODE, NODE_IP, 30080, 10))) <= {"p1", "p2", "p3"}
    # nftables mode has no localhost NodePorts (as upstream).
    assert client(NODE, "127.0.0.1", 30080, 1)[0][0].startswith("ERR")


def test_external_traffic_policy_local(backend):
    # p1 and p2 run on this node, p3 elsewhere: external traffic only reaches local endpoints.
    nodes = {"p1": NODE_NAME, "p2": NODE_NAME, "p3": "node-b"}
    svc = service("local", "10.232.0.31", node_port=30081, etp="Local")
    program(backend, [svc], [slice_for("local", ["p1", "p2", "p3"], node_of=nodes)])
    counts = replies(client(CLIENT, NODE_IP, 30081, 30))
    assert set(counts) == {"p1", "p2"}, counts
    # ...and keep the client's source address.
    assert {r[0].split()[1] for r in client(CLIENT, NODE_IP, 30081, 5)} == {CLIENT_IP}
    # The ClusterIP still uses every endpoint.
    assert set(replies(client(CLIENT, "10.232.0.31", 80, 45))) == {"p1", "p2", "p3"}
    # No local endpoint left: the NodePort drops (no reject: other nodes may still serve it).
    program(backend, [svc], [slice_for("local", ["p3"], node_of=nodes)], changed={("t", "local")})
    assert client(CLIENT, NODE_IP, 30081, 1)[0][0] == "ERR TimeoutError"
    assert 'tcp . 30081 comment "t/local:http" : drop' in listing()
    assert replies(client(CLIENT, "10.232.0.31", 80, 5)) == Counter({"p3": 5})


def test_internal_traffic_policy_local(backend):
    svc = service("itp", "10.232.0.32")
    svc["spec"]["internalTrafficPolicy"] = "Local"
    nodes = {"p1": NODE_NAME, "p2": "node-b", "p3": "node-b"}
    program(backend, [svc], [slice_for("itp", ["p1", "p2", "p3"], node_of=nodes)])
    assert replies(client(CLIENT, "10.232.0.32", 80, 10)) == Counter({"p1": 10})
    program(backend, [svc], [slice_for("itp", ["p2", "p3"], node_of=nodes)], changed={("t", "itp")})
    assert client(CLIENT, "10.232.0.32", 80, 1)[0][0] == "ERR TimeoutError"  # dropped, as upstream


def test_hairpin(topo, backend):
    if not topo.bridge_nf:
        pytest.skip("br_netfilter is not available (no /proc/sys/net/bridge/bridge-nf-call-iptables in the "
                    "node namespace): bridged traffic bypasses nftables, so hairpin cannot be tested")
    program(backend, [service("self", "10.232.0.40")], [slice_for("self", ["p1"])])
    results = client(topo.pod("p1"), "10.232.0.40", 80, 5)
    # p1 reaches itself through its service, masqueraded to the bridge address so the reply returns.
    assert [r[0] for r in results] == [f"p1 {BRIDGE_IP}"] * 5, results


def test_client_ip_affinity_sticks_also_across_a_full_sync(backend):
    svcs, slices = [service("sticky", "10.232.0.50", affinity=True)], [slice_for("sticky", ["p1", "p2", "p3"])]
    program(backend, svcs, slices)
    counts = replies(client(CLIENT, "10.232.0.50", 80, 30))
    assert len(counts) == 1 and sum(counts.values()) == 30, counts
    [pod] = counts
    udp = replies(client(CLIENT, "10.232.0.50", 53, 10, "udp"))
    assert len(udp) == 1, udp
    text = listing()
    assert "timeout 5m" in text and f"{CLIENT_IP} " in text  # the affinity set remembers the client
    # A full sync rebuilds the table but carries the affinity entries over.
    assert program(backend, svcs, slices) is True
    assert f"{CLIENT_IP} " in listing()
    assert replies(client(CLIENT, "10.232.0.50", 80, 10)) == Counter({pod: 10})


def test_external_ip_and_load_balancer_source_ranges(topo, backend):
    allowed = lb_service("allowed", "10.232.0.70", ["10.233.0.0/24"])
    denied = lb_service("denied", "10.232.0.71", ["10.231.0.0/16"])
    program(backend, [allowed, denied], [slice_for("allowed", ["p1", "p2"]), slice_for("denied", ["p3"])])
    assert set(replies(client(CLIENT, "10.232.1.70", 80, 30))) == {"p1", "p2"}  # externalIP
    assert set(replies(client(CLIENT, "10.232.2.70", 80, 30))) == {"p1", "p2"}  # LB IP, client in range
    assert replies(client(CLIENT, "10.232.1.71", 80, 3)) == Counter({"p3": 3})  # externalIPs are not filtered
    blocked = client(CLIENT, "10.232.2.71", 80, 1)  # LB IP, client outside the source ranges: dropped
    assert blocked[0][0] == "ERR TimeoutError", blocked
    # A pod is inside the range of "denied": it gets through (masqueraded, so no br_netfilter needed).
    assert replies(client(topo.pod("p1"), "10.232.2.71", 80, 3)) == Counter({"p3": 3})
    text = listing()
    assert "10.232.2.71 . tcp . 80 comment \"t/denied:http\" : goto firewall-" in text
    assert "ip saddr != 10.231.0.0/16 drop" in text
    # Widening the ranges (partial sync) lets the client in.
    denied["spec"]["loadBalancerSourceRanges"] = ["10.231.0.0/16", "10.233.0.2/32"]
    program(backend, [allowed, denied], [slice_for("allowed", ["p1", "p2"]), slice_for("denied", ["p3"])],
            changed={("t", "denied")})
    assert replies(client(CLIENT, "10.232.2.71", 80, 3)) == Counter({"p3": 3})


def test_deleting_a_service_removes_all_it_had(backend):
    keep = service("keep", "10.232.0.60")
    gone = lb_service("gone", "10.232.0.61", ["10.233.0.0/24"], node_port=30082, affinity=True)
    slices = [slice_for("keep", ["p1"]), slice_for("gone", ["p2", "p3"])]
    program(backend, [keep, gone], slices)
    before = listing()
    for needle in ("service-", "external-", "firewall-", "endpoint-", "affinity-"):
        assert any(needle in line and "t/gone/" in line for line in before.splitlines()), needle
    assert "10.232.0.61" in before and "30082" in before
    assert len(replies(client(CLIENT, "10.232.0.61", 80, 5))) == 1  # ClientIP affinity: one of p2, p3

    assert program(backend, [keep], [slice_for("keep", ["p1"])], changed={("t", "gone")}) is False
    after = listing()
    for needle in ("t/gone", "10.232.0.61", "10.232.1.61", "10.232.2.61", "30082"):
        assert needle not in after, needle
    assert replies(client(CLIENT, "10.232.0.60", 80, 5)) == Counter({"p1": 5})
    # Gone: nothing catches its IP any more, so the connection goes nowhere.
    assert client(CLIENT, "10.232.0.61", 80, 1)[0][0].startswith("ERR")
    # Exactly what a full sync of the remaining service writes.
    keep_state = table_state()
    assert nft.NftablesBackend(CONTEXT, netns=NODE).sync(*state([keep], [slice_for("keep", ["p1"])]), None)
    assert table_state() == keep_state


def test_partial_and_full_sync_give_the_same_table(backend):
    a = [service("web", "10.232.0.10"), service("np", "10.232.0.30", node_port=30080),
         service("sticky", "10.232.0.50", affinity=True), lb_service("lb", "10.232.0.70", ["10.233.0.0/24"]),
         service("local", "10.232.0.31", node_port=30081, etp="Local")]
    a_slices = [slice_for("web", ["p1", "p2", "p3"]), slice_for("np", ["p1"]), slice_for("sticky", ["p2", "p3"]),
                slice_for("lb", ["p1"]), slice_for("local", ["p1", "p3"], node_of={"p3": "node-b"})]
    assert program(backend, a, a_slices) is True

    sticky = service("sticky", "10.232.0.50", affinity=True)
    sticky["spec"]["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"] = 60  # the affinity sets are recreated
    b = [service("web", "10.232.0.10"), sticky, lb_service("lb", "10.232.0.70", ["10.233.0.0/25", "10.231.0.0/16"]),
         service("local", "10.232.0.31", node_port=30081, etp="Local"), service("fresh", "10.232.0.80")]
    b_slices = [slice_for("web", ["p2"]), slice_for("sticky", ["p3"]), slice_for("lb", ["p1", "p2"]),
                slice_for("local", ["p3"], node_of={"p3": "node-b"}), slice_for("fresh", ["p1"])]
    changed = {("t", n) for n in ("web", "np", "sticky", "lb", "local", "fresh")}
    assert program(backend, b, b_slices, changed=changed) is False
    partial = table_state()
    assert replies(client(CLIENT, "10.232.0.80", 80, 3)) == Counter({"p1": 3})
    assert replies(client(CLIENT, "10.232.0.50", 80, 3)) == Counter({"p3": 3})

    assert program(nft.NftablesBackend(CONTEXT, netns=NODE), b, b_slices) is True
    assert table_state() == partial


class InjectingBackend(nft.NftablesBackend):
    """Adds a command the kernel refuses to every transaction while `broken` is set."""
    broken = False

    def run(self, *argv, input=None, check=True):
        if self.broken and argv[:3] == ("nft", "-f", "-"):
            input += "add rule ip kube-proxy services jump no-such-chain\n"
        return super().run(*argv, input=input, check=check)


def test_failed_transaction_leaves_the_table_and_forces_a_full_sync(topo):
    b = InjectingBackend(CONTEXT, netns=NODE)
    web = service("web", "10.232.0.10")
    program(b, [web], [slice_for("web", ["p1"])])
    before = table_state()
    b.broken = True
    with pytest.raises(SyncFailed, match="no-such-chain|No such file"):
        program(b, [web], [slice_for("web", ["p2"])], changed={("t", "web")})
    assert table_state() == before  # nothing half-applied
    assert replies(client(CLIENT, "10.232.0.10", 80, 5)) == Counter({"p1": 5})
    b.broken = False
    assert program(b, [web], [slice_for("web", ["p2"])], changed={("t", "web")}) is True  # full, despite `changed`
    assert replies(client(CLIENT, "10.232.0.10", 80, 5)) == Counter({"p2": 5})
    assert program(b, [web], [slice_for("web", ["p3"])], changed={("t", "web")}) is False


def test_cleanup_removes_the_table(backend):
    program(backend, [service("web", "10.232.0.10")], [slice_for("web", ["p1"])])
    assert backend.cleanup() is True
    assert nsx(NODE, "nft", "list", "table", "ip", "kube-proxy", check=False).returncode != 0
    assert client(CLIENT, "10.232.0.10", 80, 1)[0][0].startswith("ERR")
    assert backend.cleanup() is False
    # On a namespace that never had the table.
    assert nft.NftablesBackend(CONTEXT, netns=CLIENT).cleanup() is False
    # After a cleanup the next sync is a full one, even if asked for a partial one.
    assert program(backend, [service("web", "10.232.0.10")], [slice_for("web", ["p1"])],
                   changed={("t", "web")}) is True
    assert replies(client(CLIENT, "10.232.0.10", 80, 2)) == Counter({"p1": 2})


def test_full_sync_replaces_a_table_left_by_someone_else(backend):
    """A table left by an earlier process (or upstream kube-proxy) is replaced wholesale."""
    nsx(NODE, "nft", "add", "table", "ip", "kube-proxy")
    nsx(NODE, "nft", "add", "chain", "ip", "kube-proxy", "service-LEFTOVER-x/y/tcp/p")
    program(backend, [service("web", "10.232.0.10")], [slice_for("web", ["p2"])])
    assert "LEFTOVER" not in listing()
    assert replies(client(CLIENT, "10.232.0.10", 80, 3)) == Counter({"p2": 3})


def test_udp_flow_moves_to_a_new_endpoint_once_conntrack_is_cleaned(backend):
    check_udp_flow_moves_once_conntrack_is_cleaned(
        NODE, CLIENT, 41001, lambda services, slices, changed: program(backend, services, slices, changed))
