"""pyproxy.nftables: the objects and `nft -f` text upstream's nftables proxier would write (no kernel)."""

from __future__ import annotations

import dataclasses

import json
import subprocess

import pytest

from pyproxy import nftables as nft
from pyproxy.backend import BackendUnavailable, NodeContext, SyncFailed
from pyproxy.model import Endpoint, ServicePort

# Upstream's proxier_test.go uses node IP 192.168.0.2 and cluster CIDR 10.0.0.0/8.
NODE = NodeContext(node_name="node1", node_ips=("192.168.0.2",), cluster_cidr="10.0.0.0/8")


def sp(name="svc1", ns="ns1", port_name="p80", port=80, proto="TCP", **kw) -> ServicePort:
    kw.setdefault("cluster_ips", ("172.30.0.41",))
    return ServicePort(namespace=ns, name=name, port_name=port_name, protocol=proto, port=port, **kw)


def ep(ip, port=80, node="node1", **kw) -> Endpoint:
    return Endpoint(ip=ip, port=port, node_name=node, **kw)


def test_names_match_upstream_hashes():
    # Expected names are from upstream's nftables proxier_test.go.
    assert nft.service_chain(sp()) == "service-ULMVA6XW-ns1/svc1/tcp/p80"
    assert nft.endpoint_chain(sp(), ep("10.180.0.1")) == "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
    s2, s4, s5 = sp(name="svc2", ns="ns2"), sp(name="svc4", ns="ns4"), sp(name="svc5", ns="ns5")
    assert nft.external_chain(s2) == "external-42NFTM6N-ns2/svc2/tcp/p80"
    assert nft.endpoint_chain(s4, ep("10.180.0.5")) == "endpoint-5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80"
    assert nft.firewall_chain(s5) == "firewall-HVFWP5L3-ns5/svc5/tcp/p80"
    assert nft.affinity_set(s5, ep("10.180.0.3")) == "affinity-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80"
    assert nft.local_chain(s5).startswith("local-HVFWP5L3-")
    # IPv6 colons become dots, as upstream does.
    assert nft.endpoint_chain(sp(), ep("fd00:10:180::1")).endswith("__fd00.10.180..1/80")
    # Names never exceed nft's limit.
    long = sp(name="s" * 63, ns="n" * 63, port_name="p" * 63)
    assert len(nft.endpoint_chain(long, ep("10.180.0.1"))) <= 256


def test_basic_cluster_ip_matches_upstream():
    r = nft.render_port(sp(), [ep("10.180.0.1")], NODE)
    svc = "service-ULMVA6XW-ns1/svc1/tcp/p80"
    # As v1.36 without affinity: DNAT in the service chain, no endpoint chain; the mark is set
    # inline (no jump to re-validate when endpoints change); hairpin through @hairpin-connections.
    assert r.chains == {
        svc: ["ip daddr 172.30.0.41 tcp dport 80 ip saddr != 10.0.0.0/8 mark set mark or 0x4000",
              "meta l4proto tcp dnat to 10.180.0.1:80"],
    }
    assert r.elements == {
        ("cluster-ips", "172.30.0.41"): "",
        ("service-ips", "172.30.0.41 . tcp . 80"): f" : goto {svc}",
        ("hairpin-connections", "10.180.0.1 . 10.180.0.1 . tcp . 80"): "",
    }
    assert r.affinity == {}
    # Only endpoints on this node can reach themselves through this node's rules.
    assert not any(k[0] == "hairpin-connections" for k in nft.render_port(sp(), [ep("10.180.0.1", node="node2")],
                                                                          NODE).elements)


def test_random_pick_is_a_chain_of_plain_rules_with_equal_odds():
    eps = [ep(f"10.180.0.{i}") for i in (1, 2, 3)]
    r = nft.render_port(sp(), eps, NODE)
    assert r.chains[nft.service_chain(sp())][1:] == [
        "numgen random mod 3 == 0 meta l4proto tcp dnat to 10.180.0.1:80",
        "numgen random mod 2 == 0 meta l4proto tcp dnat to 10.180.0.2:80",
        "meta l4proto tcp dnat to 10.180.0.3:80",
    ]
    text = nft.full_transaction({sp().key: r}, NODE, None)
    assert "vmap {" not in text  # no anonymous verdict maps per service


def test_no_endpoints_rejects_and_writes_no_chain():
    r = nft.render_port(sp(node_port=3001), [], NODE)
    assert r.chains == {}
    assert r.elements == {
        ("cluster-ips", "172.30.0.41"): "",
        ("no-endpoint-services", "172.30.0.41 . tcp . 80"): ' comment "ns1/svc1:p80" : goto reject-chain',
        ("no-endpoint-nodeports", "tcp . 3001"): ' comment "ns1/svc1:p80" : goto reject-chain',
    }
    # Not ready and not serving-terminating: no endpoint either.
    assert nft.render_port(sp(), [ep("10.180.0.1", ready=False, serving=False)], NODE).chains == {}


def test_serving_terminating_fallback():
    eps = [ep("10.180.0.1", ready=False, serving=True, terminating=True), ep("10.180.0.2", ready=False, serving=False)]
    r = nft.render_port(sp(), eps, NODE)
    assert r.chains[nft.service_chain(sp())][1:] == ["meta l4proto tcp dnat to 10.180.0.1:80"]


def test_external_traffic_policy_local_matches_upstream():
    s2 = sp(name="svc2", ns="ns2", cluster_ips=("172.30.0.42",), node_port=3001, external_ips=("192.168.99.22",),
            load_balancer_ips=("1.2.3.4",), external_traffic_policy="Local")
    # The only endpoint is on another node: external traffic is dropped, pods and the node short-circuit.
    r = nft.render_port(s2, [ep("10.180.0.2", node="node2")], NODE)
    svc, ext = "service-42NFTM6N-ns2/svc2/tcp/p80", "external-42NFTM6N-ns2/svc2/tcp/p80"
    assert r.chains[ext] == [
        f'ip saddr 10.0.0.0/8 goto {svc} comment "short-circuit pod traffic"',
        'fib saddr type local jump mark-for-masquerade comment "masquerade local traffic"',
        f'fib saddr type local goto {svc} comment "short-circuit local traffic"',
    ]
    assert r.elements[("service-ips", "192.168.99.22 . tcp . 80")] == f" : goto {ext}"
    assert r.elements[("service-ips", "1.2.3.4 . tcp . 80")] == f" : goto {ext}"
    assert r.elements[("service-nodeports", "tcp . 3001")] == f" : goto {ext}"
    assert r.elements[("no-endpoint-nodeports", "tcp . 3001")] == ' comment "ns2/svc2:p80" : drop'
    assert r.elements[("no-endpoint-services", "1.2.3.4 . tcp . 80")] == ' comment "ns2/svc2:p80" : drop'
    assert r.elements[("no-endpoint-services", "192.168.99.22 . tcp . 80")] == ' comment "ns2/svc2:p80" : drop'
    # With a local endpoint the external chain ends in the local policy chain, and no drop.
    r = nft.render_port(s2, [ep("10.180.0.2", node="node2"), ep("10.180.0.9")], NODE)
    local = nft.local_chain(s2)
    assert r.chains[ext][-1] == f"goto {local}"
    assert r.chains[local] == ["meta l4proto tcp dnat to 10.180.0.9:80"]
    assert not any(k[0].startswith("no-endpoint") for k in r.elements)


def test_external_traffic_policy_cluster_masquerades():
    s3 = sp(name="svc3", ns="ns3", cluster_ips=("172.30.0.43",), node_port=3003)
    r = nft.render_port(s3, [ep("10.180.0.3")], NODE)
    assert r.chains["external-4AT6LBPK-ns3/svc3/tcp/p80"] == [
        "jump mark-for-masquerade", "goto service-4AT6LBPK-ns3/svc3/tcp/p80"]


def test_internal_traffic_policy_local_without_local_endpoints_drops():
    s = sp(internal_traffic_policy="Local")
    r = nft.render_port(s, [ep("10.180.0.1", node="node2")], NODE)
    assert r.chains == {}
    assert r.elements[("no-endpoint-services", "172.30.0.41 . tcp . 80")] == ' comment "ns1/svc1:p80" : drop'
    r = nft.render_port(s, [ep("10.180.0.1", node="node2"), ep("10.180.0.2")], NODE)
    assert r.elements[("service-ips", "172.30.0.41 . tcp . 80")] == f" : goto {nft.local_chain(s)}"
    assert r.chains[nft.local_chain(s)][1:] == ["meta l4proto tcp dnat to 10.180.0.2:80"]


def test_load_balancer_source_ranges_and_affinity_match_upstream():
    s5 = sp(name="svc5", ns="ns5", cluster_ips=("172.30.0.45",), node_port=3002, load_balancer_ips=("5.6.7.8",),
            load_balancer_source_ranges=("203.0.113.0/25",), session_affinity="ClientIP")
    r = nft.render_port(s5, [ep("10.180.0.3")], NODE)
    svc, fw = "service-HVFWP5L3-ns5/svc5/tcp/p80", "firewall-HVFWP5L3-ns5/svc5/tcp/p80"
    epc, aff = "endpoint-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80", "affinity-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80"
    assert r.chains[fw] == ["ip saddr != { 203.0.113.0/25 } drop"]
    assert r.elements[("firewall-ips", "5.6.7.8 . tcp . 80")] == f' comment "ns5/svc5:p80" : goto {fw}'
    assert r.chains[svc][1:] == [f"ip saddr @{aff} goto {epc}", f"goto {epc}"]
    assert r.chains[epc] == [f"update @{aff} {{ ip saddr }}", "meta l4proto tcp dnat to 10.180.0.3:80"]
    assert r.affinity == {aff: 10800}
    # A source range holding the node IP also admits the LB IP itself (hairpin via a local VIP).
    r = nft.render_port(dataclasses.replace(s5, load_balancer_source_ranges=("192.168.0.0/24",)),
                        [ep("10.180.0.3")], NODE)
    assert r.chains[fw] == ["ip saddr != { 192.168.0.0/24, 5.6.7.8 } drop"]


def test_masquerade_all_and_no_cluster_cidr():
    r = nft.render_port(sp(), [ep("10.180.0.1")], NodeContext(node_name="node1", masquerade_all=True))
    assert r.chains[nft.service_chain(sp())][0] == "ip daddr 172.30.0.41 tcp dport 80 mark set mark or 0x4000"
    r = nft.render_port(sp(), [ep("10.180.0.1")], NodeContext(node_name="node1"))
    assert r.chains[nft.service_chain(sp())] == ["meta l4proto tcp dnat to 10.180.0.1:80"]


def test_ipv6_is_skipped_quietly():
    assert nft.render_port(sp(cluster_ips=("fd00::1",)), [ep("fd00:10::1")], NODE) is None
    s = sp(cluster_ips=("fd00::1", "172.30.0.41"), external_ips=("fd00::2",), node_port=3001)
    r = nft.render_port(s, [ep("fd00:10::1"), ep("10.180.0.1")], NODE)
    assert "fd00" not in repr(r)


def test_udp_and_sctp():
    r = nft.render_port(sp(proto="UDP", port=53), [ep("10.180.0.1", 5353)], NODE)
    assert ("service-ips", "172.30.0.41 . udp . 53") in r.elements
    assert "meta l4proto udp dnat to 10.180.0.1:5353" in r.chains[nft.service_chain(sp(proto="UDP"))]
    r = nft.render_port(sp(proto="SCTP"), [ep("10.180.0.1")], NODE)
    assert r.chains[nft.service_chain(sp(proto="SCTP"))][0].startswith("ip daddr 172.30.0.41 sctp dport 80 ")


def test_base_layout_and_full_transaction():
    text = nft.full_transaction({sp().key: nft.render_port(sp(), [ep("10.180.0.1")], NODE)}, NODE, None)
    lines = text.splitlines()
    # Atomic replacement: make sure the table exists, drop it, build it again, all in one transaction.
    assert lines[:3] == ["add table ip kube-proxy", "delete table ip kube-proxy",
                         'add table ip kube-proxy { comment "rules for kube-proxy" ; }']
    for chain, hook, prio in (("filter-prerouting", "prerouting", -110), ("filter-output-post-dnat", "output", -90),
                              ("nat-prerouting", "prerouting", -100), ("nat-postrouting", "postrouting", 100)):
        kind = chain.split("-")[0]
        assert f"add chain ip kube-proxy {chain} {{ type {kind} hook {hook} priority {prio} ; }}" in lines
    for rule in ("filter-input ct state new jump nodeport-endpoints-check",
                 "filter-forward ct state new jump cluster-ips-check",
                 "nat-prerouting jump services",
                 "mark-for-masquerade mark set mark or 0x4000",
                 "masquerading mark and 0x4000 == 0 return",
                 "masquerading masquerade fully-random",
                 "services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports",
                 "service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services",
                 "reject-chain reject"):
        assert f"add rule ip kube-proxy {rule}" in lines, rule
    assert "add chain ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80" in lines
    assert ("add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; "
            'comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; elements = { 172.30.0.41 . tcp . 80 : '
            "goto service-ULMVA6XW-ns1/svc1/tcp/p80 } ; }") in lines
    # Every chain is declared before any rule points at it.
    first_fill = min(i for i, line in enumerate(lines) if line.startswith("add chain") and "{ " in line
                     and "type " not in line and "comment" not in line)
    last_decl = max(i for i, line in enumerate(lines) if line.startswith("add chain") and "{" not in line)
    assert last_decl < first_fill
    assert "nodeport-ips" not in text


def test_nodeport_addresses():
    node = NodeContext(node_name="node1", node_ips=("192.168.0.2",), nodeport_addresses=("192.168.0.0/24",))
    text = nft.full_transaction({}, node, nft.nodeport_ips(node.nodeport_addresses, node.node_ips,
                                                           ["127.0.0.1", "192.168.0.2", "10.1.1.1", "192.168.0.7"]))
    assert "add element ip kube-proxy nodeport-ips { 192.168.0.2, 192.168.0.7 }" in text
    assert ("add rule ip kube-proxy services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports"
            in text)
    assert "fib daddr type local" not in text
    assert nft.nodeport_ips(("primary",), ("192.168.0.2", "fd00::2"), ["10.1.1.1"]) == ["192.168.0.2"]
    assert nft.nodeport_ips((), ("192.168.0.2",), []) is None


def test_affinity_entries_survive_a_full_sync():
    s = sp(session_affinity="ClientIP", affinity_timeout=300)
    r = nft.render_port(s, [ep("10.180.0.1")], NODE)
    aff = nft.affinity_set(s, ep("10.180.0.1"))
    text = nft.full_transaction({s.key: r}, NODE, None, {aff: [("10.0.0.5", 120), ("10.0.0.6", 900)],
                                                         "affinity-gone": [("10.0.0.7", 10)]})
    assert f"add element ip kube-proxy {aff} {{ 10.0.0.5 expires 120s, 10.0.0.6 expires 300s }}" in text
    assert "affinity-gone" not in text


def test_partial_transaction_orders_references_before_deletes():
    t = "ip kube-proxy"
    # With affinity, endpoints have chains: the old one is emptied and deleted only after the service
    # chain that points at it is flushed; a new one is declared before the rules that jump to it.
    s = sp(session_affinity="ClientIP")
    old = nft.render_port(s, [ep("10.180.0.1"), ep("10.180.0.2")], NODE)
    new = nft.render_port(s, [ep("10.180.0.2"), ep("10.180.0.3")], NODE)
    lines = nft.partial_transaction([old], [new]).splitlines()
    svc = nft.service_chain(s)
    gone, kept, added = (nft.endpoint_chain(s, ep(f"10.180.0.{i}")) for i in (1, 2, 3))
    at = {line: i for i, line in enumerate(lines)}
    assert at[f"flush chain {t} {svc}"] < at[f"flush chain {t} {gone}"] < at[f"delete chain {t} {gone}"]
    assert at[f"add chain {t} {added}"] < next(i for i, line in enumerate(lines) if line.startswith(
        f"add chain {t} {svc} {{"))
    assert not any(line.split()[4] == kept for line in lines if line.split()[1] == "chain")  # untouched
    assert f"delete set {t} {nft.affinity_set(s, ep('10.180.0.1'))}" in lines
    # Without affinity an endpoint change rewrites the service chain alone (and the hairpin set).
    s = sp()
    old = nft.render_port(s, [ep("10.180.0.1"), ep("10.180.0.2")], NODE)
    new = nft.render_port(s, [ep("10.180.0.2"), ep("10.180.0.3")], NODE)
    lines = nft.partial_transaction([old], [new]).splitlines()
    assert {line.split()[4] for line in lines if line.split()[1] == "chain"} == {nft.service_chain(s)}
    assert not any("jump" in line or "goto" in line for line in lines)  # nothing for the kernel to re-validate
    assert nft.partial_transaction([new], [new]) == ""

    # Going to zero endpoints: the map element goes first, then the chains.
    empty = nft.render_port(s, [], NODE)
    hairpins = [ek for ek in new.elements if ek[0] == "hairpin-connections"]  # no other service needs them
    lines = nft.partial_transaction([new], [empty], counted_gone=hairpins).splitlines()
    assert lines[0] == f"delete element {t} service-ips {{ 172.30.0.41 . tcp . 80 }}"
    assert [line.split()[0:2] for line in lines[1:4]] == [["delete", "element"], ["flush", "chain"],
                                                          ["delete", "chain"]]
    assert lines[-1].startswith(f"add map {t} no-endpoint-services {{") and "goto reject-chain" in lines[-1]
    # A deleted service: everything goes, nothing is added.
    lines = nft.partial_transaction([new], []).splitlines()
    assert {line.split()[0] for line in lines} == {"delete", "flush"}
    assert "delete element ip kube-proxy cluster-ips { 172.30.0.41 }" in lines


def test_partial_transaction_recreates_affinity_set_on_new_timeout():
    e = ep("10.180.0.1")
    old = nft.render_port(sp(session_affinity="ClientIP", affinity_timeout=100), [e], NODE)
    new = nft.render_port(sp(session_affinity="ClientIP", affinity_timeout=200), [e], NODE)
    lines = nft.partial_transaction([old], [new]).splitlines()
    aff, epc, svc = nft.affinity_set(sp(), e), nft.endpoint_chain(sp(), e), nft.service_chain(sp())
    # Chains using the set are emptied before it is deleted and refilled after it is recreated.
    order = [f"flush chain ip kube-proxy {svc}", f"flush chain ip kube-proxy {epc}", f"delete set ip kube-proxy {aff}",
             f"add set ip kube-proxy {aff} {{ type ipv4_addr ; flags dynamic,timeout ; timeout 200s ; }}"]
    assert lines[:4] == order
    assert {line.split()[4] for line in lines[4:]} == {svc, epc}


def test_dedupe_gives_a_key_to_one_service():
    a = nft.render_port(sp(name="a", external_ips=("1.2.3.4",)), [ep("10.180.0.1")], NODE)
    b = nft.render_port(sp(name="b", cluster_ips=("172.30.0.99",), external_ips=("1.2.3.4",)), [ep("10.180.0.2")],
                        NODE)
    owners = nft.dedupe({("ns1", "a", "p80"): a, ("ns1", "b", "p80"): b})
    assert owners[("service-ips", "1.2.3.4 . tcp . 80")] == ("ns1", "a")
    assert ("service-ips", "1.2.3.4 . tcp . 80") not in b.elements


class FakeNft(nft.NftablesBackend):
    """Records every command instead of running it; `fail` makes the next nft -f fail."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.calls: list[tuple[tuple[str, ...], str | None]] = []
        self.fail = False
        self.missing = False

    def run(self, *argv, input=None, check=True):
        if self.missing:
            raise FileNotFoundError(2, "No such file or directory", argv[0])
        self.calls.append((argv, input))
        rc = 1 if self.fail else 0
        stdout = '{"nftables": []}' if argv[:2] == ("nft", "-j") else ""
        if argv[0] == "ip":
            stdout = json.dumps([{"ifname": "lo", "addr_info": [{"local": "127.0.0.1"}]},
                                 {"ifname": "eth0", "addr_info": [{"local": "192.168.0.2"}, {"local": "10.9.9.9"}]}])
        return subprocess.CompletedProcess(argv, rc, stdout, "Error: Could not process rule: No such file or directory"
                                           if rc else "")


def _state(eps_by_name):
    services, endpoints = {}, {}
    for i, (name, ips) in enumerate(eps_by_name.items()):
        s = sp(name=name, cluster_ips=(f"172.30.0.{i + 1}",))
        services[s.key] = s
        endpoints[s.key] = [ep(ip) for ip in ips]
    return services, endpoints


def test_backend_full_then_partial_then_failure():
    b = FakeNft(NODE)
    services, endpoints = _state({"a": ["10.180.0.1"], "b": ["10.180.0.2"]})
    assert b.sync(services, endpoints, {("ns1", "a")}) is True  # the first sync is always full
    full_text = b.calls[-1][1]
    assert full_text.startswith("add table ip kube-proxy\ndelete table ip kube-proxy\n")

    endpoints[("ns1", "a", "p80")] = [ep("10.180.0.9")]
    endpoints[("ns1", "b", "p80")] = [ep("10.180.0.8")]  # changed too, but not named: not touched
    assert b.sync(services, endpoints, {("ns1", "a")}) is False
    text = b.calls[-1][1]
    assert "/a/" in text and "/b/" not in text and "delete table" not in text

    b.fail = True
    with pytest.raises(SyncFailed, match="No such file"):
        b.sync(services, endpoints, {("ns1", "b")})
    b.fail = False
    assert b.sync(services, endpoints, {("ns1", "b")}) is True  # after a failure: full
    assert b.sync(services, endpoints, set()) is False
    n = len(b.calls)
    assert b.sync(services, endpoints, {("ns1", "a")}) is False and len(b.calls) == n  # nothing changed: no nft run


def test_hairpin_elements_shared_by_two_services_stay_while_one_needs_them(caplog):
    b = FakeNft(NODE)
    services, endpoints = _state({"a": ["10.180.0.1"], "b": ["10.180.0.1"]})  # two services, one pod
    b.sync(services, endpoints, None)
    assert "already used by" not in caplog.text  # sharing a pod is not a conflict
    element = "10.180.0.1 . 10.180.0.1 . tcp . 80"
    del services[("ns1", "b", "p80")], endpoints[("ns1", "b", "p80")]
    b.sync(services, endpoints, {("ns1", "b")})
    assert element not in b.calls[-1][1]  # a still needs it: not deleted
    del services[("ns1", "a", "p80")], endpoints[("ns1", "a", "p80")]
    b.sync(services, endpoints, {("ns1", "a")})
    assert f"delete element ip kube-proxy hairpin-connections {{ {element} }}" in b.calls[-1][1]


def test_backend_check_and_cleanup():
    b = FakeNft(NODE)
    b.check()
    argv, text = b.calls[-1]
    assert argv == ("nft", "-c", "-f", "-") and "dnat to" in text
    b.fail = True
    with pytest.raises(BackendUnavailable, match="kernel refused"):
        b.check()
    assert b.cleanup() is False
    b.fail = False
    assert b.cleanup() is True
    assert b.calls[-1][0] == ("nft", "delete", "table", "ip", "kube-proxy")
    b.missing = True
    with pytest.raises(BackendUnavailable, match="needs the nft tool"):
        b.check()
    assert b.cleanup() is False


def test_backend_nodeport_addresses_use_local_addresses():
    node = NodeContext(node_name="node1", node_ips=("192.168.0.2",), nodeport_addresses=("192.168.0.0/16",))
    b = FakeNft(node)
    b.sync({}, {}, None)
    assert "add element ip kube-proxy nodeport-ips { 192.168.0.2 }" in b.calls[-1][1]


def test_dual_stack_cluster_cidr_uses_its_ipv4_part():
    node = NodeContext(node_name="node1", cluster_cidr="fd00:10::/56,10.0.0.0/8")
    r = nft.render_port(sp(), [ep("10.180.0.1")], node)
    assert r.chains[nft.service_chain(sp())][0].endswith("ip saddr != 10.0.0.0/8 mark set mark or 0x4000")
