"""A container's environment, as upstream's kubelet makeEnvironmentVariables.

Precedence, lowest first: service link variables, ``envFrom`` sources in order,
``env`` entries in order. ``$(VAR)`` in an ``env`` value expands against what is
defined so far (envFrom keys and earlier entries), then the service variables;
``$$`` escapes a ``$``, an unknown or unterminated reference stays literal.

Order of the result (upstream's is Go map order, i.e. unspecified): envFrom keys as
they come, then ``env`` entries in declaration order (an entry that redefines a key
moves to its own place), then the service variables not overridden.

Problems with the pod's references (a missing ConfigMap, Secret or key that is not
optional, an unsupported field path) raise :class:`ConfigProblem` with reason
``CreateContainerConfigError`` and upstream's message.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from fractions import Fraction
from typing import Any

from . import qos

CREATE_CONTAINER_CONFIG_ERROR = "CreateContainerConfigError"

Getter = Callable[[str, str], Awaitable[Mapping[str, Any] | None]]


class ConfigProblem(Exception):
    """A pod spec the kubelet cannot turn into a container (or sandbox); ``reason`` is the
    waiting reason upstream reports, the message the error text."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return self.message


def describe_pod(pod: Mapping) -> str:
    """A pod as upstream's format.Pod: name_namespace(uid)."""
    meta = pod.get("metadata") or {}
    return f"{meta.get('name', '')}_{meta.get('namespace', '')}({meta.get('uid', '')})"


def config_problem(message: str) -> ConfigProblem:
    """A problem the container waits on in CreateContainerConfigError."""
    return ConfigProblem(CREATE_CONTAINER_CONFIG_ERROR, message)


# --- $(VAR) expansion ---------------------------------------------------------------------------

def expand_with(text: str, lookup: Callable[[str], str | None]) -> str:
    """Expand `$(VAR)` references with `lookup` (None: the reference stays as written); see `expand`."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch != "$" or i + 1 >= n:
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":  # escaped operator
            out.append("$")
            i += 2
        elif nxt == "(":
            end = text.find(")", i + 2)
            if end < 0:  # unterminated: keep "$(" and go on after it
                out.append("$(")
                i += 2
            else:
                name = text[i + 2:end]
                value = lookup(name)
                out.append(f"$({name})" if value is None else value)
                i = end + 1
        else:  # a lone operator
            out.append("$" + nxt)
            i += 2
    return "".join(out)


def expand(text: str, env: Mapping[str, str]) -> str:
    """Expand ``$(VAR)`` references in ``text`` from ``env`` as upstream does for command,
    args and env values: ``$$`` is a literal ``$``, unknown references stay as written."""
    return expand_with(text, env.get)


# --- downward API -------------------------------------------------------------------------------

_QUALIFIED_NAME = re.compile(r"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                             r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")


def _qualified(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    return bool(_QUALIFIED_NAME.fullmatch(key)) and len(name) <= 63 and len(prefix) <= 253


_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v",
               "\\": "\\\\", '"': '\\"'}


def go_quote(value: str) -> str:
    """`value` as Go's strconv.Quote (fmt's %q) writes it: printable characters as they are, the usual
    backslash escapes, other control characters as \\xNN, other unprintable ones as \\uNNNN or \\UNNNNNNNN."""
    out = ['"']
    for ch in value:
        if ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) <= 0xFFFF:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    out.append('"')
    return "".join(out)


def _format_map(items: Mapping[str, str]) -> str:
    """Labels or annotations as upstream's fieldpath.FormatMap: sorted `key="value"` lines."""
    return "\n".join(f"{k}={go_quote(items[k])}" for k in sorted(items))


def field_value(pod: Mapping, field_ref: Mapping, *, node_name: str, node_ip: str, pod_ips: list[str],
                host_ips: list[str]) -> str:
    """The value of a ``fieldRef`` (downward API) for the pod."""
    version = field_ref.get("apiVersion") or "v1"
    path = field_ref.get("fieldPath", "")
    if version != "v1":
        raise config_problem(f"unsupported pod version: {version}")
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    match = re.fullmatch(r"(.+?)\['(.*)'\]", path)
    if match:
        base, key = match.groups()
        if base not in ("metadata.labels", "metadata.annotations"):
            raise config_problem(f"field label does not support subscript: {path}")
        if not _qualified(key.lower() if base == "metadata.annotations" else key):
            raise config_problem(f"invalid key subscript in {path}: not a qualified name")
        return (meta.get(base.split(".")[1]) or {}).get(key, "")
    hosts = list(host_ips) or ([node_ip] if node_ip else [])
    values = {
        "metadata.name": lambda: meta.get("name", ""),
        "metadata.namespace": lambda: meta.get("namespace", ""),
        "metadata.uid": lambda: meta.get("uid", ""),
        "metadata.labels": lambda: _format_map(meta.get("labels") or {}),
        "metadata.annotations": lambda: _format_map(meta.get("annotations") or {}),
        "spec.nodeName": lambda: spec.get("nodeName") or node_name,
        "spec.host": lambda: spec.get("nodeName") or node_name,
        "spec.serviceAccountName": lambda: spec.get("serviceAccountName", ""),
        "status.hostIP": lambda: hosts[0] if hosts else "",
        "status.hostIPs": lambda: ",".join(hosts),
        "status.podIP": lambda: pod_ips[0] if pod_ips else "",
        "status.podIPs": lambda: ",".join(pod_ips),
    }
    if path in values:
        return values[path]()
    if path in ("spec.restartPolicy", "spec.schedulerName", "status.phase"):
        raise config_problem(f"unsupported fieldPath: {path}")
    raise config_problem(f"field label not supported: {path}")


def resource_value(pod: Mapping, container: Mapping, ref: Mapping, node_allocatable: Mapping[str, str]) -> str:
    """The value of a ``resourceFieldRef``: a missing cpu, memory or ephemeral-storage limit
    is the pod-level limit, else the node's allocatable; rounded up in units of the divisor."""
    name = ref.get("containerName")
    if name:
        spec = pod.get("spec") or {}
        found = [c for c in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]
                 if c.get("name") == name]
        if not found:
            raise config_problem(f"container {name} not found")
        container = found[0]
    resource = ref.get("resource", "")
    divisor = qos.quantity(ref.get("divisor") or 0)
    if divisor == 0:
        divisor = Fraction(1)
    defaults = {k: qos.quantity(v) for k, v in node_allocatable.items()}
    for key, q in qos.pod_level_limits(pod).items():
        if key in defaults and q:
            defaults[key] = q
    limits = qos.container_limits(container)
    for key in ("cpu", "memory", "ephemeral-storage"):
        if not limits.get(key) and key in defaults:
            limits[key] = defaults[key]
    requests = qos.container_requests(container)
    kind, _, res = resource.partition(".")
    if kind not in ("limits", "requests") or not (res in ("cpu", "memory", "ephemeral-storage")
                                                  or res.startswith("hugepages-")):
        raise config_problem(f"unsupported container resource : {resource}")
    amount = (limits if kind == "limits" else requests).get(res, Fraction(0))
    if res == "cpu":  # in millicores, the others in whole units; rounded up
        return str(math.ceil(Fraction(qos.milli_value(amount), qos.milli_value(divisor))))
    return str(math.ceil(Fraction(qos.int_value(amount), qos.int_value(divisor))))


# --- ConfigMaps and Secrets ---------------------------------------------------------------------

class _Sources:
    """ConfigMaps and Secrets of the pod's namespace, each fetched at most once."""

    def __init__(self, namespace: str, get_configmap: Getter, get_secret: Getter):
        self.namespace = namespace
        self._get = {"configmap": get_configmap, "secret": get_secret}
        self._cache: dict[tuple[str, str], dict[str, str] | None] = {}

    async def data(self, kind: str, name: str, optional: bool) -> dict[str, str] | None:
        """The object's data as text (Secret values decoded); None if missing and optional."""
        if (kind, name) not in self._cache:
            obj = await self._get[kind](self.namespace, name)
            self._cache[(kind, name)] = None if obj is None else _decode(kind, obj)
        data = self._cache[(kind, name)]
        if data is None and not optional:
            raise config_problem(f'{kind} "{name}" not found')
        return data


def _decode(kind: str, obj: Mapping) -> dict[str, str]:
    data = obj.get("data") or {}
    if kind == "configmap":
        return dict(data)
    # Secret data is base64 in the API; bytes that are not UTF-8 survive as surrogate escapes.
    return {k: base64.b64decode(v).decode("utf-8", "surrogateescape") for k, v in data.items()}


_KIND_TITLE = {"configmap": "ConfigMap", "secret": "Secret"}


def _valid_name(name: str) -> bool:
    """A usable environment variable name: printable ASCII without "=" (relaxed validation)."""
    return bool(name) and "=" not in name and all(" " <= ch <= "~" for ch in name)


async def container_env(
    pod: Mapping,
    container: Mapping,
    *,
    node_name: str,
    node_ip: str,
    pod_ips: list[str],
    host_ips: list[str],
    get_configmap: Getter,
    get_secret: Getter,
    service_env: Mapping[str, str],
    node_allocatable: Mapping[str, str] | None = None,
    warnings: list[str] | None = None,
) -> list[tuple[str, str]]:
    """The container's environment as (name, value) pairs; see the module docstring.

    ``service_env`` holds the service link variables of the services the pod may see
    (servicelinks chose them by namespace and ``enableServiceLinks``). envFrom keys that are
    not valid variable names are skipped with a message in ``warnings``.
    """
    namespace = (pod.get("metadata") or {}).get("namespace", "")
    sources = _Sources(namespace, get_configmap, get_secret)
    env: dict[str, str] = {}

    for source in container.get("envFrom") or []:
        prefix = source.get("prefix") or ""
        for kind, field in (("configmap", "configMapRef"), ("secret", "secretRef")):
            ref = source.get(field)
            if ref is None:
                continue
            data = await sources.data(kind, ref.get("name", ""), bool(ref.get("optional")))
            invalid = []
            for key, value in (data or {}).items():
                if _valid_name(prefix + key):
                    env[prefix + key] = value
                else:
                    invalid.append(prefix + key)
            if invalid and warnings is not None:
                warnings.append(f"Keys [{', '.join(sorted(invalid))}] from the EnvFrom {field[:-3]} {namespace}/"
                                f"{ref.get('name', '')} were skipped since they are considered invalid "
                                "environment variable names.")
            break

    def lookup(name: str) -> str | None:
        return env[name] if name in env else service_env.get(name)

    for var in container.get("env") or []:
        name = var["name"]
        value = var.get("value") or ""
        source = var.get("valueFrom")
        if value:
            value = expand_with(value, lookup)
        elif source:
            if "fieldRef" in source:
                value = field_value(pod, source["fieldRef"], node_name=node_name, node_ip=node_ip,
                                    pod_ips=list(pod_ips), host_ips=list(host_ips))
            elif "resourceFieldRef" in source:
                value = resource_value(pod, container, source["resourceFieldRef"], node_allocatable or {})
            elif "fileKeyRef" in source:  # EnvFiles: needs the pod's volumes, not supported yet
                volume = source["fileKeyRef"].get("volumeName", "")
                raise config_problem(f'cannot find the volume "{volume}" referenced by FileKeyRef')
            elif "configMapKeyRef" in source or "secretKeyRef" in source:
                kind, ref = (("configmap", source["configMapKeyRef"]) if "configMapKeyRef" in source
                             else ("secret", source["secretKeyRef"]))
                optional = bool(ref.get("optional"))
                data = await sources.data(kind, ref.get("name", ""), optional)
                if data is None:
                    continue
                key = ref.get("key", "")
                if key not in data:
                    if optional:
                        continue
                    raise config_problem(f"couldn't find key {key} in {_KIND_TITLE[kind]} {namespace}/{ref.get('name', '')}")
                value = data[key]
        env.pop(name, None)
        env[name] = value

    result = list(env.items())
    result.extend((k, v) for k, v in service_env.items() if k not in env)
    return result
