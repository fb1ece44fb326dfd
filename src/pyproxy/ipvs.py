"""The IPVS mode: virtual servers via netlink, ipsets and a few iptables rules around them.

Follows upstream kube-proxy's IPVS proxier (pkg/proxy/ipvs/proxier.go, Kubernetes
v1.36): one IPVS virtual server per ClusterIP, externalIP, load-balancer IP and
NodePort-on-each-node-address × port × protocol, the service VIPs bound on the
local link ``kube-ipvs0`` so the kernel delivers them locally, and the masquerade,
firewall and access-filter decisions taken by iptables rules that match the
ipsets (KUBE-CLUSTER-IP, KUBE-NODE-PORT-TCP, ...) instead of per-service rules.

The work is split in three layers:

* planning (`build_plan`, `render_rules`) is pure: services + endpoints + the
  node's addresses → the virtual servers, real servers, kube-ipvs0 addresses,
  ipset members and iptables-restore text we want;
* diffing (`diff`) is pure too: a plan against what the kernel has now
  (`KernelState`), restricted to a `Scope` on partial syncs → an ordered list
  of `Op`s;
* `Kernel` is the only code that talks to the kernel (pyroute2's IPVS, IPSet and
  IPRoute, plus iptables-save/-restore); unit tests replace it with a double.

`IpvsBackend` ties them together and undoes the ops it applied when a later one
fails, so a failed sync leaves the kernel as it found it (best effort: IPVS has
no transactions) and the next sync is a full one.

Two things go beyond upstream, on purpose:

* services whose virtual server has no real server are put in the ipset
  KUBE-IPVS-NO-ENDPOINTS and new connections to them are REJECTed in
  KUBE-IPVS-FILTER (IPVS itself also answers ICMP port-unreachable when it
  cannot schedule; the rule makes that explicit and independent of IPVS);
* `cleanup` (and stale removal on full syncs) only deletes virtual servers we can
  prove are ours — on a kube-ipvs0 address, or recorded in one of our ipsets —
  instead of flushing every IPVS service on the host as upstream does.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import shlex
import shutil
import socket
from dataclasses import dataclass, field
from typing import Callable, Collection, Iterable, Iterator, Mapping, NamedTuple, Sequence

from pyproxy.backend import Backend, BackendUnavailable, NodeContext, PortKey, ServiceName, SyncFailed
from pyproxy.iptables import MASQ_MARK, Jump
from pyproxy.model import Endpoint, ServicePort, is_ipv4
from pyproxy.topology import categorize

log = logging.getLogger("pyproxy")

IPTABLES, IPTABLES_SAVE, IPTABLES_RESTORE = "iptables", "iptables-save", "iptables-restore"
DEVICE = "kube-ipvs0"
DEFAULT_SCHEDULER = "rr"

# iptables chains (upstream names).
KUBE_SERVICES = "KUBE-SERVICES"
KUBE_POSTROUTING = "KUBE-POSTROUTING"
KUBE_MARK_MASQ = "KUBE-MARK-MASQ"
KUBE_NODE_PORT = "KUBE-NODE-PORT"
KUBE_LOAD_BALANCER = "KUBE-LOAD-BALANCER"
KUBE_FORWARD = "KUBE-FORWARD"
KUBE_PROXY_FIREWALL = "KUBE-PROXY-FIREWALL"
KUBE_SOURCE_RANGES_FIREWALL = "KUBE-SOURCE-RANGES-FIREWALL"
KUBE_IPVS_FILTER = "KUBE-IPVS-FILTER"
KUBE_IPVS_OUT_FILTER = "KUBE-IPVS-OUT-FILTER"
NAT_CHAINS = (KUBE_SERVICES, KUBE_POSTROUTING, KUBE_NODE_PORT, KUBE_LOAD_BALANCER, KUBE_MARK_MASQ)
FILTER_CHAINS = (KUBE_FORWARD, KUBE_NODE_PORT, KUBE_PROXY_FIREWALL, KUBE_SOURCE_RANGES_FIREWALL,
                 KUBE_IPVS_FILTER, KUBE_IPVS_OUT_FILTER)
CHAINS = {"nat": NAT_CHAINS, "filter": FILTER_CHAINS}
BUILTIN_CHAINS = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")

JUMPS = (
    Jump("nat", KUBE_SERVICES, "OUTPUT", "kubernetes service portals"),
    Jump("nat", KUBE_SERVICES, "PREROUTING", "kubernetes service portals"),
    Jump("nat", KUBE_POSTROUTING, "POSTROUTING", "kubernetes postrouting rules"),
    Jump("filter", KUBE_FORWARD, "FORWARD", "kubernetes forwarding rules"),
    Jump("filter", KUBE_NODE_PORT, "INPUT", "kubernetes health check rules"),
    Jump("filter", KUBE_PROXY_FIREWALL, "INPUT", "kube-proxy firewall rules"),
    Jump("filter", KUBE_PROXY_FIREWALL, "FORWARD", "kube-proxy firewall rules"),
    Jump("filter", KUBE_IPVS_FILTER, "INPUT", "kubernetes ipvs access filter"),
    Jump("filter", KUBE_IPVS_OUT_FILTER, "OUTPUT", "kubernetes ipvs access filter"),
)

# ipsets (upstream names, types and comments), plus our KUBE-IPVS-NO-ENDPOINTS.
LOOP_BACK = "KUBE-LOOP-BACK"
CLUSTER_IP = "KUBE-CLUSTER-IP"
EXTERNAL_IP = "KUBE-EXTERNAL-IP"
EXTERNAL_IP_LOCAL = "KUBE-EXTERNAL-IP-LOCAL"
LOAD_BALANCER = "KUBE-LOAD-BALANCER"
LOAD_BALANCER_FW = "KUBE-LOAD-BALANCER-FW"
LOAD_BALANCER_LOCAL = "KUBE-LOAD-BALANCER-LOCAL"
LOAD_BALANCER_SOURCE_IP = "KUBE-LOAD-BALANCER-SOURCE-IP"
LOAD_BALANCER_SOURCE_CIDR = "KUBE-LOAD-BALANCER-SOURCE-CIDR"
NODE_PORT_TCP = "KUBE-NODE-PORT-TCP"
NODE_PORT_LOCAL_TCP = "KUBE-NODE-PORT-LOCAL-TCP"
NODE_PORT_UDP = "KUBE-NODE-PORT-UDP"
NODE_PORT_LOCAL_UDP = "KUBE-NODE-PORT-LOCAL-UDP"
NODE_PORT_SCTP = "KUBE-NODE-PORT-SCTP-HASH"
NODE_PORT_LOCAL_SCTP = "KUBE-NODE-PORT-LOCAL-SCTP-HASH"
HEALTH_CHECK_NODE_PORT = "KUBE-HEALTH-CHECK-NODE-PORT"
IPVS_IPS = "KUBE-IPVS-IPS"
NO_ENDPOINTS = "KUBE-IPVS-NO-ENDPOINTS"

HASH_IP, HASH_IP_PORT, HASH_IP_PORT_IP, HASH_IP_PORT_NET, BITMAP_PORT = (
    "hash:ip", "hash:ip,port", "hash:ip,port,ip", "hash:ip,port,net", "bitmap:port")

IPSETS: dict[str, tuple[str, str]] = {  # name -> (type, comment)
    LOOP_BACK: (HASH_IP_PORT_IP, "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose"),
    CLUSTER_IP: (HASH_IP_PORT, "Kubernetes service cluster ip + port for masquerade purpose"),
    EXTERNAL_IP: (HASH_IP_PORT, "Kubernetes service external ip + port for masquerade and filter purpose"),
    EXTERNAL_IP_LOCAL: (HASH_IP_PORT, "Kubernetes service external ip + port with externalTrafficPolicy=local"),
    LOAD_BALANCER: (HASH_IP_PORT, "Kubernetes service lb portal"),
    LOAD_BALANCER_FW: (HASH_IP_PORT, "Kubernetes service load balancer ip + port for load balancer with sourceRange"),
    LOAD_BALANCER_LOCAL: (HASH_IP_PORT,
                          "Kubernetes service load balancer ip + port with externalTrafficPolicy=local"),
    LOAD_BALANCER_SOURCE_IP: (HASH_IP_PORT_IP,
                              "Kubernetes service load balancer ip + port + source IP for packet filter purpose"),
    LOAD_BALANCER_SOURCE_CIDR: (HASH_IP_PORT_NET,
                                "Kubernetes service load balancer ip + port + source cidr for packet filter purpose"),
    NODE_PORT_TCP: (BITMAP_PORT, "Kubernetes nodeport TCP port for masquerade purpose"),
    NODE_PORT_LOCAL_TCP: (BITMAP_PORT, "Kubernetes nodeport TCP port with externalTrafficPolicy=local"),
    NODE_PORT_UDP: (BITMAP_PORT, "Kubernetes nodeport UDP port for masquerade purpose"),
    NODE_PORT_LOCAL_UDP: (BITMAP_PORT, "Kubernetes nodeport UDP port with externalTrafficPolicy=local"),
    NODE_PORT_SCTP: (HASH_IP_PORT, "Kubernetes nodeport SCTP port for masquerade purpose with type 'hash ip:port'"),
    NODE_PORT_LOCAL_SCTP: (HASH_IP_PORT,
                           "Kubernetes nodeport SCTP port with externalTrafficPolicy=local with type 'hash ip:port'"),
    HEALTH_CHECK_NODE_PORT: (BITMAP_PORT, "Kubernetes health check node port"),
    IPVS_IPS: (HASH_IP, "Addresses on the ipvs interface"),
    NO_ENDPOINTS: (HASH_IP_PORT, "Kubernetes service ip + port without endpoints, rejected"),
}
NODE_PORT_SETS = {"TCP": (NODE_PORT_TCP, NODE_PORT_LOCAL_TCP), "UDP": (NODE_PORT_UDP, NODE_PORT_LOCAL_UDP),
                  "SCTP": (NODE_PORT_SCTP, NODE_PORT_LOCAL_SCTP)}
# Sets whose "ip,proto:port" members are virtual servers we created.
_VS_SETS = (CLUSTER_IP, EXTERNAL_IP, EXTERNAL_IP_LOCAL, LOAD_BALANCER, NODE_PORT_SCTP, NODE_PORT_LOCAL_SCTP)

# IPVS service flags (include/uapi/linux/ip_vs.h; upstream's FlagPersistent, FlagHashed, FlagSourceHash).
FLAG_PERSISTENT = 0x1
FLAG_HASHED = 0x2
FLAG_SOURCE_HASH = 0x10
FWD_MASQ = 0  # IP_VS_CONN_F_MASQ: NAT to the real server, as upstream
PROTO_NUMBERS = {"TCP": socket.IPPROTO_TCP, "UDP": socket.IPPROTO_UDP, "SCTP": 132}
PROTO_NAMES = {v: k for k, v in PROTO_NUMBERS.items()}

# Sysctls upstream sets in IPVS mode; conn_reuse_mode only on kernels older than 5.9.
SYSCTLS = {
    "net.ipv4.vs.conntrack": "1",
    "net.ipv4.vs.expire_nodest_conn": "1",
    "net.ipv4.vs.expire_quiescent_template": "1",
    "net.ipv4.ip_forward": "1",
}
MODULES_HINT = "modprobe ip_vs ip_vs_rr ip_vs_wrr ip_vs_sh"
IPSET_MODULES_HINT = ("modprobe ip_set ip_set_hash_ip ip_set_hash_ipport ip_set_hash_ipportip "
                      "ip_set_hash_ipportnet ip_set_bitmap_port xt_set")
# upstream's probe virtual server for the scheduler check (TEST-NET-2, RFC 5737)
PROBE_ADDRESS, PROBE_PORT = "198.51.100.0", 20000

VSKey = tuple[str, str, int]  # (protocol, ip, port)
RSKey = tuple[str, int]  # (ip, port)
SetEntry = tuple[str, str]  # (set name, member in ipset's text form)




def _q(text: str) -> str:
    return '"' + text.replace('"', "'") + '"'


@dataclass(frozen=True)
class VirtualServer:
    protocol: str  # TCP, UDP or SCTP
    ip: str
    port: int
    scheduler: str = DEFAULT_SCHEDULER
    flags: int = 0  # FLAG_PERSISTENT, FLAG_SOURCE_HASH; never FLAG_HASHED
    timeout: int = 0  # persistence timeout, seconds

    @property
    def key(self) -> VSKey:
        return (self.protocol, self.ip, self.port)

    def __str__(self) -> str:
        return f"{self.protocol}/{self.ip}:{self.port}"


@dataclass(frozen=True)
class RealServer:
    ip: str
    port: int
    weight: int = 1
    active: int = field(default=0, compare=False)  # connection counters, as the kernel reports them
    inactive: int = field(default=0, compare=False)

    @property
    def key(self) -> RSKey:
        return (self.ip, self.port)

    def __str__(self) -> str:
        return f"{self.ip}:{self.port}"


# --- planning ---------------------------------------------------------------------------------

@dataclass
class ServicePlan:
    """What one Service (all its ports) contributes."""
    virtual_servers: dict[VSKey, VirtualServer] = field(default_factory=dict)
    real_servers: dict[VSKey, frozenset[RSKey]] = field(default_factory=dict)
    addresses: set[str] = field(default_factory=set)  # bound on kube-ipvs0
    entries: set[SetEntry] = field(default_factory=set)
    no_node_access: set[tuple[str, str, int]] = field(default_factory=set)  # (LB ip, proto, port)


@dataclass
class Plan:
    by_service: dict[ServiceName, ServicePlan]
    virtual_servers: dict[VSKey, VirtualServer]
    real_servers: dict[VSKey, frozenset[RSKey]]
    addresses: set[str]
    entries: set[SetEntry]
    rules: str


def nodeport_addresses(node: NodeContext, node_addresses: Iterable[str]) -> list[str]:
    """The addresses NodePorts answer on: the node's local IPv4 addresses (never loopback,
    as upstream's IPVS mode), narrowed by --nodeport-addresses ("primary": the node IPs)."""
    local = sorted({ip for ip in node_addresses if is_ipv4(ip) and not ipaddress.ip_address(ip).is_loopback},
                   key=ipaddress.ip_address)
    primary = [ip for ip in node.node_ips if is_ipv4(ip) and not ipaddress.ip_address(ip).is_loopback]
    if not node.nodeport_addresses:
        return local or primary
    out: list[str] = []
    for spec in node.nodeport_addresses:
        if spec == "primary":
            out.extend(ip for ip in primary if ip not in out)
            continue
        try:
            net = ipaddress.ip_network(spec, strict=False)
        except ValueError:
            log.warning("ignoring invalid nodeport address %r", spec)
            continue
        out.extend(ip for ip in local if ipaddress.ip_address(ip) in net and ip not in out)
    return out


def build_plan(services: Mapping[PortKey, ServicePort], endpoints: Mapping[PortKey, Sequence[Endpoint]],
               node: NodeContext, node_addresses: Iterable[str], scheduler: str = DEFAULT_SCHEDULER) -> Plan:
    """Everything the kernel should hold for these services (IPv4 only). Pure."""
    node_addrs = {ip for ip in node_addresses if is_ipv4(ip)}
    np_ips = nodeport_addresses(node, node_addrs)
    primary = next((ip for ip in node.node_ips if is_ipv4(ip)), None)
    by_service: dict[ServiceName, ServicePlan] = {}
    for svc in sorted(services.values(), key=lambda s: (s.namespace, s.name, s.port_name, s.protocol)):
        sp = by_service.setdefault((svc.namespace, svc.name), ServicePlan())
        _plan_port(sp, svc, endpoints.get(svc.key, ()), node, node_addrs, np_ips, primary, scheduler)
    virtual_servers: dict[VSKey, VirtualServer] = {}
    real_servers: dict[VSKey, frozenset[RSKey]] = {}
    addresses: set[str] = set()
    entries: set[SetEntry] = set()
    no_node_access: set[tuple[str, str, int]] = set()
    for name, sp in by_service.items():
        for key, vs in sp.virtual_servers.items():
            if key in virtual_servers:
                log.warning("virtual server %s of %s/%s is already used by another service; ignoring it",
                            vs, *name)
                continue
            virtual_servers[key] = vs
            real_servers[key] = sp.real_servers[key]
            if not real_servers[key]:  # nothing to schedule to: new connections are rejected
                sp.entries.add((NO_ENDPOINTS, f"{vs.ip},{vs.protocol.lower()}:{vs.port}"))
        addresses |= sp.addresses
        entries |= sp.entries
        no_node_access |= sp.no_node_access
    return Plan(by_service, virtual_servers, real_servers, addresses, entries, render_rules(node, no_node_access))


def _plan_port(sp: ServicePlan, svc: ServicePort, endpoints: Sequence[Endpoint], node: NodeContext,
               node_addrs: set[str], np_ips: list[str], primary: str | None, scheduler: str) -> None:
    proto, p = svc.protocol, svc.protocol.lower()
    eps = [e for e in endpoints if is_ipv4(e.ip)]
    picked = categorize(svc, eps, node.node_name, node.zone)

    def chosen(only_local: bool) -> list[Endpoint]:
        # upstream syncEndpoint: a Local policy uses the local endpoints, or the
        # cluster-wide ones when there are none here (kubernetes#97081).
        return (picked.local or picked.cluster) if only_local else picked.cluster

    flags = FLAG_SOURCE_HASH if scheduler == "mh" else 0
    timeout = 0
    if svc.session_affinity == "ClientIP":
        flags |= FLAG_PERSISTENT
        timeout = svc.affinity_timeout

    def virtual_server(ip: str, port: int, eps: list[Endpoint], bind: bool) -> None:
        vs = VirtualServer(proto, ip, port, scheduler, flags, timeout)
        sp.virtual_servers[vs.key] = vs
        sp.real_servers[vs.key] = frozenset((e.ip, e.port) for e in eps)
        if bind:
            sp.addresses.add(ip)
            sp.entries.add((IPVS_IPS, ip))

    for e in eps:  # hairpin: a local endpoint reaching itself through the service is masqueraded
        if e.node_name == node.node_name:
            sp.entries.add((LOOP_BACK, f"{e.ip},{p}:{e.port},{e.ip}"))
    internal, external = chosen(svc.internal_policy_local), chosen(svc.external_policy_local)
    for ip in (ip for ip in svc.cluster_ips if is_ipv4(ip)):
        sp.entries.add((CLUSTER_IP, f"{ip},{p}:{svc.port}"))
        virtual_server(ip, svc.port, internal, True)
    for ip in (ip for ip in svc.external_ips if is_ipv4(ip)):
        sp.entries.add((EXTERNAL_IP_LOCAL if svc.external_policy_local else EXTERNAL_IP, f"{ip},{p}:{svc.port}"))
        # an address the node already has is not bound again on kube-ipvs0
        virtual_server(ip, svc.port, external, ip not in node_addrs)
    ranges = [net for net in map(ipaddress.ip_network, svc.load_balancer_source_ranges) if net.version == 4]
    if any(net.prefixlen == 0 for net in ranges):
        ranges = []  # 0.0.0.0/0 allows everyone (and hash:ip,port,net cannot hold a /0)
    for ip in (ip for ip in svc.load_balancer_ips if is_ipv4(ip)):
        entry = f"{ip},{p}:{svc.port}"
        sp.entries.add((LOAD_BALANCER, entry))
        if svc.external_policy_local:
            sp.entries.add((LOAD_BALANCER_LOCAL, entry))
        if ranges:
            sp.entries.add((LOAD_BALANCER_FW, entry))
            allow_from_node = False
            for net in ranges:
                sp.entries.add((LOAD_BALANCER_SOURCE_CIDR, f"{entry},{net}"))
                if primary is not None and ipaddress.ip_address(primary) in net:
                    allow_from_node = True
            if allow_from_node:
                # a node routing the LB IP to itself sends with the LB IP as source
                sp.entries.add((LOAD_BALANCER_SOURCE_IP, f"{entry},{ip}"))
            else:
                sp.no_node_access.add((ip, p, svc.port))
        virtual_server(ip, svc.port, external, ip not in node_addrs)
    if svc.node_port and np_ips:
        all_set, local_set = NODE_PORT_SETS[proto]
        members = [f"{ip},{p}:{svc.node_port}" for ip in np_ips] if proto == "SCTP" else [str(svc.node_port)]
        for m in members:
            sp.entries.add((all_set, m))
            if svc.external_policy_local:
                sp.entries.add((local_set, m))
        for ip in np_ips:
            virtual_server(ip, svc.node_port, external, False)
    if svc.health_check_node_port:
        sp.entries.add((HEALTH_CHECK_NODE_PORT, str(svc.health_check_node_port)))


# (set, table, chain, target, match, protocol): upstream's ipsetWithIptablesChain, in its order.
_SET_RULES = (
    (LOOP_BACK, "nat", KUBE_POSTROUTING, "MASQUERADE", "dst,dst,src", ""),
    (LOAD_BALANCER, "nat", KUBE_SERVICES, KUBE_LOAD_BALANCER, "dst,dst", ""),
    (LOAD_BALANCER_LOCAL, "nat", KUBE_LOAD_BALANCER, "RETURN", "dst,dst", ""),
    (NODE_PORT_LOCAL_TCP, "nat", KUBE_NODE_PORT, "RETURN", "dst", "tcp"),
    (NODE_PORT_TCP, "nat", KUBE_NODE_PORT, KUBE_MARK_MASQ, "dst", "tcp"),
    (NODE_PORT_LOCAL_UDP, "nat", KUBE_NODE_PORT, "RETURN", "dst", "udp"),
    (NODE_PORT_UDP, "nat", KUBE_NODE_PORT, KUBE_MARK_MASQ, "dst", "udp"),
    (NODE_PORT_LOCAL_SCTP, "nat", KUBE_NODE_PORT, "RETURN", "dst,dst", "sctp"),
    (NODE_PORT_SCTP, "nat", KUBE_NODE_PORT, KUBE_MARK_MASQ, "dst,dst", "sctp"),
    (LOAD_BALANCER_FW, "filter", KUBE_PROXY_FIREWALL, KUBE_SOURCE_RANGES_FIREWALL, "dst,dst", ""),
    (LOAD_BALANCER_SOURCE_CIDR, "filter", KUBE_SOURCE_RANGES_FIREWALL, "RETURN", "dst,dst,src", ""),
    (LOAD_BALANCER_SOURCE_IP, "filter", KUBE_SOURCE_RANGES_FIREWALL, "RETURN", "dst,dst,src", ""),
)


def _match_set(name: str, match: str) -> list[str]:
    return ["-m", "set", "--match-set", name, match]


def _commented_set(name: str, match: str) -> list[str]:
    return ["-m", "comment", "--comment", _q(IPSETS[name][1]), *_match_set(name, match)]


def render_rules(node: NodeContext, no_node_access: Iterable[tuple[str, str, int]] = ()) -> str:
    """iptables-restore input (nat, filter) for IPVS mode; restore with --noflush. Pure.

    The rules match whole ipsets, so they do not depend on the services except for
    the per-LB-IP KUBE-IPVS-OUT-FILTER drops. Unlike upstream we write the set
    rules even while a set is empty (matching an empty set is a no-op), which keeps
    the text stable across syncs.
    """
    nat: list[list[str]] = []
    filt: list[list[str]] = []
    nat.append(["-A", KUBE_SERVICES, "-s", "127.0.0.0/8", "-j", "RETURN"])
    for name, table, chain, target, match, proto in _SET_RULES:
        rule = ["-A", chain, *(["-p", proto] if proto else []), *_commented_set(name, match), "-j", target]
        (nat if table == "nat" else filt).append(rule)
    cluster = ["-A", KUBE_SERVICES, *_commented_set(CLUSTER_IP, "dst,dst")]
    if node.masquerade_all:
        nat.append([*cluster, "-j", KUBE_MARK_MASQ])
    elif node.cluster_cidr:
        # off-cluster traffic to a service VIP may bounce to another node: masquerade it
        nat.append([*cluster, "!", "-s", node.cluster_cidr, "-j", KUBE_MARK_MASQ])
    else:
        # without a cluster CIDR: masquerade node-originated traffic sourced from a VIP
        nat.append(["-A", KUBE_SERVICES, *_commented_set(CLUSTER_IP, "src,dst"), "-j", KUBE_MARK_MASQ])
    for name, masquerade in ((EXTERNAL_IP, True), (EXTERNAL_IP_LOCAL, False)):
        base = ["-A", KUBE_SERVICES, *_commented_set(name, "dst,dst")]
        if masquerade:
            nat.append([*base, "-j", KUBE_MARK_MASQ])
        # accept traffic from off the machine (not bridged in from a pod, not local) ...
        nat.append([*base, "-m", "physdev", "!", "--physdev-is-in", "-m", "addrtype", "!", "--src-type", "LOCAL",
                    "-j", "ACCEPT"])
        # ... and traffic to external IPs the node itself has
        nat.append([*base, "-m", "addrtype", "--dst-type", "LOCAL", "-j", "ACCEPT"])
    nat.append(["-A", KUBE_SERVICES, "-m", "addrtype", "--dst-type", "LOCAL", "-j", KUBE_NODE_PORT])
    nat.append(["-A", KUBE_LOAD_BALANCER, "-j", KUBE_MARK_MASQ])
    filt.append(["-A", KUBE_SOURCE_RANGES_FIREWALL, "-j", "DROP"])
    for ip, proto, port in sorted(no_node_access):
        # the node reaching an LB IP whose source ranges exclude it: source and destination are the LB IP
        filt.append(["-A", KUBE_IPVS_OUT_FILTER, "-s", ip, "-m", "ipvs", "--vaddr", ip, "--vproto", proto,
                     "--vport", str(port), "-j", "DROP"])
    for name in (CLUSTER_IP, LOAD_BALANCER):  # accept IPVS traffic before anything else can drop it
        nat.append(["-A", KUBE_SERVICES, *_match_set(name, "dst,dst"), "-j", "ACCEPT"])
    mark = f"{MASQ_MARK}/{MASQ_MARK}"
    filt.append(["-A", KUBE_FORWARD, "-m", "comment", "--comment", _q("kubernetes forwarding rules"),
                 "-m", "mark", "--mark", mark, "-j", "ACCEPT"])
    filt.append(["-A", KUBE_FORWARD, "-m", "comment", "--comment", _q("kubernetes forwarding conntrack rule"),
                 "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"])
    filt.append(["-A", KUBE_NODE_PORT, *_commented_set(HEALTH_CHECK_NODE_PORT, "dst"), "-j", "ACCEPT"])
    # KUBE-IPVS-FILTER (INPUT): new connections to a service without endpoints are rejected (ours) ...
    filt.append(["-A", KUBE_IPVS_FILTER, "-m", "conntrack", "--ctstate", "NEW",
                 *_commented_set(NO_ENDPOINTS, "dst,dst"), "-j", "REJECT"])
    # ... and, as upstream, so are new connections to other ports of the VIPs on kube-ipvs0
    for name, match in ((LOAD_BALANCER, "dst,dst"), (CLUSTER_IP, "dst,dst"), (EXTERNAL_IP, "dst,dst"),
                        (EXTERNAL_IP_LOCAL, "dst,dst"), (HEALTH_CHECK_NODE_PORT, "dst")):
        filt.append(["-A", KUBE_IPVS_FILTER, *_match_set(name, match), "-j", "RETURN"])
    filt.append(["-A", KUBE_IPVS_FILTER, "-m", "conntrack", "--ctstate", "NEW", *_match_set(IPVS_IPS, "dst"),
                 "-j", "REJECT"])
    nat.append(["-A", KUBE_POSTROUTING, "-m", "mark", "!", "--mark", mark, "-j", "RETURN"])
    nat.append(["-A", KUBE_POSTROUTING, "-j", "MARK", "--xor-mark", MASQ_MARK])
    nat.append(["-A", KUBE_POSTROUTING, "-m", "comment", "--comment", _q("kubernetes service traffic requiring SNAT"),
                "-j", "MASQUERADE", "--random-fully"])
    nat.append(["-A", KUBE_MARK_MASQ, "-j", "MARK", "--or-mark", MASQ_MARK])
    out = ["*nat", *(f":{c} - [0:0]" for c in NAT_CHAINS), *(" ".join(r) for r in nat), "COMMIT",
           "*filter", *(f":{c} - [0:0]" for c in FILTER_CHAINS), *(" ".join(r) for r in filt), "COMMIT", ""]
    return "\n".join(out)


def cleanup_rules(saved: Mapping[str, str]) -> str:
    """iptables-restore input (--noflush) removing our chains and the jumps into them. Pure.

    `saved` maps a table to its iptables-save text. A chain of ours that a chain not
    of ours still uses (the iptables mode shares KUBE-SERVICES, KUBE-MARK-MASQ...)
    is kept, with whatever it uses, so the restore cannot fail on a reference.
    Returns "" when there is nothing to remove.
    """
    out: list[str] = []
    for table, chains in CHAINS.items():
        text = saved.get(table, "")
        existing = {line[1:].split()[0] for line in text.splitlines() if line.startswith(":")}
        ours = [c for c in chains if c in existing]
        if not ours:
            continue
        uses: dict[str, set[str]] = {}  # chain -> chains it jumps to
        rules: list[tuple[str, str, str]] = []  # (line, chain, target)
        for line in text.splitlines():
            if not line.startswith("-A "):
                continue
            try:
                words = shlex.split(line)
            except ValueError:
                continue
            target = next((words[i + 1] for i, w in enumerate(words[:-1]) if w in ("-j", "-g", "--jump", "--goto")),
                          "")
            uses.setdefault(words[1], set()).add(target)
            rules.append((line, words[1], target))
        keep = {c for c in ours if any(c in targets for src, targets in uses.items()
                                       if src not in ours and src not in BUILTIN_CHAINS)}
        grew = True
        while grew:
            more = {c for c in ours if c not in keep and any(c in uses.get(k, ()) for k in keep)}
            keep |= more
            grew = bool(more)
        gone = [c for c in ours if c not in keep]
        if not gone:
            continue
        dels = ["-D" + line[2:] for line, chain, target in rules if chain in BUILTIN_CHAINS and target in gone]
        out += [f"*{table}", *(f":{c} - [0:0]" for c in gone), *dels, *(f"-X {c}" for c in gone), "COMMIT"]
    return "\n".join(out + [""]) if out else ""


# --- diffing ----------------------------------------------------------------------------------

@dataclass
class KernelState:
    """What the kernel holds now (IPv4), as read at the start of a sync."""
    virtual_servers: dict[VSKey, VirtualServer] = field(default_factory=dict)
    real_servers: dict[VSKey, dict[RSKey, RealServer]] = field(default_factory=dict)  # for the VSs read
    addresses: set[str] = field(default_factory=set)  # on kube-ipvs0
    entries: set[SetEntry] = field(default_factory=set)  # members of our ipsets


@dataclass
class Scope:
    """The objects a partial sync looks at: those of the changed services, before and after."""
    virtual_servers: set[VSKey] = field(default_factory=set)
    addresses: set[str] = field(default_factory=set)
    entries: set[SetEntry] = field(default_factory=set)

    def add(self, sp: ServicePlan | None) -> None:
        if sp is not None:
            self.virtual_servers |= sp.virtual_servers.keys()
            self.addresses |= sp.addresses
            self.entries |= sp.entries


class Op(NamedTuple):
    kind: str  # add_vs update_vs del_vs add_rs update_rs del_rs add_addr del_addr add_entry del_entry
    vs: VirtualServer | None = None
    rs: RealServer | None = None
    old: object = None  # update: the previous VS/RS; del_vs: its real servers (to undo)
    value: str = ""  # address, or ipset member
    set_name: str = ""

    def __str__(self) -> str:
        target = self.value if self.kind.endswith(("_addr", "_entry")) else str(self.vs)
        extra = f" {self.rs}" if self.rs is not None else ""
        where = f" in {self.set_name}" if self.set_name else ""
        return f"{self.kind} {target}{extra}{where}"


@dataclass
class Changes:
    first: list[Op] = field(default_factory=list)  # additions and updates: before the iptables rules
    last: list[Op] = field(default_factory=list)  # removals: after them
    draining: dict[VSKey, set[RSKey]] = field(default_factory=dict)  # weight-0 real servers left in place

    def __len__(self) -> int:
        return len(self.first) + len(self.last)


def owned(key: VSKey, state: KernelState, known: Collection[VSKey] = ()) -> bool:
    """Whether a virtual server in the kernel is one of ours, also when an earlier process made it."""
    proto, ip, port = key
    if key in known or ip in state.addresses:
        return True
    member = f"{ip},{proto.lower()}:{port}"
    if any((name, member) in state.entries for name in _VS_SETS):
        return True
    if proto in ("TCP", "UDP"):
        return any((name, str(port)) in state.entries for name in NODE_PORT_SETS[proto])
    return False


def vs_candidates(plan: Plan, state: KernelState, scope: Scope | None, known: Collection[VSKey] = ()) -> set[VSKey]:
    """Virtual servers a sync looks at: all desired and owned ones (full), or the scope's."""
    if scope is not None:
        return set(scope.virtual_servers)
    return set(plan.virtual_servers) | {k for k in state.virtual_servers if owned(k, state, known)}


def diff(plan: Plan, state: KernelState, scope: Scope | None, known: Collection[VSKey] = ()) -> Changes:
    """The ops that turn `state` into `plan` (within `scope`; None: everything we own). Pure.

    Real servers that go away are drained, as upstream's graceful termination: a TCP
    one with connections is set to weight 0 and removed by a later sync once its
    connection counters reach zero; others are removed at once.
    """
    ch = Changes()
    first_entry_dels: list[Op] = []
    for key in sorted(vs_candidates(plan, state, scope, known)):
        want, have = plan.virtual_servers.get(key), state.virtual_servers.get(key)
        current = state.real_servers.get(key, {}) if have is not None else {}
        if want is None:
            if have is not None:
                ch.last.append(Op("del_vs", have, old=tuple(current.values())))
            continue
        if have is None:
            ch.first.append(Op("add_vs", want))
        elif have != want:
            ch.first.append(Op("update_vs", want, old=have))
        desired = plan.real_servers.get(key, frozenset())
        for rk in sorted(desired):
            rs, cur = RealServer(*rk), current.get(rk)
            if cur is None:
                ch.first.append(Op("add_rs", want, rs))
            elif cur.weight != rs.weight:
                ch.first.append(Op("update_rs", want, rs, old=cur))
        for rk in sorted(set(current) - desired):
            cur = current[rk]
            if key[0] != "TCP" or cur.active + cur.inactive == 0:
                ch.last.append(Op("del_rs", want, cur))
                continue
            if cur.weight != 0:
                ch.last.append(Op("update_rs", want, RealServer(*rk, weight=0), old=cur))
            ch.draining.setdefault(key, set()).add(rk)
    addresses = scope.addresses if scope is not None else plan.addresses | state.addresses
    for ip in sorted(addresses):
        if ip in plan.addresses and ip not in state.addresses:
            ch.first.append(Op("add_addr", value=ip))
        elif ip not in plan.addresses and ip in state.addresses:
            ch.last.append(Op("del_addr", value=ip))
    entries = scope.entries if scope is not None else plan.entries | state.entries
    for name, member in sorted(entries):
        if (name, member) in plan.entries and (name, member) not in state.entries:
            ch.first.append(Op("add_entry", value=member, set_name=name))
        elif (name, member) not in plan.entries and (name, member) in state.entries:
            op = Op("del_entry", value=member, set_name=name)
            # a service that got endpoints stops being rejected as soon as its real servers are in
            (first_entry_dels if name == NO_ENDPOINTS else ch.last).append(op)
    ch.first += first_entry_dels
    return ch


# --- the kernel -------------------------------------------------------------------------------

@contextlib.contextmanager
def _in_netns(netns: str | None) -> Iterator[None]:
    """Run the block in `netns` (this thread only); sockets made inside stay there."""
    if not netns:
        yield
        return
    from pyroute2 import netns as nslib
    path = netns if netns.startswith("/") else f"/var/run/netns/{netns}"
    target = os.open(path, os.O_RDONLY)
    saved = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        nslib.setns(target)
        try:
            yield
        finally:
            nslib.setns(saved)
    finally:
        os.close(target)
        os.close(saved)


def _kernel_release() -> tuple[int, int]:
    try:
        major, minor = os.uname().release.split(".")[:2]
        return int(major), int("".join(c for c in minor if c.isdigit()) or 0)
    except ValueError:
        return (0, 0)


class Kernel:
    """The thin layer over the kernel: pyroute2's IPVS, IPSet and IPRoute, and the iptables tools.

    Sockets are opened lazily inside `session()` (in the backend's netns) and closed
    when it ends, so each sync runs in one thread with its own sockets, as pyroute2
    wants. It must not be used from a thread that runs an asyncio loop.
    """

    def __init__(self, netns: str | None = None, run: Callable | None = None):
        self.netns = netns
        self._run = run
        self._ipvs = self._ipset = self._ipr = None

    # sessions and sockets

    @contextlib.contextmanager
    def session(self) -> Iterator[Kernel]:
        try:
            yield self
        finally:
            self.close()

    def close(self) -> None:
        for sock in (self._ipvs, self._ipset, self._ipr):
            if sock is not None:
                with contextlib.suppress(Exception):
                    sock.close()
        self._ipvs = self._ipset = self._ipr = None

    @property
    def ipvs(self):
        if self._ipvs is None:
            from pyroute2.ipvs import IPVS, AsyncIPVS

            class _Async(AsyncIPVS):
                module_err_level = "debug"  # a missing IPVS family is reported by us

            class _IPVS(IPVS):
                async_class = _Async

            with _in_netns(self.netns):
                self._ipvs = _IPVS()
        return self._ipvs

    @property
    def ipset(self):
        if self._ipset is None:
            from pyroute2 import IPSet
            with _in_netns(self.netns):
                self._ipset = IPSet()
        return self._ipset

    @property
    def ipr(self):
        if self._ipr is None:
            from pyroute2 import IPRoute
            with _in_netns(self.netns):
                self._ipr = IPRoute()
        return self._ipr

    # probes

    def ipvs_error(self) -> str | None:
        """Why IPVS cannot be used here, or None."""
        from pyroute2.netlink.exceptions import NetlinkError
        try:
            self.ipvs
        except NetlinkError as exc:
            if exc.code == errno.ENOENT:
                proc = "present" if os.path.exists("/proc/net/ip_vs") else "missing"
                return (f"kernel has no IP_VS support (generic netlink family IPVS not found, /proc/net/ip_vs "
                        f"{proc}; {MODULES_HINT})")
            return f"cannot open the IPVS netlink family: {exc}"
        except OSError as exc:
            return f"cannot open the IPVS netlink family: {exc}"
        return None

    def ipset_error(self) -> str | None:
        try:
            self.ipset
        except Exception as exc:  # NetlinkError/OSError: no nfnetlink ipset subsystem
            return f"kernel has no ip_set support ({exc}; {IPSET_MODULES_HINT})"
        return None

    def probe_scheduler(self, scheduler: str) -> None:
        """Raise unless a virtual server can use `scheduler` (upstream's CanUseIPVSProxier)."""
        existing = self.list_virtual_servers()
        if any(vs.scheduler == scheduler for vs in existing):
            return
        probe = VirtualServer("TCP", PROBE_ADDRESS, PROBE_PORT, scheduler)
        for vs in existing:
            if vs.key == probe.key:  # left by an interrupted probe
                self.delete_virtual_server(vs)
        self.add_virtual_server(probe)
        self.delete_virtual_server(probe)

    # IPVS

    def _service(self, vs: VirtualServer):
        from pyroute2.ipvs import IPVSService
        return IPVSService(addr=vs.ip, port=vs.port, protocol=PROTO_NUMBERS[vs.protocol], sched_name=vs.scheduler,
                           flags={"flags": vs.flags, "mask": 0xFFFFFFFF}, timeout=vs.timeout)

    def _dest(self, rs: RealServer):
        from pyroute2.ipvs import IPVSDest
        return IPVSDest(addr=rs.ip, port=rs.port, weight=rs.weight, fwd_method=FWD_MASQ)

    def list_virtual_servers(self) -> list[VirtualServer]:
        out = []
        for msg in self.ipvs.service("dump"):
            svc = msg.get_attr("IPVS_CMD_ATTR_SERVICE")
            if svc is None or svc.get_attr("IPVS_SVC_ATTR_AF") != socket.AF_INET:
                continue
            proto = PROTO_NAMES.get(svc.get_attr("IPVS_SVC_ATTR_PROTOCOL"))
            if proto is None or svc.get_attr("IPVS_SVC_ATTR_FWMARK"):
                continue
            flags = svc.get_attr("IPVS_SVC_ATTR_FLAGS")
            out.append(VirtualServer(
                proto, svc.get_attr("IPVS_SVC_ATTR_ADDR"), svc.get_attr("IPVS_SVC_ATTR_PORT"),
                svc.get_attr("IPVS_SVC_ATTR_SCHED_NAME") or "", (flags["flags"] if flags else 0) & ~FLAG_HASHED,
                svc.get_attr("IPVS_SVC_ATTR_TIMEOUT") or 0))
        return out

    def list_real_servers(self, vs: VirtualServer) -> list[RealServer]:
        out = []
        for msg in self.ipvs.dest("dump", service=self._service(vs)):
            d = msg.get_attr("IPVS_CMD_ATTR_DEST")
            if d is None:
                continue
            out.append(RealServer(d.get_attr("IPVS_DEST_ATTR_ADDR"), d.get_attr("IPVS_DEST_ATTR_PORT"),
                                  d.get_attr("IPVS_DEST_ATTR_WEIGHT") or 0,
                                  d.get_attr("IPVS_DEST_ATTR_ACTIVE_CONNS") or 0,
                                  d.get_attr("IPVS_DEST_ATTR_INACT_CONNS") or 0))
        return out

    def add_virtual_server(self, vs: VirtualServer) -> None:
        self.ipvs.service("add", service=self._service(vs))

    def update_virtual_server(self, vs: VirtualServer) -> None:
        self.ipvs.service("set", service=self._service(vs))

    def delete_virtual_server(self, vs: VirtualServer) -> None:
        self.ipvs.service("del", service=self._service(vs))

    def add_real_server(self, vs: VirtualServer, rs: RealServer) -> None:
        self.ipvs.dest("add", service=self._service(vs), dest=self._dest(rs))

    def update_real_server(self, vs: VirtualServer, rs: RealServer) -> None:
        self.ipvs.dest("set", service=self._service(vs), dest=self._dest(rs))

    def delete_real_server(self, vs: VirtualServer, rs: RealServer) -> None:
        self.ipvs.dest("del", service=self._service(vs), dest=self._dest(rs))

    # the kube-ipvs0 link and addresses

    def _index(self, name: str) -> int | None:
        found = self.ipr.link_lookup(ifname=name)
        return found[0] if found else None

    def has_device(self, name: str) -> bool:
        return self._index(name) is not None

    def ensure_device(self, name: str) -> str:
        """Make sure the link exists; returns "existing", "dummy" or "bridge".

        A dummy link as upstream; on kernels without one, a bridge without ports does
        the same job: an address on it is a local address (table local). Like
        upstream's dummy, it is left down — local routes do not need it up.
        """
        from pyroute2.netlink.exceptions import NetlinkError
        if self.has_device(name):
            return "existing"
        try:
            self.ipr.link("add", ifname=name, kind="dummy")
            return "dummy"
        except NetlinkError as exc:
            if exc.code not in (errno.EOPNOTSUPP, errno.ENOENT, errno.EINVAL):
                raise
            log.info("no dummy links on this kernel (%s); using a bridge without ports for %s", exc, name)
        self.ipr.link("add", ifname=name, kind="bridge")
        return "bridge"

    def delete_device(self, name: str) -> bool:
        idx = self._index(name)
        if idx is None:
            return False
        self.ipr.link("del", index=idx)
        return True

    def device_addresses(self, name: str) -> set[str]:
        idx = self._index(name)
        if idx is None:
            return set()
        return {m.get_attr("IFA_ADDRESS") for m in self.ipr.addr("dump", index=idx, family=socket.AF_INET)}

    def node_addresses(self, exclude: str) -> set[str]:
        """Every local IPv4 address except loopback and those on `exclude`."""
        skip = self._index(exclude)
        out = set()
        for m in self.ipr.addr("dump", family=socket.AF_INET):
            ip = m.get_attr("IFA_LOCAL") or m.get_attr("IFA_ADDRESS")
            if m["index"] != skip and ip and not ipaddress.ip_address(ip).is_loopback:
                out.add(ip)
        return out

    def add_address(self, name: str, ip: str) -> None:
        self.ipr.addr("add", index=self._index(name), address=ip, prefixlen=32)

    def delete_address(self, name: str, ip: str) -> None:
        self.ipr.addr("del", index=self._index(name), address=ip, prefixlen=32)

    # ipsets

    def list_sets(self) -> set[str]:
        return {m.get_attr("IPSET_ATTR_SETNAME") for m in self.ipset.list()}

    def ensure_set(self, name: str, stype: str) -> None:
        opts = {"bitmap_ports_range": (0, 65535)} if stype == BITMAP_PORT else {"hashsize": 1024, "maxelem": 65536}
        self.ipset.create(name, stype=stype, exclusive=False, **opts)

    def destroy_set(self, name: str) -> None:
        self.ipset.destroy(name)

    def set_entries(self, name: str) -> set[str]:
        out = set()
        for msg in self.ipset.list(name):
            adt = msg.get_attr("IPSET_ATTR_ADT")
            for data in (adt.get_attrs("IPSET_ATTR_DATA") if adt is not None else ()):
                out.add(_member_text(data))
        return out

    def add_entry(self, name: str, member: str) -> None:
        entry, etype = _member_args(IPSETS[name][0], member)
        self.ipset.add(name, entry, etype=etype, exclusive=False)

    def delete_entry(self, name: str, member: str) -> None:
        entry, etype = _member_args(IPSETS[name][0], member)
        self.ipset.delete(name, entry, etype=etype)

    # iptables and sysctls

    def _tool(self, *argv: str, input: str | None = None, check: bool = True):
        if self._run is None:
            raise RuntimeError("no command runner")
        return self._run(*argv, input=input, check=check)

    def iptables_save(self, table: str) -> str:
        return self._tool(IPTABLES_SAVE, "-t", table).stdout

    def iptables_restore(self, text: str) -> None:
        res = self._tool(IPTABLES_RESTORE, "-w", "--noflush", input=text, check=False)
        if res.returncode != 0:
            raise RuntimeError(res.stderr.strip() or f"exit status {res.returncode}")

    def ensure_jumps(self, jumps: Iterable[Jump]) -> None:
        for j in jumps:
            self._tool(IPTABLES, "-w", "-t", j.table, "-N", j.chain, check=False)  # exists: fine
            if self._tool(IPTABLES, "-w", "-t", j.table, "-C", *j.rule(), check=False).returncode != 0:
                self._tool(IPTABLES, "-w", "-t", j.table, "-I", *j.rule())

    def set_sysctls(self, values: Mapping[str, str]) -> None:
        for key, value in values.items():
            self._tool("sysctl", "-q", "-w", f"{key}={value}")


def _member_args(stype: str, member: str):
    """An ipset member in text form ("10.0.0.1,tcp:80") → pyroute2's (entry, etype)."""
    from pyroute2.ipset import PortEntry
    if stype == BITMAP_PORT:
        return int(member), "port"
    if stype == HASH_IP:
        return member, "ip"
    parts = member.split(",")
    proto, port = parts[1].split(":")
    entry = [parts[0], PortEntry(int(port), protocol=PROTO_NUMBERS[proto.upper()])] + parts[2:]
    return tuple(entry), {HASH_IP_PORT: "ip,port", HASH_IP_PORT_IP: "ip,port,ip",
                          HASH_IP_PORT_NET: "ip,port,net"}[stype]


def _member_text(data) -> str:
    """A member as listed by the kernel (IPSET_ATTR_DATA) → its text form."""
    def ip(attr: str) -> str | None:
        nested = data.get_attr(attr)
        return nested.get_attr("IPSET_ATTR_IPADDR_IPV4") if nested is not None else None

    first, second = ip("IPSET_ATTR_IP_FROM"), ip("IPSET_ATTR_IP2")
    port = data.get_attr("IPSET_ATTR_PORT_FROM")
    if port is None:
        port = data.get_attr("IPSET_ATTR_PORT")
    if first is None:
        return str(port)
    if port is None:
        return first
    proto = PROTO_NAMES.get(data.get_attr("IPSET_ATTR_PROTO"), str(data.get_attr("IPSET_ATTR_PROTO"))).lower()
    text = f"{first},{proto}:{port}"
    if second is not None:
        cidr = data.get_attr("IPSET_ATTR_CIDR2")
        text += f",{second}" + (f"/{cidr}" if cidr is not None else "")
    return text


# --- the backend ------------------------------------------------------------------------------

class IpvsBackend(Backend):
    mode = "ipvs"

    def __init__(self, node: NodeContext, *, netns: str | None = None, scheduler: str = DEFAULT_SCHEDULER,
                 kernel: Kernel | None = None):
        super().__init__(node, netns=netns)
        self.scheduler = scheduler or DEFAULT_SCHEDULER
        self.kernel = kernel if kernel is not None else Kernel(netns, self.run)
        self._plan: Plan | None = None  # the last plan fully applied
        self._rules: str | None = None  # the iptables text last restored
        self._node_addresses: frozenset[str] | None = None
        self._draining: dict[VSKey, set[RSKey]] = {}
        self._need_full = True
        self._sysctls_done = False

    def check(self) -> None:
        if shutil.which(IPTABLES_RESTORE) is None:
            raise BackendUnavailable(f"{IPTABLES_RESTORE} not found in PATH")
        with self.kernel.session() as k:
            problem = k.ipvs_error() or k.ipset_error()
            if problem:
                raise BackendUnavailable(problem)
            try:
                k.probe_scheduler(self.scheduler)
            except Exception as exc:
                raise BackendUnavailable(f"IPVS scheduler {self.scheduler!r} unusable: {exc} "
                                         f"(modprobe ip_vs_{self.scheduler})") from exc

    def sync(self, services: Mapping[PortKey, ServicePort], endpoints: Mapping[PortKey, Sequence[Endpoint]],
             changed: Collection[ServiceName] | None) -> bool:
        full = changed is None or self._need_full or self._plan is None
        with self.kernel.session() as k:
            try:
                problem = k.ipvs_error()
                if problem:
                    raise SyncFailed(problem)
                node_addrs = frozenset(k.node_addresses(DEVICE))
                if node_addrs != self._node_addresses:
                    full = True  # NodePort virtual servers and bindings of every service depend on them
                plan = build_plan(services, endpoints, self.node, node_addrs, self.scheduler)
                if full:
                    self._prepare(k)
                scope = None if full else self._scope(plan, changed or ())
                known = self._plan.virtual_servers.keys() if self._plan else ()
                state = self._read(k, plan, scope, known)
                changes = diff(plan, state, scope, known)
            except SyncFailed:
                self._need_full = True
                raise
            except Exception as exc:
                self._need_full = True
                raise SyncFailed(f"ipvs sync: {exc}") from exc
            self._apply(k, changes, plan.rules, full)
        if full:
            self._draining = changes.draining
        else:
            for key in scope.virtual_servers:
                self._draining.pop(key, None)
            self._draining.update(changes.draining)
        self._plan, self._node_addresses, self._need_full = plan, node_addrs, False
        log.log(logging.INFO if full or changes else logging.DEBUG,
                "ipvs %s sync: %d virtual servers, %d changes, %d real servers draining",
                "full" if full else "partial", len(plan.virtual_servers), len(changes),
                sum(map(len, self._draining.values())))
        return full

    def _prepare(self, k: Kernel) -> None:
        """Full syncs make sure the link, the ipsets, the sysctls and the jumps exist.

        This scaffolding is idempotent and harmless on its own, so a failed sync does not undo it.
        """
        kind = k.ensure_device(DEVICE)
        if kind != "existing":
            log.info("created %s (%s)", DEVICE, kind)
        for name, (stype, _) in IPSETS.items():
            k.ensure_set(name, stype)
        if not self._sysctls_done:
            values = dict(SYSCTLS)
            if _kernel_release() < (5, 9):
                values["net.ipv4.vs.conn_reuse_mode"] = "0"  # kubernetes#93297
            k.set_sysctls(values)
            self._sysctls_done = True
        k.ensure_jumps(JUMPS)

    def _scope(self, plan: Plan, changed: Iterable[ServiceName]) -> Scope:
        scope = Scope()
        for name in changed:
            scope.add(plan.by_service.get(name))
            scope.add(self._plan.by_service.get(name) if self._plan else None)
        scope.virtual_servers |= self._draining.keys()
        return scope

    @staticmethod
    def _read(k: Kernel, plan: Plan, scope: Scope | None, known: Collection[VSKey]) -> KernelState:
        state = KernelState(virtual_servers={vs.key: vs for vs in k.list_virtual_servers()},
                            addresses=k.device_addresses(DEVICE))
        for name in IPSETS:
            state.entries |= {(name, m) for m in k.set_entries(name)}
        for key in vs_candidates(plan, state, scope, known):
            vs = state.virtual_servers.get(key)
            if vs is not None:
                state.real_servers[key] = {rs.key: rs for rs in k.list_real_servers(vs)}
        return state

    def _apply(self, k: Kernel, changes: Changes, rules: str, full: bool) -> None:
        done: list[Op] = []
        restored = False
        current = ""
        try:
            for op in changes.first:
                current = str(op)
                self._do(k, op)
                done.append(op)
            if full or rules != self._rules:
                current = "iptables-restore"
                k.iptables_restore(rules)
                restored = True
            for op in changes.last:
                current = str(op)
                self._do(k, op)
                done.append(op)
        except Exception as exc:
            self._need_full = True
            for op in reversed(done):
                for undo in _inverse(op):
                    try:
                        self._do(k, undo)
                    except Exception as undo_exc:
                        log.warning("ipvs: could not undo %s: %s", op, undo_exc)
            if restored and self._rules is not None:
                with contextlib.suppress(Exception):
                    k.iptables_restore(self._rules)
            raise SyncFailed(f"ipvs sync: {current} failed: {exc}") from exc
        if restored:
            self._rules = rules

    @staticmethod
    def _do(k: Kernel, op: Op) -> None:
        kind = op.kind
        if kind == "add_vs":
            k.add_virtual_server(op.vs)
        elif kind == "update_vs":
            k.update_virtual_server(op.vs)
        elif kind == "del_vs":
            k.delete_virtual_server(op.vs)
        elif kind == "add_rs":
            k.add_real_server(op.vs, op.rs)
        elif kind == "update_rs":
            k.update_real_server(op.vs, op.rs)
        elif kind == "del_rs":
            k.delete_real_server(op.vs, op.rs)
        elif kind == "add_addr":
            k.add_address(DEVICE, op.value)
        elif kind == "del_addr":
            k.delete_address(DEVICE, op.value)
        elif kind == "add_entry":
            k.add_entry(op.set_name, op.value)
        elif kind == "del_entry":
            k.delete_entry(op.set_name, op.value)
        else:
            raise ValueError(f"unknown op {kind}")

    def cleanup(self) -> bool:
        """Remove our virtual servers, iptables chains and jumps, ipsets and kube-ipvs0.

        Only virtual servers we can prove are ours go (see `owned`): on a kube-ipvs0
        address or recorded in our ipsets. Never raises; False if nothing was there.
        """
        removed = False
        with self.kernel.session() as k:
            state = KernelState()
            sets: set[str] = set()
            if k.ipset_error() is None:
                try:
                    sets = k.list_sets() & IPSETS.keys()
                    for name in sets:
                        state.entries |= {(name, m) for m in k.set_entries(name)}
                except Exception as exc:
                    log.warning("ipvs cleanup: reading ipsets failed: %s", exc)
            try:
                state.addresses = k.device_addresses(DEVICE)
            except Exception as exc:
                log.warning("ipvs cleanup: reading %s failed: %s", DEVICE, exc)
            known = self._plan.virtual_servers.keys() if self._plan else ()
            if k.ipvs_error() is None:
                try:
                    for vs in k.list_virtual_servers():
                        if owned(vs.key, state, known):
                            k.delete_virtual_server(vs)
                            removed = True
                except Exception as exc:
                    log.warning("ipvs cleanup: removing virtual servers failed: %s", exc)
            try:
                text = cleanup_rules({table: k.iptables_save(table) for table in CHAINS})
                if text:
                    k.iptables_restore(text)
                    removed = True
            except Exception as exc:
                log.warning("ipvs cleanup: removing iptables chains failed: %s", exc)
            for name in sorted(sets):  # after the rules that used them
                try:
                    k.destroy_set(name)
                    removed = True
                except Exception as exc:
                    log.warning("ipvs cleanup: destroying ipset %s failed: %s", name, exc)
            try:
                removed = k.delete_device(DEVICE) or removed
            except Exception as exc:
                log.warning("ipvs cleanup: deleting %s failed: %s", DEVICE, exc)
        self._plan, self._rules, self._draining, self._need_full = None, None, {}, True
        return removed


def _inverse(op: Op) -> list[Op]:
    kind = op.kind
    if kind == "add_vs":
        return [Op("del_vs", op.vs)]
    if kind == "update_vs":
        return [Op("update_vs", op.old)]
    if kind == "del_vs":
        return [Op("add_vs", op.vs)] + [Op("add_rs", op.vs, rs) for rs in op.old or ()]
    if kind == "add_rs":
        return [Op("del_rs", op.vs, op.rs)]
    if kind == "update_rs":
        return [Op("update_rs", op.vs, op.old)]
    if kind == "del_rs":
        return [Op("add_rs", op.vs, op.rs)]
    if kind == "add_addr":
        return [Op("del_addr", value=op.value)]
    if kind == "del_addr":
        return [Op("add_addr", value=op.value)]
    if kind == "add_entry":
        return [Op("del_entry", value=op.value, set_name=op.set_name)]
    if kind == "del_entry":
        return [Op("add_entry", value=op.value, set_name=op.set_name)]
    raise ValueError(f"unknown op {kind}")
