"""The nftables mode: everything lives in one table, ``table ip kube-proxy``.

Follows upstream kube-proxy's nftables proxier (pkg/proxy/nftables/proxier.go,
Kubernetes v1.36) for names and semantics: base chains at the same hooks and
priorities, a ``services`` chain dispatching through the ``service-ips`` and
``service-nodeports`` verdict maps, ``no-endpoint-services`` /
``no-endpoint-nodeports`` rejecting (or, for a Local policy without local
endpoints, dropping) in the filter chains, ``firewall-ips`` for
loadBalancerSourceRanges, the ``cluster-ips`` set, per-service chains
(``service-``, ``local-``, ``external-``, ``firewall-``), and, as v1.36, hairpin
traffic masqueraded through the ``hairpin-connections`` set; endpoint chains
(``endpoint-``) and affinity sets (``affinity-``) only for ClientIP affinity.

Where we differ: a service chain picks its endpoint with plain rules, each with
a fresh draw (``numgen random mod 3 == 0 dnat to a``, ``numgen random mod 2 == 0
dnat to b``, ``dnat to c``: equal odds overall) instead of an anonymous
``numgen ... map`` per service, because every anonymous set costs the kernel
time that grows with the sets already in the table; and the masquerade mark is
set inline in the service chain instead of by a jump. So an endpoint change
rewrites one chain with no jump or goto in it, and the kernel need not
re-validate the chains reachable from the base chains (which it does whenever a
jump is added: ~115 ms with 10k services here).

A full sync deletes and recreates the table in one transaction (carrying the
ClientIP affinity entries over); a partial sync diffs what the changed services
need against what we last wrote for them and sends only the difference, also as
one transaction. Both are atomic. nft 1.0.6 lists every chain of the ruleset
before any `delete`, `add rule` or `add element`, hence rules go in as `add chain
x { ... }` blocks and elements by restating their set's declaration.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import ipaddress
import json
import logging
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from typing import Collection, Iterable, Mapping, Sequence

from pyproxy.backend import (Backend, BackendUnavailable, NodeContext, PortKey, ServiceName, SyncFailed,
                             changed_ports)
from pyproxy.model import Endpoint, ServicePort, is_ipv4
from pyproxy.topology import categorize

log = logging.getLogger("pyproxy")

TABLE = "ip kube-proxy"
MASQ_MARK = "0x4000"

# Chains, sets and maps that do not belong to one service (upstream's names).
SERVICES = "services"
SERVICE_IPS = "service-ips"
SERVICE_NODEPORTS = "service-nodeports"
NODEPORT_IPS = "nodeport-ips"
CLUSTER_IPS = "cluster-ips"
SERVICE_ENDPOINTS_CHECK = "service-endpoints-check"
NODEPORT_ENDPOINTS_CHECK = "nodeport-endpoints-check"
NO_ENDPOINT_SERVICES = "no-endpoint-services"
NO_ENDPOINT_NODEPORTS = "no-endpoint-nodeports"
REJECT_CHAIN = "reject-chain"
CLUSTER_IPS_CHECK = "cluster-ips-check"
FIREWALL_IPS = "firewall-ips"
FIREWALL_CHECK = "firewall-check"
MARK_MASQ = "mark-for-masquerade"
MASQUERADING = "masquerading"
HAIRPIN = "hairpin-connections"  # local endpoint . itself . proto . port: a pod reaching its own service

# (name, type, hook, priority): filter chains see pre-DNAT addresses (dstnat - 10),
# except filter-output-post-dnat which sees what nat-output made of them.
BASE_CHAINS = (
    ("filter-prerouting", "filter", "prerouting", -110),
    ("filter-input", "filter", "input", -110),
    ("filter-forward", "filter", "forward", -110),
    ("filter-output", "filter", "output", -110),
    ("filter-output-post-dnat", "filter", "output", -90),
    ("nat-prerouting", "nat", "prerouting", -100),
    ("nat-output", "nat", "output", -100),
    ("nat-postrouting", "nat", "postrouting", 100),
)
# (from base chain, extra match, to chain), in upstream's order.
JUMPS = (
    ("filter-input", "ct state new ", NODEPORT_ENDPOINTS_CHECK),
    ("filter-input", "ct state new ", SERVICE_ENDPOINTS_CHECK),
    ("filter-forward", "ct state new ", SERVICE_ENDPOINTS_CHECK),
    ("filter-output", "ct state new ", SERVICE_ENDPOINTS_CHECK),
    ("filter-prerouting", "ct state new ", FIREWALL_CHECK),
    ("filter-output", "ct state new ", FIREWALL_CHECK),
    ("nat-output", "", SERVICES),
    ("nat-prerouting", "", SERVICES),
    ("nat-postrouting", "", MASQUERADING),
    ("filter-forward", "ct state new ", CLUSTER_IPS_CHECK),
    ("filter-output-post-dnat", "ct state new ", CLUSTER_IPS_CHECK),
)
ADDR_PROTO_PORT = "ipv4_addr . inet_proto . inet_service : verdict"
PROTO_PORT = "inet_proto . inet_service : verdict"
# (kind, name, type, comment) of the shared sets and maps.
SHARED_SETS = (
    ("set", CLUSTER_IPS, "ipv4_addr", "Active ClusterIPs"),
    ("map", NO_ENDPOINT_SERVICES, ADDR_PROTO_PORT, "vmap to drop or reject packets to services with no endpoints"),
    ("map", NO_ENDPOINT_NODEPORTS, PROTO_PORT, "vmap to drop or reject packets to service nodeports with no endpoints"),
    ("map", FIREWALL_IPS, ADDR_PROTO_PORT, "destinations that are subject to LoadBalancerSourceRanges"),
    ("map", SERVICE_IPS, ADDR_PROTO_PORT, "ClusterIP, ExternalIP and LoadBalancer IP traffic"),
    ("map", SERVICE_NODEPORTS, PROTO_PORT, "NodePort traffic"),
    ("set", HAIRPIN, "ipv4_addr . ipv4_addr . inet_proto . inet_service", "service hairpin connections"),
)
ELEMENT_SETS = tuple(name for _, name, _, _ in SHARED_SETS)  # the order elements are written in
# Sets whose elements several services may need at once (two services in front of one pod):
# counted, not owned by one service, and deleted only when no service needs them any more.
COUNTED_SETS = frozenset({HAIRPIN})

CHAIN_NAME_BASE_MAX = 256 - 16  # nft's name limit minus our longest prefix


def _hash_and_truncate(name: str) -> str:
    """Upstream's hashAndTruncate: 8 base32 characters of sha256(name), a dash, the name (capped)."""
    # base32 turns each 5 bytes into 8 characters: the first 5 bytes of the digest are enough.
    out = base64.b32encode(hashlib.sha256(name.encode()).digest()[:5]).decode() + "-" + name
    return out if len(out) <= CHAIN_NAME_BASE_MAX else out[:CHAIN_NAME_BASE_MAX - 3] + "..."


def chain_base(svc: ServicePort) -> str:
    """``HASH-namespace/name/protocol/portname``, e.g. ``ULMVA6XW-ns1/svc1/tcp/p80``."""
    return _hash_and_truncate(f"{svc.namespace}/{svc.name}/{svc.protocol.lower()}/{svc.port_name}")


def endpoint_base(svc: ServicePort, ep: Endpoint) -> str:
    """``HASH-namespace/name/protocol/portname__ip/port`` (IPv6 colons become dots)."""
    ip = ep.ip.replace(":", ".")
    return _hash_and_truncate(f"{svc.namespace}/{svc.name}/{svc.protocol.lower()}/{svc.port_name}__{ip}/{ep.port}")


def service_chain(svc: ServicePort) -> str:
    return "service-" + chain_base(svc)


def local_chain(svc: ServicePort) -> str:
    return "local-" + chain_base(svc)


def external_chain(svc: ServicePort) -> str:
    return "external-" + chain_base(svc)


def firewall_chain(svc: ServicePort) -> str:
    return "firewall-" + chain_base(svc)


def endpoint_chain(svc: ServicePort, ep: Endpoint) -> str:
    return "endpoint-" + endpoint_base(svc, ep)


def affinity_set(svc: ServicePort, ep: Endpoint) -> str:
    return "affinity-" + endpoint_base(svc, ep)




def _v4_addr(ip: str) -> ipaddress.IPv4Address | None:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    return addr if addr.version == 4 else None


def _v4_net(cidr: str) -> ipaddress.IPv4Network | None:
    try:
        net = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return None
    return net if net.version == 4 else None


@functools.lru_cache(maxsize=16)
def _local_cidr(cluster_cidr: str | None) -> str | None:
    """The IPv4 part of --cluster-cidr (which may list one CIDR per family), or None."""
    for part in (cluster_cidr or "").split(","):
        net = _v4_net(part.strip())
        if net is not None:
            return str(net)
    return None


@dataclass
class PortRules:
    """What one service port owns in the table; a partial sync diffs two of these."""
    chains: dict[str, list[str]] = field(default_factory=dict)  # chain -> its rules, in order
    # (set or map, key) -> what follows the key when adding: "" for a set, " : goto x" for a map
    elements: dict[tuple[str, str], str] = field(default_factory=dict)
    affinity: dict[str, int] = field(default_factory=dict)  # affinity set -> timeout, seconds


def render_port(svc: ServicePort, endpoints: Sequence[Endpoint], node: NodeContext) -> PortRules | None:
    """The chains, map/set elements and affinity sets of one service port; None if it has no IPv4 ClusterIP."""
    cluster_ips = [ip for ip in svc.cluster_ips if is_ipv4(ip)]
    if not cluster_ips:
        return None
    cip = cluster_ips[0]
    proto = svc.protocol.lower()
    name = svc.name_string
    eps = [e for e in endpoints if is_ipv4(e.ip)]
    picked = categorize(svc, eps, node.node_name, node.zone)
    has_any = picked.has_any
    base = chain_base(svc)
    cluster_c, local_c, ext_c, fw_c = "service-" + base, "local-" + base, "external-" + base, "firewall-" + base
    out = PortRules()
    chains = out.chains

    affinity = svc.session_affinity == "ClientIP"
    ep_names = {}  # endpoint chains and affinity sets exist only for ClientIP affinity
    for ep in picked.reachable if affinity else ():
        eb = endpoint_base(svc, ep)
        ep_names[(ep.ip, ep.port)] = ("endpoint-" + eb, "affinity-" + eb)
    if picked.cluster and svc.uses_cluster_endpoints:
        chains[cluster_c] = []
    if picked.local and svc.uses_local_endpoints:
        chains[local_c] = []

    internal_c, has_internal = cluster_c, has_any
    if svc.internal_policy_local:
        internal_c, has_internal = local_c, has_any and bool(picked.local)
    external_policy_c, has_external = cluster_c, has_any
    if svc.external_policy_local:
        external_policy_c, has_external = local_c, has_any and bool(picked.local)
    # Never point at a chain we do not write (categorize and the policies agree, but be safe).
    has_internal = has_internal and internal_c in chains
    has_external = has_external and external_policy_c in chains
    uses_ext = has_any and svc.externally_accessible
    if uses_ext:
        chains[ext_c] = []
    if not has_any:
        int_verdict = ext_verdict = "goto " + REJECT_CHAIN
    else:
        int_verdict = "" if has_internal else "drop"
        ext_verdict = "" if has_external else "drop"
    comment = f' comment "{name}"'
    pod_cidr = _local_cidr(node.cluster_cidr)
    elements = out.elements
    port = svc.port

    def element(set_name: str, key: str, value: str = "") -> None:
        elements.setdefault((set_name, key), value)

    elements[(CLUSTER_IPS, cip)] = ""
    key = f"{cip} . {proto} . {port}"
    if has_internal:
        element(SERVICE_IPS, key, f" : goto {internal_c}")
    else:
        element(NO_ENDPOINT_SERVICES, key, f"{comment} : {int_verdict}")
    for eip in svc.external_ips:
        if not is_ipv4(eip):
            continue
        key = f"{eip} . {proto} . {port}"
        if has_any:
            element(SERVICE_IPS, key, f" : goto {ext_c}")
        if not has_external:
            element(NO_ENDPOINT_SERVICES, key, f"{comment} : {ext_verdict}")
    lb_ips = [ip for ip in svc.load_balancer_ips if is_ipv4(ip)]
    ranges = [net for net in map(_v4_net, svc.load_balancer_source_ranges) if net is not None]
    uses_fw = bool(lb_ips) and bool(ranges)
    for lbip in lb_ips:
        key = f"{lbip} . {proto} . {port}"
        if has_any:
            element(SERVICE_IPS, key, f" : goto {ext_c}")
        if uses_fw:
            element(FIREWALL_IPS, key, f"{comment} : goto {fw_c}")
        if not has_external:
            element(NO_ENDPOINT_SERVICES, key, f"{comment} : {ext_verdict}")
    if svc.node_port:
        key = f"{proto} . {svc.node_port}"
        if has_any:
            element(SERVICE_NODEPORTS, key, f" : goto {ext_c}")
        if not has_external:
            element(NO_ENDPOINT_NODEPORTS, key, f"{comment} : {ext_verdict}")

    if has_internal:
        match = f"ip daddr {cip} {proto} dport {port}"
        # The mark-for-masquerade chain's one rule, inline: no jump in the chain endpoint changes rewrite.
        if node.masquerade_all:
            chains[internal_c].append(f"{match} mark set mark or {MASQ_MARK}")
        elif pod_cidr:
            chains[internal_c].append(f"{match} ip saddr != {pod_cidr} mark set mark or {MASQ_MARK}")
    if uses_ext:
        rules = chains[ext_c]
        if not svc.external_policy_local:
            rules.append(f"jump {MARK_MASQ}")  # may leave the node: masquerade
        else:
            # Pods and the node itself get the cluster policy (as if via an external LB);
            # traffic from the node is masqueraded since its source would be the service IP.
            if cluster_c in chains:
                if pod_cidr:
                    rules.append(f'ip saddr {pod_cidr} goto {cluster_c} comment "short-circuit pod traffic"')
                rules.append(f'fib saddr type local jump {MARK_MASQ} comment "masquerade local traffic"')
                rules.append(f'fib saddr type local goto {cluster_c} comment "short-circuit local traffic"')
        if has_external:
            rules.append(f"goto {external_policy_c}")
    if uses_fw:
        sources = [str(n) for n in ranges]
        node_ip = next((a for a in map(_v4_addr, node.node_ips) if a is not None), None)
        if node_ip is not None and any(node_ip in n for n in ranges):
            # The LB IP may be local: the node then reaches it with the LB IP as source.
            sources += lb_ips
        chains[fw_c] = [f"ip saddr != {{ {', '.join(sources)} }} drop"]

    for chain_name, set_name in ep_names.values():
        out.affinity[set_name] = svc.affinity_timeout
    if cluster_c in chains:
        _dispatch(chains[cluster_c], picked.cluster, ep_names, affinity, proto)
    if local_c in chains:
        _dispatch(chains[local_c], picked.local, ep_names, affinity, proto)
    for ep in picked.reachable:
        if ep.node_name == node.node_name:  # only a pod on this node can reach itself through us
            element(HAIRPIN, f"{ep.ip} . {ep.ip} . {proto} . {ep.port}")
        if affinity:
            chain_name, set_name = ep_names[(ep.ip, ep.port)]
            chains[chain_name] = [f"update @{set_name} {{ ip saddr }}", f"meta l4proto {proto} dnat to {ep.ip}:{ep.port}"]
    return out


def _dispatch(rules: list[str], eps: Sequence[Endpoint], names: dict, affinity: bool, proto: str) -> None:
    """Pick an endpoint with equal odds: a chain of `numgen random mod K` rules, each with a fresh draw.

    Without affinity each rule DNATs directly (no endpoint chain, and no jump for the
    kernel to re-validate when endpoints change); with it, affinity hits go first and
    each pick goes to the endpoint's chain, which records the client.
    """
    n = len(eps)
    if affinity:
        targets = [names[(ep.ip, ep.port)] for ep in eps]
        rules.extend(f"ip saddr @{set_name} goto {chain_name}" for chain_name, set_name in targets)
        actions = [f"goto {chain_name}" for chain_name, _ in targets]
    else:
        actions = [f"meta l4proto {proto} dnat to {ep.ip}:{ep.port}" for ep in eps]
    for i, action in enumerate(actions):
        left = n - i
        rules.append(f"numgen random mod {left} == 0 {action}" if left > 1 else action)


def render_base(node: NodeContext, nodeport_ips: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """Declarations and rules that belong to no service: (commands before service objects, commands after).

    `nodeport_ips` None means NodePorts answer on every local address (no --nodeport-addresses).
    """
    t = TABLE
    decl = [f"add table {t}", f"delete table {t}", f'add table {t} {{ comment "rules for kube-proxy" ; }}']
    for chain, kind, hook, prio in BASE_CHAINS:
        decl.append(f"add chain {t} {chain} {{ type {kind} hook {hook} priority {prio} ; }}")
    for chain in (NODEPORT_ENDPOINTS_CHECK, SERVICE_ENDPOINTS_CHECK, FIREWALL_CHECK, SERVICES, MASQUERADING,
                  CLUSTER_IPS_CHECK, MARK_MASQ):
        decl.append(f"add chain {t} {chain}")
    decl.append(f'add chain {t} {REJECT_CHAIN} {{ comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ; }}')
    for kind, name, typ, comment in SHARED_SETS:
        decl.append(_declare(kind, name, typ, comment))
    if nodeport_ips is not None:
        decl.append(f'add set {t} {NODEPORT_IPS} {{ type ipv4_addr ; comment "IPs that accept NodePort traffic" ; }}')
        if nodeport_ips:
            decl.append(f"add element {t} {NODEPORT_IPS} {{ {', '.join(nodeport_ips)} }}")

    r = f"add rule {t} "
    rules = [f"{r}{src} {extra}jump {dst}" for src, extra, dst in JUMPS]
    rules += [
        f"{r}{MARK_MASQ} mark set mark or {MASQ_MARK}",
        f"{r}{MASQUERADING} ct status dnat ip saddr . ip daddr . meta l4proto . th dport @{HAIRPIN} "
        "masquerade fully-random",
        f"{r}{MASQUERADING} mark and {MASQ_MARK} == 0 return",
        f"{r}{MASQUERADING} mark set mark xor {MASQ_MARK}",
        f"{r}{MASQUERADING} masquerade fully-random",
        f'{r}{CLUSTER_IPS_CHECK} ip daddr @{CLUSTER_IPS} reject comment "Reject traffic to invalid ports of ClusterIPs"',
        f"{r}{REJECT_CHAIN} reject",
        f"{r}{SERVICE_ENDPOINTS_CHECK} ip daddr . meta l4proto . th dport vmap @{NO_ENDPOINT_SERVICES}",
        f"{r}{FIREWALL_CHECK} ip daddr . meta l4proto . th dport vmap @{FIREWALL_IPS}",
        f"{r}{SERVICES} ip daddr . meta l4proto . th dport vmap @{SERVICE_IPS}",
    ]
    if nodeport_ips is None:
        rules += [
            f"{r}{NODEPORT_ENDPOINTS_CHECK} ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @{NO_ENDPOINT_NODEPORTS}",
            f"{r}{SERVICES} fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport "
            f"vmap @{SERVICE_NODEPORTS}",
        ]
    else:
        rules += [
            f"{r}{NODEPORT_ENDPOINTS_CHECK} ip daddr @{NODEPORT_IPS} meta l4proto . th dport "
            f"vmap @{NO_ENDPOINT_NODEPORTS}",
            f"{r}{SERVICES} ip daddr @{NODEPORT_IPS} meta l4proto . th dport vmap @{SERVICE_NODEPORTS}",
        ]
    return decl, rules


def nodeport_ips(cidrs: Sequence[str], node_ips: Sequence[str], local_ips: Iterable[str]) -> list[str] | None:
    """The addresses NodePorts answer on: None for all local ones, else the local IPv4 addresses in `cidrs`.

    "primary" stands for the node IPs. Loopback is never included (as upstream: nftables
    mode has no localhost NodePorts).
    """
    if not cidrs:
        return None
    nets, primary = [], False
    for c in cidrs:
        if c == "primary":
            primary = True
            continue
        net = _v4_net(c)
        if net is None:
            if not isinstance(c, str) or ":" not in c:
                log.warning("ignoring invalid nodeport address %r", c)
            continue
        nets.append(net)
    out: list[str] = []
    candidates = list(local_ips) + (list(node_ips) if primary else [])
    for ip in candidates:
        addr = _v4_addr(ip)
        if addr is None or addr.is_loopback or ip in out:
            continue
        if (primary and ip in node_ips) or any(addr in n for n in nets):
            out.append(ip)
    return out


def dedupe(ports: Mapping[PortKey, PortRules], taken: Mapping[tuple[str, str], ServiceName] | None = None,
           ) -> dict[tuple[str, str], ServiceName]:
    """Give each set/map key to one service: the first in key order, or its owner in `taken`.

    Losing elements are removed from their PortRules (two services claiming one external
    IP and port: upstream also keeps just one). Returns the new owners.
    """
    owners: dict[tuple[str, str], ServiceName] = {}
    for pkey in sorted(ports):
        svc_name = (pkey[0], pkey[1])
        rules = ports[pkey]
        lost = []
        for ek in rules.elements:
            if ek[0] in COUNTED_SETS:
                continue
            owner = owners.get(ek) or (taken.get(ek) if taken else None)
            if owner is None:
                owners[ek] = svc_name
            elif owner != svc_name:
                lost.append(ek)
            elif ek not in owners:
                owners[ek] = svc_name
        for ek in lost:
            log.warning("service %s/%s: %s %s is already used by %s/%s, skipping it", pkey[0], pkey[1], ek[0],
                        ek[1], *(owners.get(ek) or taken[ek]))
            del rules.elements[ek]
    return owners


def _declare(kind: str, name: str, typ: str, comment: str, elements: Sequence[str] = ()) -> str:
    body = f'type {typ} ; comment "{comment}" ;'
    if elements:
        body += f" elements = {{ {', '.join(elements)} }} ;"
    return f"add {kind} {TABLE} {name} {{ {body} }}"


SHARED_DECL = {name: (kind, typ, comment) for kind, name, typ, comment in SHARED_SETS}


def _add_elements(out: list[str], set_name: str, items: Sequence[str], chunk: int = 5000) -> None:
    """Add elements by restating the set's declaration: unlike `add element`, nft 1.0.6 then
    skips fetching every chain of the ruleset first (~2 µs per chain)."""
    kind, typ, comment = SHARED_DECL[set_name]
    for i in range(0, len(items), chunk):
        out.append(_declare(kind, set_name, typ, comment, items[i:i + chunk]))


def _affinity_decl(set_name: str, timeout: int) -> str:
    return f"add set {TABLE} {set_name} {{ type ipv4_addr ; flags dynamic,timeout ; timeout {timeout}s ; }}"


def _fill_chain(chain: str, rules: Sequence[str]) -> str:
    """Rules go in as a chain block (`add chain x { r1 ; r2 ; }`): same effect as `add rule`
    lines, but nft 1.0.6 does not fetch every chain of the ruleset for it."""
    return f"add chain {TABLE} {chain} {{ {' ; '.join(rules)} ; }}"


def full_transaction(ports: Mapping[PortKey, PortRules], node: NodeContext,
                     nodeport_addrs: Sequence[str] | None,
                     affinity_entries: Mapping[str, Sequence[tuple[str, int]]] | None = None) -> str:
    """The `nft -f` input that replaces the table with exactly these ports' objects (atomic).

    `affinity_entries` (affinity set -> [(client IP, seconds left)]) are carried over into
    the recreated affinity sets of the same name, so a full sync keeps ClientIP stickiness.
    """
    t = TABLE
    decl, base_rules = render_base(node, nodeport_addrs)
    out = decl
    ordered = [ports[k] for k in sorted(ports)]
    for pr in ordered:
        for set_name, timeout in pr.affinity.items():
            out.append(_affinity_decl(set_name, timeout))
            kept = [f"{ip} expires {min(left, timeout)}s" for ip, left in (affinity_entries or {}).get(set_name, ())
                    if left > 0]
            if kept:
                out.append(f"add element {t} {set_name} {{ {', '.join(kept)} }}")
        for chain in pr.chains:
            out.append(f"add chain {t} {chain}")
    out += base_rules
    for pr in ordered:
        for chain, rules in pr.chains.items():
            if rules:
                out.append(_fill_chain(chain, rules))
    by_set: dict[str, dict[str, str]] = {name: {} for name in ELEMENT_SETS}
    for pr in ordered:
        for (set_name, key), value in pr.elements.items():
            by_set[set_name][key] = value  # ports of one service share their ClusterIP
    for set_name in ELEMENT_SETS:
        _add_elements(out, set_name, [k + v for k, v in by_set[set_name].items()])
    out.append("")
    return "\n".join(out)



def _merged(rules) -> tuple[dict[str, list[str]], dict[tuple[str, str], str], dict[str, int]]:
    """The chains, map/set elements and affinity sets of several service ports, together."""
    chains: dict[str, list[str]] = {}
    elements: dict[tuple[str, str], str] = {}
    affinity: dict[str, int] = {}
    for pr in rules:
        chains.update(pr.chains)
        elements.update(pr.elements)
        affinity.update(pr.affinity)
    return chains, elements, affinity

def partial_transaction(old: Iterable[PortRules], new: Iterable[PortRules],
                        counted_gone: Iterable[tuple[str, str]] = (), counted_new: Iterable[tuple[str, str]] = (),
                        ) -> str:
    """The `nft -f` input turning the objects of `old` into those of `new` ("" if nothing changes).

    Elements of COUNTED_SETS are left out of that diff: `counted_gone` / `counted_new`
    say which of them no service needs any more / a service needs for the first time.
    Order matters: stale elements are deleted and changed chains flushed (dropping
    their references) before chains and sets are deleted; sets and chains exist before
    rules and elements point at them.
    """
    t = TABLE
    old_chains, old_elems, old_aff = _merged(old)
    new_chains, new_elems, new_aff = _merged(new)
    for elems, counted in ((old_elems, counted_gone), (new_elems, counted_new)):
        for ek in [ek for ek in elems if ek[0] in COUNTED_SETS]:
            del elems[ek]
        elems.update(dict.fromkeys(counted, ""))

    del_sets = [s for s in old_aff if new_aff.get(s) != old_aff[s]]  # gone, or a new timeout: recreate
    recreated = {"@" + s for s in del_sets if s in new_aff}
    stale_chains = [c for c in old_chains if c not in new_chains]
    changed_chains = [c for c, rules in new_chains.items() if c in old_chains and (
        rules != old_chains[c] or (recreated and any(w in r for r in rules for w in recreated)))]
    added_chains = [c for c in new_chains if c not in old_chains]
    del_elems = [k for k, v in old_elems.items() if new_elems.get(k) != v]
    add_elems = [k for k, v in new_elems.items() if old_elems.get(k) != v]
    if not (del_sets or stale_chains or changed_chains or added_chains or del_elems or add_elems
            or any(s not in old_aff for s in new_aff)):
        return ""

    out: list[str] = []
    for set_name in ELEMENT_SETS:
        keys = [k for s, k in del_elems if s == set_name]
        for i in range(0, len(keys), 5000):
            out.append(f"delete element {t} {set_name} {{ {', '.join(keys[i:i + 5000])} }}")
    for chain in changed_chains + stale_chains:
        out.append(f"flush chain {t} {chain}")
    for chain in stale_chains:
        out.append(f"delete chain {t} {chain}")
    for set_name in del_sets:
        out.append(f"delete set {t} {set_name}")
    # Every affinity set the new rules use is (re)declared: a no-op for existing ones, but it
    # tells nft about them without a cache fetch.
    for set_name, timeout in new_aff.items():
        out.append(_affinity_decl(set_name, timeout))
    for chain in added_chains:
        out.append(f"add chain {t} {chain}")
    for chain in changed_chains + added_chains:
        if new_chains[chain]:
            out.append(_fill_chain(chain, new_chains[chain]))
    for set_name in ELEMENT_SETS:
        _add_elements(out, set_name, [k + new_elems[(s, k)] for s, k in add_elems if s == set_name])
    out.append("")
    return "\n".join(out)


CHECK_TEXT = f"""add table {TABLE}
add chain {TABLE} check-nat {{ type nat hook prerouting priority -100 ; }}
add chain {TABLE} check-filter {{ type filter hook forward priority -110 ; }}
add chain {TABLE} check-endpoint
add set {TABLE} check-affinity {{ type ipv4_addr ; flags dynamic,timeout ; timeout 10s ; }}
add map {TABLE} check-map {{ type {ADDR_PROTO_PORT} ; }}
add rule {TABLE} check-nat ip daddr . meta l4proto . th dport vmap @check-map
add rule {TABLE} check-nat fib daddr type local numgen random mod 2 == 0 goto check-endpoint
add rule {TABLE} check-endpoint update @check-affinity {{ ip saddr }} mark set mark or {MASQ_MARK}
add rule {TABLE} check-endpoint meta l4proto tcp dnat to 10.0.0.1:80
add rule {TABLE} check-filter ct state new reject
add chain {TABLE} check-post {{ type nat hook postrouting priority 100 ; }}
add rule {TABLE} check-post masquerade fully-random
"""


class NftablesBackend(Backend):
    mode = "nftables"

    def __init__(self, node: NodeContext, *, netns: str | None = None):
        super().__init__(node, netns=netns)
        self._ports: dict[PortKey, PortRules] = {}  # what the table holds now, per service port
        self._keys_of: dict[ServiceName, list[PortKey]] = {}  # the ports written for each service
        self._owners: dict[tuple[str, str], ServiceName] = {}  # (set or map, key) -> the service it belongs to
        self._owned: dict[ServiceName, list[tuple[str, str]]] = {}  # the same, by service
        self._counted: Counter[tuple[str, str]] = Counter()  # COUNTED_SETS elements -> ports that need them
        self._need_full = True

    def check(self) -> None:
        try:
            res = self.run("nft", "-c", "-f", "-", input=CHECK_TEXT, check=False)
        except FileNotFoundError as exc:
            raise BackendUnavailable(f"nftables mode needs the nft tool: {exc}") from exc
        except (OSError, subprocess.SubprocessError) as exc:
            raise BackendUnavailable(f"cannot run nft: {exc}") from exc
        if res.returncode != 0:
            err = res.stderr.strip()
            if "exec of" in err:  # ip netns exec could not start nft
                raise BackendUnavailable(f"nftables mode needs the nft tool: {err}")
            raise BackendUnavailable(f"the kernel refused a test nftables table (nf_tables, nft_nat, nft_numgen, "
                                     f"nft_fib, nft_reject, nft_masq... missing?): {err}")

    def sync(self, services: Mapping[PortKey, ServicePort], endpoints: Mapping[PortKey, Sequence[Endpoint]],
             changed: Collection[ServiceName] | None) -> bool:
        full = changed is None or self._need_full
        if full:
            self._full_sync(services, endpoints)
        else:
            self._partial_sync(services, endpoints, set(changed))
        return full

    def _render(self, services: Mapping[PortKey, ServicePort], endpoints: Mapping[PortKey, Sequence[Endpoint]],
                keys: Iterable[PortKey]) -> dict[PortKey, PortRules]:
        out = {}
        for key in keys:
            rules = render_port(services[key], endpoints.get(key, ()), self.node)
            if rules is not None:
                out[key] = rules
        return out

    def _full_sync(self, services, endpoints) -> None:
        ports = self._render(services, endpoints, services)
        owners = dedupe(ports)
        kept = self._affinity_entries() if any(pr.affinity for pr in ports.values()) else None
        text = full_transaction(ports, self.node, self._nodeport_ips(), kept)
        self._apply(text)
        self._ports, self._owners, self._need_full = ports, owners, False
        self._keys_of, self._owned = {}, {}
        for key in ports:
            self._keys_of.setdefault((key[0], key[1]), []).append(key)
        for ek, name in owners.items():
            self._owned.setdefault(name, []).append(ek)
        self._counted = Counter(ek for pr in ports.values() for ek in pr.elements if ek[0] in COUNTED_SETS)

    def _partial_sync(self, services, endpoints, changed: Collection[ServiceName]) -> None:
        ports = changed_ports(changed, services)
        old_keys = [k for name in ports for k in self._keys_of.get(name, ())]
        new = self._render(services, endpoints, [k for keys in ports.values() for k in keys])
        for name in ports:  # what the changed services owned is up for grabs again
            for ek in self._owned.pop(name, ()):
                del self._owners[ek]
        owners = dedupe(new, self._owners)
        counted = self._counted.copy()
        counted.subtract(ek for k in old_keys for ek in self._ports[k].elements if ek[0] in COUNTED_SETS)
        counted.update(ek for pr in new.values() for ek in pr.elements if ek[0] in COUNTED_SETS)
        gone = [ek for ek in {ek for k in old_keys for ek in self._ports[k].elements} if counted[ek] <= 0
                and ek[0] in COUNTED_SETS]
        fresh = [ek for ek in {ek for pr in new.values() for ek in pr.elements if ek[0] in COUNTED_SETS}
                 if self._counted[ek] <= 0]
        text = partial_transaction([self._ports[k] for k in old_keys], new.values(), gone, fresh)
        if text:
            self._apply(text)
        for k in old_keys:
            del self._ports[k]
        self._ports.update(new)
        for name in ports:
            self._keys_of.pop(name, None)
        for k in new:
            self._keys_of.setdefault((k[0], k[1]), []).append(k)
        self._owners.update(owners)
        for ek, name in owners.items():
            self._owned.setdefault(name, []).append(ek)
        self._counted = +counted  # drop the zeros

    def _apply(self, text: str) -> None:
        try:
            res = self.run("nft", "-f", "-", input=text, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            self._need_full = True
            raise SyncFailed(f"cannot run nft: {exc}") from exc
        if res.returncode != 0:
            self._need_full = True
            err = res.stderr.strip()
            raise SyncFailed(f"nft refused the update ({len(text.splitlines())} lines): {err[:2000]}")

    def _affinity_entries(self) -> dict[str, list[tuple[str, int]]]:
        """Client IPs in our affinity sets now, with their seconds left (empty if there is no table)."""
        try:
            res = self.run("nft", "-j", "list", "sets", "table", *TABLE.split(), check=False)
            if res.returncode != 0:
                return {}
            out: dict[str, list[tuple[str, int]]] = {}
            for obj in json.loads(res.stdout).get("nftables", ()):
                s = obj.get("set")
                if not s or not str(s.get("name", "")).startswith("affinity-"):
                    continue
                entries = out.setdefault(s["name"], [])
                for e in s.get("elem", ()):
                    if isinstance(e, dict) and isinstance(e.get("elem"), dict):
                        e = e["elem"]
                        if isinstance(e.get("val"), str) and isinstance(e.get("expires"), int):
                            entries.append((e["val"], e["expires"]))
            return out
        except (OSError, subprocess.SubprocessError, ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("cannot read ClientIP affinity state, a full sync resets it: %s", exc)
            return {}

    def _nodeport_ips(self) -> list[str] | None:
        if not self.node.nodeport_addresses:
            return None
        local: list[str] = []
        try:
            res = self.run("ip", "-j", "-4", "addr", "show", check=False)
            for link in json.loads(res.stdout or "[]"):
                local.extend(a["local"] for a in link.get("addr_info", ()) if "local" in a)
        except (OSError, subprocess.SubprocessError, ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("cannot list local addresses for --nodeport-addresses: %s", exc)
        return nodeport_ips(self.node.nodeport_addresses, self.node.node_ips, local)

    def cleanup(self) -> bool:
        self._ports, self._owners, self._owned, self._keys_of, self._need_full = {}, {}, {}, {}, True
        self._counted = Counter()
        try:
            res = self.run("nft", "delete", "table", *TABLE.split(), check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            log.debug("nftables cleanup: cannot run nft: %s", exc)
            return False
        if res.returncode == 0:
            return True
        if "No such file or directory" not in res.stderr and "exec of" not in res.stderr:
            log.warning("nftables cleanup failed: %s", res.stderr.strip())
        return False
