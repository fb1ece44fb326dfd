"""The kubelet's serving certificate and the TLS settings of :10250.

Where the certificate comes from, in upstream's order:

1. ``--tls-cert-file`` / ``--tls-private-key-file`` (``tlsCertFile`` / ``tlsPrivateKeyFile``): used as given.
2. ``serverTLSBootstrap: true``: a CSR for signer ``kubernetes.io/kubelet-serving`` (CN
   ``system:node:<name>``, O ``system:nodes``, the node's hostname and IPs as SANs), written as
   ``<cert-dir>/kubelet-server-<time>.pem`` with the ``kubelet-server-current.pem`` link, and
   renewed at a jittered 70-90% of its lifetime. Someone must approve serving CSRs (the
   controller-manager does not); the server starts once the first one is signed.
3. Otherwise a self-signed ``<cert-dir>/kubelet.crt`` / ``kubelet.key``, made once and kept.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
import socket
import ssl
from pathlib import Path

from nodeagent import logs, retry

from ..node import certificates
from ..config.kubeletconfig import TLS_CIPHER_SUITES, KubeletConfig

log = logs.get(__name__)

SERVING_SIGNER = "kubernetes.io/kubelet-serving"
SERVING_USAGES = ["digital signature", "server auth"]
SELF_SIGNED_DAYS = 365

_MIN_VERSIONS = {"VersionTLS10": ssl.TLSVersion.TLSv1, "VersionTLS11": ssl.TLSVersion.TLSv1_1,
                 "VersionTLS12": ssl.TLSVersion.TLSv1_2, "VersionTLS13": ssl.TLSVersion.TLSv1_3}


def self_signed(cert_dir: Path, hostname: str, ips: list[str]) -> tuple[Path, Path]:
    """<cert-dir>/kubelet.crt and kubelet.key, created when either is missing (as upstream)."""
    cert_path, key_path = cert_dir / "kubelet.crt", cert_dir / "kubelet.key"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    from cryptography import x509  # only to make one: see node/pem.py
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{hostname}@{int(now.timestamp())}")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=SELF_SIGNED_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=True, key_cert_sign=True,
                                         content_commitment=False, data_encipherment=False, key_agreement=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName(hostname)] + [x509.IPAddress(ipaddress.ip_address(ip)) for ip in dict.fromkeys(ips)]),
                critical=False)
            .sign(key, hashes.SHA256()))
    cert_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                    serialization.NoEncryption()))
    log.info("Generated self-signed serving certificate", cert=cert_path)
    return cert_path, key_path


def context(config: KubeletConfig, cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """The server's TLS context: the certificate, the client CA, tlsMinVersion and tlsCipherSuites.

    Client certificates are asked for and, when sent, must chain to clientCAFile (Python's ssl
    cannot ask for one without verifying it); a client without one authenticates by token.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _MIN_VERSIONS.get(config.tls_min_version, ssl.TLSVersion.TLSv1_2)
    ciphers = [TLS_CIPHER_SUITES[name] for name in config.tls_cipher_suites if TLS_CIPHER_SUITES[name]]
    if ciphers:
        ctx.set_ciphers(":".join(dict.fromkeys(ciphers)))
    ctx.load_cert_chain(str(cert_file), str(key_file))
    client_ca = config.authentication.get("x509", {}).get("clientCAFile")
    if client_ca:
        ctx.load_verify_locations(cafile=client_ca)
        ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class ServingCertificate:
    """Where the serving certificate comes from, and (with serverTLSBootstrap) keeping it fresh."""

    def __init__(self, config: KubeletConfig, node_name: str, ips: list[str], metrics=None):
        self.config = config
        self.metrics = metrics  # metrics.CertificateMetrics of the bootstrapped serving certificate, or None
        self.node_name = node_name
        self.hostname = config.hostname_override or socket.gethostname().lower()
        self.ips = ips
        self.renewed = asyncio.Event()  # set when a rotated certificate should be loaded

    @property
    def bootstrap(self) -> bool:
        return self.config.tls_cert_file is None and self.config.server_tls_bootstrap

    def current(self) -> tuple[Path, Path] | None:
        """(certificate, key) files to serve with now; None while a bootstrap CSR is not yet signed."""
        if self.config.tls_cert_file is not None:
            return self.config.tls_cert_file, self.config.tls_private_key_file
        if self.config.server_tls_bootstrap:
            found = certificates.load_current(self.config.cert_dir, certificates.SERVER)
            return (found.path, found.path) if found else None
        return self_signed(self.config.cert_dir, self.hostname, self.ips)

    async def obtain(self, http) -> tuple[Path, Path]:
        """The first serving certificate by CSR, waiting for approval (apiserver errors and denials are
        logged and retried with back-off)."""
        if self.current() is None:
            await retry.until_done(certificates.counted(lambda: self._request(http), self.metrics), log,
                                   "Serving certificate request failed; retrying")
        if self.metrics is not None and self.bootstrap:
            self.metrics.current(certificates.load_current(self.config.cert_dir, certificates.SERVER))
        return self.current()

    async def _request(self, http) -> None:
        cert_pem, key_pem = await certificates.request_certificate(
            http, self.node_name, signer=SERVING_SIGNER, usages=SERVING_USAGES, dns_names=[self.hostname],
            ips=self.ips)
        stored = certificates.store(self.config.cert_dir, cert_pem, key_pem, certificates.SERVER)
        log.info("Obtained serving certificate", path=stored.path, notAfter=stored.not_after.isoformat())

    async def rotate(self, api) -> None:
        """Renew the bootstrapped serving certificate at 70-90% of its lifetime, for ever; `renewed` is set
        after each renewal. A failed renewal keeps the old certificate in service."""

        async def renew() -> None:
            await self._request(api.http)
            self.renewed.set()

        while True:
            await certificates.keep_renewed(self.config.cert_dir, certificates.SERVER, renew, "Serving certificate",
                                            self.metrics)
            await self.obtain(api.http)  # the files were removed under us: request a new one
            self.renewed.set()
