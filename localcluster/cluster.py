"""`up`, `down` and `status` of the local cluster: the order in which the pieces start and stop."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from . import agents, bootstrap, cgroups, containerd, controlplane, dns, images, network, pki, procs, sample
from .settings import CONTAINERD_DIR, COREDNS_DIR, UPSTREAM_DIR, Cluster, Node

REQUIRED_TOOLS = {
    "ip": "iproute2", "nsenter": "util-linux", "containerd": "containerd", "runc": "runc", "ctr": "containerd",
    "etcd": "etcd-server", "busybox": "busybox-static", "gcc": "gcc", "go": "golang", "iptables": "iptables",
}


def log(msg: str) -> None:
    print(f"[localcluster] {msg}", file=sys.stderr, flush=True)


def preflight(cluster: Cluster) -> None:
    if os.geteuid() != 0:
        raise procs.UpError("preflight: the local cluster needs root (network namespaces, mounts, cgroups)")
    missing = sorted({pkg for tool, pkg in REQUIRED_TOOLS.items() if not shutil.which(tool)})
    if missing:
        raise procs.UpError(f"preflight: missing packages: {' '.join(missing)} (run `make deps`)")
    if not Path("/proc/sys/net/bridge").exists() and not Path("/sys/module/bridge").exists():
        raise procs.UpError("preflight: this kernel has no bridge support, which the node network needs")
    network.check_no_overlap(cluster)


def build_upstream(cluster: Cluster, programs: list[str] | None = None) -> None:
    proc = subprocess.run([str(UPSTREAM_DIR / "build.sh"), *(programs or [])],
                          env={**os.environ, "PYNODE_CACHE": str(cluster.cache)})
    if proc.returncode != 0:
        raise procs.UpError(f"upstream build failed (exit {proc.returncode}); its output is above")


def build_recipe(cluster: Cluster, recipe: Path, what: str) -> None:
    """Run a Go recipe's build.sh (localcluster/upstream/<recipe>/) into the cache; seconds when cached."""
    proc = subprocess.run([str(recipe / "build.sh")], env={**os.environ, "PYNODE_CACHE": str(cluster.cache)})
    if proc.returncode != 0:
        raise procs.UpError(f"{what} build failed (exit {proc.returncode}); its output is above")


def build_node_programs(cluster: Cluster) -> None:
    """containerd 2.x and runc (unless every node runs Debian's) and CoreDNS; seconds when cached."""
    if any(node.runtime != "debian" for node in cluster.nodes):
        build_recipe(cluster, CONTAINERD_DIR, "containerd")
    build_recipe(cluster, COREDNS_DIR, "CoreDNS")


def up(cluster: Cluster) -> None:
    started = time.monotonic()
    preflight(cluster)
    build_upstream(cluster)
    build_node_programs(cluster)
    try:
        cluster.state.mkdir(parents=True, exist_ok=True)
        pki.ensure(cluster)
        network.ensure_bridge(cluster)
        log(f"control plane on {cluster.server}")
        controlplane.start(cluster)
        bootstrap.apply(cluster)
        for node in cluster.nodes:
            start_node(node)
        dns.apply(cluster, images.coredns_name(cluster))
        dns.wait(cluster)
        log(f"cluster DNS: CoreDNS behind kube-dns at {cluster.dns_service_ip}")
        log("sample workload:\n" + sample.run(cluster, images.busybox_name(cluster)))
        node = cluster.nodes[0]
        log(f"through its Service (NodePort {node.ip}:{sample.NODE_PORT}): "
            + sample.through_service(node))
    except (procs.UpError, OSError, subprocess.SubprocessError) as err:
        log(f"up failed: {err}")
        log(f"stopping what up started (logs stay in {cluster.logs})")
        down(cluster, keep_logs=True)
        raise procs.UpError(str(err)) from err
    log(f"ready in {time.monotonic() - started:.1f}s")


def start_node(node: Node) -> None:
    """One pynode node of a running control plane: its namespace, containerd with the cluster's images, pykubelet
    (Ready, serving certificate approved) and pyproxy; what already runs is kept."""
    cluster = node.cluster
    log(f"node {node.name}: netns {node.netns}, IP {node.ip}, pods {node.pod_cidr}")
    network.ensure_node(node)
    containerd.start(node)
    containerd.import_images(node)
    if not procs.running(cluster, f"pykubelet-{node.name}"):
        agents.start(node, "pykubelet", *agents.kubelet_flags(node))
    agents.wait_node_ready(node)
    bootstrap.approve_serving_certificates(node)
    if not procs.running(cluster, f"pyproxy-{node.name}"):
        agents.start(node, "pyproxy", *agents.proxy_flags(node))
    agents.wait_proxy_ready(node)


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path).rstrip("/") + "/"
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mountpoint = line.split()[4].replace("\\040", " ")
        if mountpoint.startswith(prefix):
            found.append(mountpoint)
    return sorted(set(found), key=lambda m: -m.count("/"))


def unmount_all(path: Path) -> None:
    for mountpoint in _mounts_under(path):
        if subprocess.run(["umount", mountpoint], capture_output=True).returncode != 0:
            subprocess.run(["umount", "--lazy", mountpoint], capture_output=True)


def _node_dirs(cluster: Cluster) -> list[Path]:
    nodes_dir = cluster.state / "nodes"
    return sorted(p for p in nodes_dir.iterdir() if p.is_dir()) if nodes_dir.is_dir() else []


def known_nodes(cluster: Cluster) -> list[Node]:
    """The configured nodes and any other local node that left a directory or a namespace behind."""
    names = {p.name for p in _node_dirs(cluster)} | set(network.node_namespaces())
    indexes = {n.index for n in cluster.nodes} | {int(m.group(1)) for name in names
                                                  if (m := re.fullmatch(r"pynode-n(\d+)", name))}
    return [Node(i, cluster) for i in sorted(indexes)]


def down(cluster: Cluster, keep_logs: bool = False) -> None:
    """Stop everything `up` started and remove what it created on the host; idempotent.

    `keep_logs` leaves the logs directory, so that a failed `up` can point at them.
    """
    nodes = known_nodes(cluster)
    for node in nodes:
        # The node's agents (pykubelet, pyproxy, or an upstream agent a benchmark started) first.
        for daemon in procs.daemons(cluster):
            if daemon.endswith(f"-{node.name}") and daemon != f"containerd-{node.name}":
                procs.stop(cluster, daemon)
        containerd.stop(node)
    # Whatever the node's containerd left running (shims, containers) sits in the node's cgroups.
    node_dirs = _node_dirs(cluster)
    for node_dir in node_dirs:
        if left := cgroups.kill_all(cgroups.recorded_dirs(node_dir)):
            log(f"processes in {node_dir.name}'s cgroups survived SIGKILL: "
                + ", ".join(f"{pid} ({what})" for pid, what in left.items()))
        unmount_all(node_dir)
    stuck = cgroups.remove(node_dirs)
    if stuck:
        log(f"could not remove cgroups (still in use?): {' '.join(map(str, stuck))}")
    controlplane.stop(cluster)
    # Anything still naming the state directory was started by an `up` whose pidfiles are gone.
    procs.kill_and_wait(sorted(procs.mentioning(str(cluster.state))), grace=5)
    for node in nodes:
        procs.kill_and_wait(network.pids_in(node.netns), grace=5)
        network.remove_node(node)
    network.remove_bridge(cluster)
    unmount_all(cluster.state)
    if cluster.state.exists():
        for path in cluster.state.iterdir():
            if not (keep_logs and path == cluster.logs):
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        if not keep_logs:
            cluster.state.rmdir()


def node_leftovers(node: Node) -> bool:
    """Whether `node` (one a run adds and removes again) left a directory, a namespace or a daemon behind."""
    return (node.dir.exists() or network.netns_exists(node.netns)
            or any(name.endswith(f"-{node.name}") for name in procs.daemons(node.cluster)))


def remove_node(node: Node) -> None:
    """Stop one local node and remove what it put on the host: `down`, for one node (idempotent)."""
    cluster = node.cluster
    for name in procs.daemons(cluster):
        if name.endswith(f"-{node.name}") and name != f"containerd-{node.name}":
            procs.stop(cluster, name)
    containerd.stop(node)
    procs.kill_and_wait(sorted(procs.with_descendants(cgroups.pids(cgroups.recorded_dirs(node.dir)))), grace=0)
    procs.kill_and_wait(network.pids_in(node.netns), grace=5)
    unmount_all(node.dir)  # the pods' mounts, then the kubelet root dir share_root bound onto itself
    network.remove_node(node)
    stuck = cgroups.remove([node.dir])
    if stuck:
        log(f"could not remove cgroups (still in use?): {' '.join(map(str, stuck))}")
    shutil.rmtree(node.dir, ignore_errors=True)


def delete_node_objects(client, name: str) -> None:
    """Delete the Node, its Lease and the CSRs of its client certificates."""
    from cryptography import x509
    from lightkube import ApiError
    from lightkube.resources.certificates_v1 import CertificateSigningRequest
    from lightkube.resources.coordination_v1 import Lease
    from lightkube.resources.core_v1 import Node as NodeResource

    doomed = [(NodeResource, name, None), (Lease, name, "kube-node-lease")]
    for csr in client.list(CertificateSigningRequest):
        request = x509.load_pem_x509_csr(base64.b64decode(csr.spec.request))
        names = request.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        if names and names[0].value == f"system:node:{name}":
            doomed.append((CertificateSigningRequest, csr.metadata.name, None))
    for resource, object_name, namespace in doomed:
        try:
            client.delete(resource, object_name, **({"namespace": namespace} if namespace else {}))
        except ApiError as err:
            if err.status.code != 404:
                raise


def remove_node_and_objects(node: Node, client) -> None:
    """`remove_node`, then the node's Node, Lease and CSRs (a failure there is logged: the apiserver may be gone)."""
    remove_node(node)
    try:
        delete_node_objects(client, node.name)
    except Exception as err:  # noqa: BLE001 - say so and go on
        log(f"could not delete the Node, Lease or CSRs of {node.name}: {err}")


def env_lines(cluster: Cluster) -> str:
    return f"export KUBECONFIG={cluster.admin_kubeconfig}\nexport PATH={cluster.bin}:$PATH"


def status(cluster: Cluster) -> dict[str, bool]:
    state = {name: bool(procs.running(cluster, name)) for name in controlplane.COMPONENTS}
    for node in cluster.nodes:
        for daemon in ("containerd", "pykubelet"):
            state[f"{daemon}-{node.name}"] = bool(procs.running(cluster, f"{daemon}-{node.name}"))
    return state
