"""The PKI: kubeadm's files, with the names and SANs components check."""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path

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


def _client_usage(cert: x509.Certificate) -> list:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_front_proxy_client_is_signed_by_its_own_ca_for_the_aggregation_layer(tmp_path):
    """kube-apiserver proxies aggregated APIs (metrics.k8s.io) with this certificate; the extension
    apiserver trusts it through --requestheader-client-ca-file and the allowed name front-proxy-client."""
    from cryptography.x509.oid import ExtendedKeyUsageOID

    from localcluster import controlplane

    cluster = dataclasses.replace(settings.load(), state=tmp_path)
    pki.ensure(cluster)
    load = lambda stem: x509.load_pem_x509_certificate((cluster.pki / f"{stem}.crt").read_bytes())  # noqa: E731
    front_ca, client, cluster_ca = load("front-proxy-ca"), load("front-proxy-client"), load("ca")
    client.verify_directly_issued_by(front_ca)
    assert front_ca.subject != cluster_ca.subject, "a separate CA, as kubeadm makes it"
    assert front_ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "front-proxy-client"
    assert _client_usage(client) == [ExtendedKeyUsageOID.CLIENT_AUTH]

    argv = controlplane._argv(cluster, "kube-apiserver")
    flags = dict(a.removeprefix("--").split("=", 1) for a in argv[1:])
    assert flags["requestheader-client-ca-file"] == str(cluster.pki / "front-proxy-ca.crt")
    assert flags["proxy-client-cert-file"] == str(cluster.pki / "front-proxy-client.crt")
    assert flags["proxy-client-key-file"] == str(cluster.pki / "front-proxy-client.key")
    assert flags["requestheader-allowed-names"] == "front-proxy-client"
    assert flags["requestheader-username-headers"] == "X-Remote-User"
    assert flags["requestheader-group-headers"] == "X-Remote-Group"
    assert flags["requestheader-extra-headers-prefix"] == "X-Remote-Extra-"
    assert flags["enable-aggregator-routing"] == "true"
    for name in ("requestheader-client-ca-file", "proxy-client-cert-file", "proxy-client-key-file"):
        assert Path(flags[name]).exists()
