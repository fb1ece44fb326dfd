"""vagrant/: the Vagrantfile validates for both providers, its address plan is the host side's, and the box script
is sound shell. The VMs themselves run in `make vagrant-test` (tests/vagrant)."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from localcluster import machine, settings
from localcluster import vagrant as vg

VAGRANT_DIR = Path(__file__).resolve().parents[2] / "vagrant"
BOX_SCRIPT = VAGRANT_DIR / "box" / "build.sh"


def need(tool: str) -> str:
    path = shutil.which(tool)
    if not path:
        pytest.skip(f"{tool} is not installed (make deps brings it)")
    return path


def validate(tmp_path: Path, provider: str, **env: str) -> subprocess.CompletedProcess:
    need("vagrant")
    # VirtualBox is not installed here: a stand-in VBoxManage that only reports a version lets Vagrant load the
    # virtualbox provider, whose settings `vagrant validate` then checks.
    stand_in = tmp_path / "bin" / "VBoxManage"
    stand_in.parent.mkdir(exist_ok=True)
    stand_in.write_text('#!/bin/sh\ncase "$1" in --version) echo 7.0.14r161095 ;; esac\n')
    stand_in.chmod(0o755)
    full = {**os.environ, **env, "VAGRANT_DEFAULT_PROVIDER": provider, "VAGRANT_NO_COLOR": "1",
            "VAGRANT_HOME": str(tmp_path / "vagrant.d"), "PATH": f"{stand_in.parent}:{os.environ['PATH']}"}
    return subprocess.run(["vagrant", "validate"], cwd=VAGRANT_DIR, env=full, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("provider", ["libvirt", "virtualbox"])
def test_vagrantfile_validates(tmp_path, provider):
    if provider == "libvirt" and "vagrant-libvirt" not in subprocess.run(
            ["vagrant", "plugin", "list"], capture_output=True, text=True, env={**os.environ, "VAGRANT_HOME":
                                                                                 str(tmp_path / "vagrant.d")}).stdout:
        pytest.skip("vagrant-libvirt is not installed (make deps brings it)")
    proc = validate(tmp_path, provider, PYNODE_WORKERS="3", PYNODE_PROXY_MODE="ipvs", PYNODE_AGENTS="upstream")
    assert proc.returncode == 0 and "validated successfully" in proc.stdout, proc.stdout + proc.stderr


def test_vagrantfile_refuses_a_bad_setting_naming_it(tmp_path):
    proc = validate(tmp_path, "libvirt", PYNODE_PROXY_MODE="userspace")
    assert proc.returncode != 0
    assert "PYNODE_PROXY_MODE: iptables, nftables or ipvs, not userspace" in proc.stdout + proc.stderr


def test_the_address_plan_is_the_same_on_both_sides():
    """The Vagrantfile's names, addresses, MACs and pod subnets are what the host side serves and routes."""
    need("ruby")
    script = """
      module Vagrant; def self.configure(*) = nil; end
      load ARGV[0]
      puts JSON.dump((1..7).map { |i| [worker_name(i), worker_ip(i), worker_mac(i), worker_pod_subnet(i)] })
    """
    proc = subprocess.run(["ruby", "-rjson", "-e", script, str(VAGRANT_DIR / "Vagrantfile")], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYNODE_WORKERS": "7"})
    assert proc.returncode == 0, proc.stderr
    cluster = settings.load()
    ours = [[vg.worker_name(i), vg.worker_ip(cluster, i), vg.worker_mac(cluster, i), vg.worker_pod_subnet(i)]
            for i in range(1, 8)]
    assert json.loads(proc.stdout) == ours


def test_the_vms_use_addresses_nothing_else_does():
    cluster = settings.load()
    ips = [ipaddress.ip_address(vg.worker_ip(cluster, i)) for i in range(1, vg.MAX_WORKERS + 1)]
    local_nodes = {ipaddress.ip_address(node.ip) for node in cluster.nodes}
    assert all(ip in cluster.node_network for ip in ips) and not local_nodes & set(ips)
    assert ipaddress.ip_address(machine.Machine(cluster).ip) not in ips
    assert str(ips[-1]).endswith(".67") and vg.gateway_ip(cluster).endswith(".60")
    subnets = [ipaddress.ip_network(vg.worker_pod_subnet(i)) for i in range(1, vg.MAX_WORKERS + 1)]
    assert all(s.subnet_of(cluster.pod_cidr) for s in subnets)
    taken = {ipaddress.ip_network(node.pod_cidr) for node in cluster.nodes} | {
        ipaddress.ip_network(machine.Machine(cluster).pod_subnet)}
    assert not any(s.overlaps(t) for s in subnets for t in taken)


def test_the_libvirt_network_is_isolated_and_serves_only_the_workers():
    cluster = settings.load()
    xml = vg.network_xml(cluster)
    assert "<forward" not in xml  # no NAT, no routing out: libvirt's isolated mode
    assert re.findall(r"<host mac='([^']+)' name='([^']+)' ip='([^']+)'/>", xml) == [
        (vg.worker_mac(cluster, i), vg.worker_name(i), vg.worker_ip(cluster, i)) for i in range(1, vg.MAX_WORKERS + 1)]
    assert "<range start='10.221.0.61' end='10.221.0.67'/>" in xml


def test_box_script_is_sound_shell():
    proc = subprocess.run(["bash", "-n", str(BOX_SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([need("shellcheck"), str(BOX_SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_box_repository_holds_every_role_package():
    text = BOX_SCRIPT.read_text()
    listed = set(re.search(r'REPO_PACKAGES="([^"]+)"', text).group(1).replace("\\\n", " ").split())
    assert set(machine.ROLE_PACKAGES) <= listed
    assert {"ipvsadm", "ipset"} <= listed  # the tests' tool and the upstream kube-proxy's IPVS mode
