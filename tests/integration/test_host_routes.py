"""The host routes every cluster range to a node or nowhere: nothing for a cluster address leaves the machine."""

from __future__ import annotations

import ipaddress
import json
import subprocess

import pytest

from tests.integration.pods import container, make_pod, wait_pod

pytestmark = pytest.mark.integration


def default_gateways() -> set[str]:
    routes = json.loads(subprocess.run(["ip", "-j", "-4", "route", "show", "default"], capture_output=True,
                                       text=True, check=True).stdout or "[]")
    return {r["gateway"] for r in routes if "gateway" in r}


def route_get(address: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "-j", "route", "get", address], capture_output=True, text=True)


@pytest.mark.parametrize("range_name", ["pod_cidr", "service_cidr"])
def test_no_cluster_address_follows_the_default_route(cluster, range_name):
    network = getattr(cluster, range_name)
    node_cidrs = {ipaddress.ip_network(n.pod_cidr): n for n in cluster.nodes}
    gateways = default_gateways()
    samples = [network.network_address + 2, network.network_address + 300, network.broadcast_address - 1]
    samples += [ipaddress.ip_network(n.pod_cidr).network_address + 7 for n in cluster.nodes]
    for address in samples:
        answer = route_get(str(address))
        owner = next((n for cidr, n in node_cidrs.items() if address in cidr), None)
        if owner is not None:
            assert answer.returncode == 0, answer.stderr
            route = json.loads(answer.stdout)[0]
            assert (route.get("gateway"), route.get("dev")) == (owner.ip, cluster.bridge), route
        else:
            # unreachable: the kernel refuses at once instead of picking the default route
            refused = answer.stderr.lower()
            assert answer.returncode != 0 and ("unreachable" in refused or "no route" in refused), \
                (address, answer.stdout, answer.stderr)
        assert not any(g in answer.stdout for g in gateways), (address, answer.stdout)


def test_the_apiserver_reaches_a_pod_through_its_proxy(cluster, admin, node, namespace):
    admin.create(make_pod(node, namespace, "web", [container(
        command=["sh", "-c", "mkdir -p /w && echo proxied-$(hostname) > /w/index.html && httpd -f -p 8080 -h /w"],
        ports=[{"containerPort": 8080}])]))
    wait_pod(admin, namespace, "web", lambda p: p.status.phase == "Running" and p.status.podIP, what="Running")
    out = subprocess.run([str(cluster.bin / "kubectl"), f"--kubeconfig={cluster.admin_kubeconfig}", "get", "--raw",
                          f"/api/v1/namespaces/{namespace}/pods/web:8080/proxy/"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "proxied-web"
