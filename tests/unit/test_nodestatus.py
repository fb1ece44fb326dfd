"""Node status computation: capacity, allocatable, conditions, runtime readiness, images."""

from __future__ import annotations

from cri import api
from pykubelet.node import nodestatus
from pykubelet.config.kubeletconfig import parse_quantity

INFO = nodestatus.MachineInfo(
    cpus=4, memory=8 << 30, ephemeral_storage=100 << 30, hugepages={"hugepages-2Mi": 0, "hugepages-1Gi": 1 << 30},
    machine_id="m", system_uuid="u", boot_id="b", kernel_version="6.1", os_image="Debian", architecture="amd64",
)


def test_capacity_and_allocatable():
    cap = nodestatus.capacity(INFO, 110)
    assert cap == {"cpu": "4", "memory": "8388608Ki", "ephemeral-storage": "104857600Ki", "pods": "110",
                   "hugepages-2Mi": "0", "hugepages-1Gi": "1Gi"}
    alloc = nodestatus.allocatable(INFO, 110, kube_reserved={"cpu": "500m", "memory": "1Gi"},
                                   system_reserved={"cpu": "250m"},
                                   eviction_hard={"memory.available": "100Mi", "nodefs.available": "10%"},
                                   parse_quantity=parse_quantity)
    assert alloc["cpu"] == "3250m"
    # 8Gi - 1Gi reserved - 1Gi of huge pages - 100Mi eviction threshold
    assert alloc["memory"] == f"{(6 << 20) - 100 * 1024}Ki"
    assert alloc["ephemeral-storage"] == str(int((100 << 30) * 0.9))
    assert alloc["pods"] == "110"


def test_conditions_keep_transition_times_until_status_changes():
    first = nodestatus.conditions([], "T1", ready_problems=[], pressure=nodestatus.Pressure())
    assert [(c["type"], c["status"], c["reason"]) for c in first] == [
        ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
        ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
        ("PIDPressure", "False", "KubeletHasSufficientPID"),
        ("Ready", "True", "KubeletReady"),
    ]
    second = nodestatus.conditions(first, "T2", ready_problems=["container runtime is down"],
                                   pressure=nodestatus.Pressure(disk=True))
    by_type = {c["type"]: c for c in second}
    assert by_type["MemoryPressure"]["lastTransitionTime"] == "T1"
    assert by_type["MemoryPressure"]["lastHeartbeatTime"] == "T2"
    assert by_type["DiskPressure"] == {**by_type["DiskPressure"], "status": "True", "lastTransitionTime": "T2",
                                       "reason": "KubeletHasDiskPressure"}
    assert by_type["Ready"]["status"] == "False" and by_type["Ready"]["reason"] == "KubeletNotReady"
    assert by_type["Ready"]["message"] == "container runtime is down"


def test_runtime_problems_name_the_failing_condition():
    ok = api.StatusResponse(status=api.RuntimeStatus(conditions=[
        api.RuntimeCondition(type="RuntimeReady", status=True),
        api.RuntimeCondition(type="NetworkReady", status=True)]))
    assert nodestatus.runtime_problems(ok) == []
    no_cni = api.StatusResponse(status=api.RuntimeStatus(conditions=[
        api.RuntimeCondition(type="RuntimeReady", status=True),
        api.RuntimeCondition(type="NetworkReady", status=False, reason="NetworkPluginNotReady",
                             message="cni plugin not initialized")]))
    assert nodestatus.runtime_problems(no_cni) == [
        "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady "
        "message:cni plugin not initialized"]
    assert nodestatus.runtime_problems(None) == ["container runtime is down"]


def test_images_are_the_largest_with_digests_and_tags():
    response = api.ListImagesResponse(images=[
        api.Image(id=f"sha256:{i}", repo_tags=[f"img:{i}"], repo_digests=[f"img@sha256:{i}"], size=i)
        for i in range(60)] + [api.Image(id="sha256:untagged", size=10**9)])
    listed = nodestatus.images(response)
    assert len(listed) == 49  # the untagged image takes one of the 50 places but has no names to show
    assert listed[0] == {"names": ["img@sha256:59", "img:59"], "sizeBytes": 59}


def test_labels_include_the_well_known_ones_and_the_flags():
    labels = nodestatus.labels("n1", "amd64", {"role": "edge"})
    assert labels["kubernetes.io/hostname"] == "n1"
    assert labels["kubernetes.io/os"] == "linux" and labels["kubernetes.io/arch"] == "amd64"
    assert labels["role"] == "edge"


def test_status_line_for_systemd_names_the_runtime_endpoint(monkeypatch):
    from types import SimpleNamespace

    from pykubelet.node import nodemanager as node_module

    sent = []
    monkeypatch.setattr(node_module.systemd, "notify", sent.append)
    manager = node_module.NodeManager.__new__(node_module.NodeManager)
    manager.name, manager._status_line = "n1", ""
    manager.config = SimpleNamespace(container_runtime_endpoint="unix:///run/containerd/containerd.sock",
                                     node_status_update_frequency=10.0)
    down = {"type": "Ready", "status": "False", "reason": "KubeletNotReady", "message": "container runtime is down"}
    manager._report_status_line(down)
    manager._report_status_line(down)  # unchanged: not sent again
    manager._report_status_line({"type": "Ready", "status": "True", "reason": "KubeletReady", "message": ""})
    assert sent == ["STATUS=Node n1 is not Ready: container runtime is down (nothing answers on "
                    "unix:///run/containerd/containerd.sock; retrying every 10s)", "STATUS=Node n1 is Ready"]
