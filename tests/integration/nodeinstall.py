"""Installing a test machine the operator's way, for the node-install test modules: the ansible playbook over ssh,
`kubeadm join` of the local control plane, and the machine as the tests see it (ssh inside, kubectl outside).

Each bare-to-Ready figure is appended to machine.MACHINES_DIR/node-test.log, so that pykubelet's and the upstream
kubelet's stand side by side there.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

from localcluster import bootstrap, machine, procs
from localcluster import cluster as local
from localcluster.wheels import wheelhouse

from tests.integration.polling import eventually

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "ansible"
# The preflight checks this sandbox cannot pass, each for its reason:
#   SystemVerification: the host kernel runs cgroup v1 (hybrid), which kubeadm 1.36's verification refuses.
IGNORE_PREFLIGHT = ["SystemVerification"]
BUSYBOX = "registry.k8s.io/e2e-test-images/busybox:1.37.0-1"


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
    """The machine as the tests see it: ssh inside, kubectl outside; its test pods live in `namespace`."""

    def __init__(self, cluster, m: machine.Machine, inventory: Path, namespace: str):
        self.cluster, self.machine, self.inventory, self.namespace = cluster, m, inventory, namespace
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
        return self.get("-n", self.namespace, "pod", name)


def installed(cluster, tmp_path_factory, m: machine.Machine, namespace: str, agents: str = "pynode",
              extra_vars: dict | None = None):
    """A module fixture's body: create and boot `m`, one playbook run with kubeadm join, then yield the Node
    (its `bare_to_ready` in seconds) with `namespace` created; afterwards, everything removed again."""
    local.build_upstream(cluster, ["kubeadm"] + (["kubelet", "kube-proxy"] if agents == "upstream" else []))
    wheels = wheelhouse(tmp_path_factory.mktemp("dist")) if agents == "pynode" else None
    m.create()
    images = sorted(str(p) for p in cluster.images.glob("pause-*.tar")) + \
        sorted(str(p) for p in cluster.images.glob("busybox-*.tar"))
    inventory = tmp_path_factory.mktemp("inventory") / "hosts.yml"
    inventory.write_text(yaml.safe_dump(m.inventory({
        "pynode_agents": agents,
        **({"pynode_wheelhouse": str(wheels)} if wheels else {"pynode_upstream_bin": str(cluster.bin)}),
        "containerd_image_archives": images,
        # systemd-nspawn's machines run without CAP_SYS_RESOURCE.
        "containerd_restrict_oom_score_adj": True,
        "kubeadm_join_kubeadm_binary": str(cluster.bin / "kubeadm"),
        "kubeadm_join_endpoint": f"{cluster.host_ip}:{cluster.apiserver_port}",
        "kubeadm_join_token": bootstrap.token(cluster),
        "kubeadm_join_ca_cert_hash": bootstrap.ca_cert_hash(cluster),
        "kubeadm_join_ignore_preflight_errors": IGNORE_PREFLIGHT,
        "kubeadm_join_cluster_cidr": str(cluster.pod_cidr),
        **(extra_vars or {}),
    })))
    procs.kubectl(cluster, "delete", "node", m.name, "--ignore-not-found")
    try:
        started = time.monotonic()
        boot = m.boot()
        first = playbook(inventory)
        took = time.monotonic() - started
        assert first.returncode == 0, first.stdout[-6000:] + first.stderr[-3000:]
        kubelet = "pykubelet" if agents == "pynode" else "the upstream kubelet"
        report(f"bare machine to Ready with {kubelet}: {took:.1f}s (boot {boot:.1f}s, then one ansible-playbook run "
               f"with kubeadm join); recap {recap(first)}")
        node = Node(cluster, m, inventory, namespace)
        node.bare_to_ready = took
        procs.kubectl(cluster, "create", "namespace", namespace)
        yield node
        procs.kubectl(cluster, "delete", "namespace", namespace, "--wait=false")
    finally:
        procs.kubectl(cluster, "delete", "node", m.name, "--ignore-not-found")
        m.destroy()


def web_answers_on_its_node_port(node: Node) -> None:
    """A busybox httpd pod `web` on the node with a NodePort Service; asserts that the NodePort on the machine's
    address answers with the pod's page (through the node's service proxy)."""
    manifest = {
        "apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": node.namespace,
                                                            "labels": {"app": "web"}},
             "spec": {"nodeName": node.name, "terminationGracePeriodSeconds": 2, "containers": [{
                 "name": "httpd", "image": BUSYBOX,
                 "command": ["sh", "-c", "mkdir -p /www && echo hello from $(hostname) > /www/index.html && "
                             "exec httpd -f -p 8080 -h /www"],
                 "ports": [{"containerPort": 8080}]}]}},
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": node.namespace},
             "spec": {"type": "NodePort", "selector": {"app": "web"},
                      "ports": [{"port": 80, "targetPort": 8080}]}},
        ]}
    proc = node.kubectl("apply", "-f", "-", stdin=json.dumps(manifest))
    assert proc.returncode == 0, proc.stderr
    eventually(lambda: (node.pod("web") or {}).get("status", {}).get("phase") == "Running", 90, "pod web Running")
    port = node.get("-n", node.namespace, "service", "web")["spec"]["ports"][0]["nodePort"]

    def fetch():
        try:
            with urllib.request.urlopen(f"http://{node.machine.ip}:{port}/", timeout=2) as resp:
                return resp.read().decode()
        except OSError:
            return None

    assert eventually(fetch, 60, "the NodePort answering").strip() == "hello from web"
