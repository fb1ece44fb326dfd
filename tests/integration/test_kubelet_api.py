"""The kubelet API on :10250, through the real apiserver and kubectl, and directly with curl."""

from __future__ import annotations

import subprocess

import pytest

from tests.integration.pods import container, make_pod, wait_pod

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
