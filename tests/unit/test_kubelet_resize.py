"""In-place pod resize: allocation, feasibility, UpdateContainerResources, and what the status says."""

from __future__ import annotations

import asyncio

from cri import api
from cri.errors import RPCError
from pykubelet.pods import podstatus, resize
from pykubelet.pods.kuberuntime import RuntimeManager
from pykubelet.pods.podstate import Container, PodRuntime, Sandbox
from pykubelet.pods.podstatus import Facts

ALLOCATABLE = {"cpu": "2", "memory": "4Gi", "pods": "110"}


def _pod(cpu: str = "100m", memory: str = "64Mi", generation: int = 1) -> dict:
    resources = {"requests": {"cpu": cpu, "memory": memory}, "limits": {"cpu": cpu, "memory": memory}}
    return {"metadata": {"name": "p", "namespace": "ns", "uid": "u1", "generation": generation},
            "spec": {"containers": [{"name": "c1", "image": "busybox", "resources": resources},
                                    {"name": "c2", "image": "busybox"}]}}


def _other(cpu: str) -> dict:
    return {"metadata": {"uid": "other"},
            "spec": {"containers": [{"name": "x", "resources": {"requests": {"cpu": cpu}}}]}}


def test_a_resize_that_fits_becomes_the_allocation_and_one_that_does_not_is_pending_with_upstreams_reason():
    allocation = resize.Allocation()
    allocation.allocate(_pod(), lambda pod: None)
    assert allocation.allocated["c1"]["requests"] == {"cpu": "100m", "memory": "64Mi"}
    assert allocation.allocated["c2"] == {}

    def feasible(pod):
        return resize.feasibility(pod, [_other("1500m")], ALLOCATABLE)

    allocation.allocate(_pod(cpu="300m"), feasible)
    assert allocation.pending is None and allocation.allocated["c1"]["limits"]["cpu"] == "300m"

    allocation.allocate(_pod(cpu="3"), feasible)
    assert allocation.pending == ("Infeasible", "Node didn't have enough capacity: cpu, requested: 3000, "
                                                "capacity: 2000")
    assert allocation.allocated["c1"]["limits"]["cpu"] == "300m"  # it keeps running on what it had

    allocation.allocate(_pod(cpu="800m"), feasible)
    assert allocation.pending == ("Deferred", "Node didn't have enough resource: cpu, requested: 800, used: 1500, "
                                              "capacity: 2000")
    assert allocation.pod(_pod(cpu="800m"))["spec"]["containers"][0]["resources"]["limits"]["cpu"] == "300m"

    allocation.allocate(_pod(cpu="300m"), feasible)  # back to what it has: nothing pending
    assert allocation.pending is None


class _Cri:
    def __init__(self, fail: str | None = None):
        self.updates: list[api.UpdateContainerResourcesRequest] = []
        self.fail = fail

    async def update_container_resources(self, request, timeout=None):
        if self.fail:
            raise RPCError(self.fail, socket="/run/containerd.sock", rpc="UpdateContainerResources")
        self.updates.append(request)
        return api.UpdateContainerResourcesResponse()


class _Volumes:
    async def setup(self, pod):
        return {}

    def next_refresh(self, uid):
        return None


def _manager(cri) -> RuntimeManager:
    manager = RuntimeManager(cri=cri, volumes=_Volumes(), events=None, config=None, node_name="n1",
                             node_ip="10.0.0.2", node_allocatable={}, node_memory=4 << 30, get_object=None)
    manager._sandbox_config = lambda pod, attempt, report=False: None

    async def prune(rt):
        pass

    manager._prune = prune
    return manager


def _running() -> PodRuntime:
    sandbox = Sandbox(id="sb", attempt=0, state=api.SANDBOX_READY, created_at=1, ips=["10.222.1.9"])
    containers = [Container(id=f"{name}-id", name=name, attempt=0, state=api.CONTAINER_RUNNING, created_at=1,
                            sandbox_id="sb", image="busybox", labels={}, annotations={}, started_at=1)
                  for name in ("c1", "c2")]
    return PodRuntime(sandboxes=[sandbox], containers=containers)


def _conditions(status: dict) -> dict:
    return {c["type"]: c for c in status["conditions"]}


def test_a_running_container_is_given_its_new_allocation_and_the_status_shows_it():
    cri, facts, rt = _Cri(), Facts(node_ip="10.0.0.2"), _running()
    manager = _manager(cri)
    facts.resize.allocate(_pod(), lambda pod: None)
    asyncio.run(manager.sync(_pod(), rt, facts, set()))
    assert cri.updates == []  # it already has what it is allocated

    resized = _pod(cpu="250m", memory="96Mi", generation=2)
    facts.resize.allocate(resized, lambda pod: None)
    before = podstatus.compute(resized, rt, facts)
    assert "PodResizeInProgress" in _conditions(before)
    assert before["containerStatuses"][0]["resources"]["limits"] == {"cpu": "100m", "memory": "64Mi"}

    asyncio.run(manager.sync(resized, rt, facts, set()))
    [update] = cri.updates
    assert update.container_id == "c1-id"
    assert (update.linux.cpu_quota, update.linux.cpu_period) == (25000, 100000)
    assert update.linux.cpu_shares == 256
    assert update.linux.memory_limit_in_bytes == 96 << 20

    after = podstatus.compute(resized, rt, facts)
    c1, c2 = after["containerStatuses"]
    assert c1["resources"] == {"requests": {"cpu": "250m", "memory": "96Mi"}, "limits": {"cpu": "250m", "memory": "96Mi"}}
    assert c1["allocatedResources"] == {"cpu": "250m", "memory": "96Mi"}
    assert c2["resources"] == {} and "allocatedResources" not in c2
    assert not {"PodResizeInProgress", "PodResizePending"} & set(_conditions(after))
    assert after["observedGeneration"] == 2


def test_a_refused_update_is_retried_and_shown_in_progress_with_the_runtimes_message():
    cri, facts, rt = _Cri(fail="memory limit below usage"), Facts(node_ip="10.0.0.2"), _running()
    manager = _manager(cri)
    facts.resize.allocate(_pod(), lambda pod: None)
    asyncio.run(manager.sync(_pod(), rt, facts, set()))  # what runs is seen with what it was allocated
    resized = _pod(memory="8Mi", generation=2)
    facts.resize.allocate(resized, lambda pod: None)
    wait = asyncio.run(manager.sync(resized, rt, facts, set()))
    assert wait is not None and wait <= 5
    condition = _conditions(podstatus.compute(resized, rt, facts))["PodResizeInProgress"]
    assert condition["reason"] == "Error" and "memory limit below usage" in condition["message"]

    cri.fail = None
    asyncio.run(manager.sync(resized, rt, facts, set()))
    assert len(cri.updates) == 1
    assert "PodResizeInProgress" not in _conditions(podstatus.compute(resized, rt, facts))


def test_a_pending_resize_is_a_condition_and_new_containers_get_the_old_allocation():
    facts = Facts(node_ip="10.0.0.2")
    facts.resize.allocate(_pod(), lambda pod: None)
    facts.resize.allocate(_pod(cpu="8", generation=2), lambda pod: ("Infeasible", "too big"))
    status = podstatus.compute(_pod(cpu="8", generation=2), _running(), facts)
    pending = _conditions(status)["PodResizePending"]
    assert (pending["status"], pending["reason"], pending["message"]) == ("True", "Infeasible", "too big")
    assert status["containerStatuses"][0]["resources"]["limits"]["cpu"] == "100m"
    created = facts.resize.pod(_pod(cpu="8", generation=2))
    assert created["spec"]["containers"][0]["resources"]["limits"]["cpu"] == "100m"


def test_a_restart_container_policy_stops_the_container_and_starts_it_again_at_once_with_the_new_allocation():
    cri, facts, rt = _Cri(), Facts(node_ip="10.0.0.2"), _running()
    manager = _manager(cri)
    killed, started = [], []

    async def kill_container(pod, container, container_id, reason, grace=None, pod_ips=None):
        killed.append((container_id, reason))

    async def start_container(pod, container, sandbox_id, sandbox_config, pod_ips, attempt, volumes):
        started.append((container["name"], container["resources"]["limits"]["memory"], attempt))
        return f"{container['name']}-new"

    manager.kill_container, manager.start_container = kill_container, start_container
    pod = _pod()
    pod["spec"]["restartPolicy"] = "Never"  # a resize restart happens whatever the pod's policy
    pod["spec"]["containers"][0]["resizePolicy"] = [{"resourceName": "memory", "restartPolicy": "RestartContainer"}]
    facts.resize.allocate(pod, lambda pod: None)
    asyncio.run(manager.sync(pod, rt, facts, set()))
    resized = {**pod, "spec": {**pod["spec"], "containers": [
        {**pod["spec"]["containers"][0], "resources": _pod(memory="96Mi")["spec"]["containers"][0]["resources"]},
        pod["spec"]["containers"][1]]}}
    facts.resize.allocate(resized, lambda pod: None)
    assert asyncio.run(manager.sync(resized, rt, facts, set())) == 0.0
    assert killed == [("c1-id", "Container c1 resize requires restart")] and cri.updates == []

    rt.containers[0] = Container(**{**rt.containers[0].__dict__, "state": api.CONTAINER_EXITED, "exit_code": 137,
                                    "finished_at": 2})
    asyncio.run(manager.sync(resized, rt, facts, set()))
    assert started == [("c1", "96Mi", 1)]
    assert facts.resize.actuated["c1-new"]["limits"]["memory"] == "96Mi"


def test_a_resized_pods_allocation_survives_a_restart_through_the_checkpoint(tmp_path):
    path = tmp_path / resize.CHECKPOINT
    first = resize.Checkpoint(path).allocation("u1")
    first.allocate(_pod(), lambda pod: None)
    first.gave("c1-id", first.allocated["c1"])
    assert not path.exists()  # a pod never resized needs no entry: its spec is its allocation

    first.allocate(_pod(cpu="250m", generation=2), lambda pod: None)
    assert path.exists()
    first.gave("c1-id", first.allocated["c1"])
    first.allocate(_pod(cpu="3", generation=3), lambda pod: ("Infeasible", "too big"))  # pending, not allocated

    again = resize.Checkpoint(path).allocation("u1")  # a new pykubelet
    again.allocate(_pod(cpu="3", generation=3), lambda pod: ("Infeasible", "too big"))
    assert again.allocated["c1"]["limits"]["cpu"] == "250m" and again.pending == ("Infeasible", "too big")
    assert again.actuated["c1-id"]["limits"]["cpu"] == "250m"

    checkpoint = resize.Checkpoint(path)
    checkpoint.forget("u1")
    assert resize.Checkpoint(path).pods == {}


def test_an_unreadable_checkpoint_is_set_aside_and_specs_are_allocations(tmp_path):
    path = tmp_path / resize.CHECKPOINT
    for garbage in ("{not json", '{"pods": []}', '{"pods": {"u1": {"allocated": 3}}}', "\x00\xff"):
        path.write_text(garbage)
        allocation = resize.Checkpoint(path).allocation("u1")
        allocation.allocate(_pod(cpu="300m"), lambda pod: None)
        assert allocation.allocated["c1"]["limits"]["cpu"] == "300m"
