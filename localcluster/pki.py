"""The cluster's PKI, laid out like kubeadm's /etc/kubernetes/pki, and its kubeconfigs."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .settings import Cluster

CA_DAYS = 3650
LEAF_DAYS = 365


@dataclass
class Pair:
    cert: x509.Certificate
    key: rsa.RSAPrivateKey


@dataclass
class Leaf:
    """A certificate to issue: file stem under pki/, subject and usages."""

    stem: str
    ca: str
    cn: str
    orgs: tuple[str, ...] = ()
    server: bool = False
    client: bool = False
    dns: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _name(cn: str, orgs: tuple[str, ...] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    return x509.Name(attrs + [x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_pair(base: Path, pair: Pair) -> None:
    base.parent.mkdir(parents=True, exist_ok=True)
    key_path = base.with_suffix(".key")
    key_path.write_bytes(
        pair.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    os.chmod(key_path, 0o600)
    base.with_suffix(".crt").write_bytes(pair.cert.public_bytes(serialization.Encoding.PEM))


def _read_pair(base: Path) -> Pair:
    cert = x509.load_pem_x509_certificate(base.with_suffix(".crt").read_bytes())
    key = serialization.load_pem_private_key(base.with_suffix(".key").read_bytes(), None)
    return Pair(cert, key)


def _builder(subject: x509.Name, issuer: x509.Name, key: rsa.RSAPrivateKey, days: int, *,
             ca: bool) -> x509.CertificateBuilder:
    """What a CA and a leaf certificate share: names, key, validity, constraints and key usage."""
    now = dt.datetime.now(dt.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=ca,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
    )


def _ca(cn: str) -> Pair:
    key = _new_key()
    name = _name(cn)
    cert = (_builder(name, name, key, CA_DAYS, ca=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return Pair(cert, key)


def _issue(ca: Pair, leaf: Leaf) -> Pair:
    key = _new_key()
    usages = [oid for wanted, oid in ((leaf.server, ExtendedKeyUsageOID.SERVER_AUTH),
                                      (leaf.client, ExtendedKeyUsageOID.CLIENT_AUTH)) if wanted]
    builder = (_builder(_name(leaf.cn, leaf.orgs), ca.cert.subject, key, LEAF_DAYS, ca=False)
               .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
                              critical=False))
    sans = [x509.DNSName(d) for d in leaf.dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in leaf.ips]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return Pair(builder.sign(ca.key, hashes.SHA256()), key)


def leaves(cluster: Cluster) -> list[Leaf]:
    """The certificates kubeadm's `certs` phase issues, for this cluster."""
    domain = cluster.cluster_domain
    return [
        Leaf(
            "apiserver", "ca", "kube-apiserver", server=True,
            dns=("kubernetes", "kubernetes.default", "kubernetes.default.svc",
                 f"kubernetes.default.svc.{domain}", "localhost"),
            ips=(cluster.kubernetes_service_ip, cluster.host_ip, "127.0.0.1"),
        ),
        Leaf("apiserver-kubelet-client", "ca", "kube-apiserver-kubelet-client",
             ("kubeadm:cluster-admins",), client=True),
        Leaf("front-proxy-client", "front-proxy-ca", "front-proxy-client", client=True),
        Leaf("etcd/server", "etcd/ca", "localhost", server=True, client=True,
             dns=("localhost",), ips=("127.0.0.1",)),
        Leaf("etcd/peer", "etcd/ca", "localhost", server=True, client=True,
             dns=("localhost",), ips=("127.0.0.1",)),
        Leaf("apiserver-etcd-client", "etcd/ca", "kube-apiserver-etcd-client", client=True),
    ]


# kubeconfig name -> (user CN, organisations), as kubeadm's `kubeconfig` phase writes them.
KUBECONFIG_USERS = {
    "admin": ("kubernetes-admin", ("kubeadm:cluster-admins",)),
    "super-admin": ("kubernetes-super-admin", ("system:masters",)),
    "controller-manager": ("system:kube-controller-manager", ()),
    "scheduler": ("system:kube-scheduler", ()),
    # kubeadm gives kube-proxy a service account; a certificate for the user the default
    # system:node-proxier binding names does the same for an agent outside the cluster.
    "kube-proxy": ("system:kube-proxy", ()),
}


def ensure(cluster: Cluster) -> None:
    """Create whatever part of the PKI and kubeconfigs is missing; keep what exists."""
    pki = cluster.pki
    cas = {}
    for stem, cn in (("ca", "kubernetes"), ("front-proxy-ca", "front-proxy-ca"), ("etcd/ca", "etcd-ca")):
        if not (pki / f"{stem}.crt").exists():
            _write_pair(pki / stem, _ca(cn))
        cas[stem] = _read_pair(pki / stem)
    for leaf in leaves(cluster):
        if not (pki / f"{leaf.stem}.crt").exists():
            _write_pair(pki / leaf.stem, _issue(cas[leaf.ca], leaf))
    if not (pki / "sa.key").exists():
        key = _new_key()
        (pki / "sa.key").write_bytes(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                              serialization.NoEncryption())
        )
        os.chmod(pki / "sa.key", 0o600)
        (pki / "sa.pub").write_bytes(
            key.public_key().public_bytes(serialization.Encoding.PEM,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
        )
    for name, (cn, orgs) in KUBECONFIG_USERS.items():
        path = cluster.kubeconfig(name)
        if not path.exists():
            pair = _issue(cas["ca"], Leaf(name, "ca", cn, orgs, client=True))
            write_kubeconfig(path, cluster, user=cn, pair=pair)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def kubeconfig_dict(cluster: Cluster, user: str, *, pair: Pair | None = None, token: str | None = None) -> dict:
    """A kubeconfig for `user`, authenticating with a client certificate or a bearer token."""
    ca = (cluster.pki / "ca.crt").read_bytes()
    credentials: dict = {}
    if pair is not None:
        credentials["client-certificate-data"] = _b64(pem(pair.cert))
        credentials["client-key-data"] = _b64(
            pair.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                   serialization.NoEncryption())
        )
    if token is not None:
        credentials["token"] = token
    context = f"{user}@{cluster_name()}"
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster_name(), "cluster": {
            "server": cluster.server, "certificate-authority-data": _b64(ca)}}],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": context, "context": {"cluster": cluster_name(), "user": user}}],
        "current-context": context,
        "preferences": {},
    }


def write_kubeconfig(path: Path, cluster: Cluster, user: str, **credentials) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(kubeconfig_dict(cluster, user, **credentials), sort_keys=False))
    os.chmod(path, 0o600)


def cluster_name() -> str:
    return "kubernetes"
