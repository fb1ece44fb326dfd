"""One reloadable connection to the kube-apiserver.

Credentials change when a client certificate rotates, so loops ask `Api.http` (or `Api.watch_http`) for the
current client on every use instead of keeping one. Both are nodeagent.h2client clients: `http` for the
agent's requests and its own list+watch streams, `watch_http` for the kubelet's many per-object watches, so
that those never crowd the others' connection.

An optional ``observe(method, host, code, seconds)`` hears of every HTTP request to the apiserver when its
response headers arrive (``code`` None: it failed without a response) — what client-go's rest client metrics
count.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from . import kubeconfig, logs
from .h2client import H2Client
from .version import KUBERNETES_VERSION

log = logs.get(__name__)

STRATEGIC_MERGE = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"

Observe = Callable[[str, str, "int | None", float], None]


class Api:
    def __init__(self, kubeconfig_path: Path | None, *, field_manager: str, observe: Observe | None = None):
        self.kubeconfig = kubeconfig_path  # None: in-cluster service account, else $KUBECONFIG or ~/.kube/config
        self.field_manager = field_manager
        self.observe = observe
        self.http = self._connect()
        self._watch_client: H2Client | None = None

    def _connect(self) -> H2Client:
        access = kubeconfig.load(self.kubeconfig)
        # The apiserver names the field manager of our writes after the user agent's first word.
        headers = {**access.headers, "User-Agent": f"{self.field_manager}/{KUBERNETES_VERSION} (linux) pynode"}
        return H2Client(access.server, access.tls, headers, self.observe)

    async def json(self, method: str, path: str, body: dict | None = None,
                   content_type: str = "application/json") -> dict:
        """A request with a JSON body (or none) whose answer must be a success; its JSON.
        An error status raises h2client.HTTPStatusError (is_not_found and is_conflict tell them apart)."""
        response = await self.http.request(method, path, content=None if body is None else json.dumps(body),
                                           headers=None if body is None else {"Content-Type": content_type})
        response.raise_for_status()
        return response.json()

    async def reload(self) -> None:
        """Reconnect with the kubeconfig's current credentials."""
        old, self.http = self.http, self._connect()
        old_watch, self._watch_client = self._watch_client, None
        await old.aclose()
        if old_watch is not None:
            await old_watch.aclose()
        log.info("Reloaded API credentials", kubeconfig=self.kubeconfig)

    async def close(self) -> None:
        await self.http.aclose()
        if self._watch_client is not None:
            await self._watch_client.aclose()

    @property
    def watch_http(self) -> H2Client:
        """The client for the kubelet's many long watches (one per ConfigMap and Secret its pods mount)."""
        if self._watch_client is None:
            self._watch_client = self._connect()
        return self._watch_client


def is_not_found(err: BaseException) -> bool:
    return getattr(err, "status_code", None) == 404


def is_conflict(err: BaseException) -> bool:
    return getattr(err, "status_code", None) == 409
