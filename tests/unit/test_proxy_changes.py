"""The change tracker and the bounded-frequency runner: what changed since the last sync, and when to sync."""

from __future__ import annotations

import asyncio

from pyproxy.changes import ChangeTracker, parse_endpoint_slice, parse_service
from pyproxy.runner import BoundedFrequencyRunner


def svc(name, ip="10.232.0.10", port=80, ns="t", rv="1", **extra):
    return parse_service({"metadata": {"namespace": ns, "name": name, "resourceVersion": rv, **extra},
            "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": port}]}})


def eps(name, ips, slice_name=None, ns="t", trigger=None):
    meta = {"namespace": ns, "name": slice_name or f"{name}-1", "labels": {"kubernetes.io/service-name": name}}
    if trigger:
        meta["annotations"] = {"endpoints.kubernetes.io/last-change-trigger-time": trigger}
    return parse_endpoint_slice({"metadata": meta, "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
                                 "endpoints": [{"addresses": [ip]} for ip in ips]})


def test_first_take_is_full_then_only_changed_services():
    t = ChangeTracker()
    t.replace_services([svc("a"), svc("b", "10.232.0.11")])
    t.replace_slices([eps("a", ["10.0.0.1"]), eps("b", ["10.0.0.2"])])
    changed, before, _ = t.take()
    assert changed is None and before == {}
    assert set(t.services) == {("t", "a", "http"), ("t", "b", "http")}
    assert [e.ip for e in t.endpoints[("t", "a", "http")]] == ["10.0.0.1"]
    t.update_slice(eps("a", ["10.0.0.1", "10.0.0.3"]))
    changed, before, _ = t.take()
    assert changed == {("t", "a"): (("t", "a", "http"),)} and set(before) == {("t", "a", "http")}
    assert [e.ip for e in t.endpoints[("t", "a", "http")]] == ["10.0.0.1", "10.0.0.3"]
    assert t.take()[0] == {}


def test_changes_that_mean_nothing_to_the_proxy_are_not_changes():
    t = ChangeTracker()
    t.replace_services([svc("a")])
    t.replace_slices([eps("a", ["10.0.0.1"])])
    t.take()
    t.update_service(svc("a", rv="2", annotations={"note": "x"}))  # same ports, new metadata
    t.update_slice(eps("a", ["10.0.0.1"]))
    assert not t.pending and t.take()[0] == {}


def test_slices_merge_and_removals_drop_endpoints_and_services():
    t = ChangeTracker()
    t.replace_services([svc("a")])
    t.replace_slices([eps("a", ["10.0.0.2"], "a-1"), eps("a", ["10.0.0.1", "10.0.0.2"], "a-2")])
    t.take()
    assert [e.ip for e in t.endpoints[("t", "a", "http")]] == ["10.0.0.1", "10.0.0.2"]
    t.remove_slice(eps("a", [], "a-2"))
    assert t.take()[0] == {("t", "a"): (("t", "a", "http"),)}
    assert [e.ip for e in t.endpoints[("t", "a", "http")]] == ["10.0.0.2"]
    t.remove_service(svc("a"))
    changed, before, _ = t.take()
    assert changed == {("t", "a"): ()} and ("t", "a", "http") in before
    assert t.services == {} and ("t", "a", "http") not in t.endpoints


def test_a_relist_finds_what_was_deleted_while_not_watching():
    t = ChangeTracker()
    t.replace_services([svc("a"), svc("b", "10.232.0.11")])
    t.replace_slices([eps("a", ["10.0.0.1"]), eps("b", ["10.0.0.2"])])
    t.take()
    t.replace_services([svc("a")])
    t.replace_slices([eps("a", ["10.0.0.1"])])
    assert t.take()[0] == {("t", "b"): ()} and set(t.services) == {("t", "a", "http")}


def test_bad_objects_are_skipped_and_others_still_tracked():
    t = ChangeTracker()
    bad = {"metadata": {"namespace": "t", "name": "bad"}, "spec": {"clusterIP": "not-an-ip", "ports": []}}
    t.replace_services([parse_service(bad), svc("a")])
    t.replace_slices([parse_endpoint_slice({"metadata": {"namespace": "t", "name": "x"}, "endpoints": "nonsense"}),
                      eps("a", ["10.0.0.1"])])
    t.take()
    assert set(t.services) == {("t", "a", "http")}


def test_trigger_times_are_handed_over_once():
    t = ChangeTracker()
    t.replace_services([svc("a")])
    t.take()
    t.update_slice(eps("a", ["10.0.0.1"], trigger="2026-11-21T05:00:01Z"))
    t.update_slice(eps("a", ["10.0.0.2"], trigger="2026-11-21T05:00:03Z"))
    assert t.take()[2] == ["2026-11-21T05:00:01Z"]  # the earliest pending change
    assert t.take()[2] == []


def test_every_change_notifies():
    calls = []
    t = ChangeTracker(on_change=lambda: calls.append(1))
    t.update_service(svc("a"))
    t.update_slice(eps("a", ["10.0.0.1"]))
    t.update_slice(eps("a", ["10.0.0.1"]))  # no change: no call
    assert len(calls) == 2


def test_runner_coalesces_bursts_and_keeps_the_minimum_interval():
    async def scenario():
        runs: list[float] = []
        loop = asyncio.get_running_loop()

        async def sync():
            runs.append(loop.time())
            return False

        runner = BoundedFrequencyRunner(sync, min_interval=0.2, max_interval=60)
        task = asyncio.create_task(runner.loop())
        await asyncio.sleep(0.05)  # the first, unconditional run
        for _ in range(20):
            runner.request()
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.5)
        task.cancel()
        return runs

    runs = asyncio.run(scenario())
    assert len(runs) == 2, runs  # the initial run, then the whole burst in one
    assert runs[1] - runs[0] >= 0.19


def test_runner_runs_periodically():
    async def scenario():
        count = 0

        async def sync():
            nonlocal count
            count += 1
            return False

        runner = BoundedFrequencyRunner(sync, min_interval=0.0, max_interval=0.1)
        task = asyncio.create_task(runner.loop())
        await asyncio.sleep(0.35)
        task.cancel()
        return count

    assert 3 <= asyncio.run(scenario()) <= 5


def test_runner_retries_a_failed_run():
    async def scenario():
        results = iter([True, True, False])
        count = 0

        async def sync():
            nonlocal count
            count += 1
            return next(results, False)

        runner = BoundedFrequencyRunner(sync, min_interval=0.0, max_interval=60, retry_interval=0.05)
        task = asyncio.create_task(runner.loop())
        await asyncio.sleep(0.4)
        task.cancel()
        return count

    assert asyncio.run(scenario()) == 3  # two failures retried, then quiet until the next request
