"""Pod startup latency and agent footprint, pykubelet vs the upstream kubelet, in one run.

    python -m bench.pod_startup [--batches 30,100] [--warmup 30] [--idle 20] [--loaded 60]

Needs the local cluster up (`make up`); its node pynode-n1 runs pykubelet. This brings up a
second node, pynode-n2, with the upstream kubelet exactly as bench.kubelet_idle does. For each
batch size N, first on pynode-n1 and then on pynode-n2 (never both at once), it creates N
busybox pods bound to the node with spec.nodeName (no scheduler involved) in a namespace of
their own, watches them until each is Running with its container ready, and deletes the
namespace again. A pod's latency is the client's clock when the watch showed it Running and
ready minus the client's clock just before its create call. Each agent's RSS and CPU are
sampled with no batch running (both together) and with the largest batch running (each while
its own batch runs). The table goes to stdout and, with the machine's facts, to
bench/results/pod-startup.md. pynode-n2 is removed at the end, also after an error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import datetime
import math
import signal
import statistics
import sys
import time
from pathlib import Path

import psutil
from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.models.core_v1 import Container, PodSpec, ResourceRequirements
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ConfigMap, Namespace, Pod, ServiceAccount

from localcluster import agents as node_agents, procs
from localcluster.settings import Node
from localcluster.upstream_node import bring_up, daemon

from .nodes import MIB, log, machine_facts, pods_on, run_beside_upstream, started_at, usage, wait_ready

RESULTS = Path(__file__).resolve().parent / "results" / "pod-startup.md"
IMAGE = "registry.k8s.io/e2e-test-images/busybox:1.37.0-1"  # imported into both nodes' containerd
PREFIX = "bench-pod-startup-"  # the batches' namespaces: bench-pod-startup-<node>-<N>
CREATES_IN_FLIGHT = 10  # concurrent create calls


@dataclasses.dataclass
class Agent:
    label: str
    node: Node
    daemon: str
    pid: int

    def log_path(self) -> Path:
        return procs.log_path(self.node.cluster, self.daemon)

    def check(self) -> None:
        if procs.running(self.node.cluster, self.daemon) != self.pid:
            raise procs.UpError(f"{self.daemon} (pid {self.pid}) stopped or was restarted during the run; "
                                f"see {self.log_path()}")


@dataclasses.dataclass
class Batch:
    n: int
    agent: Agent
    created: dict[str, float] = dataclasses.field(default_factory=dict)  # pod -> monotonic time before create
    running: dict[str, float] = dataclasses.field(default_factory=dict)  # pod -> when the watch showed it ready
    cpu_s: float = 0.0  # the agent's CPU seconds from the first create until all Running (or the timeout)
    busy_pct: float = 0.0  # how busy the machine's CPUs were meanwhile
    gone_s: float | None = None  # delete namespace -> namespace gone
    failure: str = ""  # what we saw when not all pods got Running, or the namespace would not go

    @property
    def complete(self) -> bool:
        return len(self.running) == self.n

    def figures(self) -> dict[str, float | None]:
        return {**startup_figures(self.created, self.running, self.n), "cpu": self.cpu_s, "gone": self.gone_s}


def startup_figures(created: dict[str, float], running: dict[str, float], n: int) -> dict[str, float | None]:
    """p50, p99 and max of create → Running and ready, and first create → last Running; None unless all n ran."""
    if len(running) != n:
        return dict.fromkeys(("p50", "p99", "max", "all"))
    latencies = [running[p] - created[p] for p in running]
    return {"p50": percentile(latencies, 50), "p99": percentile(latencies, 99), "max": max(latencies),
            "all": max(running.values()) - min(created.values())}


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile: the smallest value with at least q % of the values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


# --- pods ---------------------------------------------------------------------------------------

def pod(name: str, namespace: str, node: str) -> Pod:
    return Pod(
        metadata=ObjectMeta(name=name, namespace=namespace, labels={"app": "pod-startup"}),
        spec=PodSpec(nodeName=node, terminationGracePeriodSeconds=1, containers=[Container(
            name="sleep", image=IMAGE, imagePullPolicy="IfNotPresent", command=["sleep", "3600"],
            resources=ResourceRequirements(requests={"cpu": "1m", "memory": "4Mi"}))]),
    )


def ready(pod: Pod) -> bool:
    statuses = (pod.status and pod.status.containerStatuses) or []
    return pod.status is not None and pod.status.phase == "Running" and bool(statuses) and all(
        s.ready for s in statuses)


def describe(pod: Pod) -> str:
    """A pod's state in a few words: phase, and why a container waits or stopped."""
    status = pod.status
    if status is None:
        return "no status"
    words = []
    for s in status.containerStatuses or []:
        if s.state and s.state.waiting:
            words.append(f"{s.name} waiting: {s.state.waiting.reason} {s.state.waiting.message or ''}".strip())
        elif s.state and s.state.terminated:
            words.append(f"{s.name} terminated: {s.state.terminated.reason} (exit {s.state.terminated.exitCode})")
        elif not s.ready:
            words.append(f"{s.name} not ready")
    for c in status.conditions or []:
        if c.status != "True" and c.message and c.type not in ("Ready", "ContainersReady"):
            words.append(f"{c.type}: {c.message}")
    return (status.phase or "no phase") + (f" ({'; '.join(words)})" if words else "")


async def start_pods(config, batch, namespace: str, pods: list[Pod], timeout: float) -> dict:
    """Create the pods (batch.created: when) and watch them until all are Running and ready (batch.running:
    when); returns the last seen version of each."""
    client = AsyncClient(config=config)
    seen: dict = {}
    try:
        listing = client.list(Pod, namespace=namespace)
        async for _ in listing:
            pass
        since = listing.resourceVersion  # the watch starts here, so it misses no event of ours

        async def watch() -> None:
            async for _, obj in client.watch(Pod, namespace=namespace, resource_version=since):
                now = time.monotonic()
                name = obj.metadata.name
                seen[name] = obj
                if name not in batch.running and ready(obj):
                    batch.running[name] = now
                    if len(batch.running) == batch.n:
                        return

        watcher = asyncio.create_task(watch())
        slots = asyncio.Semaphore(CREATES_IN_FLIGHT)

        async def create(obj: Pod) -> None:
            async with slots:
                batch.created[obj.metadata.name] = time.monotonic()
                await client.create(obj)

        try:
            await asyncio.gather(*(create(p) for p in pods))
            await asyncio.wait_for(watcher, timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            watcher.cancel()
    finally:
        await client.close()
    return seen


def log_excerpt(path: Path, offset: int, names: list[str], limit: int = 25) -> list[str]:
    """The agent's warning and error lines since `offset`, and those naming one of `names`; the last `limit`."""
    with open(path, "rb") as f:
        f.seek(offset)
        lines = f.read().decode(errors="replace").splitlines()
    picked = [line for line in lines if line[:1] in ("W", "E") or any(f"/{name}\"" in line for name in names)]
    return [line[:300] for line in picked[-limit:]]


def run_batch(cluster, client, agent: Agent, n: int, timeout: float) -> Batch:
    namespace = f"{PREFIX}{agent.node.name}-{n}"
    make_namespace(client, namespace)
    batch = Batch(n, agent)
    log_offset = agent.log_path().stat().st_size
    _, cpu_before = usage(agent.pid)
    psutil.cpu_percent()
    log(f"{agent.label} on {agent.node.name}: creating {n} pods in {namespace}")
    config = KubeConfig.from_file(str(cluster.admin_kubeconfig))
    pods = [pod(f"pod-{i:03d}", namespace, agent.node.name) for i in range(n)]
    seen = asyncio.run(start_pods(config, batch, namespace, pods, timeout))
    batch.busy_pct = psutil.cpu_percent()
    agent.check()
    batch.cpu_s = usage(agent.pid)[1] - cpu_before
    if batch.complete:
        log(f"{agent.label}: all {n} Running after {batch.figures()['all']:.1f}s")
    else:
        explain_stuck(agent, batch, n, seen, log_offset, timeout)
    return batch


def explain_stuck(agent: Agent, batch, n: int, seen: dict, log_offset: int, timeout: float) -> None:
    """A batch not all Running in time: batch.failure says what its pods were doing and quotes the agent's log."""
    stuck = sorted(set(batch.created) - set(batch.running))
    states = collections.Counter(describe(seen[p]) if p in seen else "not seen by the watch" for p in stuck)
    lines = log_excerpt(agent.log_path(), log_offset, stuck)
    batch.failure = (f"{len(batch.running)}/{n} Running and ready after {timeout:g} s. The others: "
                     + ", ".join(f"{count} × {state}" for state, count in states.most_common())
                     + f". Lines of {agent.log_path().name} from the batch (warnings, errors, and those "
                       "naming a pod left):\n\n```\n" + "\n".join(lines) + "\n```\n")
    log(f"{agent.label}: only {len(batch.running)}/{n} Running after {timeout:g}s: "
        + ", ".join(f"{c} × {s}" for s, c in states.most_common()))


# --- namespaces ---------------------------------------------------------------------------------

def make_namespace(client, name: str, timeout: float = 60) -> None:
    """Create a namespace and wait for what its pods need from the controllers (so that we do not time them)."""
    client.create(Namespace(metadata=ObjectMeta(name=name)))
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.get(ServiceAccount, "default", namespace=name)
            client.get(ConfigMap, "kube-root-ca.crt", namespace=name)
            return
        except ApiError as err:
            if err.status.code != 404 or time.monotonic() > deadline:
                raise procs.UpError(f"namespace {name}: no default ServiceAccount or kube-root-ca.crt "
                                    f"after {timeout:.0f}s ({err.status.message})") from err
        time.sleep(0.1)


def delete_namespaces(client, names: list[str], timeout: float) -> tuple[float | None, str]:
    """Delete namespaces and wait until they are gone: (seconds it took, or None; what was left if not)."""
    start = time.monotonic()
    for name in names:
        try:
            client.delete(Namespace, name)
        except ApiError as err:
            if err.status.code != 404:
                raise
    left = list(names)
    while left:
        left = [name for name in left if any(ns.metadata.name == name for ns in client.list(Namespace))]
        if not left:
            break
        if time.monotonic() - start > timeout:
            pods = [f"{p.metadata.namespace}/{p.metadata.name} ({'terminating, ' if p.metadata.deletionTimestamp else ''}"
                    f"{describe(p)})" for name in left for p in client.list(Pod, namespace=name)]
            return None, (f"Namespace(s) {', '.join(left)} still there {timeout:.0f} s after the delete, with "
                          f"{len(pods)} pod(s): " + ", ".join(pods[:10]) + (" ..." if len(pods) > 10 else ""))
        time.sleep(0.2)
    return time.monotonic() - start, ""


def ours(client) -> list[str]:
    return [ns.metadata.name for ns in client.list(Namespace) if ns.metadata.name.startswith(PREFIX)]


# --- footprint ----------------------------------------------------------------------------------

def footprint(agents: list[Agent], seconds: float, interval: float = 1) -> dict[str, tuple[float, float]]:
    """Sample the agents together every `interval` s for `seconds`: label -> (mean RSS in MiB, CPU %)."""
    rss: dict[str, list[int]] = {a.label: [] for a in agents}
    cpu: dict[str, list[float]] = {a.label: [] for a in agents}
    start = time.monotonic()
    ticks = max(1, round(seconds / interval))
    for tick in range(ticks + 1):
        time.sleep(max(0.0, start + tick * seconds / ticks - time.monotonic()))
        for agent in agents:
            agent.check()
            r, c = usage(agent.pid)
            rss[agent.label].append(r)
            cpu[agent.label].append(c)
    wall = time.monotonic() - start
    return {label: (statistics.fmean(rss[label]) / MIB, 100 * (cpu[label][-1] - cpu[label][0]) / wall)
            for label in rss}


# --- the report ---------------------------------------------------------------------------------

BATCH_ROWS = [("p50 (s)", "p50", "{:.2f}"), ("p99 (s)", "p99", "{:.2f}"), ("max (s)", "max", "{:.2f}"),
              ("all Running (s)", "all", "{:.2f}"), ("agent CPU while starting them (s)", "cpu", "{:.2f}"),
              ("delete namespace → gone (s)", "gone", "{:.1f}")]


def table(agents: list[Agent], batches: list[Batch], idle: dict, loaded: dict, loaded_n: int) -> str:
    def cell(fmt: str, value: float | None) -> str:
        return "n/a" if value is None else fmt.format(value)

    def row(title: str, values: list[float | None], fmt: str, ratio: bool = True) -> str:
        py, up = values
        quotient = cell("{:.2f}×", py / up) if ratio and py is not None and up else ""
        return f"| {title} | {cell(fmt, py)} | {cell(fmt, up)} | {quotient} |"

    lines = ["| | " + " | ".join(f"{a.label} ({a.node.name})" for a in agents) + " | pykubelet / upstream |",
             "| --- | ---: | ---: | ---: |"]
    for n in dict.fromkeys(b.n for b in batches):
        pair = [next(b for b in batches if b.n == n and b.agent is a) for a in agents]
        figures = [b.figures() for b in pair]
        if not all(b.complete for b in pair):
            lines.append(row(f"{n} pods: Running and ready", [len(b.running) for b in pair], f"{{:.0f}}/{n}", False))
        for title, key, fmt in BATCH_ROWS:
            lines.append(row(f"{n} pods: {title}", [f[key] for f in figures], fmt))
        lines.append(row(f"{n} pods: machine CPUs busy meanwhile (%)", [b.busy_pct for b in pair], "{:.0f}", False))
    for title, figures in (("no batch", idle),
                           (f"{loaded_n} pods", loaded)):
        if figures:
            lines.append(row(f"{title}: mean RSS (MiB)", [figures[a.label][0] for a in agents], "{:.1f}"))
            lines.append(row(f"{title}: CPU (%)", [figures[a.label][1] for a in agents], "{:.2f}"))
    return "\n".join(lines) + "\n"


def report(args, agents: list[Agent], batches: list[Batch], tables: str, idle_pods: dict[str, int],
           facts: dict[str, str]) -> str:
    failures = "".join(f"\n**{b.n} pods on {b.agent.node.name} ({b.agent.label})**: {b.failure}\n"
                       for b in batches if b.failure)
    py = agents[0]
    return (
        "# Pod startup: pykubelet vs upstream kubelet\n\n"
        f"`python -m bench.pod_startup --batches {','.join(map(str, args.batches))} --warmup {args.warmup:g} "
        f"--idle {args.idle:g} --loaded {args.loaded:g}`, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC. "
        f"Batches in this order: " + ", ".join(f"{b.n} on {b.agent.node.name}" for b in batches) + ", one at a time; "
        "each batch's namespace was deleted, and gone, before the next started. A batch is N busybox pods "
        f"(`{IMAGE}`, already imported, `IfNotPresent`, `sleep 3600`, requests 1m CPU and 4Mi, grace period "
        f"1 s) bound with spec.nodeName, created {CREATES_IN_FLIGHT} calls at a time.\n\n"
        + tables
        + "\nLatency: the client's monotonic clock when a watch event showed the pod Running with its container "
        "ready, minus the same clock just before the pod's create call. p50 and p99 are nearest-rank (for 30 pods, "
        "p99 is the max). All Running: first create call to the last pod Running. Agent CPU: user + system seconds "
        "of the agent (children included) over that span. Delete namespace → gone includes the namespace "
        "controller's work. RSS and CPU (%): the agent process with children (neither has long-lived ones), "
        f"sampled every second: with no batch, both together over {args.idle:g} s after a {args.warmup:g} s "
        f"warm-up; with {max(args.batches)} pods, each over {args.loaded:g} s right after its own batch was all "
        "Running (the other node had none). 100 % CPU is one core.\n\n"
        "Pods on the nodes besides the batches: " + ", ".join(f"{k} {v}" for k, v in idle_pods.items())
        + " (pynode-n1's are the sample workload `make up` starts, namespace pynode-sample: httpd with a 2 s "
        "readiness probe; they ran throughout). pynode-n2 has the taint "
        "`pynode.dev/bench=upstream-kubelet:NoSchedule` to keep others' pods off; the kubelet admits pods "
        "over NoExecute taints only, and our pods bypass the scheduler.\n\n"
        "Both agents start new in each run: the benchmark restarts pynode-n1's pykubelet (its pods keep "
        "running) before it brings up the upstream kubelet. The upstream kubelet runs in a mount namespace of its own (see bench/README.md) in which only its root dir shares "
        "mounts with the host, so the tmpfs it mounts for each pod's service-account volume reaches containerd.\n"
        + (f"\n## What went wrong\n{failures}" if failures else "")
        + "\n| machine | |\n| --- | --- |\n" + "".join(f"| {k} | {v} |\n" for k, v in facts.items())
        + f"| pykubelet started | {datetime.datetime.fromtimestamp(started_at(py.pid), datetime.UTC):%Y-%m-%d %H:%M:%S} "
          "UTC (the code it runs is the tree as of then) |\n"
    )


# --- main ---------------------------------------------------------------------------------------

def restart_pykubelet(node: Node) -> None:
    """Start pynode-n1's pykubelet again (its pods keep running), so that it starts the run as new as the
    upstream kubelet does, not with whatever earlier work (tests, benchmarks) left in its heap."""
    log(f"restarting pykubelet on {node.name}")
    node_agents.restart_kubelet(node)


def both_agents(cluster, client) -> list[Agent]:
    """pykubelet on pynode-n1, started anew, and the upstream kubelet on pynode-n2, brought up here; once both
    are Ready."""
    ours_node, node = cluster.nodes
    restart_pykubelet(ours_node)
    log(f"bringing up {node.name} ({node.ip}) with the upstream kubelet")
    bring_up(node)
    agents = [Agent(label, n, name, procs.running(cluster, name))
              for label, n, name in (("pykubelet", ours_node, f"pykubelet-{ours_node.name}"),
                                     ("upstream kubelet", node, daemon(node)))]
    wait_ready(client, cluster, {a.node.name: a.daemon for a in agents})
    return agents


def run(cluster, client, args) -> str:
    agents = both_agents(cluster, client)
    idle_pods = {a.node.name: pods_on(client, a.node.name) for a in agents}
    log(f"both nodes Ready (pods: {idle_pods}); warming up {args.warmup:g}s, then sampling both {args.idle:g}s")
    time.sleep(args.warmup)
    idle = footprint(agents, args.idle)
    batches, loaded = [], {}
    for n in args.batches:
        for agent in agents:
            batch = run_batch(cluster, client, agent, n, timeout=args.timeout or 120 + 2 * n)
            batches.append(batch)
            if n == max(args.batches):
                log(f"sampling {agent.label} with its {len(batch.running)} Running pods for {args.loaded:g}s")
                loaded.update(footprint([agent], args.loaded))
            log(f"deleting {PREFIX}{agent.node.name}-{n}")
            batch.gone_s, left = delete_namespaces(client, [f"{PREFIX}{agent.node.name}-{n}"], timeout=180)
            if left:
                log(f"warning: {left}")
                batch.failure += ("\n\n" if batch.failure else "") + left
    tables = table(agents, batches, idle, loaded, max(args.batches))
    print(tables, end="")
    return report(args, agents, batches, tables, idle_pods, machine_facts(cluster, agents[0].pid))


def batch_sizes(text: str) -> list[int]:
    sizes = [int(part) for part in text.split(",")]
    if any(n < 1 or n > 105 for n in sizes) or len(set(sizes)) < len(sizes):
        raise argparse.ArgumentTypeError("distinct pod counts between 1 and 105 (maxPods is 110; pynode-n1 runs "
                                         "2 sample pods)")
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pod_startup", description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=batch_sizes, default=[30, 100], help="pods per batch (default 30,100)")
    parser.add_argument("--warmup", type=float, default=30, help="seconds to wait after both are Ready (default 30)")
    parser.add_argument("--idle", type=float, default=20, help="seconds to sample with no batch (default 20)")
    parser.add_argument("--loaded", type=float, default=60,
                        help="seconds to sample with the largest batch running (default 60)")
    parser.add_argument("--timeout", type=float, default=0,
                        help="seconds a batch may take to be all Running (default 120 + 2 per pod)")
    args = parser.parse_args(argv)

    def body(cluster, node, client) -> str:
        clear_earlier_runs(client, ours, timeout=120)
        return run(cluster, client, args)

    return run_beside_upstream(RESULTS, body, errors=(ApiError,), teardown=remove_leftovers(ours, timeout=120))

def clear_earlier_runs(client, list_ours, timeout: float) -> None:
    """Delete the benchmark's namespaces an earlier run left behind (list_ours(client) names them)."""
    if stale := list_ours(client):
        log(f"deleting the namespaces an earlier run left behind: {', '.join(stale)}")
        delete_namespaces(client, stale, timeout=timeout)


def remove_leftovers(list_ours, timeout: float):
    """A teardown for run_beside_upstream: after an error or Ctrl-C, delete the benchmark's namespaces still there
    (list_ours(client) names them) while pynode-n2's kubelet can still stop their pods."""

    def teardown(client, node: Node) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # let the cleanup finish
        left = []
        try:
            if left := list_ours(client):
                log(f"deleting {', '.join(left)}")
                _, what = delete_namespaces(client, left, timeout=timeout)
                if what:
                    log(f"warning: {what}")
                    for name in left:  # pynode-n2's are about to lose their node: remove them from the API
                        for p in client.list(Pod, namespace=name, fields={"spec.nodeName": node.name}):
                            client.delete(Pod, p.metadata.name, namespace=name, grace_period=0)
        except Exception as err:  # noqa: BLE001 - the apiserver may be gone; say so and go on
            log(f"could not delete the benchmark's namespaces ({', '.join(left) or 'unlisted'}): {err}")

    return teardown

if __name__ == "__main__":
    sys.exit(main())
