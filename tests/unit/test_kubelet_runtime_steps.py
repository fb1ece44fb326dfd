"""The runtime manager's steps around a sandbox: starting containers in a recreated one (after a reboot,
a killed runtime) and stopping a pod in upstream's order."""

from __future__ import annotations

import asyncio

from cri import api
from pykubelet.pods.kuberuntime import RuntimeManager
from pykubelet.pods.podstate import Container, PodRuntime, Sandbox
from pykubelet.pods.podstatus import Facts


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


def test_a_pod_is_stopped_regular_containers_first_then_sidecars_in_reverse_with_the_pod_ip():
    pod = {"metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
           "spec": {"terminationGracePeriodSeconds": 10,
                    "initContainers": [{"name": "proxy", "restartPolicy": "Always"},
                                       {"name": "logger", "restartPolicy": "Always"}],
                    "containers": [{"name": "a"}, {"name": "b"}], "ephemeralContainers": [{"name": "debug"}]}}
    sandbox = Sandbox(id="sb", attempt=0, state=api.SANDBOX_NOTREADY, created_at=1, ips=["10.222.1.7"])
    running = [Container(**{**_container(n, 0, "sb").__dict__, "state": api.CONTAINER_RUNNING})
               for n in ("proxy", "logger", "a", "b", "debug")]
    stopped: list = []
    manager = _manager([])

    async def kill_container(pod, container, container_id, reason, grace=None, pod_ips=None):
        await asyncio.sleep(0.01)
        stopped.append((container["name"], pod_ips))

    manager.kill_container = kill_container
    asyncio.run(manager.kill_pod(pod, PodRuntime(sandboxes=[sandbox], containers=running)))
    assert sorted(stopped[:3]) == [("a", ["10.222.1.7"]), ("b", ["10.222.1.7"]), ("debug", ["10.222.1.7"])]
    assert stopped[3:] == [("logger", ["10.222.1.7"]), ("proxy", ["10.222.1.7"])]


def test_an_ephemeral_container_starts_once_in_the_running_pod():
    pod = {"metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
           "spec": {"containers": [{"name": "web", "image": "busybox"}],
                    "ephemeralContainers": [{"name": "debugger", "image": "busybox"}]}}
    sandbox = Sandbox(id="sb", attempt=0, state=api.SANDBOX_READY, created_at=1, ips=["10.222.1.9"])
    web = Container(**{**_container("web", 0, "sb").__dict__, "state": api.CONTAINER_RUNNING})
    started: list = []
    manager = _manager(started)
    asyncio.run(manager.sync(pod, PodRuntime(sandboxes=[sandbox], containers=[web]), Facts(node_ip="10.0.0.2"), set()))
    assert started == [("debugger", "sb", 0)]
    exited = _container("debugger", 0, "sb")  # it ran and exited: it stays exited
    asyncio.run(manager.sync(pod, PodRuntime(sandboxes=[sandbox], containers=[exited, web]),
                             Facts(node_ip="10.0.0.2"), set()))
    assert started == [("debugger", "sb", 0)]


def test_old_containers_and_emptied_sandboxes_of_a_live_pod_are_removed_across_sandboxes():
    class Cri:
        def __init__(self):
            self.removed = []

        async def remove_container(self, request):
            self.removed.append(request.container_id)

        async def remove_pod_sandbox(self, request):
            self.removed.append(request.pod_sandbox_id)

    newest = Sandbox(id="sb3", attempt=2, state=api.SANDBOX_READY, created_at=3, ours=True)
    older = Sandbox(id="sb2", attempt=1, state=api.SANDBOX_NOTREADY, created_at=2, ours=True)
    oldest = Sandbox(id="sb1", attempt=0, state=api.SANDBOX_NOTREADY, created_at=1, ours=True)
    empty = Sandbox(id="sb0", attempt=0, state=api.SANDBOX_NOTREADY, created_at=0, ours=True)
    running = Container(**{**_container("web", 2, "sb3").__dict__, "state": api.CONTAINER_RUNNING})
    rt = PodRuntime(sandboxes=[newest, older, oldest, empty],
                    containers=[running, _container("web", 1, "sb2"), _container("web", 0, "sb1")])
    manager = RuntimeManager(cri=Cri(), volumes=_Volumes(), events=_Events(), config=None, node_name="n1",
                             node_ip="10.0.0.2", node_allocatable={}, node_memory=0, get_object=None)
    asyncio.run(manager._prune(rt))
    # web-0 is the third of its name: it goes, and with it the sandbox it kept; sb2 holds lastState's web-1.
    assert manager.cri.removed == ["web-0", "sb1", "sb0"]


def test_while_a_pods_volumes_fail_to_mount_its_containers_wait_with_the_pods_not_started_reason():
    """Upstream only records the FailedMount Event; the status keeps the default waiting reason, PodInitializing
    for every container of a pod with init containers (the InitContainer specs check it from the first status)."""
    from pykubelet.pods import podstatus
    from pykubelet.volumes import MountProblem

    class _Failing(_Volumes):
        async def setup(self, pod):
            raise MountProblem([("kube-api-access", 'configmap "kube-root-ca.crt" not registered')])

    for init, reason in (([{"name": "init1", "image": "busybox"}], "PodInitializing"), ([], "ContainerCreating")):
        pod = {"metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
               "spec": {"restartPolicy": "Never", "initContainers": init,
                        "containers": [{"name": "run1", "image": "busybox"}]}}
        manager = _manager([])
        manager.volumes = _Failing()
        facts = Facts(node_ip="10.0.0.2")
        assert asyncio.run(manager.sync(pod, PodRuntime(sandboxes=[], containers=[]), facts, set())) == 10.0
        status = podstatus.compute(pod, PodRuntime(sandboxes=[], containers=[]), facts)
        waiting = [s["state"]["waiting"]["reason"]
                   for s in status.get("initContainerStatuses", []) + status["containerStatuses"]]
        assert waiting == [reason] * (len(init) + 1)
