"""In-place pod resize on the real node: the `resize` subresource changes a running container's cgroup without a
restart, the status reports it, and a resize the node cannot hold beside its other pods waits as Deferred."""

from __future__ import annotations

import json

from lightkube.resources.core_v1 import Node

from tests.integration.pods import container, make_pod, wait_pod
from tests.integration.polling import eventually

CGROUP_LIMITS = ("if [ -f /sys/fs/cgroup/cpu.max ]; then cat /sys/fs/cgroup/cpu.max /sys/fs/cgroup/memory.max; "
                 "else cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/memory/memory.limit_in_bytes; fi")


def _resources(cpu: str, memory: str) -> dict:
    return {"requests": {"cpu": cpu, "memory": memory}, "limits": {"cpu": cpu, "memory": memory}}


def _resize(cluster, namespace: str, name: str, cpu: str, memory: str) -> None:
    from localcluster import procs

    patch = {"spec": {"containers": [{"name": "main", "resources": _resources(cpu, memory)}]}}
    done = procs.kubectl(cluster, "patch", "-n", namespace, "pod", name, "--subresource", "resize",
                         "--type", "strategic", "-p", json.dumps(patch))
    assert done.returncode == 0, done.stderr


def _cgroup_limits(cluster, namespace: str, name: str) -> list[str]:
    from localcluster import procs

    done = procs.kubectl(cluster, "exec", "-n", namespace, name, "--", "sh", "-c", CGROUP_LIMITS)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def _conditions(pod) -> dict:
    return {c.type: c for c in pod.status.conditions or []}


def _settled(pod) -> bool:
    return (pod.status.observedGeneration == pod.metadata.generation
            and not {"PodResizePending", "PodResizeInProgress"} & set(_conditions(pod)))


def test_a_running_container_is_resized_in_place_and_one_that_does_not_fit_waits(admin, node, namespace, cluster):
    admin.create(make_pod(node, namespace, "resized", [container(resources=_resources("100m", "64Mi"))]))
    pod = wait_pod(admin, namespace, "resized", lambda p: p.status.phase == "Running", what="Running")
    before = pod.status.containerStatuses[0]
    assert before.allocatedResources == {"cpu": "100m", "memory": "64Mi"}
    assert _cgroup_limits(cluster, namespace, "resized") in (["10000", str(64 << 20)],
                                                             ["10000", "100000", str(64 << 20)])

    _resize(cluster, namespace, "resized", "200m", "96Mi")
    pod = wait_pod(admin, namespace, "resized", lambda p: p.metadata.generation == 2 and _settled(p),
                   what="the resize actuated")
    after = pod.status.containerStatuses[0]
    assert after.containerID == before.containerID and after.restartCount == 0
    assert after.resources.to_dict() == _resources("200m", "96Mi")
    assert after.allocatedResources == {"cpu": "200m", "memory": "96Mi"}
    assert pod.status.qosClass == "Guaranteed"
    assert _cgroup_limits(cluster, namespace, "resized") in (["20000", str(96 << 20)],
                                                             ["20000", "100000", str(96 << 20)])

    # All of the node's cpu: the apiserver lets it through (it fits the allocatable), the node cannot give it
    # while another pod holds some: Deferred, and the container keeps what it has.
    admin.create(make_pod(node, namespace, "holder", [container(resources={"requests": {"cpu": "100m"}})]))
    wait_pod(admin, namespace, "holder", lambda p: p.status.phase == "Running", what="Running")
    allocatable = admin.get(Node, node.name).status.allocatable["cpu"]
    _resize(cluster, namespace, "resized", allocatable, "96Mi")
    pod = wait_pod(admin, namespace, "resized", lambda p: "PodResizePending" in _conditions(p),
                   what="PodResizePending")
    pending = _conditions(pod)["PodResizePending"]
    assert pending.reason == "Deferred"
    assert pending.message.startswith("Node didn't have enough resource: cpu, requested: ")
    assert pod.status.containerStatuses[0].resources.to_dict() == _resources("200m", "96Mi")
    assert _cgroup_limits(cluster, namespace, "resized") in (["20000", str(96 << 20)],
                                                             ["20000", "100000", str(96 << 20)])

    # A restarted pykubelet finds the allocation in its checkpoint: still Deferred, the container untouched.
    from localcluster import agents, procs

    agents.restart_kubelet(node)
    eventually(lambda: procs.kubectl(cluster, "exec", "-n", namespace, "resized", "--", "true").returncode == 0,
               timeout=30, what="the restarted pykubelet serving exec")
    pod = wait_pod(admin, namespace, "resized",
                   lambda p: p.status.containerStatuses[0].resources.to_dict() == _resources("200m", "96Mi")
                   and "PodResizePending" in _conditions(p), what="still Deferred after a pykubelet restart")
    assert pod.status.containerStatuses[0].containerID == before.containerID
    assert _cgroup_limits(cluster, namespace, "resized") in (["20000", str(96 << 20)],
                                                             ["20000", "100000", str(96 << 20)])

    _resize(cluster, namespace, "resized", "200m", "96Mi")  # back to what it has: nothing pending
    pod = wait_pod(admin, namespace, "resized", _settled, what="the pending resize withdrawn")
    assert pod.status.containerStatuses[0].restartCount == 0
