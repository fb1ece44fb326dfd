"""The conformance harness: how ginkgo's JSON report becomes the per-sig summary, and the recipe's pins."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from localcluster import conformance
from localcluster.settings import UPSTREAM_DIR, kubernetes_version


def spec(texts, leaf, state, message="", node_type="It", file="pods.go", line=42):
    report = {"ContainerHierarchyTexts": texts, "LeafNodeText": leaf, "LeafNodeType": node_type, "State": state}
    if message:
        report["Failure"] = {"Message": message, "Location": {"FileName": f"/go/test/e2e/{file}", "LineNumber": line}}
    return report


REPORT = [{"SuiteDescription": "Kubernetes e2e suite", "SpecReports": [
    spec([], "", "passed", node_type="SynchronizedBeforeSuite"),
    spec(["[sig-node] Pods"], "should be submitted and removed [NodeConformance] [Conformance]", "passed"),
    spec(["[sig-node] Pods"], "should get a host IP [NodeConformance] [Conformance]", "failed",
         "\n  Timed out after 300s.\n  pod never ran\n"),
    spec(["[sig-node] Container Runtime", "blackbox test"], "should report termination message [Conformance]",
         "timedout", "spec timeout", file="runtime.go", line=7),
    spec(["[sig-network] DNS"], "should provide DNS for the cluster [Conformance]", "passed"),
    spec(["[sig-network] Services"], "should serve a basic endpoint [Conformance]", "skipped",
         "Only supported for providers [gce]"),
    spec(["[sig-network] Services"], "left out by the focus", "skipped"),
    spec(["[sig-storage] Projected"], "is pending", "pending"),
    spec(["[sig-storage] Projected"], "was skipped at run time", "skipped", "needs 2 nodes"),
    spec(["Untagged"], "an odd spec", "panicked", "boom"),
]}]


def test_counts_per_sig_fold_ginkgo_states_into_passed_failed_skipped():
    summary = conformance.summarize(REPORT)
    assert dict(summary.counts["sig-node"]) == {"passed": 1, "failed": 2}
    assert dict(summary.counts["sig-network"]) == {"passed": 1, "skipped": 1}
    assert dict(summary.counts["sig-storage"]) == {"skipped": 1}  # the pending one never started
    assert dict(summary.counts["other"]) == {"failed": 1}
    assert summary.total == {"passed": 2, "failed": 3, "skipped": 2}
    assert summary.suite_failures == []  # a passed BeforeSuite is not a spec and not a failure
    assert summary.passed == ["[sig-node] Pods should be submitted and removed [NodeConformance] [Conformance]",
                              "[sig-network] DNS should provide DNS for the cluster [Conformance]"]


def test_each_failure_keeps_its_spec_text_and_first_failure_line_with_location():
    failures = dict(conformance.summarize(REPORT).failures)
    assert failures["[sig-node] Pods should get a host IP [NodeConformance] [Conformance]"] == \
        "Timed out after 300s. [pods.go:42]"
    assert failures["[sig-node] Container Runtime blackbox test should report termination message [Conformance]"] \
        == "spec timeout [runtime.go:7]"


def test_a_failed_before_suite_is_reported_apart_from_the_specs():
    report = [{"SpecReports": [spec([], "", "failed", "cluster not ready", node_type="SynchronizedBeforeSuite")]}]
    summary = conformance.summarize(report)
    assert summary.total == {}
    assert summary.suite_failures == [("SynchronizedBeforeSuite", "cluster not ready [pods.go:42]")]
    assert "## Suite-level failures" in conformance.format_summary(summary, title="t")


def test_the_markdown_summary_has_a_row_per_sig_a_total_and_the_failed_list():
    text = conformance.format_summary(conformance.summarize(REPORT), title="focus x", elapsed=600,
                                      missing_images=["registry.k8s.io/e2e-test-images/kitten:1.8"])
    assert "5 specs ran in 10 min: 2 passed, 3 failed (2 skipped by the suite itself)" in text
    assert "| sig-node | 1 | 2 | 0 |" in text
    assert "| **all** | **2** | **3** | 2 |" in text
    assert "- [sig-node] Pods should get a host IP [NodeConformance] [Conformance]\n  - Timed out after 300s." in text
    assert "- registry.k8s.io/e2e-test-images/kitten:1.8" in text


def test_ginkgo_gets_the_focus_skip_and_reports_in_the_run_directory(tmp_path):
    from localcluster import settings

    cluster = settings.load()
    argv = conformance.ginkgo_argv(cluster, tmp_path, r"\[sig-node\]", r"\[Slow\]", 3)
    assert argv[0].endswith("/ginkgo") and "--procs=3" in argv
    assert r"--focus=\[sig-node\]" in argv and r"--skip=\[Slow\]" in argv
    assert f"--output-dir={tmp_path}" in argv and "--json-report=report.json" in argv
    suite_args = argv[argv.index("--") + 1:]
    assert f"--kubeconfig={cluster.admin_kubeconfig}" in suite_args
    assert not any("clean-start" in a for a in argv)  # it would delete every non-system namespace
    assert not any(a.startswith("--skip") for a in conformance.ginkgo_argv(cluster, tmp_path, "x", "", 1))
    assert not any(a.startswith("--non-blocking-taints") for a in argv)


def test_with_pynode_set_aside_the_suite_ignores_its_taint_and_the_summary_names_the_nodes(tmp_path):
    from localcluster import settings

    argv = conformance.ginkgo_argv(settings.load(), tmp_path, "x", "", 1, aside=True)
    suite_args = argv[argv.index("--") + 1:]
    assert f"--non-blocking-taints=node-role.kubernetes.io/control-plane,{conformance.ASIDE_TAINT}" in suite_args
    text = conformance.format_summary(conformance.summarize(REPORT), title="t",
                                      nodes="pynode-n2, running the upstream kubelet and kube-proxy")
    assert "Nodes: pynode-n2, running the upstream kubelet and kube-proxy." in text


def test_an_unknown_kind_of_node_agents_is_refused_before_anything_is_built():
    from localcluster import settings
    from localcluster.procs import UpError

    with pytest.raises(UpError, match="unknown node agents 'kubelet'"):
        conformance.run(settings.load(), agents="kubelet")


def test_the_suite_recipe_pins_the_same_kubernetes_as_the_control_plane_recipe():
    text = (UPSTREAM_DIR / "conformance" / "go.mod").read_text()
    pinned = re.search(r"^\s*k8s\.io/kubernetes (v\S+)", text, re.M) or re.search(r"k8s\.io/kubernetes (v\S+)", text)
    assert pinned and pinned.group(1) == kubernetes_version()
    replaces = dict(re.findall(r"^\s*(k8s\.io/\S+) => k8s\.io/\S+ (v\S+)", text, re.M))
    staging = dict(re.findall(r"^\s*(k8s\.io/\S+) => k8s\.io/\S+ (v\S+)", (UPSTREAM_DIR / "go.mod").read_text(), re.M))
    assert replaces == staging
    assert Path(UPSTREAM_DIR / "conformance" / "go.sum").stat().st_size > 0


def test_an_exact_focus_escapes_what_re2_would_read_and_leaves_spaces():
    focus = conformance.exact(["[sig-node] Pods should get a host IP [NodeConformance] [Conformance]",
                               'Probing container should *not* be restarted with a exec "cat /tmp/health" probe'])
    assert focus == (r'\[sig-node\] Pods should get a host IP \[NodeConformance\] \[Conformance\]|'
                     r'Probing container should \*not\* be restarted with a exec "cat /tmp/health" probe')
    assert re.fullmatch(focus, "[sig-node] Pods should get a host IP [NodeConformance] [Conformance]")


class _NodeSteps:
    """Records what nodes_running does to nodes, in place of starting and removing them."""

    def __init__(self, monkeypatch):
        self.steps: list[tuple[str, str]] = []
        monkeypatch.setattr(conformance.local, "node_leftovers", lambda node: False)
        monkeypatch.setattr(conformance.local, "start_node", lambda node: self.steps.append(("pynode", node.name)))
        monkeypatch.setattr(conformance.upstream_node, "bring_up",
                            lambda node, extra: self.steps.append(("upstream", node.name)))
        monkeypatch.setattr(conformance.upstream_node, "start_upstream_proxy", lambda node: None)
        monkeypatch.setattr(conformance, "wait_node_ready", lambda node, **kw: None)
        monkeypatch.setattr(conformance.bootstrap, "approve_serving_certificates", lambda node: None)
        monkeypatch.setattr(conformance, "_kubectl", lambda c, *args, **kw: self.steps.append(("kubectl", args[2])))
        monkeypatch.setattr(conformance.procs, "kubectl",
                            lambda c, *args, **kw: self.steps.append(("untaint", args[2])))
        monkeypatch.setattr(conformance, "_remove", lambda node: self.steps.append(("remove", node.name)))


@pytest.mark.parametrize("count", [1, 2])
def test_the_suite_runs_on_two_pynode_nodes_and_a_second_added_for_the_run_goes_afterwards(monkeypatch, count):
    import dataclasses

    from localcluster import settings

    steps = _NodeSteps(monkeypatch)
    cluster = dataclasses.replace(settings.load(), node_count=count)
    with conformance.nodes_running(cluster, "pynode") as (wide, names):
        assert names == ["pynode-n1", "pynode-n2"] and len(wide.nodes) == 2
        assert steps.steps == ([("pynode", "pynode-n2")] if count == 1 else [])
    assert steps.steps[1:] == ([("remove", "pynode-n2")] if count == 1 else [])


def test_on_upstream_agents_as_many_nodes_are_added_and_pynodes_set_aside_until_the_run_ends(monkeypatch):
    from localcluster import settings

    steps = _NodeSteps(monkeypatch)
    with pytest.raises(RuntimeError, match="the suite broke"):
        with conformance.nodes_running(settings.load(), "upstream") as (wide, names):
            assert names == ["pynode-n2", "pynode-n3"] and len(wide.nodes) == 3
            raise RuntimeError("the suite broke")
    assert steps.steps == [("upstream", "pynode-n2"), ("upstream", "pynode-n3"), ("kubectl", "pynode-n1"),
                           ("untaint", "pynode-n1"), ("remove", "pynode-n2"), ("remove", "pynode-n3")]
