"""A bare Debian 12 machine becomes a pynode node the operator's way: the ansible playbook over ssh (containerd,
pynode as systemd units where kubeadm's packages put the upstream agents), `kubeadm join` of the local control
plane, then what systemd and kubeadm promise, checked from outside.

The machine is systemd-nspawn's (localcluster/machine.py): systemd as PID 1, its own network namespace on the
cluster bridge. `make node-test` runs this module, then test_node_install_upstream.py. The tests run in file
order on one machine, each leaving the node Ready for the next.
"""

from __future__ import annotations

import json
import time

import pytest
import yaml

from localcluster import bootstrap, machine

from tests.integration.nodeinstall import (IGNORE_PREFLIGHT, installed, playbook, recap, report,
                                          web_answers_on_its_node_port)
from tests.integration.polling import eventually

# The first test also waits for the module fixture: cold, debootstrap, the package repository, kubeadm, the
# wheelhouse and the first playbook run take about 4 minutes.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

NAMESPACE = "node-install"


@pytest.fixture(scope="module")
def node(cluster, tmp_path_factory):
    yield from installed(cluster, tmp_path_factory, machine.Machine(cluster), NAMESPACE)


def test_node_is_ready_with_pykubelet_and_our_version(node):
    assert node.ready()
    info = node.get("node", node.name)["status"]["nodeInfo"]
    assert info["kubeletVersion"] == node.cluster.version
    assert info["containerRuntimeVersion"].startswith("containerd://")
    assert node.sh("readlink -f /usr/bin/kubelet /usr/bin/kube-proxy").stdout.split() == [
        "/opt/pynode/bin/pykubelet", "/opt/pynode/bin/pyproxy"]
    assert not node.sh("command -v gcc cc", check=False).stdout.strip(), "no compiler on the node"
    state = node.unit("kubelet", "ActiveState", "SubState", "Type", "WatchdogUSec", "StatusText")
    assert (state["ActiveState"], state["Type"]) == ("active", "notify")
    assert state["WatchdogUSec"] != "0" and state["StatusText"] == f"Node {node.name} is Ready"
    assert node.unit("kube-proxy", "ActiveState")["ActiveState"] == "active"


def test_a_second_run_changes_nothing(node):
    again = playbook(node.inventory)
    assert again.returncode == 0, again.stdout[-4000:]
    assert recap(again)["changed"] == 0, again.stdout[-6000:]


def test_check_mode_is_safe_and_finds_nothing_to_change(node):
    check = playbook(node.inventory, "--check")
    assert check.returncode == 0, check.stdout[-4000:]
    assert recap(check)["changed"] == 0, check.stdout[-6000:]
    assert node.ready()


def test_a_pod_runs_and_its_service_answers_through_pyproxy(node):
    web_answers_on_its_node_port(node)


def test_the_journal_has_the_pods_lines_with_structured_fields(node):
    out = node.sh(f"journalctl -u kubelet -o json NAMESPACE={NAMESPACE} POD=web --no-pager").stdout
    entries = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert entries, "no journal entry with POD=web"
    assert all(e["SYSLOG_IDENTIFIER"] == "kubelet" and e["MESSAGE"][:1] in "IWEF" for e in entries)
    # (CONTAINER appears on the lines that name a container, probe results say; tests/unit/test_logs_journal.py.)


def _container(node) -> tuple[str, int]:
    status = node.pod("web")["status"]["containerStatuses"][0]
    return status["containerID"], status["restartCount"]


def test_restarting_the_kubelet_keeps_the_container(node):
    before = _container(node)
    assert before[1] == 0
    pid = node.unit("kubelet", "MainPID")["MainPID"]
    node.sh("systemctl restart kubelet")  # Type=notify: returns once the restarted kubelet is READY
    assert node.unit("kubelet", "MainPID")["MainPID"] != pid
    eventually(node.ready, 60, "the node Ready after the restart")
    time.sleep(3)  # a few PLEG relists and syncs of the pod
    assert _container(node) == before
    assert node.sh("ctr -n k8s.io tasks ls -q | wc -l").stdout.strip() != "0"


def test_a_killed_kubelet_is_restarted_and_the_node_stays_ready(node):
    before = node.unit("kubelet", "MainPID", "NRestarts")
    node.sh("systemctl kill -s KILL kubelet")
    samples = []

    def restarted():
        samples.append(node.ready())
        now = node.unit("kubelet", "MainPID", "NRestarts", "ActiveState")
        return now["ActiveState"] == "active" and now["MainPID"] not in ("0", before["MainPID"]) and now

    now = eventually(restarted, 60, "systemd restarting the kubelet", interval=1)
    assert int(now["NRestarts"]) == int(before["NRestarts"]) + 1
    assert all(samples), "the node went NotReady while the kubelet was down"
    assert node.ready()
    assert _container(node)[1] == 0


def test_a_malformed_flag_in_etc_default_kubelet_fails_the_unit_naming_it(node):
    saved = node.sh("cat /etc/default/kubelet").stdout
    try:
        node.sh("echo 'KUBELET_EXTRA_ARGS=\"--node-ip=%s --bogus-flag=1\"' > /etc/default/kubelet" % node.machine.ip)
        node.sh("systemctl restart kubelet", check=False)
        state = eventually(lambda: (s := node.unit("kubelet", "ActiveState", "Result", "NRestarts"))
                           ["ActiveState"] == "failed" and s, 30, "the kubelet unit failed")
        assert state["Result"] == "exit-code"
        time.sleep(12)  # longer than RestartSec: no restart follows
        assert node.unit("kubelet", "ActiveState", "NRestarts") == {"ActiveState": "failed",
                                                                     "NRestarts": state["NRestarts"]}
        status = node.sh("systemctl status kubelet --no-pager -n 5", check=False).stdout
        assert "unknown flag: --bogus-flag" in status, status
    finally:
        node.sh(f"cat > /etc/default/kubelet <<'EOF'\n{saved}EOF\nsystemctl restart kubelet")
    eventually(node.ready, 60, "the node Ready again")


def test_a_missing_runtime_shows_in_the_status_line_and_the_kubelet_waits(node):
    node.sh("systemctl stop containerd")
    try:
        line = eventually(lambda: "container runtime is down" in (
            t := node.unit("kubelet", "StatusText")["StatusText"]) and t, 60, "the status line")
        assert "unix:///run/containerd/containerd.sock" in line or "containerd.sock" in line, line
        assert node.unit("kubelet", "ActiveState")["ActiveState"] == "active"  # waits, no crash loop
    finally:
        node.sh("systemctl start containerd")
    eventually(node.ready, 90, "the node Ready once containerd is back")


def test_a_reboot_brings_the_node_back_with_its_pod_restarted(node):
    before = _container(node)
    started = time.monotonic()
    node.machine.poweroff()
    boot_started = time.monotonic()
    boot = node.machine.boot()
    assert node.unit("kubelet", "ActiveState")["ActiveState"] == "active"  # started at boot, READY
    eventually(node.ready, 120, "the node Ready after the reboot", interval=1)
    after = eventually(lambda: (s := (node.pod("web") or {}).get("status", {})).get("phase") == "Running" and
                       s["containerStatuses"][0].get("ready") and _container(node), 120, "the pod running again")
    report(f"reboot: poweroff took {boot_started - started:.1f}s, boot {boot:.1f}s, the pod ran again "
           f"{time.monotonic() - boot_started:.1f}s after the boot began")
    assert after[0] != before[0] and after[1] == before[1] + 1  # as upstream: a new sandbox, the next attempt
    assert node.unit("kube-proxy", "ActiveState")["ActiveState"] == "active"


def test_kubeadm_reset_leaves_the_machine_clean(node):
    node.kubectl("delete", "namespace", NAMESPACE, "--wait=true", "--timeout=60s")
    proc = node.sh("kubeadm reset --force 2>&1", check=False, timeout=300)
    assert proc.returncode == 0, proc.stdout
    leftovers = node.sh("ls /etc/kubernetes/kubelet.conf /etc/kubernetes/bootstrap-kubelet.conf "
                        "/var/lib/kubelet/config.yaml /var/lib/kubelet/pki 2>/dev/null; "
                        "ctr -n k8s.io containers ls -q; ctr -n k8s.io tasks ls -q | tail -n +2", check=False)
    assert leftovers.stdout.strip() == "", leftovers.stdout
    assert node.unit("kubelet", "ActiveState")["ActiveState"] == "inactive"
    assert node.unit("kube-proxy", "ActiveState")["ActiveState"] == "inactive"  # PartOf=kubelet.service
    node.kubectl("delete", "node", node.name, "--ignore-not-found")


def test_a_wrong_ca_hash_fails_with_kubeadms_message_and_leaves_the_kubelet_stopped(node):
    wrong = "sha256:" + "0" * 64
    proc = node.sh(f"kubeadm join {node.cluster.host_ip}:{node.cluster.apiserver_port} "
                   f"--token {bootstrap.token(node.cluster)} --discovery-token-ca-cert-hash {wrong} "
                   f"--ignore-preflight-errors={','.join(IGNORE_PREFLIGHT)} 2>&1", check=False, timeout=300)
    assert proc.returncode != 0
    assert "none of the public keys" in proc.stdout or "cluster CA found in cluster-info" in proc.stdout, proc.stdout
    time.sleep(3)
    state = node.unit("kubelet", "ActiveState", "NRestarts")
    assert state["ActiveState"] == "inactive", state  # waits for a config, not looping


def test_a_wrong_token_fails_with_kubeadms_message_and_leaves_the_kubelet_stopped(node):
    """A token the cluster does not know: no JWS signature for it in cluster-info (kubeadm retries until its
    discovery timeout, 20 s here instead of 5 min)."""
    config = {
        "apiVersion": "kubeadm.k8s.io/v1beta4", "kind": "JoinConfiguration",
        "discovery": {"bootstrapToken": {"apiServerEndpoint": f"{node.cluster.host_ip}:{node.cluster.apiserver_port}",
                                         "token": "zzzzzz.0123456789abcdef",
                                         "caCertHashes": [bootstrap.ca_cert_hash(node.cluster)]}},
        "nodeRegistration": {"name": node.name, "ignorePreflightErrors": IGNORE_PREFLIGHT},
        "timeouts": {"discovery": "20s"},
    }
    node.sh(f"cat > /root/wrong-token.yaml <<'EOF'\n{yaml.safe_dump(config)}EOF")
    proc = node.sh("kubeadm join --config=/root/wrong-token.yaml 2>&1", check=False, timeout=300)
    assert proc.returncode != 0
    assert "could not find a JWS signature in the cluster-info ConfigMap for token ID" in proc.stdout, proc.stdout
    state = node.unit("kubelet", "ActiveState", "NRestarts")
    assert state["ActiveState"] == "inactive", state
