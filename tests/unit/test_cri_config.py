"""The PodSandboxConfig / ContainerConfig builders."""

from __future__ import annotations

import pytest

from cri import api, container_config, pod_sandbox_config


def test_minimal_sandbox():
    config = pod_sandbox_config(name="web", uid="1234", namespace="default")
    assert config.metadata == api.PodSandboxMetadata(name="web", uid="1234", namespace="default", attempt=0)
    assert not config.HasField("dns_config")
    assert not config.port_mappings
    assert config.HasField("linux")  # always sent on Linux, as the kubelet does
    assert not config.linux.HasField("security_context")


def test_full_sandbox():
    config = pod_sandbox_config(
        name="web",
        uid="1234",
        namespace="prod",
        attempt=2,
        hostname="web-0",
        log_directory="/var/log/pods/prod_web_1234",
        labels={"app": "web"},
        annotations={"kubernetes.io/config.source": "api"},
        dns_servers=["10.96.0.10"],
        dns_searches=["prod.svc.cluster.local", "svc.cluster.local"],
        dns_options=["ndots:5"],
        port_mappings=[
            {"container_port": 80, "host_port": 8080},
            {"container_port": 53, "protocol": "udp", "host_ip": "127.0.0.1"},
            api.PortMapping(protocol=api.SCTP, container_port=9),
        ],
        cgroup_parent="/kubepods/besteffort/pod1234",
        sysctls={"net.ipv4.ip_unprivileged_port_start": "0"},
        security_context={"namespace_options": {"network": "NODE"}, "run_as_user": {"value": 1000}},
        resources={"cpu_shares": 512, "memory_limit_in_bytes": 1 << 30},
    )
    assert config.metadata.attempt == 2
    assert (config.hostname, config.log_directory) == ("web-0", "/var/log/pods/prod_web_1234")
    assert dict(config.labels) == {"app": "web"}
    assert dict(config.annotations) == {"kubernetes.io/config.source": "api"}
    assert list(config.dns_config.servers) == ["10.96.0.10"]
    assert list(config.dns_config.searches) == ["prod.svc.cluster.local", "svc.cluster.local"]
    assert list(config.dns_config.options) == ["ndots:5"]
    assert [(p.protocol, p.container_port, p.host_port, p.host_ip) for p in config.port_mappings] == [
        (api.TCP, 80, 8080, ""),
        (api.UDP, 53, 0, "127.0.0.1"),
        (api.SCTP, 9, 0, ""),
    ]
    linux = config.linux
    assert linux.cgroup_parent == "/kubepods/besteffort/pod1234"
    assert dict(linux.sysctls) == {"net.ipv4.ip_unprivileged_port_start": "0"}
    assert linux.security_context.namespace_options.network == api.NODE
    assert linux.security_context.run_as_user.value == 1000
    assert linux.resources.cpu_shares == 512
    assert not linux.HasField("overhead")
    # Survives the wire.
    assert api.PodSandboxConfig.FromString(config.SerializeToString()) == config


def test_bad_protocol():
    with pytest.raises(ValueError, match="Protocol"):
        pod_sandbox_config(name="a", uid="b", namespace="c", port_mappings=[{"container_port": 1, "protocol": "icmp"}])


def test_unknown_field_is_an_error():
    with pytest.raises(ValueError):
        pod_sandbox_config(name="a", uid="b", namespace="c", port_mappings=[{"containerPort": 1}])


def test_minimal_container():
    config = container_config(name="app", image="docker.io/library/busybox:1.36")
    assert config.metadata == api.ContainerMetadata(name="app", attempt=0)
    assert config.image == api.ImageSpec(image="docker.io/library/busybox:1.36")
    assert not config.HasField("linux")
    assert config.stop_signal == api.RUNTIME_DEFAULT


def test_full_container():
    config = container_config(
        name="app",
        image=api.ImageSpec(image="sha256:abc", user_specified_image="busybox"),
        attempt=3,
        command=["/bin/sh", "-c"],
        args=["echo $GREETING"],
        working_dir="/work",
        env={"GREETING": "héllo", "BLOB": b"\xff\x00", "EMPTY": ""},
        mounts=[
            {"container_path": "/data", "host_path": "/var/lib/kubelet/pods/1/volumes/data", "readonly": True},
            {"container_path": "/shared", "host_path": "/mnt", "propagation": "Bidirectional"},
            {"container_path": "/img", "image": "sha256:def", "image_sub_path": "sub"},
            api.Mount(container_path="/etc/hosts", host_path="/var/lib/kubelet/pods/1/etc-hosts"),
        ],
        devices=[{"container_path": "/dev/fuse", "host_path": "/dev/fuse", "permissions": "rwm"}],
        labels={"io.kubernetes.container.name": "app"},
        annotations={"io.kubernetes.container.restartCount": "3"},
        log_path="app/3.log",
        tty=True,
        stdin=True,
        resources={"cpu_period": 100000, "cpu_quota": 50000, "memory_limit_in_bytes": 64 << 20,
                   "unified": {"memory.oom.group": "1"}, "hugepage_limits": [{"page_size": "2MB", "limit": 0}]},
        security_context={
            "privileged": False,
            "capabilities": {"drop_capabilities": ["ALL"]},
            "run_as_user": {"value": 0},
        },
        stop_signal="sigterm",
    )
    assert config.metadata.attempt == 3
    assert config.image.user_specified_image == "busybox"
    assert list(config.command) == ["/bin/sh", "-c"] and list(config.args) == ["echo $GREETING"]
    assert config.working_dir == "/work"
    assert [(e.key, e.value) for e in config.envs] == [
        ("GREETING", "héllo".encode()),
        ("BLOB", b"\xff\x00"),
        ("EMPTY", b""),
    ]
    data, shared, img, hosts = config.mounts
    assert data.readonly and data.propagation == api.PROPAGATION_PRIVATE
    assert shared.propagation == api.PROPAGATION_BIDIRECTIONAL
    assert img.image.image == "sha256:def" and img.image_sub_path == "sub" and not img.host_path
    assert hosts.host_path.endswith("etc-hosts")
    assert config.devices[0].permissions == "rwm"
    assert config.labels["io.kubernetes.container.name"] == "app"
    assert config.log_path == "app/3.log"
    assert config.tty and config.stdin and not config.stdin_once
    resources = config.linux.resources
    assert (resources.cpu_period, resources.cpu_quota, resources.memory_limit_in_bytes) == (100000, 50000, 64 << 20)
    assert dict(resources.unified) == {"memory.oom.group": "1"}
    assert resources.hugepage_limits[0].page_size == "2MB"
    security = config.linux.security_context
    assert list(security.capabilities.drop_capabilities) == ["ALL"]
    assert security.HasField("run_as_user") and security.run_as_user.value == 0
    assert config.stop_signal == api.SIGTERM
    assert api.ContainerConfig.FromString(config.SerializeToString()) == config


def test_env_as_pairs_keeps_order_and_duplicates():
    config = container_config(name="a", image="i", env=[("B", "1"), ("A", "2"), ("B", "3")])
    assert [(e.key, e.value) for e in config.envs] == [("B", b"1"), ("A", b"2"), ("B", b"3")]


@pytest.mark.parametrize(
    "value, expected",
    [
        ("None", api.PROPAGATION_PRIVATE),
        ("HostToContainer", api.PROPAGATION_HOST_TO_CONTAINER),
        ("PROPAGATION_HOST_TO_CONTAINER", api.PROPAGATION_HOST_TO_CONTAINER),
        (2, api.PROPAGATION_BIDIRECTIONAL),
    ],
)
def test_mount_propagation_names(value, expected):
    config = container_config(name="a", image="i", mounts=[{"container_path": "/x", "propagation": value}])
    assert config.mounts[0].propagation == expected


@pytest.mark.parametrize("bad", ["sideways", 7])
def test_bad_mount_propagation(bad):
    with pytest.raises(ValueError):
        container_config(name="a", image="i", mounts=[{"container_path": "/x", "propagation": bad}])


def test_stop_signal_by_number_and_bad_name():
    assert container_config(name="a", image="i", stop_signal=api.SIGKILL).stop_signal == api.SIGKILL
    with pytest.raises(ValueError, match="Signal"):
        container_config(name="a", image="i", stop_signal="SIGNOPE")


def test_wrong_type_for_nested_value():
    with pytest.raises(TypeError):
        container_config(name="a", image="i", resources=["cpu_shares", 2])
