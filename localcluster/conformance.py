"""`make conformance`: the upstream [Conformance] specs of the pinned version against the local cluster.

One run: build e2e.test, ginkgo and agnhost (localcluster/upstream/conformance/build.sh),
build and import the suite's images (testimages.py), bring the cluster up if it is
down, run the specs with ginkgo in parallel (Serial specs last, on one process, as
ginkgo orders them), then delete the namespaces the suite left and write a summary.
Everything a run produces goes to `<state>-conformance/<UTC time>/`: ginkgo's
output (`ginkgo.log`), `report.json`, `junit.xml` and `summary.md`.

The summary counts specs per sig (the `[sig-…]` tag of the spec's text) and lists
each failed spec with the first line of its failure.

The suite runs on two nodes (SUITE_NODES): a cluster with one pynode node gets a second for the run.
`agents="upstream"` runs the same suite, images and cluster shape on nodes that run the upstream
kubelet and kube-proxy of the same version instead (localcluster/upstream_node.py): that many such
nodes are added for the run, the pynode nodes get a NoSchedule taint the suite is told to ignore
(so its pods all land on the upstream nodes), and afterwards the taint and the added nodes go
again. A spec that fails there too is a gap of the harness, not of pynode.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from . import cluster as local
from . import bootstrap, lock, procs, testimages, upstream_node
from .agents import wait_node_ready
from .procs import UpError
from .settings import UPSTREAM_DIR, Cluster

BUILD_SCRIPT = UPSTREAM_DIR / "conformance" / "build.sh"
DEFAULT_FOCUS = r"\[Conformance\]"
# Pods mostly wait (images are local, containers sleep), so more processes than the 2 CPUs pay off.
DEFAULT_PROCS = 4
# ginkgo's states, folded into the three the summary counts.
FAILED_STATES = {"failed", "panicked", "timedout", "interrupted", "aborted"}
AGENTS = ("pynode", "upstream")
# The suite's multi-node specs ("should have at least two untainted nodes", the DaemonSet rollback) need two.
SUITE_NODES = 2
# On pynode's nodes while the suite runs on upstream's: keeps its pods off them (its node listings skip them too).
ASIDE_TAINT = "pynode.dev/conformance"


def log(msg: str) -> None:
    print(f"[conformance] {msg}", file=sys.stderr, flush=True)


def build(cluster: Cluster) -> None:
    proc = subprocess.run([str(BUILD_SCRIPT)], env={**os.environ, "PYNODE_CACHE": str(cluster.cache)})
    if proc.returncode != 0:
        raise UpError(f"conformance: the suite's build failed (exit {proc.returncode}); its output is above")
    testimages.build_programs(cluster)


def prepare_images(cluster: Cluster) -> list[str]:
    """Build and import every image there is a recipe for; returns the suite's images that have none."""
    archives, missing = testimages.build_all(cluster)
    testimages.import_all(cluster, archives)
    return missing


def ginkgo_argv(cluster: Cluster, out: Path, focus: str, skip: str, processes: int,
                aside: bool = False) -> list[str]:
    argv = [str(cluster.bin / "ginkgo"), f"--procs={processes}", "--timeout=3h", "--no-color", "--silence-skips",
            f"--focus={focus}", f"--output-dir={out}", "--json-report=report.json", "--junit-report=junit.xml"]
    if skip:
        argv.append(f"--skip={skip}")
    argv += [str(cluster.bin / "e2e.test"), "--",
             f"--kubeconfig={cluster.admin_kubeconfig}", "--provider=skeleton",
             f"--kubectl-path={cluster.bin / 'kubectl'}", f"--report-dir={out}", "--dump-logs-on-failure=false"]
    if aside:  # the suite waits for every node to be schedulable unless its taint is one it may ignore
        argv.append(f"--non-blocking-taints=node-role.kubernetes.io/control-plane,{ASIDE_TAINT}")
    return argv


def exact(specs: list[str]) -> str:
    """A focus that matches these spec texts (ginkgo matches it anywhere in a spec's full text, whose labels make
    anchors miss). Go's RE2 refuses Python's escaped spaces, hence our own escaping."""
    return "|".join(re.sub(r"([\\.+*?()|\[\]{}^$])", r"\\\1", text) for text in specs)


def suite_namespaces(cluster: Cluster) -> set[str]:
    """Namespaces the e2e framework made (it labels each one `e2e-framework=<spec base name>`)."""
    out = procs.kubectl(cluster, "get", "namespaces", "-l", "e2e-framework", "-o", "name")
    return {line.split("/", 1)[1] for line in out.stdout.split()}


def results_dir(cluster: Cluster) -> Path:
    """Beside the state directory, so that `make down` (and the test suite's last module) leave old runs."""
    return cluster.state.with_name(cluster.state.name + "-conformance")


def run(cluster: Cluster, focus: str = DEFAULT_FOCUS, skip: str = "", processes: int = DEFAULT_PROCS,
        agents: str = "pynode") -> Path:
    """The whole measurement; returns the run's directory (the summary is printed and in summary.md).

    Holds the cluster's lock while it uses the cluster, so a test session on the same machine waits for it.
    """
    if agents not in AGENTS:
        raise UpError(f"conformance: unknown node agents {agents!r}; expected one of {', '.join(AGENTS)}")
    build(cluster)
    if agents == "upstream":
        log("building the upstream kubelet and kube-proxy (cached after the first time)")
        local.build_upstream(cluster, ["kubelet", "kube-proxy"])
    with lock.holding(cluster, f"a conformance run ({focus})"):
        if not all(local.status(cluster).values()):
            local.up(cluster)
        with nodes_running(cluster, agents) as (suite_cluster, names):
            return measure(suite_cluster, focus, skip, processes, agents=agents, node_names=names)


@contextlib.contextmanager
def nodes_running(cluster: Cluster, agents: str):
    """(the cluster's settings for the run, the names of the nodes the suite runs its pods on).

    The suite runs on SUITE_NODES nodes at least. For `pynode`, pynode nodes are added up to that many (a cluster
    that has them already is used as it is); for `upstream`, as many nodes with the upstream kubelet and
    kube-proxy are added and pynode's are set aside (ASIDE_TAINT). Afterwards the added nodes and the taint go
    again, also after an error or Ctrl-C."""
    count = len(cluster.nodes)
    added = max(SUITE_NODES - count, 0) if agents == "pynode" else max(SUITE_NODES, count)
    wide = dataclasses.replace(cluster, node_count=count + added)
    ours, extra = wide.nodes[:count], wide.nodes[count:]
    aside = ours if agents == "upstream" else ()
    try:
        for node in extra:
            if local.node_leftovers(node):
                log(f"removing the {node.name} an earlier run left behind")
                _remove(node)
            if agents == "pynode":
                log(f"adding {node.name} with pykubelet and pyproxy for the run")
                local.start_node(node)
                continue
            log(f"adding {node.name} with the upstream kubelet and kube-proxy for the run")
            # Schedulable, unlike the benchmarks' node: the suite's pods are to land there.
            upstream_node.bring_up(node, {"registerWithTaints": []})
            upstream_node.start_upstream_proxy(node)
        if agents == "upstream":
            for node in extra:  # its daemon is kubelet-<node>
                wait_node_ready(node, timeout=180, program="kubelet")
                bootstrap.approve_serving_certificates(node)  # logs, exec, port-forward through the apiserver
        for node in aside:  # (bring_up gave them routes to the new nodes' pods)
            _kubectl(cluster, "taint", "nodes", node.name, f"{ASIDE_TAINT}=upstream-run:NoSchedule", "--overwrite")
        yield wide, [node.name for node in (extra if aside else wide.nodes)]
    finally:
        for node in aside:
            procs.kubectl(cluster, "taint", "nodes", node.name, f"{ASIDE_TAINT}-")
        for node in extra:
            log(f"removing {node.name}")
            _remove(node)


def _remove(node) -> None:
    from lightkube import Client, KubeConfig

    local.remove_node_and_objects(node, Client(config=KubeConfig.from_file(str(node.cluster.admin_kubeconfig))))


def _kubectl(cluster: Cluster, *args: str, timeout: float = 120) -> None:
    proc = procs.kubectl(cluster, *args, timeout=timeout)
    if proc.returncode != 0:
        raise UpError(f"conformance: `kubectl {' '.join(args)}` failed: {proc.stderr.strip()}")


def measure(cluster: Cluster, focus: str, skip: str = "", processes: int = DEFAULT_PROCS, agents: str = "pynode",
            node_names: list[str] | None = None) -> Path:
    """`run` for a caller that already holds the cluster's lock (the test suite's smoke), built the suite and
    brought the cluster up."""
    missing = prepare_images(cluster)
    if missing:
        log(f"{len(missing)} images the suite may pull have no recipe here (localcluster/testimages.py); a spec "
            f"that runs one fails on it: {' '.join(missing)}")
    out = results_dir(cluster) / (time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) +
                                  ("" if agents == "pynode" else f"-{agents}"))
    out.mkdir(parents=True)
    before = suite_namespaces(cluster)
    argv = ginkgo_argv(cluster, out, focus, skip, processes, aside=agents != "pynode")
    log(f"running {' '.join(argv)}\n  output in {out / 'ginkgo.log'}")
    started = time.monotonic()
    with open(out / "ginkgo.log", "w") as output:
        # ginkgo exits non-zero whenever a spec fails; the report says which, so the exit code is not an error.
        proc = subprocess.run(argv, stdout=output, stderr=subprocess.STDOUT, cwd=out)
    elapsed = time.monotonic() - started
    left = sorted(suite_namespaces(cluster) - before)
    if left:
        log(f"deleting {len(left)} namespaces the suite left: {' '.join(left)}")
        procs.kubectl(cluster, "delete", "namespace", "--wait=false", *left)
    report = out / "report.json"
    if not report.is_file():
        raise UpError(f"conformance: ginkgo (exit {proc.returncode}) wrote no report; see {out / 'ginkgo.log'}")
    summary = summarize(json.loads(report.read_text()))
    shown = focus if len(focus) <= 120 else focus[:117] + "..."
    kind = "pynode (pykubelet, pyproxy)" if agents == "pynode" else "the upstream kubelet and kube-proxy"
    nodes = ", ".join(node_names or [node.name for node in cluster.nodes])
    text = format_summary(summary, title=f"focus `{shown}`" + (f", skip `{skip}`" if skip else ""),
                          elapsed=elapsed, missing_images=missing, nodes=f"{nodes}, running {kind}")
    (out / "summary.md").write_text(text)
    print(text)
    return out


# --- the summary ------------------------------------------------------------------------------------

@dataclass
class Summary:
    counts: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    failures: list[tuple[str, str]] = field(default_factory=list)  # (spec text, first failure line)
    passed: list[str] = field(default_factory=list)  # spec texts
    suite_failures: list[tuple[str, str]] = field(default_factory=list)  # BeforeSuite and the like

    @property
    def total(self) -> Counter:
        return sum(self.counts.values(), Counter())


def spec_text(spec: dict) -> str:
    return " ".join([*(spec.get("ContainerHierarchyTexts") or []), spec.get("LeafNodeText", "")]).strip()


def sig_of(text: str) -> str:
    match = re.search(r"\[(sig-[a-z0-9-]+)\]", text)
    return match.group(1) if match else "other"


def first_line(failure: dict | None) -> str:
    message = (failure or {}).get("Message", "").strip()
    line = next((ln.strip() for ln in message.splitlines() if ln.strip()), "(no failure message)")
    location = (failure or {}).get("Location", {})
    where = f" [{Path(location['FileName']).name}:{location.get('LineNumber')}]" if location.get("FileName") else ""
    return line[:300] + where


def summarize(reports: list[dict]) -> Summary:
    """Fold ginkgo's JSON report (a list of suite reports) into per-sig counts and the failures. Specs the
    focus left out are not counted; "skipped" are those the suite itself skipped at run time (it says why)."""
    summary = Summary()
    for report in reports:
        for spec in report.get("SpecReports") or []:
            state = spec.get("State", "")
            if spec.get("LeafNodeType") != "It":
                if state in FAILED_STATES:
                    summary.suite_failures.append((spec.get("LeafNodeType", "?"), first_line(spec.get("Failure"))))
                continue
            if state in ("skipped", "pending") and not spec.get("Failure"):
                continue  # left out by the focus/skip regexes, never started
            text = spec_text(spec)
            verdict = "failed" if state in FAILED_STATES else "passed" if state == "passed" else "skipped"
            summary.counts[sig_of(text)][verdict] += 1
            if verdict == "failed":
                summary.failures.append((text, first_line(spec.get("Failure"))))
            elif verdict == "passed":
                summary.passed.append(text)
    summary.failures.sort()
    return summary


def format_summary(summary: Summary, title: str, elapsed: float | None = None,
                   missing_images: list[str] | None = None, nodes: str = "") -> str:
    total = summary.total
    ran = total["passed"] + total["failed"]
    lines = [f"# Conformance run: {title}", ""]
    if nodes:
        lines += [f"Nodes: {nodes}.", ""]
    if elapsed is not None:
        lines.append(f"{ran} specs ran in {elapsed / 60:.0f} min: {total['passed']} passed, {total['failed']} failed"
                     f" ({total['skipped']} skipped by the suite itself).")
        lines.append("")
    lines += ["| sig | passed | failed | skipped |", "|---|---:|---:|---:|"]
    for sig in sorted(summary.counts):
        c = summary.counts[sig]
        lines.append(f"| {sig} | {c['passed']} | {c['failed']} | {c['skipped']} |")
    lines.append(f"| **all** | **{total['passed']}** | **{total['failed']}** | {total['skipped']} |")
    if summary.suite_failures:
        lines += ["", "## Suite-level failures", ""]
        lines += [f"- {node}: {line}" for node, line in summary.suite_failures]
    if summary.failures:
        lines += ["", "## Failed specs", ""]
        lines += [f"- {text}\n  - {line}" for text, line in summary.failures]
    if missing_images:
        lines += ["", "## Images with no local recipe", ""]
        lines += [f"- {name}" for name in missing_images]
    return "\n".join(lines) + "\n"
