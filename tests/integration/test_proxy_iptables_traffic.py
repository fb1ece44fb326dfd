"""pyproxy's iptables mode against real kernel tables and real traffic (topology: proxytopo).

Every test runs twice: with the nft backend of iptables and with the legacy one.
"""

from __future__ import annotations

import os
import re
from collections import Counter

import pytest

from pyproxy import iptables as ipt
from pyproxy.backend import NodeContext
from pyproxy.model import endpoints_from_slices, services_from_api
from tests.integration.proxytopo import (BRIDGE_IP, CLIENT_IP, NODE_IP, NODE_NAME, PODS, check_cluster_ip_spreads,
                                         check_udp_flow_moves_once_conntrack_is_cleaned, client, nsx, replies,
                                         service, slice_for, topology)

pytestmark = pytest.mark.integration

PREFIX = f"pyproxy-t{os.getpid() % 100000}"
NODE, CLIENT = f"{PREFIX}-node", f"{PREFIX}-client"
CONTEXT = NodeContext(node_name=NODE_NAME, node_ips=(NODE_IP,), cluster_cidr="10.231.0.0/16")
STATE: dict = {}


@pytest.fixture(scope="module", params=["nft", "legacy"])
def topo(request):
    with topology(PREFIX) as t:
        STATE["variant"] = request.param
        STATE["backend"] = ipt.IptablesBackend(CONTEXT, netns=NODE, variant=request.param)
        yield {"bridge_nf": t.bridge_nf}


def program(services: list[dict], slices: list[dict], changed=None) -> bool:
    """Sync these objects into the node namespace: full, or partial for the `changed` service names."""
    ports = {sp.key: sp for s in services for sp in services_from_api(s)}
    return STATE["backend"].sync(ports, endpoints_from_slices(slices), changed)


def iptables(*argv: str, check: bool = True):
    return nsx(NODE, f"iptables-{STATE['variant']}", *argv, check=check)


def saved(*argv: str) -> str:
    return nsx(NODE, f"iptables-{STATE['variant']}-save", *argv).stdout


def test_cluster_ip_spreads_then_follows_endpoint_changes(topo):
    web = service("web", "10.232.0.10")
    program([web], [slice_for("web", ["p1", "p2", "p3"])])
    check_cluster_ip_spreads(CLIENT, "10.232.0.10", f"{PREFIX}-p3" if topo["bridge_nf"] else None)

    program([web], [slice_for("web", ["p2"])])
    assert replies(client(CLIENT, "10.232.0.10", 80, 20)) == Counter({"p2": 20})
    # Not-ready endpoints get no traffic.
    program([web], [slice_for("web", ["p1"]), slice_for("web", ["p3"], ready=False) | {
        "metadata": {"namespace": "t", "name": "web-def", "labels": {"kubernetes.io/service-name": "web"}}}])
    assert replies(client(CLIENT, "10.232.0.10", 80, 20)) == Counter({"p1": 20})


def test_service_without_endpoints_is_rejected_quickly(topo):
    program([service("empty", "10.232.0.20")], [])
    results = client(CLIENT, "10.232.0.20", 80, 3)
    for text, elapsed in results:
        assert text == "ERR ConnectionRefusedError", results
        assert elapsed < 1.0, results
    assert "empty:http has no endpoints" in saved()


def test_nodeport_on_node_ip_and_localhost(topo):
    program([service("np", "10.232.0.30", node_port=30080)], [slice_for("np", ["p1", "p2", "p3"])])
    counts = replies(client(CLIENT, NODE_IP, 30080, 45))
    assert set(counts) == {"p1", "p2", "p3"}, counts
    # From the node itself, on its own IP and on 127.0.0.1 (route_localnet is set by apply).
    assert set(replies(client(NODE, NODE_IP, 30080, 10))) <= {"p1", "p2", "p3"}
    local = client(NODE, "127.0.0.1", 30080, 5)
    assert all(r[0].split()[0] in PODS for r in local), local
    # External traffic is masqueraded: the pod sees the node's bridge address, not the client.
    seen_from = {r[0].split()[1] for r in client(CLIENT, NODE_IP, 30080, 5)}
    assert seen_from == {BRIDGE_IP}


def test_nodeport_external_traffic_policy_local(topo):
    # p1 and p2 run on this node, p3 elsewhere: external traffic only reaches local endpoints.
    nodes = {"p1": NODE_NAME, "p2": NODE_NAME, "p3": "node-b"}
    program([service("local", "10.232.0.31", node_port=30081, etp="Local")],
            [slice_for("local", ["p1", "p2", "p3"], node_of=nodes)])
    counts = replies(client(CLIENT, NODE_IP, 30081, 30))
    assert set(counts) == {"p1", "p2"}, counts
    # ...and keep the client's source address.
    assert {r[0].split()[1] for r in client(CLIENT, NODE_IP, 30081, 5)} == {CLIENT_IP}
    # The ClusterIP still uses every endpoint.
    assert set(replies(client(CLIENT, "10.232.0.31", 80, 45))) == {"p1", "p2", "p3"}


def test_hairpin(topo):
    if not topo["bridge_nf"]:
        pytest.skip("br_netfilter is not available (no /proc/sys/net/bridge/bridge-nf-call-iptables in the "
                    "node namespace): bridged traffic bypasses iptables, so hairpin cannot be tested")
    program([service("self", "10.232.0.40")], [slice_for("self", ["p1"])])
    results = client(f"{PREFIX}-p1", "10.232.0.40", 80, 5)
    # p1 reaches itself through its service, masqueraded to the bridge address so the reply returns.
    assert [r[0] for r in results] == [f"p1 {BRIDGE_IP}"] * 5, results


def test_client_ip_affinity_sticks(topo):
    program([service("sticky", "10.232.0.50", affinity=True)], [slice_for("sticky", ["p1", "p2", "p3"])])
    counts = replies(client(CLIENT, "10.232.0.50", 80, 30))
    assert len(counts) == 1 and sum(counts.values()) == 30, counts
    udp = replies(client(CLIENT, "10.232.0.50", 53, 10, "udp"))
    assert len(udp) == 1, udp


def test_deleting_a_service_removes_its_chains(topo):
    keep, gone = service("keep", "10.232.0.60"), service("gone", "10.232.0.61", node_port=30082)
    program([keep, gone], [slice_for("keep", ["p1"]), slice_for("gone", ["p2", "p3"])])
    gone_ports = services_from_api(gone)
    gone_chains = {ipt.svc_chain(sp) for sp in gone_ports} | {ipt.ext_chain(sp) for sp in gone_ports if sp.node_port}
    eps = endpoints_from_slices([slice_for("gone", ["p2", "p3"])])
    gone_chains |= {ipt.sep_chain(sp, ep) for sp in gone_ports for ep in eps[sp.key]}
    before = saved()
    assert all(f":{c} " in before for c in gone_chains), gone_chains
    assert set(replies(client(CLIENT, "10.232.0.61", 80, 30))) == {"p2", "p3"}

    program([keep], [slice_for("keep", ["p1"])])
    after = saved()
    for chain in gone_chains:
        assert chain not in after
    assert "t/gone" not in after
    assert replies(client(CLIENT, "10.232.0.60", 80, 5)) == Counter({"p1": 5})
    # Gone: nothing catches its IP any more, so the connection goes nowhere (no pod owns it).
    assert client(CLIENT, "10.232.0.61", 80, 1)[0][0].startswith("ERR")
    # Only the service chains we keep remain, and the jumps from the built-ins exist once each.
    chains = ipt.existing_chains(saved("-t", "nat"))
    assert {c for c in chains if ipt.is_service_chain(c)} == {
        c for sp in services_from_api(keep) for c in
        (ipt.svc_chain(sp), *(ipt.sep_chain(sp, ep) for ep in endpoints_from_slices(
            [slice_for("keep", ["p1"])])[sp.key]))}
    assert after.count("-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES") == 1


def test_resync_is_idempotent(topo):
    svcs, slices = [service("web", "10.232.0.10")], [slice_for("web", ["p1", "p2"])]
    program(svcs, slices)
    first = _rules_only(saved())
    program(svcs, slices)
    assert _rules_only(saved()) == first


def _rules_only(text: str) -> list[str]:
    """iptables-save without its comment lines and packet counters."""
    return [re.sub(r"\[\d+:\d+\]", "", line) for line in text.splitlines() if not line.startswith("#")]


def test_external_ip_and_load_balancer_source_ranges(topo):
    def lb(name: str, ip: str, ranges: list[str]) -> dict:
        s = service(name, ip, node_port=None)
        s["spec"].update(type="LoadBalancer", loadBalancerSourceRanges=ranges,
                         externalIPs=[ip.replace("10.232.0.", "10.232.1.")])
        s["status"] = {"loadBalancer": {"ingress": [{"ip": ip.replace("10.232.0.", "10.232.2.")}]}}
        return s
    allowed, denied = lb("allowed", "10.232.0.70", ["10.233.0.0/24"]), lb("denied", "10.232.0.71", ["10.231.0.0/16"])
    program([allowed, denied], [slice_for("allowed", ["p1", "p2"]), slice_for("denied", ["p3"])])
    assert set(replies(client(CLIENT, "10.232.1.70", 80, 30))) == {"p1", "p2"}  # externalIP
    assert set(replies(client(CLIENT, "10.232.2.70", 80, 30))) == {"p1", "p2"}  # LB IP, client in range
    assert replies(client(CLIENT, "10.232.1.71", 80, 3)) == Counter({"p3": 3})  # externalIPs are not filtered
    blocked = client(CLIENT, "10.232.2.71", 80, 1)  # LB IP, client outside the source ranges: dropped
    assert blocked[0][0] == "ERR TimeoutError", blocked
    # ...and it was KUBE-PROXY-FIREWALL that dropped it.
    [dropped] = [line for line in saved("-c", "-t", "filter").splitlines()
                 if "t/denied:http traffic not accepted by" in line]
    assert not dropped.startswith("[0:"), dropped


def test_other_rules_in_builtin_chains_survive(topo):
    """--noflush: our restore never flushes PREROUTING/POSTROUTING/FORWARD rules that others own."""
    foreign = [("nat", "POSTROUTING", "-s", "10.231.99.0/24", "-m", "comment", "--comment", "someone-else",
                "-j", "RETURN"),
               ("filter", "FORWARD", "-s", "10.231.99.0/24", "-m", "comment", "--comment", "someone-else",
                "-j", "ACCEPT")]
    for table, chain, *rule in foreign:
        iptables("-w", "-t", table, "-A", chain, *rule)
    program([service("web", "10.232.0.10")], [slice_for("web", ["p1"])])
    program([service("web", "10.232.0.10")], [slice_for("web", ["p2"])])
    for table, chain, *rule in foreign:
        assert iptables("-w", "-t", table, "-C", chain, *rule, check=False).returncode == 0
    assert replies(client(CLIENT, "10.232.0.10", 80, 5)) == Counter({"p2": 5})


def test_partial_syncs_follow_endpoint_changes_and_deletions(topo):
    web, other = service("web", "10.232.0.10"), service("other", "10.232.0.11")
    program([web, other], [slice_for("web", ["p1"]), slice_for("other", ["p3"])])
    assert program([web, other], [slice_for("web", ["p2"]), slice_for("other", ["p3"])], {("t", "web")}) is False
    assert replies(client(CLIENT, "10.232.0.10", 80, 10)) == Counter({"p2": 10})
    assert ":KUBE-SERVICES" not in STATE["backend"].last_text  # only web's own chains were rewritten
    # web loses its endpoints: rejected, its chains deleted; other keeps working.
    assert program([web, other], [slice_for("other", ["p3"])], {("t", "web")}) is False
    assert client(CLIENT, "10.232.0.10", 80, 1)[0][0] == "ERR ConnectionRefusedError"
    assert replies(client(CLIENT, "10.232.0.11", 80, 5)) == Counter({"p3": 5})
    web_chains = {c for c in ipt.existing_chains(saved("-t", "nat")) if ipt.is_service_chain(c)}
    assert web_chains == {ipt.svc_chain(sp) for sp in services_from_api(other)} | {
        ipt.sep_chain(sp, e) for sp in services_from_api(other)
        for e in endpoints_from_slices([slice_for("other", ["p3"])])[sp.key]}
    # ...and the state a partial sync reached is the one a full sync writes.
    partial = _rules_only(saved())
    program([web, other], [slice_for("other", ["p3"])])
    assert _rules_only(saved()) == partial


def test_cleanup_removes_everything(topo):
    program([service("web", "10.232.0.10", node_port=30090)], [slice_for("web", ["p1"])])
    assert STATE["backend"].cleanup() is True
    text = saved()
    assert "KUBE-" not in text, text
    assert STATE["backend"].cleanup() is False


def test_udp_flow_moves_to_a_new_endpoint_once_conntrack_is_cleaned(topo):
    check_udp_flow_moves_once_conntrack_is_cleaned(NODE, CLIENT, 41000, program)
