"""The same playbook with `pynode_agents: upstream`: the upstream kubelet and kube-proxy of the same version in
/usr/bin, under the same units, joined the same way, for the bare-to-Ready figure side by side with
test_node_install.py's (both in machine.MACHINES_DIR/node-test.log) and to keep that variant of the roles working.

The machine (`pynode-m51`) is made with the shims the upstream kubelet needs under systemd-nspawn
(localcluster/machine.py: the host-wide sysctls it insists on, shown as files, and a /dev/kmsg), and the kubelet
gets `--fail-cgroupv1=false` (this host runs cgroup v1). The upstream kube-proxy is told to leave nf_conntrack_max
alone: the key is host-wide, and it exits when it cannot set it (pyproxy does not set the conntrack sysctls).
A host of its own needs none of this.
"""

from __future__ import annotations

import pytest

from localcluster import machine

from tests.integration.nodeinstall import installed, playbook, recap, web_answers_on_its_node_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

NAMESPACE = "node-install-upstream"


@pytest.fixture(scope="module")
def node(cluster, tmp_path_factory):
    index, pod_subnet = machine.PLAN["node-test-upstream"]
    m = machine.Machine(cluster, index=index, pod_subnet=pod_subnet, upstream_kubelet=True)
    yield from installed(cluster, tmp_path_factory, m, NAMESPACE, agents="upstream", extra_vars={
        "pynode_kubelet_extra_args": ["--fail-cgroupv1=false"],
        "kubeadm_join_proxy_extra_config": {"conntrack": {"maxPerCore": 0, "min": 0}},
    })


def test_node_is_ready_with_the_upstream_kubelet(node):
    assert node.ready()
    assert node.get("node", node.name)["status"]["nodeInfo"]["kubeletVersion"] == node.cluster.version
    # The binaries themselves in /usr/bin, not links to pynode's.
    assert node.sh("readlink -f /usr/bin/kubelet /usr/bin/kube-proxy").stdout.split() == [
        "/usr/bin/kubelet", "/usr/bin/kube-proxy"]
    assert node.sh("/usr/bin/kubelet --version").stdout.strip() == f"Kubernetes {node.cluster.version}"
    assert node.sh("test -e /opt/pynode", check=False).returncode != 0
    state = node.unit("kubelet", "ActiveState", "Type")
    assert (state["ActiveState"], state["Type"]) == ("active", "notify")  # the upstream kubelet sends READY=1 too
    assert node.unit("kube-proxy", "ActiveState")["ActiveState"] == "active"


def test_a_pod_runs_and_its_service_answers_through_the_upstream_kube_proxy(node):
    web_answers_on_its_node_port(node)


def test_a_second_run_changes_nothing(node):
    again = playbook(node.inventory)
    assert again.returncode == 0, again.stdout[-4000:]
    assert recap(again)["changed"] == 0, again.stdout[-6000:]
