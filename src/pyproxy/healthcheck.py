"""kube-proxy's health endpoints: the proxy's own (:10256) and one per Local-policy service.

`ProxyHealth` follows upstream's ProxyHealthServer (pkg/proxy/healthcheck,
v1.36): the agent calls `updated()` once when its sync loop starts (as upstream's
SyncLoop does, in case no sync ever succeeds), `queued()` when a Service or
EndpointSlice change is waiting for a sync, and `updated()` after each successful
sync — per IP family when it runs one loop per family. The proxy is unhealthy while
some IP family has had a change queued for `health_timeout` (upstream:
2 × syncPeriod) or longer since its last update; a family that never synced yet
counts as healthy (starting up). ``/healthz`` also answers 503 while the node is
not eligible (being deleted, or tainted ToBeDeletedByClusterAutoscaler), which
tells cloud load balancers to drain it; ``/livez`` ignores that.

`ServiceHealthServers` serves each externalTrafficPolicy=Local service's
healthCheckNodePort: 200 while the service has local endpoints (and the proxy is
healthy), else 503, so load balancers only send to nodes that hold endpoints.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone

from nodeagent import httpserve, logs

from pyproxy import metrics

log = logs.get(__name__)

TO_BE_DELETED_TAINT = "ToBeDeletedByClusterAutoscaler"
DEFAULT_HEALTH_TIMEOUT = 60.0  # 2 × the default syncPeriod (30s)
_JSON = {"Content-Type": "application/json", "X-Content-Type-Options": "nosniff"}


def go_time(seconds: float | None) -> str:
    """A time as Go's encoding/json writes a time.Time in UTC (RFC 3339 with trimmed nanoseconds)."""
    if seconds is None:
        return "0001-01-01T00:00:00Z"  # Go's zero time
    micros = round(seconds * 1e6)  # a float of epoch seconds holds no more than that
    whole, frac = divmod(micros, 1_000_000)
    text = datetime.fromtimestamp(whole, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    if frac:
        text += "." + f"{frac:06d}".rstrip("0")
    return text + "Z"


def node_is_eligible(node: dict | None) -> bool:
    """Upstream's node eligibility: the Node exists, is not being deleted and not tainted for scale-down."""
    if not node:
        return False
    if (node.get("metadata") or {}).get("deletionTimestamp"):
        return False
    return not any((t or {}).get("key") == TO_BE_DELETED_TAINT for t in (node.get("spec") or {}).get("taints") or [])


class ProxyHealth:
    """The proxy's health as upstream defines it, and its HTTP server."""

    def __init__(self, health_timeout: float = DEFAULT_HEALTH_TIMEOUT, *, clock: Callable[[], float] = time.time):
        self.health_timeout = health_timeout
        self.clock = clock
        self.node_eligible = True  # set by the agent from the Node (see `node_is_eligible()`)
        self._last_updated: dict[str, float] = {}  # per IP family
        self._oldest_queued: dict[str, float] = {}  # per IP family, the oldest change not yet synced

    def queued(self, ip_family: str = "IPv4") -> None:
        """A change that needs a sync arrived."""
        self._oldest_queued.setdefault(ip_family, self.clock())

    def updated(self, ip_family: str = "IPv4") -> None:
        """The rules of `ip_family` now reflect every change queued so far."""
        self._oldest_queued.pop(ip_family, None)
        self._last_updated[ip_family] = self.clock()

    def health(self) -> dict:
        """Upstream's ProxyHealth: healthy, lastUpdated (the newest family's), currentTime, per-family status."""
        now = self.clock()
        status, healthy = {}, True
        for family, last in sorted(self._last_updated.items()):
            queued = self._oldest_queued.get(family)
            ok = queued is None or now - queued < self.health_timeout
            healthy = healthy and ok
            status[family] = {"lastUpdated": last, "healthy": ok}
        last = max(self._last_updated.values(), default=None)
        return {"lastUpdated": last, "currentTime": now, "healthy": healthy, "status": status}

    def healthy(self) -> bool:
        """The proxy's own health, ignoring the node's eligibility (what /livez reports)."""
        return self.health()["healthy"]

    def response(self, path: str) -> httpserve.Response:
        """The answer to GET `path` on the health server."""
        if path not in ("/healthz", "/livez"):
            return httpserve.not_found()
        health = self.health()
        ok = health["healthy"]
        body = {"lastUpdated": health["lastUpdated"], "currentTime": health["currentTime"]}
        if path == "/healthz":
            ok = ok and self.node_eligible
            body["nodeEligible"] = self.node_eligible
        if ok:
            # Upstream keeps the old meaning: a healthy proxy reports a recent lastUpdated.
            body["lastUpdated"] = health["currentTime"]
        body["healthy"] = health["healthy"]
        if health["status"]:
            body["status"] = {family: {"lastUpdated": go_time(s["lastUpdated"]), "healthy": s["healthy"]}
                              for family, s in health["status"].items()}
        body["lastUpdated"], body["currentTime"] = go_time(body["lastUpdated"]), go_time(body["currentTime"])
        code = 200 if ok else 503
        (metrics.PROXY_HEALTHZ_TOTAL if path == "/healthz" else metrics.PROXY_LIVEZ_TOTAL).labels(code=str(code)).inc()
        return code, dict(_JSON), json.dumps(body, separators=(",", ":")).encode()

    async def serve(self, host: str, port: int) -> asyncio.Server:
        """Serve /healthz and /livez (default 0.0.0.0:10256); raises OSError if the address cannot be bound."""
        server = await httpserve.serve_http(host, port, lambda method, path: self.response(path))
        log.info("Serving proxy healthz", address=f"{host}:{port}")
        return server


class _ServiceHealth:
    def __init__(self, namespace: str, name: str, port: int):
        self.namespace, self.name, self.port = namespace, name, port
        self.local_endpoints = 0
        self.server: asyncio.Server | None = None


class ServiceHealthServers:
    """One HTTP server per externalTrafficPolicy=Local service, on its healthCheckNodePort.

    `host` is where to listen: None (every address, the default) or addresses.
    """

    def __init__(self, proxy_health: ProxyHealth | None = None, *, host: str | Sequence[str] | None = None):
        self.proxy_health = proxy_health
        self.host = host
        self._services: dict[tuple[str, str], _ServiceHealth] = {}
        self._failed: set[tuple[str, str, int]] = set()  # bind failures already logged

    @property
    def ports(self) -> dict[tuple[str, str], int]:
        """The health check ports currently served, by (namespace, name)."""
        return {key: svc.port for key, svc in self._services.items()}

    async def sync(self, wanted: Mapping[tuple[str, str], tuple[int, int]]) -> None:
        """Serve exactly `wanted`: (namespace, name) → (healthCheckNodePort, local endpoint count).

        A port that cannot be bound is logged and tried again on the next sync.
        """
        for key, svc in list(self._services.items()):
            if key not in wanted or wanted[key][0] != svc.port:
                log.info("Closing healthcheck", service=f"{key[0]}/{key[1]}", port=svc.port)
                await self._close(svc)
                del self._services[key]
        for key, (port, count) in wanted.items():
            svc = self._services.get(key)
            if svc is None and not 0 < port < 65536:
                log.warning("Ignoring invalid healthCheckNodePort", service=f"{key[0]}/{key[1]}", port=port)
                continue
            if svc is None:
                svc = _ServiceHealth(key[0], key[1], port)
                try:
                    svc.server = await httpserve.serve_http(self.host, port, self._handler(svc))
                except OSError as exc:
                    if (key[0], key[1], port) not in self._failed:
                        self._failed.add((key[0], key[1], port))
                        log.error("Failed to start healthcheck", service=f"{key[0]}/{key[1]}", port=port, err=exc)
                    else:
                        log.debug("Failed to start healthcheck", service=f"{key[0]}/{key[1]}", port=port, err=exc)
                    continue
                self._failed.discard((key[0], key[1], port))
                self._services[key] = svc
                log.info("Opening healthcheck", service=f"{key[0]}/{key[1]}", port=port)
            svc.local_endpoints = count

    async def close(self) -> None:
        """Stop every server."""
        for svc in self._services.values():
            await self._close(svc)
        self._services.clear()

    @staticmethod
    async def _close(svc: _ServiceHealth) -> None:
        if svc.server is not None:
            svc.server.close()
            await svc.server.wait_closed()
            svc.server = None

    def _handler(self, svc: _ServiceHealth):
        def handle(method: str, path: str) -> httpserve.Response:
            count = svc.local_endpoints
            proxy_ok = self.proxy_health.healthy() if self.proxy_health else True
            headers = dict(_JSON, **{"X-Load-Balancing-Endpoint-Weight": str(count)})
            # Upstream's exact text: tab-indented, no trailing newline.
            body = (f'{{\n\t"service": {{\n\t\t"namespace": {json.dumps(svc.namespace)},\n'
                    f'\t\t"name": {json.dumps(svc.name)}\n\t}},\n\t"localEndpoints": {count},\n'
                    f'\t"serviceProxyHealthy": {"true" if proxy_ok else "false"}\n}}')
            return (200 if count and proxy_ok else 503), headers, body.encode()
        return handle
