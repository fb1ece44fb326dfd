"""Pod phase, conditions and container statuses from what the runtime holds."""

from __future__ import annotations

from cri import api
from pykubelet.pods import podstatus
from pykubelet.pods.backoff import Backoff
from pykubelet.pods.podstate import Container, PodRuntime, Sandbox

SANDBOX = Sandbox("sb", 0, api.SANDBOX_READY, 1, ip="10.222.1.9", ips=["10.222.1.9"])


def pod(restart="Always", containers=("main",), inits=()):
    return {"metadata": {"name": "p", "namespace": "ns", "uid": "u"},
            "spec": {"restartPolicy": restart, "containers": [{"name": n, "image": "img"} for n in containers],
                     "initContainers": [{"name": n, "image": "img"} for n in inits]},
            "status": {"conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": "T0"}]}}


def record(name, state, attempt=0, exit_code=0, cid=None):
    return Container(id=cid or f"{name}-{attempt}", name=name, attempt=attempt, state=state, created_at=attempt,
                     sandbox_id="sb", image="img", labels={}, annotations={"io.kubernetes.container.restartCount":
                                                                            str(attempt)},
                     started_at=10**18, finished_at=10**18 + 10**9 if state == api.CONTAINER_EXITED else 0,
                     exit_code=exit_code, image_ref="sha256:abc")


def status(p, records, **facts):
    rt = PodRuntime(sandboxes=[SANDBOX], containers=sorted(records, key=lambda c: -c.attempt))
    return podstatus.compute(p, rt, podstatus.Facts(node_ip="10.221.0.11", **facts))


def test_running_pod():
    s = status(pod(), [record("main", api.CONTAINER_RUNNING)])
    assert s["phase"] == "Running" and s["podIP"] == "10.222.1.9" and s["hostIP"] == "10.221.0.11"
    assert {c["type"]: c["status"] for c in s["conditions"]} == {
        "PodScheduled": "True", "PodReadyToStartContainers": "True", "Initialized": "True", "Ready": "True",
        "ContainersReady": "True"}
    cs = s["containerStatuses"][0]
    assert cs["ready"] and cs["started"] and "running" in cs["state"]
    assert cs["containerID"] == "containerd://main-0" and cs["imageID"] == "sha256:abc"


def test_phases_by_restart_policy_and_exit_codes():
    exited_ok = [record("main", api.CONTAINER_EXITED, exit_code=0)]
    exited_bad = [record("main", api.CONTAINER_EXITED, exit_code=2)]
    assert status(pod("Never"), exited_ok)["phase"] == "Succeeded"
    assert status(pod("Never"), exited_bad)["phase"] == "Failed"
    assert status(pod("OnFailure"), exited_ok)["phase"] == "Succeeded"
    assert status(pod("OnFailure"), exited_bad)["phase"] == "Running"
    assert status(pod("Always"), exited_ok)["phase"] == "Running"
    assert status(pod("Always"), [])["phase"] == "Pending"
    failed = status(pod("Never"), exited_bad)
    assert failed["containerStatuses"][0]["state"]["terminated"]["reason"] == "Error"
    assert {c["type"]: c.get("reason") for c in failed["conditions"]}["Ready"] == "PodCompleted"


def test_crash_loop_shows_waiting_with_the_last_exit():
    records = [record("main", api.CONTAINER_EXITED, attempt=0, exit_code=1),
               record("main", api.CONTAINER_EXITED, attempt=1, exit_code=1)]
    s = status(pod(), records, waiting={"main": ("CrashLoopBackOff", "back-off 10s restarting failed container")})
    cs = s["containerStatuses"][0]
    assert cs["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert cs["lastState"]["terminated"]["exitCode"] == 1 and cs["restartCount"] == 1
    assert s["phase"] == "Running"


def test_init_containers_gate_the_app_and_initialized():
    s = status(pod(inits=("setup",)), [record("setup", api.CONTAINER_RUNNING)])
    assert s["phase"] == "Pending"
    assert s["containerStatuses"][0]["state"]["waiting"]["reason"] == "PodInitializing"
    initialized = {c["type"]: c for c in s["conditions"]}["Initialized"]
    assert initialized["status"] == "False" and initialized["message"] == "containers with incomplete status: [setup]"
    s = status(pod("Never", inits=("setup",)), [record("setup", api.CONTAINER_EXITED, exit_code=1)])
    assert s["phase"] == "Failed"
    assert s["initContainerStatuses"][0]["ready"] is False


def test_init_containers_not_created_yet_show_pod_initializing_and_completed_ones_are_ready():
    s = status(pod(inits=("first", "second")), [record("first", api.CONTAINER_RUNNING)])
    second = s["initContainerStatuses"][1]
    assert second["state"] == {"waiting": {"reason": "PodInitializing"}} and second["ready"] is False
    s = status(pod(inits=("first", "second")), [record("first", api.CONTAINER_EXITED, exit_code=0),
                                               record("second", api.CONTAINER_EXITED, exit_code=0)])
    assert [c["ready"] for c in s["initContainerStatuses"]] == [True, True]
    assert s["containerStatuses"][0]["state"]["waiting"]["reason"] == "PodInitializing"
    assert status(pod(), [])["containerStatuses"][0]["state"]["waiting"]["reason"] == "ContainerCreating"
    created = status(pod(inits=("first",)), [record("first", api.CONTAINER_CREATED)])
    assert created["initContainerStatuses"][0]["state"] == {"waiting": {"reason": "PodInitializing"}}


def test_readiness_and_transition_times():
    p = pod()
    first = status(p, [record("main", api.CONTAINER_RUNNING)], ready={"main": False})
    ready = {c["type"]: c for c in first["conditions"]}["Ready"]
    assert ready["status"] == "False" and ready["reason"] == "ContainersNotReady"
    p["status"]["conditions"] = first["conditions"]
    again = status(p, [record("main", api.CONTAINER_RUNNING)], ready={"main": False})
    assert {c["type"]: c for c in again["conditions"]}["Ready"]["lastTransitionTime"] == ready["lastTransitionTime"]


def test_backoff_doubles_caps_and_resets():
    now = [1000.0]
    backoff = Backoff(clock=lambda: now[0])
    assert backoff.remaining("k") == 0
    assert [backoff.failed("k") for _ in range(7)] == [10, 20, 40, 80, 160, 300, 300]
    assert backoff.remaining("k") == 300
    now[0] += 299
    assert backoff.remaining("k") == 1
    now[0] += 601  # quiet for more than twice the maximum: start over
    assert backoff.delay("k") == 0 and backoff.failed("k") == 10


def test_readiness_gates_hold_ready_and_conditions_of_others_are_kept():
    p = pod()
    p["metadata"]["generation"] = 3
    p["spec"]["readinessGates"] = [{"conditionType": "example.com/lb"}, {"conditionType": "example.com/dns"}]
    p["status"]["conditions"].append({"type": "example.com/lb", "status": "False", "lastTransitionTime": "T1"})
    s = status(p, [record("main", api.CONTAINER_RUNNING)])
    by_type = {c["type"]: c for c in s["conditions"]}
    assert by_type["example.com/lb"] == {"type": "example.com/lb", "status": "False", "lastTransitionTime": "T1"}
    assert by_type["ContainersReady"]["status"] == "True"
    assert by_type["Ready"]["status"] == "False" and by_type["Ready"]["reason"] == "ReadinessGatesNotReady"
    assert by_type["Ready"]["message"] == (
        'the status of pod readiness gate "example.com/lb" is not "True", but False, '
        'corresponding condition of pod readiness gate "example.com/dns" does not exist.')
    assert s["observedGeneration"] == 3
    assert {c["type"] for c in s["conditions"] if c.get("observedGeneration") == 3} == {
        "PodScheduled", "PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady"}
    assert by_type["PodScheduled"]["lastTransitionTime"] == "T0"

    p["status"]["conditions"] = [{**c, "status": "True"} for c in p["status"]["conditions"]]
    p["status"]["conditions"].append({"type": "example.com/dns", "status": "True", "lastTransitionTime": "T2"})
    s = status(p, [record("main", api.CONTAINER_RUNNING)])
    assert {c["type"]: c["status"] for c in s["conditions"]}["Ready"] == "True"


def test_ephemeral_containers_have_statuses_of_their_own_outside_readiness():
    p = pod()
    p["spec"]["ephemeralContainers"] = [{"name": "debugger", "image": "img"}]
    s = status(p, [record("main", api.CONTAINER_RUNNING)])
    assert s["ephemeralContainerStatuses"][0]["state"] == {"waiting": {"reason": "ContainerCreating"}}
    assert {c["type"]: c["status"] for c in s["conditions"]}["Ready"] == "True"
    s = status(p, [record("main", api.CONTAINER_RUNNING), record("debugger", api.CONTAINER_RUNNING)])
    debugger = s["ephemeralContainerStatuses"][0]
    assert "running" in debugger["state"] and debugger["ready"] is False
    assert [c["name"] for c in s["containerStatuses"]] == ["main"]


def test_qos_class_comes_from_the_pod_even_before_any_sync():
    # A pod refused at admission never reaches the runtime's sync; its status still names the class the API
    # computed (the field is immutable: a different one is refused with HTTP 422).
    p = pod()
    p["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "1000"}}
    empty = PodRuntime(sandboxes=[], containers=[])
    assert podstatus.compute(p, empty, podstatus.Facts(node_ip="10.221.0.11"))["qosClass"] == "Burstable"
    p["status"]["qosClass"] = "Guaranteed"  # what the API recorded wins
    assert podstatus.compute(p, empty, podstatus.Facts(node_ip="10.221.0.11"))["qosClass"] == "Guaranteed"
