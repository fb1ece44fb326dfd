"""`make kubeadm-control-plane`: a whole `kubeadm init` control plane in a machine of its own, whose kubelet runs
the control plane's static pods.

What it shows: that pykubelet (or, with `--agents upstream`, the upstream kubelet of the same version, for
comparison) holds as a control-plane kubelet. `kubeadm init` writes static pod manifests for etcd,
kube-apiserver, kube-controller-manager and kube-scheduler into /etc/kubernetes/manifests and then waits for the
kubelet to run them; the kubelet has no apiserver to talk to until it has started one of those pods itself.

One run:

1. builds kubeadm, the control-plane programs and etcd (cached), and the images kubeadm's manifests name, as OCI
   archives with no registry: registry.k8s.io/kube-apiserver, kube-controller-manager and kube-scheduler at the
   pinned version (each the cached static Go binary in /usr/local/bin, as upstream's distroless images have
   it), registry.k8s.io/etcd (localcluster/testimages.py's recipe) and pause; it checks that those are exactly
   the names `kubeadm config images list` gives for the config, less CoreDNS and kube-proxy (add-ons skipped);
2. creates and boots a test machine (localcluster/machine.py: index 70, 10.221.0.70, pods in 10.222.230.0/24),
   installs it with the ansible roles `containerd` (the images imported: kubeadm's preflight ImagePull then finds
   them present) and `pynode` (for `--agents upstream` its `pynode_agents: upstream` variant, on a machine made
   with the shims the upstream kubelet needs there: machine.py), and adds the machine's default route `default dev eth0`
   (kube-apiserver picks its address from it; with no gateway it leads nowhere off the cluster network);
3. runs `kubeadm init --config` with the config of `kubeadm_config()` (timed), copies admin.conf out, and checks
   from outside with kubectl: the four static pods Running and Ready as mirror pods, the Node Ready with
   kubeletVersion the pinned version, the apiserver's /readyz; then that a static pod's container killed with
   `ctr task kill` is restarted by the kubelet, and that `systemctl restart kubelet` leaves the static pods'
   containers running (same container IDs, no restart);
4. optionally (`--join-worker`) joins a second machine (index 71, pods in 10.222.231.0/24) to it with the same
   playbook's `kubeadm_join` role, and checks it Ready;
5. `kubeadm reset --force`, writes summary.md under `<state>-kubeadm-control-plane/<UTC time>[-upstream]/`, and
   destroys the machines (unless `--keep`).

Preflight errors ignored (IGNORE_PREFLIGHT): only what this sandbox cannot pass, each with its reason.
The add-ons kube-proxy and CoreDNS are skipped (`skipPhases`): pynode runs kube-proxy as a unit, not as
kubeadm's DaemonSet, and CoreDNS is not what is measured here.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import images, machine, testimages
from . import cluster as local
from .images import Entry, Image
from .procs import UpError
from .settings import UPSTREAM_DIR, Cluster

AGENTS = ("pynode", "upstream")
CONTROL_PLANE = machine.PLAN["kubeadm-control-plane"]  # (machine index, its pod subnet)
WORKER = machine.PLAN["kubeadm-worker"]
# The inner cluster's ranges: pods inside the local cluster's 10.222.0.0/16 (the controller-manager hands each
# node a /24 of it: the control plane's first, 10.222.230.0/24, then the worker's, matching each machine's CNI
# subnet), services inside 10.223.0.0/16, which the host holds unreachable.
POD_SUBNET = "10.222.230.0/23"
SERVICE_SUBNET = "10.223.230.0/24"
CLUSTER_NAME = "pynode-kinit"
COMPONENTS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
STATIC_PODS = ("etcd", *COMPONENTS)
SKIP_PHASES = ("addon/kube-proxy", "addon/coredns")
# The preflight checks this sandbox cannot pass, each for its reason.
IGNORE_PREFLIGHT = {
    "SystemVerification": "the host kernel runs cgroup v1 (hybrid), which kubeadm 1.36's system verification "
                          "refuses",
}
CRI_SOCKET = "unix:///run/containerd/containerd.sock"
CONFIG_PATH = "/root/kubeadm-init.yaml"


def log(msg: str) -> None:
    print(f"[kubeadm-control-plane] {msg}", file=sys.stderr, flush=True)


# --- what kubeadm is given ---------------------------------------------------------------------

def kubeadm_config(*, node_name: str, node_ip: str, version: str, agents: str = "pynode") -> str:
    """The InitConfiguration, ClusterConfiguration and KubeletConfiguration (v1beta4) for `kubeadm init`."""
    if agents not in AGENTS:
        raise UpError(f"kubeadm-control-plane: unknown node agents {agents!r}; expected one of {', '.join(AGENTS)}")
    init = {
        "apiVersion": "kubeadm.k8s.io/v1beta4", "kind": "InitConfiguration",
        "localAPIEndpoint": {"advertiseAddress": node_ip, "bindPort": 6443},
        "nodeRegistration": {"name": node_name, "criSocket": CRI_SOCKET,
                             "ignorePreflightErrors": sorted(IGNORE_PREFLIGHT)},
        "skipPhases": list(SKIP_PHASES),
        # kubeadm's 4 minutes are tight for four static pods started cold on a 2-core host shared with other runs.
        "timeouts": {"controlPlaneComponentHealthCheck": "8m0s", "kubeletHealthCheck": "4m0s"},
    }
    cluster = {
        "apiVersion": "kubeadm.k8s.io/v1beta4", "kind": "ClusterConfiguration",
        "kubernetesVersion": version, "clusterName": CLUSTER_NAME,
        "controlPlaneEndpoint": f"{node_ip}:6443",
        "networking": {"podSubnet": POD_SUBNET, "serviceSubnet": SERVICE_SUBNET, "dnsDomain": "cluster.local"},
        "apiServer": {"certSANs": [node_ip]},
    }
    # The containerd role drives cgroupfs paths (containerd_systemd_cgroup: false); kubeadm's default is systemd.
    kubelet: dict = {"apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
                     "cgroupDriver": "cgroupfs"}
    if agents == "upstream":
        kubelet["failCgroupV1"] = False  # the host runs cgroup v1, which kubelet 1.35+ refuses by default
    return yaml.safe_dump_all([init, cluster, kubelet], sort_keys=False)


def component_image(cluster: Cluster, name: str) -> Image:
    """registry.k8s.io/<name>:<version> as upstream's distroless image has it: the static binary in
    /usr/local/bin (kubeadm's manifests run the bare command name), root as the user, a writable /tmp."""
    binary = cluster.bin / name
    if not binary.is_file():
        raise UpError(f"kubeadm-control-plane: {binary} is missing; run `python -m localcluster build {name}`")
    return Image(names=[f"registry.k8s.io/{name}:{cluster.version}"],
                 entries=[Entry(f"usr/local/bin/{name}", binary.read_bytes()), Entry("tmp", mode=0o1777),
                          Entry("etc/passwd", b"root:x:0:0:root:/root:/sbin/nologin\n", 0o644),
                          Entry("etc/group", b"root:x:0:\n", 0o644)],
                 entrypoint=[f"/usr/local/bin/{name}"])


def build_images(cluster: Cluster) -> dict[str, str]:
    """Every image the control plane needs, as OCI archives: {image name: archive path}."""
    made: dict[str, str] = {}
    for image in [component_image(cluster, name) for name in COMPONENTS] + [testimages.etcd_image(cluster),
                                                                            images.pause_image(cluster)]:
        archive = str(images.build(image, cluster.images))
        made.update({name: archive for name in image.names})
    return made


def kubeadm_images(cluster: Cluster, config: Path) -> list[str]:
    """What `kubeadm config images list` says this config needs (the skipped add-ons' images left out)."""
    proc = subprocess.run([str(cluster.bin / "kubeadm"), "config", "images", "list", f"--config={config}"],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise UpError(f"kubeadm-control-plane: `kubeadm config images list` failed: {proc.stderr.strip()[-500:]}")
    skipped = ("/coredns/", "/kube-proxy:")
    return sorted(line.strip() for line in proc.stdout.splitlines()
                  if line.strip() and not any(s in line for s in skipped))


# --- the run -----------------------------------------------------------------------------------

@dataclass
class Report:
    """What a run found: named checks (passed or not, with a detail) and measured figures."""

    agents: str
    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    figures: dict[str, str] = field(default_factory=dict)

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append((name, ok, detail))
        log(f"{'PASS' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}")
        return ok

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(ok for _, ok, _ in self.checks)

    def markdown(self, title: str) -> str:
        lines = [f"# {title}", "", "| check | result | detail |", "|---|---|---|"]
        lines += [f"| {name} | {'pass' if ok else 'FAIL'} | {detail.replace('|', '/')} |"
                  for name, ok, detail in self.checks]
        lines += ["", "| figure | value |", "|---|---|"]
        lines += [f"| {name} | {value} |" for name, value in self.figures.items()]
        return "\n".join(lines) + "\n"


def results_dir(cluster: Cluster) -> Path:
    """Beside the state directory, so that `make down` leaves old runs."""
    return cluster.state.with_name(cluster.state.name + "-kubeadm-control-plane")


class Inner:
    """The inner cluster as seen from this host: kubectl with the admin.conf copied out of the machine."""

    def __init__(self, cluster: Cluster, kubeconfig: Path):
        self.kubectl_bin, self.kubeconfig = cluster.bin / "kubectl", kubeconfig

    def kubectl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.kubectl_bin), f"--kubeconfig={self.kubeconfig}", "--request-timeout=20s",
                               *args], capture_output=True, text=True, timeout=timeout)

    def get(self, *args: str) -> dict | None:
        proc = self.kubectl("get", *args, "-o", "json")
        return json.loads(proc.stdout) if proc.returncode == 0 else None

    def node_ready(self, name: str) -> dict | None:
        node = self.get("node", name)
        if node and any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"].get("conditions", [])):
            return node
        return None

    def static_pods(self, node_name: str) -> dict[str, dict]:
        """The mirror pods of the static pods in kube-system, by component."""
        pods = self.get("-n", "kube-system", "pods") or {"items": []}
        found = {}
        for pod in pods["items"]:
            annotations = pod["metadata"].get("annotations") or {}
            for name in STATIC_PODS:
                if pod["metadata"]["name"] == f"{name}-{node_name}" and "kubernetes.io/config.mirror" in annotations:
                    found[name] = pod
        return found


def health_waits(init_output: str) -> dict[str, str]:
    """kubeadm init's own waits, from its `[kubelet-check]` and `[control-plane-check]` lines: {what: how long}."""
    found = {}
    for match in re.finditer(r"^\[(kubelet-check|control-plane-check)\] (?:The )?(\S+) is healthy after (\S+)$",
                             init_output, re.M):
        found[f"kubeadm {match.group(1)}: {match.group(2)} healthy after"] = match.group(3)
    return found


def pod_ready(pod: dict) -> bool:
    status = pod.get("status") or {}
    return status.get("phase") == "Running" and any(
        c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or [])


def container(pod: dict) -> tuple[str, int]:
    """(container ID without the runtime prefix, restart count) of the pod's one container."""
    [status] = (pod.get("status") or {}).get("containerStatuses") or [{}]
    return (status.get("containerID") or "").rpartition("://")[2], int(status.get("restartCount") or 0)


def wait(predicate, timeout: float, period: float = 2.0):
    """predicate()'s first truthy value within timeout seconds, else None."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except (subprocess.SubprocessError, json.JSONDecodeError, ValueError):
            value = None
        if value or time.monotonic() > deadline:
            return value
        time.sleep(period)


def _all_ready(inner: Inner, name: str) -> dict[str, dict] | None:
    pods = inner.static_pods(name)
    if len(pods) == len(STATIC_PODS) and all(pod_ready(p) for p in pods.values()) and inner.node_ready(name):
        return pods
    return None


def _prepare(cluster: Cluster, m: machine.Machine) -> None:
    """kubeadm (and kubectl) in the machine, and its default route."""
    for program in ("kubeadm", "kubectl"):
        shutil.copy2(cluster.bin / program, m.root / "usr/bin" / program)
    m.ssh("ip", "route", "replace", "default", "dev", "eth0")


def agents_vars(cluster: Cluster, agents: str, wheels: Path | None) -> dict:
    """The pynode role's variables for `agents`: pykubelet from the wheelhouse, or the upstream kubelet (and
    kube-proxy, unused here) from the cache, under the same units."""
    if agents == "upstream":
        return {"pynode_agents": "upstream", "pynode_upstream_bin": str(cluster.bin)}
    return {"pynode_wheelhouse": str(wheels)}


def _journal(m: machine.Machine, out: Path, unit: str = "kubelet") -> None:
    proc = m.ssh("journalctl", "-u", unit, "--no-pager", "-o", "short-precise", check=False, timeout=120)
    (out / f"{m.name}-{unit}.log").write_text(proc.stdout)


def machines(cluster: Cluster, agents: str = "pynode") -> tuple[machine.Machine, machine.Machine]:
    """The control plane's machine and the worker's (with the upstream kubelet's shims for `agents` upstream)."""
    upstream = agents == "upstream"
    return (machine.Machine(cluster, index=CONTROL_PLANE[0], pod_subnet=CONTROL_PLANE[1], upstream_kubelet=upstream),
            machine.Machine(cluster, index=WORKER[0], pod_subnet=WORKER[1], upstream_kubelet=upstream))


def destroy(cluster: Cluster) -> None:
    """Remove the machines a run left running (--keep)."""
    for m in machines(cluster):
        m.destroy()


def run(cluster: Cluster, agents: str = "pynode", keep: bool = False, join_worker: bool = False) -> Report:
    """The whole check; returns its report (also in summary.md of the run's directory, and printed)."""
    if agents not in AGENTS:
        raise UpError(f"kubeadm-control-plane: unknown node agents {agents!r}; expected one of {', '.join(AGENTS)}")
    if not Path(f"/sys/class/net/{cluster.bridge}").exists():
        raise UpError(f"kubeadm-control-plane: the cluster bridge {cluster.bridge} is missing; the machine is "
                      f"attached to it (run `make up` first)")
    local.build_upstream(cluster, ["kubeadm", "kubectl", *COMPONENTS, *(["kubelet", "kube-proxy"]
                                                                       if agents == "upstream" else [])])
    local.build_recipe(cluster, UPSTREAM_DIR / "etcd", "etcd")
    out = results_dir(cluster) / (time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) +
                                  ("" if agents == "pynode" else f"-{agents}"))
    out.mkdir(parents=True)
    report = Report(agents)
    cp, worker = machines(cluster, agents)
    try:
        _run(cluster, agents, out, report, cp, worker, join_worker)
    finally:
        for m in (cp, worker):
            if m.dir.exists() and m._nspawn_pids():
                _journal(m, out)
        if keep:
            log(f"leaving {cp.name} ({cp.ip}) running; admin.conf in {out}")
        else:
            log(f"destroying {cp.name} and {worker.name}")
            cp.destroy()
            worker.destroy()
    kind = "pykubelet" if agents == "pynode" else "the upstream kubelet"
    text = report.markdown(f"kubeadm init control plane on {kind} ({cp.name}), {time.strftime('%Y-%m-%d')}")
    (out / "summary.md").write_text(text)
    print(text)
    log(f"run directory {out}")
    return report


def _run(cluster: Cluster, agents: str, out: Path, report: Report, cp: machine.Machine, worker: machine.Machine,
         join_worker: bool) -> None:
    from .wheels import wheelhouse

    config = kubeadm_config(node_name=cp.name, node_ip=cp.ip, version=cluster.version, agents=agents)
    (out / "kubeadm-init.yaml").write_text(config)
    log(f"building the wheelhouse and the images; run directory {out}")
    made = build_images(cluster)
    wanted = kubeadm_images(cluster, out / "kubeadm-init.yaml")
    missing = [name for name in wanted if name not in made]
    if missing:
        raise UpError(f"kubeadm-control-plane: kubeadm wants images not built here: {', '.join(missing)}")
    archives = sorted({made[name] for name in wanted})
    wheels = wheelhouse(out / "dist") if agents == "pynode" else None
    started = time.monotonic()
    cp.create()
    boot = cp.boot()
    inventory = out / "hosts.yml"
    inventory.write_text(yaml.safe_dump(cp.inventory({
        **agents_vars(cluster, agents, wheels), "containerd_image_archives": archives,
        "containerd_restrict_oom_score_adj": True})))
    log(f"{cp.name} booted in {boot:.0f}s; installing containerd, pynode and {len(archives)} images")
    machine.apply_roles(["containerd", "pynode"], inventory, out, "control-plane")
    _prepare(cluster, cp)
    report.figures["machine created, booted and installed"] = f"{time.monotonic() - started:.0f} s"
    (cp.root / CONFIG_PATH.lstrip("/")).write_text(config)

    log(f"kubeadm init in {cp.name}; output in {out / 'kubeadm-init.log'}")
    started = time.monotonic()
    proc = cp.ssh("sh", "-c", f"kubeadm init --config={CONFIG_PATH} 2>&1", check=False, timeout=1200)
    init_time = time.monotonic() - started
    (out / "kubeadm-init.log").write_text(proc.stdout)
    report.figures["kubeadm init wall time"] = f"{init_time:.1f} s"
    report.figures.update(health_waits(proc.stdout))
    if not report.check("kubeadm init succeeds", proc.returncode == 0,
                        f"exit {proc.returncode} after {init_time:.0f}s" +
                        ("" if proc.returncode == 0 else ": " + proc.stdout.strip().splitlines()[-1][:200]
                         if proc.stdout.strip() else "")):
        return
    admin = out / "admin.conf"
    shutil.copy2(cp.root / "etc/kubernetes/admin.conf", admin)
    inner = Inner(cluster, admin)

    pods = wait(lambda: _all_ready(inner, cp.name), 300)
    ready_time = time.monotonic() - started
    report.figures["kubeadm init start to Node Ready and 4 mirror pods Ready"] = f"{ready_time:.1f} s"
    pods = pods or inner.static_pods(cp.name)
    for name in STATIC_PODS:
        pod = pods.get(name)
        report.check(f"static pod {name} Running and Ready (mirror pod)", bool(pod) and pod_ready(pod),
                     "no mirror pod" if not pod else f"phase {pod['status'].get('phase')}")
    node = inner.get("node", cp.name)
    info = (node or {}).get("status", {}).get("nodeInfo", {})
    report.check("Node Ready", bool(inner.node_ready(cp.name)))
    report.check(f"kubeletVersion {cluster.version}", info.get("kubeletVersion") == cluster.version,
                 str(info.get("kubeletVersion")))
    readyz = inner.kubectl("get", "--raw", "/readyz")
    report.check("apiserver /readyz answers ok from outside", readyz.stdout.strip() == "ok",
                 (readyz.stdout or readyz.stderr).strip()[:100])
    if len(pods) < len(STATIC_PODS):
        return

    # A killed static pod container comes back: the kubelet restarts it (restartPolicy Always).
    target = "kube-scheduler"
    before_id, before_count = container(pods[target])
    started = time.monotonic()
    cp.ssh("ctr", "-n", "k8s.io", "task", "kill", "-s", "SIGKILL", before_id, check=False)

    def restarted():
        pod = inner.static_pods(cp.name).get(target)
        if pod and pod_ready(pod) and container(pod)[0] not in ("", before_id) and container(pod)[1] > before_count:
            return pod
        return None

    pod = wait(restarted, 180)
    report.check(f"{target}'s container killed (ctr task kill -s SIGKILL) is restarted", bool(pod),
                 f"restartCount {before_count} -> {container(pod)[1]}, Ready again after "
                 f"{time.monotonic() - started:.1f}s" if pod else "not restarted within 180s")
    if pod:
        report.figures[f"{target} killed to Ready again"] = f"{time.monotonic() - started:.1f} s"

    # Restarting the kubelet leaves the static pods' containers alone.
    pods = wait(lambda: _all_ready(inner, cp.name), 120) or inner.static_pods(cp.name)
    before = {name: container(pod) for name, pod in pods.items()}
    started = time.monotonic()
    restart = cp.ssh("systemctl", "restart", "kubelet", check=False, timeout=400)
    restart_time = time.monotonic() - started
    time.sleep(15)  # let the new kubelet sync its pods and report their status again
    pods = wait(lambda: _all_ready(inner, cp.name), 180) or inner.static_pods(cp.name)
    after = {name: container(pod) for name, pod in pods.items()}
    report.figures["systemctl restart kubelet (returns after READY=1)"] = f"{restart_time:.1f} s"
    report.check("systemctl restart kubelet keeps the static pods' containers (same IDs and restart counts)",
                 restart.returncode == 0 and before == after and len(after) == len(STATIC_PODS),
                 "same" if before == after else f"before {before}, after {after}")

    if join_worker:
        _join_worker(cluster, agents, out, report, cp, worker, inner, wheels)

    proc = cp.ssh("sh", "-c", "kubeadm reset --force 2>&1", check=False, timeout=300)
    (out / "kubeadm-reset.log").write_text(proc.stdout)
    left = cp.ssh("sh", "-c", "ls /etc/kubernetes/manifests | wc -l", check=False).stdout.strip()
    report.check("kubeadm reset --force", proc.returncode == 0 and left == "0",
                 f"exit {proc.returncode}, {left} manifests left")


def _join_worker(cluster: Cluster, agents: str, out: Path, report: Report, cp: machine.Machine,
                 worker: machine.Machine, inner: Inner, wheels: Path | None) -> None:
    """A second machine joined with the playbook's kubeadm_join role, as test_node_install joins the local one."""
    line = cp.ssh("kubeadm", "token", "create", "--print-join-command").stdout.split()
    token, ca_hash = line[line.index("--token") + 1], line[line.index("--discovery-token-ca-cert-hash") + 1]
    started = time.monotonic()
    worker.create()
    worker.boot()
    inventory = out / "worker-hosts.yml"
    inventory.write_text(yaml.safe_dump(worker.inventory({
        **agents_vars(cluster, agents, wheels),
        "containerd_image_archives": [str(images.build(images.pause_image(cluster), cluster.images))],
        "containerd_restrict_oom_score_adj": True,
        "kubeadm_join_kubeadm_binary": str(cluster.bin / "kubeadm"),
        "kubeadm_join_endpoint": f"{cp.ip}:6443", "kubeadm_join_token": token,
        "kubeadm_join_ca_cert_hash": ca_hash,
        "kubeadm_join_ignore_preflight_errors": sorted(IGNORE_PREFLIGHT),
        "kubeadm_join_cluster_cidr": POD_SUBNET,
        # No kube-proxy: the inner cluster's kubeadm-config disables it, and nothing here needs services.
        "kubeadm_join_kube_proxy": False})))
    try:
        machine.apply_roles(["containerd", "pynode", "kubeadm_join"], inventory, out, "worker")
        ok, detail = True, ""
    except UpError as err:
        ok, detail = False, str(err)
    took = time.monotonic() - started
    node = inner.node_ready(worker.name)
    report.figures["worker: bare machine to Ready (kubeadm join)"] = f"{took:.0f} s"
    report.check(f"{worker.name} joins with kubeadm join and is Ready", ok and bool(node),
                 detail or ("" if node else "not Ready"))
