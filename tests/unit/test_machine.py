"""make node-test's machines: names and addresses, the inventory, and an offline repository that has
every package the roles install."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from localcluster import machine, settings

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
    for task in yaml.safe_load((ROLES / "pynode/tasks/main.yml").read_text()):
        if "ansible.builtin.apt" in task:
            wanted |= set(task["ansible.builtin.apt"]["name"])
    assert wanted <= set(machine.ROLE_PACKAGES), sorted(wanted - set(machine.ROLE_PACKAGES))
