"""Faults on the node, short (issue 15): kill -9 pykubelet, pyproxy (under traffic) and containerd, and the
apiserver away for 20 s, against 10 pods of bench.faults' mixed workload.

Each test runs the benchmark's own scenario (bench/faults.py) and asserts every check it makes: 0 restarts,
the same container IDs, every pod status as before, the node Ready, the Lease renewed soon after the apiserver
returns, no failed request while pyproxy restarts, pyproxy's rules identical. The scenario restores the cluster
whatever happens. `python -m bench.faults` runs the same with 100 pods and more scenarios.
"""

from __future__ import annotations

import pytest

from bench import faults

ARGS = faults.parser().parse_args(["--outage", "20", "--rate", "200", "--traffic", "8", "--catchup", "30"])


@pytest.fixture(scope="module")
def env(cluster, namespace):
    env = faults.environment(cluster, namespace)
    faults.deploy(env, 10, timeout=150)
    yield env
    faults.restore(cluster)


def passes(env, scenario: str) -> None:
    result = faults.run_scenario(env, scenario, ARGS)
    assert result.verdict == "PASS", faults.details(result)


def test_kill_pykubelet(env):
    passes(env, "kubelet-kill")


def test_kill_pyproxy_under_traffic(env):
    passes(env, "proxy-kill")


def test_kill_containerd(env):
    passes(env, "containerd-kill")


def test_apiserver_away(env):
    passes(env, "apiserver-outage")
