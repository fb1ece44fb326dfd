"""The kubelet API, pykubelet vs the upstream kubelet, in one run, through the real apiserver and kubectl.

    python -m bench.kubelet_api [--log-mib 100] [--execs 200] [--forward-mib 64] [--followers 20] [--aborted 500]

Needs the local cluster up (`make up`). Brings up two more local nodes with the same
KubeletConfiguration: pynode-n2 with the upstream kubelet (as bench.kubelet_idle does) and
pynode-n3 with a fresh pykubelet, so that neither agent carries earlier work in its heap and both
keep a `--log-mib` log in one file (containerLogMaxSize is raised above it for both). Then, for
each agent in turn (never both at once), in a namespace of its own with pods bound to its node:

- `kubectl logs` of a container that wrote `--log-mib` MiB (100-byte lines): seconds and MiB/s,
  median of 3, every byte counted;
- `kubectl exec web -- true`, `--execs` times one after another: p50 and p99 of the round trip;
- `kubectl port-forward` to busybox httpd: a `--forward-mib` MiB download, median of 3;
- the agent's RSS and CPU with `--followers` concurrent `kubectl logs -f` of a container printing
  10 lines a second, against the same agent just before;
- `--aborted` sessions cut off by killing kubectl (half `logs -f`, half `exec -- sleep 30`, ten at
  a time): the agent's open file descriptors and RSS before and 15 s after — what a leak would show.

The table goes to stdout and to bench/results/kubelet-api.md. pynode-n2 and pynode-n3 are removed
at the end, also after an error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import yaml
from lightkube import ApiError
from lightkube.resources.core_v1 import Pod

from localcluster import agents, bootstrap, containerd, network, procs
from localcluster.cluster import delete_node_objects, remove_node
from localcluster.cluster import node_leftovers as leftovers
from localcluster.settings import Node
from localcluster.upstream_node import daemon, start_upstream

from .nodes import MIB, log, machine_facts, run_beside_upstream, usage, wait_ready
from .pod_startup import delete_namespaces, make_namespace, percentile

RESULTS = Path(__file__).resolve().parent / "results" / "kubelet-api.md"
IMAGE = "registry.k8s.io/e2e-test-images/busybox:1.37.0-1"
PREFIX = "bench-kubelet-api-"
LINE = "0123456789" * 9 + "abcdefghi"  # 99 characters; `yes` prints 100-byte lines
TAINT = {"key": "pynode.dev/bench", "value": "kubelet-api", "effect": "NoSchedule"}


@dataclasses.dataclass
class Agent:
    label: str
    node: Node
    daemon: str
    pid: int = 0
    figures: dict = dataclasses.field(default_factory=dict)

    def check(self) -> None:
        if procs.running(self.node.cluster, self.daemon) != self.pid:
            raise procs.UpError(f"{self.daemon} (pid {self.pid}) stopped during the run; "
                                f"see {procs.log_path(self.node.cluster, self.daemon)}")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))


def log_settings(log_mib: int) -> dict:
    """What both agents get on top of the local KubeletConfiguration: one log file holds the big log."""
    return {"containerLogMaxSize": f"{2 * log_mib + 10}Mi", "registerWithTaints": [TAINT]}


# --- the nodes ----------------------------------------------------------------------------------

def start_pykubelet(node: Node, log_mib: int) -> int:
    network.ensure_node(node)
    containerd.start(node)
    containerd.import_images(node)
    flags = agents.kubelet_flags(node)
    config = agents.kubelet_dir(node) / "config.yaml"
    settings = {**agents.kubelet_configuration(node), **log_settings(log_mib),
                # as the upstream kubelet's (bench.nodes): the node's own pod logs, not the host's /var/log/pods
                "podLogsDir": str(agents.kubelet_dir(node) / "pod-logs")}
    config.write_text(yaml.safe_dump(settings, sort_keys=False))
    return agents.start(node, "pykubelet", *flags).pid


def start_upstream_kubelet(node: Node, log_mib: int) -> int:
    network.ensure_node(node)
    containerd.start(node)
    containerd.import_images(node)
    return start_upstream(node, log_settings(log_mib))


# --- kubectl ------------------------------------------------------------------------------------

def kubectl(cluster, namespace: str, *args: str) -> list[str]:
    return [str(cluster.bin / "kubectl"), f"--kubeconfig={cluster.admin_kubeconfig}", "-n", namespace, *args]


def pods(namespace: str, node: str, log_mib: int, forward_mib: int) -> list[Pod]:
    def one(name: str, script: str) -> Pod:
        return Pod.from_dict({
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1, "tolerations": [{"operator": "Exists"}],
                     "containers": [{"name": name, "image": IMAGE, "imagePullPolicy": "IfNotPresent",
                                     "command": ["sh", "-c", script]}]}})

    return [
        one("logger", f"yes {LINE} | head -c {log_mib * MIB}; echo END; exec sleep 3600"),
        one("web", f"mkdir -p /www && head -c {forward_mib * MIB} /dev/zero > /www/big && "
                   "exec httpd -f -p 8080 -h /www"),
        one("ticker", "while true; do echo tick; sleep 0.1; done"),
    ]


def wait_running(client, namespace: str, names: list[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        phases = {n: (client.get(Pod, n, namespace=namespace).status.phase or "Pending") for n in names}
        if all(p == "Running" for p in phases.values()):
            return
        if time.monotonic() > deadline:
            raise procs.UpError(f"pods in {namespace} not Running after {timeout:.0f}s: {phases}")
        time.sleep(0.5)


def wait_logged(cluster, namespace: str, timeout: float = 300) -> None:
    """Until the logger's last line, END, is in its log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(kubectl(cluster, namespace, "logs", "--tail=1", "logger"), capture_output=True,
                             text=True, timeout=60).stdout
        if out.strip() == "END":
            return
        time.sleep(1)
    raise procs.UpError(f"the logger in {namespace} had not written its log after {timeout:.0f}s")


def timed_logs(cluster, namespace: str) -> tuple[float, int]:
    """`kubectl logs logger` read to EOF: (seconds, bytes)."""
    start = time.monotonic()
    proc = subprocess.Popen(kubectl(cluster, namespace, "logs", "logger"), stdout=subprocess.PIPE)
    total = 0
    while chunk := proc.stdout.read(1 << 20):
        total += len(chunk)
    proc.wait()
    return time.monotonic() - start, total


def exec_latencies(cluster, namespace: str, n: int) -> list[float]:
    argv = kubectl(cluster, namespace, "exec", "web", "--", "true")
    out = []
    for _ in range(n):
        start = time.monotonic()
        proc = subprocess.run(argv, capture_output=True, timeout=60)
        if proc.returncode != 0:
            raise procs.UpError(f"kubectl exec failed: {proc.stderr.decode(errors='replace').strip()}")
        out.append(time.monotonic() - start)
    return out


def forward_downloads(cluster, namespace: str, size: int, runs: int = 3) -> list[float]:
    """Seconds for each download of /big through one `kubectl port-forward`."""
    proc = subprocess.Popen(kubectl(cluster, namespace, "port-forward", "--address=127.0.0.1", "pod/web", ":8080"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        match = re.search(r"127\.0\.0\.1:(\d+)", first)
        if not match:
            raise procs.UpError(f"kubectl port-forward said {first!r} {proc.stderr.read() if proc.poll() else ''}")
        threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep its pipe drained
        seconds = []
        for _ in range(runs):
            start = time.monotonic()
            with urllib.request.urlopen(f"http://127.0.0.1:{match[1]}/big", timeout=120) as response:
                got = 0
                while chunk := response.read(1 << 20):
                    got += len(chunk)
            seconds.append(time.monotonic() - start)
            if got != size:
                raise procs.UpError(f"port-forward download got {got} of {size} bytes")
        return seconds
    finally:
        proc.kill()
        proc.wait()


def sample(agent: Agent, seconds: float) -> tuple[float, float, float]:
    """(mean RSS MiB, max RSS MiB, CPU %) of the agent over `seconds`, sampled every second."""
    rss = []
    _, cpu0 = usage(agent.pid)
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        rss.append(usage(agent.pid)[0])
        time.sleep(1)
    _, cpu1 = usage(agent.pid)
    return statistics.fmean(rss) / MIB, max(rss) / MIB, 100 * (cpu1 - cpu0) / (time.monotonic() - start)


def followers(agent: Agent, cluster, namespace: str, n: int, seconds: float) -> dict:
    before = sample(agent, seconds / 2)
    procs_ = [subprocess.Popen(kubectl(cluster, namespace, "logs", "-f", "ticker"), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL) for _ in range(n)]
    try:
        time.sleep(3)
        alive = sum(p.poll() is None for p in procs_)
        during = sample(agent, seconds)
    finally:
        for p in procs_:
            p.kill()
            p.wait()
    return {"before": before, "during": during, "alive": alive}


def aborted_sessions(agent: Agent, cluster, namespace: str, n: int, settle: float = 15) -> dict:
    """`n` sessions killed mid-stream, ten at a time: fds and RSS before and `settle` s after."""
    time.sleep(2)
    fds0, rss0 = agent.fds(), usage(agent.pid)[0]
    commands = [kubectl(cluster, namespace, "logs", "-f", "ticker"), kubectl(cluster, namespace, "exec", "web", "--",
                                                                            "sleep", "30")]
    done = 0
    while done < n:
        wave = [subprocess.Popen(commands[(done + i) % 2], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 stdin=subprocess.DEVNULL) for i in range(min(10, n - done))]
        time.sleep(1.0)  # long enough for the stream to be set up through the apiserver
        for p in wave:
            p.kill()
            p.wait()
        done += len(wave)
    time.sleep(settle)
    agent.check()
    return {"fds": (fds0, agent.fds()), "rss": (rss0 / MIB, usage(agent.pid)[0] / MIB)}


def measure(agent: Agent, cluster, client, args) -> None:
    namespace = f"{PREFIX}{agent.node.name}"
    make_namespace(client, namespace)
    for p in pods(namespace, agent.node.name, args.log_mib, args.forward_mib):
        client.create(p)
    wait_running(client, namespace, ["logger", "web", "ticker"])
    log(f"{agent.label}: pods Running; waiting for the {args.log_mib} MiB log")
    wait_logged(cluster, namespace)
    f = agent.figures
    runs = [timed_logs(cluster, namespace) for _ in range(3)]
    expected = args.log_mib * MIB + len("END\n")
    if any(size != expected for _, size in runs):
        raise procs.UpError(f"{agent.label}: kubectl logs returned {[s for _, s in runs]} bytes, not {expected}")
    f["logs_s"] = statistics.median(s for s, _ in runs)
    log(f"{agent.label}: logs {f['logs_s']:.2f}s; {args.execs} execs")
    latencies = exec_latencies(cluster, namespace, args.execs)
    f["exec_p50"], f["exec_p99"] = percentile(latencies, 50), percentile(latencies, 99)
    log(f"{agent.label}: exec p50 {f['exec_p50'] * 1000:.0f} ms; port-forward")
    f["forward_s"] = statistics.median(forward_downloads(cluster, namespace, args.forward_mib * MIB))
    log(f"{agent.label}: port-forward {f['forward_s']:.2f}s; {args.followers} followers")
    f["followers"] = followers(agent, cluster, namespace, args.followers, 20)
    log(f"{agent.label}: {args.aborted} aborted sessions")
    f["aborted"] = aborted_sessions(agent, cluster, namespace, args.aborted)
    agent.check()
    delete_namespaces(client, [namespace], timeout=120)


# --- the report ---------------------------------------------------------------------------------

def table(agents_: list[Agent], args) -> str:
    py, up = (a.figures for a in agents_)
    rows = []

    def row(title: str, a: float, b: float, fmt: str, ratio: bool = True) -> None:
        quotient = f"{a / b:.2f}×" if ratio and b else ""
        rows.append(f"| {title} | {fmt.format(a)} | {fmt.format(b)} | {quotient} |")

    mib = args.log_mib
    row(f"`kubectl logs`, {mib} MiB (s)", py["logs_s"], up["logs_s"], "{:.2f}")
    row(f"`kubectl logs`, {mib} MiB (MiB/s)", mib / py["logs_s"], mib / up["logs_s"], "{:.1f}")
    row("`kubectl exec -- true` p50 (ms)", 1000 * py["exec_p50"], 1000 * up["exec_p50"], "{:.0f}")
    row("`kubectl exec -- true` p99 (ms)", 1000 * py["exec_p99"], 1000 * up["exec_p99"], "{:.0f}")
    row(f"port-forward, {args.forward_mib} MiB (MiB/s)", args.forward_mib / py["forward_s"],
        args.forward_mib / up["forward_s"], "{:.1f}")
    for key, title in (("before", "no stream"), ("during", f"{args.followers} `logs -f`")):
        row(f"{title}: mean RSS (MiB)", py["followers"][key][0], up["followers"][key][0], "{:.1f}")
        row(f"{title}: max RSS (MiB)", py["followers"][key][1], up["followers"][key][1], "{:.1f}")
        row(f"{title}: CPU (%)", py["followers"][key][2], up["followers"][key][2], "{:.1f}")
    for key, title, fmt in (("fds", "open fds", "{:.0f}"), ("rss", "RSS (MiB)", "{:.1f}")):
        row(f"{args.aborted} aborted sessions: {title} before", py["aborted"][key][0], up["aborted"][key][0], fmt,
            False)
        row(f"{args.aborted} aborted sessions: {title} after", py["aborted"][key][1], up["aborted"][key][1], fmt,
            False)
    header = "| | pykubelet (pynode-n3) | upstream kubelet (pynode-n2) | pykubelet / upstream |\n| --- | ---: | ---: | ---: |\n"
    return header + "\n".join(rows) + "\n"


def report(args, agents_: list[Agent], tables: str, facts: dict) -> str:
    alive = ", ".join(f"{a.label} {a.figures['followers']['alive']}/{args.followers}" for a in agents_)
    return (
        "# The kubelet API: pykubelet vs upstream kubelet\n\n"
        f"`python -m bench.kubelet_api --log-mib {args.log_mib} --execs {args.execs} --forward-mib "
        f"{args.forward_mib} --followers {args.followers} --aborted {args.aborted}`, "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC. Both agents fresh, each on a node of its own "
        "with the same KubeletConfiguration (containerLogMaxSize raised so the log is one file), measured one "
        "after the other through the real apiserver with the real kubectl (whose own start-up, about the same "
        "for both, is in every figure).\n\n" + tables
        + f"\nFollowers still streaming when sampled: {alive}. RSS and CPU include the agent's children; "
        "100 % CPU is one core. Medians of 3 for logs and port-forward; exec percentiles are nearest-rank.\n\n"
        "| machine | |\n| --- | --- |\n" + "".join(f"| {k} | {v} |\n" for k, v in facts.items()))


# --- main ---------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.kubelet_api", description=__doc__.split("\n")[0])
    parser.add_argument("--log-mib", type=int, default=100, help="size of the log kubectl logs reads (default 100)")
    parser.add_argument("--execs", type=int, default=200, help="kubectl exec -- true calls (default 200)")
    parser.add_argument("--forward-mib", type=int, default=64, help="port-forward download size (default 64)")
    parser.add_argument("--followers", type=int, default=20, help="concurrent kubectl logs -f (default 20)")
    parser.add_argument("--aborted", type=int, default=500, help="sessions killed mid-stream (default 500)")
    args = parser.parse_args(argv)
    extra: list[Node] = []

    def body(cluster, upstream_node, client) -> str:
        ours = cluster.nodes[2]
        extra.append(ours)
        if leftovers(ours):
            remove_node(ours)
            delete_node_objects(client, ours.name)
        stale = [f"{PREFIX}{n.name}" for n in cluster.nodes[1:]]
        delete_namespaces(client, stale, timeout=120)
        log(f"bringing up {ours.name} (pykubelet) and {upstream_node.name} (upstream kubelet)")
        agents_ = [Agent("pykubelet", ours, f"pykubelet-{ours.name}", start_pykubelet(ours, args.log_mib)),
                   Agent("upstream kubelet", upstream_node, daemon(upstream_node),
                         start_upstream_kubelet(upstream_node, args.log_mib))]
        wait_ready(client, cluster, {a.node.name: a.daemon for a in agents_})
        for a in agents_:
            bootstrap.approve_serving_certificates(a.node)
        for a in agents_:
            measure(a, cluster, client, args)
        tables = table(agents_, args)
        print(tables, end="")
        return report(args, agents_, tables, machine_facts(cluster, agents_[0].pid))

    def teardown(client, node) -> None:
        try:
            delete_namespaces(client, [f"{PREFIX}{n.name}" for n in (node, *extra)], timeout=60)
        except ApiError as err:
            log(f"could not delete the benchmark's namespaces: {err}")
        for n in extra:
            remove_node(n)
            delete_node_objects(client, n.name)

    return run_beside_upstream(RESULTS, body, errors=(ApiError, subprocess.SubprocessError), teardown=teardown,
                               nodes=3)


if __name__ == "__main__":
    sys.exit(main())
