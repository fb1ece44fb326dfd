"""Addresses of the local cluster, and the version the agents report."""

from __future__ import annotations

import dataclasses
import ipaddress

from localcluster import settings
from nodeagent.version import KUBERNETES_VERSION


def test_agents_report_the_pinned_kubernetes_version():
    assert settings.kubernetes_version() == KUBERNETES_VERSION


def test_nodes_get_distinct_addresses_inside_the_cluster_ranges():
    cluster = dataclasses.replace(settings.load(), node_count=3)
    nodes = cluster.nodes
    assert len({n.ip for n in nodes}) == 3
    assert len({n.pod_cidr for n in nodes}) == 3
    for node in nodes:
        assert ipaddress.ip_address(node.ip) in cluster.node_network
        assert ipaddress.ip_address(node.ip) != ipaddress.ip_address(cluster.host_ip)
        assert ipaddress.ip_network(node.pod_cidr).subnet_of(cluster.pod_cidr)
        assert ipaddress.ip_address(node.pod_gateway) in ipaddress.ip_network(node.pod_cidr)
        assert len(node.host_veth) <= 15  # IFNAMSIZ
    ranges = [cluster.node_network, cluster.pod_cidr, cluster.service_cidr]
    assert not any(a.overlaps(b) for i, a in enumerate(ranges) for b in ranges[i + 1:])
    assert ipaddress.ip_address(cluster.kubernetes_service_ip) in cluster.service_cidr
