"""The node's heartbeat: a Lease in kube-node-lease, renewed every leaseDurationSeconds/4."""

from __future__ import annotations

import asyncio

from nodeagent import logs
from nodeagent.apiclient import is_conflict, is_not_found

from .. import timestamps
from ..apiclient import Api

log = logs.get(__name__)

NAMESPACE = "kube-node-lease"
LEASES = f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases"
FIRST_RETRY = 0.2  # upstream's lease controller starts its back-off here
# ... and caps it at 7 s, so its Lease can come back up to 7 s after the apiserver does. Ours stops doubling at
# 1.6 s: renewed within ~2 s of the return, for one refused connection every 1.6 s while the apiserver is away.
MAX_RETRY = 1.6


class NodeLease:
    def __init__(self, api: Api, node_name: str, node_uid: str, duration_seconds: int):
        self.api = api
        self.node_name = node_name
        self.node_uid = node_uid
        self.duration = duration_seconds
        self.interval = duration_seconds / 4
        self._lease: dict | None = None  # last written, to update without a GET first
        self.renewals = 0

    def _desired(self, base: dict | None) -> dict:
        lease = base or {
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": self.node_name, "namespace": NAMESPACE},
            "spec": {},
        }
        lease["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "Node", "name": self.node_name,
                                                 "uid": self.node_uid}]
        lease["spec"].update({"holderIdentity": self.node_name, "leaseDurationSeconds": self.duration,
                              "renewTime": timestamps.micro_now()})
        return lease

    async def renew(self) -> None:
        if self._lease is None:
            try:
                self._lease = await self.api.json("GET", f"{LEASES}/{self.node_name}")
            except Exception as err:
                if not is_not_found(err):
                    raise
                self._lease = await self.api.json("POST", LEASES, self._desired(None))
                self.renewals += 1
                log.info("Created node lease", lease=f"{NAMESPACE}/{self.node_name}")
                return
        try:
            self._lease = await self.api.json("PUT", f"{LEASES}/{self.node_name}", self._desired(self._lease))
            self.renewals += 1
        except Exception as err:
            self._lease = None  # read it again next time
            if not (is_conflict(err) or is_not_found(err)):
                raise

    async def run(self) -> None:
        """Renew forever; after a failure retry sooner (FIRST_RETRY doubling up to MAX_RETRY)."""
        retry = FIRST_RETRY
        while True:
            try:
                await self.renew()
                retry = FIRST_RETRY
                await asyncio.sleep(self.interval)
            except Exception as err:  # noqa: BLE001 - an unreachable apiserver must not stop the heartbeat
                log.warning("Failed to renew node lease", node=self.node_name, err=err, retryIn=f"{retry:.1f}s")
                await asyncio.sleep(retry)
                retry = min(retry * 2, MAX_RETRY, self.interval)
