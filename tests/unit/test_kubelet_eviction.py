"""The eviction manager's local storage checks: emptyDir sizeLimit, pod and container ephemeral-storage limits."""

from __future__ import annotations

import asyncio

from pykubelet import eviction


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
    manager_ = eviction.EvictionManager(summary=summary, pods=lambda: [plain, static, critical],
                                        evict=lambda pod, message: evicted.append((pod["metadata"]["uid"], message)))
    assert asyncio.run(manager_.check()) == ["u"]
    assert evicted == [("u", 'Usage of EmptyDir volume "cache" exceeds the limit "1Mi". ')]


def test_no_stats_are_read_while_no_pod_has_a_local_storage_limit():
    async def summary():
        raise AssertionError("the runtime was asked for stats")
    manager_ = eviction.EvictionManager(summary=summary, pods=lambda: [storage_pod([{"name": "d", "emptyDir": {}}])],
                                        evict=lambda pod, message: None)
    assert asyncio.run(manager_.check()) == []
