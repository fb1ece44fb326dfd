"""The cluster DNS: CoreDNS as kubeadm v1.36 deploys it, behind the kube-dns Service at the address the nodes'
`clusterDNS` names.

The objects are kubeadm's (cmd/kubeadm/app/phases/addons/dns): the coredns ServiceAccount, the system:coredns
ClusterRole and binding, the coredns ConfigMap with kubeadm's Corefile, the Deployment (2 replicas,
system-cluster-critical, dnsPolicy Default) and the kube-dns Service. One change: names outside the cluster
are forwarded to 127.0.0.1:53535 in the pod, where nothing listens, instead of the node's resolv.conf, so that
no query leaves the machine; such a lookup fails at once with SERVFAIL, as upstream's does when its upstream
servers are unreachable. CoreDNS itself is built from its Go module (localcluster/upstream/coredns).
"""

from __future__ import annotations

import yaml

from . import procs
from .procs import UpError
from .settings import Cluster

NAMESPACE = "kube-system"
UNREACHABLE_UPSTREAM = "127.0.0.1:53535"


def corefile(cluster_domain: str) -> str:
    return f"""\
.:53 {{
    errors
    health {{
       lameduck 5s
    }}
    ready
    kubernetes {cluster_domain} in-addr.arpa ip6.arpa {{
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
    }}
    prometheus :9153
    # kubeadm's forwards to /etc/resolv.conf; nothing here may leave the machine (see localcluster/dns.py)
    forward . {UNREACHABLE_UPSTREAM} {{
       max_concurrent 1000
    }}
    cache 30 {{
       disable success {cluster_domain}
       disable denial {cluster_domain}
    }}
    loop
    reload
    loadbalance
}}
"""


def manifests(cluster: Cluster, image: str) -> list[dict]:
    labels = {"k8s-app": "kube-dns"}
    probe_ports = [{"containerPort": 8080, "name": "liveness-probe", "protocol": "TCP"},
                   {"containerPort": 8181, "name": "readiness-probe", "protocol": "TCP"}]
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "coredns", "namespace": NAMESPACE}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "system:coredns"},
         "rules": [{"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"],
                    "verbs": ["list", "watch"]},
                   {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "system:coredns"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:coredns"},
         "subjects": [{"kind": "ServiceAccount", "name": "coredns", "namespace": NAMESPACE}]},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "coredns", "namespace": NAMESPACE},
         "data": {"Corefile": corefile(cluster.cluster_domain)}},
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": "coredns", "namespace": NAMESPACE, "labels": labels},
         "spec": {"replicas": 2, "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
                  "selector": {"matchLabels": labels},
                  "template": {"metadata": {"labels": labels}, "spec": {
                      "priorityClassName": "system-cluster-critical", "serviceAccountName": "coredns",
                      "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
                          "weight": 100, "podAffinityTerm": {
                              "labelSelector": {"matchExpressions": [
                                  {"key": "k8s-app", "operator": "In", "values": ["kube-dns"]}]},
                              "topologyKey": "kubernetes.io/hostname"}}]}},
                      "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"},
                                      {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}],
                      "nodeSelector": {"kubernetes.io/os": "linux"},
                      "containers": [{
                          "name": "coredns", "image": image, "imagePullPolicy": "IfNotPresent",
                          "resources": {"limits": {"memory": "170Mi"}, "requests": {"cpu": "100m", "memory": "70Mi"}},
                          "args": ["-conf", "/etc/coredns/Corefile"],
                          "volumeMounts": [{"name": "config-volume", "mountPath": "/etc/coredns", "readOnly": True}],
                          "ports": [{"containerPort": 53, "name": "dns", "protocol": "UDP"},
                                    {"containerPort": 53, "name": "dns-tcp", "protocol": "TCP"},
                                    {"containerPort": 9153, "name": "metrics", "protocol": "TCP"}, *probe_ports],
                          "livenessProbe": {"httpGet": {"path": "/health", "port": "liveness-probe", "scheme": "HTTP"},
                                            "initialDelaySeconds": 60, "timeoutSeconds": 5, "successThreshold": 1,
                                            "failureThreshold": 5},
                          "readinessProbe": {"httpGet": {"path": "/ready", "port": "readiness-probe",
                                                         "scheme": "HTTP"}},
                          "securityContext": {"allowPrivilegeEscalation": False,
                                              "capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]},
                                              "readOnlyRootFilesystem": True}}],
                      "dnsPolicy": "Default",
                      "volumes": [{"name": "config-volume", "configMap": {
                          "name": "coredns", "items": [{"key": "Corefile", "path": "Corefile"}]}}]}}}},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "kube-dns", "namespace": NAMESPACE,
                      "labels": {**labels, "kubernetes.io/cluster-service": "true", "kubernetes.io/name": "CoreDNS"},
                      "annotations": {"prometheus.io/port": "9153", "prometheus.io/scrape": "true"}},
         "spec": {"clusterIP": cluster.dns_service_ip, "selector": labels,
                  "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                            {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                            {"name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153}]}},
    ]


def apply(cluster: Cluster, image: str) -> None:
    """Apply the objects; `wait` then waits for the Deployment."""
    applied = procs.kubectl(cluster, "apply", "-f", "-", stdin=yaml.safe_dump_all(manifests(cluster, image)))
    if applied.returncode != 0:
        raise UpError(f"cluster DNS: kubectl apply failed: {applied.stderr.strip()}")


def wait(cluster: Cluster, timeout: float = 120) -> None:
    rolled = procs.kubectl(cluster, "-n", NAMESPACE, "rollout", "status", "deployment/coredns",
                           f"--timeout={int(timeout)}s", timeout=timeout + 30)
    if rolled.returncode != 0:
        pods = procs.kubectl(cluster, "-n", NAMESPACE, "get", "pods", "-l", "k8s-app=kube-dns", "-o", "wide").stdout
        raise UpError(f"cluster DNS (CoreDNS) did not become available: {rolled.stderr.strip()}\n{pods}")
