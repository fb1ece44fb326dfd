"""Fixtures shared by the test suite.

`cluster` gives integration tests the running local cluster (starting it when
it is not up, and stopping it at the end if this session started it);
`admin` is a lightkube client with cluster-admin rights; `agents` starts
pykubelet/pyproxy on a local node and always stops them afterwards.

A session that needs the cluster first takes the cluster's lock
(`localcluster.lock`), so it waits for another test session or a conformance
run on the same machine instead of pulling the cluster from under it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from localcluster import agents as agent_runner
from localcluster import cluster as local
from localcluster import lock
from localcluster import settings
from pykubelet.volumes import mounts


def pytest_collection_modifyitems(config, items):
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="integration tests need root")
        for item in items:
            if "integration" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def cluster_lock():
    with lock.holding(settings.load(), "a test session") as path:
        yield path


@pytest.fixture(scope="session")
def cluster_was_up(cluster_lock) -> bool:
    return all(local.status(settings.load()).values())


@pytest.fixture(scope="session")
def cluster(cluster_was_up):
    config = settings.load()
    local.up(config)
    yield config
    if not cluster_was_up:
        local.down(config)


@pytest.fixture(scope="session")
def node(cluster):
    return cluster.nodes[0]


@pytest.fixture(scope="session")
def admin(cluster):
    from lightkube import Client, KubeConfig

    return Client(config=KubeConfig.from_file(str(cluster.admin_kubeconfig)))


@pytest.fixture
def agents(cluster):
    """Call `agents(node, "pykubelet", "--flag", ..., instance="x")`; every agent started is stopped at teardown.

    The cluster's own pykubelet already runs on each node; `instance` names a second copy.
    """
    started: list[tuple[agent_runner.Agent, tuple[str, ...]]] = []

    def start(node, program, *flags, instance="test"):
        agent = agent_runner.start(node, program, *flags, instance=instance)
        started.append((agent, flags))
        return agent

    yield start
    for agent, _ in started:
        agent.stop()
    for _, flags in started:  # a test pykubelet's own root dir (bound onto itself to share it) goes unmounted
        root = next((Path(f.split("=", 1)[1]) for f in flags if f.startswith("--root-dir=")), None)
        if root is not None and cluster.state not in root.parents:
            mounts.unmount_all(root)
