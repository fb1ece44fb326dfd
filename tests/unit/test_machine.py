"""make node-test's machines: names and addresses, the inventory, and an offline repository that has
every package the roles install."""

from __future__ import annotations

import dataclasses
import ipaddress
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from localcluster import machine, settings, upstream_node

ROLES = Path(__file__).resolve().parents[2] / "ansible" / "roles"


def test_names_and_addresses_stay_apart_from_the_local_nodes():
    m = machine.Machine(settings.load())
    assert (m.name, m.ip, m.host_veth) == ("pynode-m50", "10.221.0.50", "pynm50-host")
    assert not m.netns.startswith("pynode-n")  # `make down` removes namespaces named like nodes
    assert len(m.host_veth) <= 15


def test_inventory_reaches_the_machine_over_ssh(tmp_path):
    cluster = dataclasses.replace(settings.load(), cache=tmp_path)
    m = machine.Machine(cluster)
    host = m.inventory({"kubeadm_join_token": "x"})["all"]["children"]["nodes"]["hosts"]["pynode-m50"]
    assert host["ansible_host"] == "10.221.0.50" and host["ansible_user"] == "root"
    assert host["ansible_ssh_private_key_file"] == str(tmp_path / "machines" / "id_ed25519")
    assert host["pynode_node_ip"] == "10.221.0.50" and host["containerd_cni_subnet"] == "10.222.250.0/24"
    assert host["kubeadm_join_token"] == "x"


def test_the_offline_repository_has_every_package_the_roles_install():
    wanted = set(yaml.safe_load((ROLES / "containerd/defaults/main.yml").read_text())["containerd_packages"])
    wanted |= _apt_packages(yaml.safe_load((ROLES / "pynode/tasks/main.yml").read_text()))
    assert wanted <= set(machine.ROLE_PACKAGES), sorted(wanted - set(machine.ROLE_PACKAGES))


def _apt_packages(tasks: list[dict]) -> set[str]:
    """Every package an apt task names, blocks included."""
    found = set()
    for task in tasks:
        found |= _apt_packages(task.get("block", []))
        if "ansible.builtin.apt" in task:
            names = task["ansible.builtin.apt"]["name"]
            found |= {names} if isinstance(names, str) else set(names)
    return found


def test_the_package_walk_reaches_into_the_roles_blocks():
    """Both variants of the pynode role install their packages inside a block."""
    tasks = yaml.safe_load((ROLES / "pynode/tasks/main.yml").read_text())
    assert {"python3-venv", "ipset"} <= _apt_packages(tasks)


def test_the_upstream_kubelets_shims_mount_a_file_over_each_key_it_insists_on():
    lines = machine.upstream_kubelet_shims_unit().splitlines()
    mounts = [line.split()[-2:] for line in lines if line.startswith("ExecStart=/bin/mount --bind ")]
    assert {target for _, target in mounts} == {f"/proc/sys/{key}" for key in upstream_node.KERNEL_TUNABLES}
    assert all(source == f"{machine.SHIMS_DIR}/{target[len('/proc/sys/'):].replace('/', '.')}"
               for source, target in mounts)
    assert "ExecStart=/bin/ln -sf /dev/console /dev/kmsg" in lines
    assert "Before=sysinit.target kubelet.service" in lines  # in place before any kubelet starts


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is missing (Debian package systemd)")
def test_the_upstream_kubelets_shims_unit_verifies(tmp_path):
    unit = tmp_path / machine.SHIMS_UNIT_NAME
    unit.write_text(machine.upstream_kubelet_shims_unit())
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True,
                          timeout=60)
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


def test_the_plan_keeps_every_machine_apart_from_the_others_the_local_nodes_and_the_vms():
    from localcluster import kubeadm_control_plane, node_conformance, vagrant

    cluster = settings.load()
    indices = [index for index, _ in machine.PLAN.values()]
    subnets = [ipaddress.ip_network(subnet) for _, subnet in machine.PLAN.values()]
    assert len(set(indices)) == len(indices)
    assert all(not a.overlaps(b) for i, a in enumerate(subnets) for b in subnets[i + 1:])
    vm_indices = set(range(vagrant.GATEWAY_INDEX, vagrant.FIRST_INDEX + vagrant.MAX_WORKERS + 2))  # .68/.69 too
    vm_subnets = [ipaddress.ip_network(vagrant.worker_pod_subnet(i)) for i in range(1, vagrant.MAX_WORKERS + 1)]
    node_indices = {ipaddress.ip_address(node.ip).packed[-1] for node in cluster.nodes}
    node_subnets = [ipaddress.ip_network(node.pod_cidr) for node in cluster.nodes]
    assert not vm_indices & set(indices) and not node_indices & set(indices)
    assert not any(s.overlaps(o) for s in subnets for o in vm_subnets + node_subnets)
    assert all(s.subnet_of(cluster.pod_cidr) for s in subnets)
    # The users take theirs from the plan.
    assert set(node_conformance.MACHINES.values()) <= set(machine.PLAN.values())
    assert {kubeadm_control_plane.CONTROL_PLANE, kubeadm_control_plane.WORKER} <= set(machine.PLAN.values())
    assert (machine.Machine(cluster).index, machine.Machine(cluster).pod_subnet) == machine.PLAN["node-test"]
