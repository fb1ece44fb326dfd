"""/stats/summary, /metrics/resource and /metrics/cadvisor through the apiserver, for a pod that burns CPU
and holds memory under limits."""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest

from tests.integration.pods import container, make_pod, wait_pod

pytestmark = pytest.mark.integration

HELD = 16_000_000  # bytes the container's shell keeps in a variable
SCRATCH = 3_000_000  # bytes it writes to its emptyDir first


def raw(cluster, path: str) -> str:
    out = subprocess.run([str(cluster.bin / "kubectl"), f"--kubeconfig={cluster.admin_kubeconfig}", "get", "--raw",
                          path], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture(scope="module")
def burner(admin, node, namespace):
    admin.create(make_pod(node, namespace, "burner", [container(
        name="burn", command=["sh", "-c", f"head -c {SCRATCH} /dev/zero > /scratch/f; "
                                          f"x=$(head -c {HELD} /dev/zero | tr '\\0' a); while :; do :; done"],
        resources={"limits": {"cpu": "200m", "memory": "64Mi"}},
        volumeMounts=[{"name": "scratch", "mountPath": "/scratch"}])],
        volumes=[{"name": "scratch", "emptyDir": {}}]))
    wait_pod(admin, namespace, "burner", lambda p: p.status.phase == "Running", what="Running")
    return "burner"


def _pod(summary: dict, namespace: str, name: str) -> dict:
    found = [p for p in summary["pods"] if p["podRef"]["namespace"] == namespace and p["podRef"]["name"] == name]
    assert len(found) == 1, [p["podRef"] for p in summary["pods"]]
    return found[0]


def test_summary_measures_the_pod_and_the_node(cluster, node, namespace, burner):
    path = f"/api/v1/nodes/{node.name}/proxy/stats/summary"
    deadline = time.monotonic() + 60
    while True:  # the shell fills its variable first
        first = json.loads(raw(cluster, path))
        burn = _pod(first, namespace, burner)["containers"][0]
        if burn.get("memory", {}).get("workingSetBytes", 0) >= HELD or time.monotonic() > deadline:
            break
        time.sleep(1)
    time.sleep(3)
    second = json.loads(raw(cluster, path))
    pod = _pod(second, namespace, burner)
    burn = pod["containers"][0]
    assert burn["name"] == "burn"
    assert burn["memory"]["workingSetBytes"] >= HELD
    assert burn["memory"]["availableBytes"] <= 64 * 2**20 - HELD  # the limit less what it holds
    assert burn["cpu"]["usageCoreNanoSeconds"] > _pod(first, namespace, burner)["containers"][0]["cpu"][
        "usageCoreNanoSeconds"]
    # A 200m limit: about a fifth of a core, measured over the seconds between the two reads.
    assert 50_000_000 < burn["cpu"]["usageNanoCores"] < 400_000_000, burn["cpu"]
    assert burn["rootfs"]["capacityBytes"] > 0 and "usedBytes" in burn["logs"]
    assert pod["memory"]["workingSetBytes"] >= burn["memory"]["workingSetBytes"]
    scratch = next(v for v in pod["volume"] if v["name"] == "scratch")
    assert scratch["usedBytes"] >= SCRATCH and scratch["capacityBytes"] >= scratch["availableBytes"] > 0
    assert pod["ephemeral-storage"]["usedBytes"] >= burn["rootfs"]["usedBytes"] + scratch["usedBytes"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", pod["startTime"])

    host = second["node"]
    assert host["nodeName"] == node.name
    assert host["memory"]["workingSetBytes"] > pod["memory"]["workingSetBytes"]
    assert host["cpu"]["usageCoreNanoSeconds"] > burn["cpu"]["usageCoreNanoSeconds"]
    assert host["fs"]["capacityBytes"] >= host["fs"]["availableBytes"] > 0
    assert host["runtime"]["imageFs"]["usedBytes"] > 0
    assert host["rlimit"]["maxpid"] > host["rlimit"]["curproc"] > 0
    assert {c["name"] for c in host["systemContainers"]} >= {"kubelet", "pods"}
    assert host["network"]["name"] == "eth0" and host["network"]["rxBytes"] > 0

    only = json.loads(raw(cluster, path + "?only_cpu_and_memory=true"))
    assert "fs" not in only["node"] and "rootfs" not in _pod(only, namespace, burner)["containers"][0]


def test_resource_and_cadvisor_metrics(cluster, node, namespace, burner):
    text = raw(cluster, f"/api/v1/nodes/{node.name}/proxy/metrics/resource")
    line = next(line for line in text.splitlines() if line.startswith(
        f'container_memory_working_set_bytes{{container="burn",namespace="{namespace}",pod="{burner}"}}'))
    value, stamp = line.split()[-2:]
    assert float(value) > 0 and abs(int(stamp) / 1000 - time.time()) < 60
    assert re.search(rf'^pod_cpu_usage_seconds_total{{namespace="{namespace}",pod="{burner}"}} \S+ \d+$', text, re.M)
    assert re.search(r"^node_cpu_usage_seconds_total \S+ \d+$", text, re.M)
    assert "resource_scrape_error 0.0" in text.splitlines()

    cadvisor = raw(cluster, f"/api/v1/nodes/{node.name}/proxy/metrics/cadvisor")
    assert re.search(rf'^container_cpu_usage_seconds_total{{container="burn",cpu="total",id="[^"]*/pod[0-9a-f-]+/'
                     rf'[0-9a-f]{{64}}",image="[^"]+",name="[0-9a-f]{{64}}",namespace="{namespace}",pod="{burner}"}}',
                     cadvisor, re.M), cadvisor[:2000]
