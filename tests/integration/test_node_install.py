"""A bare Debian 12 machine becomes a pynode node the operator's way: the ansible playbook over ssh (containerd,
pynode as systemd units where kubeadm's packages put the upstream agents), `kubeadm join` of the local control
plane, then what systemd and kubeadm promise, checked from outside.

The machine is systemd-nspawn's (localcluster/machine.py): systemd as PID 1, its own network namespace on the
cluster bridge. `make node-test` runs this module alone. The tests run in file order on one machine, each
leaving the node Ready for the next.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from localcluster import bootstrap, machine, procs
from localcluster import cluster as local
from localcluster.wheels import wheelhouse

from tests.integration.polling import eventually

# The first test also waits for the module fixture: cold, debootstrap, the package repository, kubeadm, the
# wheelhouse and the first playbook run take about 4 minutes.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "ansible"
NAMESPACE = "node-install"
# The preflight checks this sandbox cannot pass, each for its reason:
#   SystemVerification: the host kernel runs cgroup v1 (hybrid), which kubeadm 1.36's verification refuses.
IGNORE_PREFLIGHT = ["SystemVerification"]


def log(msg: str) -> None:
    print(f"[node-test] {msg}", file=sys.stderr, flush=True)


def report(msg: str) -> None:
    """A figure worth keeping: on stderr and in machine.MACHINES_DIR/node-test.log."""
    log(msg)
    machine.MACHINES_DIR.mkdir(parents=True, exist_ok=True)
    with open(machine.MACHINES_DIR / "node-test.log", "a") as out:
        out.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {msg}\n")


def playbook(inventory: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}", "ANSIBLE_NOCOLOR": "1",
           "PYTHONWARNINGS": "ignore", "ANSIBLE_HOST_KEY_CHECKING": "False"}
    return subprocess.run([str(bin_dir / "ansible-playbook"), "-i", str(inventory), "site.yml", *args], cwd=ANSIBLE,
                          capture_output=True, text=True, timeout=timeout, env=env)


def recap(proc: subprocess.CompletedProcess) -> dict[str, int]:
    match = re.search(r"^\S+\s+:\s+(ok=.*)$", proc.stdout, re.M)
    assert match, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(1))}


class Node:
    """The machine as the tests see it: ssh inside, kubectl outside."""

    def __init__(self, cluster, m: machine.Machine, inventory: Path):
        self.cluster, self.machine, self.inventory = cluster, m, inventory
        self.name = m.name

    def sh(self, script: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        return self.machine.ssh("sh", "-c", script, check=check, timeout=timeout)

    def kubectl(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        return procs.kubectl(self.cluster, *args, stdin=stdin)

    def get(self, *args: str) -> dict | None:
        proc = self.kubectl("get", *args, "-o", "json")
        return json.loads(proc.stdout) if proc.returncode == 0 else None

    def ready(self) -> bool:
        node = self.get("node", self.name)
        return bool(node) and any(c["type"] == "Ready" and c["status"] == "True"
                                  for c in node["status"].get("conditions", []))

    def unit(self, name: str, *props: str) -> dict[str, str]:
        out = self.sh(f"systemctl show {name} " + " ".join(f"-p {p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def pod(self, name: str) -> dict | None:
        return self.get("-n", NAMESPACE, "pod", name)


@pytest.fixture(scope="module")
def node(cluster, tmp_path_factory):
    local.build_upstream(cluster, ["kubeadm"])
    wheels = wheelhouse(tmp_path_factory.mktemp("dist"))
    m = machine.Machine(cluster)
    m.create()
    images = sorted(str(p) for p in cluster.images.glob("pause-*.tar")) + \
        sorted(str(p) for p in cluster.images.glob("busybox-*.tar"))
    token, ca_hash = bootstrap.token(cluster), bootstrap.ca_cert_hash(cluster)
    inventory = tmp_path_factory.mktemp("inventory") / "hosts.yml"
    inventory.write_text(yaml.safe_dump(m.inventory({
        "pynode_wheelhouse": str(wheels),
        "containerd_image_archives": images,
        # systemd-nspawn's machines run without CAP_SYS_RESOURCE.
        "containerd_restrict_oom_score_adj": True,
        "kubeadm_join_kubeadm_binary": str(cluster.bin / "kubeadm"),
        "kubeadm_join_endpoint": f"{cluster.host_ip}:{cluster.apiserver_port}",
        "kubeadm_join_token": token,
        "kubeadm_join_ca_cert_hash": ca_hash,
        "kubeadm_join_ignore_preflight_errors": IGNORE_PREFLIGHT,
        "kubeadm_join_cluster_cidr": str(cluster.pod_cidr),
    })))
    procs.kubectl(cluster, "delete", "node", m.name, "--ignore-not-found")
    started = time.monotonic()
    boot = m.boot()
    first = playbook(inventory)
    took = time.monotonic() - started
    assert first.returncode == 0, first.stdout[-6000:] + first.stderr[-3000:]
    report(f"bare machine to Ready: {took:.1f}s (boot {boot:.1f}s, then one ansible-playbook run with kubeadm "
           f"join); recap {recap(first)}")
    n = Node(cluster, m, inventory)
    n.bare_to_ready = took
    procs.kubectl(cluster, "create", "namespace", NAMESPACE)
    yield n
    procs.kubectl(cluster, "delete", "namespace", NAMESPACE, "--wait=false")
    procs.kubectl(cluster, "delete", "node", m.name, "--ignore-not-found")
    m.destroy()


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
    manifest = {
        "apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": NAMESPACE,
                                                            "labels": {"app": "web"}},
             "spec": {"nodeName": node.name, "terminationGracePeriodSeconds": 2, "containers": [{
                 "name": "httpd", "image": "registry.k8s.io/e2e-test-images/busybox:1.37.0-1",
                 "command": ["sh", "-c", "mkdir -p /www && echo hello from $(hostname) > /www/index.html && "
                             "exec httpd -f -p 8080 -h /www"],
                 "ports": [{"containerPort": 8080}]}]}},
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": NAMESPACE},
             "spec": {"type": "NodePort", "selector": {"app": "web"},
                      "ports": [{"port": 80, "targetPort": 8080}]}},
        ]}
    proc = node.kubectl("apply", "-f", "-", stdin=json.dumps(manifest))
    assert proc.returncode == 0, proc.stderr
    eventually(lambda: (node.pod("web") or {}).get("status", {}).get("phase") == "Running", 90, "pod web Running")
    port = node.get("-n", NAMESPACE, "service", "web")["spec"]["ports"][0]["nodePort"]

    def fetch():
        try:
            import urllib.request

            with urllib.request.urlopen(f"http://{node.machine.ip}:{port}/", timeout=2) as resp:
                return resp.read().decode()
        except OSError:
            return None

    assert eventually(fetch, 60, "the NodePort answering").strip() == "hello from web"


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
