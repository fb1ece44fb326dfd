"""Disk reclaim on the real node, as upstream's eviction manager does it before evicting: the containers of
finished pods go, then every image no container uses, and when that ends the pressure no pod is evicted.

A pod runs to completion on an image of the test's own (busybox and 64 MiB of random bytes); pykubelet is
restarted with an `imagefs.available` hard threshold 16 MiB under the free space there is (so that pod finished
before this pykubelet started: it gets no pod worker); a second pod runs to completion on the same image; then a
48 MiB file creates the pressure, which only removing both pods' containers and then the image can relieve. Every other
image on the node is pinned first (the local cluster imports its images pinned already; one that is not is
pinned for the test and unpinned after), so a developer's cluster keeps every image it has. The collection's
own rounds (high/low thresholds, maximum age) come every 5 minutes, too seldom for a test: unit tests cover them.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid

import pytest
from lightkube.resources.core_v1 import Event, Pod

from cri import CRIClient
from localcluster import procs
from tests.integration.pods import container, make_pod, wait_pod
from tests.integration.polling import eventually

pytestmark = pytest.mark.integration

VICTIM_SIZE = 64 * 2**20


def runtime_images(node) -> dict[str, tuple[list[str], bool]]:
    """image ID -> (its names, pinned), as CRI lists them."""
    async def listed():
        async with CRIClient(str(node.containerd_socket), timeout=10) as runtime:
            return (await runtime.list_images()).images
    return {image.id: (list(image.repo_tags), image.pinned) for image in asyncio.run(listed())}


def test_disk_pressure_is_relieved_by_a_finished_pods_containers_and_its_image_and_no_pod_is_evicted(
        admin, node, cluster, namespace, tmp_path):
    from localcluster import agents, images

    tag = uuid.uuid4().hex[:12]
    victim = images.Image(names=[f"pynode.test/gc-victim:{tag}"], entries=[
        *images.busybox_entries(cluster), images.Entry("/victim", data=os.urandom(VICTIM_SIZE), mode=0o644)])
    images.import_archive(images.build(victim, tmp_path), node, pin=False)

    def victim_listed():
        """CRI learns of an image `ctr` imported from containerd's events, a moment after the import."""
        listed = runtime_images(node)
        ids = [i for i, (names, _) in listed.items() if victim.names[0] in names]
        return (listed, ids) if ids else None

    before, victim_ids = eventually(victim_listed, timeout=10, what="the imported image in CRI's list")
    assert len(victim_ids) == 1 and not before[victim_ids[0]][1]
    # An image with no name left (an older build of a re-imported name) cannot be pinned, nor pulled by name:
    # the collection may take it too.
    kept = {i for i, (names, _) in before.items() if names and i != victim_ids[0]}
    pinned_here = [name for i in kept if not before[i][1] for name in before[i][0]]
    for name in pinned_here:
        images.set_pinned(name, node)
    eventually(lambda: all(runtime_images(node)[i][1] for i in kept), timeout=10,
               what="every other named image pinned in CRI's view")

    # A threshold 16 MiB under the free space there is now: no pressure until a filler of 48 MiB is written,
    # then 32 MiB short, which only the victim image (its layer blob and its unpacked snapshot) can make up.
    fs = os.statvfs(agents.kubelet_dir(node))
    threshold = fs.f_bavail * fs.f_frsize - 16 * 2**20
    config = agents.kubelet_configuration(node)
    config.update({"evictionHard": {"imagefs.available": str(threshold)}, "evictionPressureTransitionPeriod": "5s",
                   "imageMinimumGCAge": "1s"})
    log = procs.log_path(cluster, f"pykubelet-{node.name}")
    seen = log.stat().st_size
    filler = agents.kubelet_dir(node) / f"reclaim-test-filler-{tag}"
    # The victim is held by pods that ran to completion: their exited containers keep the image in use. One
    # finishes before the restart, one after.
    admin.create(make_pod(node, namespace, "earlier", [container(image=victim.names[0], command=["true"])],
                          restartPolicy="Never"))
    wait_pod(admin, namespace, "earlier", lambda p: p.status.phase == "Succeeded", what="Succeeded")
    time.sleep(5)  # its worker stops the sandbox and releases the volumes
    agents.restart_kubelet(node, config)
    try:
        admin.create(make_pod(node, namespace, "bystander", [container()]))
        wait_pod(admin, namespace, "bystander", lambda p: p.status.phase == "Running", what="Running")
        admin.create(make_pod(node, namespace, "done", [container(image=victim.names[0], command=["true"])],
                              restartPolicy="Never"))
        wait_pod(admin, namespace, "done", lambda p: p.status.phase == "Succeeded", what="Succeeded")
        time.sleep(5)  # its worker stops the sandbox and releases the volumes: the pod counts as finished
        with filler.open("wb") as out:
            for _ in range(48):
                out.write(os.urandom(2**20))
            out.flush()
            os.fsync(out.fileno())

        eventually(lambda: victim_ids[0] not in runtime_images(node), timeout=60, what="the victim image removed")
        assert kept <= set(runtime_images(node))  # every pinned or used image stays

        def logged_since_restart() -> str:
            with log.open(errors="replace") as lines:
                lines.seek(seen)
                return lines.read()

        # The image is gone before the eviction manager has looked again and said so.
        eventually(lambda: "Eviction manager: able to reduce resource pressure without evicting pods."
                   in logged_since_restart(), timeout=30, what="the eviction manager's verdict after the reclaim")
        bystander = admin.get(Pod, "bystander", namespace=namespace)
        assert bystander.status.phase == "Running" and bystander.status.containerStatuses[0].restartCount == 0
        assert not [e for e in admin.list(Event, namespace=namespace) if e.reason == "Evicted"]
        # The finished pods' containers are gone from the runtime; their statuses in the API stand.
        for name in ("earlier", "done"):
            done = admin.get(Pod, name, namespace=namespace)
            assert done.status.phase == "Succeeded", name
            assert done.status.containerStatuses[0].state.terminated.exitCode == 0, name
        assert "Removing the containers of a pod that finished before this start" in logged_since_restart()
        metrics = procs.kubectl(cluster, "get", "--raw", f"/api/v1/nodes/{node.name}/proxy/metrics").stdout
        assert 'kubelet_image_garbage_collected_total{reason="space"} ' in metrics
        assert 'kubelet_evictions{eviction_signal="imagefs.available"}' not in metrics
    finally:
        filler.unlink(missing_ok=True)
        agents.restart_kubelet(node)
        for name in pinned_here:
            images.set_pinned(name, node, pinned=False)
        images.remove_image(victim.names[0], node)
