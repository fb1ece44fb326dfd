"""Patch pods/status, only when what we would say differs from what we last said."""

from __future__ import annotations

import json

from nodeagent import logs
from ..apiclient import Api

log = logs.get(__name__)

MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}


def _comparable(status: dict) -> str:
    return json.dumps(status, sort_keys=True)


class StatusManager:
    def __init__(self, api: Api):
        self.api = api
        self._sent: dict[str, str] = {}  # pod uid -> last status patched

    async def set(self, pod: dict, status: dict) -> bool:
        """Patch the pod's status if it changed; True when a patch went out. API errors propagate."""
        meta = pod["metadata"]
        uid, key = meta["uid"], _comparable(status)
        if self._sent.get(uid) == key:
            return False
        # The uid precondition keeps a status from landing on a newer pod of the same name.
        body = {"metadata": {"uid": uid}, "status": status}
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status"
        response = await self.api.http.patch(path, content=json.dumps(body), headers=MERGE_PATCH)
        if response.status_code in (404, 409):
            log.info("Pod gone or replaced; status not updated", pod=f"{meta['namespace']}/{meta['name']}")
            return False
        response.raise_for_status()
        self._sent[uid] = key
        return True

    def forget(self, uid: str) -> None:
        self._sent.pop(uid, None)

    async def delete_pod(self, pod: dict) -> None:
        """Delete the pod object with grace period 0 once it is fully terminated, as upstream does."""
        meta = pod["metadata"]
        await self.api.delete_pod_now(meta["namespace"], meta["name"], meta["uid"])
        self.forget(meta["uid"])
        log.info("Deleted pod from the API", pod=f"{meta['namespace']}/{meta['name']}")

