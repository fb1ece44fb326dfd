"""Static pods on a kubeadm control plane: the apiserver the kubelet registers with is one of its own static
pods, so the pods start before registration and their mirror pods wait for the Node's uid."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import pytest

import pykubelet.kubelet as kubelet_module
from pykubelet.kubelet import Kubelet
from pykubelet.pods.staticpods import MirrorPodError, StaticPods

MANIFEST = """\
apiVersion: v1
kind: Pod
metadata: {name: kube-apiserver, namespace: kube-system}
spec:
  hostNetwork: true
  containers: [{name: kube-apiserver, image: registry.k8s.io/kube-apiserver:v1.36.3}]
"""


class RecordingHttp:
    def __init__(self):
        self.posts: list[tuple[str, str]] = []

    async def post(self, path, content, headers):
        self.posts.append((path, content))
        return SimpleNamespace(status_code=201, text="")


def static_pods(tmp_path: Path, node_uid: str = "") -> tuple[StaticPods, RecordingHttp, list[dict]]:
    (tmp_path / "kube-apiserver.yaml").write_text(MANIFEST)
    http, added = RecordingHttp(), []
    static = StaticPods(tmp_path, "cp1", node_uid, SimpleNamespace(http=http), 20, update=added.append,
                        remove=lambda pod: None)
    static.scan()
    return static, http, added


def test_a_static_pod_runs_but_makes_no_mirror_before_the_node_is_registered(tmp_path):
    static, http, added = static_pods(tmp_path)
    assert [p["metadata"]["name"] for p in added] == ["kube-apiserver-cp1"]  # handed to the pod workers
    asyncio.run(static.ensure_mirror(added[0], None))
    assert http.posts == []  # an owner reference needs the Node's uid; nothing invalid is sent


def test_registration_wakes_each_static_pod_and_its_mirror_names_the_node(tmp_path):
    static, http, added = static_pods(tmp_path)
    woken: list[str] = []
    static.node_registered("node-uid-1", woken.append)
    assert woken == [added[0]["metadata"]["uid"]]
    asyncio.run(static.ensure_mirror(added[0], None))
    [(path, body)] = http.posts
    assert path == "/api/v1/namespaces/kube-system/pods"
    assert '"uid": "node-uid-1"' in body and '"kind": "Node"' in body


def test_the_pods_start_before_registration_which_may_wait_for_a_static_apiserver(monkeypatch):
    """_start hands the pods to their workers first; registration (which waits for the apiserver) comes after,
    and only then are the mirror pods made and the node status loop started."""
    order: list[str] = []

    class FakeNode:
        def __init__(self, config, api, runtime, name, ip):
            self.uid, self.last_sync = None, 0.0

        async def register(self):
            order.append("register-begins")
            await self.up.wait()  # the apiserver answers only once the static pods run
            self.uid = "node-uid"
            order.append("registered")

        async def run_status_loop(self):
            order.append("status-loop")
            await asyncio.sleep(3600)

    class FakeStatic:
        def node_registered(self, uid, wake):
            order.append(f"mirrors-for:{uid}")

    config = SimpleNamespace(register_node=True, kubeconfig=Path("/nonexistent"), rotate_certificates=False,
                             node_lease_duration_seconds=40, hostname_override="cp1", node_ip="10.0.0.1")
    monkeypatch.setattr(kubelet_module, "NodeManager", FakeNode)
    monkeypatch.setattr(kubelet_module, "Api", lambda *a, **kw: object())
    monkeypatch.setattr(kubelet_module, "NodeLease", lambda *a, **kw: SimpleNamespace(run=lambda: asyncio.sleep(0)))
    monkeypatch.setattr(kubelet_module.systemd, "notify", lambda *a: None)
    monkeypatch.setattr(kubelet_module.systemd, "watchdog", lambda healthy: asyncio.sleep(0))

    async def scenario():
        up = asyncio.Event()
        FakeNode.up = up
        kubelet = Kubelet.__new__(Kubelet)
        kubelet.config, kubelet.name, kubelet.ip = config, "cp1", "10.0.0.1"
        kubelet.node, kubelet.node_loop_started = None, False
        kubelet.metrics = SimpleNamespace(rest_request=None)

        async def credentials():
            order.append("credentials")

        def start_pods(api, runtime):
            order.append("pods-started")
            kubelet.workers = SimpleNamespace(static=FakeStatic(), wake=lambda uid: None)
            up.set()  # the static apiserver comes up now that its pod runs
            return []

        kubelet._credentials, kubelet._start_pods = credentials, start_pods
        tasks: list[asyncio.Task] = []
        # Registering first would wait forever for an apiserver that is never started.
        await asyncio.wait_for(kubelet._start(runtime=None, tasks=tasks), 5)
        assert kubelet.node_loop_started
        await asyncio.sleep(0)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(scenario())
    assert order[:5] == ["credentials", "pods-started", "register-begins", "registered", "mirrors-for:node-uid"]
    assert "status-loop" in order


def test_healthz_is_good_while_registration_waits():
    kubelet = Kubelet.__new__(Kubelet)
    kubelet.node = SimpleNamespace(last_sync=-1e9, uid=None)  # created long ago, not registered yet
    kubelet.node_loop_started = False
    assert kubelet.healthy() == (True, "")
    kubelet.node_loop_started = True
    ok, why = kubelet.healthy()
    assert not ok and "node status loop" in why


def test_a_refused_mirror_pod_is_raised_so_the_worker_retries_soon(tmp_path):
    """Right after kubeadm init the apiserver answers before its system PriorityClasses exist; the mirror pod of a
    static pod naming system-node-critical is refused then, and must be tried again, not left for a minute."""
    static, http, added = static_pods(tmp_path, node_uid="node-uid-1")

    async def refuse(path, content, headers):
        return SimpleNamespace(status_code=403, text='no PriorityClass with name system-node-critical was found')

    http.post = refuse
    with pytest.raises(MirrorPodError, match="system-node-critical"):
        asyncio.run(static.ensure_mirror(added[0], None))


def test_a_static_pod_gets_its_environment_before_the_services_are_listed():
    """Upstream's rule: an API pod waits for the first list of services (its service links), a static pod does
    not (its apiserver may be one of the static pods)."""
    from pykubelet.pods.kuberuntime import RuntimeManager
    from pykubelet.pods.servicelinks import ServiceCache
    from pykubelet.pods.envvars import ConfigProblem

    manager = RuntimeManager.__new__(RuntimeManager)
    manager.services = ServiceCache()
    assert not manager.services.synced
    static = {"metadata": {"namespace": "kube-system", "annotations": {"kubernetes.io/config.source": "file"}},
              "spec": {}}
    assert manager.service_env(static) == {}
    with pytest.raises(ConfigProblem, match="services have not yet been read"):
        manager.service_env({"metadata": {"namespace": "default"}, "spec": {}})
