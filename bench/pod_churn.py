"""Does an agent keep memory of pods it no longer runs? RSS over many pod create/delete cycles, pykubelet and the
upstream kubelet, in one run.

    python -m bench.pod_churn [--pods 1000] [--batch 50] [--settle 15] [--pykubelet-only]

Needs the local cluster up (`make up`). As bench.pod_startup does, it brings up pynode-n2 with the upstream
kubelet and binds pods to a node with spec.nodeName. For each agent in turn (never both at once) it runs
cycles of `--batch` busybox pods: create them in a namespace of their own, wait until all are Running and
ready, delete the namespace and wait until it is gone, wait `--settle` seconds, and sample the agent's RSS (the
mean of 5 samples a second apart). A first cycle warms the agent up and is not counted; then cycles until
`--pods` pods have come and gone. The figures: RSS after the warm-up and after each quarter of the pods, the
growth from the first to the last sample, and the least-squares slope in KiB per 100 pods. The table goes to
stdout and to bench/results/pod-churn.md.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

from lightkube import ApiError, KubeConfig
from lightkube.resources.core_v1 import Namespace

from localcluster import procs

from .nodes import MIB, log, machine_facts, run_beside_upstream, usage
from .pod_startup import (Agent, Batch, both_agents, clear_earlier_runs, delete_namespaces, make_namespace, pod,
                          remove_leftovers, start_pods)

RESULTS = Path(__file__).resolve().parent / "results" / "pod-churn.md"
PREFIX = "bench-pod-churn-"


def ours(client) -> list[str]:
    return [ns.metadata.name for ns in client.list(Namespace) if ns.metadata.name.startswith(PREFIX)]


def rss_mib(agent: Agent, samples: int = 5) -> float:
    values = []
    for _ in range(samples):
        agent.check()
        values.append(usage(agent.pid)[0] / MIB)
        time.sleep(1)
    return statistics.fmean(values)


def cycle(cluster, client, agent: Agent, index: int, n: int, settle: float) -> None:
    """One batch of n pods on the agent's node: created, all Running, deleted, gone; then `settle` seconds."""
    namespace = f"{PREFIX}{agent.node.name}-{index}"
    make_namespace(client, namespace)
    batch = Batch(n, agent)
    config = KubeConfig.from_file(str(cluster.admin_kubeconfig))
    asyncio.run(start_pods(config, batch, namespace, [pod(f"pod-{i:03d}", namespace, agent.node.name)
                                                      for i in range(n)], timeout=120 + 2 * n))
    if not batch.complete:
        raise procs.UpError(f"{agent.label}: only {len(batch.running)}/{n} pods Running in cycle {index}")
    _, left = delete_namespaces(client, [namespace], timeout=180)
    if left:
        raise procs.UpError(f"{agent.label}: {left}")
    time.sleep(settle)


def churn(cluster, client, agent: Agent, args) -> list[tuple[int, float]]:
    """(pods gone through so far, RSS MiB) after the warm-up cycle and after each cycle after it."""
    log(f"{agent.label}: warm-up cycle of {args.batch} pods")
    cycle(cluster, client, agent, 0, args.batch, args.settle)
    samples = [(0, rss_mib(agent))]
    cycles = max(1, round(args.pods / args.batch))
    for index in range(1, cycles + 1):
        cycle(cluster, client, agent, index, args.batch, args.settle)
        samples.append((index * args.batch, rss_mib(agent)))
        log(f"{agent.label}: {samples[-1][0]} pods gone through, RSS {samples[-1][1]:.1f} MiB")
    return samples


def slope(samples: list[tuple[int, float]]) -> float:
    """Least-squares growth in KiB per 100 pods."""
    xs, ys = [x for x, _ in samples], [y for _, y in samples]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    return 0.0 if not spread else sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / spread * 100 * 1024


def table(results: dict[str, list[tuple[int, float]]]) -> str:
    labels = list(results)
    first = results[labels[0]]
    quarters = sorted({first[round(q * (len(first) - 1) / 4)][0] for q in range(5)})
    lines = ["| RSS (MiB) after … pods came and went | " + " | ".join(labels) + " |",
             "| --- |" + " --- |" * len(labels)]
    for count in quarters:
        cells = [f"{dict(results[label]).get(count, float('nan')):.1f}" for label in labels]
        lines.append(f"| {count} {'(after the warm-up cycle)' if count == 0 else ''} | " + " | ".join(cells) + " |")
    growth = [f"{100 * (r[-1][1] - r[0][1]) / r[0][1]:+.1f} %" for r in results.values()]
    lines.append("| growth, first → last sample | " + " | ".join(growth) + " |")
    lines.append("| slope (KiB per 100 pods) | " + " | ".join(f"{slope(r):+.0f}" for r in results.values()) + " |")
    return "\n".join(lines) + "\n"


def run(cluster, client, args) -> str:
    agents = both_agents(cluster, client)[:1 if args.pykubelet_only else 2]
    results = {agent.label: churn(cluster, client, agent, args) for agent in agents}
    text = table(results)
    print(text, end="")
    facts = machine_facts(cluster, agents[0].pid)
    return (f"# Pod churn: RSS over {args.pods} pods created and deleted, {args.batch} at a time\n\n"
            f"`python -m bench.pod_churn --pods {args.pods} --batch {args.batch} --settle {args.settle:g}"
            f"{' --pykubelet-only' if args.pykubelet_only else ''}`\n\n"
            + text + "\n" + "\n".join(f"- {k}: {v}" for k, v in facts.items()) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pod_churn", description=__doc__.split("\n")[0])
    parser.add_argument("--pods", type=int, default=1000, help="pods to create and delete after the warm-up")
    parser.add_argument("--batch", type=int, default=50, help="pods per cycle (default 50)")
    parser.add_argument("--settle", type=float, default=15, help="seconds between a cycle's end and the sample")
    parser.add_argument("--pykubelet-only", action="store_true", help="leave the upstream kubelet's cycles out")
    args = parser.parse_args(argv)

    def body(cluster, node, client) -> str:
        clear_earlier_runs(client, ours, timeout=120)
        return run(cluster, client, args)

    return run_beside_upstream(RESULTS, body, errors=(ApiError,), teardown=remove_leftovers(ours, timeout=120))


if __name__ == "__main__":
    raise SystemExit(main())
