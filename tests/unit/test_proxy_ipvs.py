"""pyproxy.ipvs: planning, diffing and syncing against a double of our kernel layer."""

from __future__ import annotations

import contextlib
import copy

import pytest

from pyproxy import ipvs
from pyproxy.backend import BackendUnavailable, NodeContext, SyncFailed
from pyproxy.ipvs import RealServer, VirtualServer
from pyproxy.model import Endpoint, ServicePort

NODE = NodeContext("n1", ("10.233.0.1",), cluster_cidr="10.231.0.0/16")
NODE_IP = "10.233.0.1"


class FakeKernel:
    """Records what `IpvsBackend` asks of the kernel and keeps the resulting state in memory."""

    def __init__(self, node_addresses=(NODE_IP,), ipvs_error=None, ipset_error=None):
        self.vs: dict = {}
        self.rs: dict = {}
        self.device: str | None = None
        self.addresses: set[str] = set()
        self.sets: dict[str, set[str]] = {}
        self.chains: dict[str, set[str]] = {"nat": set(), "filter": set()}
        self.jumps: list = []
        self.rules: str | None = None
        self.sysctls: dict = {}
        self.node_addrs = set(node_addresses)
        self.ipvs_problem, self.ipset_problem = ipvs_error, ipset_error
        self.calls: list[tuple] = []
        self.fail: set[str] = set()  # method names whose next call raises (once)

    def _call(self, name, *args):
        self.calls.append((name, *args))
        if name in self.fail:
            self.fail.discard(name)
            raise OSError(f"{name} refused")

    def changes(self) -> list[tuple]:
        return [c for c in self.calls if c[0].startswith(("add_", "update_", "delete_", "iptables_restore"))]

    def state(self):
        return copy.deepcopy((self.vs, self.rs, self.addresses, self.sets, self.rules))

    @contextlib.contextmanager
    def session(self):
        yield self

    def ipvs_error(self):
        return self.ipvs_problem

    def ipset_error(self):
        return self.ipset_problem

    def probe_scheduler(self, scheduler):
        self._call("probe_scheduler", scheduler)

    def node_addresses(self, exclude):
        return set(self.node_addrs)

    # IPVS
    def list_virtual_servers(self):
        return list(self.vs.values())

    def list_real_servers(self, vs):
        return list(self.rs[vs.key].values())

    def add_virtual_server(self, vs):
        self._call("add_virtual_server", vs)
        assert vs.key not in self.vs
        self.vs[vs.key] = vs
        self.rs[vs.key] = {}

    def update_virtual_server(self, vs):
        self._call("update_virtual_server", vs)
        self.vs[vs.key] = vs

    def delete_virtual_server(self, vs):
        self._call("delete_virtual_server", vs)
        del self.vs[vs.key]
        del self.rs[vs.key]

    def add_real_server(self, vs, rs):
        self._call("add_real_server", vs.key, rs)
        assert rs.key not in self.rs[vs.key]
        self.rs[vs.key][rs.key] = rs

    def update_real_server(self, vs, rs):
        self._call("update_real_server", vs.key, rs)
        old = self.rs[vs.key][rs.key]
        self.rs[vs.key][rs.key] = RealServer(rs.ip, rs.port, rs.weight, old.active, old.inactive)

    def delete_real_server(self, vs, rs):
        self._call("delete_real_server", vs.key, rs)
        del self.rs[vs.key][rs.key]

    # link and addresses
    def has_device(self, name):
        return self.device is not None

    def ensure_device(self, name):
        if self.device:
            return "existing"
        self.device = "bridge"
        return "bridge"

    def delete_device(self, name):
        had, self.device = self.device, None
        return had is not None

    def device_addresses(self, name):
        return set(self.addresses)

    def add_address(self, name, ip):
        self._call("add_address", ip)
        assert ip not in self.addresses
        self.addresses.add(ip)

    def delete_address(self, name, ip):
        self._call("delete_address", ip)
        self.addresses.remove(ip)

    # ipsets
    def list_sets(self):
        return set(self.sets)

    def ensure_set(self, name, stype):
        self.sets.setdefault(name, set())

    def destroy_set(self, name):
        self._call("destroy_set", name)
        del self.sets[name]

    def set_entries(self, name):
        return set(self.sets[name])

    def add_entry(self, name, member):
        self._call("add_entry", name, member)
        self.sets[name].add(member)

    def delete_entry(self, name, member):
        self._call("delete_entry", name, member)
        self.sets[name].remove(member)

    # iptables
    def iptables_save(self, table):
        lines = [f":{c} - [0:0]" for c in sorted(self.chains[table])]
        lines += ["-A " + " ".join(f'"{w}"' if " " in w else w for w in j.rule())
                  for j in self.jumps if j.table == table]
        return "\n".join(lines) + "\n"

    def iptables_restore(self, text):
        self._call("iptables_restore", text)
        table = None
        for line in text.splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith(":"):
                self.chains[table].add(line[1:].split()[0])
            elif line.startswith("-X "):
                self.chains[table].discard(line[3:])
                self.jumps = [j for j in self.jumps if not (j.table == table and j.chain == line[3:])]
        if "-X " not in text:
            self.rules = text

    def ensure_jumps(self, jumps):
        for j in jumps:
            if j not in self.jumps:
                self.jumps.append(j)

    def set_sysctls(self, values):
        self.sysctls.update(values)


def sp(name="svc1", ns="ns1", port_name="p80", port=80, proto="TCP", **kw) -> ServicePort:
    kw.setdefault("cluster_ips", ("10.232.0.10",))
    return ServicePort(namespace=ns, name=name, port_name=port_name, protocol=proto, port=port, **kw)


def ep(ip, port=8080, node="n2", **kw) -> Endpoint:
    return Endpoint(ip=ip, port=port, node_name=node, **kw)


def services(*svcs):
    return {s.key: s for s in svcs}


def backend(kernel=None, node=NODE, **kw):
    kernel = kernel or FakeKernel()
    return ipvs.IpvsBackend(node, kernel=kernel, **kw), kernel


def real_servers(kernel, key):
    return {(r.ip, r.port): r.weight for r in kernel.rs[key].values()}


# --- planning ----------------------------------------------------------------------------------

def test_virtual_servers_for_cluster_ip_nodeport_external_ip_and_lb():
    s = sp(node_port=30080, external_ips=("192.0.2.7",), load_balancer_ips=("203.0.113.5",))
    b, k = backend()
    assert b.sync(services(s), {s.key: [ep("10.180.0.1"), ep("10.180.1.1")]}, None) is True
    assert set(k.vs) == {("TCP", "10.232.0.10", 80), ("TCP", "192.0.2.7", 80), ("TCP", "203.0.113.5", 80),
                         ("TCP", NODE_IP, 30080)}
    for key, vs in k.vs.items():
        assert (vs.scheduler, vs.flags, vs.timeout) == ("rr", 0, 0)
        assert real_servers(k, key) == {("10.180.0.1", 8080): 1, ("10.180.1.1", 8080): 1}
    # VIPs are bound on kube-ipvs0 (a bridge here: no dummy links); node IPs are not
    assert k.device == "bridge"
    assert k.addresses == {"10.232.0.10", "192.0.2.7", "203.0.113.5"}
    assert k.sets[ipvs.IPVS_IPS] == k.addresses
    assert k.sets[ipvs.CLUSTER_IP] == {"10.232.0.10,tcp:80"}
    assert k.sets[ipvs.EXTERNAL_IP] == {"192.0.2.7,tcp:80"}
    assert k.sets[ipvs.LOAD_BALANCER] == {"203.0.113.5,tcp:80"}
    assert k.sets[ipvs.NODE_PORT_TCP] == {"30080"}
    assert k.sets[ipvs.NO_ENDPOINTS] == set()
    assert k.sets[ipvs.LOAD_BALANCER_FW] == k.sets[ipvs.LOAD_BALANCER_LOCAL] == set()
    # the full sync prepared the rest
    assert set(k.sets) == set(ipvs.IPSETS)
    assert k.jumps == list(ipvs.JUMPS)
    assert k.sysctls["net.ipv4.vs.conntrack"] == "1"
    assert k.rules.startswith("*nat\n:KUBE-SERVICES - [0:0]")


def test_udp_sctp_and_nodeport_addresses():
    node = NodeContext("n1", (NODE_IP,), nodeport_addresses=("10.233.0.0/24",))
    u = sp(name="dns", port_name="dns", proto="UDP", port=53, cluster_ips=("10.232.0.53",), node_port=30053)
    s = sp(name="sctp", port_name="", proto="SCTP", port=99, cluster_ips=("10.232.0.99", "fd00::99"),
           node_port=30099, external_traffic_policy="Local")
    b, k = backend(FakeKernel(node_addresses=(NODE_IP, "172.16.0.1")), node=node)
    b.sync(services(u, s), {u.key: [ep("10.180.0.5", 53)], s.key: [ep("10.180.0.6", 99, node="n1")]}, None)
    # NodePorts only on the address inside --nodeport-addresses; the IPv6 cluster IP is ignored
    assert set(k.vs) == {("UDP", "10.232.0.53", 53), ("UDP", NODE_IP, 30053),
                         ("SCTP", "10.232.0.99", 99), ("SCTP", NODE_IP, 30099)}
    assert k.sets[ipvs.NODE_PORT_UDP] == {"30053"}
    assert k.sets[ipvs.NODE_PORT_SCTP] == k.sets[ipvs.NODE_PORT_LOCAL_SCTP] == {f"{NODE_IP},sctp:30099"}
    assert k.sets[ipvs.LOOP_BACK] == {"10.180.0.6,sctp:99,10.180.0.6"}  # local endpoints only


def test_external_ip_the_node_owns_is_not_bound():
    s = sp(external_ips=(NODE_IP,), port=8443)
    b, k = backend()
    b.sync(services(s), {s.key: [ep("10.180.0.1")]}, None)
    assert ("TCP", NODE_IP, 8443) in k.vs
    assert k.addresses == {"10.232.0.10"}


def test_session_affinity_is_persistence():
    s = sp(node_port=30080, session_affinity="ClientIP", affinity_timeout=600)
    b, k = backend()
    eps = {s.key: [ep("10.180.0.1")]}
    b.sync(services(s), eps, None)
    assert {(v.flags, v.timeout) for v in k.vs.values()} == {(ipvs.FLAG_PERSISTENT, 600)}
    k.calls.clear()
    b.sync(services(sp(node_port=30080)), eps, [("ns1", "svc1")])
    assert sorted(c[0] for c in k.changes()) == ["update_virtual_server"] * 2
    assert {(v.flags, v.timeout) for v in k.vs.values()} == {(0, 0)}


def test_mh_scheduler_sets_source_hash():
    b, k = backend(scheduler="mh")
    b.sync(services(sp()), {}, None)
    assert [(v.scheduler, v.flags) for v in k.vs.values()] == [("mh", ipvs.FLAG_SOURCE_HASH)]


def test_lb_source_ranges():
    s = sp(load_balancer_ips=("203.0.113.5",), load_balancer_source_ranges=("10.233.0.0/24", "198.51.100.0/24"))
    plan = ipvs.build_plan(services(s), {s.key: [ep("10.180.0.1")]}, NODE, [NODE_IP])
    assert (ipvs.LOAD_BALANCER_FW, "203.0.113.5,tcp:80") in plan.entries
    assert {e for e in plan.entries if e[0] == ipvs.LOAD_BALANCER_SOURCE_CIDR} == {
        (ipvs.LOAD_BALANCER_SOURCE_CIDR, "203.0.113.5,tcp:80,10.233.0.0/24"),
        (ipvs.LOAD_BALANCER_SOURCE_CIDR, "203.0.113.5,tcp:80,198.51.100.0/24")}
    # the node's IP is inside a range: traffic it sends to the LB IP (sourced from it) is allowed
    assert (ipvs.LOAD_BALANCER_SOURCE_IP, "203.0.113.5,tcp:80,203.0.113.5") in plan.entries
    assert "KUBE-IPVS-OUT-FILTER -s" not in plan.rules
    s2 = sp(load_balancer_ips=("203.0.113.5",), load_balancer_source_ranges=("198.51.100.0/24",))
    plan = ipvs.build_plan(services(s2), {}, NODE, [NODE_IP])
    assert not any(e[0] == ipvs.LOAD_BALANCER_SOURCE_IP for e in plan.entries)
    assert ("-A KUBE-IPVS-OUT-FILTER -s 203.0.113.5 -m ipvs --vaddr 203.0.113.5 --vproto tcp --vport 80 -j DROP"
            in plan.rules.splitlines())


def test_lb_source_range_allowing_everyone_is_no_firewall():
    s = sp(load_balancer_ips=("203.0.113.5",), load_balancer_source_ranges=("0.0.0.0/0", "10.0.0.0/8"))
    plan = ipvs.build_plan(services(s), {}, NODE, [NODE_IP])
    assert not any(name.startswith("KUBE-LOAD-BALANCER-") for name, _ in plan.entries)


def test_conflicting_virtual_server_first_service_wins():
    a = sp(name="a", external_ips=("192.0.2.7",), cluster_ips=("10.232.0.1",))
    z = sp(name="z", external_ips=("192.0.2.7",), cluster_ips=("10.232.0.2",))
    plan = ipvs.build_plan(services(a, z), {a.key: [ep("10.180.0.1")]}, NODE, [NODE_IP])
    assert plan.real_servers[("TCP", "192.0.2.7", 80)] == {("10.180.0.1", 8080)}
    # z has no endpoints, but the VIP it lost must not be rejected
    assert {m for name, m in plan.entries if name == ipvs.NO_ENDPOINTS} == {"10.232.0.2,tcp:80"}


def test_rules_masquerade_variants():
    line = "-m set --match-set KUBE-CLUSTER-IP {} "
    text = ipvs.render_rules(NODE)
    assert line.format("dst,dst") + "! -s 10.231.0.0/16 -j KUBE-MARK-MASQ" in text
    text = ipvs.render_rules(NodeContext("n1", masquerade_all=True, cluster_cidr="10.231.0.0/16"))
    assert line.format("dst,dst") + "-j KUBE-MARK-MASQ" in text
    text = ipvs.render_rules(NodeContext("n1"))
    assert line.format("src,dst") + "-j KUBE-MARK-MASQ" in text
    filt = text.split("*filter\n")[1].splitlines()
    ipvs_filter = [x for x in filt if x.startswith("-A KUBE-IPVS-FILTER ")]
    # services without endpoints are rejected first, then other ports of the VIPs
    assert "--match-set KUBE-IPVS-NO-ENDPOINTS dst,dst -j REJECT" in ipvs_filter[0]
    assert ipvs_filter[-1].endswith("--match-set KUBE-IPVS-IPS dst -j REJECT")
    assert ':KUBE-IPVS-FILTER - [0:0]' in filt and "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000" in text


def test_nodeport_addresses():
    node = NodeContext("n1", (NODE_IP,), nodeport_addresses=("primary",))
    assert ipvs.nodeport_addresses(node, [NODE_IP, "172.16.0.1", "127.0.0.1"]) == [NODE_IP]
    assert ipvs.nodeport_addresses(NODE, ["172.16.0.1", NODE_IP, "127.0.0.1"]) == [NODE_IP, "172.16.0.1"]
    node = NodeContext("n1", (NODE_IP,), nodeport_addresses=("172.16.0.0/12", "bogus"))
    assert ipvs.nodeport_addresses(node, [NODE_IP, "172.16.0.1"]) == ["172.16.0.1"]


# --- syncing: endpoints, removal, policies ------------------------------------------------------

def test_endpoint_changes_add_and_remove_real_servers_only_for_changed_service():
    a, other = sp(), sp(name="other", cluster_ips=("10.232.0.20",))
    b, k = backend()
    b.sync(services(a, other), {a.key: [ep("10.180.0.1"), ep("10.180.0.2")], other.key: [ep("10.180.0.9")]}, None)
    k.calls.clear()
    key = ("TCP", "10.232.0.10", 80)
    assert b.sync(services(a, other), {a.key: [ep("10.180.0.2"), ep("10.180.0.3")], other.key: [ep("10.180.0.9")]},
                  [("ns1", "svc1")]) is False
    assert k.changes() == [("add_real_server", key, RealServer("10.180.0.3", 8080)),
                           ("delete_real_server", key, RealServer("10.180.0.1", 8080))]
    assert real_servers(k, key) == {("10.180.0.2", 8080): 1, ("10.180.0.3", 8080): 1}


def test_graceful_removal_of_tcp_real_servers_with_connections():
    s, u = sp(), sp(name="dns", proto="UDP", port=53, cluster_ips=("10.232.0.53",))
    b, k = backend()
    eps = {s.key: [ep("10.180.0.1"), ep("10.180.0.2")], u.key: [ep("10.180.0.1", 53), ep("10.180.0.2", 53)]}
    b.sync(services(s, u), eps, None)
    tcp, udp = ("TCP", "10.232.0.10", 80), ("UDP", "10.232.0.53", 53)
    k.rs[tcp][("10.180.0.1", 8080)] = RealServer("10.180.0.1", 8080, 1, active=2)
    k.rs[udp][("10.180.0.1", 53)] = RealServer("10.180.0.1", 53, 1, active=2)
    eps = {s.key: [ep("10.180.0.2")], u.key: [ep("10.180.0.2", 53)]}
    b.sync(services(s, u), eps, [("ns1", "svc1"), ("ns1", "dns")])
    # TCP with connections: weight 0 (draining); UDP: removed at once
    assert real_servers(k, tcp) == {("10.180.0.1", 8080): 0, ("10.180.0.2", 8080): 1}
    assert real_servers(k, udp) == {("10.180.0.2", 53): 1}
    # a later sync (even one about another service) removes it once its connections are gone
    b.sync(services(s, u), eps, [])
    assert ("10.180.0.1", 8080) in k.rs[tcp]
    k.rs[tcp][("10.180.0.1", 8080)] = RealServer("10.180.0.1", 8080, 0)
    k.calls.clear()
    b.sync(services(s, u), eps, [])
    assert k.changes() == [("delete_real_server", tcp, RealServer("10.180.0.1", 8080, 0))]
    assert b._draining == {}


def test_draining_real_server_that_comes_back_gets_its_weight_again():
    s = sp()
    b, k = backend()
    b.sync(services(s), {s.key: [ep("10.180.0.1"), ep("10.180.0.2")]}, None)
    key = ("TCP", "10.232.0.10", 80)
    k.rs[key][("10.180.0.1", 8080)] = RealServer("10.180.0.1", 8080, 1, inactive=1)
    b.sync(services(s), {s.key: [ep("10.180.0.2")]}, [("ns1", "svc1")])
    assert real_servers(k, key)[("10.180.0.1", 8080)] == 0
    b.sync(services(s), {s.key: [ep("10.180.0.1"), ep("10.180.0.2")]}, [("ns1", "svc1")])
    assert real_servers(k, key) == {("10.180.0.1", 8080): 1, ("10.180.0.2", 8080): 1}
    assert b._draining == {}


def test_service_removal_removes_virtual_servers_addresses_and_set_entries():
    s = sp(node_port=30080, external_ips=("192.0.2.7",), load_balancer_ips=("203.0.113.5",),
           health_check_node_port=31000, external_traffic_policy="Local")
    keep = sp(name="keep", cluster_ips=("10.232.0.20",))
    b, k = backend()
    b.sync(services(s, keep), {s.key: [ep("10.180.0.1", node="n1")], keep.key: [ep("10.180.0.9")]}, None)
    assert len(k.vs) == 5
    k.calls.clear()
    b.sync(services(keep), {keep.key: [ep("10.180.0.9")]}, [("ns1", "svc1")])
    assert set(k.vs) == {("TCP", "10.232.0.20", 80)}
    assert k.addresses == {"10.232.0.20"}
    assert {name: members for name, members in k.sets.items() if members} == {
        ipvs.CLUSTER_IP: {"10.232.0.20,tcp:80"}, ipvs.IPVS_IPS: {"10.232.0.20"}}
    # nothing of the other service was touched, and removals come after additions
    assert not any("10.232.0.20" in str(c) for c in k.changes())
    kinds = [c[0] for c in k.changes()]
    assert kinds.count("delete_virtual_server") == 4 and "add_virtual_server" not in kinds


def test_no_endpoints_puts_every_virtual_server_in_the_reject_set():
    s = sp(node_port=30080, external_ips=("192.0.2.7",))
    b, k = backend()
    b.sync(services(s), {}, None)
    assert all(not rs for rs in k.rs.values())
    assert k.sets[ipvs.NO_ENDPOINTS] == {"10.232.0.10,tcp:80", "192.0.2.7,tcp:80", f"{NODE_IP},tcp:30080"}
    assert "-m set --match-set KUBE-IPVS-NO-ENDPOINTS dst,dst -j REJECT" in k.rules
    # endpoints arrive: real servers go in before the reject entries come out
    k.calls.clear()
    b.sync(services(s), {s.key: [ep("10.180.0.1")]}, [("ns1", "svc1")])
    assert k.sets[ipvs.NO_ENDPOINTS] == set()
    kinds = [c[0] for c in k.changes()]
    assert kinds.index("delete_entry") > max(i for i, c in enumerate(kinds) if c == "add_real_server")
    # terminating-but-serving endpoints still serve (upstream's fallback) ...
    b.sync(services(s), {s.key: [ep("10.180.0.1", ready=False, serving=True, terminating=True)]},
           [("ns1", "svc1")])
    assert k.sets[ipvs.NO_ENDPOINTS] == set()
    # ... not-ready ones do not
    b.sync(services(s), {s.key: [ep("10.180.0.1", ready=False, serving=False)]}, [("ns1", "svc1")])
    assert len(k.sets[ipvs.NO_ENDPOINTS]) == 3


def test_external_traffic_policy_local_uses_only_local_real_servers():
    s = sp(node_port=30080, load_balancer_ips=("203.0.113.5",), external_traffic_policy="Local",
           health_check_node_port=31000)
    eps = {s.key: [ep("10.180.0.1", node="n1"), ep("10.180.1.1", node="n2")]}
    b, k = backend()
    b.sync(services(s), eps, None)
    both = {("10.180.0.1", 8080): 1, ("10.180.1.1", 8080): 1}
    assert real_servers(k, ("TCP", "10.232.0.10", 80)) == both  # ClusterIP: internal policy Cluster
    assert real_servers(k, ("TCP", NODE_IP, 30080)) == {("10.180.0.1", 8080): 1}
    assert real_servers(k, ("TCP", "203.0.113.5", 80)) == {("10.180.0.1", 8080): 1}
    assert k.sets[ipvs.NODE_PORT_LOCAL_TCP] == {"30080"}
    assert k.sets[ipvs.LOAD_BALANCER_LOCAL] == {"203.0.113.5,tcp:80"}
    assert k.sets[ipvs.HEALTH_CHECK_NODE_PORT] == {"31000"}
    # no local endpoint: upstream falls back to the cluster-wide ones (kubernetes#97081)
    b.sync(services(s), {s.key: [ep("10.180.1.1", node="n2")]}, [("ns1", "svc1")])
    assert real_servers(k, ("TCP", NODE_IP, 30080)) == {("10.180.1.1", 8080): 1}


def test_internal_traffic_policy_local_without_local_endpoints_is_rejected():
    s = sp(internal_traffic_policy="Local")
    b, k = backend()
    b.sync(services(s), {s.key: [ep("10.180.1.1", node="n2")]}, None)
    assert real_servers(k, ("TCP", "10.232.0.10", 80)) == {}
    assert k.sets[ipvs.NO_ENDPOINTS] == {"10.232.0.10,tcp:80"}
    b.sync(services(s), {s.key: [ep("10.180.1.1", node="n2"), ep("10.180.0.1", node="n1")]}, [("ns1", "svc1")])
    assert real_servers(k, ("TCP", "10.232.0.10", 80)) == {("10.180.0.1", 8080): 1}


def test_shared_external_ip_stays_while_another_service_uses_it():
    a = sp(name="a", external_ips=("192.0.2.7",), port=80, cluster_ips=("10.232.0.1",))
    c = sp(name="c", external_ips=("192.0.2.7",), port=443, cluster_ips=("10.232.0.2",))
    b, k = backend()
    b.sync(services(a, c), {}, None)
    b.sync(services(c), {}, [("ns1", "a")])
    assert "192.0.2.7" in k.addresses and ("TCP", "192.0.2.7", 443) in k.vs and ("TCP", "192.0.2.7", 80) not in k.vs


# --- full syncs, failures, restarts ------------------------------------------------------------

def test_full_sync_removes_stale_objects_we_own_and_nothing_else():
    k = FakeKernel()
    foreign = VirtualServer("TCP", "192.168.50.1", 80, "wlc")  # keepalived's, say
    stale_vip = VirtualServer("TCP", "10.232.9.9", 80)  # on kube-ipvs0: ours (an earlier process)
    stale_np = VirtualServer("UDP", NODE_IP, 31999)  # its port is in our NodePort set: ours
    for vs in (foreign, stale_vip, stale_np):
        k.vs[vs.key], k.rs[vs.key] = vs, {("10.9.9.9", 80): RealServer("10.9.9.9", 80)}
    k.device, k.addresses = "dummy", {"10.232.9.9"}
    k.sets = {name: set() for name in ipvs.IPSETS}
    k.sets[ipvs.NODE_PORT_UDP] = {"31999"}
    k.sets[ipvs.IPVS_IPS] = {"10.232.9.9"}
    b, _ = backend(k)
    b.sync(services(sp()), {}, None)
    assert set(k.vs) == {foreign.key, ("TCP", "10.232.0.10", 80)}
    assert k.addresses == {"10.232.0.10"}
    assert k.sets[ipvs.NODE_PORT_UDP] == set() and k.sets[ipvs.IPVS_IPS] == {"10.232.0.10"}
    assert k.rs[foreign.key]  # untouched


def test_restart_adopts_what_is_there_without_churn():
    s = sp(node_port=30080)
    eps = {s.key: [ep("10.180.0.1")]}
    b, k = backend()
    b.sync(services(s), eps, None)
    k.calls.clear()
    again, _ = backend(k)
    assert again.sync(services(s), eps, [("ns1", "svc1")]) is True  # a new process starts with a full sync
    assert [c[0] for c in k.changes()] == ["iptables_restore"]


def test_weights_are_reset_on_full_sync():
    s = sp()
    b, k = backend()
    b.sync(services(s), {s.key: [ep("10.180.0.1")]}, None)
    key = ("TCP", "10.232.0.10", 80)
    k.rs[key][("10.180.0.1", 8080)] = RealServer("10.180.0.1", 8080, 7)
    b.sync(services(s), {s.key: [ep("10.180.0.1")]}, None)
    assert real_servers(k, key) == {("10.180.0.1", 8080): 1}


@pytest.mark.parametrize("failing", ["add_real_server", "add_entry", "iptables_restore", "delete_virtual_server",
                                     "delete_entry"])
def test_kernel_failure_raises_sync_failed_rolls_back_and_next_sync_is_full(failing):
    a, c = sp(node_port=30080), sp(name="c", cluster_ips=("10.232.0.20",))
    b, k = backend()
    b.sync(services(a, c), {a.key: [ep("10.180.0.1")], c.key: [ep("10.180.0.9")]}, None)
    before = k.state()
    k.fail.add(failing)
    new = sp(name="new", cluster_ips=("10.232.0.30",), node_port=30090)
    with pytest.raises(SyncFailed, match="refused"):
        # adds a service (additions) and drops c (removals); LB source ranges change the rules
        b.sync(services(a, new), {a.key: [ep("10.180.0.2")], new.key: [ep("10.180.0.3")]},
               [("ns1", "svc1"), ("ns1", "new"), ("ns1", "c")]) if failing != "iptables_restore" else \
            b.sync(services(a, sp(name="lb", cluster_ips=("10.232.0.40",), load_balancer_ips=("203.0.113.5",),
                                  load_balancer_source_ranges=("198.51.100.0/24",))), {}, [("ns1", "lb")])
    assert k.state() == before
    assert not k.fail  # it did fail
    assert b.sync(services(a, new), {a.key: [ep("10.180.0.2")], new.key: [ep("10.180.0.3")]}, [("ns1", "new")]) \
        is True
    assert set(k.vs) == {("TCP", "10.232.0.10", 80), ("TCP", NODE_IP, 30080), ("TCP", "10.232.0.30", 80),
                         ("TCP", NODE_IP, 30090)}
    assert b.sync(services(a, new), {a.key: [ep("10.180.0.2")], new.key: [ep("10.180.0.3")]}, []) is False


def test_node_address_change_forces_full_sync():
    s = sp(node_port=30080)
    b, k = backend()
    b.sync(services(s), {}, None)
    k.node_addrs = {NODE_IP, "10.233.1.1"}
    assert b.sync(services(s), {}, []) is True
    assert ("TCP", "10.233.1.1", 30080) in k.vs


def test_sync_without_ipvs_fails_cleanly():
    b, k = backend(FakeKernel(ipvs_error="kernel has no IP_VS support (modprobe ip_vs)"))
    with pytest.raises(SyncFailed, match="IP_VS"):
        b.sync(services(sp()), {}, None)
    assert k.calls == []


# --- check and cleanup -------------------------------------------------------------------------

def test_check_reports_missing_kernel_support():
    b, _ = backend(FakeKernel(ipvs_error="kernel has no IP_VS support (modprobe ip_vs)"))
    with pytest.raises(BackendUnavailable, match="IP_VS"):
        b.check()
    b, _ = backend(FakeKernel(ipset_error="kernel has no ip_set support (modprobe ip_set)"))
    with pytest.raises(BackendUnavailable, match="ip_set"):
        b.check()
    b, k = backend(scheduler="wrr")
    b.check()
    assert k.calls == [("probe_scheduler", "wrr")]


def _ipvs_resolvable() -> bool:
    from pyroute2.netlink.exceptions import NetlinkError
    from pyroute2.netlink.generic import GenericNetlinkSocket
    sock = GenericNetlinkSocket()
    try:
        sock.discovery("IPVS")
        return True
    except NetlinkError:
        return False
    finally:
        sock.close()


def test_check_on_this_host():
    try:
        resolvable = _ipvs_resolvable()
    except OSError as exc:
        pytest.skip(f"no generic netlink here: {exc}")
    if resolvable:
        pytest.skip("this host has IP_VS; check() would probe it in the root namespace")
    with pytest.raises(BackendUnavailable, match=r"kernel has no IP_VS support \(.*modprobe ip_vs"):
        ipvs.IpvsBackend(NODE).check()


def test_cleanup_removes_only_what_is_ours():
    s = sp(node_port=30080, load_balancer_ips=("203.0.113.5",))
    b, k = backend()
    b.sync(services(s), {s.key: [ep("10.180.0.1")]}, None)
    foreign = VirtualServer("TCP", "192.168.50.1", 80, "wlc")
    k.vs[foreign.key], k.rs[foreign.key] = foreign, {}
    k.chains["nat"] |= {"DOCKER"}
    fresh, _ = backend(k)  # cleanup works from what the kernel shows, not from memory
    assert fresh.cleanup() is True
    assert set(k.vs) == {foreign.key}
    assert k.sets == {} and k.device is None
    assert k.chains == {"nat": {"DOCKER"}, "filter": set()} and k.jumps == []
    assert fresh.cleanup() is False


def test_cleanup_without_ipvs_or_ipset_does_not_raise():
    k = FakeKernel(ipvs_error="no IP_VS", ipset_error="no ip_set")
    b, _ = backend(k)
    assert b.cleanup() is False
    k.device = "bridge"
    assert b.cleanup() is True and k.device is None


def test_cleanup_rules_keep_chains_the_iptables_mode_still_uses():
    nat = "\n".join([
        ":PREROUTING ACCEPT [0:0]", ":KUBE-SERVICES - [0:0]", ":KUBE-MARK-MASQ - [0:0]", ":KUBE-NODE-PORT - [0:0]",
        ":KUBE-LOAD-BALANCER - [0:0]", ":KUBE-SEP-ABC - [0:0]", ":KUBE-POSTROUTING - [0:0]",
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT',
        '-A KUBE-LOAD-BALANCER -j KUBE-MARK-MASQ',
        '-A KUBE-SEP-ABC -s 10.0.0.1/32 -j KUBE-MARK-MASQ',
    ])
    text = ipvs.cleanup_rules({"nat": nat, "filter": ""})
    # KUBE-MARK-MASQ is still used by an iptables-mode chain: kept; the rest goes, with the jump into it
    assert text.splitlines() == [
        "*nat", ":KUBE-SERVICES - [0:0]", ":KUBE-POSTROUTING - [0:0]", ":KUBE-NODE-PORT - [0:0]",
        ":KUBE-LOAD-BALANCER - [0:0]",
        '-D PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        "-X KUBE-SERVICES", "-X KUBE-POSTROUTING", "-X KUBE-NODE-PORT", "-X KUBE-LOAD-BALANCER", "COMMIT"]
    assert ipvs.cleanup_rules({"nat": ":PREROUTING ACCEPT [0:0]\n", "filter": ""}) == ""


def test_diff_is_pure_and_ordered():
    s = sp(node_port=30080)
    plan = ipvs.build_plan(services(s), {s.key: [ep("10.180.0.1")]}, NODE, [NODE_IP])
    changes = ipvs.diff(plan, ipvs.KernelState(), None)
    kinds = [op.kind for op in changes.first]
    assert kinds[:2] == ["add_vs", "add_rs"] and changes.last == []
    assert kinds.index("add_addr") > kinds.index("add_rs") and kinds[-1] == "add_entry"
    # applying nothing twice: a state equal to the plan diffs to nothing
    state = ipvs.KernelState(dict(plan.virtual_servers),
                             {key: {rk: RealServer(*rk) for rk in rks} for key, rks in plan.real_servers.items()},
                             set(plan.addresses), set(plan.entries))
    assert len(ipvs.diff(plan, state, None)) == 0


# --- the kernel layer's translation to and from pyroute2 (no IPVS needed) ----------------------

class _StubIPVS:
    """Stands in for pyroute2's IPVS socket: answers dumps with encoded-then-decoded messages."""

    def __init__(self, services=(), dests=()):
        self.services, self.dests, self.requests = services, dests, []

    @staticmethod
    def _msg(attr, attrs):
        from pyroute2.netlink.generic import ipvs as genl
        msg = genl.ipvsmsg()
        msg["cmd"], msg["version"] = genl.IPVS_CMD_NEW_SERVICE, 1
        msg["attrs"] = [(attr, {"attrs": attrs})]
        msg.encode()
        out = genl.ipvsmsg(msg.data)
        out.decode()
        return out

    def service(self, command, service=None):
        self.requests.append(("service", command, service.dump_nla() if service is not None else None))
        if command == "dump":
            return [self._msg("IPVS_CMD_ATTR_SERVICE", a) for a in self.services]
        return []

    def dest(self, command, service, dest=None):
        self.requests.append(("dest", command, service.dump_key(), dest.dump_nla() if dest is not None else None))
        if command == "dump":
            return [self._msg("IPVS_CMD_ATTR_DEST", a) for a in self.dests]
        return []


def test_kernel_layer_reads_and_writes_ipvs_messages():
    svc = [("IPVS_SVC_ATTR_AF", 2), ("IPVS_SVC_ATTR_PROTOCOL", 6), ("IPVS_SVC_ATTR_ADDR", "10.232.0.10"),
           ("IPVS_SVC_ATTR_PORT", 80), ("IPVS_SVC_ATTR_SCHED_NAME", "rr"),
           ("IPVS_SVC_ATTR_FLAGS", {"flags": ipvs.FLAG_PERSISTENT | ipvs.FLAG_HASHED, "mask": 0xFFFFFFFF}),
           ("IPVS_SVC_ATTR_TIMEOUT", 600), ("IPVS_SVC_ATTR_NETMASK", "255.255.255.255")]
    fwmark = [("IPVS_SVC_ATTR_AF", 2), ("IPVS_SVC_ATTR_PROTOCOL", 6), ("IPVS_SVC_ATTR_FWMARK", 7),
              ("IPVS_SVC_ATTR_SCHED_NAME", "rr")]
    dest = [("IPVS_DEST_ATTR_ADDR", "10.180.0.1"), ("IPVS_DEST_ATTR_PORT", 8080), ("IPVS_DEST_ATTR_FWD_METHOD", 0),
            ("IPVS_DEST_ATTR_WEIGHT", 0), ("IPVS_DEST_ATTR_ACTIVE_CONNS", 3), ("IPVS_DEST_ATTR_INACT_CONNS", 1),
            ("IPVS_DEST_ATTR_ADDR_FAMILY", 2)]
    k = ipvs.Kernel()
    k._ipvs = stub = _StubIPVS([svc, fwmark], [dest])
    vs = VirtualServer("TCP", "10.232.0.10", 80, "rr", ipvs.FLAG_PERSISTENT, 600)
    assert k.list_virtual_servers() == [vs]  # the hashed flag is the kernel's, fwmark services are not ours
    rs = k.list_real_servers(vs)
    assert rs == [RealServer("10.180.0.1", 8080, 0)] and (rs[0].active, rs[0].inactive) == (3, 1)
    k.add_virtual_server(vs)
    k.add_real_server(vs, RealServer("10.180.0.2", 8080))
    k.update_real_server(vs, RealServer("10.180.0.2", 8080, 0))
    _, command, sent = stub.requests[2]
    attrs = dict(sent["attrs"])
    assert command == "add" and attrs["IPVS_SVC_ATTR_FLAGS"] == {"flags": 1, "mask": 0xFFFFFFFF}
    assert (attrs["IPVS_SVC_ATTR_SCHED_NAME"], attrs["IPVS_SVC_ATTR_TIMEOUT"]) == ("rr", 600)
    _, command, key, sent = stub.requests[3]
    assert command == "add" and dict(key["attrs"])["IPVS_SVC_ATTR_ADDR"] == "10.232.0.10"
    attrs = dict(sent["attrs"])
    # masquerading (NAT) to the real server, as upstream; pyroute2's default would be direct routing
    assert (attrs["IPVS_DEST_ATTR_FWD_METHOD"], attrs["IPVS_DEST_ATTR_WEIGHT"]) == (ipvs.FWD_MASQ, 1)
    assert stub.requests[4][1] == "set" and dict(stub.requests[4][3]["attrs"])["IPVS_DEST_ATTR_WEIGHT"] == 0


def test_ipset_members_translate_both_ways():
    from pyroute2.ipset import AsyncIPSet
    from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_IPSET
    from pyroute2.netlink.nfnetlink.ipset import IPSET_CMD_ADD, ipset_msg
    encoder = AsyncIPSet.__new__(AsyncIPSet)  # only its pure entry encoder is used
    cases = [(ipvs.CLUSTER_IP, "10.232.0.10,tcp:80"), (ipvs.LOOP_BACK, "10.180.0.1,udp:53,10.180.0.1"),
             (ipvs.LOAD_BALANCER_SOURCE_CIDR, "203.0.113.5,sctp:99,10.0.0.0/8"), (ipvs.NODE_PORT_TCP, "30080"),
             (ipvs.IPVS_IPS, "10.232.0.10")]
    for name, member in cases:
        entry, etype = ipvs._member_args(ipvs.IPSETS[name][0], member)
        attrs = encoder._entry_to_data_attrs(entry, etype, "IPSET_ATTR_IPADDR_IPV4")
        msg = ipset_msg()
        msg["header"]["type"] = (NFNL_SUBSYS_IPSET << 8) | IPSET_CMD_ADD
        msg["attrs"] = [["IPSET_ATTR_DATA", {"attrs": attrs}]]
        msg.encode()
        back = ipset_msg(msg.data)
        back.decode()
        assert ipvs._member_text(back.get_attr("IPSET_ATTR_DATA")) == member, name
