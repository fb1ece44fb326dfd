"""The kubelet API on :10250, through the real apiserver and kubectl, and directly with curl."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import re
import select
import subprocess
import time
import urllib.request

import pytest

from tests.integration.pods import BUSYBOX, container, make_pod, wait_pod

pytestmark = pytest.mark.integration


def kubectl(cluster, *args, input=None, timeout=60):
    return subprocess.run([str(cluster.bin / "kubectl"), f"--kubeconfig={cluster.admin_kubeconfig}", *args],
                          input=input, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def talker(admin, node, namespace):
    admin.create(make_pod(node, namespace, "talker", [container(
        command=["sh", "-c", "echo line-one; echo line-two >&2; exec sleep 3600"])]))
    wait_pod(admin, namespace, "talker", lambda p: p.status.phase == "Running", what="Running")
    return "talker"


def test_kubectl_logs_reads_what_the_container_printed(cluster, namespace, talker):
    out = kubectl(cluster, "-n", namespace, "logs", talker)
    assert out.returncode == 0, out.stderr
    assert sorted(out.stdout.splitlines()) == ["line-one", "line-two"]  # two pipes: either may land first
    tail = kubectl(cluster, "-n", namespace, "logs", "--tail=1", "--timestamps", talker)
    assert tail.returncode == 0 and len(tail.stdout.splitlines()) == 1 and tail.stdout.rstrip().endswith(("line-one", "line-two")), tail


def test_kubectl_exec_carries_output_stdin_and_exit_code(cluster, namespace, talker):
    out = kubectl(cluster, "-n", namespace, "exec", talker, "--", "sh", "-c", "echo from-exec; exit 3")
    assert out.returncode == 3, out.stderr
    assert out.stdout == "from-exec\n"
    piped = kubectl(cluster, "-n", namespace, "exec", "-i", talker, "--", "cat", input="hello stdin\n")
    assert piped.returncode == 0 and piped.stdout == "hello stdin\n", piped


def test_pods_through_the_apiserver_and_anonymous_is_401(cluster, node, namespace):
    out = kubectl(cluster, "-n", namespace, "get", "--raw", f"/api/v1/nodes/{node.name}/proxy/pods")
    assert out.returncode == 0 and '"kind": "PodList"' in out.stdout.replace('":"', '": "'), out
    anonymous = subprocess.run(["curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}",
                                f"https://{node.ip}:10250/pods"], capture_output=True, text=True, timeout=30)
    assert anonymous.stdout == "401"


def test_kubectl_exec_with_a_tty(cluster, namespace, talker):
    """`kubectl exec -t` needs a terminal on its own stdin; a pty gives it one."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([str(cluster.bin / "kubectl"), f"--kubeconfig={cluster.admin_kubeconfig}", "-n", namespace,
                             "exec", "-it", talker, "--", "sh", "-c", "tty; stty size; echo tty-done"],
                            stdin=follower, stdout=follower, stderr=follower, close_fds=True)
    os.close(follower)
    out = b""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and b"tty-done" not in out:
        ready, _, _ = select.select([leader], [], [], 1)
        if ready:
            try:
                out += os.read(leader, 4096)
            except OSError:
                break
    assert proc.wait(timeout=30) == 0, out
    os.close(leader)
    text = out.decode(errors="replace")
    assert re.search(r"/dev/pts/\d+\r\n", text), text  # a terminal in the container, with its CRLF line discipline
    assert "tty-done" in text


def test_kubectl_cp_both_ways(cluster, namespace, talker, tmp_path):
    source = tmp_path / "in.txt"
    source.write_bytes(b"copied in\n" + os.urandom(64 * 1024).hex().encode())
    up = kubectl(cluster, "cp", str(source), f"{namespace}/{talker}:/tmp/in.txt")
    assert up.returncode == 0, up.stderr
    inside = kubectl(cluster, "-n", namespace, "exec", talker, "--", "md5sum", "/tmp/in.txt")
    assert inside.stdout.split()[0] == hashlib.md5(source.read_bytes()).hexdigest(), inside
    back = tmp_path / "back.txt"
    down = kubectl(cluster, "cp", f"{namespace}/{talker}:/tmp/in.txt", str(back))
    assert down.returncode == 0, down.stderr
    assert back.read_bytes() == source.read_bytes()


def test_kubectl_port_forward_carries_http(admin, cluster, node, namespace):
    admin.create(make_pod(node, namespace, "web", [container(command=[
        "sh", "-c", "mkdir -p /www && echo served-through-port-forward > /www/index.html && exec httpd -f -p 8080 -h /www"])]))
    wait_pod(admin, namespace, "web", lambda p: p.status.phase == "Running", what="Running")
    proc = subprocess.Popen([str(cluster.bin / "kubectl"), f"--kubeconfig={cluster.admin_kubeconfig}", "-n", namespace,
                             "port-forward", "--address=127.0.0.1", "pod/web", ":8080"], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # "Forwarding from 127.0.0.1:NNNNN -> 8080"
        match = re.search(r"127\.0\.0\.1:(\d+) -> 8080", line)
        assert match, line
        body = b""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not body:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{match.group(1)}/", timeout=5) as response:
                    body = response.read()
            except OSError:
                time.sleep(0.5)
        assert body == b"served-through-port-forward\n"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_kubectl_attach_reaches_the_container_stdin(admin, cluster, node, namespace):
    admin.create(make_pod(node, namespace, "reader", [container(
        command=["sh", "-c", "read line; echo attached:$line"], stdin=True, stdinOnce=True)],
        restartPolicy="Never"))
    wait_pod(admin, namespace, "reader", lambda p: p.status.phase == "Running", what="Running")
    out = kubectl(cluster, "-n", namespace, "attach", "-i", "reader", input="through-attach\n")
    assert "attached:through-attach" in out.stdout, out
    wait_pod(admin, namespace, "reader", lambda p: p.status.phase == "Succeeded", what="Succeeded")


def test_kubectl_run_interactive_and_removed(cluster, node, namespace):
    on_node = json.dumps({"spec": {"nodeSelector": {"kubernetes.io/hostname": node.name}}})  # the node under test
    out = kubectl(cluster, "-n", namespace, "run", "once", f"--image={BUSYBOX}", "--restart=Never", "-i", "--rm",
                  f"--overrides={on_node}", "--command", "--", "sh", "-c", "read x; echo ran:$x",
                  input="run-stdin\n", timeout=120)
    assert out.returncode == 0, out.stderr
    assert "ran:run-stdin" in out.stdout
    gone = kubectl(cluster, "-n", namespace, "get", "pod", "once")
    assert gone.returncode != 0 and "NotFound" in gone.stderr


def _curl_kubelet(node, path, token):
    out = subprocess.run(["curl", "-sk", "-H", f"Authorization: Bearer {token}", "-w", "\n%{http_code}",
                          f"https://{node.ip}:10250{path}"], capture_output=True, text=True, timeout=30)
    body, _, code = out.stdout.rpartition("\n")
    return int(code), body


def test_a_token_without_nodes_proxy_is_403_and_with_it_200(cluster, node, namespace):
    assert kubectl(cluster, "-n", namespace, "create", "serviceaccount", "reader").returncode == 0
    token = kubectl(cluster, "-n", namespace, "create", "token", "reader").stdout.strip()
    code, body = _curl_kubelet(node, "/pods", token)
    assert code == 403
    assert body == (f"Forbidden (user=system:serviceaccount:{namespace}:reader, verb=get, resource=nodes, "
                    "subresource(s)=[pods proxy])")
    role = f"{namespace}-nodes-proxy"
    assert kubectl(cluster, "create", "clusterrole", role, "--verb=get", "--resource=nodes/proxy").returncode == 0
    try:
        assert kubectl(cluster, "create", "clusterrolebinding", role, f"--clusterrole={role}",
                       f"--serviceaccount={namespace}:reader").returncode == 0
        deadline = time.monotonic() + 45  # the kubelet caches the denial for cacheUnauthorizedTTL (30 s)
        while code != 200 and time.monotonic() < deadline:
            time.sleep(2)
            code, body = _curl_kubelet(node, "/pods", token)
        assert code == 200 and '"PodList"' in body, (code, body[:200])
        stats, _ = _curl_kubelet(node, "/stats/summary", token)  # nodes/proxy does not grant nodes/stats
        assert stats == 403
    finally:
        kubectl(cluster, "delete", "clusterrolebinding", role)
        kubectl(cluster, "delete", "clusterrole", role)


def _scrape(cluster, node, path):
    """{(sample name, frozenset of labels): value} of a kubelet metrics path, through the apiserver proxy."""
    from prometheus_client.parser import text_string_to_metric_families

    out = kubectl(cluster, "get", "--raw", f"/api/v1/nodes/{node.name}/proxy{path}")
    assert out.returncode == 0, out.stderr
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(out.stdout) for s in family.samples}, out.stdout


def _total(samples, name, **labels):
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls)


def test_metrics_and_probe_metrics_count_what_the_kubelet_did(admin, cluster, node, namespace):
    # localcluster/sample.py's Deployment has a readiness probe too, but its replicas may run on another
    # node; this pod, on the node under test, makes the probe and the pod start certain.
    admin.create(make_pod(node, namespace, "probed", [container(readinessProbe={
        "exec": {"command": ["true"]}, "periodSeconds": 1})]))
    wait_pod(admin, namespace, "probed", lambda p: any(
        c.type == "Ready" and c.status == "True" for c in (p.status.conditions or [])), what="Ready")

    samples, text = _scrape(cluster, node, "/metrics")
    assert _total(samples, "kubelet_runtime_operations_total", operation_type="list_containers") > 0, text[:2000]
    assert _total(samples, "kubelet_pleg_relist_duration_seconds_count") > 0
    assert _total(samples, "kubelet_started_pods_total") > 0
    assert _total(samples, "kubelet_node_name", node=node.name) == 1
    assert _total(samples, "rest_client_requests_total", code="200") > 0
    assert "# HELP kubelet_runtime_operations_total [ALPHA] Cumulative number of runtime operations by " \
           "operation type." in text

    labels = dict(namespace=namespace, pod="probed", container="main", probe_type="Readiness", result="successful")
    deadline = time.monotonic() + 30
    while True:
        samples, text = _scrape(cluster, node, "/metrics/probes")
        if _total(samples, "prober_probe_total", **labels) > 0 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert _total(samples, "prober_probe_total", **labels) > 0, text[:2000]
    assert _total(samples, "prober_probe_duration_seconds_count", namespace=namespace, pod="probed") > 0


def test_an_ephemeral_container_runs_in_the_pod_and_serves_exec_and_logs(admin, cluster, node, namespace):
    admin.create(make_pod(node, namespace, "debuggee", [container(command=["sleep", "3600"])]))
    wait_pod(admin, namespace, "debuggee", lambda p: p.status.phase == "Running", what="Running")
    debugger = {"name": "debugger", "image": BUSYBOX, "targetContainerName": "main",
                "command": ["sh", "-c", "while true; do echo polo; sleep 1; done"]}
    patched = kubectl(cluster, "-n", namespace, "patch", "pod", "debuggee", "--subresource=ephemeralcontainers",
                      "--type=strategic", "-p", json.dumps({"spec": {"ephemeralContainers": [debugger]}}))
    assert patched.returncode == 0, patched.stderr
    pod = wait_pod(admin, namespace, "debuggee", lambda p: bool(p.status.ephemeralContainerStatuses)
                   and p.status.ephemeralContainerStatuses[0].state.running is not None, what="debugger running")
    assert [c.name for c in pod.status.containerStatuses] == ["main"]
    out = kubectl(cluster, "-n", namespace, "exec", "debuggee", "-c", "debugger", "--", "echo", "marco")
    assert out.returncode == 0 and out.stdout == "marco\n", out.stderr
    # targetContainerName: the debugger sees the target's processes.
    ps = kubectl(cluster, "-n", namespace, "exec", "debuggee", "-c", "debugger", "--", "ps", "-o", "args")
    assert "sleep 3600" in ps.stdout, ps
    logs = kubectl(cluster, "-n", namespace, "logs", "debuggee", "-c", "debugger")
    assert "polo" in logs.stdout, logs.stderr
