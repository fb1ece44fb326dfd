"""Static pods: pod manifests in staticPodPath, run by this kubelet alone, shown in the API as mirror pods.

The directory is scanned every fileCheckFrequency. A manifest becomes a pod
named `<name>-<node>` whose uid is a hash of the manifest, the file and the
node (so an edited file is a new pod, as upstream). A manifest that does not
parse is skipped with one log line per version of the file; the others keep
running. For each static pod, a mirror pod (annotation kubernetes.io/config.mirror)
is created in the API so that kubectl shows it, and receives its status.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import yaml

from nodeagent import logs
from ..apiclient import Api

log = logs.get(__name__)

HASH = "kubernetes.io/config.hash"
MIRROR = "kubernetes.io/config.mirror"
SOURCE = "kubernetes.io/config.source"
SEEN = "kubernetes.io/config.seen"


class MirrorPodError(Exception):
    """The apiserver refused a mirror pod."""


def is_mirror(pod: dict) -> bool:
    return MIRROR in (pod["metadata"].get("annotations") or {})


def is_static(pod: dict) -> bool:
    """A pod from a manifest file (not from the API)."""
    return (pod["metadata"].get("annotations") or {}).get(SOURCE, "api") != "api"


def load_manifest(path: Path, node_name: str) -> dict:
    """The static pod a manifest file describes; raises ValueError with a clear message."""
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"cannot read {path}: {str(err).splitlines()[0]}") from None
    if not isinstance(doc, dict) or doc.get("kind") != "Pod" or doc.get("apiVersion") != "v1":
        raise ValueError(f"{path}: not a v1 Pod manifest")
    meta, spec = doc.get("metadata") or {}, doc.get("spec") or {}
    if not meta.get("name") or not isinstance(spec.get("containers"), list) or not spec["containers"]:
        raise ValueError(f"{path}: a static pod needs metadata.name and at least one container")
    digest = hashlib.md5(json.dumps([doc, str(path), node_name], sort_keys=True).encode()).hexdigest()
    pod = copy.deepcopy(doc)
    meta = pod.setdefault("metadata", {})
    meta["name"] = f"{meta['name']}-{node_name}"
    meta.setdefault("namespace", "default")
    meta["uid"] = digest
    meta["annotations"] = {**(meta.get("annotations") or {}), HASH: digest, SOURCE: "file",
                           SEEN: dt.datetime.now(dt.timezone.utc).isoformat()}
    spec = pod["spec"]
    spec["nodeName"] = node_name
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    for container in spec.get("initContainers", []) + spec["containers"]:
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
    pod.setdefault("status", {})
    return pod


class StaticPods:
    def __init__(self, path: Path | None, node_name: str, node_uid: str, api: Api, period: float,
                 update: Callable[[dict], None], remove: Callable[[dict], None]):
        self.path = path
        self.node_name = node_name
        self.node_uid = node_uid
        self.api = api
        self.period = period
        self.update = update
        self.remove = remove
        self.pods: dict[str, dict] = {}  # uid -> static pod
        self._reported: set[tuple[str, float]] = set()

    def scan(self) -> None:
        found: dict[str, dict] = {}
        if self.path is not None and self.path.is_dir():
            for file in sorted(self.path.iterdir()):
                if file.name.startswith(".") or file.suffix not in (".yaml", ".yml", ".json") or not file.is_file():
                    continue
                try:
                    pod = load_manifest(file, self.node_name)
                except ValueError as err:
                    key = (str(file), file.stat().st_mtime)
                    if key not in self._reported:
                        self._reported.add(key)
                        log.error("Skipping static pod manifest", file=file, err=err)
                    continue
                found[pod["metadata"]["uid"]] = pod
        for uid, pod in list(self.pods.items()):
            if uid not in found:
                log.info("Static pod removed", pod=f"{pod['metadata']['namespace']}/{pod['metadata']['name']}")
                del self.pods[uid]
                self.remove(pod)
        for uid, pod in found.items():
            if uid not in self.pods:
                log.info("Static pod added", pod=f"{pod['metadata']['namespace']}/{pod['metadata']['name']}")
                self.pods[uid] = pod
                self.update(pod)

    def node_registered(self, node_uid: str, wake: Callable[[str], None]) -> None:
        """The Node exists now (uid `node_uid`): wake every static pod's worker to create its mirror pod."""
        self.node_uid = node_uid
        for uid in list(self.pods):
            wake(uid)

    def mirror_of(self, pod: dict) -> dict:
        mirror = copy.deepcopy(pod)
        meta = mirror["metadata"]
        meta.pop("uid", None)
        meta["annotations"][MIRROR] = meta["annotations"][HASH]
        meta["ownerReferences"] = [{"apiVersion": "v1", "kind": "Node", "name": self.node_name,
                                    "uid": self.node_uid, "controller": True}]
        mirror.pop("status", None)
        return mirror

    async def ensure_mirror(self, pod: dict, existing: dict | None) -> None:
        """Create the mirror pod, replacing one that mirrors an older version of the manifest."""
        meta = pod["metadata"]
        if not self.node_uid:
            # Not registered yet (the apiserver may be one of the static pods): a mirror's owner reference needs
            # the Node's uid, so it is made once node_registered() wakes the pod; the pod runs meanwhile.
            return
        path = f"/api/v1/namespaces/{meta['namespace']}/pods"
        if existing is not None:
            if (existing["metadata"].get("annotations") or {}).get(MIRROR) == meta["uid"]:
                return
            await self.delete_mirror(existing)
        response = await self.api.http.post(path, content=json.dumps(self.mirror_of(pod)),
                                            headers={"Content-Type": "application/json"})
        if response.status_code not in (201, 409):
            # Raised, so that the pod's worker tries again within seconds, not at its next resync: right after
            # kubeadm init the apiserver answers before it has made the PriorityClass the control plane's pods name.
            raise MirrorPodError(f"failed creating the mirror pod {meta['namespace']}/{meta['name']}: "
                                 f"HTTP {response.status_code}: {response.text[:300]}")

    async def delete_mirror(self, pod: dict) -> None:
        """Delete a mirror pod at once: nothing runs behind it for the API to wait for."""
        meta = pod["metadata"]
        await self.api.delete_pod_now(meta["namespace"], meta["name"])

    async def run(self) -> None:
        while True:
            try:
                self.scan()
            except OSError as err:
                log.error("Cannot read the static pod directory", path=self.path, err=err)
            await asyncio.sleep(self.period)
