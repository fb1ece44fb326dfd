"""Client certificate files: stored like upstream's, found again, and judged usable or not."""

from __future__ import annotations

import asyncio
import datetime as dt
import random

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pykubelet.node import certificates, pem


def _signed(days: float, start_days_ago: float = 0) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "system:node:n1")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=start_days_ago))
            .not_valid_after(now - dt.timedelta(days=start_days_ago) + dt.timedelta(days=days))
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def test_store_writes_one_pem_and_moves_the_current_link(tmp_path):
    first = certificates.store(tmp_path, *_signed(365))
    current = tmp_path / certificates.CURRENT
    assert current.is_symlink() and current.resolve() == first.path
    assert first.path.stat().st_mode & 0o777 == 0o600
    assert certificates.load_current(tmp_path).not_after == first.not_after

    first.path.rename(tmp_path / "kubelet-client-old.pem")  # a second store in the same second must not clash
    current.unlink()
    current.symlink_to("kubelet-client-old.pem")
    second = certificates.store(tmp_path, *_signed(365))
    assert current.resolve() == second.path
    assert certificates.load_current(tmp_path).not_after == second.not_after


def test_expired_or_mismatched_certificates_are_not_used(tmp_path):
    certificates.store(tmp_path, *_signed(1, start_days_ago=2))
    assert certificates.load_current(tmp_path) is None
    cert, _ = _signed(365)
    _, other_key = _signed(365)
    certificates.store(tmp_path, cert, other_key)
    assert certificates.load_current(tmp_path) is None


def test_rotation_deadline_is_between_70_and_90_percent():
    cert = certificates.ClientCert(None, *pem.validity(_signed(100)[0]))
    rng = random.Random(1)
    for _ in range(50):
        fraction = (cert.rotation_deadline(rng) - cert.not_before) / (cert.not_after - cert.not_before)
        assert 0.7 <= fraction <= 0.9


def test_kubeconfig_points_at_the_current_certificate(tmp_path):
    bootstrap = tmp_path / "bootstrap.conf"
    bootstrap.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "b",
        "clusters": [{"name": "c", "cluster": {"server": "https://10.221.0.1:6443", "certificate-authority": "ca.crt"}}],
        "contexts": [{"name": "b", "context": {"cluster": "c", "user": "u"}}],
        "users": [{"name": "u", "user": {"token": "abcdef.0123456789abcdef"}}],
    }))
    kubeconfig = tmp_path / "kubelet.conf"
    assert not certificates.kubeconfig_usable(kubeconfig)
    certificates.store(tmp_path / "pki", *_signed(365))
    certificates.write_kubeconfig(kubeconfig, bootstrap, tmp_path / "pki")
    written = yaml.safe_load(kubeconfig.read_text())
    assert written["clusters"][0]["cluster"] == {"server": "https://10.221.0.1:6443",
                                                 "certificate-authority": str(tmp_path / "ca.crt")}
    user = written["users"][0]["user"]
    assert user == {"client-certificate": str(tmp_path / "pki" / certificates.CURRENT),
                    "client-key": str(tmp_path / "pki" / certificates.CURRENT)}
    assert "token" not in kubeconfig.read_text()
    assert certificates.kubeconfig_usable(kubeconfig)
    assert kubeconfig.stat().st_mode & 0o077 == 0


def test_keep_renewed_renews_a_due_certificate_retrying_failures(tmp_path, monkeypatch):
    """Due (past 90% of its life): renewed at once; a failed renewal is retried with a doubling wait;
    then it sleeps until the new certificate's own deadline."""
    certificates.store(tmp_path, *_signed(1, start_days_ago=0.95))
    waits, attempts = [], []

    class Done(Exception):
        pass

    async def sleep(seconds):
        waits.append(seconds)
        if seconds > 86400:  # the next deadline, months away: stop the loop there
            raise Done

    async def renew():
        attempts.append(1)
        if len(attempts) < 3:
            raise RuntimeError("apiserver unavailable")
        certificates.store(tmp_path, *_signed(365))

    monkeypatch.setattr(asyncio, "sleep", sleep)
    with pytest.raises(Done):
        asyncio.run(certificates.keep_renewed(tmp_path, certificates.CLIENT, renew, "Client certificate"))
    assert len(attempts) == 3
    assert waits[:3] == [0, 1.0, 2.0]  # due now, then the back-off between failed attempts
    assert 0.7 * 365 * 86400 < waits[3] < 0.9 * 365 * 86400


def test_keep_renewed_returns_without_a_certificate(tmp_path):
    async def renew():
        raise AssertionError("nothing to renew")

    asyncio.run(certificates.keep_renewed(tmp_path, certificates.CLIENT, renew, "Client certificate"))


@pytest.mark.parametrize("days, start_days_ago", [(365, 0), (1, 2), (36500, 1)])
def test_validity_is_read_without_cryptography_as_cryptography_reads_it(days, start_days_ago):
    cert_pem, _ = _signed(days, start_days_ago)
    cert = x509.load_pem_x509_certificate(cert_pem)
    assert pem.validity(b"junk before\n" + cert_pem) == (cert.not_valid_before_utc, cert.not_valid_after_utc)


@pytest.mark.parametrize("data", [b"", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                                  _signed(1)[0][:200] + b"\n-----END CERTIFICATE-----\n"])
def test_a_malformed_certificate_is_a_value_error(data):
    with pytest.raises(ValueError):
        pem.validity(data)


def test_the_kubelet_starts_without_loading_cryptography():
    import subprocess
    import sys
    code = "import sys, pykubelet.kubelet; print(any(m.startswith('cryptography') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
