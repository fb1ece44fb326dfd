"""Which endpoints a service port sends traffic to from this node.

Upstream's CategorizeEndpoints (pkg/proxy/topology.go): cluster-wide endpoints
(ready ones, else serving-and-terminating ones), narrowed by topology hints
when every ready endpoint carries them and some name this node or its zone;
local endpoints for the Local traffic policies; and every endpoint reachable
through either, which is what gets an endpoint chain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from pyproxy.model import Endpoint, ServicePort

SAME_NODE, SAME_ZONE = "PreferSameNode", "PreferSameZone"


@dataclass(frozen=True)
class Categorized:
    cluster: list[Endpoint]  # for the cluster traffic policy
    local: list[Endpoint]  # on this node, for the Local traffic policies
    reachable: list[Endpoint]  # cluster ∪ local: each needs an endpoint chain
    has_any: bool  # some endpoint could serve, here or elsewhere


def hint_mode(endpoints: Sequence[Endpoint], node_name: str, zone: str) -> str:
    """PreferSameNode, PreferSameZone or "" (no topology filtering), from the endpoints' hints."""
    ready = [e for e in endpoints if e.ready]
    if ready and all(e.node_hints for e in ready) and any(node_name in e.node_hints for e in ready):
        return SAME_NODE
    if ready and all(e.zone_hints for e in ready) and zone and any(zone in e.zone_hints for e in ready):
        return SAME_ZONE
    return ""


def _fits(ep: Endpoint, mode: str, node_name: str, zone: str) -> bool:
    if mode == SAME_NODE:
        return node_name in ep.node_hints
    if mode == SAME_ZONE:
        return zone in ep.zone_hints
    return True


def _usable(endpoints: Sequence[Endpoint], keep) -> list[Endpoint]:
    """Ready endpoints that `keep`; if none, the serving-and-terminating ones (graceful drain)."""
    chosen = [e for e in endpoints if e.ready and keep(e)]
    return chosen or [e for e in endpoints if e.serving and e.terminating and keep(e)]


def categorize(svc: ServicePort, endpoints: Sequence[Endpoint], node_name: str, zone: str = "") -> Categorized:
    cluster: list[Endpoint] = []
    local: list[Endpoint] = []
    has_any = False
    if svc.uses_cluster_endpoints:
        mode = hint_mode(endpoints, node_name, zone)
        cluster = _usable(endpoints, lambda e: _fits(e, mode, node_name, zone))
        has_any = bool(cluster)
    if not svc.uses_local_endpoints:
        return Categorized(cluster, local, cluster, has_any)
    has_any = has_any or any(e.ready or (e.serving and e.terminating) for e in endpoints)
    local = _usable(endpoints, lambda e: e.node_name == node_name)
    if not svc.uses_cluster_endpoints:
        return Categorized(cluster, local, local, has_any)
    seen = {(e.ip, e.port) for e in cluster}
    return Categorized(cluster, local, cluster + [e for e in local if (e.ip, e.port) not in seen], has_any)
