"""`make node-conformance`: upstream's Node Conformance test ("Validate node setup") on one machine.

What it measures: the `[NodeConformance]` specs of the pinned version's node e2e suite (test/e2e_node), run
the way upstream runs them against a single node. The suite's binary, e2e_node.test, starts its own etcd and
kube-apiserver (in-process, on the machine's loopback), then starts the `kubelet` it finds in `--k8s-bin-dir`
with flags and a KubeletConfiguration of its choosing, through `systemd-run` since systemd is PID 1, and runs
its specs against that node with pods bound to it by name.

A kubelet owns the machine it runs on, so the suite runs inside a test machine (localcluster/machine.py:
Debian 12 under systemd-nspawn with systemd as PID 1, its own network namespace on the cluster bridge
pynode0; index 56, pods in 10.222.236.0/24, for pykubelet and 57, 10.222.237.0/24, for the upstream kubelet, so
the two runs can go side by side), not on this host. One run:

1. builds e2e_node.test from the pinned modules (upstream/conformance/build.sh e2e_node.test), and the
   upstream kubelet for `--agents upstream`;
2. creates and boots the machine and installs it with the ansible roles `containerd` (Debian's containerd and
   runc, the bridge CNI network for the machine's pod subnet, the e2e images imported from local OCI archives,
   since the machine reaches no registry) and `pynode` (pykubelet in /opt/pynode from a fresh wheelhouse);
   not `kubeadm_join`: the suite brings its own control plane;
3. puts the `kubelet` in the machine's /opt/node-conformance/bin: for pynode a two-line script that execs
   /opt/pynode/bin/pykubelet with whatever flags it is handed, for upstream the kubelet binary of the same
   version;
4. runs ginkgo with DEFAULT_PROCS processes over e2e_node.test, focus `\\[NodeConformance\\]`, skipping
   UPSTREAM_SKIP and SKIPS (below), with `--prepull-images=false` (pre-pulling pulls every image from its
   registry, which the machine cannot reach; the images are imported instead);
5. copies the suite's reports and the kubelet's log out, writes `summary.md` (localcluster/conformance.py's
   summary) under `<state>-node-conformance/<UTC time>[-upstream]/`, and destroys the machine (also after an
   error or Ctrl-C).

Skipped specs (each a regex on the spec text, with its reason; besides upstream's own default skip for
`make test-e2e-node`, UPSTREAM_SKIP: Flaky, Slow and Serial specs):

none beyond it so far; SKIPS holds them with their reasons when there are some.

What the upstream kubelet needs in the machine (not pykubelet): `--fail-cgroupv1=false` (the host runs cgroup
v1, which kubelet 1.35+ refuses by default), and the shims of a machine made with `upstream_kubelet=True`
(localcluster/machine.py: the host-wide sysctls it insists on shown to it as files, and a /dev/kmsg).

The machine has no default route, and the suite's kube-apiserver refuses to start without one (it takes its
address from the default route's interface): the run adds `default dev eth0`, a route with no gateway on the
machine's only link, so nothing can leave the cluster's network through it. Both agents get `--node-ip`.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from . import conformance, images, machine, testimages
from . import cluster as local
from .procs import UpError, run_checked
from .settings import Cluster

REPO = Path(__file__).resolve().parents[1]
AGENTS = ("pynode", "upstream")
# One machine per agent, so both runs can go side by side: (index, pod subnet).
MACHINES = {"pynode": machine.PLAN["node-conformance"], "upstream": machine.PLAN["node-conformance-upstream"]}
DEFAULT_FOCUS = r"\[NodeConformance\]"
# What upstream's `make test-e2e-node` skips by default (hack/make-rules/test-e2e-node.sh).
UPSTREAM_SKIP = r"\[Flaky\]|\[Slow\]|\[Serial\]"
DEFAULT_PROCS = 4
# Specs skipped here beyond UPSTREAM_SKIP: regex -> why. Only what needs a cloud, GPUs, a registry, or a
# feature the machine's runtime lacks. None so far: no [NodeConformance] spec of v1.36.3 outside UPSTREAM_SKIP
# pulls from a registry (with --prepull-images=false the images are the imported ones) or needs a cloud or GPUs.
SKIPS: dict[str, str] = {}
# Inside the machine.
SUITE_DIR = "/opt/node-conformance"
BIN_DIR = f"{SUITE_DIR}/bin"  # --k8s-bin-dir: the `kubelet` the suite starts
WORK_DIR = "/var/lib/node-conformance"  # the suite's working directory (kubeconfig, kubelet-config, static pods)
REPORT_DIR = f"{WORK_DIR}/report"
RUNTIME_ENDPOINT = "unix:///run/containerd/containerd.sock"
PYKUBELET = "/opt/pynode/bin/pykubelet"
ROLES = ["containerd", "pynode"]  # not kubeadm_join: the suite brings its own apiserver


def log(msg: str) -> None:
    print(f"[node-conformance] {msg}", file=sys.stderr, flush=True)


def skip_regex(extra: str = "") -> str:
    """UPSTREAM_SKIP, SKIPS and the caller's own, as one ginkgo --skip regex."""
    return "|".join(part for part in (UPSTREAM_SKIP, *SKIPS, extra) if part)


def kubelet_wrapper(pykubelet: str = PYKUBELET) -> str:
    """The `kubelet` the suite finds for pynode: pykubelet with exactly the flags it is handed."""
    return f"#!/bin/sh\n# pynode's node conformance: the suite's kubelet is pykubelet\nexec {pykubelet} \"$@\"\n"


def kubelet_flags(agents: str, node_ip: str) -> list[str]:
    """Extra kubelet flags (--kubelet-flags) for the machine."""
    flags = [f"--node-ip={node_ip}"]
    if agents == "upstream":
        flags.append("--fail-cgroupv1=false")
    return flags


def suite_argv(*, node_name: str, node_ip: str, agents: str, focus: str, skip: str, processes: int) -> list[str]:
    """ginkgo over e2e_node.test, as run inside the machine (paths are the machine's)."""
    argv = [f"{SUITE_DIR}/ginkgo", f"--procs={processes}", "--timeout=3h", "--no-color", f"--focus={focus}",
            f"--output-dir={REPORT_DIR}", "--json-report=report.json", "--junit-report=junit.xml"]
    if skip:
        argv.append(f"--skip={skip}")
    argv += [f"{SUITE_DIR}/e2e_node.test", "--",
             f"--k8s-bin-dir={BIN_DIR}", f"--container-runtime-endpoint={RUNTIME_ENDPOINT}",
             "--prepull-images=false", f"--node-name={node_name}", f"--report-dir={REPORT_DIR}",
             f"--kubelet-flags={' '.join(kubelet_flags(agents, node_ip))}"]
    return argv


def results_dir(cluster: Cluster) -> Path:
    """Beside the state directory, so that `make down` leaves old runs."""
    return cluster.state.with_name(cluster.state.name + "-node-conformance")


def results_file(agents: str, day: str | None = None) -> Path:
    day = day or time.strftime("%Y-%m-%d", time.gmtime())
    return REPO / "bench" / "results" / f"node-conformance-{day}-{agents}.md"


def image_archives(cluster: Cluster) -> list[str]:
    """The e2e images there is a recipe for (localcluster/testimages.py), built as OCI archives (cached)."""
    return sorted({str(images.build(make(cluster), cluster.images)) for make in testimages.BUILDERS.values()})


def the_machine(cluster: Cluster, agents: str) -> machine.Machine:
    index, subnet = MACHINES[agents]
    return machine.Machine(cluster, index=index, pod_subnet=subnet, upstream_kubelet=agents == "upstream")


def _running(m: machine.Machine) -> bool:
    """A machine an earlier run left running (keep=True) that still answers."""
    if not m._nspawn_pids():
        return False
    return m.ssh("true", check=False, timeout=20).returncode == 0


def _reinstall_pynode(m: machine.Machine, dist: Path) -> None:
    """This tree's pynode wheel over the machine's (its dependencies are there already)."""
    run_checked(sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(REPO), timeout=900)
    wheel = next(dist.glob("pynode-*.whl"))
    shutil.copy2(wheel, m.root / "var/tmp" / wheel.name)  # the machine's /tmp is a tmpfs of its own
    m.ssh("/opt/pynode/bin/pip", "install", "-q", "--no-index", "--no-deps", "--force-reinstall",
          f"/var/tmp/{wheel.name}")


def destroy(cluster: Cluster) -> None:
    for agents in AGENTS:
        the_machine(cluster, agents).destroy()


def _install_suite(cluster: Cluster, m: machine.Machine, agents: str) -> None:
    root = m.root
    bin_dir = root / BIN_DIR.lstrip("/")
    bin_dir.mkdir(parents=True, exist_ok=True)
    for program in ("e2e_node.test", "ginkgo"):
        shutil.copy2(cluster.bin / program, root / SUITE_DIR.lstrip("/") / program)
    kubelet = bin_dir / "kubelet"
    if agents == "pynode":
        kubelet.write_text(kubelet_wrapper())
        kubelet.chmod(0o755)
    else:
        shutil.copy2(cluster.bin / "kubelet", kubelet)
    (root / WORK_DIR.lstrip("/")).mkdir(parents=True, exist_ok=True)
    # The suite's kube-apiserver takes its address from the default route's interface and will not start
    # without one; a route on the machine's only link, with no gateway, leads nowhere off the cluster network.
    m.ssh("ip", "route", "replace", "default", "dev", "eth0")


def run(cluster: Cluster, agents: str = "pynode", focus: str = DEFAULT_FOCUS, skip: str = "",
        processes: int = DEFAULT_PROCS, results: bool = True, keep: bool = False) -> Path:
    """The whole measurement; returns the run's directory (the summary is printed and in summary.md).

    keep: leave the machine running afterwards (to look inside: ssh as machine.Machine.ssh_argv does; remove it
    with `destroy`); a later run reuses a machine left running (pykubelet as installed then)."""
    if agents not in AGENTS:
        raise UpError(f"node-conformance: unknown node agents {agents!r}; expected one of {', '.join(AGENTS)}")
    if not Path(f"/sys/class/net/{cluster.bridge}").exists():
        raise UpError(f"node-conformance: the cluster bridge {cluster.bridge} is missing; the machine is attached "
                      f"to it (run `make up` first)")
    # e2e_node.test and ginkgo to run; agnhost and nnp for the images (testimages.py). Cached after the first time.
    proc = subprocess.run([str(conformance.BUILD_SCRIPT), "e2e_node.test", "ginkgo", "agnhost", "nnp"],
                          env={**os.environ, "PYNODE_CACHE": str(cluster.cache)})
    if proc.returncode != 0:
        raise UpError(f"node-conformance: building e2e_node.test failed (exit {proc.returncode}); output above")
    testimages.build_programs(cluster)  # the programs of the images with a recipe of their own
    if agents == "upstream":
        local.build_upstream(cluster, ["kubelet"])
    out = results_dir(cluster) / (time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) +
                                  ("" if agents == "pynode" else f"-{agents}"))
    out.mkdir(parents=True)
    m = the_machine(cluster, agents)
    try:
        started = time.monotonic()
        if _running(m):
            log(f"reusing {m.name}, left running by an earlier run; reinstalling pynode from this tree")
            m.ssh("sh", "-c", f"systemctl stop 'kubelet-*.service' 2>/dev/null; rm -rf {REPORT_DIR}", check=False)
            _reinstall_pynode(m, out / "dist")
        else:
            from .wheels import wheelhouse

            log(f"building the wheelhouse and the images; run directory {out}")
            wheels = wheelhouse(out / "dist")
            archives = image_archives(cluster)
            m.create()
            m.boot()
            inventory = out / "hosts.yml"
            inventory.write_text(yaml.safe_dump(m.inventory({
                "pynode_wheelhouse": str(wheels), "containerd_image_archives": archives,
                "containerd_restrict_oom_score_adj": True})))
            log(f"machine {m.name} booted; installing containerd, pynode and {len(archives)} image archives")
            machine.apply_roles(ROLES, inventory, out, "machine")
        _install_suite(cluster, m, agents)
        log(f"machine ready in {time.monotonic() - started:.0f}s")
        skip_all = skip_regex(skip)
        argv = suite_argv(node_name=m.name, node_ip=m.ip, agents=agents, focus=focus, skip=skip_all,
                          processes=processes)
        command = f"mkdir -p {REPORT_DIR} && cd {WORK_DIR} && " + " ".join(shlex.quote(a) for a in argv)
        log(f"running in {m.name}: {command}\n  output in {out / 'ginkgo.log'}")
        started = time.monotonic()
        with open(out / "ginkgo.log", "w") as output:
            # ginkgo exits non-zero whenever a spec fails; the report says which.
            subprocess.run([*m.ssh_argv(), command], stdout=output, stderr=subprocess.STDOUT, timeout=4 * 3600)
        elapsed = time.monotonic() - started
        # The reports, the suite's services.log and kubelet.log (systemd-run's unit writes it there).
        report_dir = m.root / REPORT_DIR.lstrip("/")
        for path in report_dir.iterdir() if report_dir.is_dir() else ():
            if path.is_file():
                shutil.copy2(path, out / path.name)
    finally:
        if keep:
            log(f"leaving {m.name} running ({m.ip}); `python -m localcluster node-conformance --destroy` removes it")
        else:
            log(f"destroying {m.name}")
            m.destroy()
    report = out / "report.json"
    if not report.is_file():
        raise UpError(f"node-conformance: ginkgo wrote no report; see {out / 'ginkgo.log'}")
    summary = conformance.summarize(json.loads(report.read_text()))
    kind = "pykubelet" if agents == "pynode" else "the upstream kubelet"
    text = conformance.format_summary(
        summary, title=f"node conformance, focus `{focus}`, skip `{skip_all}`", elapsed=elapsed,
        nodes=f"{m.name} (a systemd-nspawn machine: Debian 12, its containerd 1.6 and runc), running {kind}")
    (out / "summary.md").write_text(text)
    print(text)
    ran = summary.total["passed"] + summary.total["failed"]
    if not ran:
        raise UpError(f"node-conformance: no spec ran (see {out / 'ginkgo.log'}"
                      + (f" and {out / 'kubelet.log'})" if (out / "kubelet.log").exists() else ")"))
    if results:
        results_file(agents).write_text(text)
    return out

