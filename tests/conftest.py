"""Fixtures shared by the test suite.

`cluster` gives integration tests the running local cluster (starting it when
it is not up, and stopping it at the end if this session started it);
`admin` is a lightkube client with cluster-admin rights; `agents` starts
pykubelet/pyproxy on a local node and always stops them afterwards.

Two test sessions on one machine share the one local cluster, so a session that
needs the cluster first takes an exclusive lock beside its state directory and
waits for any other session to finish; otherwise one session's `down` or proxy
mode switch pulls the cluster from under the other.
"""

from __future__ import annotations

import fcntl
import os
import sys

import pytest

from localcluster import agents as agent_runner
from localcluster import cluster as local
from localcluster import settings


def pytest_collection_modifyitems(config, items):
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="integration tests need root")
        for item in items:
            if "integration" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def cluster_lock():
    config = settings.load()
    path = config.state.with_name(config.state.name + ".lock")
    with open(path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            print(f"\nwaiting for the test session that holds {path} ({lock.read().strip() or 'unknown'})",
                  file=sys.stderr, flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}\n")
        lock.flush()
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
    started: list[agent_runner.Agent] = []

    def start(node, program, *flags, instance="test"):
        agent = agent_runner.start(node, program, *flags, instance=instance)
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.stop()
