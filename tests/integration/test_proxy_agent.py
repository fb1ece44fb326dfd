"""pyproxy as a whole, on the local cluster's node: watch the real apiserver, program the node, real traffic.

Two busybox pods run on the node (pykubelet); the tests create selector-less
Services and EndpointSlices that point at them, then reach the services from
inside the node's network namespace (ClusterIP) and from the host (NodePort on
the node's address). The module runs once per mode: the node's own pyproxy is
replaced by one in that mode for the module and put back afterwards.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
import uuid
from collections import Counter
from datetime import datetime, timezone

import pytest
import yaml
from lightkube.resources.core_v1 import Namespace, Pod

from localcluster import agents as agent_runner
from localcluster import procs
from tests.integration.polling import eventually

pytestmark = pytest.mark.integration

BUSYBOX = "registry.k8s.io/e2e-test-images/busybox:1.37.0-1"
SERVER = "mkdir -p /www && echo $(hostname) > /www/index.html && exec httpd -f -p 8080 -h /www"

FETCH = r"""
import json, sys, urllib.request
out = []
for _ in range(int(sys.argv[2])):
    try:
        with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
            out.append(r.read().decode().strip())
    except Exception as exc:
        out.append("ERR " + type(exc).__name__ + " " + str(getattr(exc, "reason", "")))
print(json.dumps(out))
"""


def kubectl(cluster, *args, stdin=None, check=True):
    res = subprocess.run([str(cluster.bin / "kubectl"), f"--kubeconfig={cluster.admin_kubeconfig}", *args],
                         input=stdin, capture_output=True, text=True, timeout=120)
    if check and res.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)}: {res.stderr}")
    return res.stdout


def apply(cluster, *objects):
    kubectl(cluster, "apply", "-f", "-", stdin=yaml.safe_dump_all(objects))


def fetch_in_node(node, url: str, n: int) -> list[str]:
    """GET `url` n times from inside the node's network namespace."""
    out = subprocess.run(["ip", "netns", "exec", node.netns, sys.executable, "-c", FETCH, url, str(n)],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return json.loads(out)


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def metrics_text(node) -> str:
    with urllib.request.urlopen(f"http://{node.ip}:10249/metrics", timeout=5) as r:
        return r.read().decode()


def metric(node, name: str) -> float:
    """A metric's value (the first sample), 0 when absent or while the server is not up."""
    try:
        text = metrics_text(node)
    except OSError:
        return 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture(scope="module", params=["iptables", "nftables"])
def proxy(request, cluster, node):
    """The node's pyproxy, replaced for this module by one in `mode`; restored afterwards."""
    mode = request.param
    standard = f"pyproxy-{node.name}"
    procs.stop(cluster, standard)
    config = agent_runner.proxy_configuration(node) | {"mode": mode}
    path = node.dir / "kube-proxy" / f"test-{mode}.conf"
    path.write_text(yaml.safe_dump(config))
    agent = agent_runner.start(node, "pyproxy", f"--config={path}", "--v=4", instance="test")
    try:
        eventually(lambda: metric(node, "kubeproxy_sync_proxy_rules_last_timestamp_seconds") > 0, 60,
                   f"pyproxy ({mode}) to sync; see {agent.log}")
        yield mode
    finally:
        agent.stop()
        agent_runner.start(node, "pyproxy", *agent_runner.proxy_flags(node))
        agent_runner.wait_proxy_ready(node)


@pytest.fixture(scope="module")
def backends(cluster, node, admin):
    """Two web pods on the node, answering their own name on :8080; {name: ip}."""
    ns = f"pyproxy-{uuid.uuid4().hex[:6]}"
    admin.create(Namespace.from_dict({"metadata": {"name": ns}}))
    names = ["web-a", "web-b"]
    try:
        for name in names:
            apply(cluster, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
                            "spec": {"nodeName": node.name, "terminationGracePeriodSeconds": 1,
                                     "automountServiceAccountToken": False,
                                     "containers": [{"name": "web", "image": BUSYBOX,
                                                     "command": ["sh", "-c", SERVER]}]}})
        ips = {}
        for name in names:
            pod = eventually(lambda: (lambda p: p if p.status and p.status.podIP and p.status.phase == "Running"
                                      else None)(admin.get(Pod, name, namespace=ns)), 60, f"pod {name} to run")
            ips[name] = pod.status.podIP
        yield ns, ips
    finally:
        admin.delete(Namespace, ns)


def service(ns: str, name: str, **spec) -> dict:
    ports = [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": {"ports": ports, **spec}}


def endpoint_slice(ns: str, service_name: str, ips: list[str], node_name: str) -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{service_name}-1", "namespace": ns,
                         "labels": {"kubernetes.io/service-name": service_name,
                                    "endpointslice.kubernetes.io/managed-by": "pyproxy-test"},
                         "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": now_rfc3339()}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True}, "nodeName": node_name} for ip in ips]}


def cluster_ip(cluster, ns: str, name: str) -> str:
    return kubectl(cluster, "-n", ns, "get", "service", name, "-o", "jsonpath={.spec.clusterIP}")


def test_cluster_ip_follows_endpoint_slices(cluster, node, proxy, backends):
    ns, ips = backends
    apply(cluster, service(ns, "web"), endpoint_slice(ns, "web", list(ips.values()), node.name))
    url = f"http://{cluster_ip(cluster, ns, 'web')}/"
    seen = eventually(lambda: (lambda c: c if set(c) == set(ips) else None)(Counter(fetch_in_node(node, url, 30))),
                      what="traffic to spread over both pods")
    assert sum(seen.values()) == 30, seen
    latency_before = metric(node, "kubeproxy_network_programming_duration_seconds_count")

    # The slice changes: only web-b is left, and traffic follows within the sync period.
    apply(cluster, endpoint_slice(ns, "web", [ips["web-b"]], node.name))
    eventually(lambda: fetch_in_node(node, url, 10) == ["web-b"] * 10, what="traffic to follow the slice")
    # ...and the time from the change to the rules was measured, from the slice's trigger-time annotation.
    assert metric(node, "kubeproxy_network_programming_duration_seconds_count") > latency_before


def test_service_without_endpoints_is_refused(cluster, node, proxy, backends):
    ns, _ = backends
    apply(cluster, service(ns, "empty"))
    url = f"http://{cluster_ip(cluster, ns, 'empty')}/"
    result = eventually(lambda: (lambda r: r if r[0].startswith("ERR") and "refused" in r[0] else None)(
        fetch_in_node(node, url, 1)), what="a refusal")
    assert "refused" in result[0]


def test_nodeport_from_outside_the_node(cluster, node, proxy, backends):
    ns, ips = backends
    apply(cluster, service(ns, "np", type="NodePort"), endpoint_slice(ns, "np", list(ips.values()), node.name))
    port = int(kubectl(cluster, "-n", ns, "get", "service", "np", "-o", "jsonpath={.spec.ports[0].nodePort}"))

    def fetch():
        try:
            with urllib.request.urlopen(f"http://{node.ip}:{port}/", timeout=2) as r:
                return r.read().decode().strip()
        except OSError:
            return None
    assert eventually(fetch, what="the NodePort to answer") in ips


def test_external_traffic_policy_local_health_check(cluster, node, proxy, backends):
    ns, ips = backends
    apply(cluster, service(ns, "lb", type="LoadBalancer", externalTrafficPolicy="Local"),
          endpoint_slice(ns, "lb", list(ips.values()), node.name))
    hc = int(kubectl(cluster, "-n", ns, "get", "service", "lb", "-o", "jsonpath={.spec.healthCheckNodePort}"))

    def health():
        try:
            with urllib.request.urlopen(f"http://{node.ip}:{hc}/", timeout=2) as r:
                return r.status, json.loads(r.read())
        except OSError:
            return None
    status, body = eventually(health, what="the healthCheckNodePort server")
    assert status == 200 and body["localEndpoints"] == 2, body
    assert body["service"] == {"namespace": ns, "name": "lb"}


def test_deleting_a_service_removes_its_rules(cluster, node, proxy, backends):
    ns, ips = backends
    apply(cluster, service(ns, "gone"), endpoint_slice(ns, "gone", [ips["web-a"]], node.name))
    ip = cluster_ip(cluster, ns, "gone")
    eventually(lambda: fetch_in_node(node, f"http://{ip}/", 1) == ["web-a"], what="the service to work")

    def rules() -> str:
        argv = ["nft", "list", "table", "ip", "kube-proxy"] if proxy == "nftables" else ["iptables-save"]
        return subprocess.run(["ip", "netns", "exec", node.netns, *argv], capture_output=True, text=True).stdout
    assert ip in rules() and f"{ns}/gone" in rules()
    kubectl(cluster, "-n", ns, "delete", "service", "gone")
    kubectl(cluster, "-n", ns, "delete", "endpointslice", "gone-1")
    eventually(lambda: ip not in rules() and f"{ns}/gone" not in rules(), what="the rules to go")


def test_health_and_metrics_endpoints(node, proxy):
    with urllib.request.urlopen(f"http://{node.ip}:10256/healthz", timeout=5) as r:
        body = json.loads(r.read())
    assert r.status == 200 and body["healthy"] is True and body["nodeEligible"] is True, body
    with urllib.request.urlopen(f"http://{node.ip}:10256/livez", timeout=5) as r:
        assert r.status == 200
    with urllib.request.urlopen(f"http://{node.ip}:10249/proxyMode", timeout=5) as r:
        assert r.read().decode() == proxy
    text = metrics_text(node)
    for name in ("kubeproxy_sync_proxy_rules_duration_seconds_count", "kubeproxy_sync_full_proxy_rules_duration_"
                 "seconds_count", "kubeproxy_sync_proxy_rules_last_timestamp_seconds"):
        assert name in text, name


def test_rules_stay_while_pyproxy_is_down_and_a_new_one_takes_over(cluster, node, proxy, backends):
    ns, ips = backends
    apply(cluster, service(ns, "steady"), endpoint_slice(ns, "steady", [ips["web-a"]], node.name))
    url = f"http://{cluster_ip(cluster, ns, 'steady')}/"
    eventually(lambda: fetch_in_node(node, url, 1) == ["web-a"], what="the service to work")
    name = f"pyproxy-test-{node.name}"
    config = next(a for a in open(f"/proc/{procs.running(cluster, name)}/cmdline").read().split("\0")
                  if a.startswith("--config="))
    procs.stop(cluster, name)
    assert fetch_in_node(node, url, 3) == ["web-a"] * 3  # nothing removed on shutdown
    apply(cluster, endpoint_slice(ns, "steady", [ips["web-b"]], node.name))  # a change while nobody watches
    agent_runner.start(node, "pyproxy", config, instance="test")
    eventually(lambda: fetch_in_node(node, url, 5) == ["web-b"] * 5, 60, "the new pyproxy to catch up")


def test_starting_in_one_mode_removes_the_other_modes_rules(node, proxy):
    def run(*argv):
        return subprocess.run(["ip", "netns", "exec", node.netns, *argv], capture_output=True, text=True)
    if proxy == "nftables":
        assert "KUBE-SVC-" not in run("iptables-save", "-t", "nat").stdout
        assert "KUBE-SVC-" not in run("iptables-legacy-save", "-t", "nat").stdout
    else:
        assert run("nft", "list", "table", "ip", "kube-proxy").returncode != 0
