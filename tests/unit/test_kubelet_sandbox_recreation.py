"""The pod worker's step when a pod's sandbox is gone (a reboot, a killed runtime) and a new one is up."""

from __future__ import annotations

import asyncio

from cri import api
from pykubelet.kuberuntime import RuntimeManager
from pykubelet.podstate import Container, PodRuntime, Sandbox
from pykubelet.podstatus import Facts


class _Volumes:
    async def setup(self, pod):
        return {}

    def next_refresh(self, uid):
        return None


class _Events:
    def record(self, *args, **kwargs):
        pass


def _container(name: str, attempt: int, sandbox_id: str) -> Container:
    return Container(id=f"{name}-{attempt}", name=name, attempt=attempt, state=api.CONTAINER_EXITED,
                     created_at=attempt, sandbox_id=sandbox_id, image="busybox", labels={}, annotations={},
                     finished_at=1, exit_code=255)


def _manager(started: list) -> RuntimeManager:
    manager = RuntimeManager(cri=None, volumes=_Volumes(), events=_Events(), config=None, node_name="n1",
                             node_ip="10.0.0.2", node_allocatable={}, node_memory=0, get_object=None)
    manager._sandbox_config = lambda pod, attempt, report=False: None

    async def start_container(pod, container, sandbox_id, sandbox_config, pod_ips, attempt, volumes):
        started.append((container["name"], sandbox_id, attempt))

    async def prune(rt):
        pass

    manager.start_container = start_container
    manager._prune = prune
    return manager


def test_containers_in_a_recreated_sandbox_follow_the_attempts_left_in_the_old_one():
    pod = {"metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
           "spec": {"initContainers": [{"name": "init", "image": "busybox"}],
                    "containers": [{"name": "web", "image": "busybox"}]}}
    old = Sandbox(id="old", attempt=0, state=api.SANDBOX_NOTREADY, created_at=1)
    new = Sandbox(id="new", attempt=1, state=api.SANDBOX_READY, created_at=2, ips=["10.222.1.9"])
    rt = PodRuntime(sandboxes=[new, old], containers=[_container("web", 3, "old"), _container("init", 0, "old")])
    started: list = []
    manager = _manager(started)

    asyncio.run(manager.sync(pod, rt, Facts(node_ip="10.0.0.2"), set()))
    assert started == [("init", "new", 1)]  # not attempt 0: CRI would refuse the name the old one holds

    rt.containers.insert(0, Container(**{**_container("init", 1, "new").__dict__, "exit_code": 0}))
    asyncio.run(manager.sync(pod, rt, Facts(node_ip="10.0.0.2"), set()))
    assert started[-1] == ("web", "new", 4)
