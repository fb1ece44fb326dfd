"""What the proxy programs: service ports and their endpoints, built from API dicts.

`services_from_api` turns one Service (Kubernetes JSON shape) into its
`ServicePort`s; `endpoints_from_slices` turns EndpointSlices into endpoints per
service port. Anything invalid or unsupported is skipped with one log line on
the ``pyproxy`` logger; nothing here raises on bad input.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
from dataclasses import dataclass, field

log = logging.getLogger("pyproxy")

PROTOCOLS = ("TCP", "UDP", "SCTP")
DEFAULT_AFFINITY_TIMEOUT = 10800  # upstream's default ClientIP timeout, seconds
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


@dataclass(frozen=True, slots=True)
class ServicePort:
    namespace: str
    name: str
    port_name: str
    protocol: str  # TCP, UDP or SCTP
    port: int
    cluster_ips: tuple[str, ...] = ()
    node_port: int = 0
    external_ips: tuple[str, ...] = ()
    load_balancer_ips: tuple[str, ...] = ()
    load_balancer_source_ranges: tuple[str, ...] = ()
    session_affinity: str = "None"  # None or ClientIP
    affinity_timeout: int = DEFAULT_AFFINITY_TIMEOUT
    external_traffic_policy: str = "Cluster"
    internal_traffic_policy: str = "Cluster"
    health_check_node_port: int = 0

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.namespace, self.name, self.port_name)

    @property
    def name_string(self) -> str:
        """Upstream's ServicePortName.String(): ``ns/name`` or ``ns/name:portname``."""
        suffix = f":{self.port_name}" if self.port_name else ""
        return f"{self.namespace}/{self.name}{suffix}"

    @property
    def externally_accessible(self) -> bool:
        return bool(self.node_port or self.external_ips or self.load_balancer_ips)

    @property
    def external_policy_local(self) -> bool:
        return self.externally_accessible and self.external_traffic_policy == "Local"

    @property
    def internal_policy_local(self) -> bool:
        return self.internal_traffic_policy == "Local"

    @property
    def uses_cluster_endpoints(self) -> bool:
        # External traffic needs cluster endpoints even with externalTrafficPolicy Local: pods and the
        # node itself reach an external IP through the cluster chain (upstream's short circuit).
        return not self.internal_policy_local or self.externally_accessible

    @property
    def uses_local_endpoints(self) -> bool:
        return self.internal_policy_local or self.external_policy_local


@dataclass(frozen=True, slots=True)
class Endpoint:
    ip: str
    port: int
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    node_name: str = ""
    zone: str = ""
    zone_hints: tuple[str, ...] = field(default=())
    node_hints: tuple[str, ...] = field(default=())

    def __str__(self) -> str:
        return f"{self.ip}:{self.port}"


@functools.lru_cache(maxsize=65536)
def is_ipv4(ip: str) -> bool:
    """True for an IPv4 address text; the modes program IPv4 only. (Cached: every sync asks for every endpoint.)"""
    try:
        return ipaddress.ip_address(ip).version == 4
    except ValueError:
        return False


def _ip(value) -> str | None:
    try:
        return str(ipaddress.ip_address(value))
    except (ValueError, TypeError):
        return None


def _port(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535 else None


def services_from_api(service: dict) -> list[ServicePort]:
    """The service ports to program for one Service; [] for headless, ExternalName or invalid ones."""
    try:
        return _services(service)
    except Exception as exc:  # malformed shapes (a list where a dict is expected...)
        log.warning("skipping malformed Service: %s", exc)
        return []


def _services(service: dict) -> list[ServicePort]:
    meta = service.get("metadata") or {}
    spec = service.get("spec") or {}
    ns, name = meta.get("namespace") or "default", meta.get("name")
    if not name:
        log.warning("skipping Service without a name")
        return []
    ref = f"{ns}/{name}"
    if spec.get("type") == "ExternalName":
        log.debug("not proxying ExternalName Service %s", ref)
        return []
    raw_ips = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    if not raw_ips or raw_ips[0] == "None":
        log.debug("not proxying headless Service %s", ref)
        return []
    cluster_ips = []
    for raw in raw_ips:
        ip = _ip(raw)
        if ip is None:
            log.warning("skipping Service %s: invalid clusterIP %r", ref, raw)
            return []
        cluster_ips.append(ip)
    external_ips = tuple(ip for ip in map(_ip, spec.get("externalIPs") or []) if ip)
    lb_ips = []
    for ingress in ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []:
        ip = _ip(ingress.get("ip"))
        # ipMode Proxy: the load balancer delivers to the node, the VIP is not programmed.
        if ip and ingress.get("ipMode", "VIP") == "VIP":
            lb_ips.append(ip)
    ranges = []
    for raw in spec.get("loadBalancerSourceRanges") or []:
        try:
            ranges.append(str(ipaddress.ip_network(str(raw).strip(), strict=False)))
        except ValueError:
            log.warning("Service %s: ignoring invalid loadBalancerSourceRange %r", ref, raw)
    affinity = spec.get("sessionAffinity") or "None"
    timeout = DEFAULT_AFFINITY_TIMEOUT
    if affinity == "ClientIP":
        cfg = ((spec.get("sessionAffinityConfig") or {}).get("clientIP") or {}).get("timeoutSeconds")
        if isinstance(cfg, int) and 0 < cfg <= 86400:
            timeout = cfg
    elif affinity != "None":
        log.warning("Service %s: unknown sessionAffinity %r, using None", ref, affinity)
        affinity = "None"
    etp = spec.get("externalTrafficPolicy") or "Cluster"
    itp = spec.get("internalTrafficPolicy") or "Cluster"
    hc = spec.get("healthCheckNodePort") or 0
    is_lb = spec.get("type") == "LoadBalancer"
    out = []
    seen = set()
    for p in spec.get("ports") or []:
        pname = p.get("name") or ""
        proto = p.get("protocol") or "TCP"
        port = _port(p.get("port"))
        if proto not in PROTOCOLS:
            log.warning("skipping port %r of Service %s: unsupported protocol %r", pname, ref, proto)
            continue
        if port is None:
            log.warning("skipping port %r of Service %s: invalid port %r", pname, ref, p.get("port"))
            continue
        if (pname, proto) in seen:
            log.warning("skipping port %r of Service %s: duplicate port name", pname, ref)
            continue
        seen.add((pname, proto))
        node_port = _port(p.get("nodePort")) or 0
        out.append(ServicePort(
            namespace=ns, name=name, port_name=pname, protocol=proto, port=port,
            cluster_ips=tuple(cluster_ips), node_port=node_port, external_ips=external_ips,
            load_balancer_ips=tuple(lb_ips) if is_lb else (),
            load_balancer_source_ranges=tuple(ranges) if is_lb else (),
            session_affinity=affinity, affinity_timeout=timeout,
            external_traffic_policy=etp if etp in ("Cluster", "Local") else "Cluster",
            internal_traffic_policy=itp if itp in ("Cluster", "Local") else "Cluster",
            health_check_node_port=hc if isinstance(hc, int) and etp == "Local" else 0,
        ))
    return out


def parse_slice(eps: dict) -> tuple[tuple[str, str] | None, dict[str, list[Endpoint]]]:
    """One EndpointSlice -> (its service's (namespace, name), endpoints per port name).

    (None, {}) for a slice that names no service or is malformed (logged once).
    """
    try:
        return _slice(eps)
    except Exception as exc:
        log.warning("skipping malformed EndpointSlice: %s", exc)
        return None, {}


def merge_endpoints(per_slice) -> list[Endpoint]:
    """Endpoint lists of one service port from several slices: first one per ip:port wins, sorted."""
    by_addr: dict[tuple[str, int], Endpoint] = {}
    for endpoints in per_slice:
        for e in endpoints:
            by_addr.setdefault((e.ip, e.port), e)
    return sorted(by_addr.values(), key=lambda e: (ipaddress.ip_address(e.ip), e.port))


def endpoints_from_slices(slices: list[dict]) -> dict[tuple[str, str, str], list[Endpoint]]:
    """Endpoints per (namespace, service name, port name), deduplicated and sorted by ip:port."""
    found: dict[tuple[str, str, str], list[list[Endpoint]]] = {}
    for eps in slices:
        service, ports = parse_slice(eps)
        for pname, endpoints in ports.items():
            found.setdefault((*service, pname), []).append(endpoints)
    return {key: merge_endpoints(lists) for key, lists in sorted(found.items())}


def _slice(eps: dict) -> tuple[tuple[str, str] | None, dict[str, list[Endpoint]]]:
    meta = eps.get("metadata") or {}
    ns = meta.get("namespace") or "default"
    ref = f"{ns}/{meta.get('name')}"
    service = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
    if not service:
        log.debug("ignoring EndpointSlice %s without the %s label", ref, SERVICE_NAME_LABEL)
        return None, {}
    if eps.get("addressType") not in ("IPv4", "IPv6"):
        log.warning("skipping EndpointSlice %s: unsupported addressType %r", ref, eps.get("addressType"))
        return None, {}
    ports = []
    for p in eps.get("ports") or []:
        port = _port(p.get("port"))
        if port is None or (p.get("protocol") or "TCP") not in PROTOCOLS:
            log.warning("EndpointSlice %s: skipping port %r", ref, p)
            continue
        ports.append((p.get("name") or "", port))
    out: dict[str, list[Endpoint]] = {pname: [] for pname, _ in ports}
    for ep in eps.get("endpoints") or []:
        addrs = ep.get("addresses") or []
        ip = _ip(addrs[0]) if addrs else None  # upstream uses the first address only
        if ip is None:
            log.warning("EndpointSlice %s: skipping endpoint with addresses %r", ref, addrs)
            continue
        cond = ep.get("conditions") or {}
        ready = cond.get("ready")
        ready = True if ready is None else bool(ready)  # nil means ready
        serving = cond.get("serving")
        serving = ready if serving is None else bool(serving)
        terminating = bool(cond.get("terminating"))
        hints = ep.get("hints") or {}
        zone_hints = tuple(z.get("name", "") for z in hints.get("forZones") or [])
        node_hints = tuple(n.get("name", "") for n in hints.get("forNodes") or [])
        for pname, port in ports:
            out[pname].append(Endpoint(
                ip=ip, port=port, ready=ready, serving=serving, terminating=terminating,
                node_name=ep.get("nodeName") or "", zone=ep.get("zone") or "", zone_hints=zone_hints,
                node_hints=node_hints))
    return (ns, service), out
