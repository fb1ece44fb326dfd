"""Follow one kind of API object: list (in pages), then watch with bookmarks, resuming.

A list gives the full set and a resourceVersion; the watch resumes from the
last version seen (bookmarks keep it fresh while nothing changes), and a 410
Gone means that version was compacted away, so the next round lists again.
Subscribers get `replace(objects)` after each list and `update(obj)` /
`remove(obj)` for each watch event. With `parse`, every
object is passed through it as it arrives and subscribers get what it returns,
so a large list never holds all its raw JSON at once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from .h2client import H2Client

from . import logs

log = logs.get(__name__)

WATCH_TIMEOUT = 300  # seconds the apiserver keeps one watch open before we resume
PAGE_SIZE = 500  # objects per list request, as client-go's pager


class Gone(Exception):
    """The resourceVersion is too old (HTTP 410 or an ERROR event with code 410)."""


class ListWatch:
    def __init__(self, http: Callable[[], H2Client], path: str, *, kind: str,
                 replace: Callable[[list[Any]], None], update: Callable[[Any], None],
                 remove: Callable[[Any], None], params: dict[str, str] | None = None, parse: Callable[[dict], Any] | None = None):
        self.http = http  # called on each request: the client may be replaced when credentials rotate
        self.path = path
        self.kind = kind
        self.params = dict(params or {})
        self.replace, self.update, self.remove = replace, update, remove
        self.parse = parse or (lambda obj: obj)
        self.synced = asyncio.Event()  # set after the first successful list

    async def _list(self) -> str:
        items: list[Any] = []
        params = {**self.params, "limit": str(PAGE_SIZE)}
        while True:
            response = await self.http().get(self.path, params=params)
            if response.status_code == 410:
                raise Gone()
            response.raise_for_status()
            body = response.json()
            items.extend(map(self.parse, body.get("items") or []))
            meta = body.get("metadata") or {}
            if not meta.get("continue"):
                break
            params["continue"] = meta["continue"]
        self.replace(items)
        self.synced.set()
        return meta["resourceVersion"]

    async def _watch(self, version: str) -> str:
        """Follow one watch request; returns the last resourceVersion seen."""
        params = {**self.params, "watch": "true", "allowWatchBookmarks": "true",
                  "resourceVersion": version, "timeoutSeconds": str(WATCH_TIMEOUT)}
        async with self.http().stream("GET", self.path, params=params) as response:
            if response.status_code == 410:
                raise Gone()
            if response.status_code >= 400:
                await response.read()
            response.raise_for_status()
            async for line in response.aiter_lines(read_timeout=WATCH_TIMEOUT + 30):
                if not line:
                    continue
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise Gone()
                    raise RuntimeError(f"watch error: {obj.get('message')}")
                version = (obj.get("metadata") or {}).get("resourceVersion", version)
                if kind in ("ADDED", "MODIFIED"):
                    self.update(self.parse(obj))
                elif kind == "DELETED":
                    self.remove(self.parse(obj))
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
                log.info("Watch expired; listing again", kind=self.kind, resourceVersion=version)
                version = None
            except Exception as err:  # noqa: BLE001 - apiserver trouble: back off and resume
                log.warning("Watch failed; retrying", kind=self.kind, err=err, retryIn=f"{backoff:.1f}s")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10)
