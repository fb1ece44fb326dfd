"""nodeagent.kubeconfig: the server, TLS and credentials of the kubeconfigs the agents are given."""

from __future__ import annotations

import base64
import ssl
import subprocess

import pytest
import yaml

from nodeagent.kubeconfig import KubeconfigError, from_file, load


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    for name in ("ca", "client", "other"):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.crt"), "-days", "1",
                        "-subj", f"/CN={name}"], check=True, capture_output=True)
    return d


def write(path, cluster: dict, user: dict):
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "other", "cluster": {"server": "https://wrong:1"}}, {"name": "k", "cluster": cluster}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
        "users": [{"name": "u", "user": user}]}))
    return path


def b64(path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def test_inline_data_the_current_context_and_a_token(pki, tmp_path):
    path = write(tmp_path / "admin.conf", {"server": "https://10.0.0.1:6443", "certificate-authority-data": b64(
        pki / "ca.crt")}, {"client-certificate-data": b64(pki / "client.crt"),
                          "client-key-data": b64(pki / "client.key"), "token": "abc"})
    access = from_file(path)
    assert access.server == "https://10.0.0.1:6443"
    assert access.headers == {"Authorization": "Bearer abc"}
    assert access.tls.cert_store_stats()["x509_ca"] == 1 and access.tls.verify_mode == ssl.CERT_REQUIRED


def test_files_relative_to_the_kubeconfig_and_a_token_file(pki, tmp_path):
    (tmp_path / "token").write_text("from-file\n")
    path = write(tmp_path / "kubelet.conf", {"server": "https://10.0.0.1:6443",
                                              "certificate-authority": str(pki / "ca.crt")},
                 {"client-certificate": str(pki / "client.crt"), "client-key": str(pki / "client.key"),
                  "tokenFile": "token"})
    assert from_file(path).headers == {"Authorization": "Bearer from-file"}
    skip = write(tmp_path / "insecure.conf", {"server": "https://x:1", "insecure-skip-tls-verify": True}, {})
    assert from_file(skip).tls.verify_mode == ssl.CERT_NONE


@pytest.mark.parametrize("cluster, user, words", [
    ({"server": "https://x:1"}, {"exec": {"command": "aws"}}, "exec plugin is not supported"),
    ({}, {}, "no cluster with a server"),
    ({"server": "https://x:1"}, {"client-certificate": "missing.crt", "client-key": "missing.key"}, "missing.crt"),
])
def test_unusable_kubeconfigs_name_the_file_and_why(tmp_path, cluster, user, words):
    path = write(tmp_path / "bad.conf", cluster, user)
    with pytest.raises(KubeconfigError, match=words) as info:
        from_file(path)
    assert str(path) in str(info.value)


def test_a_key_that_does_not_match_and_a_file_that_is_not_yaml(pki, tmp_path):
    path = write(tmp_path / "mismatch.conf", {"server": "https://x:1"},
                 {"client-certificate": str(pki / "client.crt"), "client-key": str(pki / "other.key")})
    with pytest.raises(KubeconfigError):
        from_file(path)
    (tmp_path / "garbage.conf").write_text(": : [\n")
    with pytest.raises(KubeconfigError, match="garbage.conf"):
        from_file(tmp_path / "garbage.conf")


def test_without_a_file_kubeconfig_env_is_used_outside_a_pod(pki, tmp_path, monkeypatch):
    path = write(tmp_path / "env.conf", {"server": "https://10.0.0.9:6443", "insecure-skip-tls-verify": True}, {})
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(path))
    assert load(None).server == "https://10.0.0.9:6443"
