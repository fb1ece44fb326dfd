"""The ConfigMaps and Secrets that the node's pods mount, each followed by one watch of its own.

Upstream's `configMapAndSecretChangeDetectionStrategy: Watch`: the Node authorizer lets a kubelet read only
the objects its pods reference, so there is no list of all ConfigMaps to share; instead each referenced
object gets a list+watch narrowed to its name (`fieldSelector=metadata.name=<name>`), started when the first
pod refers to it and stopped when the last one goes. An immutable object is read once and its watch stops.
A change wakes the pods that mount the object, so an update reaches their files within a pod sync rather
than a sync period.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from nodeagent import logs
from nodeagent.h2client import H2Client
from nodeagent.listwatch import ListWatch

log = logs.get(__name__)

SYNC_TIMEOUT = 10.0  # how long a mount waits for a newly watched object's first list

Key = tuple[str, str]  # (namespace, name)


class Unavailable(Exception):
    """The object could not be read (its watch has not listed it yet); the message is upstream's."""


@dataclass
class _Watched:
    key: Key
    pods: set[str] = field(default_factory=set)
    obj: dict | None = None
    synced: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None
    version: str = ""


class ObjectCache:
    """Watched objects of one kind (`plural`: configmaps or secrets), referenced by pod uid."""

    def __init__(self, http: Callable[[], H2Client], plural: str, kind: str,
                 on_change: Callable[[Iterable[str]], None] = lambda uids: None):
        self.http = http
        self.plural = plural
        self.kind = kind  # "configmap" or "secret", as upstream's messages name them
        self.on_change = on_change
        self._watched: dict[Key, _Watched] = {}
        self._by_pod: dict[str, set[Key]] = {}

    def register(self, uid: str, namespace: str, names: Iterable[str]) -> None:
        """The pod `uid` refers to exactly these objects now (watches start and stop to match)."""
        keys = {(namespace, name) for name in names if name}
        old = self._by_pod.get(uid, set())
        if keys == old:
            return
        for key in keys - old:
            watched = self._watched.get(key)
            if watched is None:
                watched = self._watched[key] = _Watched(key)
                watched.task = asyncio.create_task(self._follow(watched), name=f"watch-{self.kind}-{key[0]}/{key[1]}")
            watched.pods.add(uid)
        for key in old - keys:
            self._release(uid, key)
        if keys:
            self._by_pod[uid] = keys
        else:
            self._by_pod.pop(uid, None)

    def unregister(self, uid: str) -> None:
        for key in self._by_pod.pop(uid, set()):
            self._release(uid, key)

    def _release(self, uid: str, key: Key) -> None:
        watched = self._watched.get(key)
        if watched is None:
            return
        watched.pods.discard(uid)
        if not watched.pods:
            del self._watched[key]
            if watched.task is not None:
                watched.task.cancel()

    @property
    def watching(self) -> int:
        """Watches running now (an immutable object's has ended)."""
        return sum(1 for w in self._watched.values() if w.task is not None and not w.task.done())

    async def get(self, namespace: str, name: str) -> dict | None:
        """The object (None: it does not exist); the pod must have registered it."""
        watched = self._watched.get((namespace, name))
        if watched is None:
            raise Unavailable(f"{self.kind} {namespace}/{name} not registered")
        if not watched.synced.is_set():
            try:
                await asyncio.wait_for(watched.synced.wait(), SYNC_TIMEOUT)
            except asyncio.TimeoutError:
                raise Unavailable(f"failed to sync {self.kind} cache: timed out waiting for the condition") from None
        return watched.obj

    async def _follow(self, watched: _Watched) -> None:
        namespace, name = watched.key
        stop = asyncio.Event()

        def store(obj: dict | None) -> None:
            version = ((obj or {}).get("metadata") or {}).get("resourceVersion", "")
            changed = watched.synced.is_set() and version != watched.version
            watched.obj, watched.version = obj, version
            watched.synced.set()
            if obj is not None and obj.get("immutable"):
                stop.set()  # it can never change again: no need to keep watching
            if changed:
                self.on_change(set(watched.pods))

        source = ListWatch(self.http, f"/api/v1/namespaces/{namespace}/{self.plural}", kind=self.kind,
                           params={"fieldSelector": f"metadata.name={name}"},
                           replace=lambda items: store(items[0] if items else None), update=store,
                           remove=lambda obj: store(None))
        runner = asyncio.create_task(source.run())
        stopped = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({runner, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            runner.cancel()
            stopped.cancel()
            await asyncio.gather(runner, stopped, return_exceptions=True)

    async def close(self) -> None:
        tasks = [w.task for w in self._watched.values() if w.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._watched.clear()
        self._by_pod.clear()
