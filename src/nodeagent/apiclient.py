"""One reloadable connection to the kube-apiserver.

Credentials change when a client certificate rotates, so loops ask `Api.client`
(or `Api.http`) for the current client on every use instead of keeping one.
"""

from __future__ import annotations

from pathlib import Path

import httpx2
from lightkube import AsyncClient, KubeConfig

from . import logs

log = logs.get(__name__)

REQUEST_TIMEOUT = 10.0


class Api:
    def __init__(self, kubeconfig: Path | None, *, field_manager: str):
        self.kubeconfig = kubeconfig  # None: in-cluster service account, else $KUBECONFIG or ~/.kube/config
        self.field_manager = field_manager
        self.client = self._connect()

    def _connect(self) -> AsyncClient:
        config = KubeConfig.from_file(str(self.kubeconfig)) if self.kubeconfig else KubeConfig.from_env()
        return AsyncClient(config=config, field_manager=self.field_manager,
                           timeout=httpx2.Timeout(REQUEST_TIMEOUT))

    async def reload(self) -> None:
        """Reconnect with the kubeconfig's current credentials."""
        old, self.client = self.client, self._connect()
        await old.close()
        log.info("Reloaded API credentials", kubeconfig=self.kubeconfig)

    async def close(self) -> None:
        await self.client.close()

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
