"""The control plane: healthy, protected, and able to admit a node by TLS bootstrap."""

from __future__ import annotations

import base64
import json
import subprocess
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from localcluster.controlplane import get

pytestmark = pytest.mark.integration


def test_apiserver_is_ready(cluster):
    assert get(f"{cluster.server}/readyz", ca=str(cluster.pki / "ca.crt")) == (200, "ok")


def test_kubectl_reports_the_pinned_version(cluster):
    out = subprocess.run([str(cluster.bin / "kubectl"), f"--kubeconfig={cluster.admin_kubeconfig}",
                          "version", "-o", "json"], capture_output=True, text=True, check=True).stdout
    versions = json.loads(out)
    assert versions["clientVersion"]["gitVersion"] == cluster.version
    assert versions["serverVersion"]["gitVersion"] == cluster.version


def test_anonymous_request_to_a_protected_resource_is_refused(cluster):
    status, body = get(f"{cluster.server}/api/v1/namespaces/kube-system/secrets", ca=str(cluster.pki / "ca.crt"))
    assert status == 403
    assert "system:anonymous" in body


def test_controller_manager_and_scheduler_hold_their_leases(admin):
    from lightkube.resources.coordination_v1 import Lease

    deadline = time.monotonic() + 60
    holders = {}
    while time.monotonic() < deadline:
        holders = {name: admin.get(Lease, name, namespace="kube-system").spec.holderIdentity
                   for name in ("kube-controller-manager", "kube-scheduler")}
        if all(holders.values()):
            break
        time.sleep(1)
    assert all(holders.values()), holders


def test_cluster_info_is_signed_for_the_bootstrap_token(cluster, admin):
    from lightkube.resources.core_v1 import ConfigMap

    token_id = (cluster.state / "bootstrap-token").read_text().split(".")[0]
    deadline = time.monotonic() + 60
    data = {}
    while time.monotonic() < deadline:
        data = admin.get(ConfigMap, "cluster-info", namespace="kube-public").data
        if f"jws-kubeconfig-{token_id}" in data:
            break
        time.sleep(1)
    assert f"jws-kubeconfig-{token_id}" in data
    assert cluster.server in data["kubeconfig"]


def test_a_csr_made_with_the_bootstrap_token_is_approved_and_signed(cluster):
    """What kubelet TLS bootstrap does: a node CSR, auto-approved and signed by the controller-manager."""
    from lightkube import Client, KubeConfig
    from lightkube.models.certificates_v1 import CertificateSigningRequestSpec
    from lightkube.models.meta_v1 import ObjectMeta
    from lightkube.resources.certificates_v1 import CertificateSigningRequest

    node_name = "csr-test-node"
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
                                    x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{node_name}")]))
           .sign(key, hashes.SHA256()))
    bootstrap = Client(config=KubeConfig.from_file(str(cluster.bootstrap_kubeconfig)))
    created = bootstrap.create(CertificateSigningRequest(
        metadata=ObjectMeta(generateName="node-csr-"),
        spec=CertificateSigningRequestSpec(
            request=base64.b64encode(csr.public_bytes(serialization.Encoding.PEM)).decode(),
            signerName="kubernetes.io/kube-apiserver-client-kubelet",
            usages=["digital signature", "client auth"],
        ),
    ))
    assert created.spec.username.startswith("system:bootstrap:")

    deadline = time.monotonic() + 60
    current = created
    while time.monotonic() < deadline:
        current = bootstrap.get(CertificateSigningRequest, created.metadata.name)
        if current.status and current.status.certificate:
            break
        time.sleep(0.5)
    conditions = {c.type: c for c in (current.status.conditions or [])} if current.status else {}
    assert "Approved" in conditions and conditions["Approved"].reason == "AutoApproved"
    assert current.status.certificate, "approved but never signed"

    cert = x509.load_pem_x509_certificate(base64.b64decode(current.status.certificate))
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == f"system:node:{node_name}"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:nodes"
    ca = x509.load_pem_x509_certificate((cluster.pki / "ca.crt").read_bytes())
    cert.verify_directly_issued_by(ca)


def test_a_quiet_resources_watch_cache_reaches_a_fresh_resource_version_within_the_apiservers_wait(cluster):
    """etcd tells the apiserver's watch cache every second how far a resource that did not change has come
    (controlplane.py). A read at a resourceVersion just written elsewhere waits up to 3 s for the cache and fails
    with "Too large resource version" if it has not got there, as every round did with etcd's default interval
    of 10 minutes (the e2e suite's watch specs saw their watches close). With kubeadm's 5 s the rounds here
    passed, each waiting about 2 s, while 2 suite specs still failed that way."""
    from localcluster import procs

    name = f"rv-probe-{time.monotonic_ns()}"
    path = "/apis/scheduling.k8s.io/v1/priorityclasses?resourceVersion={}&resourceVersionMatch=NotOlderThan"
    try:
        for round_ in range(3):
            made = (procs.kubectl(cluster, "create", "configmap", name, "-n", "default", "-o",
                                  "jsonpath={.metadata.resourceVersion}") if round_ == 0 else
                    procs.kubectl(cluster, "label", "configmap", name, "-n", "default", f"round={round_}",
                                  "--overwrite", "-o", "jsonpath={.metadata.resourceVersion}"))
            assert made.returncode == 0, made.stderr
            got = procs.kubectl(cluster, "get", "--raw", path.format(made.stdout))
            assert got.returncode == 0, f"round {round_}: {got.stderr.strip()}"
            assert int(json.loads(got.stdout)["metadata"]["resourceVersion"]) >= int(made.stdout)
    finally:
        procs.kubectl(cluster, "delete", "configmap", name, "-n", "default", "--wait=false")
