"""One reloadable connection to the kube-apiserver.

Credentials change when a client certificate rotates, so loops ask `Api.client`
(or `Api.http`) for the current client on every use instead of keeping one.

An optional ``observe(method, host, code, seconds)`` hears of every HTTP request to the
apiserver, lightkube's and our own alike, when its response headers arrive (``code``
None: it failed without a response) — what client-go's rest client metrics count.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx2
from lightkube import AsyncClient, KubeConfig
from lightkube.config import client_adapter

from . import logs
from .h2watch import H2Client

log = logs.get(__name__)

REQUEST_TIMEOUT = 10.0

Observe = Callable[[str, str, "int | None", float], None]


class ObservedTransport(httpx2.AsyncBaseTransport):
    """An httpx transport that tells `observe` of each request it carries."""

    def __init__(self, inner: httpx2.AsyncBaseTransport, observe: Observe):
        self.inner = inner
        self.observe = observe

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        host = request.url.netloc.decode("ascii", errors="replace")
        started = time.monotonic()
        try:
            response = await self.inner.handle_async_request(request)
        except BaseException:
            self.observe(request.method, host, None, time.monotonic() - started)
            raise
        self.observe(request.method, host, response.status_code, time.monotonic() - started)
        return response

    async def __aenter__(self):
        await self.inner.__aenter__()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.inner.__aexit__(*exc)

    async def aclose(self) -> None:
        await self.inner.aclose()


class Api:
    def __init__(self, kubeconfig: Path | None, *, field_manager: str, observe: Observe | None = None):
        self.kubeconfig = kubeconfig  # None: in-cluster service account, else $KUBECONFIG or ~/.kube/config
        self.field_manager = field_manager
        self.observe = observe
        self.client = self._connect()
        self._watch_client: H2Client | None = None

    def _connect(self) -> AsyncClient:
        config = KubeConfig.from_file(str(self.kubeconfig)) if self.kubeconfig else KubeConfig.from_env()
        client = AsyncClient(config=config, field_manager=self.field_manager,
                             timeout=httpx2.Timeout(REQUEST_TIMEOUT))
        http = client._client._client
        # httpx keeps 20 idle connections of the 100 it may open; a burst (status, events and tokens of 30
        # pods starting at once) would then close and reopen TLS connections over and over: keep them all.
        pool = getattr(http._transport, "_pool", None)
        if pool is not None:
            pool._max_keepalive_connections = pool._max_connections
        if self.observe is not None:
            # httpx builds its transport (TLS from the kubeconfig) itself; we wrap the one it built, and any
            # proxy transport it mounted from the environment.
            http._transport = ObservedTransport(http._transport, self.observe)
            http._mounts = {pattern: ObservedTransport(transport, self.observe) if transport is not None else None
                            for pattern, transport in http._mounts.items()}
        return client

    async def reload(self) -> None:
        """Reconnect with the kubeconfig's current credentials."""
        old, self.client = self.client, self._connect()
        old_watch, self._watch_client = self._watch_client, None
        await old.close()
        if old_watch is not None:
            await old_watch.aclose()
        log.info("Reloaded API credentials", kubeconfig=self.kubeconfig)

    async def close(self) -> None:
        await self.client.close()
        if self._watch_client is not None:
            await self._watch_client.aclose()

    @property
    def watch_http(self) -> H2Client:
        """A client for many long watches (the kubelet's, one per ConfigMap and Secret its pods mount): HTTP/2,
        so that they are streams of one connection (nodeagent/h2watch.py), apart from the requests on `http`."""
        if self._watch_client is None:
            config = KubeConfig.from_file(str(self.kubeconfig)) if self.kubeconfig else KubeConfig.from_env()
            single = config.get()
            tls = client_adapter.verify_cluster(single.cluster, single.user, single.abs_file)
            token = single.user.token if single.user else None
            self._watch_client = H2Client(single.cluster.server, tls,
                                          {"Authorization": f"Bearer {token}"} if token else None, self.observe)
        return self._watch_client

    @property
    def http(self) -> httpx2.AsyncClient:
        """The authenticated HTTP client under lightkube, for what lightkube lacks (watch bookmarks).

        lightkube keeps it at AsyncClient._client._client; the version range in
        pyproject.toml pins that layout.
        """
        return self.client._client._client


def is_not_found(err: BaseException) -> bool:
    return getattr(getattr(err, "status", None), "code", None) == 404


def is_conflict(err: BaseException) -> bool:
    return getattr(getattr(err, "status", None), "code", None) == 409
