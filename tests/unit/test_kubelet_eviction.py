"""The eviction manager: local storage limits (emptyDir sizeLimit, pod and container ephemeral-storage limits),
node pressure signals and thresholds, conditions, ranking, messages and admission."""

from __future__ import annotations

import asyncio
import time
from unittest import mock

import pytest

from pykubelet.config.kubeletconfig import ConfigError, parse
from pykubelet.eviction import EvictionManager, ranking, signals
from pykubelet.eviction import local_storage as eviction

MiB = 2**20


def storage_pod(volumes=(), containers=None, **meta):
    return {"metadata": {"name": "p", "namespace": "ns", "uid": "u", **meta},
            "spec": {"volumes": list(volumes), "containers": containers or [{"name": "c"}]}}


def test_an_empty_dir_over_its_size_limit_is_a_violation():
    pod = storage_pod([{"name": "cache", "emptyDir": {"sizeLimit": "1Mi"}}, {"name": "big", "emptyDir": {}}])
    ok = {"volume": [{"name": "cache", "usedBytes": 1024 * 1024}, {"name": "big", "usedBytes": 10 ** 9}]}
    assert eviction.local_storage_violation(pod, ok) is None
    over = {"volume": [{"name": "cache", "usedBytes": 1024 * 1024 + 1}]}
    assert eviction.local_storage_violation(pod, over) == 'Usage of EmptyDir volume "cache" exceeds the limit "1Mi". '


def test_pod_and_container_ephemeral_storage_limits():
    containers = [{"name": "a", "resources": {"limits": {"ephemeral-storage": "2Mi"}}},
                  {"name": "b", "resources": {"limits": {"ephemeral-storage": "1Mi"}}}]
    pod = storage_pod(containers=containers)
    under = {"ephemeral-storage": {"usedBytes": 3 * 2**20}, "containers": [
        {"name": "a", "rootfs": {"usedBytes": 2**20}, "logs": {"usedBytes": 2**20}}]}
    assert eviction.local_storage_violation(pod, under) is None
    assert eviction.local_storage_violation(pod, {"ephemeral-storage": {"usedBytes": 3 * 2**20 + 1}}) == \
        "Pod ephemeral local storage usage exceeds the total limit of containers 3Mi. "
    container_over = {"containers": [{"name": "b", "rootfs": {"usedBytes": 2**20}, "logs": {"usedBytes": 1}}]}
    assert eviction.local_storage_violation(pod, container_over) == \
        'Container b exceeded its local ephemeral storage limit "1Mi". '


async def no_node_stats():
    raise AssertionError("node stats read with no threshold configured")


def test_the_manager_evicts_only_pods_that_are_over_and_not_critical():
    over = {"volume": [{"name": "cache", "usedBytes": 2 * 2**20}]}
    plain = storage_pod([{"name": "cache", "emptyDir": {"sizeLimit": "1Mi"}}])
    static = storage_pod([{"name": "cache", "emptyDir": {"sizeLimit": "1Mi"}}], uid="s",
                         annotations={"kubernetes.io/config.source": "file"})
    critical = {**storage_pod([{"name": "cache", "emptyDir": {"sizeLimit": "1Mi"}}], uid="c")}
    critical["spec"]["priority"] = 2_000_001_000
    evicted = []

    async def summary():
        return {"pods": [{"podRef": {"uid": uid}, **over} for uid in ("u", "s", "c")]}
    manager_ = EvictionManager(node_stats=no_node_stats, summary=summary, pods=lambda: [plain, static, critical],
                               evict=lambda pod, message, grace: evicted.append((pod["metadata"]["uid"], message)),
                               thresholds=[])
    assert asyncio.run(manager_.check()) == ["u"]
    assert evicted == [("u", 'Usage of EmptyDir volume "cache" exceeds the limit "1Mi". ')]


def test_no_stats_are_read_while_no_pod_has_a_local_storage_limit():
    async def summary():
        raise AssertionError("the runtime was asked for stats")
    manager_ = EvictionManager(node_stats=no_node_stats, summary=summary,
                               pods=lambda: [storage_pod([{"name": "d", "emptyDir": {}}])],
                               evict=lambda pod, message, grace: None, thresholds=[])
    assert asyncio.run(manager_.check()) == []


# --- node pressure ---------------------------------------------------------------------------------------------

def node_stats(memory_available=8 * 2**30, working_set=2**30, fs_available=50 * 2**30, fs_capacity=100 * 2**30,
               inodes_free=10**6, maxpid=4194304, curproc=500):
    return {"memory": {"availableBytes": memory_available, "workingSetBytes": working_set},
            "fs": {"availableBytes": fs_available, "capacityBytes": fs_capacity, "inodesFree": inodes_free,
                   "inodes": 2 * 10**6},
            "runtime": {"imageFs": {"availableBytes": fs_available, "capacityBytes": fs_capacity}},
            "rlimit": {"maxpid": maxpid, "curproc": curproc}}


def test_signals_are_observed_from_the_node_stats_and_met_below_their_threshold():
    seen = signals.observe(node_stats(memory_available=50 * MiB, fs_available=5 * 2**30, curproc=4194000))
    assert seen[signals.MEMORY] == signals.Observation(50 * MiB, 50 * MiB + 2**30)
    assert seen[signals.NODEFS] == signals.Observation(5 * 2**30, 100 * 2**30)
    assert seen[signals.NODEFS_INODES] == signals.Observation(10**6, 2 * 10**6)
    assert seen[signals.PIDS] == signals.Observation(304, 4194304)
    assert signals.CONTAINERFS not in seen  # no figure, no observation
    configured = signals.thresholds({"memory.available": "100Mi", "nodefs.available": "10%",
                                     "nodefs.inodesFree": "0%", "pid.available": "1k"}, {}, {}, {})
    assert [t.signal for t in configured] == ["memory.available", "nodefs.available", "pid.available"]  # 0% is off
    assert [t.signal for t in signals.met(configured, seen)] == ["memory.available", "nodefs.available",
                                                                   "pid.available"]
    assert signals.met(configured, signals.observe(node_stats())) == []


def pod(name, *, uid=None, priority=0, memory_request=None, qos_limits=None, grace=None, tolerations=None):
    resources = {}
    if memory_request:
        resources["requests"] = {"memory": memory_request}
    if qos_limits:
        resources["limits"] = qos_limits
    spec = {"containers": [{"name": "c", "resources": resources}], "priority": priority}
    if grace is not None:
        spec["terminationGracePeriodSeconds"] = grace
    if tolerations:
        spec["tolerations"] = tolerations
    return {"metadata": {"name": name, "namespace": "ns", "uid": uid or name}, "spec": spec}


def memory_stats(uid, working_set):
    return {"podRef": {"uid": uid}, "memory": {"workingSetBytes": working_set},
            "containers": [{"name": "c", "memory": {"workingSetBytes": working_set}}]}


def test_memory_ranking_puts_pods_over_their_request_first_then_low_priority_then_the_largest_excess():
    pods = [pod("within", memory_request="100Mi"), pod("over-high", priority=1000, memory_request="10Mi"),
            pod("over-low-small", memory_request="10Mi"), pod("over-low-big", memory_request="10Mi"),
            pod("unmeasured")]
    stats = {"within": memory_stats("within", 50 * MiB), "over-high": memory_stats("over-high", 500 * MiB),
             "over-low-small": memory_stats("over-low-small", 20 * MiB),
             "over-low-big": memory_stats("over-low-big", 300 * MiB)}
    order = [p["metadata"]["name"] for p in ranking.rank(signals.MEMORY, pods, stats)]
    assert order == ["unmeasured", "over-low-big", "over-low-small", "over-high", "within"]


def test_pid_ranking_is_by_priority_then_process_count():
    pods = [pod("many-high", priority=5), pod("few"), pod("many")]
    stats = {uid: {"podRef": {"uid": uid}, "process_stats": {"process_count": n}}
             for uid, n in (("many-high", 900), ("few", 3), ("many", 800))}
    assert [p["metadata"]["name"] for p in ranking.rank(signals.PIDS, pods, stats)] == ["many", "few", "many-high"]


def test_the_eviction_message_is_upstreams():
    threshold = signals.Threshold(signals.MEMORY, "100Mi")
    message = ranking.message(signals.MEMORY, pod("p", memory_request="10Mi"), memory_stats("p", 300 * MiB),
                              threshold, signals.Observation(50 * MiB, 8 * 2**30))
    assert message == ("The node was low on resource: memory. Threshold quantity: 100Mi, available: 50Mi. "
                       "Container c was using 300Mi, request is 10Mi, has larger consumption of memory. ")
    disk = ranking.message(signals.NODEFS, pod("p"), {"containers": [
        {"name": "c", "rootfs": {"usedBytes": 3 * MiB}, "logs": {"usedBytes": MiB}}]},
        signals.Threshold(signals.NODEFS, "10%"), signals.Observation(1000, 10 * 2**30))
    assert disk == ("The node was low on resource: ephemeral-storage. Threshold quantity: 1Gi, available: 1000. "
                    "Container c was using 4Mi, request is 0, has larger consumption of ephemeral-storage. ")


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def pressure_manager(stats_box, pods, evicted, thresholds, clock, **kw):
    async def node():
        return stats_box["node"]

    async def summary():
        return {"pods": stats_box.get("pods", [])}

    return EvictionManager(node_stats=node, summary=summary, pods=lambda: pods,
                           evict=lambda p, message, grace: evicted.append((p["metadata"]["name"], message, grace)),
                           thresholds=thresholds, clock=clock, **kw)


def test_a_hard_threshold_evicts_one_pod_per_round_at_once_and_raises_the_condition():
    clock, evicted, events = Clock(), [], []
    box = {"node": node_stats(memory_available=50 * MiB),
           "pods": [memory_stats("a", 20 * MiB), memory_stats("b", 200 * MiB)]}
    manager = pressure_manager(box, [pod("a"), pod("b")], evicted, signals.thresholds({"memory.available": "100Mi"},
                               {}, {}, {}), clock, node_event=lambda *e: events.append(e))
    assert asyncio.run(manager.check()) == ["b"]
    assert evicted[0][0] == "b" and evicted[0][2] == 0
    assert manager.pressure().memory and not manager.pressure().disk
    assert events == [("Warning", "EvictionThresholdMet", "Attempting to reclaim memory")]


def test_a_soft_threshold_waits_for_its_grace_period_and_gives_the_pod_its_capped_grace():
    clock, evicted = Clock(), []
    box = {"node": node_stats(fs_available=5 * 2**30), "pods": []}
    thresholds = signals.thresholds({}, {"nodefs.available": "10%"}, {"nodefs.available": "1m30s"}, {})
    manager = pressure_manager(box, [pod("slow", grace=60)], evicted, thresholds, clock, max_pod_grace_period=20)
    assert asyncio.run(manager.check()) == []
    assert manager.pressure().disk  # the condition does not wait for the grace period
    clock.now += 89
    assert asyncio.run(manager.check()) == []
    clock.now += 2
    assert asyncio.run(manager.check()) == ["slow"]
    assert evicted[0][2] == 20  # min(evictionMaxPodGracePeriod, terminationGracePeriodSeconds)


def test_the_condition_holds_for_the_transition_period_and_minimum_reclaim_extends_the_pressure():
    clock, evicted = Clock(), []
    box = {"node": node_stats(memory_available=50 * MiB), "pods": [memory_stats("a", MiB)]}
    thresholds = signals.thresholds({"memory.available": "100Mi"}, {}, {}, {"memory.available": "200Mi"})
    manager = pressure_manager(box, [pod("a")], evicted, thresholds, clock, transition_period=60)
    asyncio.run(manager.check())
    box["node"] = node_stats(memory_available=150 * MiB)  # past the threshold, not past threshold + reclaim
    clock.now += 10
    assert asyncio.run(manager.check()) == ["a"]
    box["node"] = node_stats(memory_available=400 * MiB)
    clock.now += 10
    assert asyncio.run(manager.check()) == []
    assert manager.pressure().memory  # recovered 10 s ago: still within the transition period
    clock.now += 61
    asyncio.run(manager.check())
    assert not manager.pressure().memory


def test_admission_under_pressure_follows_upstream():
    clock = Clock()
    box = {"node": node_stats(memory_available=50 * MiB)}
    manager = pressure_manager(box, [], [], signals.thresholds({"memory.available": "100Mi"}, {}, {}, {}), clock)
    asyncio.run(manager.check())
    best_effort = pod("be")
    assert manager.admit(best_effort) == "The node had condition: [MemoryPressure]. "
    assert manager.admit(pod("burstable", memory_request="10Mi")) is None
    tolerant = pod("tolerant", tolerations=[{"key": "node.kubernetes.io/memory-pressure", "operator": "Exists",
                                             "effect": "NoSchedule"}])
    assert manager.admit(tolerant) is None
    critical = pod("critical", priority=2_000_001_000)
    assert manager.admit(critical) is None
    box["node"] = node_stats(memory_available=50 * MiB, fs_available=2**30)
    manager.thresholds += signals.thresholds({"nodefs.available": "10%"}, {}, {}, {})
    asyncio.run(manager.check())
    assert manager.admit(pod("burstable", memory_request="10Mi")) == \
        "The node had condition: [MemoryPressure DiskPressure]. "


def test_pod_stats_are_read_only_when_a_threshold_acts():
    async def summary():
        raise AssertionError("pod stats read with no pressure")
    box = {"node": node_stats()}

    async def node():
        return box["node"]
    manager = EvictionManager(node_stats=node, summary=summary, pods=lambda: [pod("a")],
                              evict=lambda *a: None, thresholds=signals.thresholds(
                                  {"memory.available": "100Mi"}, {}, {}, {}))
    assert asyncio.run(manager.check()) == []
    assert manager.pressure() == manager.pressure().__class__()


def test_soft_thresholds_need_a_grace_period_and_flags_parse_as_upstreams(tmp_path):
    with pytest.raises(ConfigError, match="grace period must be specified for the soft eviction threshold "
                                          "memory.available"):
        parse(["--eviction-soft=memory.available<1Gi"])
    config = parse(["--eviction-soft=memory.available<1Gi,nodefs.available<20%",
                    "--eviction-soft-grace-period=memory.available=1m30s,nodefs.available=2m",
                    "--eviction-minimum-reclaim=memory.available=500Mi",
                    "--eviction-pressure-transition-period=30s", "--eviction-max-pod-grace-period=45"])
    assert config.eviction_soft == {"memory.available": "1Gi", "nodefs.available": "20%"}
    assert config.eviction_soft_grace_period == {"memory.available": "1m30s", "nodefs.available": "2m"}
    assert config.eviction_pressure_transition_period == 30 and config.eviction_max_pod_grace_period == 45
    soft = signals.thresholds(config.eviction_hard, config.eviction_soft, config.eviction_soft_grace_period,
                              config.eviction_minimum_reclaim)
    assert soft[0] == signals.Threshold("memory.available", "1Gi", 90.0, False, "500Mi")
    with pytest.raises(ConfigError, match="unsupported eviction signal"):
        parse(["--eviction-soft-grace-period=memory.free=1m"])


def test_a_round_that_evicted_waits_for_the_pod_to_be_cleaned_up_before_the_next():
    # Without the wait, the next round would still see the evicted pod's memory and evict a second pod.
    box = {"node": node_stats(memory_available=50 * MiB),
           "pods": [memory_stats("a", 20 * MiB), memory_stats("b", 200 * MiB)]}
    evicted, asked = [], []

    def cleaned(uid):
        asked.append(uid)
        if len(asked) == 3:
            box["node"] = node_stats(memory_available=500 * MiB)  # b's memory is back
        return len(asked) >= 3

    manager = pressure_manager(box, [pod("a"), pod("b")], evicted, signals.thresholds(
        {"memory.available": "100Mi"}, {}, {}, {}), time.monotonic, cleaned=cleaned)
    sleeps = []

    async def no_sleep(seconds):
        sleeps.append(seconds)

    with mock.patch("asyncio.sleep", no_sleep):
        assert asyncio.run(manager.check()) == ["b"]
        assert asyncio.run(manager.check()) == []
    assert asked == ["b", "b", "b"] and sleeps == [1, 1]
    assert [name for name, _, _ in evicted] == ["b"]


def test_the_cleanup_wait_gives_up_after_its_timeout():
    clock = Clock()
    box = {"node": node_stats(memory_available=50 * MiB), "pods": [memory_stats("a", 20 * MiB)]}

    async def tick(seconds):
        clock.now += seconds

    manager = pressure_manager(box, [pod("a")], [], signals.thresholds({"memory.available": "100Mi"}, {}, {}, {}),
                               clock, cleaned=lambda uid: False, cleanup_timeout=5)
    with mock.patch("asyncio.sleep", tick):
        assert asyncio.run(manager.check()) == ["a"]
    assert clock.now == 1005


def test_an_evicted_pods_failed_status_shows_its_containers_stopped():
    """The first status that says Failed/Evicted already has the container terminated: it is read from a runtime
    view taken after the kill, not the one the step started with."""
    from cri import api
    from pykubelet.pods.podstate import Container, PodRuntime, Sandbox
    from pykubelet.pods.podworkers import PodWorkers

    def view(state):
        return PodRuntime(sandboxes=[Sandbox("sb", 0, api.SANDBOX_READY, 1)], containers=[Container(
            "c1", "c", 0, state, 1, "sb", "busybox:1.37", {}, {}, started_at=2 * 10**18,
            finished_at=2 * 10**18 + 10**9 if state == api.CONTAINER_EXITED else 0, exit_code=137)])

    class Pleg:
        def __init__(self):
            self.pods, self.killed = {"u": view(api.CONTAINER_RUNNING)}, False

        def pod(self, uid):
            return self.pods.get(uid) or PodRuntime()

        async def wait_newer(self, since):
            if self.killed:
                self.pods["u"] = view(api.CONTAINER_EXITED)

    class Runtime:
        def __init__(self):
            self.synced = asyncio.Event()

        async def sync(self, pod, rt, facts, unhealthy):
            self.synced.set()

        async def kill_pod(self, pod, rt, grace=None):
            pleg.killed = True

        async def remove_containers(self, rt):
            pass

        async def remove_pod(self, uid, rt):
            pass

    class Status:
        def __init__(self):
            self.sets = []

        async def set(self, pod, status):
            self.sets.append(status)

        def forget(self, uid):
            pass

    class Events:
        def record(self, *args, **kwargs):
            pass

        def forget(self, uid):
            pass

    pleg, runtime, status = Pleg(), Runtime(), Status()
    pod = {"metadata": {"name": "hog", "namespace": "ns", "uid": "u", "creationTimestamp": "2026-01-01T00:00:00Z"},
           "spec": {"containers": [{"name": "c", "image": "busybox:1.37"}]}, "status": {}}

    async def scenario():
        workers = PodWorkers(runtime=runtime, pleg=pleg, status=status, events=Events(), node_ip="10.0.0.2")
        workers.update(pod)
        await asyncio.wait_for(runtime.synced.wait(), 5)
        workers.workers["u"].evict('Usage of EmptyDir volume "cache" exceeds the limit "1Mi". ')
        for _ in range(200):
            if any(s.get("phase") == "Failed" for s in status.sets):
                break
            await asyncio.sleep(0.01)
        await workers.stop()

    asyncio.run(scenario())
    failed = next(s for s in status.sets if s.get("phase") == "Failed")
    assert failed["reason"] == "Evicted"
    assert "terminated" in failed["containerStatuses"][0]["state"]


def test_disk_pressure_first_deletes_unused_images_and_evicts_no_pod_when_that_is_enough():
    clock, evicted, reclaims = Clock(), [], []
    box = {"node": node_stats(fs_available=5 * 2**30), "pods": []}

    async def reclaim():
        reclaims.append(True)
        box["node"] = node_stats(fs_available=30 * 2**30)

    manager = pressure_manager(box, [pod("a")], evicted, signals.thresholds({"nodefs.available": "10%"}, {}, {}, {}),
                               clock, reclaim_disk=reclaim)
    assert asyncio.run(manager.check()) == []
    assert reclaims == [True] and evicted == []
    assert manager.pressure().disk  # the condition holds for the transition period all the same


def test_disk_pressure_that_image_deletion_cannot_end_evicts_and_memory_pressure_deletes_no_image():
    clock, evicted, reclaims = Clock(), [], []
    box = {"node": node_stats(fs_available=5 * 2**30), "pods": []}

    async def reclaim():
        reclaims.append(True)
        raise RuntimeError("the runtime refused")

    thresholds = signals.thresholds({"nodefs.available": "10%", "memory.available": "100Mi"}, {}, {}, {})
    manager = pressure_manager(box, [pod("a")], evicted, thresholds, clock, reclaim_disk=reclaim)
    assert asyncio.run(manager.check()) == ["a"]
    assert reclaims == [True]
    box["node"] = node_stats(memory_available=50 * MiB)
    evicted.clear()
    assert asyncio.run(manager.check()) == ["a"]
    assert reclaims == [True]  # memory: no image is deleted for it


def test_disk_reclaim_removes_finished_pods_containers_first_and_their_status_stands():
    from cri import api
    from pykubelet.kubelet import reclaim_disk
    from pykubelet.pods.podstate import Container, PodRuntime, Sandbox
    from pykubelet.pods.podworkers import PodWorkers

    order = []

    def runtime_of(uid, state):
        return PodRuntime(sandboxes=[Sandbox(f"sb-{uid}", 0, api.SANDBOX_NOTREADY, 1, ours=True)],
                          containers=[Container(f"c-{uid}", "c", 0, state, 1, f"sb-{uid}", "busybox", {}, {})])

    class Pleg:
        pods = {"done": runtime_of("done", api.CONTAINER_EXITED), "up": runtime_of("up", api.CONTAINER_RUNNING),
                "before": runtime_of("before", api.CONTAINER_EXITED),  # finished before this start: no worker
                "stranger": runtime_of("stranger", api.CONTAINER_EXITED)}  # not the API's: cleanup_orphans' job

        def pod(self, uid):
            return self.pods.get(uid) or PodRuntime()

        async def wait_newer(self, since):
            pass

    class Runtime:
        async def sync(self, pod, rt, facts, unhealthy):
            pass

        async def remove_containers(self, rt):
            order.extend(c.id for c in rt.containers)

        async def remove_sandboxes(self, rt):
            order.extend(s.id for s in rt.sandboxes)

    class Images:
        async def delete_unused(self):
            order.append("images")

    sets = []

    class Nothing:
        async def set(self, pod, status):
            sets.append(pod["metadata"]["uid"])

        async def delete_pod(self, pod):
            pass

        def record(self, *args, **kwargs):
            pass

        def forget(self, uid):
            pass

    def pod(uid):
        return {"metadata": {"name": uid, "namespace": "ns", "uid": uid, "creationTimestamp": "2026-01-01T00:00:00Z"},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]}, "status": {}}

    async def scenario():
        workers = PodWorkers(runtime=Runtime(), pleg=Pleg(), status=Nothing(), events=Nothing(), node_ip="10.0.0.2")
        workers.update(pod("done"))
        workers.update(pod("up"))
        finished = pod("before")
        finished["status"] = {"phase": "Succeeded"}
        workers.update(finished)
        await asyncio.sleep(0.05)
        assert "before" not in workers.workers
        for uid in ("done", "up"):
            workers.workers[uid].cleaned_up = uid == "done"
        await reclaim_disk(workers, Images())
        removed = workers.workers["done"].runtime_removed, workers.workers["up"].runtime_removed
        # Deleted later: the status it reported before its runtime went is not replaced by one computed from nothing.
        Pleg.pods["done"] = PodRuntime()
        before = sets.count("done")
        deleted = pod("done")
        deleted["metadata"]["deletionTimestamp"] = "2026-01-01T00:01:00Z"
        workers.update(deleted)
        for _ in range(100):
            if "done" not in workers.workers:
                break
            await asyncio.sleep(0.01)
        await workers.stop()
        return removed + (sets.count("done") - before,)

    assert asyncio.run(scenario()) == (True, False, 0)
    # The finished pods' runtime first: their images are then unused.
    assert order == ["c-done", "sb-done", "c-before", "sb-before", "images"]
