"""The node conformance harness's pure parts: the suite's command line, the kubelet it finds, the skips."""

from __future__ import annotations

import re

import yaml

from localcluster import machine
from localcluster import node_conformance as nc


def test_the_kubelet_for_pynode_execs_pykubelet_with_every_flag():
    script = nc.kubelet_wrapper()
    assert script.startswith("#!/bin/sh\n")
    assert script.rstrip().splitlines()[-1] == 'exec /opt/pynode/bin/pykubelet "$@"'


def test_suite_argv_runs_ginkgo_over_e2e_node_with_the_machine_paths():
    argv = nc.suite_argv(node_name="pynode-m60", node_ip="10.221.0.60", agents="pynode", focus=nc.DEFAULT_FOCUS,
                         skip="x", processes=3)
    assert argv[0] == "/opt/node-conformance/ginkgo" and "--procs=3" in argv
    split = argv.index("--")
    assert argv[split - 1] == "/opt/node-conformance/e2e_node.test"
    ginkgo, suite = argv[:split], argv[split + 1:]
    assert r"--focus=\[NodeConformance\]" in ginkgo and "--skip=x" in ginkgo
    assert "--json-report=report.json" in ginkgo
    assert "--k8s-bin-dir=/opt/node-conformance/bin" in suite
    assert "--prepull-images=false" in suite  # pre-pulling needs a registry
    assert "--node-name=pynode-m60" in suite
    assert "--kubelet-flags=--node-ip=10.221.0.60" in suite


def test_the_upstream_kubelet_is_allowed_cgroup_v1():
    assert nc.kubelet_flags("upstream", "10.221.0.60") == ["--node-ip=10.221.0.60", "--fail-cgroupv1=false"]
    assert "--fail-cgroupv1=false" not in nc.kubelet_flags("pynode", "10.221.0.60")
    argv = nc.suite_argv(node_name="m", node_ip="10.0.0.1", agents="upstream", focus="f", skip="", processes=1)
    assert "--kubelet-flags=--node-ip=10.0.0.1 --fail-cgroupv1=false" in argv
    assert not any(a.startswith("--skip=") for a in argv)


def test_skip_regex_holds_upstreams_default_skip_ours_and_the_callers():
    regex = nc.skip_regex("extra one")
    assert regex.startswith(nc.UPSTREAM_SKIP + "|")
    assert regex.endswith("|extra one")
    assert nc.skip_regex() == "|".join([nc.UPSTREAM_SKIP, *nc.SKIPS])
    assert nc.skip_regex("") == nc.skip_regex()
    for pattern in nc.SKIPS:
        re.compile(pattern)
    assert re.search(regex, "[sig-node] Container Runtime ... [Serial] x")
    assert not re.search(regex, "[sig-node] Downward API should provide pod name [NodeConformance]")


def test_every_skip_has_a_reason_in_the_docstring():
    doc = " ".join(nc.__doc__.split())
    for pattern, reason in nc.SKIPS.items():
        assert reason and pattern in doc, pattern


def test_playbook_installs_containerd_and_pynode_without_joining():
    (play,) = yaml.safe_load(machine.playbook(nc.ROLES))
    assert play["hosts"] == "nodes"
    assert [r["role"] for r in play["roles"]] == ["containerd", "pynode"]


def test_results_file_names_the_day_and_the_agents():
    path = nc.results_file("upstream", day="2026-12-07")
    assert path.name == "node-conformance-2026-12-07-upstream.md"
    assert path.parent.name == "results" and path.parent.parent.name == "bench"


def test_each_agent_has_a_machine_and_pod_subnet_of_its_own():
    indexes = {index for index, _ in nc.MACHINES.values()}
    subnets = {subnet for _, subnet in nc.MACHINES.values()}
    assert set(nc.MACHINES) == set(nc.AGENTS) and len(indexes) == len(subnets) == len(nc.AGENTS)
    assert 50 not in indexes  # make node-test's machine
