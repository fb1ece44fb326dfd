"""Node-pressure eviction on the real node: DiskPressure from the node filesystem's free space, admission refused
under it, the biggest local-storage user evicted with upstream's message, and recovery when space returns.

pykubelet is restarted with thresholds set just below the filesystem's free space as it is now, so that a pod
writing a few hundred MiB crosses them; the node's usual config is restored at the end.
"""

from __future__ import annotations

import os

from lightkube.resources.core_v1 import Node, Pod

from tests.integration.pods import container, make_pod, wait_pod
from tests.integration.polling import eventually

MiB = 2**20


def node_condition(admin, node, kind: str) -> str:
    found = [c for c in admin.get(Node, node.name).status.conditions if c.type == kind]
    return found[0].status if found else "Unknown"


def test_disk_pressure_refuses_new_pods_evicts_the_largest_user_and_recovers(admin, node, namespace, cluster):
    from localcluster import agents, procs

    fs = os.statvfs(agents.kubelet_dir(node))
    free = fs.f_bavail * fs.f_frsize
    config = agents.kubelet_configuration(node)
    config.update({
        # Condition only (a soft threshold with a long grace period), then eviction (hard) 300 MiB further down.
        "evictionSoft": {"nodefs.available": str(free - 200 * MiB)},
        "evictionSoftGracePeriod": {"nodefs.available": "10m"},
        "evictionHard": {"nodefs.available": str(free - 500 * MiB)},
        "evictionPressureTransitionPeriod": "5s",
    })
    fill = ("dd if=/dev/zero of=/fill1 bs=1M count=400 && while [ ! -f /tmp/more ]; do sleep 1; done && "
            "dd if=/dev/zero of=/fill2 bs=1M count=400; sleep 3600")
    agents.restart_kubelet(node, config)
    try:
        admin.create(make_pod(node, namespace, "bystander", [container()]))
        wait_pod(admin, namespace, "bystander", lambda p: p.status.phase == "Running", what="Running")
        admin.create(make_pod(node, namespace, "writer", [container(command=["sh", "-c", fill])]))
        wait_pod(admin, namespace, "writer", lambda p: p.status.phase == "Running", what="Running")
        eventually(lambda: node_condition(admin, node, "DiskPressure") == "True", timeout=60,
                   what="DiskPressure=True once the writer has filled 400 MiB")

        # Under DiskPressure a new pod (bound directly, past the scheduler's taint) is refused; running ones stay.
        admin.create(make_pod(node, namespace, "late", [container()], nodeName=node.name))
        late = wait_pod(admin, namespace, "late", lambda p: p.status.phase == "Failed", what="refused")
        assert late.status.reason == "Evicted"
        assert late.status.message == "The node had condition: [DiskPressure]. "
        assert admin.get(Pod, "writer", namespace=namespace).status.phase == "Running"  # soft: still in grace

        # Past the hard threshold: the largest local-storage user goes, at once, with upstream's message.
        done = procs.kubectl(cluster, "exec", "-n", namespace, "writer", "--", "touch", "/tmp/more")
        assert done.returncode == 0, done.stderr
        writer = wait_pod(admin, namespace, "writer", lambda p: p.status.phase == "Failed", timeout=90,
                          what="evicted")
        assert writer.status.reason == "Evicted"
        message = writer.status.message
        assert message.startswith("The node was low on resource: ephemeral-storage. Threshold quantity: "), message
        assert "Container main was using " in message and "has larger consumption of ephemeral-storage" in message
        disruption = [c for c in writer.status.conditions if c.type == "DisruptionTarget"]
        assert disruption and disruption[0].reason == "TerminationByKubelet"

        # As upstream, the evicted pod's containers are removed at once: its writable layer, what pressed, goes
        # while the pod object stays (Failed, Evicted), and no second pod is evicted for the same shortfall.
        eventually(lambda: node_condition(admin, node, "DiskPressure") == "False", timeout=90,
                   what="DiskPressure=False once the writer's layer is gone and the transition period has passed")
        writer = admin.get(Pod, "writer", namespace=namespace)
        assert writer.status.phase == "Failed" and writer.status.reason == "Evicted"
        assert writer.status.containerStatuses[0].state.terminated is not None
        bystander = admin.get(Pod, "bystander", namespace=namespace)
        assert bystander.status.phase == "Running" and bystander.status.containerStatuses[0].restartCount == 0
        admin.create(make_pod(node, namespace, "after", [container()], nodeName=node.name))
        wait_pod(admin, namespace, "after", lambda p: p.status.phase == "Running", what="admitted again")
    finally:
        agents.restart_kubelet(node)
        for name in ("bystander", "writer", "late", "after"):
            try:
                admin.delete(Pod, name, namespace=namespace, grace_period=0)
            except Exception:  # noqa: BLE001 - already gone
                pass
