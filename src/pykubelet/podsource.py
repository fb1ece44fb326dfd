"""The pods bound to this node, from the apiserver: list, then watch with bookmarks.

A list gives the full set and a resourceVersion; the watch resumes from the
last version seen (bookmarks keep it fresh while nothing changes), and a 410
Gone means that version was compacted away, so the next round lists again.
Subscribers get `replace(pods)` after each list and `update(pod)` /
`remove(pod)` for each watch event.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import httpx2

from . import logs
from .apiclient import Api

log = logs.get(__name__)

WATCH_TIMEOUT = 300  # seconds the apiserver keeps one watch open before we resume


class Gone(Exception):
    """The watch's resourceVersion is too old (HTTP 410 or an ERROR event with code 410)."""


class PodSource:
    def __init__(self, api: Api, node_name: str, *, replace: Callable[[list[dict]], None],
                 update: Callable[[dict], None], remove: Callable[[dict], None]):
        self.api = api
        self.selector = f"spec.nodeName={node_name}"
        self.replace = replace
        self.update = update
        self.remove = remove
        self.synced = asyncio.Event()  # set after the first successful list

    async def _list(self) -> str:
        response = await self.api.http.get("/api/v1/pods", params={"fieldSelector": self.selector})
        response.raise_for_status()
        body = response.json()
        self.replace(body.get("items", []))
        self.synced.set()
        return body["metadata"]["resourceVersion"]

    async def _watch(self, version: str) -> str:
        """Follow one watch request; returns the last resourceVersion seen."""
        params = {"fieldSelector": self.selector, "watch": "true", "allowWatchBookmarks": "true",
                  "resourceVersion": version, "timeoutSeconds": str(WATCH_TIMEOUT)}
        timeout = httpx2.Timeout(10, read=WATCH_TIMEOUT + 30)
        async with self.api.http.stream("GET", "/api/v1/pods", params=params, timeout=timeout) as response:
            if response.status_code == 410:
                raise Gone()
            response.raise_for_status()
            async for line in response.aiter_lines():
                if not line:
                    continue
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object", {})
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise Gone()
                    raise RuntimeError(f"watch error: {obj.get('message')}")
                version = obj.get("metadata", {}).get("resourceVersion", version)
                if kind in ("ADDED", "MODIFIED"):
                    self.update(obj)
                elif kind == "DELETED":
                    self.remove(obj)
        return version

    async def run(self) -> None:
        version: str | None = None
        backoff = 0.5
        while True:
            try:
                if version is None:
                    version = await self._list()
                version = await self._watch(version)
                backoff = 0.5
            except Gone:
                log.info("Pod watch expired; listing again", resourceVersion=version)
                version = None
            except Exception as err:  # noqa: BLE001 - apiserver trouble: back off and resume
                log.warning("Pod watch failed; retrying", err=err, retryIn=f"{backoff:.1f}s")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10)
