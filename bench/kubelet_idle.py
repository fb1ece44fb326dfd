"""pykubelet vs the upstream kubelet, idle: RSS and CPU side by side in one run.

    python -m bench.kubelet_idle [--duration 300] [--interval 5] [--warmup 30]

Needs the local cluster up (`make up`); its node pynode-n1 runs pykubelet. This
builds the upstream kubelet with the project's recipe, brings up a second local
node, pynode-n2 (its own network namespace, cgroup and containerd), runs the
upstream kubelet there with pykubelet's flags and KubeletConfiguration plus the
few settings it needs in this sandbox, waits until both nodes are Ready, and
samples both processes over the same wall-clock window. Neither node runs pods.
The second node is removed at the end, also after an error or Ctrl-C. The table
goes to stdout and, with the machine's facts, to bench/results/kubelet-idle.md.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import datetime
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil
import yaml

from localcluster import agents, cgroups, containerd, network, procs, settings
from localcluster import cluster as local
from localcluster.settings import Node

RESULTS = Path(__file__).resolve().parent / "results" / "kubelet-idle.md"
MIB = 1024 * 1024

# The host-wide sysctls the upstream kubelet insists on (setupKernelTunables in
# pkg/kubelet/cm/container_manager_linux.go): it rewrites any that differ, or, with
# protectKernelDefaults, refuses to start. See `isolated`.
KERNEL_TUNABLES = {
    "vm/overcommit_memory": 1, "vm/panic_on_oom": 0, "kernel/panic": 10, "kernel/panic_on_oops": 1,
    "kernel/keys/root_maxkeys": 1000000, "kernel/keys/root_maxbytes": 25000000,
}


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# --- the upstream kubelet on a second node ------------------------------------------------------

def daemon(node: Node) -> str:
    return f"kubelet-{node.name}"


def upstream_configuration(node: Node) -> dict:
    """pykubelet's KubeletConfiguration, plus what the upstream kubelet needs in this sandbox."""
    root = agents.kubelet_dir(node)
    return {
        **agents.kubelet_configuration(node),
        # The host mounts the cgroup v1 controllers (v2 only as the hybrid "unified" extra), and
        # since 1.35 the kubelet refuses to start on cgroup v1 unless told it may.
        "failCgroupV1": False,
        # Both default to host paths (/var/log/pods, /usr/libexec/kubernetes/kubelet-plugins/...)
        # that the kubelet creates at start; keep them in the node's directory, which cleanup removes.
        "podLogsDir": str(root / "pod-logs"),
        "volumePluginDir": str(root / "volume-plugins"),
        # Keeps pods that others create during the run (the test suite's, say) off this node, so
        # that it stays idle and no one's pod depends on a node that goes away.
        "registerWithTaints": [{"key": "pynode.dev/bench", "value": "upstream-kubelet", "effect": "NoSchedule"}],
    }


def isolated(node: Node, argv: list[str]) -> list[str]:
    """`argv` in a mount namespace of its own, in which the kubelet cannot change the host.

    There, the host-wide sysctls of KERNEL_TUNABLES read as the kubelet wants them (files
    bind-mounted over /proc/sys), so it writes none of them; and /var/log is an empty tmpfs,
    so the /var/log/containers it always creates (a fixed path) is not created on the host.
    Host mounts still propagate in (slave), none propagate out. Everything is exec'd, so the
    pid procs.start records is the kubelet's.
    """
    fake = node.dir / "sysctl"
    fake.mkdir(parents=True, exist_ok=True)
    steps = []
    for key, value in KERNEL_TUNABLES.items():
        (fake / key.replace("/", ".")).write_text(f"{value}\n")
        steps.append(f"mount --bind {shlex.quote(str(fake / key.replace('/', '.')))} /proc/sys/{key}")
    steps += ["mount -t tmpfs -o size=1m tmpfs /var/log", 'exec "$@"']
    return ["unshare", "--mount", "--propagation", "slave", "--", "sh", "-c", " && ".join(steps), "sh", *argv]


def start_upstream(node: Node) -> int:
    flags = agents.kubelet_flags(node)  # exactly pykubelet's flags; this writes pykubelet's config.yaml ...
    config = agents.kubelet_dir(node) / "config.yaml"  # ... which the upstream configuration replaces
    config.write_text(yaml.safe_dump(upstream_configuration(node), sort_keys=False))
    argv = isolated(node, [str(node.cluster.bin / "kubelet"), *flags])
    return procs.start(node.cluster, daemon(node), argv, netns=node.netns,
                       cgroup_procs=tuple(d / "cgroup.procs" for d in cgroups.recorded_dirs(node.dir)))


def bring_up(node: Node) -> None:
    network.ensure_node(node)
    containerd.start(node)
    containerd.import_images(node)
    start_upstream(node)


def leftovers(node: Node) -> bool:
    return node.dir.exists() or network.netns_exists(node.netns) or bool(procs.running(node.cluster, daemon(node)))


def remove_node(node: Node) -> None:
    """Stop one local node and remove what it put on the host: `down`, for one node (idempotent)."""
    cluster = node.cluster
    for name in procs.daemons(cluster):
        if name.endswith(f"-{node.name}") and name != f"containerd-{node.name}":
            procs.stop(cluster, name)
    containerd.stop(node)
    procs.kill_and_wait(sorted(procs.with_descendants(cgroups.pids(cgroups.recorded_dirs(node.dir)))), grace=0)
    procs.kill_and_wait(network.pids_in(node.netns), grace=5)
    local.unmount_all(node.dir)
    network.remove_node(node)
    stuck = cgroups.remove([node.dir])
    if stuck:
        log(f"could not remove cgroups (still in use?): {' '.join(map(str, stuck))}")
    shutil.rmtree(node.dir, ignore_errors=True)


def delete_node_objects(client, name: str) -> None:
    """Delete the Node, its Lease and the CSRs of its client certificates."""
    from cryptography import x509
    from lightkube import ApiError
    from lightkube.resources.certificates_v1 import CertificateSigningRequest
    from lightkube.resources.coordination_v1 import Lease
    from lightkube.resources.core_v1 import Node as NodeResource

    doomed = [(NodeResource, name, None), (Lease, name, "kube-node-lease")]
    for csr in client.list(CertificateSigningRequest):
        request = x509.load_pem_x509_csr(base64.b64decode(csr.spec.request))
        names = request.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        if names and names[0].value == f"system:node:{name}":
            doomed.append((CertificateSigningRequest, csr.metadata.name, None))
    for resource, object_name, namespace in doomed:
        try:
            client.delete(resource, object_name, **({"namespace": namespace} if namespace else {}))
        except ApiError as err:
            if err.status.code != 404:
                raise


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


def started_at(pid: int) -> float:
    """A process's wall-clock start, to 10 ms (psutil's create_time counts from a boot time in whole seconds)."""
    ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")


# --- measuring ----------------------------------------------------------------------------------

@dataclasses.dataclass
class Agent:
    label: str
    node: str
    daemon: str
    pid: int
    ready: tuple[float, float] | None = None  # process start -> node Ready, within these bounds (s)
    times: list[float] = dataclasses.field(default_factory=list)
    rss: list[int] = dataclasses.field(default_factory=list)
    cpu: list[float] = dataclasses.field(default_factory=list)

    def sample(self, cluster) -> None:
        """Its RSS and cumulative CPU time (user + system), children included, now."""
        if procs.running(cluster, self.daemon) != self.pid:
            raise procs.UpError(f"{self.daemon} (pid {self.pid}) stopped or was restarted during the measurement; "
                                f"see {procs.log_path(cluster, self.daemon)}")
        proc = psutil.Process(self.pid)
        times = proc.cpu_times()
        rss, cpu = proc.memory_info().rss, times.user + times.system + times.children_user + times.children_system
        for child in proc.children(recursive=True):
            try:
                rss += child.memory_info().rss
                cpu += sum(child.cpu_times()[:2])
            except psutil.NoSuchProcess:
                pass
        self.times.append(time.monotonic())
        self.rss.append(rss)
        self.cpu.append(cpu)

    def summary(self) -> dict[str, float | None]:
        wall = self.times[-1] - self.times[0]
        cpu = self.cpu[-1] - self.cpu[0]
        return {"ready": self.ready, "mean_rss": statistics.fmean(self.rss) / MIB, "max_rss": max(self.rss) / MIB,
                "cpu_s": cpu, "cpu_pct": 100 * cpu / wall}


def measure(cluster, kubelets: list[Agent], duration: float, interval: float) -> float:
    """Sample every agent every `interval` seconds, in the same ticks, for `duration` seconds.

    Returns how busy the machine's CPUs were meanwhile (%, everything on it included).
    """
    psutil.cpu_percent()
    start = time.monotonic()
    ticks = max(1, round(duration / interval))
    for tick in range(ticks + 1):
        time.sleep(max(0.0, start + tick * duration / ticks - time.monotonic()))
        for agent in kubelets:
            agent.sample(cluster)
        if tick and tick % max(1, round(60 / interval)) == 0:
            log(f"{tick * duration / ticks:.0f}s of {duration:.0f}s: " + ", ".join(
                f"{a.label} {a.rss[-1] / MIB:.1f} MiB" for a in kubelets))
    return psutil.cpu_percent()


# --- the report ---------------------------------------------------------------------------------

COLUMNS = [("start → Ready (s)", "ready", "{0[0]:.1f}–{0[1]:.1f}"), ("mean RSS (MiB)", "mean_rss", "{:.1f}"),
           ("max RSS (MiB)", "max_rss", "{:.1f}"), ("CPU (s)", "cpu_s", "{:.2f}"), ("CPU (%)", "cpu_pct", "{:.2f}")]


def table(kubelets: list[Agent]) -> str:
    def cell(fmt: str, value: float | None) -> str:
        return "n/a" if value is None else fmt.format(value)

    py, up = (a.summary() for a in kubelets)
    lines = ["| agent | node | " + " | ".join(title for title, _, _ in COLUMNS) + " |",
             "| --- | --- |" + " ---: |" * len(COLUMNS)]
    for agent, figures in zip(kubelets, (py, up)):
        lines.append(f"| {agent.label} | {agent.node} | "
                     + " | ".join(cell(fmt, figures[key]) for _, key, fmt in COLUMNS) + " |")
    ratios = [py[key] / up[key] if isinstance(py[key], float) and up[key] else None for _, key, _ in COLUMNS]
    lines.append("| **pykubelet / upstream** | | " + " | ".join(cell("{:.2f}×", r) for r in ratios) + " |")
    return "\n".join(lines) + "\n"


def machine_facts(cluster, pykubelet_pid: int) -> dict[str, str]:
    def output(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True).stdout.strip()

    return {
        "nproc": str(os.cpu_count()),
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "kernel": platform.release(),
        "cgroups": "v2" if Path("/sys/fs/cgroup/cgroup.controllers").exists() else "v1 (hybrid)",
        "Kubernetes": f"{cluster.version} (upstream kubelet: {output(str(cluster.bin / 'kubelet'), '--version')})",
        "containerd": output("containerd", "--version"),
        # The interpreter pykubelet runs on, from its own command line.
        "python": output(psutil.Process(pykubelet_pid).cmdline()[0], "--version"),
        "pynode": output("git", "-C", str(settings.REPO), "describe", "--always", "--dirty"),
    }


def report(kubelets: list[Agent], facts: dict[str, str], args, pods: dict[str, int], busy: float) -> str:
    ticks = len(kubelets[0].times)
    return (
        "# pykubelet vs upstream kubelet, idle\n\n"
        f"`python -m bench.kubelet_idle --duration {args.duration:g} --interval {args.interval:g} "
        f"--warmup {args.warmup:g}`, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC: "
        f"{ticks} samples of each agent over the same {args.duration:g} s, after both nodes were Ready and a "
        f"{args.warmup:g} s warm-up. Pods on the nodes at the end: "
        + ", ".join(f"{name} {count}" for name, count in pods.items())
        + f". The machine's CPUs were {busy:.0f} % busy meanwhile (everything on it).\n\n"
        + table(kubelets)
        + "\nRSS includes children (neither agent had any). CPU (%) is CPU seconds (user + system, reaped "
        "children included) over wall seconds: 100 % is one core. start → Ready is the Node's Ready "
        "lastTransitionTime minus the process start time; the API keeps that time in whole seconds, hence "
        "a range and no ratio.\n\n"
        "| machine | |\n| --- | --- |\n" + "".join(f"| {k} | {v} |\n" for k, v in facts.items())
    )


# --- main ---------------------------------------------------------------------------------------

def run(cluster, client, args) -> str:
    """Bring up the second node, measure both agents; return the report."""
    ours, node = cluster.nodes
    if count := pods_on(client, ours.name):
        raise procs.UpError(f"{ours.name} has {count} pod(s) (kubectl get pods -A --field-selector "
                            f"spec.nodeName={ours.name}) and this benchmark measures idle kubelets; remove them "
                            "first (the sample workload `up` starts: kubectl delete namespace pynode-sample)")
    log(f"bringing up {node.name} ({node.ip}) with the upstream kubelet")
    bring_up(node)
    kubelets = [Agent(label, n.name, name, procs.running(cluster, name))
                for label, n, name in (("pykubelet", ours, f"pykubelet-{ours.name}"),
                                       ("upstream kubelet", node, daemon(node)))]
    wait_ready(client, cluster, {a.node: a.daemon for a in kubelets})
    for agent in kubelets:
        # Ready at some instant of the second the API shows; before the start: restarted while Ready.
        since = ready_since(client, agent.node).timestamp() - started_at(agent.pid)
        agent.ready = (max(0.0, since), since + 1) if since + 1 > 0 else None
    log(f"both nodes Ready; warming up {args.warmup:g}s, then measuring {args.duration:g}s every {args.interval:g}s")
    time.sleep(args.warmup)
    busy = measure(cluster, kubelets, args.duration, args.interval)
    pods = {a.node: pods_on(client, a.node) for a in kubelets}
    if any(pods.values()):
        log(f"warning: pods arrived during the run ({pods}); the figures are not those of idle kubelets")
    print(table(kubelets), end="")
    return report(kubelets, machine_facts(cluster, kubelets[0].pid), args, pods, busy)


def cleanup(node: Node, client) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # let the cleanup finish
    log(f"removing {node.name}")
    remove_node(node)
    try:
        delete_node_objects(client, node.name)
    except Exception as err:  # noqa: BLE001 - the apiserver may be gone; say so and go on
        log(f"could not delete the Node, Lease or CSRs of {node.name}: {err}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.kubelet_idle", description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=300, help="seconds to measure (default 300)")
    parser.add_argument("--interval", type=float, default=5, help="seconds between samples (default 5)")
    parser.add_argument("--warmup", type=float, default=30, help="seconds to wait after both are Ready (default 30)")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.interval <= 0 or args.warmup < 0:
        parser.error("--duration and --interval must be positive, --warmup not negative")

    base = settings.load()
    stopped = [name for name, ok in local.status(base).items() if not ok]
    if stopped:
        print(f"bench: the local cluster is not up ({', '.join(stopped)} not running); start it with `make up`",
              file=sys.stderr)
        return 1
    cluster = dataclasses.replace(base, node_count=2)
    node = cluster.nodes[1]
    from lightkube import Client, KubeConfig

    client = Client(config=KubeConfig.from_file(str(cluster.admin_kubeconfig)))
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # clean up on each as on Ctrl-C ...
        if signal.getsignal(sig) is not signal.SIG_IGN:  # ... unless we were told to ignore it (nohup, &)
            signal.signal(sig, signal.default_int_handler)
    try:
        log("building the upstream kubelet (cached after the first time)")
        local.build_upstream(cluster, ["kubelet"])
        if leftovers(node):
            log(f"removing the {node.name} an earlier run left behind")
            remove_node(node)
            delete_node_objects(client, node.name)
        text = run(cluster, client, args)
    except (procs.UpError, psutil.NoSuchProcess) as err:
        print(f"bench: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    finally:
        cleanup(node, client)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(text)
    log(f"written to {RESULTS.relative_to(settings.REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
