"""What the benchmarks share: a second local node running the upstream kubelet, and measuring agents.

The local cluster's node pynode-n1 runs pykubelet. `bring_up` adds pynode-n2 (its own
network namespace, cgroup and containerd, the same images) and starts the upstream kubelet
there with exactly pykubelet's flags and KubeletConfiguration plus the few settings it needs
in this sandbox; `cleanup` removes it again, with its Node, Lease and CSRs.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import yaml

from localcluster import agents, cgroups, containerd, lock, network, procs, settings
from localcluster import cluster as local
from localcluster.settings import Node

MIB = 1024 * 1024

# The host-wide sysctls the upstream kubelet insists on (setupKernelTunables in
# pkg/kubelet/cm/container_manager_linux.go): it rewrites any that differ, or, with
# protectKernelDefaults, refuses to start. See `isolated`.
KERNEL_TUNABLES = {
    "vm/overcommit_memory": 1, "vm/panic_on_oom": 0, "kernel/panic": 10, "kernel/panic_on_oops": 1,
    "kernel/keys/root_maxkeys": 1000000, "kernel/keys/root_maxbytes": 25000000,
}


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# --- the upstream kubelet on a second node ------------------------------------------------------

def daemon(node: Node) -> str:
    return f"kubelet-{node.name}"


def upstream_configuration(node: Node) -> dict:
    """pykubelet's KubeletConfiguration, plus what the upstream kubelet needs in this sandbox."""
    root = agents.kubelet_dir(node)
    return {
        **agents.kubelet_configuration(node),
        # The host mounts the cgroup v1 controllers (v2 only as the hybrid "unified" extra), and
        # since 1.35 the kubelet refuses to start on cgroup v1 unless told it may.
        "failCgroupV1": False,
        # Both default to host paths (/var/log/pods, /usr/libexec/kubernetes/kubelet-plugins/...)
        # that the kubelet creates at start; keep them in the node's directory, which cleanup removes.
        "podLogsDir": str(root / "pod-logs"),
        "volumePluginDir": str(root / "volume-plugins"),
        # Keeps pods that others create during the run (the test suite's, say) off this node, so
        # that no one's pod depends on a node that goes away. The kubelet itself only refuses pods
        # over NoExecute taints, so pods bound with spec.nodeName still run here.
        "registerWithTaints": [{"key": "pynode.dev/bench", "value": "upstream-kubelet", "effect": "NoSchedule"}],
    }


def isolated(node: Node, argv: list[str]) -> list[str]:
    """`argv` in a mount namespace of its own, in which the kubelet cannot change the host.

    There, the host-wide sysctls of KERNEL_TUNABLES read as the kubelet wants them (files
    bind-mounted over /proc/sys), so it writes none of them; and /var/log is an empty tmpfs,
    so the /var/log/containers it always creates (a fixed path) is not created on the host.
    Every mount is a slave of the host's (host mounts propagate in, none out) except the kubelet's
    root dir, which `share_root` made a shared mount in the host's namespace and which stays in
    that peer group here: the tmpfs the kubelet mounts for a secret or projected volume shows
    through to containerd, which runs in the host's namespace. Everything is exec'd, so the pid
    procs.start records is the kubelet's.
    """
    root = shlex.quote(str(agents.kubelet_dir(node)))
    fake = node.dir / "sysctl"
    fake.mkdir(parents=True, exist_ok=True)
    # unshare --propagation unchanged keeps the copies of shared mounts in their host peer groups; every
    # shared one but the root dir then becomes a slave, and the kubelet does not start if one would not.
    outside = (f"awk -v keep={root} '{{s = 0; for (i = 7; $i != \"-\"; i++) if ($i ~ /^shared:/) s = 1}} "
               "s && $5 != keep && index($5, keep \"/\") != 1 {print $5}' /proc/self/mountinfo")
    steps = [f"{outside} | while read -r m; do mount --make-slave \"$(printf '%b' \"$m\")\"; done",
             f'test -z "$({outside})"']
    for key, value in KERNEL_TUNABLES.items():
        (fake / key.replace("/", ".")).write_text(f"{value}\n")
        steps.append(f"mount --bind {shlex.quote(str(fake / key.replace('/', '.')))} /proc/sys/{key}")
    steps += ["mount -t tmpfs -o size=1m tmpfs /var/log", 'exec "$@"']
    return ["unshare", "--mount", "--propagation", "unchanged", "--", "sh", "-c", " && ".join(steps), "sh", *argv]


def share_root(node: Node) -> None:
    """Make the kubelet's root dir a shared mount (bound onto itself) in the host's mount namespace.

    So the mounts the kubelet makes beneath it in its own namespace (`isolated`) propagate back to the
    host, where containerd bind-mounts them into containers. remove_node unmounts it (and whatever
    propagated) with the rest of the node's mounts, as `down` does.
    """
    root = agents.kubelet_dir(node)
    root.mkdir(parents=True, exist_ok=True)
    mounted = {line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()}
    if str(root) not in mounted:
        subprocess.run(["mount", "--bind", str(root), str(root)], check=True, capture_output=True)
    subprocess.run(["mount", "--make-rshared", str(root)], check=True, capture_output=True)


def start_upstream(node: Node, extra: dict | None = None) -> int:
    """The upstream kubelet on `node`, with `extra` settings on top of its configuration."""
    flags = agents.kubelet_flags(node)  # exactly pykubelet's flags; this writes pykubelet's config.yaml ...
    config = agents.kubelet_dir(node) / "config.yaml"  # ... which the upstream configuration replaces
    config.write_text(yaml.safe_dump({**upstream_configuration(node), **(extra or {})}, sort_keys=False))
    share_root(node)
    argv = isolated(node, [str(node.cluster.bin / "kubelet"), *flags])
    return procs.start(node.cluster, daemon(node), argv, netns=node.netns,
                       cgroup_procs=tuple(d / "cgroup.procs" for d in cgroups.recorded_dirs(node.dir)))


def bring_up(node: Node, extra: dict | None = None) -> None:
    network.ensure_node(node)
    containerd.start(node)
    containerd.import_images(node)
    start_upstream(node, extra)


def leftovers(node: Node) -> bool:
    return node.dir.exists() or network.netns_exists(node.netns) or bool(procs.running(node.cluster, daemon(node)))


def remove_node(node: Node) -> None:
    """Stop one local node and remove what it put on the host: `down`, for one node (idempotent)."""
    cluster = node.cluster
    for name in procs.daemons(cluster):
        if name.endswith(f"-{node.name}") and name != f"containerd-{node.name}":
            procs.stop(cluster, name)
    containerd.stop(node)
    procs.kill_and_wait(sorted(procs.with_descendants(cgroups.pids(cgroups.recorded_dirs(node.dir)))), grace=0)
    procs.kill_and_wait(network.pids_in(node.netns), grace=5)
    local.unmount_all(node.dir)  # the pods' mounts, then the kubelet root dir share_root bound onto itself
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


def cleanup(node: Node, client) -> None:
    """Remove the second node and its API objects; Ctrl-C and friends wait until this is done."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # let the cleanup finish
    log(f"removing {node.name}")
    remove_node(node)
    try:
        delete_node_objects(client, node.name)
    except Exception as err:  # noqa: BLE001 - the apiserver may be gone; say so and go on
        log(f"could not delete the Node, Lease or CSRs of {node.name}: {err}")


def prepare(node: Node, client) -> None:
    """Build the upstream kubelet (cached after the first time); remove a `node` a killed run left behind."""
    log("building the upstream kubelet (cached after the first time)")
    local.build_upstream(node.cluster, ["kubelet"])
    if leftovers(node):
        log(f"removing the {node.name} an earlier run left behind")
        remove_node(node)
        delete_node_objects(client, node.name)


def interrupt_on_signals() -> None:
    """SIGTERM and SIGHUP raise KeyboardInterrupt, as Ctrl-C does, so that `finally` cleans up ..."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is not signal.SIG_IGN:  # ... unless we were told to ignore it (nohup, &)
            signal.signal(sig, signal.default_int_handler)


def cluster_with_more_nodes(count: int = 2):
    """The running local cluster's settings with `count` nodes, or None (having said why) if it is not up."""
    base = settings.load()
    stopped = [name for name, ok in local.status(base).items() if not ok]
    if stopped:
        print(f"bench: the local cluster is not up ({', '.join(stopped)} not running); start it with `make up`",
              file=sys.stderr)
        return None
    return dataclasses.replace(base, node_count=count)


def admin_client(cluster):
    from lightkube import Client, KubeConfig

    return Client(config=KubeConfig.from_file(str(cluster.admin_kubeconfig)))


# --- the API ------------------------------------------------------------------------------------

def ready_since(client, name: str) -> datetime.datetime | None:
    """When node `name` became Ready, or None while it is not (or not registered)."""
    from lightkube import ApiError
    from lightkube.resources.core_v1 import Node as NodeResource

    try:
        conditions = client.get(NodeResource, name).status.conditions or []
    except ApiError:
        return None
    return next((c.lastTransitionTime for c in conditions if c.type == "Ready" and c.status == "True"), None)


def wait_ready(client, cluster, kubelets: dict[str, str], timeout: float = 120) -> None:
    """Wait until every node is Ready; `kubelets` maps a node's name to its kubelet's daemon name."""
    deadline = time.monotonic() + timeout
    pending = dict(kubelets)
    while pending:
        for node_name, name in list(pending.items()):
            if not procs.running(cluster, name):
                raise procs.UpError(f"{name} is not running; see {procs.log_path(cluster, name)}")
            if ready_since(client, node_name):
                del pending[node_name]
        if pending and time.monotonic() > deadline:
            raise procs.UpError(" ".join(f"{n} not Ready after {timeout:.0f}s; see {procs.log_path(cluster, d)}."
                                         for n, d in pending.items()))
        time.sleep(0.5)


def pods_on(client, name: str) -> int:
    from lightkube.resources.core_v1 import Pod

    return len(list(client.list(Pod, namespace="*", fields={"spec.nodeName": name})))


# --- processes ----------------------------------------------------------------------------------

def started_at(pid: int) -> float:
    """A process's wall-clock start, to 10 ms (psutil's create_time counts from a boot time in whole seconds)."""
    ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")


def usage(pid: int) -> tuple[int, float]:
    """A process's RSS (bytes) and CPU time so far (user + system, s), its children included.

    CPU includes the children it has reaped (a `mount` it ran, say) and those still running.
    """
    proc = psutil.Process(pid)
    times = proc.cpu_times()
    rss, cpu = proc.memory_info().rss, times.user + times.system + times.children_user + times.children_system
    for child in proc.children(recursive=True):
        try:
            rss += child.memory_info().rss
            cpu += sum(child.cpu_times()[:2])
        except psutil.NoSuchProcess:
            pass
    return rss, cpu


def machine_facts(cluster, pykubelet_pid: int) -> dict[str, str]:
    def output(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True).stdout.strip()

    return {
        "nproc": str(os.cpu_count()),
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "kernel": platform.release(),
        "cgroups": "v2" if Path("/sys/fs/cgroup/cgroup.controllers").exists() else "v1 (hybrid)",
        "Kubernetes": f"{cluster.version} (upstream kubelet: {output(str(cluster.bin / 'kubelet'), '--version')})",
        # The containerd the nodes run (the local cluster builds 2.x; PYNODE_CONTAINERD=debian keeps Debian's).
        "containerd": output(cluster.nodes[0].runtime_program("containerd") or "containerd", "--version"),
        # The interpreter pykubelet runs on, from its own command line.
        "python": output(psutil.Process(pykubelet_pid).cmdline()[0], "--version"),
        "pynode": output("git", "-C", str(settings.REPO), "describe", "--always", "--dirty"),
    }


def run_beside_upstream(results: Path, body, *, errors: tuple = (), teardown=None, nodes: int = 2) -> int:
    """The frame of a benchmark: add pynode-n2 with the upstream kubelet, run `body(cluster, node, client)`
    (which returns the report), always remove pynode-n2 (after `teardown(client, node)` if given), and
    write the report to `results`. Returns the exit status. With `nodes` > 2, the cluster settings
    `body` gets name further nodes, which it brings up and its teardown removes.

    The whole run holds the cluster's lock (localcluster.lock), as a test session or a conformance run
    does, so that none of them runs on the cluster meanwhile: they would disturb the figures, and a
    test session's `down` would pull the nodes from under the benchmark."""
    name = f"a benchmark (python -m bench.{Path(sys.argv[0]).stem})"
    try:
        with lock.holding(settings.load(), name):
            return _run_beside_upstream(results, body, errors=errors, teardown=teardown, nodes=nodes)
    except KeyboardInterrupt:  # while waiting for the lock
        print("bench: interrupted", file=sys.stderr)
        return 130


def _run_beside_upstream(results: Path, body, *, errors: tuple, teardown, nodes: int) -> int:
    cluster = cluster_with_more_nodes(nodes)
    if cluster is None:
        return 1
    node = cluster.nodes[1]
    client = admin_client(cluster)
    interrupt_on_signals()
    try:
        prepare(node, client)
        text = body(cluster, node, client)
    except (procs.UpError, psutil.NoSuchProcess, *errors) as err:
        print(f"bench: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    finally:
        if teardown is not None:
            teardown(client, node)
        cleanup(node, client)
    results.parent.mkdir(exist_ok=True)
    results.write_text(text)
    log(f"written to {results.relative_to(settings.REPO)}")
    return 0

