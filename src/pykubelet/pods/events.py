"""Events about pods, as the upstream kubelet records them (source component "kubelet").

Posting never blocks a pod sync: events go through a bounded queue to one
sender task. A repeat of the same event (same object, reason and message)
within ten minutes bumps the existing Event's count instead of making a new one.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time

from nodeagent import logs

from .. import timestamps
from ..apiclient import Api

log = logs.get(__name__)

NORMAL, WARNING = "Normal", "Warning"
REPEAT_WINDOW = 600.0
QUEUE_SIZE = 1000


class Recorder:
    def __init__(self, api: Api, node_name: str):
        self.api = api
        self.node_name = node_name
        self.queue: asyncio.Queue = asyncio.Queue(QUEUE_SIZE)
        self._seen: dict[tuple, tuple[str, int, float]] = {}  # key -> (event name, count, monotonic time)

    def record(self, pod: dict, kind: str, reason: str, message: str, container: str | None = None,
               field_path: str | None = None) -> None:
        meta = pod["metadata"]
        if container and not field_path:
            field_path = f"spec.containers{{{container}}}"
        involved = {"kind": "Pod", "apiVersion": "v1", "namespace": meta["namespace"], "name": meta["name"],
                    "uid": meta["uid"]}
        if field_path:
            involved["fieldPath"] = field_path
        try:
            self.queue.put_nowait((involved, kind, reason, message))
        except asyncio.QueueFull:
            log.warning("Event queue full; dropping event", reason=reason, pod=f"{meta['namespace']}/{meta['name']}")

    def record_node(self, kind: str, reason: str, message: str) -> None:
        """An event about this node (kept, as upstream's, in the default namespace)."""
        involved = {"kind": "Node", "apiVersion": "v1", "name": self.node_name, "uid": self.node_name}
        try:
            self.queue.put_nowait((involved, kind, reason, message))
        except asyncio.QueueFull:
            log.warning("Event queue full; dropping event", reason=reason, node=self.node_name)

    def forget(self, uid: str) -> None:
        """The pod is gone: its events will not repeat, so what deduplicates them need not be kept."""
        self._seen = {k: v for k, v in self._seen.items() if k[0] != uid}

    async def _send(self, involved: dict, kind: str, reason: str, message: str) -> None:
        namespace = involved.get("namespace") or "default"
        key = (involved["uid"], involved.get("fieldPath"), kind, reason, message)
        seen = self._seen.get(key)
        now = timestamps.now()
        if seen and time.monotonic() - seen[2] < REPEAT_WINDOW:
            name, count = seen[0], seen[1] + 1
            response = await self.api.http.patch(
                f"/api/v1/namespaces/{namespace}/events/{name}",
                content=json.dumps({"count": count, "lastTimestamp": now}),
                headers={"Content-Type": "application/merge-patch+json"})
            if response.status_code < 300:
                self._seen[key] = (name, count, time.monotonic())
                return
        name = f"{involved['name']}.{secrets.token_hex(8)}"
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": involved, "reason": reason, "message": message, "type": kind,
            "source": {"component": "kubelet", "host": self.node_name},
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
            "reportingComponent": "kubelet", "reportingInstance": self.node_name,
        }
        response = await self.api.http.post(f"/api/v1/namespaces/{namespace}/events", content=json.dumps(event),
                                            headers={"Content-Type": "application/json"})
        response.raise_for_status()
        self._seen[key] = (name, 1, time.monotonic())
        if len(self._seen) > 4096:
            cutoff = time.monotonic() - REPEAT_WINDOW
            self._seen = {k: v for k, v in self._seen.items() if v[2] > cutoff}

    async def run(self) -> None:
        while True:
            item = await self.queue.get()
            try:
                await self._send(*item)
            except Exception as err:  # noqa: BLE001 - an event is not worth more than a log line
                forbidden = getattr(getattr(err, "response", None), "status_code", None) == 403
                # 403: most often a namespace being deleted, which refuses new objects; not worth a warning.
                (log.debug if forbidden else log.warning)("Unable to write event", reason=item[2], err=err)
