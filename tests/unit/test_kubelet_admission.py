"""Admission: a pod that asks for more than the node has left, for another OS, or for AppArmor where there is none
is refused, with upstream's words."""

from __future__ import annotations

from pykubelet.pods import admission
from pykubelet.pods.admission import fit, requests

ALLOCATABLE = {"cpu": "2", "memory": "4Gi", "ephemeral-storage": "10Gi", "pods": "3", "example.com/gpu": "1"}


def pod(uid="p", *, cpu=None, memory=None, init_cpu=None, gpu=None, overhead=None):
    req = {k: v for k, v in (("cpu", cpu), ("memory", memory), ("example.com/gpu", gpu)) if v}
    spec = {"containers": [{"name": "c", "resources": {"requests": req}}]}
    if init_cpu:
        spec["initContainers"] = [{"name": "i", "resources": {"requests": {"cpu": init_cpu}}}]
    if overhead:
        spec["overhead"] = overhead
    return {"metadata": {"uid": uid}, "spec": spec}


def test_a_pod_that_fits_is_admitted_and_requests_count_overhead_and_init_peaks():
    assert fit(pod(cpu="500m", memory="1Gi"), [pod("a", cpu="1")], ALLOCATABLE) is None
    assert requests(pod(cpu="100m", init_cpu="1500m", overhead={"cpu": "250m"}))["cpu"] == 1.75


def test_the_first_shortfall_refuses_it_with_upstreams_reason_and_message():
    assert fit(pod(cpu="1000"), [], ALLOCATABLE) == (
        "OutOfcpu", "Node didn't have enough resource: cpu, requested: 1000000, used: 0, capacity: 2000")
    assert fit(pod(memory="3Gi"), [pod("a", memory="2Gi")], ALLOCATABLE) == (
        "OutOfmemory", f"Node didn't have enough resource: memory, requested: {3 * 2**30}, used: {2 * 2**30}, "
                       f"capacity: {4 * 2**30}")
    assert fit(pod(gpu="1"), [pod("a", gpu="1")], ALLOCATABLE)[0] == "OutOfexample.com/gpu"
    assert fit(pod(), [pod("a"), pod("b"), pod("c")], ALLOCATABLE) == (
        "OutOfpods", "Node didn't have enough resource: pods, requested: 1, used: 3, capacity: 3")


def test_a_resource_the_node_does_not_list_or_the_pod_does_not_request_is_not_checked():
    assert fit(pod(cpu="100m"), [pod("a", cpu="2")], ALLOCATABLE) == (
        "OutOfcpu", "Node didn't have enough resource: cpu, requested: 100, used: 2000, capacity: 2000")
    assert fit(pod(memory="1Gi"), [pod("a", cpu="2")], ALLOCATABLE) is None
    assert fit(pod(cpu="100m"), [], {"pods": "110", "memory": "1Gi"}) is None


def with_ports(uid, *ports, sidecar_ports=(), init_ports=()):
    spec = {"containers": [{"name": "c", "ports": list(ports)}],
            "initContainers": [{"name": "s", "restartPolicy": "Always", "ports": list(sidecar_ports)},
                               {"name": "i", "ports": list(init_ports)}]}
    return {"metadata": {"uid": uid}, "spec": spec}


def test_a_host_port_another_pod_holds_refuses_it_as_the_nodeports_filter():
    refused = ("NodePorts", "Predicate NodePorts failed: node(s) didn't have free ports for the requested pod ports")
    held = with_ports("a", {"containerPort": 80, "hostPort": 21017})
    assert fit(with_ports("p", {"containerPort": 8080, "hostPort": 21017}), [held], ALLOCATABLE) == refused
    # another protocol, or a port only in the pod itself, is free
    assert fit(with_ports("p", {"containerPort": 80, "hostPort": 21017, "protocol": "UDP"}), [held], ALLOCATABLE) \
        is None
    assert fit(with_ports("p", {"containerPort": 80}), [held], ALLOCATABLE) is None
    # 0.0.0.0 (the default) takes the port on every address; two distinct addresses share it
    on_one = with_ports("b", {"containerPort": 80, "hostPort": 9000, "hostIP": "10.0.0.2"})
    assert fit(with_ports("p", {"containerPort": 80, "hostPort": 9000}), [on_one], ALLOCATABLE) == refused
    assert fit(with_ports("p", {"containerPort": 80, "hostPort": 9000, "hostIP": "10.0.0.3"}), [on_one],
               ALLOCATABLE) is None
    assert fit(with_ports("p", {"containerPort": 80, "hostPort": 9000, "hostIP": "10.0.0.2"}), [on_one],
               ALLOCATABLE) == refused
    # a sidecar's host port is held for the pod's life; an init container's that ends is not
    sidecar = with_ports("c", sidecar_ports=[{"containerPort": 1, "hostPort": 7000}])
    ended = with_ports("d", init_ports=[{"containerPort": 1, "hostPort": 7001}])
    assert fit(with_ports("p", {"containerPort": 1, "hostPort": 7000}), [sidecar, ended], ALLOCATABLE) == refused
    assert fit(with_ports("p", {"containerPort": 1, "hostPort": 7001}), [sidecar, ended], ALLOCATABLE) is None
    # resources are looked at first, as upstream orders its reasons
    assert fit(with_ports("p", {"containerPort": 80, "hostPort": 21017}), [held, held, held],
               ALLOCATABLE)[0] == "OutOfpods"


def test_a_pod_for_another_os_is_refused_as_upstream():
    assert admission.os_refusal({"spec": {"os": {"name": "linux"}}}) is None
    assert admission.os_refusal({"metadata": {"labels": {"kubernetes.io/os": "linux"}}, "spec": {}}) is None
    assert admission.os_refusal({"spec": {"os": {"name": "windows"}}}) == (
        "PodOSNotSupported", "Failed to admit pod as the OS field doesn't match node OS")
    reason, _ = admission.os_refusal({"metadata": {"labels": {"kubernetes.io/os": "windows"}}, "spec": {}})
    assert reason == "PodOSSelectorNodeLabelDoesNotMatch"


def test_apparmor_is_refused_on_a_host_without_it():
    runtime_default = {"appArmorProfile": {"type": "RuntimeDefault"}}
    field = {"spec": {"containers": [{"name": "c", "securityContext": runtime_default}]}}
    annotated = {"metadata": {"annotations": {"container.apparmor.security.beta.kubernetes.io/c": "runtime/default"}},
                 "spec": {"containers": [{"name": "c"}]}}
    unconfined = {"spec": {"securityContext": {"appArmorProfile": {"type": "Unconfined"}},
                           "containers": [{"name": "c"}]}}
    for pod in (field, annotated):
        assert admission.apparmor_refusal(pod, enabled=False) == (
            "AppArmor", "Cannot enforce AppArmor: AppArmor is not enabled on the host")
        assert admission.apparmor_refusal(pod, enabled=True) is None
    assert admission.apparmor_refusal(unconfined, enabled=False) is None
    assert admission.apparmor_refusal({"spec": {"containers": [{"name": "c"}]}}, enabled=False) is None
    empty = {"spec": {"containers": [{"name": "c", "securityContext": {"appArmorProfile": {"type": "Localhost"}}}]}}
    assert admission.apparmor_refusal(empty, enabled=True)[0] == "AppArmor"


def test_apparmor_enabled_reads_securityfs_and_the_module_parameter(tmp_path):
    assert not admission.apparmor_enabled(tmp_path)
    (tmp_path / "kernel/security/apparmor").mkdir(parents=True)
    (tmp_path / "module/apparmor/parameters").mkdir(parents=True)
    (tmp_path / "module/apparmor/parameters/enabled").write_text("N\n")
    assert not admission.apparmor_enabled(tmp_path)
    (tmp_path / "module/apparmor/parameters/enabled").write_text("Y\n")
    assert admission.apparmor_enabled(tmp_path)


def sysctl_pod(*names, host_network=False):
    return {"spec": {"hostNetwork": host_network, "containers": [{"name": "c"}],
                     "securityContext": {"sysctls": [{"name": n, "value": "1"} for n in names]}}}


def test_only_safe_or_allowed_unsafe_sysctls_are_admitted():
    allow = admission.sysctl_allowlist([], kernel=(6, 1))
    assert admission.sysctl_refusal(sysctl_pod("kernel.shm_rmid_forced", "net.ipv4.tcp_rmem"), allow) is None
    assert admission.sysctl_refusal(sysctl_pod("net/ipv4/ip_local_port_range"), allow) is None  # slashes
    assert admission.sysctl_refusal(sysctl_pod("kernel.msgmax"), allow) == (
        "SysctlForbidden", 'forbidden sysctl: "kernel.msgmax" not allowlisted')
    assert admission.sysctl_refusal(sysctl_pod("kernel.msgmax"), allow + ["kernel.msg*"]) is None
    reason, message = admission.sysctl_refusal(sysctl_pod("net.ipv4.tcp_syncookies", host_network=True), allow)
    assert reason == "SysctlForbidden" and "not allowed with host Net enabled" in message
    assert "net.ipv4.tcp_rmem" not in admission.sysctl_allowlist([], kernel=(4, 14))  # namespaced since 4.15
    assert admission.normalize_sysctl("kernel/shm_rmid_forced") == "kernel.shm_rmid_forced"
    assert admission.normalize_sysctl("net.ipv4.conf.eno2/100.rp_filter") == "net.ipv4.conf.eno2/100.rp_filter"
