"""The API objects `kubeadm init` creates so that nodes can join by TLS bootstrap.

A bootstrap token, the RBAC bindings that let its holders post CSRs that are
auto-approved, the `cluster-info` ConfigMap in kube-public that the
bootstrap signer signs with the token, and the kubelet-config ConfigMap.
"""

from __future__ import annotations

import base64
import json
import secrets
import socket
import string
import subprocess
import time

import yaml

from . import pki
from .procs import UpError
from .settings import Cluster

NODE_BOOTSTRAPPERS = "system:bootstrappers:kubeadm:default-node-token"
TOKEN_CHARS = string.ascii_lowercase + string.digits


def token(cluster: Cluster) -> str:
    """The cluster's bootstrap token `<id>.<secret>`, created once and kept in the state directory."""
    path = cluster.state / "bootstrap-token"
    if not path.exists():
        pick = lambda n: "".join(secrets.choice(TOKEN_CHARS) for _ in range(n))  # noqa: E731
        path.write_text(f"{pick(6)}.{pick(16)}\n")
        path.chmod(0o600)
    return path.read_text().strip()


def _binding(kind: str, name: str, role: str, subjects: list[dict], namespace: str | None = None) -> dict:
    meta = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": meta,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole" if kind == "ClusterRoleBinding" else "Role", "name": role},
        "subjects": subjects,
    }


def _group(name: str) -> dict:
    return {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": name}


def _config_reader(name: str, configmap: str) -> list[dict]:
    """A Role in kube-system that lets nodes and bootstrappers read one ConfigMap, and its binding."""
    return [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": name, "namespace": "kube-system"},
         "rules": [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [configmap],
                    "verbs": ["get"]}]},
        _binding("RoleBinding", name, name, [_group("system:nodes"), _group(NODE_BOOTSTRAPPERS)], "kube-system"),
    ]


def kubelet_configuration(cluster: Cluster) -> dict:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": "/etc/kubernetes/pki/ca.crt"}},
        "authorization": {"mode": "Webhook"},
        "cgroupDriver": "cgroupfs",
        "clusterDNS": [cluster.dns_service_ip],
        "clusterDomain": cluster.cluster_domain,
        "rotateCertificates": True,
        "staticPodPath": "/etc/kubernetes/manifests",
    }


def objects(cluster: Cluster) -> list[dict]:
    token_id, token_secret = token(cluster).split(".")
    ca = (cluster.pki / "ca.crt").read_bytes()
    cluster_info = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "", "cluster": {"server": cluster.server,
                                              "certificate-authority-data": pki._b64(ca)}}],
        "contexts": [], "users": [], "current-context": "", "preferences": {},
    }
    return [
        {"apiVersion": "v1", "kind": "Secret", "type": "bootstrap.kubernetes.io/token",
         "metadata": {"name": f"bootstrap-token-{token_id}", "namespace": "kube-system"},
         "stringData": {"token-id": token_id, "token-secret": token_secret,
                        "description": "pynode local cluster node join token",
                        "usage-bootstrap-authentication": "true", "usage-bootstrap-signing": "true",
                        "auth-extra-groups": NODE_BOOTSTRAPPERS}},
        _binding("ClusterRoleBinding", "kubeadm:cluster-admins", "cluster-admin", [_group("kubeadm:cluster-admins")]),
        _binding("ClusterRoleBinding", "kubeadm:kubelet-bootstrap", "system:node-bootstrapper",
                 [_group(NODE_BOOTSTRAPPERS)]),
        _binding("ClusterRoleBinding", "kubeadm:node-autoapprove-bootstrap",
                 "system:certificates.k8s.io:certificatesigningrequests:nodeclient", [_group(NODE_BOOTSTRAPPERS)]),
        _binding("ClusterRoleBinding", "kubeadm:node-autoapprove-certificate-rotation",
                 "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient", [_group("system:nodes")]),
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": "kubeadm:get-nodes"},
         "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]},
        _binding("ClusterRoleBinding", "kubeadm:get-nodes", "kubeadm:get-nodes", [_group(NODE_BOOTSTRAPPERS)]),
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cluster-info", "namespace": "kube-public"},
         "data": {"kubeconfig": yaml.safe_dump(cluster_info, sort_keys=False)}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": "kubeadm:bootstrap-signer-clusterinfo", "namespace": "kube-public"},
         "rules": [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["cluster-info"],
                    "verbs": ["get"]}]},
        _binding("RoleBinding", "kubeadm:bootstrap-signer-clusterinfo", "kubeadm:bootstrap-signer-clusterinfo",
                 [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "system:anonymous"}],
                 "kube-public"),
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kubelet-config", "namespace": "kube-system"},
         "data": {"kubelet": yaml.safe_dump(kubelet_configuration(cluster), sort_keys=False)}},
        *_config_reader("kubeadm:kubelet-config", "kubelet-config"),
    ]


def apply(cluster: Cluster) -> None:
    """Create or update the objects (kubectl apply is idempotent, so `up` can repeat it)."""
    docs = yaml.safe_dump_all(objects(cluster), sort_keys=False)
    proc = subprocess.run(
        [str(cluster.bin / "kubectl"), f"--kubeconfig={cluster.super_admin_kubeconfig}", "apply",
         "--server-side", "--force-conflicts", "-f", "-"],
        input=docs, capture_output=True, text=True, timeout=120,
    )
    if proc.returncode != 0:
        raise UpError(f"bootstrap: kubectl apply of the kubeadm objects failed: {proc.stderr.strip()}")
    pki.write_kubeconfig(cluster.bootstrap_kubeconfig, cluster, user="kubelet-bootstrap", token=token(cluster))


def _serving_request_fits(node, csr: dict) -> bool:
    """A kubelet-serving CSR from this node that names only the node's own name and address."""
    from cryptography import x509

    spec = csr.get("spec") or {}
    if spec.get("signerName") != "kubernetes.io/kubelet-serving" or spec.get("username") != f"system:node:{node.name}":
        return False
    try:
        request = x509.load_pem_x509_csr(base64.b64decode(spec["request"]))
        names = request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (KeyError, ValueError, x509.ExtensionNotFound):
        return False
    return set(names.get_values_for_type(x509.DNSName)) <= {node.name} and \
        {str(ip) for ip in names.get_values_for_type(x509.IPAddress)} <= {node.ip}


KUBELET_PORT = 10250


def approve_serving_certificates(node, timeout: float = 60) -> None:
    """Approve the node's pending serving CSRs (the controller-manager approves none) until its kubelet serves."""
    cluster = node.cluster
    kubectl = [str(cluster.bin / "kubectl"), f"--kubeconfig={cluster.admin_kubeconfig}"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listing = subprocess.run([*kubectl, "get", "csr", "-o", "json"], capture_output=True, text=True, timeout=30)
        items = json.loads(listing.stdout or "{}").get("items", []) if listing.returncode == 0 else []
        mine = [c for c in items if _serving_request_fits(node, c)]
        pending = [c["metadata"]["name"] for c in mine if not (c.get("status") or {}).get("conditions")]
        if pending:
            proc = subprocess.run([*kubectl, "certificate", "approve", *pending], capture_output=True, text=True,
                                  timeout=30)
            if proc.returncode != 0:
                raise UpError(f"bootstrap: approving {' '.join(pending)} failed: {proc.stderr.strip()}")
        try:
            socket.create_connection((node.ip, KUBELET_PORT), timeout=1).close()
            return  # the kubelet serves: it has its certificate
        except OSError:
            time.sleep(0.5)
    raise UpError(f"bootstrap: no serving certificate was signed for {node.name} within {timeout:.0f}s")
