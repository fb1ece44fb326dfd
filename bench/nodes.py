"""What the benchmarks share: a second local node running the upstream kubelet, and measuring agents.

The local cluster's node pynode-n1 runs pykubelet. `run_beside_upstream` adds pynode-n2 with the
upstream kubelet (localcluster/upstream_node.py) for the length of a benchmark; `cleanup` removes it
again, with its Node, Lease and CSRs.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from localcluster import lock, procs, settings
from localcluster import cluster as local
from localcluster.cluster import delete_node_objects, remove_node, remove_node_and_objects
from localcluster.cluster import node_leftovers as leftovers
from localcluster.settings import Node

MIB = 1024 * 1024


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def cleanup(node: Node, client) -> None:
    """Remove the second node and its API objects; Ctrl-C and friends wait until this is done."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # let the cleanup finish
    log(f"removing {node.name}")
    remove_node_and_objects(node, client)


def prepare(node: Node, client) -> None:
    """Build the upstream kubelet (cached after the first time); remove a `node` a killed run left behind."""
    log("building the upstream kubelet (cached after the first time)")
    local.build_upstream(node.cluster, ["kubelet"])
    if leftovers(node):
        log(f"removing the {node.name} an earlier run left behind")
        remove_node(node)
        delete_node_objects(client, node.name)


def interrupt_on_signals() -> None:
    """SIGTERM and SIGHUP raise KeyboardInterrupt, as Ctrl-C does, so that `finally` cleans up ..."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is not signal.SIG_IGN:  # ... unless we were told to ignore it (nohup, &)
            signal.signal(sig, signal.default_int_handler)


def cluster_with_more_nodes(count: int = 2):
    """The running local cluster's settings with `count` nodes, or None (having said why) if it is not up."""
    base = settings.load()
    stopped = [name for name, ok in local.status(base).items() if not ok]
    if stopped:
        print(f"bench: the local cluster is not up ({', '.join(stopped)} not running); start it with `make up`",
              file=sys.stderr)
        return None
    return dataclasses.replace(base, node_count=count)


def admin_client(cluster):
    from lightkube import Client, KubeConfig

    return Client(config=KubeConfig.from_file(str(cluster.admin_kubeconfig)))


# --- the API ------------------------------------------------------------------------------------

def ready_since(client, name: str) -> datetime.datetime | None:
    """When node `name` became Ready, or None while it is not (or not registered)."""
    from lightkube import ApiError
    from lightkube.resources.core_v1 import Node as NodeResource

    try:
        conditions = client.get(NodeResource, name).status.conditions or []
    except ApiError:
        return None
    return next((c.lastTransitionTime for c in conditions if c.type == "Ready" and c.status == "True"), None)


def wait_ready(client, cluster, kubelets: dict[str, str], timeout: float = 120) -> None:
    """Wait until every node is Ready; `kubelets` maps a node's name to its kubelet's daemon name."""
    deadline = time.monotonic() + timeout
    pending = dict(kubelets)
    while pending:
        for node_name, name in list(pending.items()):
            if not procs.running(cluster, name):
                raise procs.UpError(f"{name} is not running; see {procs.log_path(cluster, name)}")
            if ready_since(client, node_name):
                del pending[node_name]
        if pending and time.monotonic() > deadline:
            raise procs.UpError(" ".join(f"{n} not Ready after {timeout:.0f}s; see {procs.log_path(cluster, d)}."
                                         for n, d in pending.items()))
        time.sleep(0.5)


def pods_on(client, name: str) -> int:
    from lightkube.resources.core_v1 import Pod

    return len(list(client.list(Pod, namespace="*", fields={"spec.nodeName": name})))


# --- processes ----------------------------------------------------------------------------------

def started_at(pid: int) -> float:
    """A process's wall-clock start, to 10 ms (psutil's create_time counts from a boot time in whole seconds)."""
    ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")


def usage(pid: int) -> tuple[int, float]:
    """A process's RSS (bytes) and CPU time so far (user + system, s), its children included.

    CPU includes the children it has reaped (a `mount` it ran, say) and those still running.
    """
    proc = psutil.Process(pid)
    times = proc.cpu_times()
    rss, cpu = proc.memory_info().rss, times.user + times.system + times.children_user + times.children_system
    for child in proc.children(recursive=True):
        try:
            rss += child.memory_info().rss
            cpu += sum(child.cpu_times()[:2])
        except psutil.NoSuchProcess:
            pass
    return rss, cpu


def machine_facts(cluster, pykubelet_pid: int) -> dict[str, str]:
    def output(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True).stdout.strip()

    return {
        "nproc": str(os.cpu_count()),
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "kernel": platform.release(),
        "cgroups": "v2" if Path("/sys/fs/cgroup/cgroup.controllers").exists() else "v1 (hybrid)",
        "Kubernetes": f"{cluster.version} (upstream kubelet: {output(str(cluster.bin / 'kubelet'), '--version')})",
        # The containerd the nodes run (the local cluster builds 2.x; PYNODE_CONTAINERD=debian keeps Debian's).
        "containerd": output(cluster.nodes[0].runtime_program("containerd") or "containerd", "--version"),
        # The interpreter pykubelet runs on, from its own command line.
        "python": output(psutil.Process(pykubelet_pid).cmdline()[0], "--version"),
        "pynode": output("git", "-C", str(settings.REPO), "describe", "--always", "--dirty"),
    }


def run_beside_upstream(results: Path, body, *, errors: tuple = (), teardown=None, nodes: int = 2) -> int:
    """The frame of a benchmark: add pynode-n2 with the upstream kubelet, run `body(cluster, node, client)`
    (which returns the report), always remove pynode-n2 (after `teardown(client, node)` if given), and
    write the report to `results`. Returns the exit status. With `nodes` > 2, the cluster settings
    `body` gets name further nodes, which it brings up and its teardown removes.

    The whole run holds the cluster's lock (localcluster.lock), as a test session or a conformance run
    does, so that none of them runs on the cluster meanwhile: they would disturb the figures, and a
    test session's `down` would pull the nodes from under the benchmark."""
    name = f"a benchmark (python -m bench.{Path(sys.argv[0]).stem})"
    try:
        with lock.holding(settings.load(), name):
            return _run_beside_upstream(results, body, errors=errors, teardown=teardown, nodes=nodes)
    except KeyboardInterrupt:  # while waiting for the lock
        print("bench: interrupted", file=sys.stderr)
        return 130


def _run_beside_upstream(results: Path, body, *, errors: tuple, teardown, nodes: int) -> int:
    cluster = cluster_with_more_nodes(nodes)
    if cluster is None:
        return 1
    node = cluster.nodes[1]
    client = admin_client(cluster)
    interrupt_on_signals()
    try:
        prepare(node, client)
        text = body(cluster, node, client)
    except (procs.UpError, psutil.NoSuchProcess, *errors) as err:
        print(f"bench: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    finally:
        if teardown is not None:
            teardown(client, node)
        cleanup(node, client)
    results.parent.mkdir(exist_ok=True)
    results.write_text(text)
    log(f"written to {results.relative_to(settings.REPO)}")
    return 0

