"""Volumes pykubelet mounts itself, seen from inside the containers and from the API.

configMap, secret, downwardAPI, projected, emptyDir (disk and tmpfs), hostPath and PersistentVolumeClaims:
files, contents, modes and owners; updates that reach running pods; optional and missing objects; subPath
refusals; and teardown leaving nothing under the pod's directory.
"""

from __future__ import annotations

import base64
import json
import subprocess
import uuid

import pytest
from lightkube.resources.core_v1 import (ConfigMap, Event, PersistentVolume, PersistentVolumeClaim, Pod,
                                         Secret)

from localcluster.agents import kubelet_dir
from tests.integration.pods import container, make_pod, wait_pod
from tests.integration.polling import eventually

pytestmark = pytest.mark.integration

UPDATE_BOUND = 30  # seconds; a watched change wakes the pod at once, the resync period (60 s) is the backstop


def kubectl(cluster, *args, timeout=60):
    return subprocess.run([str(cluster.bin / "kubectl"), f"--kubeconfig={cluster.admin_kubeconfig}", *args],
                          capture_output=True, text=True, timeout=timeout)


def run_in(cluster, namespace, pod, script):
    out = kubectl(cluster, "-n", namespace, "exec", pod, "--", "sh", "-c", script)
    assert out.returncode == 0, out.stderr
    return out.stdout


def running(admin, namespace, name):
    return wait_pod(admin, namespace, name, lambda p: p.status.phase == "Running"
                    and all(c.ready for c in p.status.containerStatuses or [None] if c), what="Running")


def mount_events(admin, namespace, name):
    """FailedMount messages of the pod, but for its service-account token volume: its TokenRequest can be
    refused for a moment after the pod is bound ("node requested token bound to a pod scheduled on a different
    node", while the apiserver's view of the pod lags), which upstream's kubelet also retries."""
    return [e.message for e in admin.list(Event, namespace=namespace)
            if e.involvedObject.name == name and e.reason == "FailedMount"
            and 'for volume "kube-api-access-' not in e.message]


def test_object_and_downward_api_volumes_hold_the_files_with_modes_and_group(cluster, admin, node, namespace):
    admin.create(ConfigMap.from_dict({"metadata": {"name": "conf", "namespace": namespace},
                                      "data": {"app.ini": "color=blue\n", "other": "x"},
                                      "binaryData": {"blob": "AP8="}}))
    admin.create(Secret.from_dict({"metadata": {"name": "creds", "namespace": namespace},
                                   "stringData": {"user": "admin", "password": "s3cret"}}))
    volumes = [
        {"name": "conf", "configMap": {"name": "conf", "items": [{"key": "app.ini", "path": "etc/app.ini"},
                                                                 {"key": "blob", "path": "blob", "mode": 0o600}]}},
        {"name": "creds", "secret": {"secretName": "creds", "defaultMode": 0o440}},
        {"name": "info", "downwardAPI": {"items": [
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.annotations"}},
            {"path": "mem", "resourceFieldRef": {"containerName": "main", "resource": "limits.memory",
                                                 "divisor": "1Mi"}}]}},
        {"name": "all", "projected": {"sources": [
            {"configMap": {"name": "conf", "items": [{"key": "other", "path": "other"}]}},
            {"secret": {"name": "creds", "items": [{"key": "user", "path": "user"}]}},
            {"downwardAPI": {"items": [{"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}},
            {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600, "audience": "vault"}}]}},
        {"name": "scratch", "emptyDir": {}},
        {"name": "ram", "emptyDir": {"medium": "Memory", "sizeLimit": "8Mi"}},
    ]
    mounts = [{"name": v["name"], "mountPath": f"/v/{v['name']}"} for v in volumes]
    pod = make_pod(node, namespace, "files", [container(volumeMounts=mounts, resources={
        "limits": {"memory": "64Mi"}})], volumes=volumes,
        securityContext={"fsGroup": 2345, "runAsUser": 1000})
    pod.metadata.annotations = {"app": "files", "tier": 'we"ird'}
    admin.create(pod)
    running(admin, namespace, "files")
    out = run_in(cluster, namespace, "files", "cd /v; "
                 "for f in conf/etc/app.ini conf/blob creds/user creds/password all/other all/user all/name "
                 "all/token; do echo \"$f $(stat -L -c '%a %g' $f)\"; done; "
                 "cat conf/etc/app.ini info/labels; echo; cat info/mem all/other all/user all/name; echo; "
                 "od -An -tx1 conf/blob; stat -c '%a' scratch; touch scratch/ok ram/ok; "
                 "grep -E ' /v/' /proc/mounts | cut -d' ' -f2,3,4")
    lines = out.splitlines()
    modes = dict(line.split(" ", 1) for line in lines[:8])
    assert modes == {"conf/etc/app.ini": "644 2345", "conf/blob": "640 2345", "creds/user": "440 2345",
                     "creds/password": "440 2345", "all/other": "644 2345", "all/user": "644 2345",
                     "all/name": "644 2345", "all/token": "640 2345"}
    assert lines[8:12] == ["color=blue", 'app="files"', 'tier="we\\"ird"', "64xadminfiles"]
    assert lines[12].split() == ["00", "ff"] and lines[13] == "2777"  # emptyDir 0777, setgid from fsGroup
    fs = {line.split()[0]: line.split()[1] for line in lines[14:]}
    assert {p for p, kind in fs.items() if kind == "tmpfs"} == {"/v/creds", "/v/info", "/v/all", "/v/ram"}
    assert set(fs) == {f"/v/{v['name']}" for v in volumes}
    assert "size=8192k" in next(line for line in lines if line.startswith("/v/ram "))
    token = run_in(cluster, namespace, "files", "cat /v/all/token; echo; stat -L -c %u /v/all/token").split()
    claims = json.loads(base64.urlsafe_b64decode(token[0].split(".")[1] + "=="))
    assert claims["aud"] == ["vault"] and claims["kubernetes.io"]["pod"]["name"] == "files"
    assert token[1] == "1000"  # the one user all containers run as owns it


def test_updates_reach_running_pods(cluster, admin, node, namespace):
    admin.create(ConfigMap.from_dict({"metadata": {"name": "live", "namespace": namespace},
                                      "data": {"key": "one"}}))
    admin.create(Secret.from_dict({"metadata": {"name": "live", "namespace": namespace},
                                   "stringData": {"key": "one"}}))
    volumes = [{"name": "cm", "configMap": {"name": "live"}}, {"name": "sec", "secret": {"secretName": "live"}},
               {"name": "info", "downwardAPI": {"items": [{"path": "labels",
                                                           "fieldRef": {"fieldPath": "metadata.labels"}}]}},
               {"name": "opt", "configMap": {"name": "later", "optional": True}}]
    mounts = [{"name": v["name"], "mountPath": f"/v/{v['name']}"} for v in volumes] + \
        [{"name": "cm", "mountPath": "/fixed", "subPath": "key"}]
    pod = make_pod(node, namespace, "live", [container(volumeMounts=mounts)], volumes=volumes)
    pod.metadata.labels = {"version": "1"}
    admin.create(pod)
    running(admin, namespace, "live")
    assert run_in(cluster, namespace, "live", "cat /v/cm/key /v/sec/key; ls /v/opt | wc -l") == "oneone0\n"

    admin.patch(ConfigMap, "live", {"data": {"key": "two", "added": "yes"}}, namespace=namespace)
    admin.patch(Secret, "live", {"stringData": {"key": "two"}}, namespace=namespace)
    admin.patch(Pod, "live", {"metadata": {"labels": {"version": "2"}}}, namespace=namespace)
    admin.create(ConfigMap.from_dict({"metadata": {"name": "later", "namespace": namespace},
                                      "data": {"late": "here"}}))
    eventually(lambda: run_in(cluster, namespace, "live", "cat /v/cm/key /v/cm/added /v/sec/key /v/info/labels "
                              "/v/opt/late 2>&1") == 'twoyestwoversion="2"here', timeout=UPDATE_BOUND,
               what="the new ConfigMap, Secret, labels and optional ConfigMap in the files")
    # a subPath into an AtomicWriter volume keeps what the container started with, as upstream
    assert run_in(cluster, namespace, "live", "cat /fixed") == "one"

    admin.delete(ConfigMap, "later", namespace=namespace)
    eventually(lambda: run_in(cluster, namespace, "live", "ls /v/opt | wc -l").strip() == "0",
               timeout=UPDATE_BOUND, what="a deleted optional ConfigMap to empty its volume")


def test_a_missing_object_holds_the_pod_with_failed_mount_until_it_appears(cluster, admin, node, namespace):
    volumes = [{"name": "cm", "configMap": {"name": "not-yet"}},
               {"name": "sec", "secret": {"secretName": "creds2", "items": [{"key": "absent", "path": "a"}]}}]
    admin.create(Secret.from_dict({"metadata": {"name": "creds2", "namespace": namespace},
                                   "stringData": {"present": "x"}}))
    mounts = [{"name": v["name"], "mountPath": f"/v/{v['name']}"} for v in volumes]
    admin.create(make_pod(node, namespace, "waits", [container(volumeMounts=mounts)], volumes=volumes))
    messages = eventually(lambda: sorted(set(mount_events(admin, namespace, "waits"))) or None, timeout=30,
                          what="FailedMount events")
    assert messages == ['MountVolume.SetUp failed for volume "cm" : configmaps "not-yet" not found',
                        'MountVolume.SetUp failed for volume "sec" : references non-existent secret key: absent']
    pod = admin.get(Pod, "waits", namespace=namespace)
    assert pod.status.phase == "Pending" and pod.status.containerStatuses[0].state.waiting.reason == \
        "ContainerCreating"
    admin.create(ConfigMap.from_dict({"metadata": {"name": "not-yet", "namespace": namespace},
                                      "data": {"k": "v"}}))
    admin.patch(Secret, "creds2", {"stringData": {"absent": "now"}}, namespace=namespace)
    running(admin, namespace, "waits")
    assert run_in(cluster, namespace, "waits", "cat /v/cm/k /v/sec/a") == "vnow"


def test_host_path_types_and_unsupported_volumes_are_failed_mounts(admin, node, namespace, tmp_path):
    volumes = [{"name": "wrong", "hostPath": {"path": str(tmp_path), "type": "File"}},
               {"name": "nfs", "nfs": {"server": "192.0.2.1", "path": "/"}},
               {"name": "ok", "hostPath": {"path": str(tmp_path / "made"), "type": "DirectoryOrCreate"}}]
    admin.create(make_pod(node, namespace, "badvols", [container()], volumes=volumes))
    messages = eventually(lambda: sorted(set(mount_events(admin, namespace, "badvols"))) if len(
        set(mount_events(admin, namespace, "badvols"))) >= 2 else None, timeout=30, what="FailedMount events")
    assert messages == [
        'MountVolume.SetUp failed for volume "nfs" : volume type \'nfs\' is not supported by pykubelet '
        '(no volume plugin matched)',
        f'MountVolume.SetUp failed for volume "wrong" : hostPath type check failed: {tmp_path} is not a file']
    assert (tmp_path / "made").is_dir()  # the good volume was set up all the same


def test_subpaths_that_leave_the_volume_through_a_symlink_are_refused(cluster, admin, node, namespace):
    init = container(name="plant", command=["sh", "-c", "ln -s / /data/escape && mkdir /data/inside"],
                     volumeMounts=[{"name": "data", "mountPath": "/data"}])
    good = container(name="good", volumeMounts=[{"name": "data", "mountPath": "/inside", "subPath": "inside"}])
    bad = container(name="bad", volumeMounts=[{"name": "data", "mountPath": "/escaped", "subPath": "escape/etc"}])
    admin.create(make_pod(node, namespace, "escape", [good, bad], initContainers=[init],
                          volumes=[{"name": "data", "emptyDir": {}}]))

    def bad_waiting(p):
        statuses = {c.name: c for c in p.status.containerStatuses or []}
        waiting = statuses.get("bad") and statuses["bad"].state.waiting
        return waiting is not None and waiting.reason == "CreateContainerConfigError" and \
            statuses["good"].state.running is not None
    pod = wait_pod(admin, namespace, "escape", bad_waiting, what="bad refused, good running")
    bad_state = {c.name: c for c in pod.status.containerStatuses}["bad"].state.waiting
    assert bad_state.message.startswith('failed to prepare subPath for volumeMount "data" of container "bad"')
    assert run_in(cluster, namespace, "escape", "ls -a /inside | wc -l").strip() == "2"  # . and ..: empty


def test_claims_bound_to_host_path_volumes_mount_and_unbound_ones_wait(cluster, admin, node, namespace, tmp_path):
    name = f"pv-{uuid.uuid4().hex[:6]}"
    (tmp_path / "pv").mkdir()
    admin.create(PersistentVolume.from_dict({"metadata": {"name": name}, "spec": {
        "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "manual",
        "hostPath": {"path": str(tmp_path / "pv")},
        "claimRef": {"namespace": namespace, "name": "claim"}}}))
    try:
        admin.create(PersistentVolumeClaim.from_dict({"metadata": {"name": "claim", "namespace": namespace}, "spec": {
            "accessModes": ["ReadWriteOnce"], "storageClassName": "manual", "volumeName": name,
            "resources": {"requests": {"storage": "1Gi"}}}}))
        writer = container(command=["sh", "-c", "echo kept > /data/out; sleep 3600"],
                           volumeMounts=[{"name": "data", "mountPath": "/data"}])
        admin.create(make_pod(node, namespace, "claimer", [writer],
                              volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "claim"}}]))
        running(admin, namespace, "claimer")
        eventually(lambda: (tmp_path / "pv" / "out").exists(), what="the pod's file on the host")
        assert (tmp_path / "pv" / "out").read_text() == "kept\n"

        admin.create(PersistentVolumeClaim.from_dict({"metadata": {"name": "unbound", "namespace": namespace},
                                                      "spec": {"accessModes": ["ReadWriteOnce"],
                                                               "storageClassName": "none",
                                                               "resources": {"requests": {"storage": "1Gi"}}}}))
        pod = make_pod(node, namespace, "unbound", [container()],
                       volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "unbound"}}])
        pod.spec.nodeName, pod.spec.nodeSelector = node.name, None  # the scheduler would not place it
        admin.create(pod)
        # The node authorizer may learn of the pod's claim a moment after the pod is bound: a first attempt can be
        # refused ("no relationship found between node … and this object"); the next, 10 s on, reads the claim.
        unbound = f'MountVolume.SetUp failed for volume "data" : error processing PVC {namespace}/unbound: ' \
                  f'PVC is not bound'
        eventually(lambda: unbound in mount_events(admin, namespace, "unbound"), timeout=30,
                   what="FailedMount for the unbound claim")
    finally:
        admin.delete(Pod, "claimer", namespace=namespace, grace_period=0)
        admin.delete(PersistentVolume, name)


def test_teardown_leaves_no_directory_and_no_mount(admin, node, namespace):
    volumes = [{"name": "ram", "emptyDir": {"medium": "Memory"}}, {"name": "sec", "projected": {"sources": [
        {"serviceAccountToken": {"path": "t"}}]}}, {"name": "disk", "emptyDir": {}}]
    mounts = [{"name": "ram", "mountPath": "/ram"}, {"name": "disk", "mountPath": "/sub", "subPath": "a/b"},
              {"name": "sec", "mountPath": "/sec"}]
    admin.create(make_pod(node, namespace, "gone", [container(volumeMounts=mounts)], volumes=volumes))
    uid = running(admin, namespace, "gone").metadata.uid
    directory = kubelet_dir(node) / "pods" / uid

    def mounted():
        return [line.split()[1] for line in open("/proc/self/mounts") if str(directory) in line.split()[1]]
    assert len(mounted()) == 4  # the tmpfs of ram, sec and the default token volume, and the subPath bind
    admin.delete(Pod, "gone", namespace=namespace, grace_period=0)
    eventually(lambda: not directory.exists(), timeout=30, what="the pod's directory to go")
    assert mounted() == []


def test_an_empty_dir_over_its_size_limit_gets_the_pod_evicted(admin, node, namespace):
    writer = container(command=["sh", "-c", "dd if=/dev/zero of=/cache/fill bs=1M count=3; sleep 3600"],
                       volumeMounts=[{"name": "cache", "mountPath": "/cache"}])
    admin.create(make_pod(node, namespace, "hog", [writer], volumes=[{"name": "cache",
                                                                      "emptyDir": {"sizeLimit": "1Mi"}}]))
    # volumeStatsAggPeriod is 15 s on the local nodes, the eviction manager looks every 10 s
    pod = wait_pod(admin, namespace, "hog", lambda p: p.status.phase == "Failed", timeout=90, what="evicted")
    assert (pod.status.reason, pod.status.message) == (
        "Evicted", 'Usage of EmptyDir volume "cache" exceeds the limit "1Mi". ')
    assert any(e.reason == "Evicted" and e.type == "Warning" for e in admin.list(Event, namespace=namespace)
               if e.involvedObject.name == "hog")
    assert pod.status.containerStatuses[0].state.terminated is not None


def test_mount_propagation_reaches_host_to_container_mounts_only(cluster, admin, node, namespace):
    master = container(name="master", securityContext={"privileged": True},
                       volumeMounts=[{"name": "shared", "mountPath": "/shared",
                                      "mountPropagation": "Bidirectional"}])
    follower = container(name="follower", volumeMounts=[{"name": "shared", "mountPath": "/shared",
                                                         "mountPropagation": "HostToContainer"}])
    private = container(name="private", volumeMounts=[{"name": "shared", "mountPath": "/shared"}])
    admin.create(make_pod(node, namespace, "propagation", [master, follower, private],
                          volumes=[{"name": "shared", "emptyDir": {}}]))
    running(admin, namespace, "propagation")
    mounted = kubectl(cluster, "-n", namespace, "exec", "propagation", "-c", "master", "--", "sh", "-c",
                      "mkdir -p /shared/sub && mount -t tmpfs tmpfs /shared/sub && echo seen > /shared/sub/f")
    assert mounted.returncode == 0, mounted.stderr

    def read(name):
        out = kubectl(cluster, "-n", namespace, "exec", "propagation", "-c", name, "--", "cat", "/shared/sub/f")
        return out.stdout.strip() if out.returncode == 0 else None
    assert eventually(lambda: read("follower"), what="the follower to see the master's mount") == "seen"
    assert read("private") is None


def test_a_local_volumes_claim_has_stats_and_metrics(cluster, admin, node, namespace, tmp_path):
    name = f"local-{uuid.uuid4().hex[:6]}"
    admin.create(PersistentVolume.from_dict({"metadata": {"name": name}, "spec": {
        "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "local",
        "local": {"path": str(tmp_path)}, "claimRef": {"namespace": namespace, "name": "local-claim"},
        "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": [node.name]}]}]}}}}))
    try:
        admin.create(PersistentVolumeClaim.from_dict({
            "metadata": {"name": "local-claim", "namespace": namespace},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "local", "volumeName": name,
                     "resources": {"requests": {"storage": "1Gi"}}}}))
        admin.create(make_pod(node, namespace, "local", [container(volumeMounts=[{"name": "d", "mountPath": "/d"}])],
                              volumes=[{"name": "d", "persistentVolumeClaim": {"claimName": "local-claim"}}],
                              securityContext={"fsGroup": 3456}))
        running(admin, namespace, "local")
        assert tmp_path.stat().st_gid == 3456  # a local volume's ownership follows fsGroup

        def claim_stats():
            summary = json.loads(kubectl(cluster, "get", "--raw",
                                         f"/api/v1/nodes/{node.name}/proxy/stats/summary").stdout)
            pod = next(p for p in summary["pods"] if p["podRef"]["name"] == "local")
            return next((v for v in pod.get("volume") or [] if v.get("pvcRef")), None)
        stats = eventually(claim_stats, what="the claim's volume stats")
        assert stats["pvcRef"] == {"name": "local-claim", "namespace": namespace} and stats["capacityBytes"] > 0
        metrics = kubectl(cluster, "get", "--raw", f"/api/v1/nodes/{node.name}/proxy/metrics").stdout
        assert f'kubelet_volume_stats_capacity_bytes{{namespace="{namespace}",persistentvolumeclaim="local-claim"}}' \
            in metrics
    finally:
        admin.delete(Pod, "local", namespace=namespace, grace_period=0)
        admin.delete(PersistentVolume, name)
