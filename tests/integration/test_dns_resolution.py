"""Cluster DNS: pods resolve Services and each other through CoreDNS, and names outside the cluster fail at once
without a query leaving the machine."""

from __future__ import annotations

import subprocess
import time

import pytest
from lightkube.resources.core_v1 import Service

from tests.integration.pods import container, make_pod, wait_pod

pytestmark = pytest.mark.integration


def kubectl(cluster, *args, timeout=60):
    return subprocess.run([str(cluster.bin / "kubectl"), f"--kubeconfig={cluster.admin_kubeconfig}", *args],
                          capture_output=True, text=True, timeout=timeout)


def lookup(cluster, namespace, name):
    return kubectl(cluster, "-n", namespace, "exec", "dns-client", "--", "nslookup", name)


@pytest.fixture(scope="module")
def client(cluster, admin, node, namespace):
    admin.create(Service.from_dict({"metadata": {"name": "backend", "namespace": namespace},
                                    "spec": {"ports": [{"port": 80}], "selector": {"app": "none"}}}))
    admin.create(make_pod(node, namespace, "dns-client", [container()]))
    wait_pod(admin, namespace, "dns-client", lambda p: p.status.phase == "Running", what="Running")
    return namespace


def test_a_pods_resolv_conf_names_the_cluster_dns(cluster, client):
    conf = kubectl(cluster, "-n", client, "exec", "dns-client", "--", "cat", "/etc/resolv.conf").stdout
    assert f"nameserver {cluster.dns_service_ip}" in conf
    assert f"search {client}.svc.{cluster.cluster_domain} svc.{cluster.cluster_domain} {cluster.cluster_domain}" in conf


def test_services_resolve_by_full_and_short_name(cluster, admin, client):
    backend = admin.get(Service, "backend", namespace=client).spec.clusterIP
    for name, expected in (("kubernetes.default.svc.cluster.local", cluster.kubernetes_service_ip),
                           (f"backend.{client}.svc.cluster.local", backend)):
        out = lookup(cluster, client, name)
        assert out.returncode == 0 and f"Address: {expected}" in out.stdout, (name, out.stdout, out.stderr)
    # Short names go through the resolv.conf search path (busybox's nslookup asks for the name as given, so
    # ask the libc resolver, through ping, which prints the address it resolved before it gives up).
    for name, expected in (("kubernetes.default", cluster.kubernetes_service_ip), ("backend", backend)):
        out = kubectl(cluster, "-n", client, "exec", "dns-client", "--", "sh", "-c", f"ping -c1 -W1 {name} | head -1")
        assert f"PING {name} ({expected})" in out.stdout, (name, out.stdout, out.stderr)


def test_a_name_outside_the_cluster_fails_at_once(cluster, client):
    started = time.monotonic()
    out = lookup(cluster, client, "example.com")
    assert out.returncode != 0 and ("SERVFAIL" in out.stdout + out.stderr or "NXDOMAIN" in out.stdout + out.stderr
                                    or "can't find" in out.stdout + out.stderr), out
    assert time.monotonic() - started < 15  # refused locally, not a timeout against a server off the machine
