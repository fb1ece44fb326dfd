"""kube-proxy's health endpoints, over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import logging
import socket

from tests.unit.httpget import get
from pyproxy import metrics
from pyproxy.healthcheck import ProxyHealth, ServiceHealthServers, go_time, node_is_eligible


class Clock:
    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def port_of(server: asyncio.Server) -> int:
    return server.sockets[0].getsockname()[1]


def free_ports(n: int) -> list[int]:
    """Distinct ports that were free a moment ago (held together so none repeats)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def test_go_time_matches_encoding_json():
    assert go_time(None) == "0001-01-01T00:00:00Z"
    assert go_time(1_700_000_000.0) == "2023-11-14T22:13:20Z"
    assert go_time(1_700_000_000.25) == "2023-11-14T22:13:20.25Z"


def test_node_eligibility_as_upstream():
    assert node_is_eligible({"metadata": {"name": "n"}, "spec": {}})
    assert not node_is_eligible(None)
    assert not node_is_eligible({"metadata": {"deletionTimestamp": "2024-01-01T00:00:00Z"}})
    assert not node_is_eligible({"spec": {"taints": [{"key": "ToBeDeletedByClusterAutoscaler",
                                                      "effect": "NoSchedule"}]}})
    assert node_is_eligible({"spec": {"taints": [{"key": "node.kubernetes.io/unschedulable"}]}})


def test_health_follows_the_oldest_unsynced_change():
    clock = Clock()
    h = ProxyHealth(60, clock=clock)
    assert h.healthy()  # starting up
    h.queued()
    clock.now += 120
    assert h.healthy()  # never synced yet: still starting up, as upstream
    h.updated()
    assert h.healthy()
    h.queued()
    clock.now += 30
    h.queued()  # a later change does not restart the clock
    clock.now += 29.9
    assert h.healthy()
    clock.now += 0.1
    assert not h.healthy()  # 60s since the oldest pending change
    h.updated()
    assert h.healthy()


def test_one_late_family_makes_the_proxy_unhealthy():
    clock = Clock()
    h = ProxyHealth(60, clock=clock)
    h.updated("IPv4")
    h.updated("IPv6")
    h.queued("IPv6")
    clock.now += 61
    health = h.health()
    assert not health["healthy"]
    assert health["status"] == {"IPv4": {"lastUpdated": clock.now - 61, "healthy": True},
                                "IPv6": {"lastUpdated": clock.now - 61, "healthy": False}}


def test_healthz_and_livez_over_http():
    async def scenario():
        clock = Clock()
        h = ProxyHealth(60, clock=clock)
        server = await h.serve("127.0.0.1", 0)
        port = port_of(server)
        try:
            h.updated()
            synced = clock.now
            clock.now += 5
            status, headers, body = await get(port, "/healthz")
            assert status == 200
            assert headers["Content-Type"] == "application/json"
            assert headers["X-Content-Type-Options"] == "nosniff"
            # Upstream's JSON, field order included; a healthy proxy reports lastUpdated = now.
            assert json.loads(body) == {"lastUpdated": go_time(clock.now), "currentTime": go_time(clock.now),
                                        "nodeEligible": True, "healthy": True,
                                        "status": {"IPv4": {"lastUpdated": go_time(synced), "healthy": True}}}
            assert list(json.loads(body)) == ["lastUpdated", "currentTime", "nodeEligible", "healthy", "status"]

            h.node_eligible = False  # /healthz fails, /livez does not
            status, _, body = await get(port, "/healthz?verbose")
            assert status == 503 and json.loads(body)["nodeEligible"] is False
            assert json.loads(body)["healthy"] is True
            status, _, body = await get(port, "/livez")
            assert status == 200 and "nodeEligible" not in json.loads(body)

            h.node_eligible = True
            h.queued()
            clock.now += 61
            status, _, body = await get(port, "/healthz")
            assert status == 503
            assert json.loads(body)["lastUpdated"] == go_time(synced)  # the real one when unhealthy
            status, _, _ = await get(port, "/livez")
            assert status == 503

            status, headers, body = await get(port, "/metrics")
            assert (status, body) == (404, b"404 page not found\n")
        finally:
            server.close()
            await server.wait_closed()

    def served(name: str) -> float:
        return metrics.new_registry("iptables").get_sample_value(name, {"code": "503"}) or 0

    before = served("kubeproxy_proxy_healthz_total")
    asyncio.run(scenario())
    assert served("kubeproxy_proxy_healthz_total") == before + 2
    assert served("kubeproxy_proxy_livez_total") >= 1


def test_service_health_servers_open_update_and_close():
    async def scenario():
        clock = Clock()
        proxy = ProxyHealth(60, clock=clock)
        servers = ServiceHealthServers(proxy, host="127.0.0.1")
        a, b, c = free_ports(3)
        try:
            await servers.sync({("ns", "web"): (a, 2), ("ns", "api"): (b, 0)})
            assert servers.ports == {("ns", "web"): a, ("ns", "api"): b}

            status, headers, body = await get(a, "/anything")
            assert status == 200
            assert headers["Content-Type"] == "application/json"
            assert headers["X-Content-Type-Options"] == "nosniff"
            assert headers["X-Load-Balancing-Endpoint-Weight"] == "2"
            assert body == (b'{\n\t"service": {\n\t\t"namespace": "ns",\n\t\t"name": "web"\n\t},\n'
                            b'\t"localEndpoints": 2,\n\t"serviceProxyHealthy": true\n}')
            status, headers, body = await get(b)
            assert status == 503 and json.loads(body)["localEndpoints"] == 0
            assert headers["X-Load-Balancing-Endpoint-Weight"] == "0"

            # Counts change in place; a moved port is reopened; a removed service is closed.
            await servers.sync({("ns", "web"): (a, 0), ("ns", "api"): (c, 1)})
            assert servers.ports == {("ns", "web"): a, ("ns", "api"): c}
            assert (await get(a))[0] == 503
            assert (await get(c))[0] == 200
            await refused(b)

            # An unhealthy proxy fails every service check, whatever its endpoints.
            proxy.updated()
            proxy.queued()
            clock.now += 61
            status, _, body = await get(c)
            assert status == 503 and json.loads(body)["serviceProxyHealthy"] is False

            await servers.sync({("ns", "bad"): (0, 1)})  # no port: nothing to open
            assert servers.ports == {}
            await refused(a)
            await refused(c)
        finally:
            await servers.close()

    asyncio.run(scenario())


async def refused(port: int) -> None:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return
    writer.close()
    raise AssertionError(f"port {port} still open")


def test_a_port_that_cannot_be_bound_is_logged_once_and_retried(caplog):
    caplog.set_level(logging.DEBUG)

    async def scenario():
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        servers = ServiceHealthServers(host="127.0.0.1")
        try:
            await servers.sync({("ns", "web"): (port, 1)})
            await servers.sync({("ns", "web"): (port, 1)})
            assert servers.ports == {}
            busy.close()
            await servers.sync({("ns", "web"): (port, 1)})  # free now: opened on the next sync
            assert servers.ports == {("ns", "web"): port}
            assert (await get(port))[0] == 200  # no ProxyHealth given: the proxy counts as healthy
        finally:
            busy.close()
            await servers.close()
        return port

    port = asyncio.run(scenario())
    errors = [r for r in caplog.records if r.getMessage() == "Failed to start healthcheck"
              and r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].kv["service"] == "ns/web" and errors[0].kv["port"] == port
