"""pykubelet's connection to the kube-apiserver: the shared reloadable `Api` plus what only the kubelet does."""

from __future__ import annotations

import json
from pathlib import Path

from nodeagent import apiclient


class Api(apiclient.Api):
    def __init__(self, kubeconfig: Path, observe: apiclient.Observe | None = None):
        super().__init__(kubeconfig, field_manager="pykubelet", observe=observe)

    async def delete_pod_now(self, namespace: str, name: str, uid: str | None = None) -> None:
        """Delete a pod with grace period 0 (optionally only if it still has `uid`); gone already is fine."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0}
        if uid:
            body["preconditions"] = {"uid": uid}
        response = await self.http.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}",
                                           content=json.dumps(body), headers={"Content-Type": "application/json"})
        if response.status_code not in (404, 409):
            response.raise_for_status()
