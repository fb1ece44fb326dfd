"""The kubelet's certificates from CSRs: the client one (TLS bootstrap, rotation) and the serving one's files.

Files follow the upstream kubelet, so `kubeadm join` and operators find them:

    <cert-dir>/kubelet-client-<YYYY-MM-DD-HH-MM-SS>.pem   certificate and key in one file
    <cert-dir>/kubelet-client-current.pem                 symlink to the newest one
    --kubeconfig                                          points at kubelet-client-current.pem

Bootstrap: with no usable --kubeconfig, create a CSR (signer
kubernetes.io/kube-apiserver-client-kubelet, CN system:node:<name>,
O system:nodes) with the bootstrap credentials, wait until it is approved and
signed, then write the files. Rotation does the same with the node's own
credentials when 70-90% of the certificate's lifetime has passed. The serving
certificate (server/tls.py) uses the same files with the prefix kubelet-server.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import ipaddress
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

import yaml
from nodeagent import logs, retry
from nodeagent.h2client import H2Client
from nodeagent.kubeconfig import KubeconfigError, from_file as read_kubeconfig

from . import pem

log = logs.get(__name__)

SIGNER = "kubernetes.io/kube-apiserver-client-kubelet"
CLIENT = "kubelet-client"  # file name prefixes
SERVER = "kubelet-server"
CURRENT = f"{CLIENT}-current.pem"


class BootstrapError(Exception):
    """The CSR was denied or failed; the message says why."""


@dataclass
class ClientCert:
    path: Path
    not_before: dt.datetime
    not_after: dt.datetime

    def rotation_deadline(self, rng: random.Random | None = None) -> dt.datetime:
        """A jittered point between 70% and 90% of the lifetime, as upstream's certificate manager picks."""
        lifetime = self.not_after - self.not_before
        return self.not_before + lifetime * (0.7 + 0.2 * (rng or random).random())


def load_current(cert_dir: Path, prefix: str = CLIENT) -> ClientCert | None:
    """The current certificate (<prefix>-current.pem), if present, parseable, holding its key and not expired."""
    path = cert_dir / f"{prefix}-current.pem"
    try:
        not_before, not_after = pem.validity(path.read_bytes())
    except (OSError, ValueError) as err:
        if path.exists() or path.is_symlink():
            log.warning("Ignoring unusable certificate", path=path, err=err)
        return None
    if not pem.key_matches(path):
        log.warning("Certificate and key do not match (or the key is missing)", path=path)
        return None
    if not_after <= dt.datetime.now(dt.timezone.utc):
        log.warning("Certificate has expired", path=path, notAfter=not_after)
        return None
    return ClientCert(path, not_before, not_after)


def kubeconfig_usable(kubeconfig: Path) -> bool:
    """Whether --kubeconfig exists and its client credentials load and have not expired."""
    try:
        config = yaml.safe_load(kubeconfig.read_text())
        user = config["users"][0]["user"]
    except (OSError, yaml.YAMLError, KeyError, IndexError, TypeError):
        return False
    if "token" in user:
        return True
    cert_ref = user.get("client-certificate")
    data = (base64.b64decode(user["client-certificate-data"]) if "client-certificate-data" in user
            else (kubeconfig.parent / cert_ref).read_bytes() if cert_ref and (kubeconfig.parent / cert_ref).exists()
            else None)
    if data is None:
        return False
    try:
        _, not_after = pem.validity(data)
    except ValueError:
        return False
    return not_after > dt.datetime.now(dt.timezone.utc)


def _csr(node_name: str, key, dns_names: list[str], ips: list[str]) -> bytes:
    """A PEM CSR for system:node:<name> (group system:nodes) with the names as SANs, signed by `key`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
                         x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{node_name}")])
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    san = [x509.DNSName(name) for name in dns_names]
    san += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in dict.fromkeys(ips)]
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


CSRS = "/apis/certificates.k8s.io/v1/certificatesigningrequests"


async def request_certificate(http: H2Client, node_name: str, poll: float = 1.0, *, signer: str = SIGNER,
                              usages: list[str] | None = None, dns_names: list[str] = (),
                              ips: list[str] = ()) -> tuple[bytes, bytes]:
    """Post a node CSR (with `dns_names` and `ips` as SANs, for a serving certificate) and wait until it is
    signed; returns (certificate PEM, key PEM)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    san = bool(dns_names or ips)
    body = {"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
            "metadata": {"generateName": "csr-" if san else "node-csr-"},
            "spec": {"request": base64.b64encode(_csr(node_name, key, list(dns_names), list(ips))).decode(),
                     "signerName": signer,
                     "usages": usages or ["digital signature", "client auth"]}}
    response = await http.post(CSRS, content=json.dumps(body), headers={"Content-Type": "application/json"})
    response.raise_for_status()
    name = response.json()["metadata"]["name"]
    log.info("Waiting for certificate", csr=name, signer=signer)
    while True:
        response = await http.get(f"{CSRS}/{name}")
        response.raise_for_status()
        status = response.json().get("status") or {}
        for condition in status.get("conditions") or []:
            if condition.get("type") in ("Denied", "Failed") and condition.get("status") == "True":
                raise BootstrapError(f"certificate signing request {name} was {condition['type'].lower()}: "
                                     f"{condition.get('reason')}: {condition.get('message')}")
        if status.get("certificate"):
            key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
            return base64.b64decode(status["certificate"]), key_pem
        await asyncio.sleep(poll)


def store(cert_dir: Path, cert_pem: bytes, key_pem: bytes, prefix: str = CLIENT) -> ClientCert:
    """Write a new <prefix>-<time>.pem and point <prefix>-current.pem at it atomically."""
    cert_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d-%H-%M-%S")
    target = cert_dir / f"{prefix}-{stamp}.pem"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(cert_pem + key_pem)
    current = f"{prefix}-current.pem"
    link = cert_dir / f".{current}.tmp"
    link.unlink(missing_ok=True)
    link.symlink_to(target.name)
    link.replace(cert_dir / current)
    return ClientCert(target, *pem.validity(cert_pem))


def write_kubeconfig(path: Path, bootstrap_kubeconfig: Path, cert_dir: Path) -> None:
    """A kubeconfig for the node: the bootstrap file's cluster, and the current client certificate."""
    bootstrap = yaml.safe_load(bootstrap_kubeconfig.read_text())
    context_name = bootstrap.get("current-context")
    contexts = {c["name"]: c["context"] for c in bootstrap.get("contexts", [])}
    cluster_name = contexts.get(context_name, {}).get("cluster") if context_name else None
    clusters = {c["name"]: c["cluster"] for c in bootstrap["clusters"]}
    cluster = dict(clusters.get(cluster_name) or next(iter(clusters.values())))
    ca = cluster.get("certificate-authority")
    if ca and not os.path.isabs(ca):
        cluster["certificate-authority"] = str(bootstrap_kubeconfig.parent / ca)
    current = str((cert_dir / CURRENT).absolute())
    config = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "default-cluster", "cluster": cluster}],
        "contexts": [{"name": "default-context",
                      "context": {"cluster": "default-cluster", "namespace": "default", "user": "default-auth"}}],
        "current-context": "default-context",
        "users": [{"name": "default-auth", "user": {"client-certificate": current, "client-key": current}}],
        "preferences": {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(config, sort_keys=False))
    tmp.chmod(0o600)
    tmp.replace(path)


async def bootstrap(kubeconfig: Path, bootstrap_kubeconfig: Path, cert_dir: Path, node_name: str,
                    max_backoff: float = 30) -> None:
    """Obtain a client certificate with the bootstrap credentials; retries until it succeeds.

    A bootstrap kubeconfig that cannot be read raises BootstrapError at once; an
    unreachable apiserver or a denied CSR is logged and tried again with back-off.
    """
    try:
        access = read_kubeconfig(bootstrap_kubeconfig)
    except KubeconfigError as err:
        raise BootstrapError(f"cannot use bootstrap kubeconfig {bootstrap_kubeconfig}: {err}") from err

    async def request() -> None:
        http = H2Client(access.server, access.tls, access.headers)
        try:
            current = store(cert_dir, *await request_certificate(http, node_name))
        finally:
            await http.aclose()
        log.info("Obtained client certificate by TLS bootstrap", path=current.path,
                 notAfter=current.not_after.isoformat())

    if load_current(cert_dir) is None:  # apiserver errors and denials: logged, retried with back-off
        await retry.until_done(request, log, "TLS bootstrap failed; retrying", maximum=max_backoff)
    write_kubeconfig(kubeconfig, bootstrap_kubeconfig, cert_dir)
    log.info("Wrote kubeconfig", path=kubeconfig)


async def rotate(http: H2Client, cert_dir: Path, node_name: str) -> ClientCert:
    """Replace the current client certificate with a new one, using the node's own credentials."""
    new = store(cert_dir, *await request_certificate(http, node_name))
    log.info("Rotated client certificate", path=new.path, notAfter=new.not_after.isoformat())
    return new


async def keep_renewed(cert_dir: Path, prefix: str, renew, what: str, metrics=None) -> None:
    """Call `renew()` at a jittered 70-90% of the current certificate's lifetime, for ever; a failed renewal
    keeps the old certificate and is retried with back-off. Returns when there is no current certificate.

    `metrics` (a metrics.CertificateMetrics) hears of the certificate in use, each failed renewal and
    each rotation.
    """
    while (current := load_current(cert_dir, prefix)) is not None:
        if metrics is not None:
            metrics.current(current)
        deadline = current.rotation_deadline()
        log.info(f"{what} rotation scheduled", notAfter=current.not_after.isoformat(), rotateAt=deadline.isoformat())
        await asyncio.sleep(max((deadline - dt.datetime.now(dt.timezone.utc)).total_seconds(), 0))
        await retry.until_done(counted(renew, metrics), log, f"{what} rotation failed; retrying", maximum=300)
        if metrics is not None:
            metrics.rotated(current)
    if metrics is not None:
        metrics.current(None)


def counted(action, metrics):
    """`action`, with each failure told to `metrics.renew_failed()` (when there are metrics)."""
    if metrics is None:
        return action

    async def attempt():
        try:
            return await action()
        except Exception:
            metrics.renew_failed()
            raise
    return attempt
