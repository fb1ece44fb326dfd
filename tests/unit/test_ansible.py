"""The ansible/ playbook: its syntax, and ansible-lint with the production profile (offline)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ANSIBLE = Path(__file__).resolve().parents[2] / "ansible"
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.skip(f"{name} is not installed (the dev extra brings it: make venv)")
    return str(path)


def run(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", "ANSIBLE_NOCOLOR": "1", "NO_COLOR": "1",
           "PYTHONWARNINGS": "ignore"}
    return subprocess.run(argv, cwd=ANSIBLE, capture_output=True, text=True, timeout=240, env=env)


def test_playbook_syntax():
    proc = run(tool("ansible-playbook"), "--syntax-check", "site.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ansible_lint_production_profile():
    proc = run(tool("ansible-lint"), "--offline", "--profile", "production", "--nocolor")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Profile 'production' was required, and it passed" in proc.stdout + proc.stderr


def test_roles_use_only_ansible_core_modules():
    """No collection to install on the controller: every module is ansible.builtin."""
    import re

    used = set()
    for path in ANSIBLE.rglob("*.yml"):
        used |= set(re.findall(r"^\s*-?\s*((?:[a-z_]+\.){2}[a-z_]+):", path.read_text(), re.M))
    assert used and all(name.startswith("ansible.builtin.") for name in used), sorted(used)


def test_units_the_role_installs_are_the_repositorys():
    tasks = (ANSIBLE / "roles/pynode/tasks/main.yml").read_text()
    for unit in ("kubelet.service", "kubelet.service.d/10-kubeadm.conf", "kube-proxy.service"):
        assert f"- {unit}" in tasks and (ANSIBLE.parent / "systemd" / unit).exists()


def test_inventory_example_parses():
    proc = run(tool("ansible-inventory"), "-i", "inventory/example/hosts.yml", "--list")
    assert proc.returncode == 0, proc.stderr
    assert '"node-1"' in proc.stdout


def test_join_configuration_is_one_kubeadm_accepts(tmp_path):
    import subprocess

    import jinja2
    import yaml

    from localcluster import settings

    template = (ANSIBLE / "roles/kubeadm_join/templates/join-configuration.yaml.j2").read_text()
    text = jinja2.Template(template).render(
        ansible_managed="test", kubeadm_join_endpoint="10.221.0.1:6443", kubeadm_join_token="abcdef.0123456789abcdef",
        kubeadm_join_ca_cert_hash="sha256:" + "0" * 64, kubeadm_join_node_name="node-1",
        kubeadm_join_ignore_preflight_errors=["SystemVerification"])
    doc = yaml.safe_load(text)
    assert doc["discovery"]["bootstrapToken"]["token"] == "abcdef.0123456789abcdef"
    assert doc["nodeRegistration"]["ignorePreflightErrors"] == ["SystemVerification"]
    kubeadm = settings.load().bin / "kubeadm"
    if not kubeadm.exists():
        pytest.skip("kubeadm is not built (python -m localcluster build kubeadm)")
    (tmp_path / "join.yaml").write_text(text)
    proc = subprocess.run([str(kubeadm), "config", "validate", f"--config={tmp_path / 'join.yaml'}"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
