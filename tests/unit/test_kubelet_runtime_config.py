"""PodSandboxConfig and ContainerConfig built from pods."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cri import api
from pykubelet.pods import runtime_config as rc
from pykubelet.pods.envvars import ConfigProblem

GiB = 2**30


def make_pod(*containers, meta=None, init=(), **spec):
    body = {"containers": [{"name": "c", "image": "busybox"}] if not containers else list(containers), **spec}
    if init:
        body["initContainers"] = list(init)
    metadata = {"name": "web", "namespace": "ns1", "uid": "u-1", **(meta or {})}
    return {"metadata": metadata, "spec": body}


def sandbox(p, **kwargs):
    kwargs.setdefault("attempt", 0)
    kwargs.setdefault("cgroup_parent", "/kubepods/besteffort/podu-1")
    kwargs.setdefault("dns", None)
    return rc.sandbox_config(p, **kwargs)


def sandbox_problem(p, **kwargs) -> ConfigProblem:
    with pytest.raises(ConfigProblem) as caught:
        sandbox(p, **kwargs)
    assert caught.value.reason == "CreatePodSandboxError"
    return caught.value


# --- sandbox ---------------------------------------------------------------------------------------

def test_sandbox_metadata_labels_annotations_and_logs():
    p = make_pod(meta={"labels": {"app": "web"}, "annotations": {"kubernetes.io/config.source": "api"}})
    config = sandbox(p, attempt=2, cgroup_parent="/kubepods/podu-1")
    assert config.metadata == api.PodSandboxMetadata(name="web", uid="u-1", namespace="ns1", attempt=2)
    assert dict(config.labels) == {"app": "web", "io.kubernetes.pod.name": "web",
                                   "io.kubernetes.pod.namespace": "ns1", "io.kubernetes.pod.uid": "u-1"}
    assert dict(config.annotations) == {"kubernetes.io/config.source": "api"}
    assert config.log_directory == "/var/log/pods/ns1_web_u-1"
    assert config.linux.cgroup_parent == "/kubepods/podu-1"
    assert not config.HasField("dns_config")
    assert sandbox(p, log_root=Path("/tmp/logs")).log_directory == "/tmp/logs/ns1_web_u-1"


def test_pod_labels_cannot_override_the_kubelet_ones():
    p = make_pod(meta={"labels": {"io.kubernetes.pod.name": "fake"}})
    assert sandbox(p).labels["io.kubernetes.pod.name"] == "web"


def test_sandbox_dns():
    dns = api.DNSConfig(servers=["10.96.0.10"], searches=["ns1.svc.cluster.local"], options=["ndots:5"])
    assert sandbox(make_pod(), dns=dns).dns_config == dns


LONG = "a" * 61 + "-." + "b" * 10  # 63 characters end in "-."


@pytest.mark.parametrize("meta, spec, kwargs, hostname", [
    ({}, {}, {}, "web"),
    ({}, {"hostname": "box"}, {}, "box"),
    ({"name": LONG}, {}, {}, "a" * 61),  # cut to 63, trailing "-." dropped
    ({"name": "x" * 70}, {}, {}, "x" * 63),
    ({}, {"hostname": "box", "subdomain": "sub"}, {}, "box"),
    ({}, {"hostname": "box", "subdomain": "sub", "setHostnameAsFQDN": True}, {}, "box.sub.ns1.svc.cluster.local"),
    ({}, {"hostname": "box", "subdomain": "sub", "setHostnameAsFQDN": True}, {"cluster_domain": "k8s.example"},
     "box.sub.ns1.svc.k8s.example"),
    ({}, {"setHostnameAsFQDN": True}, {}, "web"),  # no subdomain, no domain
    ({}, {"hostnameOverride": "my.host.name", "subdomain": "sub", "setHostnameAsFQDN": True}, {}, "my.host.name"),
    ({}, {"hostNetwork": True, "hostname": "box"}, {"node_hostname": "node-a"}, "node-a"),
    ({}, {"hostNetwork": True}, {}, ""),  # upstream leaves it to the runtime
])
def test_sandbox_hostname(meta, spec, kwargs, hostname):
    assert sandbox(make_pod(meta=meta, **spec), **kwargs).hostname == hostname


@pytest.mark.parametrize("spec, message", [
    ({"hostname": "Not_Valid"}, 'pod Hostname "Not_Valid" is not a valid DNS label'),
    ({"subdomain": "a.b"}, 'pod Subdomain "a.b" is not a valid DNS label'),
    ({"hostnameOverride": "UPPER"}, 'pod HostnameOverride "UPPER" is not a valid DNS subdomain'),
    ({"hostname": "h" * 30, "subdomain": "s" * 20, "setHostnameAsFQDN": True},
     "failed to construct FQDN from pod hostname and cluster domain, FQDN "),
])
def test_bad_hostnames(spec, message):
    assert str(sandbox_problem(make_pod(**spec))).startswith(message)


def test_port_mappings():
    web = {"name": "web", "image": "nginx", "ports": [
        {"name": "http", "containerPort": 80, "hostPort": 8080, "protocol": "TCP"},
        {"containerPort": 53, "hostPort": 5353, "protocol": "UDP", "hostIP": "127.0.0.1"},
        {"containerPort": 9, "protocol": "SCTP"},
        {"containerPort": 443},  # protocol defaults to TCP
        {"name": "http", "containerPort": 81, "hostPort": 8081},  # a repeated name is dropped
        {"containerPort": 53, "hostPort": 5353, "protocol": "UDP", "hostIP": "127.0.0.1"},  # a repeat
    ]}
    side = {"name": "side", "image": "x", "ports": [{"name": "http", "containerPort": 8000}]}
    init = {"name": "init", "image": "x", "ports": [{"containerPort": 1, "hostPort": 1}]}  # not mapped
    mappings = sandbox(make_pod(web, side, init=[init])).port_mappings
    assert list(mappings) == [
        api.PortMapping(protocol=api.TCP, container_port=80, host_port=8080),
        api.PortMapping(protocol=api.UDP, container_port=53, host_port=5353, host_ip="127.0.0.1"),
        api.PortMapping(protocol=api.SCTP, container_port=9),
        api.PortMapping(protocol=api.TCP, container_port=443),
        api.PortMapping(protocol=api.TCP, container_port=8000),
    ]


def test_host_network_ports_default_host_port():
    c = {"name": "c", "image": "x", "ports": [{"containerPort": 80}]}
    assert list(sandbox(make_pod(c, hostNetwork=True)).port_mappings) == [
        api.PortMapping(protocol=api.TCP, container_port=80, host_port=80)]


@pytest.mark.parametrize("spec, network, pid, ipc", [
    ({}, api.POD, api.CONTAINER, api.POD),
    ({"hostNetwork": True}, api.NODE, api.CONTAINER, api.POD),
    ({"hostPID": True}, api.POD, api.NODE, api.POD),
    ({"hostIPC": True}, api.POD, api.CONTAINER, api.NODE),
    ({"shareProcessNamespace": True}, api.POD, api.POD, api.POD),
    ({"hostPID": True, "shareProcessNamespace": True}, api.POD, api.NODE, api.POD),
])
def test_namespace_options(spec, network, pid, ipc):
    expected = api.NamespaceOption(network=network, pid=pid, ipc=ipc)
    p = make_pod(**spec)
    assert sandbox(p).linux.security_context.namespace_options == expected
    config = rc.container_config(p, p["spec"]["containers"][0], attempt=0, env=[], mounts=[], image="busybox",
                                 node_memory_capacity=4 * GiB)
    assert config.linux.security_context.namespace_options == expected


def test_sandbox_security_context():
    p = make_pod(
        {"name": "a", "image": "x"}, {"name": "b", "image": "x", "securityContext": {"privileged": True}},
        securityContext={"runAsUser": 1000, "runAsGroup": 3000, "fsGroup": 2000, "supplementalGroups": [4000, 5000],
                         "supplementalGroupsPolicy": "Strict", "seLinuxOptions": {"level": "s0:c1,c2"},
                         "sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"},
                                     {"name": "kernel.shm_rmid_forced", "value": "1"}]})
    linux = sandbox(p).linux
    sc = linux.security_context
    assert sc.privileged
    assert sc.run_as_user.value == 1000 and sc.run_as_group.value == 3000
    assert list(sc.supplemental_groups) == [2000, 4000, 5000]  # fsGroup first
    assert sc.supplemental_groups_policy == api.Strict
    assert sc.selinux_options == api.SELinuxOption(level="s0:c1,c2")
    assert sc.seccomp == api.SecurityProfile(profile_type=api.SecurityProfile.RuntimeDefault)
    assert dict(linux.sysctls) == {"net.ipv4.ip_unprivileged_port_start": "0", "kernel.shm_rmid_forced": "1"}


def test_sandbox_defaults():
    sc = sandbox(make_pod()).linux.security_context
    assert not sc.privileged
    assert not sc.HasField("run_as_user") and not sc.HasField("run_as_group")
    assert list(sc.supplemental_groups) == []
    assert sc.supplemental_groups_policy == api.Merge


def test_privileged_init_container_makes_a_privileged_sandbox():
    p = make_pod(init=[{"name": "i", "image": "x", "securityContext": {"privileged": True}}])
    assert sandbox(p).linux.security_context.privileged


def test_bad_supplemental_groups_policy():
    assert str(sandbox_problem(make_pod(securityContext={"supplementalGroupsPolicy": "Odd"}))) == \
        "unsupported supplementalGroupsPolicy: Odd"


def test_sandbox_resources_and_overhead():
    a = {"name": "a", "image": "x", "resources": {"requests": {"cpu": "250m"}, "limits": {"cpu": "500m",
                                                                                          "memory": "128Mi"}}}
    b = {"name": "b", "image": "x", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}}
    p = make_pod(a, b, overhead={"cpu": "100m", "memory": "32Mi"})
    linux = sandbox(p).linux
    assert linux.resources == api.LinuxContainerResources(cpu_shares=512, cpu_period=100000, cpu_quota=50000,
                                                          memory_limit_in_bytes=128 * 2**20)
    assert linux.overhead == api.LinuxContainerResources(cpu_shares=102, cpu_period=100000, cpu_quota=10000,
                                                         memory_limit_in_bytes=32 * 2**20)
    assert not sandbox(make_pod()).linux.HasField("overhead")


# --- containers ------------------------------------------------------------------------------------

def container_config(p, container=None, **kwargs):
    container = container or p["spec"]["containers"][0]
    kwargs.setdefault("attempt", 0)
    kwargs.setdefault("env", [])
    kwargs.setdefault("mounts", [])
    kwargs.setdefault("image", "sha256:abc")
    kwargs.setdefault("node_memory_capacity", 4 * GiB)
    return rc.container_config(p, container, **kwargs)


def test_container_basics():
    c = {"name": "app", "image": "busybox:1.37", "command": ["sh", "-c"], "args": ["echo $(GREETING) $$(HOME)"],
         "workingDir": "/work", "stdin": True, "stdinOnce": True, "tty": True,
         "terminationMessagePath": "/tmp/msg", "terminationMessagePolicy": "FallbackToLogsOnError",
         "ports": [{"name": "http", "containerPort": 80, "protocol": "TCP"}],
         "lifecycle": {"preStop": {"exec": {"command": ["sleep", "1"]}}}}
    p = make_pod(c, terminationGracePeriodSeconds=30, meta={"deletionGracePeriodSeconds": 10})
    mount = api.Mount(container_path="/data", host_path="/var/lib/kubelet/pods/u-1/volumes/x")
    config = container_config(p, attempt=3, env=[("GREETING", "hi"), ("EMPTY", "")], mounts=[mount],
                              image="sha256:abc")
    assert config.metadata == api.ContainerMetadata(name="app", attempt=3)
    assert config.image == api.ImageSpec(image="sha256:abc", user_specified_image="busybox:1.37")
    assert list(config.command) == ["sh", "-c"]
    assert list(config.args) == ["echo hi $(HOME)"]
    assert config.working_dir == "/work"
    assert list(config.envs) == [api.KeyValue(key="GREETING", value=b"hi"), api.KeyValue(key="EMPTY", value=b"")]
    assert list(config.mounts) == [mount]
    assert not config.devices
    assert config.log_path == "app/3.log"
    assert config.stdin and config.stdin_once and config.tty
    assert dict(config.labels) == {"io.kubernetes.container.name": "app", "io.kubernetes.pod.name": "web",
                                   "io.kubernetes.pod.namespace": "ns1", "io.kubernetes.pod.uid": "u-1"}
    assert dict(config.annotations) == {
        "io.kubernetes.container.hash": rc.container_hash(c),
        "io.kubernetes.container.restartCount": "3",
        "io.kubernetes.container.terminationMessagePath": "/tmp/msg",
        "io.kubernetes.container.terminationMessagePolicy": "FallbackToLogsOnError",
        "io.kubernetes.pod.terminationGracePeriod": "30",
        "io.kubernetes.pod.deletionGracePeriod": "10",
        "io.kubernetes.container.preStopHandler": '{"exec":{"command":["sleep","1"]}}',
        "io.kubernetes.container.ports": '[{"name":"http","containerPort":80,"protocol":"TCP"}]',
    }


def test_container_defaults():
    config = container_config(make_pod())
    assert list(config.command) == [] and list(config.args) == []
    assert config.working_dir == "" and config.log_path == "c/0.log"
    assert not (config.stdin or config.stdin_once or config.tty)
    annotations = dict(config.annotations)
    assert annotations["io.kubernetes.container.terminationMessagePath"] == "/dev/termination-log"
    assert annotations["io.kubernetes.container.terminationMessagePolicy"] == "File"
    assert "io.kubernetes.container.ports" not in annotations
    assert "io.kubernetes.pod.terminationGracePeriod" not in annotations


def test_ports_annotation_is_go_json():
    c = {"name": "c", "image": "x", "ports": [{"containerPort": 53, "hostPort": 53, "protocol": "UDP",
                                               "hostIP": "10.0.0.1"}, {"containerPort": 80}]}
    ports = json.loads(container_config(make_pod(c)).annotations["io.kubernetes.container.ports"])
    assert ports == [{"hostPort": 53, "containerPort": 53, "protocol": "UDP", "hostIP": "10.0.0.1"},
                     {"containerPort": 80, "protocol": "TCP"}]
    assert list(ports[0]) == ["hostPort", "containerPort", "protocol", "hostIP"]


def test_command_uses_the_last_definition_and_keeps_unknown_references():
    c = {"name": "c", "image": "x", "command": ["$(A)", "$(B)", "$$(A)", "$(A"]}
    config = container_config(make_pod(c), env=[("A", "1"), ("A", "2")])
    assert list(config.command) == ["2", "$(B)", "$(A)", "$(A"]


def test_env_bytes_round_trip():
    raw = b"\xff\x00ok".decode("utf-8", "surrogateescape")
    assert container_config(make_pod(), env=[("RAW", raw)]).envs[0].value == b"\xff\x00ok"


def resources(requests=None, limits=None):
    r = {}
    if requests:
        r["requests"] = requests
    if limits:
        r["limits"] = limits
    return r


@pytest.mark.parametrize("res, shares, quota, memory", [
    ({}, 2, 0, 0),
    (resources({"cpu": "100m"}), 102, 0, 0),
    (resources({"cpu": "1m"}), 2, 0, 0),  # at least 2 shares
    (resources({"cpu": "1000"}), 262144, 0, 0),  # at most 262144
    (resources(limits={"cpu": "500m"}), 512, 50000, 0),  # the request defaults to the limit
    (resources({"cpu": "250m"}, {"cpu": "2"}), 256, 200000, 0),
    (resources({"cpu": "250m"}, {"cpu": "5m"}), 256, 1000, 0),  # quota at least 1 ms
    (resources(limits={"memory": "128Mi"}), 2, 0, 128 * 2**20),
    (resources({"memory": "64Mi"}, {"memory": "1G"}), 2, 0, 10**9),
])
def test_container_resources(res, shares, quota, memory):
    c = {"name": "c", "image": "x", "resources": res}
    r = container_config(make_pod(c)).linux.resources
    assert (r.cpu_shares, r.cpu_period, r.cpu_quota, r.memory_limit_in_bytes) == (shares, 100000, quota, memory)
    assert not r.unified and not r.hugepage_limits


def test_pod_level_limits_fill_in_missing_container_limits():
    c = {"name": "c", "image": "x", "resources": resources({"cpu": "100m"})}
    p = make_pod(c, resources={"limits": {"cpu": "1", "memory": "1Gi"}})
    r = container_config(p).linux.resources
    assert (r.cpu_quota, r.memory_limit_in_bytes) == (100000, GiB)


def test_oom_group_and_hugepages():
    c = {"name": "c", "image": "x", "resources": resources({"cpu": "1", "memory": "1Gi", "hugepages-2Mi": "4Mi"},
                                                          {"cpu": "1", "memory": "1Gi", "hugepages-2Mi": "4Mi"})}
    r = container_config(make_pod(c), oom_group=True, hugepage_sizes=["2MB", "1GB"]).linux.resources
    assert dict(r.unified) == {"memory.oom.group": "1"}
    assert list(r.hugepage_limits) == [api.HugepageLimit(page_size="2MB", limit=4 * 2**20),
                                       api.HugepageLimit(page_size="1GB", limit=0)]


GUARANTEED = resources(limits={"cpu": "1", "memory": "1Gi"})


@pytest.mark.parametrize("res, spec, meta, expected", [
    (GUARANTEED, {}, {}, -997),
    ({}, {}, {}, 1000),
    (resources({"memory": "1Gi"}), {}, {}, 750),  # 1000 - 1000 * 1Gi / 4Gi
    (resources({"cpu": "1"}), {}, {}, 999),  # no memory request: 1000, kept below BestEffort
    (resources({"memory": "4Gi"}), {}, {}, 3),  # at least 3
    (resources({"memory": "8Gi"}), {}, {}, 3),
    ({}, {"priorityClassName": "system-node-critical", "priority": 2000001000}, {}, -997),
    ({}, {"priorityClassName": "system-node-critical"}, {"annotations": {"kubernetes.io/config.source": "file"}},
     -997),
    ({}, {"priorityClassName": "system-cluster-critical", "priority": 2000000000}, {}, 1000),
    ({}, {"priorityClassName": "system-node-critical"}, {}, 1000),  # not critical without the priority
])
def test_oom_score_adj(res, spec, meta, expected):
    c = {"name": "c", "image": "x", "resources": res}
    assert container_config(make_pod(c, meta=meta, **spec)).linux.resources.oom_score_adj == expected


def test_oom_score_adj_of_a_sidecar_is_at_most_the_regular_containers():
    main = {"name": "main", "image": "x", "resources": resources({"memory": "2Gi"})}
    side = {"name": "side", "image": "x", "restartPolicy": "Always", "resources": resources({"memory": "1Gi"})}
    p = make_pod(main, init=[side])
    assert container_config(p, main).linux.resources.oom_score_adj == 500
    assert container_config(p, side).linux.resources.oom_score_adj == 500  # not 750


def test_oom_score_adj_with_pod_level_requests():
    a = {"name": "a", "image": "x", "resources": resources({"memory": "1Gi"})}
    b = {"name": "b", "image": "x"}
    p = make_pod(a, b, resources={"requests": {"memory": "3Gi"}})  # 2Gi unassigned: 1Gi more each
    assert container_config(p, a).linux.resources.oom_score_adj == 500
    assert container_config(p, b).linux.resources.oom_score_adj == 750


# --- security --------------------------------------------------------------------------------------

def security(p, container=None, **kwargs):
    return container_config(p, container, **kwargs).linux.security_context


def test_container_security_context():
    c = {"name": "c", "image": "x", "securityContext": {
        "privileged": True, "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
        "capabilities": {"add": ["NET_ADMIN", "SYS_TIME"], "drop": ["ALL"]}, "runAsUser": 1001, "runAsGroup": 1002,
        "seLinuxOptions": {"type": "spc_t"}}}
    p = make_pod(c, securityContext={"runAsUser": 1, "runAsGroup": 2, "fsGroup": 3, "supplementalGroups": [4],
                                     "seLinuxOptions": {"level": "s0"}})
    sc = security(p)
    assert sc.privileged and sc.readonly_rootfs and sc.no_new_privs
    # names as in the pod: the runtime adds the CAP_ prefix
    assert sc.capabilities == api.Capability(add_capabilities=["NET_ADMIN", "SYS_TIME"], drop_capabilities=["ALL"])
    assert sc.run_as_user.value == 1001 and sc.run_as_group.value == 1002
    assert sc.selinux_options == api.SELinuxOption(type="spc_t")  # the container's replace the pod's
    assert list(sc.supplemental_groups) == [3, 4]
    assert not sc.masked_paths and not sc.readonly_paths  # the runtime's defaults


def test_pod_security_context_is_inherited():
    p = make_pod(securityContext={"runAsUser": 1000, "runAsGroup": 2000, "seLinuxOptions": {"level": "s0"}})
    sc = security(p, image_user="5")
    assert sc.run_as_user.value == 1000 and sc.run_as_group.value == 2000
    assert sc.selinux_options == api.SELinuxOption(level="s0")
    assert not sc.HasField("capabilities")
    assert not (sc.privileged or sc.readonly_rootfs or sc.no_new_privs)


@pytest.mark.parametrize("allow, no_new_privs", [(None, False), (True, False), (False, True)])
def test_no_new_privs(allow, no_new_privs):
    c = {"name": "c", "image": "x", "securityContext": {"allowPrivilegeEscalation": allow}}
    assert security(make_pod(c)).no_new_privs is no_new_privs


@pytest.mark.parametrize("image_user, uid, username", [
    (None, 0, ""),  # no user in the image: root
    ("", 0, ""),
    ("0", 0, ""),
    ("1000", 1000, ""),
    ("1000:1000", 1000, ""),
    ("root", None, "root"),
    ("app:grp", None, "app"),
    ("99999999999999999999", None, "99999999999999999999"),  # not an int64: a name, as the runtime reads it
])
def test_image_user(image_user, uid, username):
    sc = security(make_pod(), image_user=image_user)
    assert (sc.run_as_user.value if sc.HasField("run_as_user") else None) == uid
    assert sc.run_as_username == username


@pytest.mark.parametrize("pod_sc, container_sc, profile", [
    ({}, {}, api.SecurityProfile(profile_type=api.SecurityProfile.Unconfined)),
    ({"seccompProfile": {"type": "RuntimeDefault"}}, {},
     api.SecurityProfile(profile_type=api.SecurityProfile.RuntimeDefault)),
    ({"seccompProfile": {"type": "RuntimeDefault"}}, {"seccompProfile": {"type": "Unconfined"}},
     api.SecurityProfile(profile_type=api.SecurityProfile.Unconfined)),
    ({}, {"seccompProfile": {"type": "Localhost", "localhostProfile": "profiles/audit.json"}},
     api.SecurityProfile(profile_type=api.SecurityProfile.Localhost,
                         localhost_ref="/var/lib/kubelet/seccomp/profiles/audit.json")),
    ({"seccompProfile": {"type": "Localhost", "localhostProfile": "a/../b.json"}}, {},
     api.SecurityProfile(profile_type=api.SecurityProfile.Localhost, localhost_ref="/var/lib/kubelet/seccomp/b.json")),
])
def test_seccomp(pod_sc, container_sc, profile):
    c = {"name": "c", "image": "x", "securityContext": container_sc}
    assert security(make_pod(c, securityContext=pod_sc)).seccomp == profile


def test_seccomp_default():
    sc = security(make_pod(), seccomp_default=True)
    assert sc.seccomp == api.SecurityProfile(profile_type=api.SecurityProfile.RuntimeDefault)


@pytest.mark.parametrize("pod_sc, container_sc, annotations, profile, name", [
    ({}, {}, {}, None, ""),
    ({"appArmorProfile": {"type": "RuntimeDefault"}}, {}, {},
     api.SecurityProfile(profile_type=api.SecurityProfile.RuntimeDefault), "runtime/default"),
    ({"appArmorProfile": {"type": "RuntimeDefault"}}, {"appArmorProfile": {"type": "Unconfined"}}, {},
     api.SecurityProfile(profile_type=api.SecurityProfile.Unconfined), "unconfined"),
    ({}, {}, {"container.apparmor.security.beta.kubernetes.io/c": "localhost/k8s-deny"},
     api.SecurityProfile(profile_type=api.SecurityProfile.Localhost, localhost_ref="k8s-deny"), "localhost/k8s-deny"),
])
def test_apparmor(pod_sc, container_sc, annotations, profile, name):
    c = {"name": "c", "image": "x", "securityContext": container_sc}
    sc = security(make_pod(c, securityContext=pod_sc, meta={"annotations": annotations}))
    assert (sc.apparmor if sc.HasField("apparmor") else None) == profile
    assert sc.apparmor_profile == name


def config_problem(p, container=None, **kwargs) -> ConfigProblem:
    with pytest.raises(ConfigProblem) as caught:
        container_config(p, container, **kwargs)
    assert caught.value.reason == "CreateContainerConfigError"
    return caught.value


@pytest.mark.parametrize("container_sc, message", [
    ({"seccompProfile": {"type": "Localhost"}}, "localhostProfile must be set if seccompProfile type is Localhost."),
    ({"appArmorProfile": {"type": "Localhost"}}, "missing localhost apparmor profile name"),
])
def test_bad_profiles(container_sc, message):
    c = {"name": "c", "image": "x", "securityContext": container_sc}
    assert str(config_problem(make_pod(c))) == message


WHERE = '(pod: "web_ns1(u-1)", container: c)'


@pytest.mark.parametrize("pod_sc, container_sc, image_user, message", [
    ({"runAsNonRoot": True}, {}, None, f"container has runAsNonRoot and image will run as root {WHERE}"),
    ({"runAsNonRoot": True}, {}, "", f"container has runAsNonRoot and image will run as root {WHERE}"),
    ({}, {"runAsNonRoot": True}, "0", f"container has runAsNonRoot and image will run as root {WHERE}"),
    ({}, {"runAsNonRoot": True}, "0:0", f"container has runAsNonRoot and image will run as root {WHERE}"),
    ({}, {"runAsNonRoot": True}, "root",
     f"container has runAsNonRoot and image has non-numeric user (root), cannot verify user is non-root {WHERE}"),
    ({}, {"runAsNonRoot": True}, "app:staff",
     f"container has runAsNonRoot and image has non-numeric user (app), cannot verify user is non-root {WHERE}"),
    ({"runAsNonRoot": True}, {"runAsUser": 0}, "1000", f"container's runAsUser breaks non-root policy {WHERE}"),
    ({"runAsNonRoot": True, "runAsUser": 0}, {}, "1000", f"container's runAsUser breaks non-root policy {WHERE}"),
    ({}, {"runAsNonRoot": True}, "4294967296",
     "container has runAsNonRoot and image has an invalid user id (4294967296). (Must be 1-(2147483647)): "
     f"must be between 0 and 2147483647, inclusive {WHERE}"),
])
def test_run_as_non_root_violations(pod_sc, container_sc, image_user, message):
    c = {"name": "c", "image": "x", "securityContext": container_sc}
    assert str(config_problem(make_pod(c, securityContext=pod_sc), image_user=image_user)) == message


@pytest.mark.parametrize("pod_sc, container_sc, image_user", [
    ({}, {}, None),  # not asked for
    ({"runAsNonRoot": False}, {}, "0"),
    ({"runAsNonRoot": True}, {}, "1000"),
    ({"runAsNonRoot": True}, {}, "1000:1000"),
    ({"runAsNonRoot": True}, {"runAsUser": 1000}, None),  # the securityContext's user decides
    ({"runAsNonRoot": True}, {"runAsUser": 1000}, "root"),
    ({"runAsNonRoot": True, "runAsUser": 1000}, {}, "0"),
    ({"runAsNonRoot": True}, {"runAsNonRoot": False}, "0"),  # the container overrides the pod
])
def test_run_as_non_root_satisfied(pod_sc, container_sc, image_user):
    c = {"name": "c", "image": "x", "securityContext": container_sc}
    container_config(make_pod(c, securityContext=pod_sc), image_user=image_user)


# --- hash ------------------------------------------------------------------------------------------

def test_container_hash():
    base = {"name": "c", "image": "busybox:1.37"}
    digest = rc.container_hash(base)
    int(digest, 16)
    assert rc.container_hash(dict(reversed(list(base.items())))) == digest
    assert rc.container_hash({**base, "env": [{"name": "A", "value": "1"}], "resources": {"limits": {"cpu": "1"}}}) \
        == digest
    assert rc.container_hash({**base, "image": "busybox:1.36"}) != digest
    assert rc.container_hash({**base, "name": "d"}) != digest
