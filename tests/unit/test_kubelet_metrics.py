"""The kubelet's /metrics and /metrics/probes: upstream's names, help texts and labels, and the counters
moving when the instrumented code runs against test doubles of our own interfaces."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import re
import time

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from cri import CRIClient, CRIError, Unavailable, api
from cri.client import OPERATIONS
from nodeagent.apiclient import Api
from nodeagent.metrics import exposition
from pykubelet.node import certificates
from pykubelet import metrics as kmetrics
from pykubelet.pods.kuberuntime import ContainerProblem, RuntimeManager
from pykubelet.pods.pleg import Pleg
from pykubelet.pods.podstate import Container, PodRuntime, Sandbox
from pykubelet.pods.podstatus import Facts
from pykubelet.pods.podworkers import PodWorker, PodWorkers
from pykubelet.probes import probemanager
from pykubelet.probes.probemanager import PodProbes
from pykubelet.server import auth, routes
from tests.unit.test_cri_client import ALL_RPCS
from tests.unit.test_kubelet_certificates import _signed

# name: (type, help, labels) — Kubernetes v1.36 (pkg/kubelet/metrics, prober, certificate; component-base).
UPSTREAM = {
    "kubelet_node_name": ("gauge", "[ALPHA] The node's name. The count is always 1.", {"node"}),
    "kubelet_running_pods": ("gauge", "[ALPHA] Number of pods that have a running pod sandbox", set()),
    "kubelet_running_containers": ("gauge", "[ALPHA] Number of containers currently running", {"container_state"}),
    "kubelet_runtime_operations": ("counter", "[ALPHA] Cumulative number of runtime operations by operation type.",
                                   {"operation_type"}),
    "kubelet_runtime_operations_errors": (
        "counter", "[ALPHA] Cumulative number of runtime operation errors by operation type.", {"operation_type"}),
    "kubelet_runtime_operations_duration_seconds": (
        "histogram", "[ALPHA] Duration in seconds of runtime operations. Broken down by operation type.",
        {"operation_type"}),
    "kubelet_pleg_relist_duration_seconds": ("histogram", "[ALPHA] Duration in seconds for relisting pods in PLEG.",
                                             set()),
    "kubelet_pleg_relist_interval_seconds": ("histogram", "[ALPHA] Interval in seconds between relisting in PLEG.",
                                             set()),
    "kubelet_pleg_last_seen_seconds": ("gauge", "[ALPHA] Timestamp in seconds when PLEG was last seen active.",
                                       set()),
    "kubelet_pleg_discard_events": ("counter", "[ALPHA] The number of discard events in PLEG.", set()),
    "kubelet_pod_worker_duration_seconds": (
        "histogram", "[ALPHA] Duration in seconds to sync a single pod. Broken down by operation type: create, "
        "update, or sync", {"operation_type"}),
    "kubelet_pod_start_duration_seconds": (
        "histogram", "[ALPHA] Duration in seconds from kubelet seeing a pod for the first time to the pod starting "
        "to run", set()),
    "kubelet_pod_start_sli_duration_seconds": (
        "histogram", "[ALPHA] Duration in seconds to start a pod, excluding time to pull images and run init "
        "containers, measured from pod creation timestamp to when all its containers are reported as started and "
        "observed via watch", set()),
    "kubelet_pod_start_total_duration_seconds": (
        "histogram", "[ALPHA] Duration in seconds to start a pod since creation, including time to pull images and "
        "run init containers, measured from pod creation timestamp to when all its containers are reported as "
        "started and observed via watch", set()),
    "kubelet_started_pods": ("counter", "[ALPHA] Cumulative number of pods started", set()),
    "kubelet_started_pods_errors": ("counter", "[ALPHA] Cumulative number of errors when starting pods", set()),
    "kubelet_started_containers": ("counter", "[ALPHA] Cumulative number of containers started", {"container_type"}),
    "kubelet_started_containers_errors": ("counter", "[ALPHA] Cumulative number of errors when starting containers",
                                          {"container_type", "code"}),
    "kubelet_desired_pods": (
        "gauge", "[ALPHA] The number of pods the kubelet is being instructed to run. static is true if the pod is "
        "not from the apiserver.", {"static"}),
    "kubelet_active_pods": (
        "gauge", "[ALPHA] The number of pods the kubelet considers active and which are being considered when "
        "admitting new pods. static is true if the pod is not from the apiserver.", {"static"}),
    "kubelet_certificate_manager_client_ttl_seconds": (
        "gauge", "[ALPHA] Gauge of the TTL (time-to-live) of the Kubelet's client certificate. The value is in "
        "seconds until certificate expiry (negative if already expired). If client certificate is invalid or "
        "unused, the value will be +INF.", set()),
    "kubelet_certificate_manager_client_expiration_renew_errors": (
        "counter", "[ALPHA] Counter of certificate renewal errors.", set()),
    "kubelet_certificate_manager_server_ttl_seconds": (
        "gauge", "[ALPHA] Gauge of the shortest TTL (time-to-live) of the Kubelet's serving certificate. The value "
        "is in seconds until certificate expiry (negative if already expired). If serving certificate is invalid "
        "or unused, the value will be +INF.", set()),
    "kubelet_server_expiration_renew_errors": ("counter", "[ALPHA] Counter of certificate renewal errors.", set()),
    "kubelet_certificate_manager_server_rotation_seconds": (
        "histogram", "[ALPHA] Histogram of the number of seconds the previous certificate lived before being "
        "rotated.", set()),
    "rest_client_requests": ("counter", "[ALPHA] Number of HTTP requests, partitioned by status code, method, and "
                             "host.", {"code", "method", "host"}),
    "rest_client_request_duration_seconds": (
        "histogram", "[ALPHA] Request latency in seconds. Broken down by verb, and host.", {"verb", "host"}),
}
PROBES_UPSTREAM = {
    "prober_probe": ("counter", "[BETA] Cumulative number of a liveness, readiness or startup probe for a container "
                     "by result.", {"probe_type", "result", "container", "pod", "namespace", "pod_uid"}),
    "prober_probe_duration_seconds": ("histogram", "[ALPHA] Duration in seconds for a probe response.",
                                      {"probe_type", "container", "pod", "namespace"}),
    "process_start_time_seconds": ("gauge", "[ALPHA] Start time of the process since unix epoch in seconds.", set()),
}
for _name, _help in (("capacity_bytes", "Capacity in bytes of the volume"),
                     ("available_bytes", "Number of available bytes in the volume"),
                     ("used_bytes", "Number of used bytes in the volume"),
                     ("inodes", "Maximum number of inodes in the volume"),
                     ("inodes_free", "Number of free inodes in the volume"),
                     ("inodes_used", "Number of used inodes in the volume")):
    UPSTREAM[f"kubelet_volume_stats_{_name}"] = ("gauge", f"[ALPHA] {_help}", {"namespace", "persistentvolumeclaim"})
POD = {"metadata": {"name": "web", "namespace": "default", "uid": "uid-1"}, "spec": {"containers": []}}


def families(registry) -> dict:
    return {f.name: f for f in text_string_to_metric_families(exposition(registry).decode())}


def value(registry, sample: str, **labels) -> float:
    for family in families(registry).values():
        for s in family.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def run(coro):
    return asyncio.run(coro)


CLAIM_STATS = [{"name": "data", "pvcRef": {"name": "claim", "namespace": "ns"}, "capacityBytes": 100,
                "availableBytes": 60, "usedBytes": 40, "inodes": 10, "inodesFree": 7, "inodesUsed": 3}]


@pytest.fixture
def m():
    metrics = kmetrics.KubeletMetrics("n1", client_rotation=True, serving_bootstrap=True)
    metrics.watch(runtime_pods=list, last_relist=lambda: 0.0, workers=list,
                  volume_stats=lambda: CLAIM_STATS + CLAIM_STATS)  # two pods, one claim: counted once
    return metrics


def _use_every_family(m):
    m.runtime_operation("list_containers", 0.01, None)
    m.runtime_operation("exec_sync", 0.01, RuntimeError("exit 1"))
    m.pod_worker_duration.labels("sync").observe(0.1)
    m.started_containers.labels("container").inc()
    m.started_containers_errors.labels("container", "ErrImagePull").inc()
    m.rest_request("GET", "10.0.0.1:6443", 200, 0.01)
    m.probed("readiness", "successful", 0.01, POD, "c")


def test_every_family_has_upstreams_type_help_and_labels(m):
    _use_every_family(m)
    found = families(m.registry)
    for name, (kind, help, labels) in UPSTREAM.items():
        assert name in found, name
        family = found[name]
        assert (family.type, family.documentation) == (kind, help), name
        seen = {k for s in family.samples for k in s.labels if k != "le"}
        assert seen == labels, name
    assert any(name.startswith("process_") for name in found)
    probes = families(m.probes_registry)
    for name, (kind, help, labels) in PROBES_UPSTREAM.items():
        family = probes[name]
        assert (family.type, family.documentation) == (kind, help), name
        assert {k for s in family.samples for k in s.labels if k != "le"} == labels, name


def test_text_as_client_golang_writes_it(m):
    """Counters upstream names without _total keep their names; no _created series; families sorted by name."""
    _use_every_family(m)
    text = exposition(m.registry).decode()
    for bare in ("kubelet_pleg_discard_events", "kubelet_certificate_manager_client_expiration_renew_errors",
                 "kubelet_server_expiration_renew_errors"):
        assert f"# TYPE {bare} counter\n{bare} 0.0\n" in text
        assert f"{bare}_total" not in text
    assert "kubelet_runtime_operations_total{operation_type=\"list_containers\"} 1.0" in text
    assert "_created" not in text
    names = re.findall(r"^# TYPE (\S+) ", text, re.MULTILINE)
    assert names == sorted(names)


def test_runtime_buckets_are_upstreams(m):
    m.runtime_operation("version", 0.001, None)
    bounds = [s.labels["le"] for s in families(m.registry)["kubelet_runtime_operations_duration_seconds"].samples
              if s.name.endswith("_bucket")]
    assert len(bounds) == 15 and bounds[0] == "0.005" and bounds[-1] == "+Inf"
    assert math.isclose(float(bounds[-2]), 0.005 * 2.5 ** 13)


# ------------------------------------------------------------------ CRI calls


def test_every_cri_rpc_has_upstreams_operation_name():
    assert {rpc for _, rpc, _ in ALL_RPCS} == set(OPERATIONS)
    assert OPERATIONS["RunPodSandbox"] == "run_podsandbox" and OPERATIONS["ListPodSandbox"] == "list_podsandbox"
    assert OPERATIONS["UpdateContainerResources"] == "update_container"


def test_the_cri_observer_counts_calls_errors_and_durations(m, tmp_path):
    client = CRIClient(str(tmp_path / "missing.sock"), observer=m.runtime_operation)

    async def answers(endpoint, service, rpc, request, timeout):
        if rpc == "ExecSync":
            return api.ExecSyncResponse(exit_code=int(request.cmd[0]))
        return getattr(api, f"{rpc}Response")()

    async def scenario():
        with pytest.raises(Unavailable):
            await client.list_containers()  # no socket: an error
        client._send = answers
        await client.list_containers()
        await client.exec_sync(api.ExecSyncRequest(container_id="c", cmd=["0"]))
        answer = await client.exec_sync(api.ExecSyncRequest(container_id="c", cmd=["3"]))
        assert answer.exit_code == 3  # returned as usual, counted as an error as upstream

    run(scenario())
    reg = m.registry
    assert value(reg, "kubelet_runtime_operations_total", operation_type="list_containers") == 2
    assert value(reg, "kubelet_runtime_operations_errors_total", operation_type="list_containers") == 1
    assert value(reg, "kubelet_runtime_operations_duration_seconds_count", operation_type="list_containers") == 2
    assert value(reg, "kubelet_runtime_operations_total", operation_type="exec_sync") == 2
    assert value(reg, "kubelet_runtime_operations_errors_total", operation_type="exec_sync") == 1


# ------------------------------------------------------------------ PLEG


class _Runtime:
    """A test double of the CRI client's list calls, for the PLEG."""

    def __init__(self):
        self.fail = False

    async def list_pod_sandbox(self):
        if self.fail:
            raise Unavailable("down", socket="/run/x.sock", rpc="ListPodSandbox")
        return api.ListPodSandboxResponse()

    async def list_containers(self):
        return api.ListContainersResponse()


def test_pleg_relists_are_timed_and_spaced(m):
    runtime = _Runtime()
    pleg = Pleg(runtime, lambda uid: None, metrics=m)
    m.watch(runtime_pods=lambda: list(pleg.pods.items()), last_relist=lambda: pleg.last_relist, workers=list)
    assert value(m.registry, "kubelet_pleg_last_seen_seconds") == 0

    async def scenario():
        await pleg.relist()
        await pleg.relist()
        runtime.fail = True
        with pytest.raises(CRIError):
            await pleg.relist()

    run(scenario())
    assert value(m.registry, "kubelet_pleg_relist_duration_seconds_count") == 3  # the failed one too
    assert value(m.registry, "kubelet_pleg_relist_interval_seconds_count") == 2  # none before the first
    assert abs(value(m.registry, "kubelet_pleg_last_seen_seconds") - time.time()) < 5
    assert value(m.registry, "kubelet_pleg_discard_events_total") == 0  # workers are woken, nothing discarded


# ------------------------------------------------------------------ pods and containers


class _Pleg:
    def __init__(self):
        self.pods = {}

    def pod(self, uid):
        return self.pods.get(uid) or PodRuntime()

    async def wait_newer(self, since):
        return None


class _Manager:
    """A test double of RuntimeManager: a sync that has nothing to do."""

    def __init__(self):
        self.synced = asyncio.Event()

    async def sync(self, pod, rt, facts, unhealthy):
        self.synced.set()
        return None

    async def remove_pod(self, uid, rt):
        return None


class _Status:
    def __init__(self):
        self.sets = []

        self.forgotten = []

    async def set(self, pod, status):
        self.sets.append(status)

    def forget(self, uid):
        self.forgotten.append(uid)


class _Events:
    def __init__(self):
        self.forgotten = []

    def record(self, *args, **kwargs):
        pass

    def forget(self, uid):
        self.forgotten.append(uid)


def _pod(uid="uid-1", **status):
    return {"metadata": {"name": "web", "namespace": "default", "uid": uid,
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}, "status": status}


def test_pod_workers_keep_nothing_of_a_pod_once_it_is_gone(m):
    """What used to grow with every pod ever run: its uid in known_uids, its last status in the status manager and
    its events' deduplication keys."""
    manager, pleg, status, events = _Manager(), _Pleg(), _Status(), _Events()

    async def scenario():
        workers = PodWorkers(runtime=manager, pleg=pleg, status=status, events=events, node_ip="10.0.0.2",
                             metrics=m)
        for uid in ("a", "b"):
            workers.update(_pod(uid))
        await asyncio.wait_for(manager.synced.wait(), 5)
        workers.remove(_pod("a"))  # force-deleted: the worker finishes
        for _ in range(100):
            if "a" not in workers.workers:
                break
            await asyncio.sleep(0.01)
        workers.remove(_pod("a"))  # a late DELETED event for it changes nothing
        known = set(workers.known_uids)
        await workers.stop()
        return known, set(workers.workers)

    assert run(scenario()) == ({"b"}, {"b"})
    assert status.forgotten == ["a"] and events.forgotten == ["a"]


def test_pod_workers_time_each_step_by_why_it_ran_and_count_desired_pods(m):
    manager, pleg = _Manager(), _Pleg()

    async def scenario():
        workers = PodWorkers(runtime=manager, pleg=pleg, status=_Status(), events=_Events(), node_ip="10.0.0.2",
                             metrics=m)
        m.watch(runtime_pods=list, last_relist=lambda: 0.0, workers=lambda: list(workers.workers.values()))
        workers.update(_pod())
        await asyncio.wait_for(manager.synced.wait(), 5)
        await asyncio.sleep(0.05)
        manager.synced.clear()
        workers.update(_pod(phase="Pending"))
        await asyncio.wait_for(manager.synced.wait(), 5)
        await asyncio.sleep(0.05)
        counts = (value(m.registry, "kubelet_desired_pods", static=""),
                  value(m.registry, "kubelet_active_pods", static=""),
                  value(m.registry, "kubelet_desired_pods", static="true"))
        await workers.stop()
        return counts

    assert run(scenario()) == (1, 1, 0)
    assert value(m.registry, "kubelet_pod_worker_duration_seconds_count", operation_type="create") == 1
    assert value(m.registry, "kubelet_pod_worker_duration_seconds_count", operation_type="update") == 1


def test_a_worker_wake_keeps_the_weightiest_reason():
    class _Worker:
        pending = None
        wake_event = asyncio.Event()

    worker = _Worker()
    PodWorker.wake(worker)
    PodWorker.wake(worker, "update")
    since = worker.pending[1]
    PodWorker.wake(worker, "sync")
    assert worker.pending == ("update", since)
    PodWorker.wake(worker, "kill")
    assert worker.pending == ("kill", since)


def _runtime_manager(m) -> RuntimeManager:
    return RuntimeManager(cri=None, volumes=None, events=_Events(), config=None, node_name="n1", node_ip="10.0.0.2",
                          node_allocatable={}, node_memory=0, get_object=None, metrics=m)


def test_started_containers_count_attempts_and_errors_by_code(m):
    manager = _runtime_manager(m)
    outcomes = [None, ContainerProblem("ErrImagePull", "no such image")]

    async def start_container(*args):
        problem = outcomes.pop(0)
        if problem:
            raise problem
        return "cid"

    manager.start_container = start_container
    pod, container = _pod(), {"name": "c", "image": "busybox:1.36"}

    async def scenario():
        facts = Facts(node_ip="10.0.0.2")
        await manager._start(pod, container, PodRuntime(), "sb", None, [], {}, facts, None, "init_container")
        await manager._start(pod, container, PodRuntime(), "sb", None, [], {}, facts, None)

    run(scenario())
    reg = m.registry
    assert value(reg, "kubelet_started_containers_total", container_type="init_container") == 1
    assert value(reg, "kubelet_started_containers_total", container_type="container") == 1
    assert value(reg, "kubelet_started_containers_errors_total", container_type="container", code="ErrImagePull") == 1


def test_started_pods_count_sandbox_attempts_and_failures(m):
    manager = _runtime_manager(m)

    async def failing(pod, rt):
        raise ContainerProblem("ContainerCreating", "Failed to create pod sandbox: CNI is not ready")

    manager._create_sandbox = failing
    with pytest.raises(ContainerProblem):
        run(manager.create_sandbox(_pod(), PodRuntime()))
    assert value(m.registry, "kubelet_started_pods_total") == 1
    assert value(m.registry, "kubelet_started_pods_errors_total") == 1


def test_pod_start_sli_leaves_out_image_pulls_and_init_containers(m):
    startup = m.pod_startup
    created = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc).timestamp()
    startup.observed_on_watch(_pod())  # new: no startTime yet, so tracked
    startup.image_pulled("uid-1", 4.0)
    running = _pod(phase="Running", startTime="2026-01-01T00:00:01Z",
                   initContainerStatuses=[{"state": {"terminated": {"startedAt": "2026-01-01T00:00:02Z",
                                                                    "finishedAt": "2026-01-01T00:00:05Z"}}}],
                   containerStatuses=[{"state": {"running": {"startedAt": "2026-01-01T00:00:09Z"}}}])
    startup.observed_on_watch(running, when=created + 10)
    startup.observed_on_watch(running, when=created + 20)  # once only
    assert value(m.registry, "kubelet_pod_start_total_duration_seconds_sum") == 10
    assert value(m.registry, "kubelet_pod_start_sli_duration_seconds_sum") == 10 - 4 - 3
    assert value(m.registry, "kubelet_pod_start_sli_duration_seconds_count") == 1
    # A pod some kubelet had started before (it has a startTime) is not tracked.
    startup.observed_on_watch(_pod("uid-2", phase="Running", startTime="2026-01-01T00:00:01Z"))
    assert "uid-2" not in startup.pods


# ------------------------------------------------------------------ probes


class _ProbedWorker:
    """A test double of the PodWorker as PodProbes sees it."""

    def __init__(self, pod):
        self.pod, self.uid = pod, pod["metadata"]["uid"]
        self.facts, self.unhealthy = Facts(node_ip="10.0.0.2"), set()
        self.owner = type("Owner", (), {"pleg": _Pleg(), "node_ip": "10.0.0.2"})()

    def wake(self, operation="sync"):
        pass

    def with_api_status(self):
        return self.pod


class _Exec:
    def __init__(self, exit_code):
        self.exit_code = exit_code

    async def exec_sync(self, request):
        return api.ExecSyncResponse(exit_code=self.exit_code)


def test_a_probe_run_counts_in_prober_probe_total_with_upstreams_labels(m):
    container = {"name": "c", "readinessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 0.02}}
    pod = {"metadata": {"name": "web", "namespace": "default", "uid": "uid-1"}, "spec": {"containers": [container]}}
    rt = PodRuntime(sandboxes=[Sandbox("sb", 0, api.SANDBOX_READY, 1)],
                    containers=[Container("cid", "c", 0, api.CONTAINER_RUNNING, 1, "sb", "busybox", {}, {},
                                          started_at=int(time.time() * 1e9))])
    labels = dict(probe_type="Readiness", container="c", pod="web", namespace="default", pod_uid="uid-1")
    cri = _Exec(0)

    async def scenario():
        probes = PodProbes(_ProbedWorker(pod), cri, _Events(), m)
        probes.update(pod, rt)
        for _ in range(100):
            await asyncio.sleep(0.02)
            if value(m.probes_registry, "prober_probe_total", result="successful", **labels) >= 2:
                break
        cri.exit_code = 1
        for _ in range(100):
            await asyncio.sleep(0.02)
            if value(m.probes_registry, "prober_probe_total", result="failed", **labels) >= 1:
                break
        text = exposition(m.probes_registry).decode()
        probes.stop()
        return text

    text = run(scenario())
    assert 'prober_probe_total{container="c",namespace="default",pod="web",pod_uid="uid-1",probe_type="Readiness",' \
           'result="failed"}' in text
    assert 'result="successful"' in text
    assert 'prober_probe_duration_seconds_count{container="c",namespace="default",pod="web",' \
           'probe_type="Readiness"}' in text
    # The worker stopped: its series are gone, as upstream deletes them.
    assert "prober_probe_total{" not in exposition(m.probes_registry).decode()


def test_after_a_kubelet_restart_a_running_container_keeps_its_started_and_ready(m):
    """Upstream's kubeletRestartGracePeriod: no readiness flap (and no startup probe) for a container that ran
    before this kubelet started, while the API shows the pod Ready; a new container starts unready."""
    probes_spec = {"exec": {"command": ["true"]}, "periodSeconds": 30, "initialDelaySeconds": 30}
    containers = [{"name": name, "readinessProbe": probes_spec, "startupProbe": probes_spec} for name in "ab"]
    long_ago = int((probemanager.KUBELET_START - 60) * 1e9)
    pod = {"metadata": {"name": "web", "namespace": "default", "uid": "uid-1"}, "spec": {"containers": containers},
           "status": {"conditions": [{"type": "Ready", "status": "True"}], "containerStatuses": [
               {"name": "a", "containerID": "containerd://old-a", "started": True, "ready": True},
               {"name": "b", "containerID": "containerd://replaced", "started": True, "ready": True}]}}
    rt = PodRuntime(sandboxes=[Sandbox("sb", 0, api.SANDBOX_READY, 1)], containers=[
        Container(f"old-{name}", name, 0, api.CONTAINER_RUNNING, 1, "sb", "busybox", {}, {}, started_at=long_ago)
        for name in "ab"])

    async def scenario():
        probes = PodProbes(_ProbedWorker(pod), _Exec(0), _Events(), m)
        probes.update(pod, rt)
        kinds = {name: [w.kind for w in probes.containers[name].workers] for name in "ab"}
        facts = dict(probes.worker.facts.started), dict(probes.worker.facts.ready)
        probes.stop()
        return kinds, facts

    kinds, (started, ready) = run(scenario())
    assert started == {"a": True, "b": False} and ready == {"a": True, "b": False}
    assert kinds == {"a": ["readiness"], "b": ["startup", "readiness"]}


# ------------------------------------------------------------------ certificates


def test_certificate_ttl_errors_and_rotation(m, tmp_path):
    client = m.client_certificate
    assert value(m.registry, "kubelet_certificate_manager_client_ttl_seconds") == math.inf  # none yet
    current = certificates.store(tmp_path, *_signed(1))
    client.current(current)
    assert 86390 < value(m.registry, "kubelet_certificate_manager_client_ttl_seconds") <= 86400

    attempts = []

    async def renew():
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("apiserver unavailable")

    async def scenario():
        counted = certificates.counted(renew, client)
        with pytest.raises(RuntimeError):
            await counted()
        await counted()

    run(scenario())
    assert value(m.registry, "kubelet_certificate_manager_client_expiration_renew_errors_total") == 1
    m.serving_certificate.rotated(certificates.store(tmp_path, *_signed(10, start_days_ago=2), certificates.SERVER))
    count = value(m.registry, "kubelet_certificate_manager_server_rotation_seconds_count")
    assert count == 1
    lived = value(m.registry, "kubelet_certificate_manager_server_rotation_seconds_sum")
    assert 2 * 86400 - 60 < lived < 2 * 86400 + 60


def test_keep_renewed_reports_the_certificate_in_use(m, tmp_path, monkeypatch):
    certificates.store(tmp_path, *_signed(30))

    class Done(Exception):
        pass

    async def sleep(seconds):
        raise Done

    monkeypatch.setattr(asyncio, "sleep", sleep)
    with pytest.raises(Done):
        run(certificates.keep_renewed(tmp_path, certificates.CLIENT, None, "Client certificate", m.client_certificate))
    assert 29 * 86400 < value(m.registry, "kubelet_certificate_manager_client_ttl_seconds") <= 30 * 86400


# ------------------------------------------------------------------ the apiserver client


def test_rest_client_requests_by_code_method_and_host(m):
    host = "10.0.0.1:6443"
    m.rest_request("GET", host, 200, 0.01)
    m.rest_request("PATCH", host, 404, 0.02)
    m.rest_request("GET", host, None, 0.5)  # failed without a response
    reg = m.registry
    assert value(reg, "rest_client_requests_total", code="200", method="GET", host=host) == 1
    assert value(reg, "rest_client_requests_total", code="404", method="PATCH", host=host) == 1
    assert value(reg, "rest_client_requests_total", code="<error>", method="GET", host=host) == 1
    assert value(reg, "rest_client_request_duration_seconds_count", verb="GET", host=host) == 2


def test_the_api_clients_report_to_the_observer(m, tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'https://10.0.0.1:6443', insecure-skip-tls-verify: true}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\nusers: [{name: u, user: {token: abc}}]\n")

    async def scenario():
        api = Api(kubeconfig, field_manager="test", observe=m.rest_request)
        try:
            return api.http.observe, api.watch_http.observe, dict(api.http.headers)
        finally:
            await api.close()

    http, watch, headers = run(scenario())
    assert http == watch == m.rest_request
    assert headers[b"authorization"] == b"Bearer abc" and headers[b"user-agent"].startswith(b"test/v1.36")


# ------------------------------------------------------------------ the routes


class _Host:
    def __init__(self, m):
        self.registry, self.probes_registry = m.registry, m.probes_registry


def test_metrics_and_metrics_probes_are_served_and_need_nodes_metrics(m):
    _use_every_family(m)

    async def scenario():
        client = TestClient(TestServer(routes.build(_Host(m), None, None, read_only=True)))
        await client.start_server()
        try:
            answers = []
            for path in ("/metrics", "/metrics/probes"):
                response = await client.get(path)
                answers.append((response.status, response.headers["Content-Type"], await response.text()))
            return answers
        finally:
            await client.close()

    (status, kind, text), (probes_status, _, probes) = run(scenario())
    assert status == probes_status == 200 and kind.startswith("text/plain")
    assert "kubelet_runtime_operations_total" in text and "prober_probe_total" not in text
    assert "prober_probe_total{" in probes and "process_start_time_seconds" in probes
    assert auth.subresources("/metrics/probes") == ["metrics"]


def test_volume_stats_of_each_claim_once(m):
    assert value(m.registry, "kubelet_volume_stats_used_bytes", namespace="ns", persistentvolumeclaim="claim") == 40
    assert value(m.registry, "kubelet_volume_stats_inodes_free", namespace="ns", persistentvolumeclaim="claim") == 7
    assert len(families(m.registry)["kubelet_volume_stats_capacity_bytes"].samples) == 1


def test_a_pod_that_finished_before_we_started_gets_no_worker_on_any_relist(m):
    manager, pleg = _Manager(), _Pleg()

    async def scenario():
        workers = PodWorkers(runtime=manager, pleg=pleg, status=_Status(), events=_Events(), node_ip="10.0.0.2",
                             metrics=m)
        done = _pod("done", phase="Succeeded")
        workers.replace([done])
        workers.replace([done])  # the watch expired and listed again
        workers.update(done)
        found = dict(workers.workers), set(workers.known_uids)
        await workers.stop()
        return found

    assert run(scenario()) == ({}, {"done"})
