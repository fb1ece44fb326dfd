"""The cluster DNS objects: kubeadm's CoreDNS, with nothing forwarded off the machine."""

from __future__ import annotations

import dataclasses

from localcluster import dns, images, settings


def objects(kind: str):
    cluster = dataclasses.replace(settings.load(), node_count=2)
    return [o for o in dns.manifests(cluster, images.coredns_name(cluster)) if o["kind"] == kind]


def test_the_service_sits_at_the_address_the_kubelets_name():
    service, = objects("Service")
    assert service["metadata"]["name"] == "kube-dns" and service["metadata"]["namespace"] == "kube-system"
    assert service["spec"]["clusterIP"] == settings.load().dns_service_ip
    assert {(p["port"], p["protocol"]) for p in service["spec"]["ports"]} == {(53, "UDP"), (53, "TCP"), (9153, "TCP")}


def test_the_deployment_is_kubeadms():
    deployment, = objects("Deployment")
    spec = deployment["spec"]["template"]["spec"]
    container, = spec["containers"]
    assert container["image"] == f"registry.k8s.io/coredns/coredns:{settings.coredns_version()}"
    assert container["args"] == ["-conf", "/etc/coredns/Corefile"]
    assert container["securityContext"]["capabilities"] == {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]}
    assert spec["priorityClassName"] == "system-cluster-critical" and spec["dnsPolicy"] == "Default"
    assert spec["volumes"][0]["configMap"]["name"] == "coredns"
    assert deployment["spec"]["replicas"] == 2


def test_the_corefile_serves_the_cluster_domain_and_forwards_nowhere_off_the_machine():
    configmap, = objects("ConfigMap")
    corefile = configmap["data"]["Corefile"]
    assert "kubernetes cluster.local in-addr.arpa ip6.arpa {" in corefile and "pods insecure" in corefile
    forwards = [line.split() for line in corefile.splitlines() if line.strip().startswith("forward ")]
    assert forwards == [["forward", ".", "127.0.0.1:53535", "{"]]
    assert "/etc/resolv.conf" not in corefile.replace("# kubeadm's forwards to /etc/resolv.conf", "")


def test_coredns_may_read_what_its_kubernetes_plugin_watches():
    role, = objects("ClusterRole")
    resources = {r for rule in role["rules"] for r in rule["resources"]}
    assert resources == {"endpoints", "services", "pods", "namespaces", "endpointslices"}
