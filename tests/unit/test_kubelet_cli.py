"""The pykubelet command: version, and one clear error for bad flags and config files."""

from __future__ import annotations

import subprocess
import sys

import pytest

from nodeagent.version import KUBERNETES_VERSION


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pykubelet.cli", *args], capture_output=True, text=True,
                          timeout=30)


def test_version_is_what_kubeadm_parses():
    result = run("--version")
    assert result.returncode == 0 and result.stdout == f"Kubernetes {KUBERNETES_VERSION}\n"


@pytest.mark.parametrize("args, message", [
    (["--bogus"], "unknown flag: --bogus"),
    (["--max-pods=lots"], "--max-pods"),
    (["--node-ip=10.0.0.300"], "--node-ip"),
    (["--config=/nonexistent/kubelet.yaml"], "/nonexistent/kubelet.yaml"),
])
def test_bad_flags_give_one_clear_error(args, message):
    result = run(*args)
    assert result.returncode == 2  # the units' RestartPreventExitStatus=: systemd leaves the unit failed
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pykubelet: error:") and message in lines[0]


@pytest.mark.parametrize("content, message", [
    ("kind: KubeletConfiguration\napiVersion: kubelet.config.k8s.io/v1beta1\nport: [\n", "YAML"),
    ("kind: KubeProxyConfiguration\napiVersion: kubeproxy.config.k8s.io/v1alpha1\n", "kubelet.config.k8s.io"),
    ("kind: KubeletConfiguration\napiVersion: kubelet.config.k8s.io/v1beta1\nnodeStatusUpdateFrequency: soon\n",
     "nodeStatusUpdateFrequency"),
])
def test_malformed_config_files_give_one_clear_error(tmp_path, content, message):
    config = tmp_path / "config.yaml"
    config.write_text(content)
    result = run(f"--config={config}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(config) in lines[0] and message in lines[0]
