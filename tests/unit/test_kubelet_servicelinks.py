"""Service link variables: which Services a pod sees and the names upstream gives their variables."""

from __future__ import annotations

import pytest

from pykubelet.pods import envvars
from pykubelet.pods.kuberuntime import RuntimeManager
from pykubelet.pods.servicelinks import ServiceCache, parse, variables


def service(namespace, name, ip, *ports):
    return {"metadata": {"namespace": namespace, "name": name},
            "spec": {"clusterIP": ip, "ports": [dict(p) for p in ports]}}


KUBERNETES = service("default", "kubernetes", "10.96.0.1", {"name": "https", "port": 443, "protocol": "TCP"})
WEB = service("shop", "web-front", "10.96.0.20", {"port": 80}, {"name": "dns-udp", "port": 53, "protocol": "UDP"})


def test_variables_as_upstream_names_them():
    assert variables(parse(WEB)) == {
        "WEB_FRONT_SERVICE_HOST": "10.96.0.20", "WEB_FRONT_SERVICE_PORT": "80",
        "WEB_FRONT_SERVICE_PORT_DNS_UDP": "53",
        "WEB_FRONT_PORT": "tcp://10.96.0.20:80",
        "WEB_FRONT_PORT_80_TCP": "tcp://10.96.0.20:80", "WEB_FRONT_PORT_80_TCP_PROTO": "tcp",
        "WEB_FRONT_PORT_80_TCP_PORT": "80", "WEB_FRONT_PORT_80_TCP_ADDR": "10.96.0.20",
        "WEB_FRONT_PORT_53_UDP": "udp://10.96.0.20:53", "WEB_FRONT_PORT_53_UDP_PROTO": "udp",
        "WEB_FRONT_PORT_53_UDP_PORT": "53", "WEB_FRONT_PORT_53_UDP_ADDR": "10.96.0.20",
    }
    v6 = variables(parse(service("shop", "six", "fd00::10", {"port": 8080})))
    assert v6["SIX_PORT"] == "tcp://[fd00::10]:8080" and v6["SIX_PORT_8080_TCP_ADDR"] == "fd00::10"


def _cache(*objs) -> ServiceCache:
    cache = ServiceCache()
    cache.replace([parse(o) for o in objs])
    return cache


def test_a_pod_sees_its_namespace_and_the_kubernetes_service():
    other = service("elsewhere", "db", "10.96.0.40", {"port": 5432})
    headless = service("shop", "peers", "None", {"port": 7000})
    cache = _cache(KUBERNETES, WEB, other, headless)
    names = {k.split("_SERVICE_HOST")[0] for k in cache.env("shop", True) if k.endswith("_SERVICE_HOST")}
    assert names == {"KUBERNETES", "WEB_FRONT"}
    assert set(cache.env("shop", False)) == set(variables(parse(KUBERNETES)))
    assert set(cache.env("elsewhere", True)) == set(variables(parse(KUBERNETES))) | set(variables(parse(other)))


def test_watch_events_keep_the_cache_current():
    cache = _cache(KUBERNETES)
    cache.update(parse(WEB))
    assert "WEB_FRONT_SERVICE_HOST" in cache.env("shop", True)
    moved = service("shop", "web-front", "10.96.0.21", {"port": 80})
    cache.update(parse(moved))
    assert cache.env("shop", True)["WEB_FRONT_SERVICE_HOST"] == "10.96.0.21"
    cache.remove(parse(moved))
    assert "WEB_FRONT_SERVICE_HOST" not in cache.env("shop", True)


def _manager(services) -> RuntimeManager:
    return RuntimeManager(cri=None, volumes=None, events=None, config=None, node_name="n1", node_ip="10.0.0.2",
                          node_allocatable={}, node_memory=0, get_object=None, services=services)


def test_the_kubelet_refuses_to_build_an_environment_before_the_first_list():
    pod = {"metadata": {"namespace": "shop", "name": "p"}, "spec": {"enableServiceLinks": False}}
    with pytest.raises(envvars.ConfigProblem, match="services have not yet been read at least once"):
        _manager(ServiceCache()).service_env(pod)
    assert _manager(_cache(KUBERNETES, WEB)).service_env(pod) == variables(parse(KUBERNETES))
    assert "WEB_FRONT_PORT" in _manager(_cache(KUBERNETES, WEB)).service_env({**pod, "spec": {}})
