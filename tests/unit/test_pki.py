"""The PKI: kubeadm's files, with the names and SANs components check."""

from __future__ import annotations

import dataclasses
import ipaddress

import yaml
from cryptography import x509
from cryptography.x509.oid import NameOID

from localcluster import pki, settings


def test_pki_has_kubeadms_files_and_a_valid_apiserver_certificate(tmp_path):
    cluster = dataclasses.replace(settings.load(), state=tmp_path)
    pki.ensure(cluster)
    for stem in ("ca", "front-proxy-ca", "etcd/ca", "apiserver", "apiserver-kubelet-client",
                 "front-proxy-client", "apiserver-etcd-client", "etcd/server", "etcd/peer"):
        assert (cluster.pki / f"{stem}.crt").exists() and (cluster.pki / f"{stem}.key").exists()
        assert (cluster.pki / f"{stem}.key").stat().st_mode & 0o077 == 0
    assert (cluster.pki / "sa.key").exists() and (cluster.pki / "sa.pub").exists()

    ca = x509.load_pem_x509_certificate((cluster.pki / "ca.crt").read_bytes())
    cert = x509.load_pem_x509_certificate((cluster.pki / "apiserver.crt").read_bytes())
    cert.verify_directly_issued_by(ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address(cluster.host_ip) in sans.get_values_for_type(x509.IPAddress)
    assert ipaddress.ip_address(cluster.kubernetes_service_ip) in sans.get_values_for_type(x509.IPAddress)
    assert "kubernetes.default.svc.cluster.local" in sans.get_values_for_type(x509.DNSName)

    before = (cluster.pki / "ca.crt").read_bytes()
    pki.ensure(cluster)
    assert (cluster.pki / "ca.crt").read_bytes() == before, "a second run must keep the existing CA"


def test_admin_kubeconfig_authenticates_as_a_cluster_admin(tmp_path):
    import base64

    cluster = dataclasses.replace(settings.load(), state=tmp_path)
    pki.ensure(cluster)
    config = yaml.safe_load(cluster.admin_kubeconfig.read_text())
    assert config["clusters"][0]["cluster"]["server"] == cluster.server
    user = config["users"][0]["user"]
    cert = x509.load_pem_x509_certificate(base64.b64decode(user["client-certificate-data"]))
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "kubernetes-admin"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "kubeadm:cluster-admins"
