"""Container environments: values, $(VAR) expansion, downward API, ConfigMaps, Secrets, services."""

from __future__ import annotations

import asyncio
import base64

import pytest

from pykubelet.pods.envvars import ConfigProblem, container_env, expand

# --- expand ----------------------------------------------------------------------------------------

ENV = {"A": "a", "B": "b", "EMPTY": "", "DOLLAR": "$(A)"}


@pytest.mark.parametrize("text, expected", [
    ("plain", "plain"),
    ("$(A)", "a"),
    ("x$(A)y$(B)z", "xaybz"),
    ("$(A)$(B)", "ab"),
    ("$(EMPTY)", ""),
    ("$(UNKNOWN)", "$(UNKNOWN)"),  # unknown references stay literal
    ("$$(A)", "$(A)"),  # $$ escapes
    ("$$", "$"),
    ("$$$(A)", "$a"),
    ("$$$$", "$$"),
    ("$(A", "$(A"),  # unterminated
    ("$(", "$("),
    ("$", "$"),
    ("a$", "a$"),
    ("$A", "$A"),  # only $( starts a reference
    ("$x$(A)", "$xa"),
    ("$()", "$()"),  # the empty name is unknown
    ("$(DOLLAR)", "$(A)"),  # values are not expanded again
    ("é$(A)ü", "éaü"),
    ("$(A)(B)", "a(B)"),
])
def test_expand(text, expected):
    assert expand(text, ENV) == expected


# --- container_env ---------------------------------------------------------------------------------

def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


CONFIGMAPS = {
    "cfg": {"metadata": {"name": "cfg"}, "data": {"HOST": "db", "PORT": "5432"}},
    "empty": {"metadata": {"name": "empty"}},
}
SECRETS = {
    "sec": {"metadata": {"name": "sec"}, "data": {"PASSWORD": b64("hunter2"), "TOKEN": b64("t0k")}},
}


class Store:
    """Async getters over dicts, counting calls."""

    def __init__(self, configmaps=CONFIGMAPS, secrets=SECRETS):
        self.configmaps, self.secrets, self.calls = configmaps, secrets, []

    async def get_configmap(self, namespace, name):
        self.calls.append(("configmap", namespace, name))
        return self.configmaps.get(name)

    async def get_secret(self, namespace, name):
        self.calls.append(("secret", namespace, name))
        return self.secrets.get(name)


def make_pod(container, **spec):
    return {
        "metadata": {"name": "web", "namespace": "ns1", "uid": "u-1", "labels": {"app": "web", "tier": "fe"},
                     "annotations": {"example.com/owner": "me"}},
        "spec": {"nodeName": "node-a", "serviceAccountName": "sa", "containers": [container], **spec},
    }


def run(container, *, store=None, service_env=None, warnings=None, allocatable=None, **spec):
    store = store or Store()
    p = make_pod(container, **spec)
    return asyncio.run(container_env(
        p, container, node_name="node-a", node_ip="10.0.0.5", pod_ips=["10.1.0.7", "fd00::7"],
        host_ips=["10.0.0.5", "fd00::5"], get_configmap=store.get_configmap, get_secret=store.get_secret,
        service_env=service_env or {}, node_allocatable=allocatable or {"cpu": "2", "memory": "4Gi",
                                                                        "ephemeral-storage": "10Gi"},
        warnings=warnings))


def env_of(*entries, **extra):
    return {"name": "c", "image": "busybox", "env": list(entries), **extra}


def problem(container, **kwargs) -> ConfigProblem:
    with pytest.raises(ConfigProblem) as caught:
        run(container, **kwargs)
    assert caught.value.reason == "CreateContainerConfigError"
    return caught.value


def test_plain_values_in_order():
    assert run(env_of({"name": "B", "value": "2"}, {"name": "A", "value": "1"}, {"name": "E"})) == [
        ("B", "2"), ("A", "1"), ("E", "")]


@pytest.mark.parametrize("entries, expected", [
    ([{"name": "A", "value": "x"}, {"name": "B", "value": "$(A)-y"}], {"B": "x-y"}),
    ([{"name": "B", "value": "$(A)-y"}, {"name": "A", "value": "x"}], {"B": "$(A)-y"}),  # only earlier ones
    ([{"name": "A", "value": "x"}, {"name": "B", "value": "$$(A)"}], {"B": "$(A)"}),
    ([{"name": "B", "value": "$(NOPE)"}], {"B": "$(NOPE)"}),
    ([{"name": "A", "value": "1"}, {"name": "A", "value": "$(A)2"}], {"A": "12"}),  # redefinition sees the old one
    ([{"name": "B", "value": "$(SVC_SERVICE_HOST)"}], {"B": "10.96.0.20"}),  # service variables
    ([{"name": "SVC_SERVICE_HOST", "value": "mine"}, {"name": "B", "value": "$(SVC_SERVICE_HOST)"}], {"B": "mine"}),
])
def test_value_expansion(entries, expected):
    env = dict(run(env_of(*entries), service_env={"SVC_SERVICE_HOST": "10.96.0.20"}))
    assert {k: env[k] for k in expected} == expected


def field(path, **extra):
    return {"name": "V", "valueFrom": {"fieldRef": {"fieldPath": path, **extra}}}


@pytest.mark.parametrize("path, expected", [
    ("metadata.name", "web"),
    ("metadata.namespace", "ns1"),
    ("metadata.uid", "u-1"),
    ("metadata.labels['app']", "web"),
    ("metadata.labels['missing']", ""),
    ("metadata.annotations['example.com/owner']", "me"),
    ("metadata.labels", 'app="web"\ntier="fe"'),
    ("spec.nodeName", "node-a"),
    ("spec.host", "node-a"),
    ("spec.serviceAccountName", "sa"),
    ("status.hostIP", "10.0.0.5"),
    ("status.hostIPs", "10.0.0.5,fd00::5"),
    ("status.podIP", "10.1.0.7"),
    ("status.podIPs", "10.1.0.7,fd00::7"),
])
def test_field_refs(path, expected):
    assert run(env_of(field(path, apiVersion="v1"))) == [("V", expected)]
    assert run(env_of(field(path))) == [("V", expected)]  # apiVersion defaults to v1


@pytest.mark.parametrize("path, extra, message", [
    ("spec.bogus", {}, "field label not supported: spec.bogus"),
    ("status.phase", {}, "unsupported fieldPath: status.phase"),
    ("spec.nodeName['x']", {}, "field label does not support subscript: spec.nodeName['x']"),
    ("metadata.labels['bad key!']", {}, "invalid key subscript in metadata.labels['bad key!']"),
    ("metadata.name", {"apiVersion": "v2"}, "unsupported pod version: v2"),
])
def test_bad_field_refs(path, extra, message):
    assert str(problem(env_of(field(path, **extra)))).startswith(message)


def resource(res, divisor=None, container_name=None):
    ref = {"resource": res}
    if divisor:
        ref["divisor"] = divisor
    if container_name:
        ref["containerName"] = container_name
    return {"name": "R", "valueFrom": {"resourceFieldRef": ref}}


LIMITED = {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"cpu": "1500m", "memory": "128Mi"}}


@pytest.mark.parametrize("resources, ref, expected", [
    (LIMITED, resource("limits.cpu"), "2"),  # rounded up to whole cores
    (LIMITED, resource("limits.cpu", "1m"), "1500"),
    (LIMITED, resource("requests.cpu", "1m"), "250"),
    (LIMITED, resource("requests.cpu"), "1"),
    (LIMITED, resource("limits.memory"), str(128 * 2**20)),
    (LIMITED, resource("limits.memory", "1Mi"), "128"),
    (LIMITED, resource("requests.memory", "1Mi"), "64"),
    (LIMITED, resource("requests.memory", "1Gi"), "1"),
    ({}, resource("limits.cpu"), "2"),  # node allocatable
    ({}, resource("limits.memory", "1Mi"), "4096"),
    ({}, resource("limits.ephemeral-storage", "1Gi"), "10"),
    ({}, resource("requests.cpu"), "0"),
    ({}, resource("requests.ephemeral-storage"), "0"),
    ({"limits": {"hugepages-2Mi": "4Mi"}}, resource("limits.hugepages-2Mi", "1Mi"), "4"),
    (LIMITED, resource("limits.cpu", "1m", container_name="c"), "1500"),
])
def test_resource_field_refs(resources, ref, expected):
    assert run(env_of(ref, resources=resources)) == [("R", expected)]


def test_resource_field_ref_defaults_to_pod_level_limit():
    container = env_of(resource("limits.memory", "1Mi"))
    assert run(container, resources={"limits": {"memory": "256Mi"}}) == [("R", "256")]


@pytest.mark.parametrize("ref, message", [
    (resource("limits.gpu"), "unsupported container resource : limits.gpu"),
    (resource("limits.cpu", container_name="other"), "container other not found"),
])
def test_bad_resource_field_refs(ref, message):
    assert str(problem(env_of(ref))) == message


def cm_key(name, key, optional=None):
    ref = {"name": name, "key": key}
    if optional is not None:
        ref["optional"] = optional
    return {"name": "K", "valueFrom": {"configMapKeyRef": ref}}


def secret_key(name, key, optional=None):
    ref = {"name": name, "key": key}
    if optional is not None:
        ref["optional"] = optional
    return {"name": "K", "valueFrom": {"secretKeyRef": ref}}


@pytest.mark.parametrize("entry, expected", [
    (cm_key("cfg", "HOST"), [("K", "db")]),
    (cm_key("cfg", "HOST", optional=True), [("K", "db")]),
    (cm_key("cfg", "NOPE", optional=True), []),
    (cm_key("missing", "HOST", optional=True), []),
    (secret_key("sec", "PASSWORD"), [("K", "hunter2")]),
    (secret_key("sec", "NOPE", optional=True), []),
    (secret_key("missing", "PASSWORD", optional=True), []),
])
def test_key_refs(entry, expected):
    assert run(env_of(entry)) == expected


@pytest.mark.parametrize("entry, message", [
    (cm_key("missing", "HOST"), 'configmap "missing" not found'),
    (cm_key("missing", "HOST", optional=False), 'configmap "missing" not found'),
    (cm_key("cfg", "NOPE"), "couldn't find key NOPE in ConfigMap ns1/cfg"),
    (cm_key("empty", "NOPE"), "couldn't find key NOPE in ConfigMap ns1/empty"),
    (secret_key("missing", "PASSWORD"), 'secret "missing" not found'),
    (secret_key("sec", "NOPE"), "couldn't find key NOPE in Secret ns1/sec"),
    ({"name": "F", "valueFrom": {"fileKeyRef": {"volumeName": "vol", "path": "env", "key": "K"}}},
     'cannot find the volume "vol" referenced by FileKeyRef'),
])
def test_bad_key_refs(entry, message):
    assert str(problem(env_of(entry))) == message


def test_secret_values_need_not_be_utf8():
    secrets = {"bin": {"data": {"RAW": base64.b64encode(b"\xff\x00ok").decode()}}}
    env = run(env_of(secret_key("bin", "RAW")), store=Store(secrets=secrets))
    assert env[0][1].encode("utf-8", "surrogateescape") == b"\xff\x00ok"


@pytest.mark.parametrize("env_from, expected", [
    ([{"configMapRef": {"name": "cfg"}}], [("HOST", "db"), ("PORT", "5432")]),
    ([{"configMapRef": {"name": "cfg"}, "prefix": "DB_"}], [("DB_HOST", "db"), ("DB_PORT", "5432")]),
    ([{"secretRef": {"name": "sec"}}], [("PASSWORD", "hunter2"), ("TOKEN", "t0k")]),
    ([{"configMapRef": {"name": "missing", "optional": True}}], []),
    ([{"secretRef": {"name": "missing", "optional": True}}], []),
    ([{"configMapRef": {"name": "empty"}}], []),
    # a later source overrides an earlier one
    ([{"configMapRef": {"name": "cfg"}}, {"secretRef": {"name": "sec"}, "prefix": "P"},
      {"configMapRef": {"name": "cfg"}, "prefix": "PP"}],
     [("HOST", "db"), ("PORT", "5432"), ("PPASSWORD", "hunter2"), ("PTOKEN", "t0k"), ("PPHOST", "db"),
      ("PPPORT", "5432")]),
])
def test_env_from(env_from, expected):
    assert run({"name": "c", "envFrom": env_from}) == expected


@pytest.mark.parametrize("env_from, message", [
    ([{"configMapRef": {"name": "missing"}}], 'configmap "missing" not found'),
    ([{"secretRef": {"name": "missing", "optional": False}}], 'secret "missing" not found'),
])
def test_bad_env_from(env_from, message):
    assert str(problem({"name": "c", "envFrom": env_from})) == message


def test_env_overrides_env_from_and_can_use_it():
    container = {"name": "c", "envFrom": [{"configMapRef": {"name": "cfg"}}],
                 "env": [{"name": "PORT", "value": "1"}, {"name": "URL", "value": "db://$(HOST):$(PORT)"}]}
    assert run(container) == [("HOST", "db"), ("PORT", "1"), ("URL", "db://db:1")]


def test_invalid_env_from_keys_are_skipped_with_a_warning():
    configmaps = {"odd": {"data": {"GOOD": "1", "BAD=KEY": "2", "TAB\tKEY": "3"}}}
    warnings = []
    env = run({"name": "c", "envFrom": [{"configMapRef": {"name": "odd"}}]}, store=Store(configmaps=configmaps),
              warnings=warnings)
    assert env == [("GOOD", "1")]
    assert warnings == ["Keys [BAD=KEY, TAB\tKEY] from the EnvFrom configMap ns1/odd were skipped since they are "
                        "considered invalid environment variable names."]


def test_each_object_is_fetched_once():
    store = Store()
    container = {"name": "c", "envFrom": [{"configMapRef": {"name": "cfg"}}, {"configMapRef": {"name": "cfg"}}],
                 "env": [cm_key("cfg", "HOST"), secret_key("sec", "TOKEN"), secret_key("sec", "PASSWORD")]}
    run(container, store=store)
    assert sorted(store.calls) == [("configmap", "ns1", "cfg"), ("secret", "ns1", "sec")]


SERVICES = {
    "KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443", "KUBERNETES_SERVICE_PORT_HTTPS": "443",
    "KUBERNETES_PORT": "tcp://10.96.0.1:443", "KUBERNETES_PORT_443_TCP": "tcp://10.96.0.1:443",
    "KUBERNETES_PORT_443_TCP_PROTO": "tcp", "KUBERNETES_PORT_443_TCP_PORT": "443",
    "KUBERNETES_PORT_443_TCP_ADDR": "10.96.0.1",
    "WEB_SERVICE_HOST": "10.96.0.20", "WEB_SERVICE_PORT": "80", "WEB_PORT": "tcp://10.96.0.20:80",
    "KUBERNETES_DASHBOARD_SERVICE_HOST": "10.96.0.30",
}


def test_service_variables_come_last_and_lose_to_the_container():
    env = run(env_of({"name": "WEB_SERVICE_HOST", "value": "mine"}), service_env=SERVICES)
    assert env[0] == ("WEB_SERVICE_HOST", "mine")
    assert [k for k, _ in env].count("WEB_SERVICE_HOST") == 1
    assert [k for k, _ in env[1:]] == [k for k in SERVICES if k != "WEB_SERVICE_HOST"]
