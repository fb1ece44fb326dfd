"""ConfigMap and Secret volumes, pykubelet vs the upstream kubelet, in one run.

    python -m bench.volumes [--pods 30] [--updates 3] [--load 200] [--load-upstream 200] [--window 90]

Needs the local cluster up (`make up`); its node pynode-n1 runs pykubelet. This brings up pynode-n2 with the
upstream kubelet as bench.pod_startup does (its root dir a shared mount, so that containers there see their
secret volumes). Then:

1. startup: on each node in turn (upstream first), `--pods` pods bound with spec.nodeName, each mounting 5
   ConfigMaps and 2 Secrets of its own (created before the pods), one ConfigMap all of them share, and an
   emptyDir; latency from the create call to Running and ready, as bench.pod_startup measures it. Each
   container checks it can read its secret and then watches the shared ConfigMap's file (see below);
2. propagation: with those pods running, `--updates` times per node, the shared ConfigMap's value is
   changed; each container notes when it first read the new value (its own reading of /proc/uptime, the
   host's CLOCK_BOOTTIME) in a file in its emptyDir, which the bench reads from the host. Latency: that
   time minus the host's CLOCK_BOOTTIME just before the update call;
3. API load: with no benchmark pods, both kubelets' API requests over `--window` seconds (the baseline);
   then on each node in turn `--load` pods (`--load-upstream` on the upstream kubelet's, 0 to skip) each
   mounting 5 ConfigMaps of its own, and once all run and `--settle` seconds have passed, the requests
   the kubelet made over `--window` seconds (its own rest_client_requests_total), the apiserver's count
   of ConfigMap requests (apiserver_request_total), the ConfigMap and Secret watches open
   (apiserver_longrunning_requests) and the kubelet's TCP connections to the apiserver;
4. both agents' RSS and CPU, sampled every second throughout, per phase.

The table goes to stdout and, with the machine's facts, to bench/results/volumes.md. The benchmark's
namespaces (bench-volumes-*) are deleted at the end and pynode-n2 removed, also after an error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import datetime
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.resources.core_v1 import ConfigMap, Namespace, Pod, Secret

from localcluster import agents as local_agents
from localcluster import bootstrap, procs
from localcluster.upstream_node import bring_up, daemon

from .nodes import MIB, log, machine_facts, pods_on, run_beside_upstream, started_at, usage, wait_ready
from .pod_startup import (Agent, clear_earlier_runs, delete_namespaces, explain_stuck, make_namespace, percentile,
                          remove_leftovers, start_pods, startup_figures)

RESULTS = Path(__file__).resolve().parent / "results" / "volumes.md"
IMAGE = "registry.k8s.io/e2e-test-images/busybox:1.37.0-1"  # imported into both nodes' containerd
PREFIX = "bench-volumes-"  # bench-volumes-<node>-startup, bench-volumes-<node>-load
CONFIGMAPS, SECRETS = 5, 2  # per startup pod; a load pod mounts CONFIGMAPS ConfigMaps
OBJECTS_IN_FLIGHT = 16  # concurrent ConfigMap/Secret create calls
POLL_FAST, POLL_SLOW = 0.02, 1  # seconds between a container's reads of the shared file (fast once /out/fast exists)
TIMEOUT_FACTOR = 2  # a batch may take 120 s + this per pod to be all Running

# A startup pod's container: note whether its secret is readable, then read the shared ConfigMap's file in a
# loop and append "<uptime> <value>" to /out/changes whenever the value differs from the last one read. No
# command forks in the loop (read is a builtin; `read -t` on a FIFO nobody writes is the pause), so sixty
# loops at 50 reads a second cost a few percent of one core; they read once a second until the bench creates
# /out/fast just before the updates.
WATCHER = f"""
mkdir -p /tmp && mkfifo /tmp/tick && exec 3<>/tmp/tick
s=; read -r s < /etc/bench/secret-0/token; echo "$s" > /out/secret
last=
while :; do
  c=; read -r c < /etc/bench/shared/value
  if [ "$c" != "$last" ]; then read -r up _ < /proc/uptime; echo "$up $c" >> /out/changes; last=$c; fi
  if [ -e /out/fast ]; then read -t {POLL_FAST} _ <&3; else read -t {POLL_SLOW} _ <&3; fi
done
"""


# --- sampling -----------------------------------------------------------------------------------

class Sampler(threading.Thread):
    """Every agent's RSS and CPU time every `interval` s, and the machine's CPU times, until stopped.

    `mark()` takes a sample now and returns its index; `span(label, a, b)` sums up what lies between two.
    """

    def __init__(self, agents: list[Agent], interval: float = 1.0):
        super().__init__(daemon=True, name="sampler")
        self.agents = agents
        self.interval = interval
        self.samples: list[tuple[float, dict[str, tuple[int, float]], tuple[float, float]]] = []
        self.lock = threading.Lock()
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def _take(self) -> int:
        now = time.monotonic()
        values = {}
        for agent in self.agents:
            values[agent.label] = usage(agent.pid)
        times = psutil.cpu_times()
        busy = sum(times) - times.idle - getattr(times, "iowait", 0)
        with self.lock:
            self.samples.append((now, values, (busy, sum(times))))
            return len(self.samples) - 1

    def mark(self) -> int:
        return self._take()

    def run(self) -> None:
        while not self.halt.wait(self.interval):
            try:
                self._take()
            except psutil.NoSuchProcess as err:  # the main thread's agent.check() says which one
                self.error = err
                return

    def span(self, label: str, first: int, last: int) -> dict[str, float]:
        with self.lock:
            part = self.samples[first:last + 1]
        (t0, v0, m0), (t1, v1, m1) = part[0], part[-1]
        rss = [values[label][0] for _, values, _ in part]
        wall = max(t1 - t0, 1e-9)
        cpu = v1[label][1] - v0[label][1]
        return {"seconds": t1 - t0, "rss_mean": statistics.fmean(rss) / MIB, "rss_max": max(rss) / MIB,
                "cpu_s": cpu, "cpu_pct": 100 * cpu / wall,
                "busy_pct": 100 * (m1[0] - m0[0]) / max(m1[1] - m0[1], 1e-9)}


# --- objects and pods ---------------------------------------------------------------------------

def startup_objects(namespace: str, n: int) -> list:
    objects: list = [ConfigMap.from_dict({"metadata": {"name": "shared", "namespace": namespace},
                                          "data": {"value": "v0\n"}})]
    for i in range(n):
        for j in range(CONFIGMAPS):
            objects.append(ConfigMap.from_dict({"metadata": {"name": f"cm-{i:03d}-{j}", "namespace": namespace},
                                                "data": {"a": f"pod {i} configmap {j} " + "a" * 64,
                                                         "b": "b" * 256}}))
        for j in range(SECRETS):
            objects.append(Secret.from_dict({"metadata": {"name": f"secret-{i:03d}-{j}", "namespace": namespace},
                                             "stringData": {"token": f"s-{i:03d}-{j}\n", "other": "x" * 64}}))
    return objects


def load_objects(namespace: str, n: int) -> list:
    return [ConfigMap.from_dict({"metadata": {"name": f"load-{i:03d}-{j}", "namespace": namespace},
                                 "data": {"a": f"pod {i} configmap {j} " + "a" * 64, "b": "b" * 256}})
            for i in range(n) for j in range(CONFIGMAPS)]


def base_pod(name: str, namespace: str, node: str, command: list[str], volumes: list[dict], app: str) -> Pod:
    mounts = [{"name": v["name"], "mountPath": "/out" if v["name"] == "out" else f"/etc/bench/{v['name']}"}
              for v in volumes]
    return Pod.from_dict({
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": app}},
        "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1, "volumes": volumes,
                 "containers": [{"name": "main", "image": IMAGE, "imagePullPolicy": "IfNotPresent",
                                 "command": command, "volumeMounts": mounts,
                                 "resources": {"requests": {"cpu": "1m", "memory": "4Mi"}}}]}})


def startup_pod(i: int, namespace: str, node: str) -> Pod:
    volumes = ([{"name": f"cm-{j}", "configMap": {"name": f"cm-{i:03d}-{j}"}} for j in range(CONFIGMAPS)]
               + [{"name": f"secret-{j}", "secret": {"secretName": f"secret-{i:03d}-{j}"}} for j in range(SECRETS)]
               + [{"name": "shared", "configMap": {"name": "shared"}}, {"name": "out", "emptyDir": {}}])
    return base_pod(f"pod-{i:03d}", namespace, node, ["sh", "-c", WATCHER], volumes, "volumes-startup")


def load_pod(i: int, namespace: str, node: str) -> Pod:
    volumes = [{"name": f"cm-{j}", "configMap": {"name": f"load-{i:03d}-{j}"}} for j in range(CONFIGMAPS)]
    return base_pod(f"pod-{i:03d}", namespace, node, ["sleep", "3600"], volumes, "volumes-load")


async def create_objects(config, objects: list) -> None:
    client = AsyncClient(config=config)
    slots = asyncio.Semaphore(OBJECTS_IN_FLIGHT)

    async def create(obj) -> None:
        async with slots:
            await client.create(obj)

    try:
        await asyncio.gather(*(create(obj) for obj in objects))
    finally:
        await client.close()


@dataclasses.dataclass
class Batch:
    agent: Agent
    namespace: str
    n: int
    created: dict[str, float] = dataclasses.field(default_factory=dict)  # pod -> monotonic time before create
    running: dict[str, float] = dataclasses.field(default_factory=dict)  # pod -> when the watch showed it ready
    uids: dict[str, str] = dataclasses.field(default_factory=dict)
    usage: dict[str, float] = dataclasses.field(default_factory=dict)  # the agent's, create → all Running
    requests: dict[tuple[str, str], float] = dataclasses.field(default_factory=dict)  # (method, code) -> count
    failure: str = ""

    @property
    def complete(self) -> bool:
        return len(self.running) == self.n

    def figures(self) -> dict[str, float | None]:
        return startup_figures(self.created, self.running, self.n)


def run_batch(cluster, sampler: Sampler, agent: Agent, namespace: str, objects: list, pods: list[Pod],
              timeout: float) -> Batch:
    """Create the objects, then the pods (timed), in a fresh namespace."""
    config = KubeConfig.from_file(str(cluster.admin_kubeconfig))
    batch = Batch(agent, namespace, len(pods))
    log(f"{agent.label}: creating {len(objects)} ConfigMaps/Secrets in {namespace}")
    asyncio.run(create_objects(config, objects))
    log_offset = agent.log_path().stat().st_size
    log(f"{agent.label} on {agent.node.name}: creating {len(pods)} pods in {namespace}")
    before = kubelet_requests(cluster, agent)
    first = sampler.mark()
    seen = asyncio.run(start_pods(config, batch, namespace, pods, timeout))
    batch.uids = {name: obj.metadata.uid for name, obj in seen.items()}
    batch.usage = sampler.span(agent.label, first, sampler.mark())
    agent.check()
    batch.requests = difference(before, kubelet_requests(cluster, agent))
    if batch.complete:
        log(f"{agent.label}: all {batch.n} Running after {batch.figures()['all']:.1f}s")
    else:
        explain_stuck(agent, batch, batch.n, seen, log_offset, timeout)
    return batch


def out_dir(agent: Agent, uid: str) -> Path:
    """A pod's emptyDir `out` on the host (both kubelets lay pod volumes out the same way)."""
    return local_agents.kubelet_dir(agent.node) / "pods" / uid / "volumes" / "kubernetes.io~empty-dir" / "out"


def secrets_seen(batch: Batch, wait: float = 15) -> int:
    """How many of the batch's containers read their own secret's value (the start of their script)."""
    deadline = time.monotonic() + wait
    while True:
        good = 0
        for name, uid in batch.uids.items():
            try:
                value = (out_dir(batch.agent, uid) / "secret").read_text().strip()
            except OSError:
                continue
            good += value == f"s-{name.removeprefix('pod-')}-0"
        if good == batch.n or time.monotonic() > deadline:
            return good
        time.sleep(0.5)


# --- propagation --------------------------------------------------------------------------------

@dataclasses.dataclass
class Propagation:
    agent: Agent
    latencies: list[float] = dataclasses.field(default_factory=list)  # seconds, one per pod and update
    write_s: list[float] = dataclasses.field(default_factory=list)  # the update calls' own duration
    missed: int = 0  # pods that had not seen an update when the round timed out
    spans: list[dict] = dataclasses.field(default_factory=list)  # the agent's usage per round


def changes(path: Path) -> list[tuple[float, str]]:
    try:
        text = path.read_text()
    except OSError:
        return []
    found = []
    for line in text.splitlines():
        parts = line.split(" ", 1)
        if len(parts) == 2:
            try:
                found.append((float(parts[0]), parts[1]))
            except ValueError:
                pass
    return found


def propagate(client, sampler: Sampler, batch: Batch, result: Propagation, value: str, timeout: float) -> None:
    """Write `value` into the batch's shared ConfigMap; wait until each container read it (or `timeout`)."""
    agent = batch.agent
    paths = {name: out_dir(agent, uid) / "changes" for name, uid in batch.uids.items()}
    client.get(ConfigMap, "shared", namespace=batch.namespace)  # the client's connection is open before we time
    first = sampler.mark()
    written = time.clock_gettime(time.CLOCK_BOOTTIME)
    client.patch(ConfigMap, "shared", {"data": {"value": f"{value}\n"}}, namespace=batch.namespace)
    result.write_s.append(time.clock_gettime(time.CLOCK_BOOTTIME) - written)
    pending = dict(paths)
    got: list[float] = []
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for name, path in list(pending.items()):
            seen = [t for t, v in changes(path) if v == value]
            if seen:
                got.append(seen[0] - written)
                del pending[name]
        if pending:
            time.sleep(0.1)
    result.latencies += got
    result.missed += len(pending)
    result.spans.append(sampler.span(agent.label, first, sampler.mark()))
    agent.check()
    log(f"{agent.label}: {value} seen in {len(got)}/{len(paths)} pods"
        + (f", after {min(got):.2f}–{max(got):.2f}s" if got else ""))


# --- API load -----------------------------------------------------------------------------------

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
APISERVER_METRICS = ("apiserver_request_total{", "apiserver_longrunning_requests{",
                     "apiserver_flowcontrol_dispatched_requests_total{")


def scrape(cluster, path: str, prefixes: tuple[str, ...]) -> list[tuple[str, dict[str, str], float]]:
    out = subprocess.run([str(cluster.bin / "kubectl"), f"--kubeconfig={cluster.admin_kubeconfig}", "get", "--raw",
                          path], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise procs.UpError(f"kubectl get --raw {path}: {out.stderr.strip()}")
    found = []
    for line in out.stdout.splitlines():
        if line.startswith(prefixes):
            m = SAMPLE.match(line)
            if m:
                found.append((m.group(1), dict(LABEL.findall(m.group(2) or "")), float(m.group(3))))
    return found


def tcp_to(pid: int, port: int = 6443) -> int:
    """The process's established TCP connections to `port` (read in its own network namespace)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "01" and int(fields[2].split(":")[1], 16) == port and fields[9] in inodes:
            count += 1
    return count


@dataclasses.dataclass
class Snapshot:
    at: float
    kubelet: dict[str, dict[tuple[str, str], float]]  # agent label -> (method, code) -> requests so far
    apiserver: list[tuple[str, dict[str, str], float]]
    connections: dict[str, int]  # agent label -> TCP connections to the apiserver


def kubelet_requests(cluster, agent: Agent) -> dict[tuple[str, str], float]:
    """The kubelet's own count of its API requests so far (rest_client_requests_total), by (method, code)."""
    counts: dict[tuple[str, str], float] = collections.defaultdict(float)
    for _, labels, value in scrape(cluster, f"/api/v1/nodes/{agent.node.name}/proxy/metrics",
                                   ("rest_client_requests_total{",)):
        counts[(labels.get("method", ""), labels.get("code", ""))] += value
    return dict(counts)


def difference(before: dict, after: dict) -> dict:
    return {key: value - before.get(key, 0.0) for key, value in after.items() if value - before.get(key, 0.0)}


def snapshot(cluster, agents: list[Agent]) -> Snapshot:
    kubelet = {agent.label: kubelet_requests(cluster, agent) for agent in agents}
    return Snapshot(time.monotonic(), kubelet, scrape(cluster, "/metrics", APISERVER_METRICS),
                    {a.label: tcp_to(a.pid) for a in agents})


def apiserver_sum(snap: Snapshot, name: str, **match: str | tuple) -> float:
    def fits(labels: dict[str, str]) -> bool:
        return all(labels.get(k) in (v if isinstance(v, tuple) else (v,)) for k, v in match.items())

    return sum(value for metric, labels, value in snap.apiserver if metric == name and fits(labels))


@dataclasses.dataclass
class Window:
    """What one window of `seconds` showed (the loaded agent's figures, and the apiserver's)."""
    seconds: float
    requests: dict[str, dict[str, float]]  # agent label -> method -> requests in the window
    codes: dict[str, dict[tuple[str, str], float]]  # agent label -> (method, code) -> requests in the window
    errors: dict[str, float]  # agent label -> requests answered >= 400 or failed
    cm_requests: dict[str, float]  # apiserver: ConfigMap requests of single objects, by verb
    node_requests: float  # apiserver: requests dispatched for the system-nodes and system-node-high flow schemas
    watches: dict[str, tuple[float, float]]  # "configmaps"/"secrets" -> single-object watches open (start, end)
    connections: dict[str, tuple[int, int]]  # agent label -> TCP connections to the apiserver (start, end)
    by_resource: dict[tuple[str, str], float]  # apiserver: (verb, resource[/subresource]) -> requests (all clients)


def window(cluster, agents: list[Agent], seconds: float) -> Window:
    before = snapshot(cluster, agents)
    time.sleep(max(0.0, seconds - (time.monotonic() - before.at)))
    for agent in agents:
        agent.check()
    after = snapshot(cluster, agents)
    requests, errors, codes = {}, {}, {}
    for agent in agents:
        a, b = before.kubelet[agent.label], after.kubelet[agent.label]
        methods: dict[str, float] = collections.defaultdict(float)
        codes[agent.label] = {key: value - a.get(key, 0.0) for key, value in b.items() if value - a.get(key, 0.0)}
        failed = 0.0
        for key, value in b.items():
            delta = value - a.get(key, 0.0)
            methods[key[0]] += delta
            if not key[1].isdigit() or int(key[1]) >= 400:
                failed += delta
        requests[agent.label], errors[agent.label] = dict(methods), failed
    verbs = ("GET", "LIST", "WATCH")
    cm = {verb: apiserver_sum(after, "apiserver_request_total", resource="configmaps", scope="resource", verb=verb)
          - apiserver_sum(before, "apiserver_request_total", resource="configmaps", scope="resource", verb=verb)
          for verb in verbs}
    schemas = ("system-nodes", "system-node-high")
    nodes = (apiserver_sum(after, "apiserver_flowcontrol_dispatched_requests_total", flow_schema=schemas)
             - apiserver_sum(before, "apiserver_flowcontrol_dispatched_requests_total", flow_schema=schemas))
    watches = {plural: tuple(apiserver_sum(s, "apiserver_longrunning_requests", resource=plural, scope="resource",
                                           verb="WATCH") for s in (before, after))
               for plural in ("configmaps", "secrets")}
    by_resource: dict[tuple[str, str], float] = collections.defaultdict(float)
    for sign, snap in ((-1, before), (1, after)):
        for metric, labels, value in snap.apiserver:
            if metric == "apiserver_request_total":
                resource = labels.get("resource", "") + (f"/{labels['subresource']}" if labels.get("subresource") else "")
                by_resource[(labels.get("verb", ""), resource)] += sign * value
    return Window(after.at - before.at, requests, codes, errors, cm, nodes, watches,
                  {a.label: (before.connections[a.label], after.connections[a.label]) for a in agents},
                  {key: value for key, value in by_resource.items() if value})


@dataclasses.dataclass
class Load:
    agent: Agent
    batch: Batch
    window: Window | None = None
    usage: dict[str, float] = dataclasses.field(default_factory=dict)  # the agent's, over the window
    gone_s: float | None = None


# --- the report ---------------------------------------------------------------------------------

def fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else spec.format(value)


def row(title: str, py: float | None, up: float | None, spec: str, ratio: bool = True) -> str:
    quotient = ""
    if ratio and py is not None and up:
        quotient = fmt(py / up, "{:.2f}×" if py / up >= 0.1 else "{:.2g}×")
    return f"| {title} | {fmt(py, spec)} | {fmt(up, spec)} | {quotient} |"


def tables(args, agents: list[Agent], batches: dict[str, Batch], seen: dict[str, int],
           props: dict[str, Propagation], baseline: Window, loads: dict[str, Load],
           spans: dict[str, dict[str, dict[str, float]]]) -> str:
    py, up = (a.label for a in agents)
    lines = ["| | " + " | ".join(f"{a.label} ({a.node.name})" for a in agents) + " | pykubelet / upstream |",
             "| --- | ---: | ---: | ---: |"]
    n = args.pods
    b = {label: batches[label].figures() for label in batches}
    title = f"1. startup, {n} pods"
    if not all(batches[label].complete for label in batches):
        lines.append(row(f"{title}: Running and ready", len(batches[py].running), len(batches[up].running),
                         f"{{:.0f}}/{n}", False))
    for key, name in (("p50", "p50 (s)"), ("p99", "p99 (s)"), ("max", "max (s)"), ("all", "all Running (s)")):
        lines.append(row(f"{title}: {name}", b[py][key], b[up][key], "{:.2f}"))
    lines.append(row(f"{title}: agent CPU while starting them (s)", batches[py].usage["cpu_s"],
                     batches[up].usage["cpu_s"], "{:.2f}"))
    lines.append(row(f"{title}: kubelet's API requests meanwhile", sum(batches[py].requests.values()),
                     sum(batches[up].requests.values()), "{:.0f}"))
    lines.append(row(f"{title}: … refused by the apiserver (429)", refused(batches[py].requests),
                     refused(batches[up].requests), "{:.0f}", False))
    lines.append(row(f"{title}: machine CPUs busy meanwhile (%)", batches[py].usage["busy_pct"],
                     batches[up].usage["busy_pct"], "{:.0f}", False))
    lines.append(row(f"{title}: containers that read their secret", seen[py], seen[up], f"{{:.0f}}/{n}", False))
    title = f"2. propagation, {args.updates} × {n} pods"
    p = {label: sorted(props[label].latencies) for label in props}
    for q in (50, 99):
        lines.append(row(f"{title}: p{q} (s)", percentile(p[py], q) if p[py] else None,
                         percentile(p[up], q) if p[up] else None, "{:.2f}"))
    lines.append(row(f"{title}: min (s)", min(p[py], default=None), min(p[up], default=None), "{:.2f}"))
    lines.append(row(f"{title}: max (s)", max(p[py], default=None), max(p[up], default=None), "{:.2f}"))
    if any(props[label].missed for label in props):
        lines.append(row(f"{title}: pods that missed an update", props[py].missed, props[up].missed, "{:.0f}", False))
    load_rows(lines, args, agents, baseline, loads)
    for phase, title in (("idle", "4. no benchmark pods (baseline window)"), ("startup", "4. startup batch"),
                         ("propagation", "4. propagation rounds"), ("load-start", "4. starting the load pods"),
                         ("load", "4. load pods running (window)")):
        if phase in spans and spans[phase].get(py) and spans[phase].get(up):
            s = spans[phase]
            lines.append(row(f"{title}: mean RSS (MiB)", s[py]["rss_mean"], s[up]["rss_mean"], "{:.1f}"))
            lines.append(row(f"{title}: max RSS (MiB)", s[py]["rss_max"], s[up]["rss_max"], "{:.1f}"))
            lines.append(row(f"{title}: CPU (%)", s[py]["cpu_pct"], s[up]["cpu_pct"], "{:.2f}"))
    return "\n".join(lines) + "\n"


def load_rows(lines: list[str], args, agents: list[Agent], baseline: Window, loads: dict[str, Load]) -> None:
    py, up = (a.label for a in agents)

    def both(f) -> tuple:
        return tuple(f(label) if label in loads and loads[label].window else None for label in (py, up))

    def rate(w: Window, label: str, methods: tuple[str, ...] | None = None) -> float:
        counts = w.requests[label]
        return sum(v for m, v in counts.items() if methods is None or m in methods) / w.seconds

    lines.append(row("3. no benchmark pods: kubelet's API requests (/s)", rate(baseline, py), rate(baseline, up),
                     "{:.2f}"))
    lines.append(row("3. no benchmark pods: kubelet's TCP connections to the apiserver", baseline.connections[py][1],
                     baseline.connections[up][1], "{:.0f}"))
    counts = {label: loads[label].batch.n for label in loads}
    title = "3. API load, " + " / ".join(f"{counts.get(label, 0)}" for label in (py, up)) + " pods"
    if any(not loads[label].batch.complete for label in loads):
        lines.append(row(f"{title}: Running and ready", *both(lambda label: len(loads[label].batch.running)),
                         "{:.0f}", False))
    lines.append(row(f"{title}: all Running (s)", *both(lambda label: loads[label].batch.figures()["all"]), "{:.1f}"))
    lines.append(row(f"{title}: agent CPU while starting them (s)",
                     *both(lambda label: loads[label].batch.usage["cpu_s"]), "{:.2f}"))
    lines.append(row(f"{title}: kubelet's API requests meanwhile",
                     *both(lambda label: sum(loads[label].batch.requests.values())), "{:.0f}"))
    lines.append(row(f"{title}: … refused by the apiserver (429)",
                     *both(lambda label: refused(loads[label].batch.requests)), "{:.0f}", False))
    lines.append(row(f"{title}: machine CPUs busy meanwhile (%)",
                     *both(lambda label: loads[label].batch.usage["busy_pct"]), "{:.0f}", False))
    lines.append(row(f"{title}: kubelet's API requests (/s)", *both(lambda label: rate(loads[label].window, label)),
                     "{:.2f}"))
    lines.append(row(f"{title}: … GET, list and watch (/s)",
                     *both(lambda label: rate(loads[label].window, label, ("GET",))), "{:.2f}"))
    lines.append(row(f"{title}: … answered with an error", *both(lambda label: loads[label].window.errors[label]),
                     "{:.0f}", False))
    lines.append(row(f"{title}: apiserver: single-ConfigMap GET + list + watch (/s)",
                     *both(lambda label: sum(loads[label].window.cm_requests.values()) / loads[label].window.seconds),
                     "{:.2f}"))
    lines.append(row(f"{title}: apiserver: requests from nodes (/s)",
                     *both(lambda label: loads[label].window.node_requests / loads[label].window.seconds), "{:.2f}"))
    lines.append(row(f"{title}: single-ConfigMap watches open (minus baseline)",
                     *both(lambda label: loads[label].window.watches["configmaps"][1]
                           - baseline.watches["configmaps"][1]), "{:.0f}", False))
    lines.append(row(f"{title}: kubelet's TCP connections to the apiserver",
                     *both(lambda label: loads[label].window.connections[label][1]), "{:.0f}"))
    lines.append(row(f"{title}: delete namespace → gone (s)", *both(lambda label: loads[label].gone_s), "{:.1f}"))


def breakdown(counts: dict[tuple[str, str], float], limit: int = 12) -> str:
    """Requests by two labels, most first, e.g. `PUT 200 × 9, PATCH 200 × 3`."""
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{a} {b} × {count:.0f}" for (a, b), count in items[:limit]) + (
        f", … ({len(items) - limit} more)" if len(items) > limit else "") or "none"


def refused(counts: dict[tuple[str, str], float]) -> float:
    return sum(count for (_, code), count in counts.items() if code == "429")


def report(args, agents: list[Agent], text: str, notes: list[str], failures: list[str], idle_pods: dict,
           facts: dict, elapsed: float) -> str:
    py = agents[0]
    return (
        "# ConfigMap and Secret volumes: pykubelet vs upstream kubelet\n\n"
        f"`python -m bench.volumes --pods {args.pods} --updates {args.updates} --load {args.load} "
        f"--load-upstream {args.load_upstream} --window {args.window:g} --settle {args.settle:g}`, "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {elapsed / 60:.1f} minutes. "
        "How each figure is measured: bench/README.md, section `volumes`.\n\n"
        f"1. Startup: {args.pods} busybox pods per node, bound with spec.nodeName, each mounting {CONFIGMAPS} "
        f"ConfigMaps and {SECRETS} Secrets of its own (created before the pods), 1 ConfigMap all of them share and "
        "an emptyDir (and the default service-account volume); the upstream kubelet's batch first, then "
        "pykubelet's (beside the upstream kubelet's running pods), never both at once. "
        f"2. Propagation: with those pods running, the shared ConfigMap changed {args.updates} times per node, "
        "one node at a time. "
        f"3. API load: {args.load} pods on pykubelet's node ({args.load_upstream} on the upstream kubelet's, "
        f"after pykubelet's were gone), each mounting {CONFIGMAPS} ConfigMaps of its own "
        f"({CONFIGMAPS * args.load} / {CONFIGMAPS * args.load_upstream} objects, the worst case for watches), "
        f"busybox `sleep 3600`; requests counted over {args.window:g} s once all ran and {args.settle:g} s "
        "passed; the baseline is the same window before any benchmark pod. "
        "4. The agents' RSS and CPU during each phase.\n\n"
        + text
        + "\nStartup latency: the client's monotonic clock when a watch event showed the pod Running and ready minus "
        "the same clock just before its create call; p99 is nearest-rank (for 30 pods the max). Propagation: the "
        "container's own reading of /proc/uptime (CLOCK_BOOTTIME, 10 ms steps) when its loop, reading the file "
        f"every {POLL_FAST * 1000:.0f} ms, first read the new value, minus the host's CLOCK_BOOTTIME just before "
        "the PATCH of the ConfigMap. API requests: the kubelet's own `rest_client_requests_total` (a watch counts "
        "when it starts); the apiserver's `apiserver_request_total` counts a watch when it ends. RSS and CPU: "
        "psutil, every second, children included; 100 % CPU is one core.\n\n"
        + "".join(f"- {note}\n" for note in notes)
        + "\nPods on the nodes besides the benchmark's: " + ", ".join(f"{k} {v}" for k, v in idle_pods.items())
        + " (pynode-n1's are the sample workload `make up` starts, if it is there).\n"
        + ("\n## What went wrong\n\n" + "\n\n".join(failures) + "\n" if failures else "")
        + "\n| machine | |\n| --- | --- |\n" + "".join(f"| {k} | {v} |\n" for k, v in facts.items())
        + f"| pykubelet started | {datetime.datetime.fromtimestamp(started_at(py.pid), datetime.UTC):%Y-%m-%d %H:%M:%S} "
          "UTC (the code it runs is the tree as of then) |\n")


# --- main ---------------------------------------------------------------------------------------

def ours(client) -> list[str]:
    return [ns.metadata.name for ns in client.list(Namespace) if ns.metadata.name.startswith(PREFIX)]


def delete(client, names: list[str], failures: list[str], timeout: float = 300) -> float | None:
    log(f"deleting {', '.join(names)}")
    gone, left = delete_namespaces(client, names, timeout=timeout)
    if left:
        log(f"warning: {left}")
        failures.append(left)
    return gone


def run(cluster, client, args) -> str:
    started = time.monotonic()
    ours_node, node = cluster.nodes
    max_pods = max(110, args.load_upstream + 10)
    log(f"bringing up {node.name} ({node.ip}) with the upstream kubelet (maxPods {max_pods})")
    bring_up(node, {"maxPods": max_pods} if max_pods != 110 else None)
    agents = [Agent(label, n, name, procs.running(cluster, name))
              for label, n, name in (("pykubelet", ours_node, f"pykubelet-{ours_node.name}"),
                                     ("upstream kubelet", node, daemon(node)))]
    py, up = agents
    wait_ready(client, cluster, {a.node.name: a.daemon for a in agents})
    bootstrap.approve_serving_certificates(node)  # so that the apiserver can scrape its /metrics
    idle_pods = {a.node.name: pods_on(client, a.node.name) for a in agents}
    sampler = Sampler(agents)
    sampler.start()
    notes: list[str] = []
    failures: list[str] = []
    spans: dict[str, dict[str, dict[str, float]]] = collections.defaultdict(dict)
    log(f"both nodes Ready (pods: {idle_pods}); warming up {args.warmup:g}s, then the baseline window "
        f"({args.window:g}s)")
    time.sleep(args.warmup)
    first = sampler.mark()
    baseline = window(cluster, agents, args.window)
    last = sampler.mark()
    for a in agents:
        spans["idle"][a.label] = sampler.span(a.label, first, last)

    # 1. startup, upstream first: pykubelet's batch then starts beside the upstream kubelet's running pods.
    batches: dict[str, Batch] = {}
    seen: dict[str, int] = {}
    for agent in (up, py):
        namespace = f"{PREFIX}{agent.node.name}-startup"
        make_namespace(client, namespace)
        batch = run_batch(cluster, sampler, agent, namespace, startup_objects(namespace, args.pods),
                          [startup_pod(i, namespace, agent.node.name) for i in range(args.pods)],
                          timeout=120 + TIMEOUT_FACTOR * args.pods)
        batches[agent.label] = batch
        spans["startup"][agent.label] = batch.usage
        seen[agent.label] = secrets_seen(batch)
        log(f"{agent.label}: {seen[agent.label]}/{args.pods} containers read their secret")
        if batch.failure:
            failures.append(f"**startup on {agent.node.name} ({agent.label})**: {batch.failure}")

    # 2. propagation: one agent at a time, pykubelet first in each round.
    props = {a.label: Propagation(a) for a in agents}
    for batch in batches.values():
        for uid in batch.uids.values():
            try:
                (out_dir(batch.agent, uid) / "fast").touch()
            except OSError as err:
                notes.append(f"could not switch a {batch.agent.label} pod's loop to fast reads: {err}")
    time.sleep(2 * POLL_SLOW + 0.5)  # every loop has seen /out/fast
    firsts = {a.label: sampler.mark() for a in agents}
    for r in range(1, args.updates + 1):
        for agent in agents:
            if batches[agent.label].running:
                propagate(client, sampler, batches[agent.label], props[agent.label], f"v{r}",
                          args.propagation_timeout)
    last = sampler.mark()
    for a in agents:
        spans["propagation"][a.label] = sampler.span(a.label, firsts[a.label], last)
    delete(client, [b.namespace for b in batches.values()], failures)

    # 3. API load, one agent at a time.
    loads: dict[str, Load] = {}
    for agent, count in ((py, args.load), (up, args.load_upstream)):
        if count <= 0:
            continue
        namespace = f"{PREFIX}{agent.node.name}-load"
        make_namespace(client, namespace)
        batch = run_batch(cluster, sampler, agent, namespace, load_objects(namespace, count),
                          [load_pod(i, namespace, agent.node.name) for i in range(count)],
                          timeout=120 + TIMEOUT_FACTOR * count)
        load = loads[agent.label] = Load(agent, batch)
        spans["load-start"][agent.label] = batch.usage
        if batch.failure:
            failures.append(f"**{count} load pods on {agent.node.name} ({agent.label})**: {batch.failure}")
        log(f"{agent.label}: settling {args.settle:g}s, then the window ({args.window:g}s)")
        time.sleep(args.settle)
        first = sampler.mark()
        load.window = window(cluster, [agent], args.window)
        load.usage = sampler.span(agent.label, first, sampler.mark())
        spans["load"][agent.label] = load.usage
        w = load.window
        log(f"{agent.label}: {sum(w.requests[agent.label].values()) / w.seconds:.2f} requests/s "
            f"({dict(w.requests[agent.label])}), ConfigMap watches open {w.watches['configmaps']}, "
            f"TCP connections {w.connections[agent.label]}")
        load.gone_s = delete(client, [namespace], failures)
    sampler.halt.set()
    if sampler.error:
        notes.append(f"the sampler stopped early: {sampler.error}")
    if args.load_upstream != args.load:
        notes.append(f"The upstream kubelet ran {args.load_upstream} load pods, pykubelet {args.load}.")
    if max_pods != 110:
        notes.append(f"The upstream kubelet has `maxPods: {max_pods}` (so that it admits {args.load_upstream} pods); "
                     "pykubelet's configuration says 110, which it does not enforce.")
    for label, batch in [*batches.items(), *((f"{label} (load)", load.batch) for label, load in loads.items())]:
        notes.append(f"Requests of the {label} while starting its {batch.n} pods, by method and code: "
                     f"{breakdown(batch.requests)}.")
    notes.append(f"Baseline window ({baseline.seconds:.0f} s), requests by method and code: pykubelet "
                 f"{breakdown(baseline.codes[py.label])}; upstream kubelet {breakdown(baseline.codes[up.label])}. "
                 f"The apiserver's count (all clients) by verb and resource: {breakdown(baseline.by_resource)}. "
                 "Single-object "
                 f"ConfigMap / Secret watches open at its end (all clients): {baseline.watches['configmaps'][1]:.0f}"
                 f" / {baseline.watches['secrets'][1]:.0f}.")
    for label, load in loads.items():
        w = load.window
        if w is not None:
            notes.append(f"Load window of the {label} ({w.seconds:.0f} s, {load.batch.n} pods), its requests by "
                         f"method and code: {breakdown(w.codes[label])}. The apiserver's count (all clients) by verb "
                         f"and resource: {breakdown(w.by_resource)}. Apiserver, single ConfigMaps: "
                         + ", ".join(f"{verb} {count:.0f}" for verb, count in w.cm_requests.items())
                         + f"; watches open at start/end {w.watches['configmaps'][0]:.0f}/"
                         f"{w.watches['configmaps'][1]:.0f}; the kubelet's TCP connections to the apiserver at "
                         f"start/end {w.connections[label][0]}/{w.connections[label][1]}.")
    for label, prop in props.items():
        if prop.write_s:
            notes.append(f"Propagation, {label}: the PATCH calls took {min(prop.write_s) * 1000:.0f}–"
                         f"{max(prop.write_s) * 1000:.0f} ms.")
    text = tables(args, agents, batches, seen, props, baseline, loads, spans)
    print(text, end="")
    return report(args, agents, text, notes, failures, idle_pods, machine_facts(cluster, py.pid),
                  time.monotonic() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.volumes", description=__doc__.split("\n")[0])
    parser.add_argument("--pods", type=int, default=30, help="startup pods per node (default 30)")
    parser.add_argument("--updates", type=int, default=3, help="updates of the shared ConfigMap per node (default 3)")
    parser.add_argument("--propagation-timeout", type=float, default=180,
                        help="seconds an update may take to reach every pod (default 180)")
    parser.add_argument("--load", type=int, default=200, help="API-load pods on pykubelet's node (default 200)")
    parser.add_argument("--load-upstream", type=int, default=200,
                        help="API-load pods on the upstream kubelet's node; 0: none (default 200)")
    parser.add_argument("--warmup", type=float, default=30, help="seconds after both are Ready (default 30)")
    parser.add_argument("--settle", type=float, default=30,
                        help="seconds between the load pods all Running and the window (default 30)")
    parser.add_argument("--window", type=float, default=90,
                        help="seconds over which API requests are counted (default 90: a pod resync of either)")
    args = parser.parse_args(argv)
    if not 1 <= args.pods <= 100 or not 0 <= args.load <= 240 or not 0 <= args.load_upstream <= 240:
        parser.error("--pods 1..100, --load and --load-upstream 0..240 (a node's pod range is a /24)")

    def body(cluster, node, client) -> str:
        clear_earlier_runs(client, ours, timeout=300)
        return run(cluster, client, args)

    return run_beside_upstream(RESULTS, body, errors=(ApiError, subprocess.SubprocessError), teardown=remove_leftovers(ours, timeout=300))


if __name__ == "__main__":
    sys.exit(main())
