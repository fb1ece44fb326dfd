"""The API objects `kubeadm init` creates so that nodes can join by TLS bootstrap, or by `kubeadm join`.

A bootstrap token, the RBAC bindings that let its holders post CSRs that are
auto-approved, the `cluster-info` ConfigMap in kube-public that the
bootstrap signer signs with the token, the kubelet-config ConfigMap, and what
`kubeadm join` reads besides: the kubeadm-config ConfigMap (a ClusterConfiguration
recording that kube-proxy is not a cluster add-on here) and the Role that lets
bootstrap tokens and nodes read it. With no kube-proxy DaemonSet, a host's
kube-proxy (pyproxy as a systemd unit) runs with its node's credentials, so
nodes are bound to system:node-proxier.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import socket
import ssl
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


def cluster_configuration(cluster: Cluster) -> dict:
    """What `kubeadm init` stores in kubeadm-config (kubeadm.k8s.io/v1beta4), for this control plane."""
    pki_dir = cluster.pki
    return {
        "apiVersion": "kubeadm.k8s.io/v1beta4",
        "kind": "ClusterConfiguration",
        "clusterName": "kubernetes",
        "kubernetesVersion": cluster.version,
        "controlPlaneEndpoint": f"{cluster.host_ip}:{cluster.apiserver_port}",
        "certificatesDir": str(pki_dir),
        "imageRepository": "registry.k8s.io",
        "networking": {"dnsDomain": cluster.cluster_domain, "podSubnet": str(cluster.pod_cidr),
                       "serviceSubnet": str(cluster.service_cidr)},
        # Debian's etcd, outside kubeadm's static pods.
        "etcd": {"external": {"endpoints": [f"https://127.0.0.1:{cluster.etcd_client_port}"],
                              "caFile": str(pki_dir / "etcd/ca.crt"),
                              "certFile": str(pki_dir / "apiserver-etcd-client.crt"),
                              "keyFile": str(pki_dir / "apiserver-etcd-client.key")}},
        "apiServer": {}, "controllerManager": {}, "scheduler": {},
        # No CoreDNS, and no kube-proxy DaemonSet: hosts run kube-proxy as a systemd unit
        # (as after `kubeadm init --skip-phases=addon/kube-proxy`).
        "dns": {"disabled": True},
        "proxy": {"disabled": True},
    }


def ca_cert_hash(cluster: Cluster) -> str:
    """kubeadm's --discovery-token-ca-cert-hash: sha256 of the CA certificate's DER SubjectPublicKeyInfo."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    ca = x509.load_pem_x509_certificate((cluster.pki / "ca.crt").read_bytes())
    spki = ca.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def join_command(cluster: Cluster) -> list[str]:
    """What `kubeadm token create --print-join-command` prints for this cluster."""
    return ["kubeadm", "join", f"{cluster.host_ip}:{cluster.apiserver_port}", "--token", token(cluster),
            "--discovery-token-ca-cert-hash", ca_cert_hash(cluster)]


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
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kubeadm-config", "namespace": "kube-system"},
         "data": {"ClusterConfiguration": yaml.safe_dump(cluster_configuration(cluster), sort_keys=False)}},
        *_config_reader("kubeadm:nodes-kubeadm-config", "kubeadm-config"),
        # kube-proxy on the hosts (systemd units) reads Services, EndpointSlices and Nodes as its node.
        _binding("ClusterRoleBinding", "pynode:node-proxier", "system:node-proxier", [_group("system:nodes")]),
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


def _completes_tls_handshake(host: str, port: int) -> bool:
    """A TLS handshake succeeds: listening is not enough, since the upstream kubelet listens before it has a
    serving certificate and fails every handshake until then ("tls: internal error")."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # whether it serves, not whom we trust
    try:
        with socket.create_connection((host, port), timeout=1) as raw, \
                context.wrap_socket(raw, server_hostname=host):
            return True
    except (OSError, ssl.SSLError):
        return False


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
        if _completes_tls_handshake(node.ip, KUBELET_PORT):
            return  # the kubelet serves with its certificate
        time.sleep(0.5)
    raise UpError(f"bootstrap: no serving certificate was signed for {node.name} within {timeout:.0f}s")
