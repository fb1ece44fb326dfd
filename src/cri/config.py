"""Build PodSandboxConfig and ContainerConfig from plain Python values.

Nested values may be given as the generated messages or as dicts with the
proto's field names (``{"container_port": 80, "protocol": "udp"}``); enum values
may be given by name, case-insensitively, or number.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from google.protobuf.message import Message

from . import api_pb2 as api

M = TypeVar("M", bound=Message)

# Short names for MountPropagation, as in the pod API's mountPropagation.
_PROPAGATION = {
    "none": api.PROPAGATION_PRIVATE,
    "private": api.PROPAGATION_PRIVATE,
    "hosttocontainer": api.PROPAGATION_HOST_TO_CONTAINER,
    "host_to_container": api.PROPAGATION_HOST_TO_CONTAINER,
    "bidirectional": api.PROPAGATION_BIDIRECTIONAL,
}


def _enum(enum, value: Any, aliases: Mapping[str, int] | None = None) -> int:
    if isinstance(value, int):
        enum.Name(value)  # raises ValueError for an unknown number
        return value
    text = str(value)
    if aliases and text.lower() in aliases:
        return aliases[text.lower()]
    for name in (text, text.upper()):
        if name in enum.keys():
            return enum.Value(name)
    raise ValueError(f"unknown {enum.DESCRIPTOR.name} {value!r}; expected one of {', '.join(enum.keys())}")


def _message(cls: type[M], value: M | Mapping[str, Any]) -> M:
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        return cls(**value)
    raise TypeError(f"expected {cls.__name__} or a mapping, got {type(value).__name__}")


def port_mapping(value: api.PortMapping | Mapping[str, Any]) -> api.PortMapping:
    if isinstance(value, api.PortMapping):
        return value
    fields = dict(value)
    if "protocol" in fields:
        fields["protocol"] = _enum(api.Protocol, fields["protocol"])
    return api.PortMapping(**fields)


def mount(value: api.Mount | Mapping[str, Any]) -> api.Mount:
    """A Mount; ``propagation`` also accepts "private", "host_to_container", "bidirectional"."""
    if isinstance(value, api.Mount):
        return value
    fields = dict(value)
    if "propagation" in fields:
        fields["propagation"] = _enum(api.MountPropagation, fields["propagation"], _PROPAGATION)
    if isinstance(fields.get("image"), str):
        fields["image"] = api.ImageSpec(image=fields["image"])
    return api.Mount(**fields)


def image_spec(value: str | api.ImageSpec | Mapping[str, Any]) -> api.ImageSpec:
    if isinstance(value, str):
        return api.ImageSpec(image=value)
    return _message(api.ImageSpec, value)


def envs(env: Mapping[str, str | bytes] | Iterable[tuple[str, str | bytes]]) -> list[api.KeyValue]:
    """Environment as KeyValues, order kept; str values are UTF-8 encoded."""
    items = env.items() if isinstance(env, Mapping) else env
    return [api.KeyValue(key=k, value=v.encode() if isinstance(v, str) else bytes(v)) for k, v in items]


def pod_sandbox_config(
    *,
    name: str,
    uid: str,
    namespace: str,
    attempt: int = 0,
    hostname: str = "",
    log_directory: str = "",
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    dns_servers: Iterable[str] = (),
    dns_searches: Iterable[str] = (),
    dns_options: Iterable[str] = (),
    port_mappings: Iterable[api.PortMapping | Mapping[str, Any]] = (),
    cgroup_parent: str = "",
    sysctls: Mapping[str, str] | None = None,
    security_context: api.LinuxSandboxSecurityContext | Mapping[str, Any] | None = None,
    overhead: api.LinuxContainerResources | Mapping[str, Any] | None = None,
    resources: api.LinuxContainerResources | Mapping[str, Any] | None = None,
) -> api.PodSandboxConfig:
    config = api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name=name, uid=uid, namespace=namespace, attempt=attempt),
        hostname=hostname,
        log_directory=log_directory,
        port_mappings=[port_mapping(p) for p in port_mappings],
        labels=dict(labels or {}),
        annotations=dict(annotations or {}),
    )
    dns = api.DNSConfig(servers=list(dns_servers), searches=list(dns_searches), options=list(dns_options))
    if dns.servers or dns.searches or dns.options:
        config.dns_config.CopyFrom(dns)

    linux = config.linux
    linux.cgroup_parent = cgroup_parent
    linux.sysctls.update(sysctls or {})
    if security_context is not None:
        linux.security_context.CopyFrom(_message(api.LinuxSandboxSecurityContext, security_context))
    if overhead is not None:
        linux.overhead.CopyFrom(_message(api.LinuxContainerResources, overhead))
    if resources is not None:
        linux.resources.CopyFrom(_message(api.LinuxContainerResources, resources))
    return config


def container_config(
    *,
    name: str,
    image: str | api.ImageSpec | Mapping[str, Any],
    attempt: int = 0,
    command: Iterable[str] = (),
    args: Iterable[str] = (),
    working_dir: str = "",
    env: Mapping[str, str | bytes] | Iterable[tuple[str, str | bytes]] = (),
    mounts: Iterable[api.Mount | Mapping[str, Any]] = (),
    devices: Iterable[api.Device | Mapping[str, Any]] = (),
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    log_path: str = "",
    stdin: bool = False,
    stdin_once: bool = False,
    tty: bool = False,
    resources: api.LinuxContainerResources | Mapping[str, Any] | None = None,
    security_context: api.LinuxContainerSecurityContext | Mapping[str, Any] | None = None,
    stop_signal: str | int | None = None,
) -> api.ContainerConfig:
    """A ContainerConfig; ``log_path`` is relative to the sandbox's log_directory."""
    config = api.ContainerConfig(
        metadata=api.ContainerMetadata(name=name, attempt=attempt),
        image=image_spec(image),
        command=list(command),
        args=list(args),
        working_dir=working_dir,
        envs=envs(env),
        mounts=[mount(m) for m in mounts],
        devices=[_message(api.Device, d) for d in devices],
        labels=dict(labels or {}),
        annotations=dict(annotations or {}),
        log_path=log_path,
        stdin=stdin,
        stdin_once=stdin_once,
        tty=tty,
    )
    if resources is not None:
        config.linux.resources.CopyFrom(_message(api.LinuxContainerResources, resources))
    if security_context is not None:
        config.linux.security_context.CopyFrom(_message(api.LinuxContainerSecurityContext, security_context))
    if stop_signal is not None:
        config.stop_signal = _enum(api.Signal, stop_signal)
    return config
