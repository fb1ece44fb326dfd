"""`down` stops everything `up` started and leaves no host state behind.

Named to run last: it takes the cluster down (and brings it back if it was up
before this test session, so a developer's cluster survives `make test`).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from localcluster import cgroups, procs
from localcluster import cluster as local
from localcluster import settings

pytestmark = pytest.mark.integration


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmd:
                found.append(f"{proc.name}: {cmd}")
    return found


def _what_holds(dirs: list[Path]) -> str:
    """The deepest cgroups left below `dirs`, each with the processes and threads still in it (id, name, state)."""
    below = {p for d in dirs if d.is_dir() for p in [d, *d.rglob("*")] if p.is_dir()}
    leaves = sorted(p for p in below if not any(q.parent == p for q in below))
    lines = []
    for leaf in leaves[:20]:
        inside = sorted(cgroups.pids([leaf]) | cgroups.threads([leaf]))  # a thread may outlive its leader
        lines.append(f"{leaf}: " + (", ".join(f"{task} ({procs.describe(task)})" for task in inside)
                                    or "no process"))
    return "cgroups left:\n" + "\n".join(lines)


def test_down_leaves_no_process_and_no_network_state(cluster, cluster_was_up):
    cgroup_dirs = [d for node in cluster.nodes
                   for d in cgroups.recorded_dirs(node.dir) + cgroups.created_dirs(node.dir)]
    assert cgroup_dirs
    local.down(cluster)
    try:
        assert _processes_mentioning(str(cluster.state)) == []
        assert _processes_mentioning(str(cluster.bin)) == []
        netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert not [n for n in cluster.nodes if n.netns in netns]
        links = json.loads(subprocess.run(["ip", "-j", "link"], capture_output=True, text=True).stdout)
        names = {link["ifname"] for link in links}
        assert cluster.bridge not in names
        assert not [n for n in cluster.nodes if n.host_veth in names]
        routes = subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True).stdout
        assert str(cluster.pod_cidr) not in routes and str(cluster.service_cidr) not in routes
        mounts = Path("/proc/self/mountinfo").read_text()
        assert str(cluster.state) not in mounts
        assert not cluster.state.exists()
        left = [d for d in cgroup_dirs if d.exists()]
        assert left == [], _what_holds(left)
        # A second down has nothing left to do and does not fail.
        local.down(cluster)
    finally:
        if cluster_was_up:
            local.up(settings.load())
