"""One reloadable connection to the kube-apiserver.

The node's credentials change when its client certificate rotates, so the
loops ask `Api.client` for the current client on every use instead of keeping one.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx2
from lightkube import AsyncClient, KubeConfig

from . import logs

log = logs.get(__name__)

REQUEST_TIMEOUT = 10.0


class Api:
    def __init__(self, kubeconfig: Path):
        self.kubeconfig = kubeconfig
        self.client = self._connect()

    def _connect(self) -> AsyncClient:
        return AsyncClient(config=KubeConfig.from_file(str(self.kubeconfig)), field_manager="pykubelet",
                           timeout=httpx2.Timeout(REQUEST_TIMEOUT))

    async def reload(self) -> None:
        """Reconnect with the kubeconfig's current credentials."""
        old, self.client = self.client, self._connect()
        await old.close()
        log.info("Reloaded API credentials", kubeconfig=self.kubeconfig)

    async def close(self) -> None:
        await self.client.close()

    async def delete_pod_now(self, namespace: str, name: str, uid: str | None = None) -> None:
        """Delete a pod with grace period 0 (optionally only if it still has `uid`); gone already is fine."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0}
        if uid:
            body["preconditions"] = {"uid": uid}
        response = await self.http.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}",
                                           content=json.dumps(body), headers={"Content-Type": "application/json"})
        if response.status_code not in (404, 409):
            response.raise_for_status()

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
