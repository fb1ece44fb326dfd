"""Which endpoints a service port uses from this node: readiness, terminating fallback, hints, Local policies."""

from __future__ import annotations

from pyproxy.model import Endpoint, ServicePort
from pyproxy.topology import SAME_NODE, SAME_ZONE, categorize, hint_mode


def sp(**kw) -> ServicePort:
    return ServicePort(namespace="t", name="s", port_name="", protocol="TCP", port=80, cluster_ips=("10.0.0.1",),
                       **kw)


def ep(ip, **kw) -> Endpoint:
    return Endpoint(ip=ip, port=80, **kw)


def ips(endpoints) -> list[str]:
    return [e.ip for e in endpoints]


def test_ready_endpoints_else_serving_terminating_ones():
    eps = [ep("10.1.0.1"), ep("10.1.0.2", ready=False, serving=True, terminating=True),
           ep("10.1.0.3", ready=False, serving=False)]
    assert ips(categorize(sp(), eps, "n1").cluster) == ["10.1.0.1"]
    draining = categorize(sp(), eps[1:], "n1")
    assert ips(draining.cluster) == ["10.1.0.2"] and draining.has_any
    none = categorize(sp(), eps[2:], "n1")
    assert none.cluster == [] and not none.has_any


def test_zone_hints_narrow_the_cluster_endpoints():
    eps = [ep("10.1.0.1", zone_hints=("a",)), ep("10.1.0.2", zone_hints=("b",)), ep("10.1.0.3", zone_hints=("a",))]
    assert hint_mode(eps, "n1", "a") == SAME_ZONE
    assert ips(categorize(sp(), eps, "n1", zone="a").cluster) == ["10.1.0.1", "10.1.0.3"]
    # No hint for our zone, no zone, or an endpoint without hints: hints are ignored.
    assert ips(categorize(sp(), eps, "n1", zone="c").cluster) == ips(eps)
    assert ips(categorize(sp(), eps, "n1").cluster) == ips(eps)
    assert hint_mode(eps + [ep("10.1.0.4")], "n1", "a") == ""


def test_node_hints_win_over_zone_hints():
    eps = [ep("10.1.0.1", zone_hints=("a",), node_hints=("n1",)), ep("10.1.0.2", zone_hints=("a",), node_hints=("n2",))]
    assert hint_mode(eps, "n1", "a") == SAME_NODE
    assert ips(categorize(sp(), eps, "n1", zone="a").cluster) == ["10.1.0.1"]
    assert hint_mode(eps, "n3", "a") == SAME_ZONE  # no hint names this node: fall back to the zone


def test_local_policies_use_this_nodes_endpoints():
    eps = [ep("10.1.0.1", node_name="n1"), ep("10.1.0.2", node_name="n2")]
    internal = categorize(sp(internal_traffic_policy="Local"), eps, "n1")
    assert internal.cluster == [] and ips(internal.local) == ["10.1.0.1"] and ips(internal.reachable) == ["10.1.0.1"]
    elsewhere = categorize(sp(internal_traffic_policy="Local"), eps, "n3")
    assert elsewhere.local == [] and elsewhere.has_any  # endpoints exist, just none here: DROP, not REJECT
    external = categorize(sp(node_port=30000, external_traffic_policy="Local"), eps, "n1")
    assert ips(external.cluster) == ips(eps) and ips(external.local) == ["10.1.0.1"]
    assert ips(external.reachable) == ips(eps)
