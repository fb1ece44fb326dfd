"""`up` after the machine went away under a running cluster: every process killed at once, the kernel's state
(network namespaces, links, routes, mounts, cgroups) gone, the files left as they were.

That is what a reboot, or a machine restored from a snapshot, hands to `make up`. Named to run near the end,
beside the module that takes the cluster down: it restarts every pod of the cluster.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from localcluster import cgroups, network, procs, sample, settings
from localcluster import cluster as local

pytestmark = pytest.mark.integration


def _restart_counts(cluster) -> dict[str, int]:
    pods = json.loads(procs.kubectl(cluster, "-n", sample.NAMESPACE, "get", "pods", "-o", "json").stdout)["items"]
    return {p["metadata"]["name"]: sum(s.get("restartCount", 0) for s in p["status"].get("containerStatuses", []))
            for p in pods if p["metadata"].get("deletionTimestamp") is None}


def _pull_the_plug(cluster) -> None:
    node_dirs = [node.dir for node in cluster.nodes]
    doomed = procs.mentioning(str(cluster.state)) | procs.mentioning(str(cluster.bin))
    doomed |= cgroups.pids([d for node_dir in node_dirs for d in cgroups.recorded_dirs(node_dir)])
    doomed |= {pid for node in cluster.nodes for pid in network.pids_in(node.netns)}
    for pid in procs.with_descendants(doomed):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while [p for p in doomed if procs.alive(p)] and time.monotonic() < deadline:
        time.sleep(0.1)
    local.unmount_all(cluster.state)
    for node in cluster.nodes:
        network.remove_node(node)
    network.remove_bridge(cluster)
    cgroups.remove(node_dirs)


def test_up_after_a_reboot_restarts_every_pod_in_a_new_sandbox(cluster):
    before = _restart_counts(cluster)
    assert before
    _pull_the_plug(cluster)
    assert not any(procs.running(cluster, name) for name in procs.daemons(cluster))

    local.up(settings.load())  # itself checks that the sample answers through its NodePort again
    after = _restart_counts(cluster)
    assert set(after) == set(before)
    assert all(after[name] == before[name] + 1 for name in before), (before, after)
