"""`kubectl top` through metrics-server, which scrapes pykubelet's /metrics/resource.

metrics-server is a test fixture here (localcluster/metrics_server.py): built from its Go module at the
pinned release, imported into every node, deployed with upstream's manifests and verifying each kubelet's
serving certificate against the cluster CA; the module's fixture removes all of it afterwards.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess

import pytest
from lightkube.resources.core_v1 import Pod

from localcluster import metrics_server, sample
from tests.integration.polling import eventually

# The module's first test builds metrics-server when the cache lacks it: about 4 minutes cold on a 2-core machine,
# then up to 3 more for the APIService; past the 300 s every test gets by default.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

# Metrics appear after the first two scrapes of a target (CPU is a rate), at --metric-resolution=15s.
METRICS_TIMEOUT = 90


def kubectl(cluster, *args, timeout=60):
    return subprocess.run([str(cluster.bin / "kubectl"), f"--kubeconfig={cluster.admin_kubeconfig}", *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def metrics(cluster):
    if shutil.which("go") is None and not (cluster.metrics_server_bin / "metrics-server").is_file():
        pytest.skip("Go is not installed, and metrics-server (built from its Go module) is not in the cache")
    try:
        metrics_server.deploy(cluster, timeout=180)  # the APIService Available within 3 minutes
    except BaseException:
        with contextlib.suppress(Exception):  # the deploy's own error (with the pod's logs) is the one to see
            metrics_server.remove(cluster)
        raise
    yield
    metrics_server.remove(cluster)


_UNITS = {"n": 1e-9, "u": 1e-6, "m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def quantity(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(n|u|m|k|M|G|Ki|Mi|Gi|)", text)
    assert match, f"not a quantity: {text!r}"
    return float(match.group(1)) * _UNITS[match.group(2)]


def table(out: str) -> list[dict[str, str]]:
    """kubectl's table output as rows keyed by the header's column names."""
    lines = out.splitlines()
    header = lines[0].split()
    return [dict(zip(header, line.split())) for line in lines[1:] if line.strip()]


def top(cluster, *args, names=frozenset()):
    """`kubectl top ...`'s rows once they name every one of `names` with figures (kubectl answers "metrics not
    available yet" until metrics-server has two scrapes, and prints a node it has none for as <unknown>)."""
    def attempt():
        out = kubectl(cluster, "top", *args)
        rows = table(out.stdout) if out.returncode == 0 and out.stdout.strip() else []
        measured = {row["NAME"] for row in rows if re.fullmatch(r"\d+m", row.get("CPU(cores)", ""))}
        return rows if rows and set(names) <= measured else None
    return attempt


def test_the_apiservice_is_available_and_served_by_the_fixture(cluster, metrics):
    ok, state = metrics_server.available(cluster)
    assert ok, state
    groups = kubectl(cluster, "api-versions")
    assert "metrics.k8s.io/v1beta1" in groups.stdout.split(), groups


def test_kubectl_top_node_lists_every_node_with_cpu_and_memory(cluster, metrics):
    names = {n.name for n in cluster.nodes}
    rows = eventually(top(cluster, "node", names=names), timeout=METRICS_TIMEOUT,
                      what=f"kubectl top node to give figures for {sorted(names)}")
    for row in (r for r in rows if r["NAME"] in names):
        # kubectl prints CPU in millicores and memory in MiB, and the share of the node's allocatable
        assert re.fullmatch(r"\d+m", row["CPU(cores)"]) and re.fullmatch(r"\d+Mi", row["MEMORY(bytes)"]), row
        assert re.fullmatch(r"\d+%", row["CPU(%)"]) and re.fullmatch(r"\d+%", row["MEMORY(%)"]), row
        assert quantity(row["MEMORY(bytes)"]) > 0, row


def raw(cluster, path):
    """The aggregated API's answer for `path`, or None while it has none."""
    out = kubectl(cluster, "get", "--raw", path)
    return json.loads(out.stdout) if out.returncode == 0 else None


def test_node_metrics_through_the_api_are_pykubelets_figures(cluster, metrics):
    """The same through the aggregated API: a usage window and non-zero CPU and memory for each node."""
    for node in cluster.nodes:
        path = f"/apis/metrics.k8s.io/v1beta1/nodes/{node.name}"
        metric = eventually(lambda path=path: raw(cluster, path), timeout=METRICS_TIMEOUT, what=f"GET {path}")
        assert metric["kind"] == "NodeMetrics" and metric["metadata"]["name"] == node.name
        assert quantity(metric["usage"]["cpu"]) > 0, metric
        assert quantity(metric["usage"]["memory"]) > 0, metric
        assert metric["window"].endswith("s"), metric


def test_kubectl_top_pod_lists_the_sample_pods(admin, cluster, metrics):
    pods = {p.metadata.name for p in admin.list(Pod, namespace=sample.NAMESPACE, labels={"app": "hello"})
            if p.status.phase == "Running"}
    assert pods, f"the sample Deployment of `make up` has no Running pod in {sample.NAMESPACE}"
    rows = eventually(top(cluster, "pod", "-n", sample.NAMESPACE, names=pods), timeout=METRICS_TIMEOUT,
                      what=f"kubectl top pod to give figures for {sorted(pods)}")
    for row in (r for r in rows if r["NAME"] in pods):
        assert re.fullmatch(r"\d+m", row["CPU(cores)"]) and re.fullmatch(r"\d+Mi", row["MEMORY(bytes)"]), row
    listing = raw(cluster, f"/apis/metrics.k8s.io/v1beta1/namespaces/{sample.NAMESPACE}/pods")
    assert listing and listing["kind"] == "PodMetricsList", listing
    by_name = {m["metadata"]["name"]: m for m in listing["items"]}
    for name in pods:
        containers = {c["name"]: c["usage"] for c in by_name[name]["containers"]}
        assert set(containers) == {"web"}, by_name[name]
        assert quantity(containers["web"]["memory"]) > 0, by_name[name]


def test_kubectl_top_pod_containers_shows_the_fixture_itself(cluster, metrics):
    """metrics-server's own pod is scraped from the kubelet it runs on, like any other."""
    rows = eventually(top(cluster, "pod", "-n", metrics_server.NAMESPACE, "-l", "k8s-app=metrics-server",
                          "--containers", names={"metrics-server"}),
                      timeout=METRICS_TIMEOUT, what="kubectl top pod --containers of metrics-server")
    assert [row["NAME"] for row in rows] == ["metrics-server"], rows
    assert rows[0]["POD"].startswith("metrics-server-"), rows
    assert quantity(rows[0]["MEMORY(bytes)"]) > 0, rows  # a Go program holds more than 1 MiB
