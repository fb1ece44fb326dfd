"""Faults on the local cluster's node pynode-n1: what pykubelet and pyproxy do when something breaks.

    python -m bench.faults [--pods 100] [--scenarios kubelet-kill,proxy-kill,...] [--outage 60] [--hostile 300]

Needs the local cluster up (`make up`) and holds its lock for the whole run. It runs a mixed workload of
`--pods` pods bound to pynode-n1 (agnhost web servers behind a ClusterIP Service, agnhost gRPC health servers,
busybox pods with exec probes and init containers, busybox httpd, and pods with restartPolicy Never and
OnFailure that complete) in namespace bench-faults-pods, then one scenario after another: each breaks one
thing, measures what the node did, restores the cluster in a `finally` (every daemon running again from its
usual command line) and gives a PASS/FAIL verdict of its own. A scenario that fails with an error is that
scenario's FAIL; the next one still runs. The table goes to stdout and, with every check, figure and log
excerpt, to bench/results/faults-<UTC date>.md. See bench/README.md, section `faults`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import psutil
from lightkube import ApiError
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import Event, Node as NodeResource, Pod, Service

from localcluster import (agents, bootstrap, containerd, controlplane, images, lock, procs, settings, testimages,
                          upstream_node)
from localcluster.settings import Cluster, Node

from . import nodes
from .nodes import MIB, admin_client, cluster_with_more_nodes, interrupt_on_signals, log, machine_facts, usage
from .pod_startup import clear_earlier_runs, delete_namespaces, make_namespace, remove_leftovers

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PREFIX = "bench-faults-"
BUSYBOX = "registry.k8s.io/e2e-test-images/busybox:1.37.0-1"
PROBE_PERIOD = 10  # every liveness and readiness probe of the workload (s)
WEB_LABEL = {"app": "bench-faults-web"}
# The workload's kinds, one per pod in turn: 3 in 10 run exec probes, 2 agnhost HTTP servers (the Service's
# backends), 2 busybox httpd, 1 agnhost gRPC health server, and 2 complete (restartPolicy Never, OnFailure).
KINDS = ("web", "exec", "httpd", "never", "grpc", "web", "exec", "httpd", "onfailure", "exec")
COMPLETING = ("never", "onfailure")


# --- results ------------------------------------------------------------------------------------

@dataclasses.dataclass
class Result:
    """One scenario's outcome: checks (expectation -> held), figures, notes; its verdict follows from them."""
    name: str
    checks: dict[str, bool] = dataclasses.field(default_factory=dict)
    figures: dict[str, object] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    error: str = ""
    skipped: str = ""
    seconds: float = 0.0

    @property
    def verdict(self) -> str:
        if self.skipped:
            return "SKIP"
        return "FAIL" if self.error or not all(self.checks.values()) else "PASS"

    def check(self, what: str, ok: bool) -> bool:
        self.checks[what] = bool(ok)
        return bool(ok)


@dataclasses.dataclass
class Env:
    """What every scenario works on: the cluster, its node, an admin client and the workload's namespace."""
    cluster: Cluster
    node: Node
    client: object
    namespace: str
    agnhost: str
    upstream: bool = False  # the node runs the upstream kubelet (--upstream), not pykubelet

    @property
    def kubelet(self) -> str:
        return upstream_node.daemon(self.node) if self.upstream else f"pykubelet-{self.node.name}"

    def start_kubelet(self) -> int:
        """The node's kubelet again, from its usual command line."""
        return upstream_node.start_upstream(self.node) if self.upstream else start_kubelet(self.node)

    @property
    def proxy(self) -> str:
        return f"pyproxy-{self.node.name}"

    def log_offset(self, daemon: str) -> int:
        return procs.log_path(self.cluster, daemon).stat().st_size


# --- the workload -------------------------------------------------------------------------------

def probe(kind: str, **extra) -> dict:
    actions = {"http": {"httpGet": {"path": extra.pop("path", "/"), "port": 8080}},
               "tcp": {"tcpSocket": {"port": extra.pop("port", 8080)}},
               "grpc": {"grpc": {"port": 5000}},
               "exec": {"exec": {"command": extra.pop("command", ["true"])}}}
    return {**actions[kind], "periodSeconds": PROBE_PERIOD, "timeoutSeconds": 2, **extra}


def startup(kind: str, **extra) -> dict:
    """A startup probe that tries every second for a minute."""
    return probe(kind, periodSeconds=1, failureThreshold=60, **extra)


def workload_containers(kind: str, agnhost: str) -> dict:
    """The pod spec fields (containers, initContainers, volumes, restartPolicy) of one kind."""
    work = [{"name": "work", "emptyDir": {}}]
    mount = [{"name": "work", "mountPath": "/work"}]
    init = [{"name": "init", "image": BUSYBOX, "command": ["sh", "-c", "echo ok > /work/index.html"],
             "volumeMounts": mount}]
    if kind == "web":
        return {"containers": [{"name": "web", "image": agnhost, "args": ["netexec", "--http-port=8080"],
                                "startupProbe": startup("http", path="/healthz"),
                                "readinessProbe": probe("http", path="/readyz"), "livenessProbe": probe("tcp")}]}
    if kind == "grpc":
        return {"containers": [{"name": "grpc", "image": agnhost,
                                "args": ["grpc-health-checking", "--port=5000", "--http-port=8080"],
                                "startupProbe": startup("tcp", port=5000),
                                "readinessProbe": probe("grpc"), "livenessProbe": probe("grpc")}]}
    if kind == "exec":
        return {"initContainers": init, "volumes": work, "containers": [{
            "name": "main", "image": BUSYBOX, "volumeMounts": mount,
            "command": ["sh", "-c", "touch /tmp/ready; exec sleep 86400"],
            "startupProbe": startup("exec", command=["cat", "/work/index.html"]),
            "readinessProbe": probe("exec", command=["test", "-e", "/tmp/ready"]), "livenessProbe": probe("exec")}]}
    if kind == "httpd":
        return {"initContainers": init, "volumes": work, "containers": [{
            "name": "httpd", "image": BUSYBOX, "volumeMounts": mount,
            "command": ["httpd", "-f", "-p", "8080", "-h", "/work"],
            "startupProbe": startup("http"), "readinessProbe": probe("http"), "livenessProbe": probe("tcp")}]}
    policy = "Never" if kind == "never" else "OnFailure"
    return {"restartPolicy": policy, "initContainers": init, "volumes": work, "containers": [{
        "name": "job", "image": BUSYBOX, "volumeMounts": mount, "command": ["sh", "-c", "cat /work/index.html"]}]}


def workload_pod(env: Env, index: int) -> Pod:
    kind = KINDS[index % len(KINDS)]
    labels = {"bench-faults/kind": kind, **(WEB_LABEL if kind == "web" else {})}
    return Pod.from_dict({
        "metadata": {"name": f"{kind}-{index:03d}", "namespace": env.namespace, "labels": labels},
        "spec": {"nodeName": env.node.name, "terminationGracePeriodSeconds": 2,
                 **workload_containers(kind, env.agnhost)},
    })


def web_service(namespace: str) -> Service:
    return Service.from_dict({
        "metadata": {"name": "web", "namespace": namespace},
        "spec": {"selector": WEB_LABEL, "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]},
    })


def settled(pod: Pod) -> bool:
    """A completing pod has Succeeded; any other is Running with every container ready."""
    status = pod.status
    if status is None:
        return False
    if (pod.metadata.labels or {}).get("bench-faults/kind") in COMPLETING:
        return status.phase == "Succeeded"
    return status.phase == "Running" and all(s.ready for s in status.containerStatuses or [False])


def image_present(node: Node, name: str) -> bool:
    """Whether the node's runtime has image `name` (CRI ImageStatus)."""
    from cri import CRIClient, api

    async def status() -> bool:
        async with CRIClient(str(node.containerd_socket), timeout=10) as cri:
            request = api.ImageStatusRequest(image=api.ImageSpec(image=name))
            return bool((await cri.image_status(request)).image.id)

    return asyncio.run(status())


def import_agnhost(cluster: Cluster, node: Node) -> str:
    """Import the e2e agnhost image into the node's containerd unless it is there; returns its name."""
    name = testimages.agnhost_name(cluster)
    if not image_present(node, name):
        log(f"importing {name} into {node.name}")
        images.import_archive(images.build(testimages.agnhost_image(cluster), cluster.images), node)
    return name


def deploy(env: Env, count: int, timeout: float) -> float:
    """Create the workload's Service and pods in its namespace; wait until every pod is settled. Returns seconds."""
    env.client.create(web_service(env.namespace))
    start = time.monotonic()
    for index in range(count):
        env.client.create(workload_pod(env, index))
    waited = wait_for(lambda: all_settled(env, count), timeout, interval=1)
    if waited is None:
        stuck = [p.metadata.name for p in env.client.list(Pod, namespace=env.namespace) if not settled(p)]
        raise procs.UpError(f"{len(stuck)} of {count} workload pods not settled after {timeout:.0f}s: "
                            + ", ".join(stuck[:10]))
    return time.monotonic() - start


def all_settled(env: Env, count: int) -> bool:
    pods = list(env.client.list(Pod, namespace=env.namespace))
    return len(pods) == count and all(settled(p) for p in pods)


# --- what the API shows ---------------------------------------------------------------------------

def fingerprint(pod: Pod) -> dict:
    """What must not change across a fault: phase, conditions' statuses, and each container's state, ready,
    restartCount and containerID."""
    status = pod.status

    def containers(items) -> dict:
        found = {}
        for s in items or []:
            state = s.state
            key = ("none" if state is None else "running" if state.running else f"waiting:{state.waiting.reason}" if state.waiting
                   else f"terminated:{state.terminated.reason}" if state.terminated else "none")
            found[s.name] = [key, s.ready, s.restartCount, s.containerID]
        return found

    return {"uid": pod.metadata.uid, "phase": status.phase,
            "conditions": {c.type: c.status for c in status.conditions or []},
            "containers": containers(status.containerStatuses),
            "init": containers(status.initContainerStatuses)}


def snapshot(env: Env) -> dict[str, dict]:
    return {p.metadata.name: fingerprint(p) for p in env.client.list(Pod, namespace=env.namespace)}


def restart_total(snap: dict[str, dict], skip: tuple[str, ...] = ()) -> int:
    return sum(c[2] for name, fp in snap.items() if name not in skip
               for part in ("containers", "init") for c in fp[part].values())


def container_ids(snap: dict[str, dict], skip: tuple[str, ...] = ()) -> dict[tuple[str, str], str]:
    return {(name, c): v[3] for name, fp in snap.items() if name not in skip
            for part in ("containers", "init") for c, v in fp[part].items()}


def differences(before: dict[str, dict], after: dict[str, dict], skip: tuple[str, ...] = ()) -> list[str]:
    """The pods whose fingerprint changed, each with what changed."""
    changed = []
    for name in sorted(set(before) | set(after)):
        if name in skip:
            continue
        old, new = before.get(name), after.get(name)
        if old != new:
            fields = [k for k in ("uid", "phase", "conditions", "containers", "init")
                      if (old or {}).get(k) != (new or {}).get(k)]
            changed.append(f"{name}: {', '.join(fields)} {json.dumps({k: (new or {}).get(k) for k in fields})}")
    return changed


def compare(result: Result, before: dict, after: dict, skip: tuple[str, ...] = ()) -> None:
    """The checks every scenario makes: 0 restarts, the same container IDs, every status as before."""
    restarts = restart_total(after, skip) - restart_total(before, skip)
    old_ids, new_ids = container_ids(before, skip), container_ids(after, skip)
    changed_ids = sum(1 for key, cid in old_ids.items() if new_ids.get(key) != cid)
    diffs = differences(before, after, skip)
    result.figures.update({"container restarts": restarts, "container IDs changed": f"{changed_ids}/{len(old_ids)}",
                           "pod statuses changed": f"{len(diffs)}/{len(before)}"})
    result.check("0 container restarts", restarts == 0)
    result.check("every container ID unchanged", changed_ids == 0)
    result.check("every pod's status as before", not diffs)
    result.notes += [f"status changed: {d}" for d in diffs[:10]]


def wait_same(env: Env, before: dict, timeout: float, skip: tuple[str, ...] = (),
              since: float | None = None) -> tuple[dict, float | None]:
    """Poll until every pod's status is as before (or `timeout`); (the last snapshot, seconds it took, counted from
    `since` if given)."""
    start = time.monotonic()
    while True:
        after = snapshot(env)
        if not differences(before, after, skip):
            return after, time.monotonic() - (start if since is None else since)
        if time.monotonic() - start > timeout:
            return after, None
        time.sleep(1)


def node_ready(client, name: str) -> bool:
    conditions = client.get(NodeResource, name).status.conditions or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


def node_not_ready(client, name: str) -> bool:
    """The API answered, and the node is not Ready (an unanswered call is no verdict)."""
    try:
        return not node_ready(client, name)
    except Exception:  # noqa: BLE001 - etcd or the apiserver away
        return False


def lease_renewed(client, name: str) -> float:
    """The node Lease's renewTime (epoch seconds)."""
    return client.get(Lease, name, namespace="kube-node-lease").spec.renewTime.timestamp()


def wait_for(check: Callable[[], object], timeout: float, interval: float = 0.1) -> float | None:
    """Seconds until `check()` is true (an exception counts as not yet), or None after `timeout`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if check():
                return time.monotonic() - start
        except Exception:  # noqa: BLE001 - the apiserver or the agent is not back yet
            pass
        time.sleep(interval)
    return None


def first_times(checks: dict[str, Callable[[], object]], timeout: float, since: float,
                interval: float = 0.1) -> dict[str, float | None]:
    """Poll every check in turn until each has been true once: seconds from `since` (a monotonic time) to the
    first time each was true, None for one that never was within `timeout`."""
    found: dict[str, float | None] = dict.fromkeys(checks)
    while time.monotonic() - since < timeout and any(v is None for v in found.values()):
        for name, check in checks.items():
            if found[name] is None:
                try:
                    if check():
                        found[name] = time.monotonic() - since
                except Exception:  # noqa: BLE001 - not back yet
                    pass
        time.sleep(interval)
    return found


class PodWatch:
    """Watch the workload's pods in a thread: when each one's Ready condition changed, and which uids came and went.

    The watch restarts after an error (the apiserver away), from a fresh list, so nothing is missed for long."""

    def __init__(self, env: Env):
        self.env = env
        self.stopped = threading.Event()
        self.ready: dict[str, list[tuple[float, bool]]] = collections.defaultdict(list)
        self.uids: dict[str, set[str]] = collections.defaultdict(set)
        self.deleted: list[str] = []
        self.thread = threading.Thread(target=self._run, name="pod-watch", daemon=True)

    def __enter__(self) -> PodWatch:
        for pod in self.env.client.list(Pod, namespace=self.env.namespace):
            self._record("ADDED", pod)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()  # the thread ends at its next event (at the latest when the namespace goes)

    def _record(self, kind: str, pod: Pod) -> None:
        name = pod.metadata.name
        self.uids[name].add(pod.metadata.uid)
        if kind == "DELETED":
            self.deleted.append(name)
        ready = any(c.type == "Ready" and c.status == "True" for c in (pod.status and pod.status.conditions) or [])
        history = self.ready[name]
        if not history or history[-1][1] != ready:
            history.append((time.monotonic(), ready))

    def _run(self) -> None:
        while not self.stopped.is_set():
            try:
                for kind, pod in self.env.client.watch(Pod, namespace=self.env.namespace, server_timeout=30):
                    if self.stopped.is_set():
                        return
                    self._record(kind, pod)
            except Exception:  # noqa: BLE001 - the apiserver went away: watch again once it is back
                time.sleep(0.5)

    def losses(self, skip: tuple[str, ...] = ()) -> list[tuple[str, float]]:
        """(pod, seconds) of every Ready True -> False, the seconds until Ready again (or until now)."""
        found = []
        for name, history in self.ready.items():
            if name in skip:
                continue
            ends = [t for t, _ in history[1:]] + [time.monotonic()]
            for ((_, was), (t, now)), end in zip(zip(history, history[1:]), ends[1:]):
                if was and not now:
                    found.append((name, end - t))
        return found


def watch_checks(result: Result, watch: PodWatch, skip: tuple[str, ...] = ()) -> None:
    """Ready regressions: any counts as a figure; one longer than a probe period fails the check."""
    losses = watch.losses(skip)
    long = [(name, s) for name, s in losses if s > PROBE_PERIOD]
    result.figures["pods' Ready True→False (all / longer than a probe period)"] = f"{len(losses)} / {len(long)}"
    result.check(f"no pod lost Ready for longer than {PROBE_PERIOD} s", not long)
    result.notes += [f"{name} not Ready for {s:.1f} s" for name, s in sorted(losses, key=lambda x: -x[1])[:10]]


# --- the node -----------------------------------------------------------------------------------

def in_netns(node: Node, *argv: str, timeout: float = 10) -> subprocess.CompletedProcess:
    return subprocess.run(["nsenter", f"--net=/run/netns/{node.netns}", "--", *argv], capture_output=True,
                          text=True, timeout=timeout)


def kubelet_healthy(node: Node) -> bool:
    """pykubelet's /healthz on 127.0.0.1:10248 in the node's namespace answers ok."""
    return in_netns(node, "curl", "-sf", "-m", "1", "http://127.0.0.1:10248/healthz").stdout.strip() == "ok"


@dataclasses.dataclass
class RuntimeContainer:
    pod: str
    name: str
    running: bool
    pid: int


def runtime_containers(node: Node, namespace: str) -> dict[str, RuntimeContainer]:
    """The node runtime's containers of the pods in `namespace`, by ID, with the pid of each running one."""
    from cri import CRIClient, api

    async def fetch() -> dict[str, RuntimeContainer]:
        found = {}
        async with CRIClient(str(node.containerd_socket), timeout=10) as cri:
            for c in (await cri.list_containers()).containers:
                if c.labels.get("io.kubernetes.pod.namespace") != namespace:
                    continue
                pid = 0
                if c.state == api.CONTAINER_RUNNING:
                    status = await cri.container_status(api.ContainerStatusRequest(container_id=c.id, verbose=True))
                    pid = json.loads(status.info.get("info", "{}")).get("pid", 0)
                found[c.id] = RuntimeContainer(c.labels.get("io.kubernetes.pod.name", ""), c.metadata.name,
                                               c.state == api.CONTAINER_RUNNING, pid)
        return found

    return asyncio.run(fetch())


def kill_container(node: Node, namespace: str, pod: str) -> int:
    """SIGKILL the main process of `pod`'s running container; returns its pid."""
    victim = next(c for c in runtime_containers(node, namespace).values() if c.pod == pod and c.running and c.pid)
    os.kill(victim.pid, signal.SIGKILL)
    return victim.pid


def kill9(cluster: Cluster, daemon: str) -> int:
    """SIGKILL a daemon of the cluster and wait until it is gone; returns its pid."""
    pid = procs.running(cluster, daemon)
    if not pid:
        raise procs.UpError(f"{daemon} is not running")
    os.kill(pid, signal.SIGKILL)
    if wait_for(lambda: not procs.alive(pid), 10) is None:
        raise procs.UpError(f"{daemon} (pid {pid}) survived SIGKILL")
    return pid


def start_kubelet(node: Node, flags: list[str] | None = None) -> int:
    """pykubelet from its usual command line (`flags`: already written ones, say with a config file we broke)."""
    return agents.start(node, "pykubelet", *(flags or agents.kubelet_flags(node))).pid


def restore(cluster: Cluster) -> None:
    """Start whatever of the cluster is not running, from its usual command line, and wait until it is healthy."""
    controlplane.start(cluster)  # starts only the components that are down
    for node in cluster.nodes:
        if not procs.running(cluster, f"containerd-{node.name}"):
            containerd.start(node)
        if not procs.running(cluster, f"pykubelet-{node.name}"):
            start_kubelet(node)
            agents.wait_node_ready(node)
        if not procs.running(cluster, f"pyproxy-{node.name}"):
            agents.start(node, "pyproxy", *agents.proxy_flags(node))
            agents.wait_proxy_ready(node)


def log_lines(env: Env, daemon: str, offset: int, pattern: str = r"^[WEF]", limit: int = 12) -> list[str]:
    """The lines of a daemon's log since `offset` that match `pattern` (its warnings and errors by default)."""
    with open(procs.log_path(env.cluster, daemon), "rb") as f:
        f.seek(offset)
        lines = f.read().decode(errors="replace").splitlines()
    picked = [line[:400] for line in lines if re.search(pattern, line)]
    if len(picked) <= limit:
        return picked
    half = limit // 2
    return picked[:half] + ["…"] + picked[-(limit - half):]


class Sampler:
    """Sample a process's RSS and CPU time every second in a thread: max RSS, CPU seconds, whether it lived."""

    def __init__(self, pid: int):
        self.pid = pid
        self.max_rss = 0
        self.cpu = [usage(pid)[1]]
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.thread.join()

    def _run(self) -> None:
        while not self.stopped.wait(1):
            try:
                rss, cpu = usage(self.pid)
            except psutil.NoSuchProcess:
                return
            self.max_rss = max(self.max_rss, rss)
            self.cpu.append(cpu)

    @property
    def cpu_seconds(self) -> float:
        return self.cpu[-1] - self.cpu[0]


# --- scenario 1: kill -9 pykubelet ------------------------------------------------------------------

def kubelet_kill(env: Env, result: Result, args) -> None:
    """kill -9 pykubelet and start it again: every pod must carry on untouched and its status stay as it was."""
    before = snapshot(env)
    with PodWatch(env) as watch:
        old = kill9(env.cluster, env.kubelet)
        started, t0 = time.time(), time.monotonic()
        new = env.start_kubelet()
        times = first_times({"healthz": lambda: kubelet_healthy(env.node),
                             "lease": lambda: lease_renewed(env.client, env.node.name) > started,
                             "ready": lambda: node_ready(env.client, env.node.name)}, 60, since=t0)
        healthz, lease, ready = times["healthz"], times["lease"], times["ready"]
        same_after = wait_same(env, before, args.catchup, since=t0)[1]
        time.sleep(max(0.0, PROBE_PERIOD + 2 - (time.time() - started)))  # a regression must have time to show
        after = snapshot(env)
    result.figures.update({"pid": f"{old} → {new}", "restart → healthz ok (s)": secs(healthz),
                           "restart → Lease renewed (s)": secs(lease), "restart → node Ready (s)": secs(ready),
                           "statuses identical again after (s)": secs(same_after)})
    result.check("healthz ok within 30 s", healthz is not None and healthz <= 30)
    result.check("node Ready", ready is not None)
    compare(result, before, after)
    watch_checks(result, watch)


def secs(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f}"


# --- scenario 2: kill -9 pyproxy under traffic -------------------------------------------------------

# Run in the node's network namespace: `rate` new HTTP/1.0 connections a second to host:port for `seconds`,
# each with a 1 s connect and 2 s response timeout; prints a JSON summary.
TRAFFIC_CLIENT = r"""
import asyncio, collections, json, sys, time
host, port, rate, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
request = f"GET /hostname HTTP/1.0\r\nHost: {host}\r\n\r\n".encode()
outcomes, failures = collections.Counter(), []
async def one(start):
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1)
        writer.write(request)
        data = await asyncio.wait_for(reader.read(), 2)
        writer.close()
        outcome = "ok" if data.split(b" ", 2)[1:2] == [b"200"] else "bad response"
    except Exception as err:
        outcome = type(err).__name__ or "error"
    outcomes[outcome] += 1
    if outcome != "ok":
        failures.append(round(time.monotonic() - start, 2))
async def main():
    start, tasks = time.monotonic(), []
    for i in range(int(rate * seconds)):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(start)))
    await asyncio.gather(*tasks)
    print(json.dumps({"sent": len(tasks), "outcomes": outcomes, "failed_at": failures[:50],
                      "seconds": round(time.monotonic() - start, 2)}))
asyncio.run(main())
"""


def proxy_rules(node: Node, mode: str) -> list[str]:
    """pyproxy's rules in the node's namespace, without counters: iptables-save's KUBE- lines, or the nftables
    table kube-proxy."""
    if mode == "nftables":
        text = in_netns(node, "nft", "list", "table", "ip", "kube-proxy").stdout
        return [re.sub(r"counter packets \d+ bytes \d+", "counter", line) for line in text.splitlines()]
    text = in_netns(node, "iptables-save").stdout
    return [re.sub(r"\[\d+:\d+\]", "[0:0]", line) for line in text.splitlines()
            if "KUBE-" in line and not line.startswith("#")]


def proxy_kill(env: Env, result: Result, args) -> None:
    """kill -9 pyproxy while a client in the node's namespace makes `--rate` new connections a second to the
    workload's ClusterIP Service; count failed requests, compare the proxy's rules before and after."""
    mode = env.cluster.proxy_mode
    before = proxy_rules(env.node, mode)
    service_ip = env.client.get(Service, "web", namespace=env.namespace).spec.clusterIP
    client = subprocess.Popen(["nsenter", f"--net=/run/netns/{env.node.netns}", "--", sys.executable, "-c",
                               TRAFFIC_CLIENT, service_ip, "80", str(args.rate), str(args.traffic)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(args.traffic / 4)
        old = kill9(env.cluster, env.proxy)
        start = time.monotonic()
        new = agents.start(env.node, "pyproxy", *agents.proxy_flags(env.node)).pid
        agents.wait_proxy_ready(env.node)
        synced = time.monotonic() - start
        out, err = client.communicate(timeout=args.traffic + 30)
    finally:
        if client.poll() is None:
            client.kill()
    summary = json.loads(out) if client.returncode == 0 and out.strip() else None
    if summary is None:
        raise procs.UpError(f"the traffic client failed (exit {client.returncode}): {err.strip()[-500:]}")
    after = proxy_rules(env.node, mode)
    ok = summary["outcomes"].get("ok", 0)
    failed = summary["sent"] - ok
    changed = sorted(set(before) ^ set(after))
    result.figures.update({
        "where the client runs": f"node netns {env.node.netns} (Python asyncio, a new connection per request)",
        "requests / rate reached (req/s)": f"{summary['sent']} / {summary['sent'] / summary['seconds']:.0f}",
        "failed requests": f"{failed} ({', '.join(f'{k} {v}' for k, v in summary['outcomes'].items() if k != 'ok')})"
        if failed else "0",
        "pid": f"{old} → {new}", "restart → first sync (s)": f"{synced:.2f}",
        f"{mode} rule lines before / after / differing": f"{len(before)} / {len(after)} / {len(changed)}"})
    result.check("0 failed requests", failed == 0)
    result.check("the proxy's rules identical on return", not changed and bool(before))
    if failed:
        result.notes.append(f"failures at (s after the client started): {summary['failed_at']}")
    result.notes += [f"rule differs: {line}" for line in changed[:10]]


# --- scenario 3: kill -9 containerd -----------------------------------------------------------------------

def containerd_kill(env: Env, result: Result, args) -> None:
    """kill -9 the node's containerd and start it again: containers keep running under their shims, pykubelet
    reconnects, and its PLEG works (a new pod runs; a container killed afterwards is restarted)."""
    before = snapshot(env)
    running = {cid: c for cid, c in runtime_containers(env.node, env.namespace).items() if c.running}
    offset = env.log_offset(env.kubelet)
    daemon = f"containerd-{env.node.name}"
    with PodWatch(env) as watch:
        kill9(env.cluster, daemon)
        start = time.monotonic()
        containerd.start(env.node)
        back = time.monotonic() - start
        ready = wait_for(lambda: node_ready(env.client, env.node.name) and kubelet_healthy(env.node), 60)
        time.sleep(5)
        alive = sum(1 for c in running.values() if procs.alive(c.pid))
        after_runtime = runtime_containers(env.node, env.namespace)
        same_ids = sum(1 for cid in running if cid in after_runtime and after_runtime[cid].running)
        fresh = pleg_new_pod(env)
        victim = next(name for name in before if name.startswith("exec-"))
        restarted = pleg_restart(env, victim, before)
        after, _ = wait_same(env, before, args.catchup, skip=(victim,))
    result.figures.update({
        "kill → containerd healthy (s)": f"{back:.2f}", "containerd healthy → node Ready, healthz ok (s)": secs(ready),
        "container pids alive": f"{alive}/{len(running)}", "running containers with the same ID": f"{same_ids}/{len(running)}",
        "new pod created after → Running and ready (s)": secs(fresh),
        f"container of {victim} killed after → restartCount +1 in the API (s)": secs(restarted)})
    result.check("every container's process alive", alive == len(running))
    result.check("node Ready and healthz ok", ready is not None)
    result.check("a pod created after the restart runs", fresh is not None)
    result.check("a container killed after the restart is restarted", restarted is not None)
    compare(result, before, after, skip=(victim,))
    watch_checks(result, watch, skip=(victim,))
    result.notes += [f"pykubelet: {line}" for line in log_lines(env, env.kubelet, offset)]


def pleg_new_pod(env: Env) -> float | None:
    """Create a busybox pod and time it to Running and ready; it is deleted again."""
    pod = Pod.from_dict({"metadata": {"name": "after-restart", "namespace": env.namespace},
                         "spec": {"nodeName": env.node.name, "terminationGracePeriodSeconds": 1, "containers": [
                             {"name": "main", "image": BUSYBOX, "command": ["sleep", "3600"]}]}})
    env.client.create(pod)
    try:
        return wait_for(lambda: settled(env.client.get(Pod, "after-restart", namespace=env.namespace)), 60, 0.2)
    finally:
        env.client.delete(Pod, "after-restart", namespace=env.namespace)
        wait_for(lambda: not any(p.metadata.name == "after-restart"
                                 for p in env.client.list(Pod, namespace=env.namespace)), 60, 0.5)


def restart_count(env: Env, pod: str) -> int:
    return sum(s.restartCount for s in env.client.get(Pod, pod, namespace=env.namespace).status.containerStatuses)


def pleg_restart(env: Env, pod: str, before: dict) -> float | None:
    """Kill `pod`'s container; seconds until the API shows one restart more."""
    count = restart_total({pod: before[pod]})
    kill_container(env.node, env.namespace, pod)
    return wait_for(lambda: restart_count(env, pod) > count, 60, 0.2)


# --- scenario 4: the apiserver away -------------------------------------------------------------------

def apiserver_outage(env: Env, result: Result, args) -> None:
    """Stop kube-apiserver for `--outage` seconds (a container is killed meanwhile), start it again: the node
    must be Ready within one nodeStatusUpdateFrequency, the Lease renewed within ~2 s, no pod killed, and the
    restart that happened during the outage reported soon."""
    before = snapshot(env)
    victim = [name for name in before if name.startswith("exec-")][-1]  # not containerd-kill's: no back-off
    count = restart_total({victim: before[victim]})
    daemons = {name: procs.running(env.cluster, name) for name in controlplane.COMPONENTS}
    procs.stop(env.cluster, "kube-apiserver")
    down = time.monotonic()
    time.sleep(min(5.0, args.outage / 4))
    killed = kill_container(env.node, env.namespace, victim)
    local = wait_for(lambda: any(c.pod == victim and c.running and c.pid not in (0, killed)
                                 for c in runtime_containers(env.node, env.namespace).values()), args.outage)
    time.sleep(max(0.0, args.outage - (time.monotonic() - down)))
    died = [name for name, pid in daemons.items() if name != "kube-apiserver" and procs.running(env.cluster, name) != pid]
    starter = threading.Thread(target=controlplane.start, args=(env.cluster,), name="control-plane-start")
    restarted_wall = time.time()
    starter.start()
    if wait_for(lambda: controlplane.healthy(env.cluster, "kube-apiserver"), 120, 0.05) is None:
        starter.join()
        raise procs.UpError("kube-apiserver did not come back within 120 s")
    back, back_wall = time.monotonic(), time.time()
    outage = back - down
    # A renewal that reached the restarted apiserver counts, even one it took before it reported healthy (pykubelet
    # retries every 1.6 s at most and gets through as soon as the apiserver serves; /readyz comes a moment later).
    times = first_times({"lease": lambda: lease_renewed(env.client, env.node.name) > restarted_wall,
                         "reported": lambda: restart_count(env, victim) > count,
                         "ready": lambda: node_ready(env.client, env.node.name)}, 60, back, 0.05)
    lease, reported, ready = times["lease"], times["reported"], times["ready"]
    starter.join()
    ready_later = wait_for(lambda: not node_ready(env.client, env.node.name), 15, 0.5)  # stays Ready for 15 s
    after, _ = wait_same(env, before, args.catchup, skip=(victim,))
    result.figures.update({
        "apiserver away (s)": f"{outage:.1f}", "container killed in the outage → running again (s)": secs(local),
        "apiserver started → healthy (s)": f"{back_wall - restarted_wall:.2f}",
        "healthy → Lease renewed by then (s)": secs(lease),
        "return → node Ready (s)": secs(ready),
        "return → the outage's restart shown in the API (s)": secs(reported),
        "control-plane daemons that exited meanwhile": ", ".join(died) or "none"})
    result.check("node Ready within 10 s (nodeStatusUpdateFrequency) of the return", ready is not None and ready <= 10)
    result.check("node stays Ready for 15 s after", ready_later is None)
    result.check("Lease renewed within 2 s of the return (healthy)", lease is not None and lease <= 2)
    result.check("the outage's restart shown within 10 s of the return", reported is not None and reported <= 10)
    compare(result, before, after, skip=(victim,))
    if died:
        result.notes.append(f"{', '.join(died)} exited during the outage (leader election lost: the upstream "
                            "programs' own behaviour) and were started again from their usual command lines")


# --- scenario 5: etcd and kube-controller-manager restarted --------------------------------------------

def control_plane_restart(env: Env, result: Result, args) -> None:
    """Restart etcd, then kube-controller-manager: nothing on the node may change."""
    before = snapshot(env)
    not_ready = []
    with PodWatch(env) as watch:
        for daemon in ("etcd", "kube-controller-manager"):
            procs.stop(env.cluster, daemon)
            start = time.monotonic()
            controlplane.start(env.cluster)
            result.figures[f"{daemon} stopped → healthy again (s)"] = f"{time.monotonic() - start:.1f}"
            deadline = time.monotonic() + max(args.settle, 20)  # the new leader's controllers must have run
            while time.monotonic() < deadline:
                if node_not_ready(env.client, env.node.name):
                    not_ready.append(daemon)
                time.sleep(1)
        after, _ = wait_same(env, before, args.catchup)
    recreated = [name for name, uids in watch.uids.items() if len(uids) > 1]
    result.figures.update({"node seen not Ready (polls)": len(not_ready), "pods deleted / recreated":
                           f"{len(watch.deleted)} / {len(recreated)}"})
    result.check("node Ready throughout", not not_ready)
    result.check("no pod deleted or recreated", not watch.deleted and not recreated)
    compare(result, before, after)
    watch_checks(result, watch)


# --- scenario 6: pykubelet's state files broken --------------------------------------------------------

@dataclasses.dataclass
class StateCase:
    """One file pykubelet reads at start, and how it is broken; `fatal`: pykubelet should refuse to start."""
    label: str
    path: Callable[[Node], Path]
    corrupt: Callable[[Path], None]
    fatal: bool = False
    added: bool = False  # the file is ours (removed afterwards), not one pykubelet had


def truncate_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def garbage(path: Path) -> None:
    path.write_text("}{ not: [yaml\n\x00\x01binary")


STATE_CASES = [
    StateCase("config.yaml garbage", lambda n: agents.kubelet_dir(n) / "config.yaml", garbage, fatal=True),
    StateCase("kubelet.conf garbage", lambda n: agents.kubelet_dir(n) / "kubelet.conf", garbage),
    StateCase("pki/kubelet-client-current.pem emptied", lambda n: agents.kubelet_dir(n) / "pki/kubelet-client-current.pem",
              lambda p: p.write_bytes(b"")),
    StateCase("pki/kubelet-server-current.pem truncated to half",
              lambda n: agents.kubelet_dir(n) / "pki/kubelet-server-current.pem", truncate_half),
    StateCase("manifests/: a garbage static pod manifest", lambda n: agents.kubelet_dir(n) / "manifests/bench-faults.yaml",
              garbage, added=True),
    StateCase("manifests/: a manifest that is a Pod without containers",
              lambda n: agents.kubelet_dir(n) / "manifests/bench-faults-empty.yaml",
              lambda p: p.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: empty}\nspec: {containers: []}\n"),
              added=True),
    StateCase("pods/: a stray file and a pod directory of no pod",
              lambda n: agents.kubelet_dir(n) / "pods/00000000-bench-faults-stray", lambda p: p.write_text("stray"),
              added=True),
]


def state_files(env: Env, result: Result, args) -> None:
    """For each case: kill -9 pykubelet, break one file, start it; expect a clear logged error, a rebuild (from
    the runtime, or a new TLS bootstrap), no crash loop and no running pod lost. The file is restored after."""
    for case in STATE_CASES:
        label = case.label
        try:
            state_case(env, result, case, args)
        except Exception as err:  # noqa: BLE001 - one case's failure is that case's FAIL; the next still runs
            result.check(f"{label}: ran", False)
            result.notes.append(f"{label}: {type(err).__name__}: {err}")


def state_case(env: Env, result: Result, case: StateCase, args) -> None:
    path = case.path(env.node)
    target = path.resolve()
    backup = None if case.added else target.read_bytes()
    before = snapshot(env)
    flags = agents.kubelet_flags(env.node)  # written now, so that a broken config.yaml stays broken
    kill9(env.cluster, env.kubelet)
    if case.label.startswith("pods/"):
        (path.parent / "00000000-0000-0000-0000-bench0faults0").mkdir(exist_ok=True)
    case.corrupt(target)
    offset = env.log_offset(env.kubelet)
    try:
        pid = start_kubelet(env.node, flags)

        def exited() -> bool:
            return procs.running(env.cluster, env.kubelet) != pid

        healthy = wait_for(lambda: exited() or kubelet_healthy(env.node), 30)
        if case.label.startswith("pki/kubelet-server"):
            bootstrap.approve_serving_certificates(env.node, timeout=30)
        ready = wait_for(lambda: exited() or (node_ready(env.client, env.node.name)
                                              and lease_renewed(env.client, env.node.name) > time.time() - 5), 40)
        time.sleep(args.settle)
        alive = procs.running(env.cluster, env.kubelet) == pid
        after = snapshot(env)
        lines = log_lines(env, env.kubelet, offset, rf"^[WEF]|{re.escape(path.name)}|{re.escape(target.name)}", 8)
        named = any(target.name in line or path.name in line for line in lines)
        ids_same = container_ids(before) == container_ids(after)
        restarts = restart_total(after) - restart_total(before)
        outcome = (f"running, healthz {secs(healthy)} s, node Ready {secs(ready)} s" if alive
                   else f"exited ({'logged ' if named else 'did not name '}the file)")
        result.figures[case.label] = f"{outcome}; {restarts} restarts, container IDs {'same' if ids_same else 'CHANGED'}"
        result.check(f"{case.label}: no running pod lost", ids_same and restarts == 0)
        if case.fatal:
            result.check(f"{case.label}: refuses to start, naming the file", not alive and named)
        else:
            result.check(f"{case.label}: keeps running, node Ready", alive and ready is not None)
            if not case.added:
                result.check(f"{case.label}: a logged line names the file", named)
        if case.label.startswith("pods/"):
            result.figures[f"{case.label}: left behind"] = ", ".join(
                p.name for p in path.parent.iterdir() if "bench" in p.name) or "nothing"
        result.notes += [f"{case.label}: {line}" for line in lines]
    finally:
        if procs.running(env.cluster, env.kubelet):
            kill9(env.cluster, env.kubelet)
        if backup is None:
            for stray in path.parent.glob("*bench*"):
                stray.rmdir() if stray.is_dir() else stray.unlink()
        else:
            target.write_bytes(backup)
        start_kubelet(env.node)
        agents.wait_node_ready(env.node)
        bootstrap.approve_serving_certificates(env.node)


# --- scenario 7: node pressure (disk, memory, pids) and eviction ---------------------------------------

MiB = 2**20
TRANSITION = 20  # evictionPressureTransitionPeriod (s) while a pressure case runs


@dataclasses.dataclass
class PressureCase:
    """One signal, and a pod that starves the node of it."""
    label: str
    signal: str  # the eviction signal, e.g. memory.available
    condition: str  # the node condition it raises
    resource: str  # the resource upstream's eviction message names
    margin: int  # the hard threshold is set this far below what the node has available when the case starts
    hog: dict  # the pod spec fields of the pod that crosses it (by twice the margin)


def hog_container(command: str, **extra) -> list[dict]:
    return [{"name": "hog", "image": BUSYBOX, "command": ["sh", "-c", command], **extra}]


PRESSURE_CASES = [
    PressureCase("disk", "nodefs.available", "DiskPressure", "ephemeral-storage", 300 * MiB, {
        "containers": hog_container("dd if=/dev/zero of=/fill bs=1M count=600; exec sleep 3600")}),
    PressureCase("memory", "memory.available", "MemoryPressure", "memory", 400 * MiB, {
        "volumes": [{"name": "mem", "emptyDir": {"medium": "Memory"}}],
        "containers": hog_container("dd if=/dev/zero of=/mem/fill bs=1M count=800; exec sleep 3600",
                                    volumeMounts=[{"name": "mem", "mountPath": "/mem"}])}),
    PressureCase("pids", "pid.available", "PIDPressure", "pids", 300, {
        "containers": hog_container("for i in $(seq 600); do sleep 3600 & done; wait")}),
]


def node_condition(client, name: str, kind: str) -> str:
    found = [c.status for c in client.get(NodeResource, name).status.conditions or [] if c.type == kind]
    return found[0] if found else "Unknown"


def available(env: Env, signal: str) -> int:
    """What pykubelet observes of `signal` now, from its stats summary through the apiserver."""
    from pykubelet.eviction import signals

    def summary():
        return procs.kubectl(env.cluster, "get", "--raw", f"/api/v1/nodes/{env.node.name}/proxy/stats/summary")

    # A pykubelet just restarted (the case before) may not serve its API yet.
    wait_for(lambda: summary().returncode == 0, 30, 1)
    out = summary()
    if out.returncode:
        raise procs.UpError(f"stats summary: {out.stderr.strip()}")
    return signals.observe(json.loads(out.stdout)["node"])[signal].available


def pressure(env: Env, result: Result, args) -> None:
    """For disk, memory and pids in turn: pykubelet restarted with a hard eviction threshold just below what the
    node has available, then a pod that crosses it. Expected, as upstream: the node condition True, a new
    BestEffort pod refused meanwhile, the hog (the largest user) evicted with upstream's message and its
    containers removed, no other pod evicted or touched, the condition False again after the transition
    period. pykubelet's usual configuration is restored after each case."""
    namespace = f"{PREFIX}pressure"
    make_namespace(env.client, namespace)
    try:
        for case in PRESSURE_CASES:
            try:
                pressure_case(env, result, case, namespace, args)
            except Exception as err:  # noqa: BLE001 - one case's failure is that case's FAIL; the next still runs
                result.check(f"{case.label}: ran", False)
                result.notes.append(f"{case.label}: {type(err).__name__}: {err}")
    finally:
        delete_namespaces(env.client, [namespace], timeout=120)


def pressure_case(env: Env, result: Result, case: PressureCase, namespace: str, args) -> None:
    label = case.label
    before = snapshot(env)
    threshold = available(env, case.signal) - case.margin
    config = agents.kubelet_configuration(env.node)
    config.update({"evictionHard": {case.signal: str(threshold)},
                   "evictionPressureTransitionPeriod": f"{TRANSITION}s"})
    agents.restart_kubelet(env.node, config)
    offset = env.log_offset(env.kubelet)

    def get(name: str) -> Pod:
        return env.client.get(Pod, name, namespace=namespace)

    def evicted(name: str) -> bool:
        status = get(name).status
        return status.phase == "Failed" and status.reason == "Evicted"

    hog, late = f"{label}-hog", f"{label}-late"
    try:
        with PodWatch(env) as watch:
            env.client.create(Pod.from_dict({"metadata": {"name": hog, "namespace": namespace}, "spec": {
                "nodeName": env.node.name, "terminationGracePeriodSeconds": 2, **case.hog}}))
            t0 = time.monotonic()
            raised = wait_for(lambda: node_condition(env.client, env.node.name, case.condition) == "True", 120, 0.5)
            refused = None
            if raised is not None:
                env.client.create(Pod.from_dict({"metadata": {"name": late, "namespace": namespace}, "spec": {
                    "nodeName": env.node.name, "containers": hog_container("exec sleep 3600")}}))
                refused = wait_for(lambda: get(late).status.phase == "Failed", 30, 0.5)
            gone = wait_for(lambda: evicted(hog), 120 - (time.monotonic() - t0), 0.5)
            gone = None if gone is None else time.monotonic() - t0  # from the hog's creation, as `raised`
            removed = wait_for(lambda: not any(c.pod == hog for c in runtime_containers(env.node, namespace).values()),
                               60)
            cleared = wait_for(lambda: node_condition(env.client, env.node.name, case.condition) == "False",
                               TRANSITION + 60, 1)
            after, _ = wait_same(env, before, args.catchup)
        hog_status, late_status = get(hog).status, get(late).status if refused is not None else None
        others = [f"{p.metadata.namespace}/{p.metadata.name}"
                  for p in env.client.list(Pod, namespace="*", fields={"spec.nodeName": env.node.name})
                  if p.status and p.status.reason == "Evicted" and p.metadata.name not in (hog, late)]
        result.figures[label] = (
            f"{case.signal} < {signals_text(case, threshold)}: from the hog's creation, {case.condition} after "
            f"{secs(raised)} s, the hog seen evicted after {secs(gone)} s, its containers removed {secs(removed)} s "
            f"later, the condition False {secs(cleared)} s after that")
        message = hog_status.message or ""
        result.check(f"{label}: {case.condition} True", raised is not None)
        result.check(f"{label}: a new BestEffort pod refused with reason Evicted meanwhile",
                     late_status is not None and late_status.reason == "Evicted"
                     and case.condition in (late_status.message or ""))
        result.check(f"{label}: the hog evicted, upstream's message naming {case.resource}",
                     gone is not None and message.startswith(f"The node was low on resource: {case.resource}."))
        result.check(f"{label}: the hog's containers removed", removed is not None)
        result.check(f"{label}: {case.condition} False again", cleared is not None)
        result.check(f"{label}: no other pod evicted", not others)
        diffs = differences(before, after)
        result.check(f"{label}: every workload pod as before", not diffs)
        watch_checks(result, watch)
        result.notes += [f"{label}: hog: {message[:300]}"] + [f"{label}: also evicted: {o}" for o in others[:5]]
        result.notes += [f"{label}: status changed: {d}" for d in diffs[:5]]
        result.notes += [f"{label}: pykubelet: {line}" for line in log_lines(env, env.kubelet, offset, r"[Ee]vict")]
    finally:
        for name in (hog, late):
            try:
                env.client.delete(Pod, name, namespace=namespace, grace_period=0)
            except ApiError:
                pass
        agents.restart_kubelet(env.node)


def signals_text(case: PressureCase, amount: int) -> str:
    from pykubelet.eviction import signals

    return signals.quantity_text(amount, counted=case.resource == "pids")


# --- scenario 8: hostile pod specs -----------------------------------------------------------------

def hostile_containers(kind: str) -> dict:
    """The pod spec fields of one kind of malformed or hostile pod (all accepted by the API)."""
    sleep = {"name": "main", "image": BUSYBOX, "command": ["sleep", "3600"]}
    if kind == "missing-image":
        return {"containers": [{**sleep, "image": "registry.k8s.io/e2e-test-images/does-not-exist:1.0"}]}
    if kind == "missing-command":
        return {"containers": [{**sleep, "command": ["/does/not/exist"]}]}
    if kind in ("missing-configmap", "missing-secret", "missing-pvc", "hostpath-not-a-directory"):
        source = {"missing-configmap": {"configMap": {"name": "does-not-exist"}},
                  "missing-secret": {"secret": {"secretName": "does-not-exist"}},
                  "missing-pvc": {"persistentVolumeClaim": {"claimName": "does-not-exist"}},
                  "hostpath-not-a-directory": {"hostPath": {"path": "/does/not/exist", "type": "Directory"}}}[kind]
        return {"volumes": [{"name": "v", **source}],
                "containers": [{**sleep, "volumeMounts": [{"name": "v", "mountPath": "/v"}]}]}
    if kind == "missing-env-configmap":
        return {"containers": [{**sleep, "env": [{"name": "X", "valueFrom": {
            "configMapKeyRef": {"name": "does-not-exist", "key": "x"}}}]}]}
    if kind == "env-5000-vars":
        return {"containers": [{**sleep, "env": [{"name": f"VAR_{i}", "value": "x" * 40} for i in range(5000)]}]}
    if kind == "env-value-200kib":
        return {"containers": [{**sleep, "env": [{"name": "BIG", "value": "x" * 200 * 1024}]}]}
    if kind == "termination-message-1mib":
        return {"restartPolicy": "Never", "containers": [{**sleep, "command": [
            "sh", "-c", "head -c 1048576 /dev/zero | tr '\\0' x > /dev/termination-log; exit 3"]}]}
    if kind == "liveness-exec-hangs":
        return {"containers": [{**sleep, "livenessProbe": {"exec": {"command": ["sleep", "3600"]},
                                                           "timeoutSeconds": 1, "periodSeconds": 3,
                                                           "failureThreshold": 2}}]}
    if kind == "readiness-exec-hangs":
        return {"containers": [{**sleep, "readinessProbe": {"exec": {"command": ["sleep", "3600"]},
                                                            "timeoutSeconds": 1, "periodSeconds": 3}}]}
    if kind == "poststart-hangs":
        return {"containers": [{**sleep, "lifecycle": {"postStart": {"exec": {"command": ["sleep", "3600"]}}}}]}
    if kind == "prestop-hangs":
        return {"containers": [{**sleep, "lifecycle": {"preStop": {"exec": {"command": ["sleep", "3600"]}}}}]}
    if kind == "logs-10000-lines-per-s":
        return {"containers": [{**sleep, "command": [
            "sh", "-c", "while :; do seq 1000 | sed 's/$/ a line of log spam/'; sleep 0.1; done"]}]}
    if kind == "fork-bomb":
        # Inside the pod's pids limit (podPidsLimit on the local nodes), and a tenth of a CPU so that its endless
        # failed forks do not take the node's CPUs from the workload.
        return {"containers": [{**sleep, "command": ["sh", "-c", "f() { f | f & }; f; sleep 3600"],
                                "resources": {"limits": {"cpu": "100m", "memory": "256Mi"}}}]}
    if kind == "requests-1000-cpus":
        return {"containers": [{**sleep, "resources": {"requests": {"cpu": "1000"}}}]}
    raise ValueError(kind)


# Each kind, and how many of every 30 hostile pods are of it (the costly ones are rare).
HOSTILE_KINDS = {
    "missing-image": 2, "missing-command": 2, "missing-configmap": 2, "fork-bomb": 1, "missing-secret": 2, "missing-pvc": 2,
    "hostpath-not-a-directory": 2, "missing-env-configmap": 2, "env-5000-vars": 2, "env-value-200kib": 2,
    "termination-message-1mib": 2, "liveness-exec-hangs": 2, "readiness-exec-hangs": 2, "poststart-hangs": 1,
    "prestop-hangs": 2, "logs-10000-lines-per-s": 1, "requests-1000-cpus": 1,
}
# Kinds that run: Running is their outcome 12 s after the creation, once their probes have had time to fail.
# Any other kind that looks Running is waited for (it should fail) up to --hostile-wait.
HOSTILE_RUNNING = ("env-5000-vars", "fork-bomb", "prestop-hangs", "logs-10000-lines-per-s", "readiness-exec-hangs",
                   "liveness-exec-hangs", "requests-1000-cpus")
STUCK_REASONS = ("ContainerCreating", "PodInitializing", "", None)


def hostile_plan(count: int) -> list[str]:
    cycle = [kind for kind, n in HOSTILE_KINDS.items() for _ in range(n)]
    return [cycle[i % len(cycle)] for i in range(count)]


def explanation(pod: Pod, events: list[Event]) -> tuple[str, str]:
    """What the API says about a pod, and its message: a Failed reason, a container's waiting/terminated reason,
    a Warning event, or Running; "" when it says nothing clear (a pod stuck in ContainerCreating, no event)."""
    status = pod.status
    if status and status.reason:
        return f"pod {status.reason}", status.message or ""
    for s in (status and status.containerStatuses) or []:
        if s.state is None:
            continue
        if s.state.waiting and s.state.waiting.reason not in STUCK_REASONS:
            return f"waiting {s.state.waiting.reason}", s.state.waiting.message or ""
        if s.state.terminated:
            message = s.state.terminated.message or ""
            return f"terminated {s.state.terminated.reason} (message {len(message)} bytes)", message[:100]
        if s.lastState and s.lastState.terminated:
            return f"restarted, last {s.lastState.terminated.reason}", s.lastState.terminated.message or ""
    warnings = [e for e in events if e.type == "Warning"]
    if warnings:
        return f"event {warnings[-1].reason}", warnings[-1].message or ""
    if status and status.phase == "Running" and all(s.state and s.state.running for s in status.containerStatuses or []):
        return "Running", ""
    return "", ""


@dataclasses.dataclass
class HostileRun:
    """The hostile pods of one run (name -> kind) and what became of them."""
    kinds: dict[str, str]
    uids: dict[str, str] = dataclasses.field(default_factory=dict)  # name -> uid, once created
    outcomes: dict[str, str] = dataclasses.field(default_factory=dict)  # name -> explanation ("" if none)
    samples: dict[tuple[str, str], str] = dataclasses.field(default_factory=dict)  # (kind, outcome) -> a message
    gone: dict[str, float | None] = dataclasses.field(default_factory=dict)  # name -> delete → gone (s), or None
    stale: dict[str, str] = dataclasses.field(default_factory=dict)  # event -> what it says, about no pod of ours

    def of_kind(self, kind: str) -> list[str]:
        return [self.outcomes.get(name, "") for name, k in self.kinds.items() if k == kind]


def hostile(env: Env, result: Result, args) -> None:
    """`--hostile` malformed or hostile pods (accepted by the API), a few at a time as the node has room: each
    must end with a clear status reason or Event, pykubelet and pyproxy must not crash, the workload must not
    notice. pykubelet's RSS and CPU are sampled meanwhile."""
    namespace = f"{PREFIX}hostile"
    make_namespace(env.client, namespace)
    before = snapshot(env)
    pids = {daemon: procs.running(env.cluster, daemon) for daemon in (env.kubelet, env.proxy)}
    run = HostileRun({f"h{i:03d}-{kind}": kind for i, kind in enumerate(hostile_plan(args.hostile))})
    with Sampler(pids[env.kubelet]) as sampler:
        start = time.monotonic()
        run_hostile(env, namespace, run, args)
        wall = time.monotonic() - start
    delete_namespaces(env.client, [namespace], timeout=300)
    after, _ = wait_same(env, before, args.catchup)
    unclear = [name for name in run.kinds if not run.outcomes.get(name)]
    result.figures.update({
        "hostile pods": len(run.kinds), "with a clear reason or event": len(run.kinds) - len(unclear),
        "without": len(unclear), "wall (s)": f"{wall:.0f}",
        "delete → gone (s): max": secs(max((v for v in run.gone.values() if v is not None), default=None)),
        f"not gone {DELETE_WAIT:.0f} s after the delete": sum(1 for v in run.gone.values() if v is None),
        "events about no pod of this run": len(run.stale),
        "pykubelet max RSS (MiB) / CPU (s)": f"{sampler.max_rss / MIB:.1f} / {sampler.cpu_seconds:.1f}",
        "agent pids unchanged": ", ".join(f"{d} {'yes' if procs.running(env.cluster, d) == p else 'NO'}"
                                          for d, p in pids.items())})
    for kind in HOSTILE_KINDS:
        counts = collections.Counter(o or "NOTHING CLEAR" for o in run.of_kind(kind))
        result.figures[f"kind {kind}"] = "; ".join(f"{n} × {what}" for what, n in counts.most_common())
    result.check("every hostile pod ends with a clear status reason or Event", not unclear)
    hostile_expectations(result, run)
    result.check(f"every hostile pod gone within {DELETE_WAIT:.0f} s of its delete",
                 all(v is not None for v in run.gone.values()))
    result.check("pykubelet and pyproxy did not crash", all(procs.running(env.cluster, d) == p for d, p in pids.items()))
    compare(result, before, after)
    if unclear:
        result.notes.append(f"no clear reason or event: {', '.join(unclear[:30])}")
    result.notes += [f"{kind}: {what}: {message[:300]}" for (kind, what), message in sorted(run.samples.items())
                     if message]
    result.notes += [f"event about no pod of this run: {what[:300]}" for what in list(run.stale.values())[:5]]


def hostile_expectations(result: Result, run: HostileRun) -> None:
    """What upstream does with two of the kinds: a termination message cut to 4096 bytes, and a pod that asks
    for more CPU than the node has rejected with OutOfcpu."""
    sizes = [int(m.group(1)) for o in run.of_kind("termination-message-1mib")
             if (m := re.search(r"message (\d+) bytes", o))]
    if sizes:
        result.figures["1 MiB termination message: bytes kept (max)"] = max(sizes)
        result.check("a 1 MiB termination message is cut to 4096 bytes (upstream's limit)", max(sizes) <= 4096)
    if cpus := run.of_kind("requests-1000-cpus"):
        result.check("a pod requesting 1000 CPUs is rejected with OutOfcpu (as upstream)",
                     all("OutOfcpu" in o for o in cpus))


def free_slots(env: Env) -> int:
    """How many more pods the node takes (allocatable pods minus its pods that have not finished)."""
    allocatable = int(env.client.get(NodeResource, env.node.name).status.allocatable["pods"])
    taken = sum(1 for p in env.client.list(Pod, namespace="*", fields={"spec.nodeName": env.node.name})
                if p.status is None or p.status.phase not in ("Succeeded", "Failed"))
    return allocatable - taken


DELETE_WAIT = 60.0  # seconds a deleted hostile pod may take to leave the API before we stop waiting for it


def run_hostile(env: Env, namespace: str, run: HostileRun, args) -> None:
    """Create the hostile pods as slots free up (at most `--hostile-batch` at once, never more than the node's
    free pod slots); each is classified (explanation, from its status and the events about its uid) and deleted
    once it explains itself or `--hostile-wait` passed; then timed until it leaves the API."""
    todo = list(run.kinds)
    created: dict[str, float] = {}
    deleting: dict[str, float] = {}
    while todo or created or deleting:
        present = {p.metadata.name: p for p in env.client.list(Pod, namespace=namespace)}
        for name, since in list(deleting.items()):
            if name not in present or time.monotonic() - since > DELETE_WAIT:
                run.gone[name] = None if name in present else time.monotonic() - since
                del deleting[name]
        room = min(args.hostile_batch - len(created) - len(deleting), free_slots(env))
        for name in todo[:max(0, room)]:
            pod = env.client.create(Pod.from_dict({
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"nodeName": env.node.name, "terminationGracePeriodSeconds": 3,
                         **hostile_containers(run.kinds[name])}}))
            run.uids[name] = pod.metadata.uid
            created[name] = time.monotonic()
            todo.remove(name)
        events = collections.defaultdict(list)
        ours = set(run.uids.values())
        for event in env.client.list(Event, namespace=namespace):
            events[event.involvedObject.uid].append(event)
            if event.involvedObject.kind == "Pod" and event.involvedObject.uid not in ours:
                run.stale[event.metadata.name] = (f"{event.involvedObject.name} (uid {event.involvedObject.uid}): "
                                                  f"{event.reason}: {event.message}")
        for name, since in list(created.items()):
            pod = present.get(name)
            what, message = explanation(pod, events[run.uids[name]]) if pod is not None else ("", "")
            waited = time.monotonic() - since
            # Running is an outcome only for a kind that runs, once its probes have had time to fail (3 periods);
            # any other outcome is taken at once.
            running_ok = run.kinds[name] in HOSTILE_RUNNING and waited > 12
            if (what and what != "Running") or (what and running_ok) or waited > args.hostile_wait:
                run.outcomes[name] = what
                run.samples.setdefault((run.kinds[name], what), message)
                env.client.delete(Pod, name, namespace=namespace)
                deleting[name] = time.monotonic()
                del created[name]
        time.sleep(1)


# --- running them ---------------------------------------------------------------------------------

SCENARIOS: dict[str, Callable[[Env, Result, argparse.Namespace], None]] = {
    "kubelet-kill": kubelet_kill,
    "proxy-kill": proxy_kill,
    "containerd-kill": containerd_kill,
    "apiserver-outage": apiserver_outage,
    "control-plane-restart": control_plane_restart,
    "state-files": state_files,
    "pressure": pressure,
    "hostile": hostile,
}


def run_scenario(env: Env, name: str, args) -> Result:
    """One scenario, then the cluster restored whatever happened; an error is the scenario's FAIL."""
    result = Result(name)
    log(f"scenario {name}")
    start = time.monotonic()
    try:
        # Each starts from a settled workload: a container the scenario before killed must be ready again, or
        # its recovery would count as this scenario's change.
        if wait_for(lambda: all(settled(p) for p in env.client.list(Pod, namespace=env.namespace)), 90, 1) is None:
            result.notes.append("the workload was not all settled after 90 s; the scenario ran anyway")
        SCENARIOS[name](env, result, args)
    except Exception as err:  # noqa: BLE001 - the next scenario still runs
        result.error = f"{type(err).__name__}: {err}"
        log(f"scenario {name} failed: {result.error}\n{traceback.format_exc()}")
    finally:
        restore(env.cluster)
    result.seconds = time.monotonic() - start
    log(f"scenario {name}: {result.verdict} in {result.seconds:.0f}s")
    return result


# Scenarios that are the kubelet's alone (the others break pyproxy, or poke at pykubelet's own files and
# thresholds): with --upstream each runs again on pynode-n2 under the upstream kubelet, for the ratios.
UPSTREAM_SCENARIOS = ("kubelet-kill", "apiserver-outage")


def ours(client) -> list[str]:
    from lightkube.resources.core_v1 import Namespace

    return [ns.metadata.name for ns in client.list(Namespace) if ns.metadata.name.startswith(PREFIX)]


def table(results: list[Result]) -> str:
    lines = ["| scenario | verdict | figures |", "| --- | --- | --- |"]
    for r in results:
        figures = "; ".join(f"{k}: {v}" for k, v in r.figures.items()) or r.skipped or r.error
        lines.append(f"| {r.name} | **{r.verdict}** | {figures} |")
    return "\n".join(lines) + "\n"


def details(r: Result) -> str:
    text = f"\n### {r.name}: {r.verdict} ({r.seconds:.0f} s)\n\n{' '.join(SCENARIOS[r.name].__doc__.split())}\n\n"
    if r.skipped:
        text += f"Skipped: {r.skipped}\n"
    if r.error:
        text += f"Error: `{r.error}`\n\n"
    text += "".join(f"- {'✓' if ok else '✗'} {what}\n" for what, ok in r.checks.items())
    if r.figures:
        text += "\n| figure | value |\n| --- | --- |\n" + "".join(f"| {k} | {v} |\n" for k, v in r.figures.items())
    if r.notes:
        text += "\n```\n" + "\n".join(r.notes) + "\n```\n"
    return text


def seconds_of(value: object) -> float | None:
    try:
        return float(str(value).split()[0])
    except (ValueError, IndexError):
        return None


def side_by_side(ours: list[Result], theirs: list[Result]) -> str:
    """Each scenario run under both kubelets: its figures side by side, with the ratio where both are numbers."""
    if not theirs:
        return ""
    lines = ["\n## Side by side: pykubelet (pynode-n1) and the upstream kubelet (pynode-n2)\n",
             "| scenario | figure | pykubelet | upstream kubelet | pykubelet / upstream |",
             "| --- | --- | ---: | ---: | ---: |"]
    for upstream in theirs:
        mine = next((r for r in ours if r.name == upstream.name), None)
        if mine is None:
            continue
        lines.append(f"| {upstream.name} | verdict | {mine.verdict} | {upstream.verdict} | |")
        for figure, value in upstream.figures.items():
            if figure not in mine.figures:
                continue
            a, b = seconds_of(mine.figures[figure]), seconds_of(value)
            ratio = f"{a / b:.2f}×" if "(s)" in figure and a is not None and b else ""
            lines.append(f"| {upstream.name} | {figure} | {mine.figures[figure]} | {value} | {ratio} |")
    return "\n".join(lines) + "\n"


def report(args, results: list[Result], theirs: list[Result], deployed: float, facts: dict[str, str]) -> str:
    beside = ("With `--upstream` the same workload ran on pynode-n2 under the upstream kubelet, and "
              f"{', '.join(r.name for r in theirs)} ran there too, after pykubelet's (details at the end; the "
              "upstream kubelet's verdicts do not count towards the run's exit status)."
              if theirs else "The upstream kubelet side by side (`--upstream`) was not asked for.")
    return (f"# Faults on pynode-n1\n\n`{' '.join(['python -m bench.faults', *args.argv])}`, "
            f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC. {args.pods} workload pods "
            f"({', '.join(f'{KINDS.count(k)}/{len(KINDS)} {k}' for k in dict.fromkeys(KINDS))}) bound to the node, "
            f"all settled {deployed:.0f} s after the first create. {beside}\n\n" + table(results)
            + side_by_side(results, theirs) + "".join(details(r) for r in results)
            + "".join(details(r).replace("\n### ", "\n### upstream kubelet: ", 1) for r in theirs)
            + "\n| machine | |\n| --- | --- |\n" + "".join(f"| {k} | {v} |\n" for k, v in facts.items()))


def environment(cluster: Cluster, namespace: str) -> Env:
    node = cluster.nodes[0]
    return Env(cluster, node, admin_client(cluster), namespace, import_agnhost(cluster, node))


def upstream_environment(cluster: Cluster, client) -> Env:
    """pynode-n2 with the upstream kubelet (built and brought up as bench.pod_startup does), ready."""
    node = dataclasses.replace(cluster, node_count=2).nodes[1]
    nodes.prepare(node, client)
    log(f"bringing up {node.name} with the upstream kubelet")
    upstream_node.bring_up(node)
    nodes.wait_ready(client, cluster, {node.name: upstream_node.daemon(node)})
    return Env(cluster, node, client, f"{PREFIX}upstream-pods", import_agnhost(cluster, node), upstream=True)


def run_upstream(env: Env, args) -> list[Result]:
    log(f"deploying {args.pods} pods in {env.namespace} on {env.node.name} (the upstream kubelet)")
    make_namespace(env.client, env.namespace)
    deploy(env, args.pods, timeout=120 + 3 * args.pods)
    return [run_scenario(env, name, args) for name in args.scenarios if name in UPSTREAM_SCENARIOS]


def run(args) -> int:
    cluster = cluster_with_more_nodes(1)
    if cluster is None:
        return 1
    env = environment(cluster, f"{PREFIX}pods")
    upstream: Env | None = None
    interrupt_on_signals()
    try:
        clear_earlier_runs(env.client, ours, timeout=180)
        log(f"deploying {args.pods} pods in {env.namespace}")
        make_namespace(env.client, env.namespace)
        deployed = deploy(env, args.pods, timeout=120 + 3 * args.pods)
        results = [run_scenario(env, name, args) for name in args.scenarios]
        theirs = []
        if args.upstream:
            upstream = upstream_environment(cluster, env.client)
            theirs = run_upstream(upstream, args)
    except (procs.UpError, ApiError) as err:
        print(f"bench: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        restore(cluster)
        remove_leftovers(ours, timeout=180)(env.client, env.node)
        if upstream is not None:
            nodes.cleanup(upstream.node, env.client)
    text = report(args, results, theirs, deployed, machine_facts(cluster, procs.running(cluster, env.kubelet)))
    print(side_by_side(results, theirs), end="")
    print(table(results), end="")
    path = RESULTS_DIR / f"faults-{datetime.datetime.now(datetime.UTC):%Y-%m-%d}.md"
    path.write_text(text)
    log(f"written to {path.relative_to(settings.REPO)}")
    return 0 if all(r.verdict != "FAIL" for r in results) else 1


def scenario_names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    return names


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__.split("\n")[0])
    p.add_argument("--pods", type=int, default=100, help="workload pods (default 100; maxPods is 110)")
    p.add_argument("--scenarios", type=scenario_names, default=list(SCENARIOS),
                   help=f"comma-separated, in this order by default: {','.join(SCENARIOS)}")
    p.add_argument("--outage", type=float, default=60, help="seconds the apiserver stays down (default 60)")
    p.add_argument("--rate", type=float, default=500, help="requests/s to the Service while pyproxy is killed")
    p.add_argument("--traffic", type=float, default=20, help="seconds of that traffic (default 20)")
    p.add_argument("--hostile", type=int, default=300, help="hostile pods (default 300)")
    p.add_argument("--hostile-batch", type=int, default=20, help="hostile pods at once at most (default 20)")
    p.add_argument("--hostile-wait", type=float, default=45,
                   help="seconds a hostile pod may take to explain itself (default 45)")
    p.add_argument("--catchup", type=float, default=60,
                   help="seconds statuses may take to be as before a fault (default 60)")
    p.add_argument("--settle", type=float, default=10, help="seconds to watch after a restart (default 10)")
    p.add_argument("--upstream", action="store_true",
                   help=f"also run {', '.join(UPSTREAM_SCENARIOS)} on pynode-n2 under the upstream kubelet, with "
                        "the same workload, and report the figures side by side")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    args.argv = argv
    with lock.holding(settings.load(), "a benchmark (python -m bench.faults)"):
        return run(args)


if __name__ == "__main__":
    sys.exit(main())
