"""What `kubeadm join` reads from the local control plane: kubeadm-config, its RBAC, the CA hash."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess

import pytest
import yaml

from localcluster import bootstrap, pki, settings


@pytest.fixture
def cluster(tmp_path):
    cluster = dataclasses.replace(settings.load(), state=tmp_path)
    pki.ensure(cluster)
    return cluster


def by_name(objects, kind, name):
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def test_kubeadm_config_holds_the_cluster_configuration(cluster):
    cm = by_name(bootstrap.objects(cluster), "ConfigMap", "kubeadm-config")
    assert cm["metadata"]["namespace"] == "kube-system"
    config = yaml.safe_load(cm["data"]["ClusterConfiguration"])
    assert (config["apiVersion"], config["kind"]) == ("kubeadm.k8s.io/v1beta4", "ClusterConfiguration")
    assert config["kubernetesVersion"] == cluster.version
    assert config["controlPlaneEndpoint"] == "10.221.0.1:6443"
    assert config["networking"] == {"dnsDomain": "cluster.local", "podSubnet": "10.222.0.0/16",
                                    "serviceSubnet": "10.223.0.0/16"}
    assert config["proxy"] == {"disabled": True}  # hosts run kube-proxy as a unit, no DaemonSet


def test_bootstrap_tokens_and_nodes_may_read_kubeadm_config_as_kubeadm_grants_it(cluster):
    objects = bootstrap.objects(cluster)
    role = by_name(objects, "Role", "kubeadm:nodes-kubeadm-config")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["kubeadm-config"],
                              "verbs": ["get"]}]
    binding = by_name(objects, "RoleBinding", "kubeadm:nodes-kubeadm-config")
    assert binding["metadata"]["namespace"] == "kube-system"
    assert {s["name"] for s in binding["subjects"]} == {"system:bootstrappers:kubeadm:default-node-token",
                                                       "system:nodes"}
    assert binding["roleRef"]["name"] == "kubeadm:nodes-kubeadm-config"
    # kubelet-config, which join also reads, was there before.
    assert by_name(objects, "RoleBinding", "kubeadm:kubelet-config")


def test_nodes_may_run_kube_proxy_with_their_own_credentials(cluster):
    binding = by_name(bootstrap.objects(cluster), "ClusterRoleBinding", "pynode:node-proxier")
    assert binding["roleRef"]["name"] == "system:node-proxier"
    assert binding["subjects"] == [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"}]


def test_ca_cert_hash_is_the_sha256_of_the_public_key(cluster):
    """kubeadm's documented recipe: openssl x509 -pubkey | openssl rsa -pubin -outform der | sha256sum."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is missing")
    pub = subprocess.run(["openssl", "x509", "-pubkey", "-noout", "-in", str(cluster.pki / "ca.crt")],
                         capture_output=True, check=True).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "der"], input=pub, capture_output=True,
                         check=True).stdout
    digest = subprocess.run(["sha256sum"], input=der, capture_output=True, check=True).stdout.split()[0].decode()
    assert bootstrap.ca_cert_hash(cluster) == f"sha256:{digest}"
    command = bootstrap.join_command(cluster)
    assert command[:3] == ["kubeadm", "join", "10.221.0.1:6443"]
    assert command[command.index("--discovery-token-ca-cert-hash") + 1] == f"sha256:{digest}"


def test_kubeadm_itself_accepts_the_cluster_configuration(cluster, tmp_path):
    kubeadm = cluster.bin / "kubeadm"
    if not kubeadm.exists():
        pytest.skip("kubeadm is not built (python -m localcluster build kubeadm)")
    config = tmp_path / "kubeadm.yaml"
    config.write_text(yaml.safe_dump(bootstrap.cluster_configuration(cluster)))
    proc = subprocess.run([str(kubeadm), "config", "validate", f"--config={config}"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
