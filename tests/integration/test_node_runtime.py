"""The node's containerd runs pods through CRI, inside the node's namespace and cgroup."""

from __future__ import annotations

import asyncio
import ipaddress
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from cri import CRIClient, api, container_config, pod_sandbox_config

pytestmark = pytest.mark.integration

BUSYBOX = "docker.io/library/busybox:latest"


async def _run_pod(node, log_dir: Path) -> dict:
    uid = str(uuid.uuid4())
    sandbox_config = pod_sandbox_config(
        name="foundation", uid=uid, namespace="default", hostname="foundation",
        log_directory=str(log_dir),
        cgroup_parent=f"{node.cgroup_path}/pods/{uid}",
    )
    async with CRIClient(str(node.containerd_socket), timeout=60) as runtime:
        images = {tag for image in (await runtime.list_images()).images for tag in image.repo_tags}
        sandbox_id = (await runtime.run_pod_sandbox(api.RunPodSandboxRequest(config=sandbox_config))).pod_sandbox_id
        try:
            status = (await runtime.pod_sandbox_status(api.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id))).status
            container_id = (await runtime.create_container(api.CreateContainerRequest(
                pod_sandbox_id=sandbox_id, sandbox_config=sandbox_config,
                config=container_config(
                    name="hello", image=BUSYBOX, log_path="hello/0.log",
                    command=["sh", "-c", "echo hello from $(hostname); cat /proc/self/cgroup; sleep 30"],
                ),
            ))).container_id
            await runtime.start_container(api.StartContainerRequest(container_id=container_id))
            log = log_dir / "hello" / "0.log"
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and "pids:" not in (log.read_text() if log.exists() else ""):
                await asyncio.sleep(0.1)
            running = (await runtime.container_status(api.ContainerStatusRequest(container_id=container_id))).status
            return {"images": images, "ip": status.network.ip, "log": log.read_text(),
                    "state": running.state}
        finally:
            await runtime.stop_pod_sandbox(api.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))
            await runtime.remove_pod_sandbox(api.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))


def test_a_busybox_pod_runs_with_an_ip_from_the_node_bridge(node, tmp_path):
    result = asyncio.run(_run_pod(node, tmp_path))

    assert BUSYBOX in result["images"]
    assert any(tag.startswith("registry.k8s.io/pause:") for tag in result["images"])
    assert ipaddress.ip_address(result["ip"]) in ipaddress.ip_network(node.pod_cidr)
    assert result["state"] == api.CONTAINER_RUNNING
    lines = result["log"].splitlines()
    # CRI log format: <RFC3339Nano> <stream> <P|F> <content>
    assert lines[0].split(" ", 3)[1:] == ["stdout", "F", "hello from foundation"]
    pids_cgroup = next(line for line in lines if ":pids:" in line).rsplit(":", 1)[1]
    assert pids_cgroup.startswith(f"{node.cgroup_path}/pods/")


def test_the_node_namespace_reaches_the_control_plane_and_nothing_beyond(node, cluster):
    routes = subprocess.run(["ip", "-n", node.netns, "route"], capture_output=True, text=True, check=True).stdout
    assert "default" not in routes
    assert f"{cluster.service_cidr} dev cni0" in routes
    # A route lookup only; no packet leaves for an outside address.
    lookup = subprocess.run(["ip", "-n", node.netns, "route", "get", "192.0.2.1"], capture_output=True, text=True)
    assert lookup.returncode != 0 and "unreachable" in lookup.stderr
    connect = subprocess.run(
        ["nsenter", f"--net=/run/netns/{node.netns}", sys.executable, "-c",
         f"import socket; socket.create_connection(('{cluster.host_ip}', {cluster.apiserver_port}), 3).close()"],
        capture_output=True, text=True)
    assert connect.returncode == 0, connect.stderr


def test_agents_run_as_daemons_of_the_node(node, agents):
    agent = agents(node, "pykubelet", "--version")
    deadline = time.monotonic() + 10
    while agent.running() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not agent.running()
    assert agent.log.read_text().strip().endswith(f"Kubernetes {node.cluster.version}")
    with pytest.raises(ValueError, match="unknown agent"):
        agents(node, "kube-proxy")
