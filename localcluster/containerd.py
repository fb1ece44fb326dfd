"""One containerd per node, inside the node's network namespace, configured for pods.

The runtime is containerd 2.x and runc built from their Go modules (localcluster/upstream/containerd), or with
PYNODE_CONTAINERD=debian Debian 12's containerd 1.6 and runc packages.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from . import cgroups, images, procs
from .settings import RUNTIMES, Node

CNI_BIN_DIR = "/usr/lib/cni"


def _daemon(node: Node) -> str:
    return f"containerd-{node.name}"


def config_toml(node: Node) -> str:
    """containerd's config for the node: version 3 for containerd 2.x, version 2 for Debian's 1.6."""
    if node.runtime == "debian":
        return _config_v2(node)
    return _config_v3(node)


def _config_v3(node: Node) -> str:
    d = node.dir / "containerd"
    cluster = node.cluster
    runtime = "plugins.'io.containerd.cri.v1.runtime'"
    return f"""\
# containerd 2.x for local node {node.name}; written by localcluster/containerd.py.
version = 3
root = '{d / 'root'}'
state = '{d / 'state'}'
imports = []  # nothing from the host's /etc/containerd
disabled_plugins = ['io.containerd.nri.v1.nri']  # NRI's socket is one fixed path for the whole host

[grpc]
  address = '{node.containerd_socket}'

[ttrpc]
  address = '{node.containerd_socket}.ttrpc'

[plugins.'io.containerd.internal.v1.opt']
  path = '{d / 'opt'}'

[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = '{images.pause_name(cluster)}'

[{runtime}]
  # This sandbox runs without CAP_SYS_RESOURCE, so containerd may not lower a
  # container's oom_score_adj below its own; restricting it to containerd's own
  # value keeps runc from failing with EACCES when it writes the score.
  restrict_oom_score_adj = true
  # Pod network namespaces are mounted under the node's state directory, so that
  # everything the node mounts lives below one path and `down` finds it all.
  netns_mounts_under_state_dir = true
  enable_selinux = false
  [{runtime}.containerd]
    default_runtime_name = 'runc'
    [{runtime}.containerd.runtimes.runc]
      runtime_type = 'io.containerd.runc.v2'
      runtime_path = '{node.runtime_program('containerd-shim-runc-v2')}'
      [{runtime}.containerd.runtimes.runc.options]
        BinaryName = '{node.runtime_program('runc')}'
        SystemdCgroup = false
        # runc keeps its container state here rather than in the shared /run/containerd/runc.
        Root = '{d / 'runc'}'
  [{runtime}.cni]
    bin_dirs = ['{CNI_BIN_DIR}']
    conf_dir = '{node.dir / 'cni'}'
    max_conf_num = 1

[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = '127.0.0.1'
  stream_server_port = '0'
"""


def _config_v2(node: Node) -> str:
    d = node.dir / "containerd"
    return f"""\
# containerd 1.6 (Debian's) for local node {node.name}; written by localcluster/containerd.py.
version = 2
root = "{d / 'root'}"
state = "{d / 'state'}"

[grpc]
  address = "{node.containerd_socket}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d / 'opt'}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{images.pause_name(node.cluster)}"
  # See the version 3 config above for restrict_oom_score_adj and netns_mounts_under_state_dir.
  restrict_oom_score_adj = true
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


RUNTIME_MARK = "runtime"  # in the node's containerd directory: which runtime made its state


def start(node: Node) -> None:
    cluster = node.cluster
    runtime = node.runtime
    if runtime not in RUNTIMES or cluster.containerd not in ("", *RUNTIMES):
        raise procs.UpError(f"containerd: PYNODE_CONTAINERD={cluster.containerd or runtime!r}; expected one of "
                            f"{RUNTIMES}")
    if cluster.containerd and cluster.containerd != runtime:
        raise procs.UpError(f"containerd: {node.name}'s state was made by the {runtime} runtime, and "
                            f"PYNODE_CONTAINERD asks for {cluster.containerd}; run `make down` first to switch")
    where = "Debian packages containerd and runc" if runtime == "debian" else \
        f"built by localcluster/upstream/containerd/build.sh into {node.containerd_bin}"
    for tool in ("containerd", "containerd-shim-runc-v2", "runc", "ctr"):
        if not node.runtime_program(tool):
            raise procs.UpError(f"containerd: '{tool}' is missing ({where})")
    if not Path(CNI_BIN_DIR, "bridge").exists():
        raise procs.UpError(f"containerd: no CNI plugins in {CNI_BIN_DIR} (Debian package containernetworking-plugins)")
    config = write_config(node)
    (node.dir / "containerd" / RUNTIME_MARK).write_text(runtime + "\n")
    name = _daemon(node)
    _, cgroup_procs = cgroups.ensure(node.cgroup_name, node.dir)
    procs.start(cluster, name, [node.runtime_program("containerd"), f"--config={config}"],
                netns=node.netns, cgroup_procs=cgroup_procs)
    procs.wait_healthy(cluster, name, lambda: healthy(node), timeout=30)


def import_images(node: Node) -> None:
    cluster = node.cluster
    for make in images.CATALOG.values():
        images.import_archive(images.build(make(cluster), cluster.images), node)


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
