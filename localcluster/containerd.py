"""One containerd per node, inside the node's network namespace, configured for pods."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path

from . import cgroups, images, procs
from .settings import Node

CNI_BIN_DIR = "/usr/lib/cni"


def _daemon(node: Node) -> str:
    return f"containerd-{node.name}"


def config_toml(node: Node) -> str:
    d = node.dir / "containerd"
    return f"""\
# containerd for local node {node.name}; written by localcluster/containerd.py.
version = 2
root = "{d / 'root'}"
state = "{d / 'state'}"

[grpc]
  address = "{node.containerd_socket}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d / 'opt'}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{images.pause_name(node.cluster)}"
  # This sandbox runs without CAP_SYS_RESOURCE, so containerd may not lower a
  # container's oom_score_adj below its own; restricting it to containerd's own
  # value keeps runc from failing with EACCES when it writes the score.
  restrict_oom_score_adj = true
  # Pod network namespaces are mounted under the node's state directory, so that
  # everything the node mounts lives below one path and `down` finds it all.
  netns_mounts_under_state_dir = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        # runc keeps its container state here rather than in the shared /run/containerd/runc.
        Root = "{d / 'runc'}"

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{node.dir / 'cni'}"
    max_conf_num = 1
"""


def cni_conflist(node: Node) -> dict:
    return {
        "cniVersion": "1.0.0",
        "name": "pynode",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": node.pod_cidr, "gateway": node.pod_gateway}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    # Per node, so that two nodes never hand out each other's leases.
                    "dataDir": str(node.dir / "cni-ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "loopback"},
        ],
    }


def write_config(node: Node) -> Path:
    d = node.dir / "containerd"
    d.mkdir(parents=True, exist_ok=True)
    (node.dir / "cni").mkdir(parents=True, exist_ok=True)
    (node.dir / "cni" / "10-pynode.conflist").write_text(json.dumps(cni_conflist(node), indent=2) + "\n")
    path = d / "config.toml"
    path.write_text(config_toml(node))
    return path


def healthy(node: Node) -> bool:
    """containerd answers, and so does its CRI plugin (which finishes starting later, after recovering pods)."""
    from cri import CRIClient, CRIError

    async def cri_version() -> None:
        async with CRIClient(str(node.containerd_socket), timeout=3) as runtime:
            await runtime.version()

    try:
        asyncio.run(cri_version())
    except CRIError:
        return False
    return True


def start(node: Node) -> None:
    for tool in ("containerd", "runc", "ctr"):
        if not shutil.which(tool):
            raise procs.UpError(f"containerd: '{tool}' is missing (Debian packages containerd and runc)")
    if not Path(CNI_BIN_DIR, "bridge").exists():
        raise procs.UpError(f"containerd: no CNI plugins in {CNI_BIN_DIR} (Debian package containernetworking-plugins)")
    config = write_config(node)
    name = _daemon(node)
    _, cgroup_procs = cgroups.ensure(node.cgroup_name, node.dir)
    procs.start(node.cluster, name, [shutil.which("containerd"), f"--config={config}"],
                netns=node.netns, cgroup_procs=cgroup_procs)
    procs.wait_healthy(node.cluster, name, lambda: healthy(node), timeout=30)


def import_images(node: Node) -> None:
    cluster = node.cluster
    for make in images.CATALOG.values():
        images.import_archive(images.build(make(cluster), cluster.images), node.containerd_socket)


def remove_pods(node: Node, timeout: float = 30) -> None:
    """Stop and remove every pod sandbox through CRI, so CNI and runc clean up after them."""
    from cri import CRIError, CRIClient, api

    async def run() -> None:
        async with CRIClient(str(node.containerd_socket), timeout=timeout) as runtime:
            for sandbox in (await runtime.list_pod_sandbox()).items:
                await runtime.stop_pod_sandbox(api.StopPodSandboxRequest(pod_sandbox_id=sandbox.id))
                await runtime.remove_pod_sandbox(api.RemovePodSandboxRequest(pod_sandbox_id=sandbox.id))

    if procs.running(node.cluster, _daemon(node)):
        try:
            asyncio.run(run())
        except CRIError as err:
            print(f"[localcluster] {node.name}: removing pods through CRI failed ({err}); killing them instead",
                  file=sys.stderr)


def stop(node: Node) -> None:
    remove_pods(node)
    procs.stop(node.cluster, _daemon(node))
