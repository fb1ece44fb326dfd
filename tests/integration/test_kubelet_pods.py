"""pykubelet runs pods: what the API shows for each behaviour (status, conditions, Events)."""

from __future__ import annotations

import ipaddress
import time
import uuid

import pytest
from lightkube.resources.core_v1 import ConfigMap, Event, Namespace, Pod, Secret

from cri import CRIClient, api

pytestmark = pytest.mark.integration

BUSYBOX = "registry.k8s.io/e2e-test-images/busybox:1.37.0-1"


@pytest.fixture(scope="module")
def namespace(admin, node):
    name = f"pods-{uuid.uuid4().hex[:6]}"
    admin.create(Namespace.from_dict({"metadata": {"name": name}}))
    deadline = time.monotonic() + 30  # the controller-manager creates the default ServiceAccount
    from lightkube.resources.core_v1 import ServiceAccount
    while time.monotonic() < deadline:
        try:
            admin.get(ServiceAccount, "default", namespace=name)
            break
        except Exception:  # noqa: BLE001
            time.sleep(0.5)
    yield name
    admin.delete(Namespace, name)


def make_pod(node, namespace, name, containers, **spec):
    return Pod.from_dict({
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"nodeSelector": {"kubernetes.io/hostname": node.name}, "terminationGracePeriodSeconds": 5,
                 "containers": containers, **spec},
    })


def container(name="main", command=None, **extra):
    return {"name": name, "image": BUSYBOX, "command": command or ["sleep", "3600"], **extra}


def wait_pod(admin, namespace, name, predicate, timeout=60, what="the pod"):
    deadline = time.monotonic() + timeout
    pod = None
    while time.monotonic() < deadline:
        try:
            pod = admin.get(Pod, name, namespace=namespace)
        except Exception:  # noqa: BLE001
            pod = None
        if pod is not None and predicate(pod):
            return pod
        time.sleep(0.5)
    status = pod.status.to_dict() if pod is not None and pod.status else None
    raise AssertionError(f"timed out waiting for {what}; last status: {status}")


def events_for(admin, namespace, name):
    return [e for e in admin.list(Event, namespace=namespace) if e.involvedObject.name == name]


def state(pod, index=0, init=False):
    statuses = pod.status.initContainerStatuses if init else pod.status.containerStatuses
    return statuses[index].state if statuses else None


def test_a_pod_runs_and_reports_its_status(admin, node, namespace):
    admin.create(make_pod(node, namespace, "runner", [container()]))
    pod = wait_pod(admin, namespace, "runner", lambda p: p.status.phase == "Running"
                   and state(p).running is not None, what="Running")
    status = pod.status
    assert ipaddress.ip_address(status.podIP) in ipaddress.ip_network(node.pod_cidr)
    assert status.hostIP == node.ip and status.startTime is not None
    assert status.qosClass == "BestEffort"
    conditions = {c.type: c.status for c in status.conditions}
    assert conditions == {"PodScheduled": "True", "PodReadyToStartContainers": "True", "Initialized": "True",
                          "Ready": "True", "ContainersReady": "True"}
    cs = status.containerStatuses[0]
    assert cs.ready and cs.started and cs.restartCount == 0
    assert cs.containerID.startswith("containerd://") and cs.imageID.startswith("sha256:")
    reasons = {e.reason for e in events_for(admin, namespace, "runner")}
    assert {"Scheduled", "Pulled", "Created", "Started"} <= reasons


def test_env_sources_and_expansion(admin, node, namespace):
    admin.create(ConfigMap.from_dict({"metadata": {"name": "settings", "namespace": namespace},
                                      "data": {"color": "blue"}}))
    admin.create(Secret.from_dict({"metadata": {"name": "creds", "namespace": namespace},
                                   "stringData": {"password": "s3cret"}}))
    env = [
        {"name": "PLAIN", "value": "hello"},
        {"name": "EXPANDED", "value": "$(PLAIN)-world"},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "COLOR", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "color"}}},
        {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
    ]
    script = ("echo $PLAIN $EXPANDED $POD_NAME $POD_IP $NODE $COLOR $PASSWORD $KUBERNETES_SERVICE_HOST "
              "$(cat /var/run/secrets/kubernetes.io/serviceaccount/namespace) > /dev/termination-log")
    admin.create(make_pod(node, namespace, "env", [container(command=["sh", "-c", script], env=env)],
                          restartPolicy="Never"))
    pod = wait_pod(admin, namespace, "env", lambda p: p.status.phase == "Succeeded", what="Succeeded")
    words = state(pod).terminated.message.split()
    assert words[:3] == ["hello", "hello-world", "env"]
    assert words[3] == pod.status.podIP and words[4] == node.name
    assert words[5:7] == ["blue", "s3cret"]
    assert words[7] == node.cluster.kubernetes_service_ip and words[8] == namespace


def test_restart_policies_and_exit_codes(admin, node, namespace):
    admin.create(make_pod(node, namespace, "fails", [container(command=["sh", "-c", "exit 3"])],
                          restartPolicy="Never"))
    admin.create(make_pod(node, namespace, "succeeds", [container(command=["true"])], restartPolicy="OnFailure"))
    failed = wait_pod(admin, namespace, "fails", lambda p: p.status.phase == "Failed", what="Failed")
    terminated = state(failed).terminated
    assert terminated.exitCode == 3 and terminated.reason == "Error"
    assert {c.type: c.reason for c in failed.status.conditions}["Ready"] == "PodCompleted"
    done = wait_pod(admin, namespace, "succeeds", lambda p: p.status.phase == "Succeeded", what="Succeeded")
    assert state(done).terminated.exitCode == 0 and state(done).terminated.reason == "Completed"


def test_crash_loop_back_off(admin, node, namespace):
    admin.create(make_pod(node, namespace, "crasher", [container(command=["sh", "-c", "exit 1"])]))
    pod = wait_pod(admin, namespace, "crasher", lambda p: p.status.containerStatuses
                   and p.status.containerStatuses[0].restartCount >= 1
                   and state(p).waiting is not None and state(p).waiting.reason == "CrashLoopBackOff",
                   timeout=60, what="CrashLoopBackOff")
    cs = pod.status.containerStatuses[0]
    assert cs.lastState.terminated.exitCode == 1
    assert "back-off 10s" in cs.state.waiting.message or "back-off 20s" in cs.state.waiting.message
    assert pod.status.phase == "Running"
    assert "BackOff" in {e.reason for e in events_for(admin, namespace, "crasher")}


def test_bad_input_shows_in_status_and_events(admin, node, namespace):
    admin.create(make_pod(node, namespace, "noimage", [{"name": "main", "image": "example.invalid/nothing:1"}]))
    admin.create(make_pod(node, namespace, "nocm", [container(env=[
        {"name": "X", "valueFrom": {"configMapKeyRef": {"name": "missing", "key": "k"}}}])]))
    admin.create(make_pod(node, namespace, "nocmd", [container(command=["/no/such/program"])],
                          restartPolicy="Never"))
    pod = wait_pod(admin, namespace, "noimage", lambda p: state(p) and state(p).waiting
                   and state(p).waiting.reason in ("ErrImagePull", "ImagePullBackOff"), what="ErrImagePull")
    assert "example.invalid/nothing:1" in state(pod).waiting.message
    wait_pod(admin, namespace, "noimage", lambda p: state(p).waiting.reason == "ImagePullBackOff", timeout=30,
             what="ImagePullBackOff")
    assert {"Pulling", "Failed"} <= {e.reason for e in events_for(admin, namespace, "noimage")}

    pod = wait_pod(admin, namespace, "nocm", lambda p: state(p) and state(p).waiting
                   and state(p).waiting.reason == "CreateContainerConfigError", what="CreateContainerConfigError")
    assert 'configmap "missing" not found' in state(pod).waiting.message

    pod = wait_pod(admin, namespace, "nocmd", lambda p: state(p) and (
        (state(p).waiting and state(p).waiting.reason == "RunContainerError")
        or state(p).terminated is not None), what="a failed start")
    messages = " ".join(e.message for e in events_for(admin, namespace, "nocmd"))
    assert "/no/such/program" in messages


def test_init_containers_run_first_in_order(admin, node, namespace):
    pod = make_pod(node, namespace, "inits", [container(command=["sh", "-c", "cat /work/log > /dev/termination-log"])],
                   restartPolicy="Never", volumes=[{"name": "work", "emptyDir": {}}],
                   initContainers=[container(name=f"init{i}", command=["sh", "-c", f"echo init{i} >> /work/log"],
                                             volumeMounts=[{"name": "work", "mountPath": "/work"}])
                                   for i in (1, 2)])
    pod.spec.containers[0].volumeMounts = [{"name": "work", "mountPath": "/work"}]
    admin.create(Pod.from_dict(pod.to_dict()))
    done = wait_pod(admin, namespace, "inits", lambda p: p.status.phase == "Succeeded", what="Succeeded")
    assert state(done).terminated.message.split() == ["init1", "init2"]
    assert [s.state.terminated.exitCode for s in done.status.initContainerStatuses] == [0, 0]


def test_deletion_stops_removes_and_deletes_the_pod(admin, node, namespace):
    trap = ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]
    admin.create(make_pod(node, namespace, "deleted", [container(command=trap)]))
    pod = wait_pod(admin, namespace, "deleted", lambda p: p.status.phase == "Running", what="Running")
    uid = pod.metadata.uid
    started = time.monotonic()
    admin.delete(Pod, "deleted", namespace=namespace)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            admin.get(Pod, "deleted", namespace=namespace)
        except Exception:  # noqa: BLE001 - gone
            break
        time.sleep(0.3)
    else:
        raise AssertionError("the pod was not deleted from the API")
    assert time.monotonic() - started < 15
    assert "Killing" in {e.reason for e in events_for(admin, namespace, "deleted")}

    import asyncio

    async def leftovers():
        async with CRIClient(str(node.containerd_socket), timeout=10) as runtime:
            sandboxes = (await runtime.list_pod_sandbox()).items
            return [s for s in sandboxes if s.metadata.uid == uid]

    assert asyncio.run(leftovers()) == []


def test_unsupported_volume_is_a_failed_mount_event(admin, node, namespace):
    admin.create(make_pod(node, namespace, "nfs", [container()],
                          volumes=[{"name": "share", "nfs": {"server": "10.221.0.250", "path": "/x"}}]))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        mounts = [e for e in events_for(admin, namespace, "nfs") if e.reason == "FailedMount"]
        if mounts:
            break
        time.sleep(0.5)
    assert mounts and "nfs" in mounts[0].message
    pod = admin.get(Pod, "nfs", namespace=namespace)
    assert pod.status.phase == "Pending"
    assert state(pod).waiting.reason == "ContainerCreating"


def test_active_deadline_fails_the_pod(admin, node, namespace):
    admin.create(make_pod(node, namespace, "deadline", [container()], activeDeadlineSeconds=3))
    pod = wait_pod(admin, namespace, "deadline", lambda p: p.status.phase == "Failed", timeout=40, what="Failed")
    assert pod.status.reason == "DeadlineExceeded"
