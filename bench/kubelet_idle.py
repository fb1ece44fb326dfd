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
import dataclasses
import datetime
import statistics
import sys
import time
from pathlib import Path

import psutil

from localcluster import procs
from localcluster.upstream_node import bring_up, daemon

from .nodes import (MIB, log, machine_facts, pods_on, ready_since, run_beside_upstream, started_at, usage,
                    wait_ready)

RESULTS = Path(__file__).resolve().parent / "results" / "kubelet-idle.md"


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
        rss, cpu = usage(self.pid)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.kubelet_idle", description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=300, help="seconds to measure (default 300)")
    parser.add_argument("--interval", type=float, default=5, help="seconds between samples (default 5)")
    parser.add_argument("--warmup", type=float, default=30, help="seconds to wait after both are Ready (default 30)")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.interval <= 0 or args.warmup < 0:
        parser.error("--duration and --interval must be positive, --warmup not negative")

    return run_beside_upstream(RESULTS, lambda cluster, node, client: run(cluster, client, args))


if __name__ == "__main__":
    sys.exit(main())
