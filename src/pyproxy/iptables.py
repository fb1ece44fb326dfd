"""The iptables mode: plan rules for services (`render`) and program them (`apply`, `sync`).

Follows upstream kube-proxy's iptables proxier (pkg/proxy/iptables/proxier.go,
Kubernetes v1.36): the same chain names, hashes, match order, masquerade mark
0x4000, per-endpoint KUBE-SEP chains, `-m statistic` load balancing, `-m recent`
affinity, REJECT/DROP in the filter table for services without (local) endpoints.

`render` is pure: it returns iptables-restore input for the ``filter`` and ``nat``
tables that declares (and so flushes) only our chains, never a built-in one, so
it must be restored with ``--noflush``. The jumps from the built-in chains into
ours are put in place by `ensure_jumps` (``iptables -C`` then ``-I``), which is
idempotent. `apply` runs both, inside a network namespace when given one.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import logging
import subprocess
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from pyproxy.model import Endpoint, ServicePort
from pyproxy.topology import categorize

log = logging.getLogger("pyproxy")

KUBE_SERVICES = "KUBE-SERVICES"
KUBE_EXTERNAL_SERVICES = "KUBE-EXTERNAL-SERVICES"
KUBE_NODEPORTS = "KUBE-NODEPORTS"
KUBE_POSTROUTING = "KUBE-POSTROUTING"
KUBE_MARK_MASQ = "KUBE-MARK-MASQ"
KUBE_FORWARD = "KUBE-FORWARD"
KUBE_PROXY_FIREWALL = "KUBE-PROXY-FIREWALL"
KUBE_FIREWALL = "KUBE-FIREWALL"  # kubelet's localnet guard, duplicated as upstream does
MASQ_MARK = "0x4000"
SERVICE_CHAIN_PREFIXES = ("KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-", "KUBE-SEP-")

IPTABLES = "iptables"
IPTABLES_RESTORE = "iptables-restore"
IPTABLES_SAVE = "iptables-save"


@dataclass(frozen=True)
class Jump:
    table: str
    chain: str  # our chain
    source: str  # the built-in chain that jumps to it
    comment: str
    extra: tuple[str, ...] = ()

    def rule(self) -> list[str]:
        return [self.source, "-m", "comment", "--comment", self.comment, *self.extra, "-j", self.chain]


_NEW = ("-m", "conntrack", "--ctstate", "NEW")
JUMPS = (
    Jump("filter", KUBE_EXTERNAL_SERVICES, "INPUT", "kubernetes externally-visible service portals", _NEW),
    Jump("filter", KUBE_EXTERNAL_SERVICES, "FORWARD", "kubernetes externally-visible service portals", _NEW),
    Jump("filter", KUBE_NODEPORTS, "INPUT", "kubernetes health check service ports"),
    Jump("filter", KUBE_SERVICES, "FORWARD", "kubernetes service portals", _NEW),
    Jump("filter", KUBE_SERVICES, "OUTPUT", "kubernetes service portals", _NEW),
    Jump("filter", KUBE_FORWARD, "FORWARD", "kubernetes forwarding rules"),
    Jump("filter", KUBE_PROXY_FIREWALL, "INPUT", "kubernetes load balancer firewall", _NEW),
    Jump("filter", KUBE_PROXY_FIREWALL, "OUTPUT", "kubernetes load balancer firewall", _NEW),
    Jump("filter", KUBE_PROXY_FIREWALL, "FORWARD", "kubernetes load balancer firewall", _NEW),
    Jump("nat", KUBE_SERVICES, "OUTPUT", "kubernetes service portals"),
    Jump("nat", KUBE_SERVICES, "PREROUTING", "kubernetes service portals"),
    Jump("nat", KUBE_POSTROUTING, "POSTROUTING", "kubernetes postrouting rules"),
)
LOCALNET_JUMPS = (
    Jump("filter", KUBE_FIREWALL, "INPUT", "kubernetes firewall for dropping marked packets"),
    Jump("filter", KUBE_FIREWALL, "OUTPUT", "kubernetes firewall for dropping marked packets"),
)


def _hash(text: str) -> str:
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]


def port_proto_hash(svc: ServicePort) -> str:
    return _hash(svc.name_string + svc.protocol.lower())


def svc_chain(svc: ServicePort) -> str:
    return "KUBE-SVC-" + port_proto_hash(svc)


def svl_chain(svc: ServicePort) -> str:
    return "KUBE-SVL-" + port_proto_hash(svc)


def ext_chain(svc: ServicePort) -> str:
    return "KUBE-EXT-" + port_proto_hash(svc)


def fw_chain(svc: ServicePort) -> str:
    return "KUBE-FW-" + port_proto_hash(svc)


def sep_chain(svc: ServicePort, ep: Endpoint) -> str:
    return "KUBE-SEP-" + _hash(svc.name_string + svc.protocol.lower() + str(ep))


def is_service_chain(name: str) -> bool:
    return name.startswith(SERVICE_CHAIN_PREFIXES)


def probability(n: int) -> str:
    return f"{1.0 / n:0.10f}"


def _q(text: str) -> str:
    return '"' + text.replace('"', "'") + '"'


def _is_v4(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).version == 4
    except ValueError:
        return False


class _Table:
    def __init__(self) -> None:
        self.chains: list[str] = []
        self.rules: list[str] = []

    def chain(self, name: str) -> None:
        self.chains.append(f":{name} - [0:0]")

    def add(self, chain: str, *args: str) -> None:
        self.rules.append(" ".join(["-A", chain, *args]))


def render(services: Iterable[ServicePort], endpoints: Mapping[tuple[str, str, str], Sequence[Endpoint]], *,
           node_name: str, node_ips: Sequence[str], zone: str = "", cluster_cidr: str | None = None,
           masquerade_all: bool = False, nodeport_addresses: Sequence[str] | None = None,
           localhost_nodeports: bool = True, existing_chains: Iterable[str] = ()) -> str:
    """iptables-restore input (filter and nat) for these services; restore it with --noflush.

    `existing_chains` are the nat chains present now (from iptables-save); service
    chains among them that this sync does not use are declared and deleted (-X).
    """
    filt, nat = _Table(), _Table()
    for c in (KUBE_SERVICES, KUBE_EXTERNAL_SERVICES, KUBE_FORWARD, KUBE_NODEPORTS, KUBE_PROXY_FIREWALL):
        filt.chain(c)
    for c in (KUBE_SERVICES, KUBE_NODEPORTS, KUBE_POSTROUTING, KUBE_MARK_MASQ):
        nat.chain(c)
    mark = f"{MASQ_MARK}/{MASQ_MARK}"
    nat.add(KUBE_POSTROUTING, "-m", "mark", "!", "--mark", mark, "-j", "RETURN")
    nat.add(KUBE_POSTROUTING, "-j", "MARK", "--xor-mark", MASQ_MARK)
    nat.add(KUBE_POSTROUTING, "-m", "comment", "--comment", _q("kubernetes service traffic requiring SNAT"),
            "-j", "MASQUERADE", "--random-fully")
    nat.add(KUBE_MARK_MASQ, "-j", "MARK", "--or-mark", MASQ_MARK)
    if localhost_nodeports:
        filt.chain(KUBE_FIREWALL)
        filt.add(KUBE_FIREWALL, "-m", "comment", "--comment", _q("block incoming localnet connections"),
                 "-d", "127.0.0.0/8", "!", "-s", "127.0.0.0/8",
                 "-m", "conntrack", "!", "--ctstate", "RELATED,ESTABLISHED,DNAT", "-j", "DROP")
    if_local = ("-s", cluster_cidr) if cluster_cidr else None
    if_not_local = ("!", "-s", cluster_cidr) if cluster_cidr else None
    node_ip = ipaddress.ip_address(node_ips[0]) if node_ips else None

    active: set[str] = set()
    ordered = sorted(services, key=lambda s: (s.namespace, s.name, s.port_name, s.protocol))
    for svc in ordered:
        proto = svc.protocol.lower()
        name = svc.name_string
        picked = categorize(svc, endpoints.get(svc.key, ()), node_name, zone)
        cluster_eps, local_eps, reachable, has_eps = picked.cluster, picked.local, picked.reachable, picked.has_any
        svc_c, svl_c, ext_c, fw_c = svc_chain(svc), svl_chain(svc), ext_chain(svc), fw_chain(svc)
        uses_cluster_chain = bool(cluster_eps) and svc.uses_cluster_endpoints
        uses_local_chain = bool(local_eps) and svc.uses_local_endpoints
        internal_chain, has_internal = svc_c, has_eps
        if svc.internal_policy_local:
            internal_chain, has_internal = svl_c, has_eps and bool(local_eps)
        external_policy_chain, has_external = svc_c, has_eps
        if svc.external_policy_local:
            external_policy_chain, has_external = svl_c, has_eps and bool(local_eps)
        uses_ext_chain = has_eps and svc.externally_accessible
        lb_ips = [ip for ip in svc.load_balancer_ips if _is_v4(ip)]
        uses_fw = has_eps and bool(lb_ips) and bool(svc.load_balancer_source_ranges)
        lb_chain = fw_c if uses_fw else ext_c
        if not has_eps:
            int_target = ext_target = "REJECT"
            int_comment = ext_comment = _q(f"{name} has no endpoints")
        else:
            int_target = ext_target = ""
            int_comment = ext_comment = ""
            if not has_internal:
                int_target, int_comment = "DROP", _q(f"{name} has no local endpoints")
            if not has_external:
                ext_target, ext_comment = "DROP", _q(f"{name} has no local endpoints")
        match = ("-m", proto, "-p", proto)
        dport = ("--dport", str(svc.port))

        cluster_ips = [ip for ip in svc.cluster_ips if _is_v4(ip)]
        for cip in cluster_ips:
            if has_internal:
                nat.add(KUBE_SERVICES, "-m", "comment", "--comment", _q(f"{name} cluster IP"),
                        *match, "-d", cip, *dport, "-j", internal_chain)
            else:
                filt.add(KUBE_SERVICES, "-m", "comment", "--comment", int_comment,
                         *match, "-d", cip, *dport, "-j", int_target)
        for eip in (ip for ip in svc.external_ips if _is_v4(ip)):
            if has_eps:
                nat.add(KUBE_SERVICES, "-m", "comment", "--comment", _q(f"{name} external IP"),
                        *match, "-d", eip, *dport, "-j", ext_c)
            if not has_external:
                filt.add(KUBE_EXTERNAL_SERVICES, "-m", "comment", "--comment", ext_comment,
                         *match, "-d", eip, *dport, "-j", ext_target)
        for lbip in lb_ips:
            if has_eps:
                nat.add(KUBE_SERVICES, "-m", "comment", "--comment", _q(f"{name} loadbalancer IP"),
                        *match, "-d", lbip, *dport, "-j", lb_chain)
            if uses_fw:
                filt.add(KUBE_PROXY_FIREWALL, "-m", "comment", "--comment",
                         _q(f"{name} traffic not accepted by {fw_c}"), *match, "-d", lbip, *dport, "-j", "DROP")
        if not has_external:
            for lbip in lb_ips:
                filt.add(KUBE_EXTERNAL_SERVICES, "-m", "comment", "--comment", ext_comment,
                         *match, "-d", lbip, *dport, "-j", ext_target)
        if svc.node_port:
            if has_eps:
                nat.add(KUBE_NODEPORTS, "-m", "comment", "--comment", _q(name),
                        *match, "--dport", str(svc.node_port), "-j", ext_c)
            if not has_external:
                filt.add(KUBE_EXTERNAL_SERVICES, "-m", "comment", "--comment", ext_comment,
                         "-m", "addrtype", "--dst-type", "LOCAL", *match,
                         "--dport", str(svc.node_port), "-j", ext_target)
        if svc.health_check_node_port:
            filt.add(KUBE_NODEPORTS, "-m", "comment", "--comment", _q(f"{name} health check node port"),
                     "-m", "tcp", "-p", "tcp", "--dport", str(svc.health_check_node_port), "-j", "ACCEPT")

        if has_internal:
            for cip in cluster_ips:
                args = ("-m", "comment", "--comment", _q(f"{name} cluster IP"), *match, "-d", cip, *dport)
                if masquerade_all:
                    nat.add(internal_chain, *args, "-j", KUBE_MARK_MASQ)
                elif if_not_local:
                    nat.add(internal_chain, *args, *if_not_local, "-j", KUBE_MARK_MASQ)
        if uses_ext_chain:
            nat.chain(ext_c)
            active.add(ext_c)
            if not svc.external_policy_local:
                nat.add(ext_c, "-m", "comment", "--comment", _q(f"masquerade traffic for {name} external destinations"),
                        "-j", KUBE_MARK_MASQ)
            else:
                if if_local:
                    nat.add(ext_c, "-m", "comment", "--comment", _q(f"pod traffic for {name} external destinations"),
                            *if_local, "-j", svc_c)
                nat.add(ext_c, "-m", "comment", "--comment",
                        _q(f"masquerade LOCAL traffic for {name} external destinations"),
                        "-m", "addrtype", "--src-type", "LOCAL", "-j", KUBE_MARK_MASQ)
                nat.add(ext_c, "-m", "comment", "--comment",
                        _q(f"route LOCAL traffic for {name} external destinations"),
                        "-m", "addrtype", "--src-type", "LOCAL", "-j", svc_c)
            if has_external:
                nat.add(ext_c, "-j", external_policy_chain)
        if uses_fw:
            nat.chain(fw_c)
            active.add(fw_c)
            fw_args = ("-m", "comment", "--comment", _q(f"{name} loadbalancer IP"))
            allow_from_node = False
            for cidr in svc.load_balancer_source_ranges:
                nat.add(fw_c, *fw_args, "-s", cidr, "-j", ext_c)
                net = ipaddress.ip_network(cidr, strict=False)
                if node_ip is not None and node_ip.version == net.version and node_ip in net:
                    allow_from_node = True
            if allow_from_node:
                for lbip in lb_ips:
                    nat.add(fw_c, *fw_args, "-s", lbip, "-j", ext_c)
            # Whatever falls off the end is dropped in filter's KUBE-PROXY-FIREWALL.
            nat.add(fw_c, "-m", "comment", "--comment",
                    _q(f"other traffic to {name} will be dropped by KUBE-PROXY-FIREWALL"))
        if uses_cluster_chain:
            nat.chain(svc_c)
            active.add(svc_c)
            _dispatch(nat, svc, svc_c, cluster_eps)
        if uses_local_chain:
            nat.chain(svl_c)
            active.add(svl_c)
            _dispatch(nat, svc, svl_c, local_eps)
        for ep in reachable:
            sep = sep_chain(svc, ep)
            nat.chain(sep)
            active.add(sep)
            comment = ("-m", "comment", "--comment", _q(name))
            nat.add(sep, *comment, "-s", ep.ip, "-j", KUBE_MARK_MASQ)
            recent = ("-m", "recent", "--name", sep, "--set") if svc.session_affinity == "ClientIP" else ()
            nat.add(sep, *comment, *recent, *match, "-j", "DNAT", "--to-destination", str(ep))

    for stale in sorted(set(existing_chains) - active):
        if is_service_chain(stale):
            nat.chain(stale)
            nat.rules.append(f"-X {stale}")

    nodeports_comment = _q("kubernetes service nodeports; NOTE: this must be the last rule in this chain")
    if not nodeport_addresses:
        dest = ["-m", "addrtype", "--dst-type", "LOCAL"]
        if not localhost_nodeports:
            dest += ["!", "-d", "127.0.0.0/8"]
        nat.add(KUBE_SERVICES, "-m", "comment", "--comment", nodeports_comment, *dest, "-j", KUBE_NODEPORTS)
    else:
        for ip in _nodeport_ips(nodeport_addresses, node_ips, localhost_nodeports):
            nat.add(KUBE_SERVICES, "-m", "comment", "--comment", nodeports_comment, "-d", ip, "-j", KUBE_NODEPORTS)

    filt.add(KUBE_FORWARD, "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP")
    filt.add(KUBE_FORWARD, "-m", "comment", "--comment", _q("kubernetes forwarding rules"),
             "-m", "mark", "--mark", mark, "-j", "ACCEPT")
    filt.add(KUBE_FORWARD, "-m", "comment", "--comment", _q("kubernetes forwarding conntrack rule"),
             "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT")

    out = ["*filter", *filt.chains, *filt.rules, "COMMIT", "*nat", *nat.chains, *nat.rules, "COMMIT", ""]
    return "\n".join(out)


def _nodeport_ips(cidrs: Sequence[str], node_ips: Sequence[str], localhost: bool) -> list[str]:
    """The node's IPv4 addresses inside --nodeport-addresses ("primary" means the node IPs)."""
    nets = []
    for c in cidrs:
        if c == "primary":
            nets.extend(ipaddress.ip_network(f"{ip}/32") for ip in node_ips if _is_v4(ip))
            continue
        try:
            nets.append(ipaddress.ip_network(c, strict=False))
        except ValueError:
            log.warning("ignoring invalid nodeport address %r", c)
    out = []
    candidates = [ip for ip in node_ips if _is_v4(ip)] + (["127.0.0.1"] if localhost else [])
    for ip in candidates:
        addr = ipaddress.ip_address(ip)
        if any(addr.version == n.version and addr in n for n in nets) and ip not in out:
            out.append(ip)
    return out


def _dispatch(nat: _Table, svc: ServicePort, chain: str, eps: Sequence[Endpoint]) -> None:
    """Service chain → endpoint chains: affinity checks first, then random choice."""
    name = svc.name_string
    if svc.session_affinity == "ClientIP":
        for ep in eps:
            sep = sep_chain(svc, ep)
            nat.add(chain, "-m", "comment", "--comment", _q(f"{name} -> {ep}"),
                    "-m", "recent", "--name", sep, "--rcheck", "--seconds", str(svc.affinity_timeout), "--reap",
                    "-j", sep)
    n = len(eps)
    for i, ep in enumerate(eps):
        stat = ("-m", "statistic", "--mode", "random", "--probability", probability(n - i)) if i < n - 1 else ()
        nat.add(chain, "-m", "comment", "--comment", _q(f"{name} -> {ep}"), *stat, "-j", sep_chain(svc, ep))


# --- programming the kernel ---------------------------------------------------------------------

def _cmd(netns: str | None, *argv: str) -> list[str]:
    return (["ip", "netns", "exec", netns] if netns else []) + list(argv)


def _run(netns: str | None, *argv: str, input: str | None = None, check: bool = True):
    return subprocess.run(_cmd(netns, *argv), input=input, capture_output=True, text=True, check=check,
                          timeout=60)


def existing_nat_chains(netns: str | None = None) -> set[str]:
    """Chain names in the nat table now (iptables-save)."""
    out = _run(netns, IPTABLES_SAVE, "-t", "nat").stdout
    return {line[1:].split()[0] for line in out.splitlines() if line.startswith(":")}


def ensure_jumps(netns: str | None = None, *, localhost_nodeports: bool = True) -> None:
    """Insert the built-in → our chain jumps that are missing (iptables -C, then -I)."""
    for j in JUMPS + (LOCALNET_JUMPS if localhost_nodeports else ()):
        _run(netns, IPTABLES, "-w", "-t", j.table, "-N", j.chain, check=False)  # exists: fine
        rule = j.rule()
        if _run(netns, IPTABLES, "-w", "-t", j.table, "-C", *rule, check=False).returncode != 0:
            _run(netns, IPTABLES, "-w", "-t", j.table, "-I", *rule)


def set_route_localnet(netns: str | None = None) -> None:
    """NodePorts on 127.0.0.1 need route_localnet (set in the namespace we program)."""
    _run(netns, "sysctl", "-q", "-w", "net.ipv4.conf.all.route_localnet=1")


def apply(text: str, *, netns: str | None = None, localhost_nodeports: bool = True) -> None:
    """Program `text` (from `render`) with iptables-restore --noflush, jumps first."""
    ensure_jumps(netns, localhost_nodeports=localhost_nodeports)
    if localhost_nodeports:
        set_route_localnet(netns)
    res = _run(netns, IPTABLES_RESTORE, "-w", "--noflush", input=text, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"iptables-restore failed: {res.stderr.strip()}")


def sync(services: Iterable[ServicePort], endpoints: Mapping[tuple[str, str, str], Sequence[Endpoint]], *,
         netns: str | None = None, **options) -> str:
    """A full sync: read the current chains, render, apply (deleting stale service chains)."""
    text = render(services, endpoints, existing_chains=existing_nat_chains(netns), **options)
    apply(text, netns=netns, localhost_nodeports=options.get("localhost_nodeports", True))
    return text
