"""pykubelet runs pods: what the API shows for each behaviour (status, conditions, Events)."""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path

import pytest
from lightkube.resources.core_v1 import ConfigMap, Event, Pod, Secret, Service

from cri import CRIClient
from tests.integration.pods import BUSYBOX, container, make_pod, wait_gone, wait_pod
from tests.integration.polling import eventually

pytestmark = pytest.mark.integration


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


def test_service_links_name_the_services_of_the_pods_namespace(admin, node, namespace):
    created = admin.create(Service.from_dict({
        "metadata": {"name": "fake-db", "namespace": namespace},
        "spec": {"ports": [{"name": "sql", "port": 5432, "targetPort": 5432}]}}))
    ip = created.spec.clusterIP
    script = "env | grep -E '^(FAKE_DB|KUBERNETES)_' | sort > /dev/termination-log"
    admin.create(make_pod(node, namespace, "links", [container(command=["sh", "-c", script])],
                          restartPolicy="Never"))
    admin.create(make_pod(node, namespace, "nolinks", [container(command=["sh", "-c", script])],
                          restartPolicy="Never", enableServiceLinks=False))
    links = wait_pod(admin, namespace, "links", lambda p: p.status.phase == "Succeeded", what="Succeeded")
    env = dict(line.split("=", 1) for line in state(links).terminated.message.split())
    assert {k: v for k, v in env.items() if k.startswith("FAKE_DB_")} == {
        "FAKE_DB_SERVICE_HOST": ip, "FAKE_DB_SERVICE_PORT": "5432", "FAKE_DB_SERVICE_PORT_SQL": "5432",
        "FAKE_DB_PORT": f"tcp://{ip}:5432", "FAKE_DB_PORT_5432_TCP": f"tcp://{ip}:5432",
        "FAKE_DB_PORT_5432_TCP_PROTO": "tcp", "FAKE_DB_PORT_5432_TCP_PORT": "5432", "FAKE_DB_PORT_5432_TCP_ADDR": ip}
    assert env["KUBERNETES_SERVICE_HOST"] == node.cluster.kubernetes_service_ip
    nolinks = wait_pod(admin, namespace, "nolinks", lambda p: p.status.phase == "Succeeded", what="Succeeded")
    names = {line.split("=", 1)[0] for line in state(nolinks).terminated.message.split()}
    assert "KUBERNETES_SERVICE_HOST" in names and not [n for n in names if n.startswith("FAKE_DB_")]


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
    assert [s.ready for s in done.status.initContainerStatuses] == [True, True]  # completed init containers


def test_deletion_stops_removes_and_deletes_the_pod(admin, node, namespace):
    trap = ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]
    admin.create(make_pod(node, namespace, "deleted", [container(command=trap)]))
    pod = wait_pod(admin, namespace, "deleted", lambda p: p.status.phase == "Running", what="Running")
    uid = pod.metadata.uid
    started = time.monotonic()
    admin.delete(Pod, "deleted", namespace=namespace)
    wait_gone(admin, namespace, "deleted")
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


def test_liveness_failure_restarts_the_container_with_an_unhealthy_event(admin, node, namespace):
    probe = {"exec": {"command": ["sh", "-c", "test ! -e /tmp/broken"]}, "periodSeconds": 1, "failureThreshold": 1}
    admin.create(make_pod(node, namespace, "liveness", [container(
        command=["sh", "-c", "sleep 2; touch /tmp/broken; sleep 3600"], livenessProbe=probe)]))
    pod = wait_pod(admin, namespace, "liveness", lambda p: p.status.containerStatuses
                   and p.status.containerStatuses[0].restartCount >= 1, timeout=60, what="a restart")
    unhealthy = [e for e in events_for(admin, namespace, "liveness") if e.reason == "Unhealthy"]
    assert unhealthy and unhealthy[0].message.startswith("Liveness probe failed")
    assert "failed liveness probe, will be restarted" in " ".join(
        e.message for e in events_for(admin, namespace, "liveness") if e.reason == "Killing")
    assert pod.status.containerStatuses[0].lastState.terminated is not None


def test_readiness_drives_the_ready_condition(admin, node, namespace):
    probe = {"httpGet": {"path": "/", "port": "web"}, "periodSeconds": 1}
    serve = ["sh", "-c", "sleep 3; mkdir -p /www; echo ok > /www/index.html; httpd -f -p 8080 -h /www"]
    admin.create(make_pod(node, namespace, "readiness", [container(
        command=serve, ports=[{"name": "web", "containerPort": 8080}], readinessProbe=probe)]))
    pod = wait_pod(admin, namespace, "readiness", lambda p: p.status.phase == "Running" and state(p).running,
                   what="Running")
    assert {c.type: c.status for c in pod.status.conditions}["Ready"] == "False"
    assert not pod.status.containerStatuses[0].ready
    pod = wait_pod(admin, namespace, "readiness", lambda p: p.status.containerStatuses[0].ready, timeout=30,
                   what="ready")
    assert {c.type: c.status for c in pod.status.conditions}["Ready"] == "True"


def test_lifecycle_hooks_and_graceful_termination(admin, node, namespace):
    hooks = {"postStart": {"exec": {"command": ["sh", "-c", "echo started > /shared/post-start"]}},
             "preStop": {"exec": {"command": ["sh", "-c", "echo stopping > /shared/pre-stop"]}}}
    stubborn = ["sh", "-c", "trap '' TERM; while true; do sleep 1; done"]  # ignores SIGTERM: SIGKILL ends it
    pod = make_pod(node, namespace, "hooks", [container(command=stubborn, lifecycle=hooks,
                                                        volumeMounts=[{"name": "shared", "mountPath": "/shared"}])],
                   volumes=[{"name": "shared", "hostPath": {"path": f"/tmp/pynode-hooks-{namespace}",
                                                            "type": "DirectoryOrCreate"}}],
                   terminationGracePeriodSeconds=3)
    admin.create(pod)
    wait_pod(admin, namespace, "hooks", lambda p: p.status.phase == "Running", what="Running")
    from pathlib import Path
    shared = Path(f"/tmp/pynode-hooks-{namespace}")
    assert (shared / "post-start").read_text() == "started\n"
    started = time.monotonic()
    admin.delete(Pod, "hooks", namespace=namespace)
    wait_gone(admin, namespace, "hooks")
    elapsed = time.monotonic() - started
    assert (shared / "pre-stop").read_text() == "stopping\n"
    assert 2.5 <= elapsed < 15, f"the grace period of 3s was not honoured ({elapsed:.1f}s)"
    import shutil
    shutil.rmtree(shared, ignore_errors=True)


def test_security_context_and_fallback_termination_message(admin, node, namespace):
    admin.create(make_pod(node, namespace, "ids", [container(
        command=["sh", "-c", "id -u > /dev/termination-log; id -g >> /dev/termination-log"],
        securityContext={"runAsUser": 1234, "runAsGroup": 2345})], restartPolicy="Never"))
    admin.create(make_pod(node, namespace, "rootless", [container(securityContext={"runAsNonRoot": True})]))
    admin.create(make_pod(node, namespace, "fallback", [container(
        command=["sh", "-c", "echo last words; exit 2"], terminationMessagePolicy="FallbackToLogsOnError")],
        restartPolicy="Never"))
    ids = wait_pod(admin, namespace, "ids", lambda p: p.status.phase == "Succeeded", what="Succeeded")
    assert state(ids).terminated.message.split() == ["1234", "2345"]
    rootless = wait_pod(admin, namespace, "rootless", lambda p: state(p) and state(p).waiting
                        and state(p).waiting.reason == "CreateContainerConfigError", what="the runAsNonRoot check")
    assert "runAsNonRoot" in state(rootless).waiting.message
    fallback = wait_pod(admin, namespace, "fallback", lambda p: p.status.phase == "Failed", what="Failed")
    assert state(fallback).terminated.message.strip() == "last words"


def test_resources_become_cgroup_limits(admin, node, namespace):
    resources = {"requests": {"cpu": "250m", "memory": "32Mi"}, "limits": {"cpu": "500m", "memory": "64Mi"}}
    script = ("cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/cpu/cpu.cfs_quota_us "
              "/sys/fs/cgroup/cpu/cpu.shares > /dev/termination-log")
    admin.create(make_pod(node, namespace, "limits", [container(command=["sh", "-c", script], resources=resources)],
                          restartPolicy="Never"))
    pod = wait_pod(admin, namespace, "limits", lambda p: p.status.phase == "Succeeded", what="Succeeded")
    assert state(pod).terminated.message.split() == [str(64 << 20), "50000", "256"]
    assert pod.status.qosClass == "Burstable"


def test_static_pods_run_from_manifests_with_mirror_pods(admin, node, cluster):
    from localcluster import agents, procs

    manifests = agents.kubelet_dir(node) / "manifests"
    (manifests / "broken.yaml").write_text("kind: Pod\napiVersion: v1\nspec: [\n")
    (manifests / "static-web.yaml").write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: static-web, namespace: default}\n"
        "spec:\n  containers:\n  - {name: web, image: " + BUSYBOX + ", command: [sleep, '3600']}\n")
    name = f"static-web-{node.name}"
    try:
        pod = wait_pod(admin, "default", name, lambda p: p.status and p.status.phase == "Running",
                       timeout=60, what="the mirror pod Running")
        annotations = pod.metadata.annotations
        assert annotations["kubernetes.io/config.source"] == "file"
        assert annotations["kubernetes.io/config.mirror"] == annotations["kubernetes.io/config.hash"]
        assert pod.metadata.ownerReferences[0].kind == "Node" and pod.spec.nodeName == node.name
        first_uid = pod.metadata.uid
        admin.delete(Pod, name, namespace="default", grace_period=0)
        recreated = wait_pod(admin, "default", name, lambda p: p.metadata.uid != first_uid, timeout=60,
                             what="the mirror pod to be recreated")
        assert recreated.metadata.annotations["kubernetes.io/config.mirror"]
        log = procs.log_path(cluster, f"pykubelet-{node.name}").read_text()
        assert "Skipping static pod manifest" in log and "broken.yaml" in log
    finally:
        (manifests / "static-web.yaml").unlink(missing_ok=True)
        (manifests / "broken.yaml").unlink(missing_ok=True)
    wait_gone(admin, "default", name, timeout=60, what="the mirror pod to go with its manifest")


def test_running_pods_survive_a_pykubelet_restart(admin, node, namespace, cluster):
    from localcluster import agents, procs

    admin.create(make_pod(node, namespace, "survivor", [container()]))
    before = wait_pod(admin, namespace, "survivor", lambda p: p.status.phase == "Running"
                      and p.status.containerStatuses[0].ready, what="Running")
    name = f"pykubelet-{node.name}"
    procs.stop(cluster, name)
    agents.start(node, "pykubelet", *agents.kubelet_flags(node))
    agents.wait_node_ready(node)
    time.sleep(5)  # a few relists and syncs of the new pykubelet
    after = admin.get(Pod, "survivor", namespace=namespace)
    assert after.status.containerStatuses[0].containerID == before.status.containerStatuses[0].containerID
    assert after.status.containerStatuses[0].restartCount == 0
    assert after.status.phase == "Running"


def test_sandbox_hostname_dns_and_log_directory(admin, node, namespace, cluster):
    from pathlib import Path

    script = "hostname > /dev/termination-log; cat /etc/resolv.conf >> /dev/termination-log; echo logged"
    admin.create(make_pod(node, namespace, "sandboxed", [container(command=["sh", "-c", script])],
                          restartPolicy="Never", hostname="box", subdomain="sub"))
    pod = wait_pod(admin, namespace, "sandboxed", lambda p: p.status.phase == "Succeeded", what="Succeeded")
    lines = state(pod).terminated.message.splitlines()
    assert lines[0] == "box"
    resolv = "\n".join(lines[1:])
    assert f"nameserver {cluster.dns_service_ip}" in resolv
    assert f"search {namespace}.svc.cluster.local svc.cluster.local cluster.local" in resolv
    assert "options ndots:5" in resolv
    log = Path("/var/log/pods") / f"{namespace}_sandboxed_{pod.metadata.uid}" / "main" / "0.log"
    assert log.read_text().rstrip().endswith("stdout F logged")


def test_containers_get_the_kubelet_managed_etc_hosts_with_host_aliases(admin, node, namespace):
    script = "cat /etc/hosts > /dev/termination-log"
    aliases = [{"ip": "123.45.67.89", "hostnames": ["foo", "bar"]}]
    admin.create(make_pod(node, namespace, "hosts", [container(command=["sh", "-c", script])],
                          restartPolicy="Never", hostname="box", subdomain="sub", hostAliases=aliases))
    admin.create(make_pod(node, namespace, "hosts-hostnet", [container(command=["sh", "-c", script])],
                          restartPolicy="Never", hostNetwork=True, hostAliases=aliases))
    pod = wait_pod(admin, namespace, "hosts", lambda p: p.status.phase == "Succeeded", what="Succeeded")
    hosts = state(pod).terminated.message
    assert hosts.startswith("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n")
    assert f"{pod.status.podIP}\tbox.sub.{namespace}.svc.cluster.local\tbox\n" in hosts
    assert hosts.endswith("\n# Entries added by HostAliases.\n123.45.67.89\tfoo\tbar\n")
    hostnet = wait_pod(admin, namespace, "hosts-hostnet", lambda p: p.status.phase == "Succeeded", what="Succeeded")
    text = state(hostnet).terminated.message
    assert text == ("# Kubernetes-managed hosts file (host network).\n" + Path("/etc/hosts").read_text()
                    + "\n# Entries added by HostAliases.\n123.45.67.89\tfoo\tbar\n")


def test_host_network_pods_use_the_node_address(admin, node, namespace):
    admin.create(make_pod(node, namespace, "hostnet", [container()], hostNetwork=True))
    pod = wait_pod(admin, namespace, "hostnet", lambda p: p.status.phase == "Running", what="Running")
    assert pod.status.podIP == node.ip


def test_sidecar_init_containers_keep_running(admin, node, namespace):
    sidecar = container(name="sidecar", restartPolicy="Always")
    admin.create(make_pod(node, namespace, "sidecar", [container()], initContainers=[sidecar]))
    pod = wait_pod(admin, namespace, "sidecar", lambda p: p.status.phase == "Running"
                   and state(p) and state(p).running, what="Running")
    assert pod.status.initContainerStatuses[0].state.running is not None
    assert {c.type: c.status for c in pod.status.conditions}["Initialized"] == "True"


def test_a_probe_aimed_at_a_closed_port_keeps_the_pod_unready(admin, node, namespace):
    probe = {"tcpSocket": {"port": 9999}, "periodSeconds": 1, "failureThreshold": 1}
    admin.create(make_pod(node, namespace, "closedport", [container(readinessProbe=probe)]))
    wait_pod(admin, namespace, "closedport", lambda p: p.status.phase == "Running", what="Running")
    deadline = time.monotonic() + 30
    unhealthy = []
    while time.monotonic() < deadline and not unhealthy:
        unhealthy = [e for e in events_for(admin, namespace, "closedport") if e.reason == "Unhealthy"]
        time.sleep(0.5)
    assert unhealthy and "Readiness probe failed" in unhealthy[0].message
    assert "connection refused" in unhealthy[0].message
    pod = admin.get(Pod, "closedport", namespace=namespace)
    assert not pod.status.containerStatuses[0].ready
    assert {c.type: c.status for c in pod.status.conditions}["Ready"] == "False"


def test_host_port_reaches_the_pod(admin, node, namespace):
    import subprocess
    import sys

    serve = ["sh", "-c", "mkdir -p /www; echo via-host-port > /www/index.html; httpd -f -p 8080 -h /www"]
    admin.create(make_pod(node, namespace, "hostport", [container(
        command=serve, ports=[{"containerPort": 8080, "hostPort": 18080}],
        readinessProbe={"tcpSocket": {"port": 8080}, "periodSeconds": 1})]))
    wait_pod(admin, namespace, "hostport", lambda p: p.status.containerStatuses
             and p.status.containerStatuses[0].ready, what="ready")
    fetch = ("import urllib.request; print(urllib.request.urlopen("
             f"'http://{node.ip}:18080/', timeout=5).read().decode().strip())")
    # From inside the node's namespace, where the CNI portmap rules live.
    result = subprocess.run(["nsenter", f"--net=/run/netns/{node.netns}", sys.executable, "-c", fetch],
                            capture_output=True, text=True, timeout=30)
    assert result.stdout.strip() == "via-host-port", result.stderr


def test_subpath_expr_expands_from_the_env_and_a_bad_one_waits_with_upstreams_reason(admin, node, namespace):
    env = [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]
    mounts = [{"name": "work", "mountPath": "/logs", "subPathExpr": "logs/$(POD_NAME)"},
              {"name": "work", "mountPath": "/all"}]
    script = "touch /logs/written && ls /all/logs > /dev/termination-log && test -f /all/logs/subpaths/written"
    admin.create(make_pod(node, namespace, "subpaths", [container(command=["sh", "-c", script], env=env,
                                                                  volumeMounts=mounts)],
                          restartPolicy="Never", volumes=[{"name": "work", "emptyDir": {}}]))
    done = wait_pod(admin, namespace, "subpaths", lambda p: p.status.phase in ("Succeeded", "Failed"), what="done")
    assert done.status.phase == "Succeeded" and state(done).terminated.message.split() == ["subpaths"]

    bad = [{"name": "UP", "value": ".."}]
    admin.create(make_pod(node, namespace, "badsubpath", [container(env=bad, volumeMounts=[
        {"name": "work", "mountPath": "/x", "subPathExpr": "$(UP)"}])], volumes=[{"name": "work", "emptyDir": {}}]))
    pod = wait_pod(admin, namespace, "badsubpath", lambda p: state(p) is not None and state(p).waiting is not None
                   and state(p).waiting.reason == "CreateContainerConfigError", what="CreateContainerConfigError")
    assert state(pod).waiting.message == "unable to provision SubPath `..`: must not contain '..'"


def test_a_pod_asking_for_more_than_the_node_has_is_refused_with_upstreams_reason(admin, node, namespace):
    greedy = container(resources={"requests": {"cpu": "1000"}})
    admin.create(make_pod(node, namespace, "greedy", [greedy], nodeName=node.name))  # past the scheduler
    pod = wait_pod(admin, namespace, "greedy", lambda p: p.status.phase == "Failed", what="refused")
    assert pod.status.reason == "OutOfcpu"
    assert pod.status.message.startswith("Node didn't have enough resource: cpu, requested: 1000000, used: ")
    eventually(lambda: any(e.reason == "OutOfcpu" for e in admin.list(
        Event, namespace=namespace, fields={"involvedObject.name": "greedy"})), 20, "an OutOfcpu Event")
    admin.delete(Pod, "greedy", namespace=namespace)


def test_pod_pids_limit_stops_a_fork_bomb_at_the_pods_cgroup_which_goes_with_the_pod(admin, node, namespace):
    # The local nodes run with podPidsLimit 1024: the pod's processes together stop there, the node's do not.
    from pykubelet.pods.podcgroups import mounts
    from pykubelet.stats.cgroups import cgroup_dir

    spawn = "for i in $(seq 1200); do sleep 600 & done 2>/dev/null; wait"
    admin.create(make_pod(node, namespace, "spawner", [container(command=["sh", "-c", spawn])]))
    pod = wait_pod(admin, namespace, "spawner", lambda p: p.status.phase == "Running", what="Running")
    v1, unified = mounts()
    hierarchy = next(((m, r) for m, r, controllers in v1 if "pids" in controllers), unified)
    cgroup = cgroup_dir(hierarchy, f"{node.cgroup_path.rstrip('/')}/kubepods/besteffort/pod{pod.metadata.uid}")
    assert (cgroup / "pids.max").read_text().strip() == "1024"
    # The kernel refuses the forks past the limit (busybox sh then gives up, and the container restarts).
    def at_the_limit() -> bool:
        if (cgroup / "pids.peak").exists():  # Linux 6.1 and later: the most the pod ever had
            return int((cgroup / "pids.peak").read_text()) == 1024
        return int((cgroup / "pids.current").read_text()) == 1024 \
            or int((cgroup / "pids.events").read_text().split()[1]) > 0

    eventually(at_the_limit, 30, "the pod's processes stopped at its pids limit (1200 asked for)")
    admin.delete(Pod, "spawner", namespace=namespace, grace_period=1)
    wait_gone(admin, namespace, "spawner", timeout=60)
    eventually(lambda: not cgroup.exists(), 20, "the pod's cgroup removed with the pod")
