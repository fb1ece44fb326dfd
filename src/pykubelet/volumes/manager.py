"""The volume manager: the one owner of every pod's volumes on this node.

Desired state is the pod spec; actual state is what is on disk (and in the mount table) under
<root-dir>/pods/<uid>/volumes/<plugin>/<volume>, as upstream lays it out. Each pod worker step calls
`setup(pod)` before it touches containers: volumes not yet set up are set up (a tmpfs mounted, a claim
resolved, a hostPath checked), and every AtomicWriter volume (configMap, secret, downwardAPI, projected) has
its payload rebuilt from the watched objects and the pod itself and written when it changed — so an update
to a ConfigMap, a Secret or the pod's labels reaches the files on the next step, and a change to a watched
object wakes the pods that mount it. The steps of one pod are serialized by its worker, so setup, update
and teardown of its volumes never race. `tear_down(uid)` unmounts and removes a pod's volumes once its
containers are gone; `clean_orphans` does the same at start for pod directories no pod owns any more.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from nodeagent import logs
from nodeagent.h2client import H2Client

from . import atomicwriter, configmaps, downwardapi, emptydir, hostpath, mounts, ownership, persistent, projected
from .objects import ObjectCache, Unavailable

log = logs.get(__name__)

PLUGIN_DIRS = {
    "emptyDir": "kubernetes.io~empty-dir", "configMap": "kubernetes.io~configmap",
    "secret": "kubernetes.io~secret", "downwardAPI": "kubernetes.io~downward-api",
    "projected": "kubernetes.io~projected", "local": "kubernetes.io~local-volume",
}
ATOMIC = ("configMap", "secret", "downwardAPI", "projected")
ON_TMPFS = ("secret", "downwardAPI", "projected")  # upstream wraps these in a Memory emptyDir
CLAIMS = ("persistentVolumeClaim", "ephemeral")
SUPPORTED = (*ATOMIC, "emptyDir", "hostPath", *CLAIMS)


class MountProblem(Exception):
    """Volumes that cannot be set up now: (volume name, message) pairs, each a FailedMount event."""

    def __init__(self, failures: list[tuple[str, str]]):
        super().__init__("; ".join(f"volume {name!r}: {message}" for name, message in failures))
        self.failures = failures


@dataclass
class Prepared:
    host_path: Path
    read_only: bool = False
    atomic: bool = False  # an AtomicWriter volume: a subPath into it sees no updates, as upstream


@dataclass
class _Volume:
    prepared: Prepared
    digest: str = ""  # of the payload last written (AtomicWriter volumes)
    claimed: persistent.Claimed | None = None  # the PersistentVolume behind a claim


@dataclass
class _PodVolumes:
    volumes: dict[str, _Volume] = field(default_factory=dict)


def pod_dir(root_dir: Path, uid: str) -> Path:
    return root_dir / "pods" / uid


def volume_kind(volume: dict) -> str | None:
    return next((k for k in SUPPORTED if volume.get(k) is not None), None)


def _digest(payload: dict[str, atomicwriter.FileProjection]) -> str:
    h = hashlib.sha256()
    for path in sorted(payload):
        p = payload[path]
        h.update(f"{path}\0{p.mode}\0{p.fs_user}\0{len(p.data)}\0".encode())
        h.update(p.data)
    return h.hexdigest()


def referenced(pod: dict, kind: str) -> set[str]:
    """Names of the ConfigMaps (`configMap`) or Secrets (`secret`) the pod's volumes read."""
    names = set()
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        if volume.get(kind) is not None:
            source = volume[kind]
            names.add(source.get("name" if kind == "configMap" else "secretName", ""))
        for item in (volume.get("projected") or {}).get("sources") or []:
            if item.get(kind) is not None:
                names.add(item[kind].get("name", ""))
    names.discard("")
    return names


def nested_mount_points(pod: dict, volume: str) -> set[str]:
    """Directories to make in `volume` for other volumes a container mounts beneath it (MakeNestedMountpoints)."""
    found = set()
    spec = pod.get("spec") or {}
    for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        mounts_ = container.get("volumeMounts") or []
        for own in (m for m in mounts_ if m.get("name") == volume and not m.get("subPath")):
            base = own.get("mountPath", "").rstrip("/") + "/"
            for other in mounts_:
                path = other.get("mountPath", "")
                if other is not own and path.startswith(base):
                    relative = path[len(base):].strip("/")
                    if relative and not relative.startswith(".."):
                        found.add(relative.split("/", 1)[0])
    return found


class VolumeManager:
    def __init__(self, http: Callable[[], H2Client], root_dir: Path, *,
                 watch_http: Callable[[], H2Client] | None = None,
                 node_allocatable: dict[str, str] | None = None, node_name: str = "",
                 wake: Callable[[Iterable[str]], None] = lambda uids: None):
        """`http`: the apiserver; `watch_http`: the client for the ConfigMap and Secret watches, each of which
        holds a connection (default: `http`); `wake(uids)`: wake these pods' workers."""
        self.http = http
        self.root_dir = root_dir
        self.node_allocatable = node_allocatable or {}
        self.node_name = node_name
        self.configmaps = ObjectCache(watch_http or http, "configmaps", "configmap", on_change=wake)
        self.secrets = ObjectCache(watch_http or http, "secrets", "secret", on_change=wake)
        self.tokens = projected.Tokens(http)
        self._pods: dict[str, _PodVolumes] = {}
        self._released: set[str] = set()  # finished pods whose volumes are gone

    def share_root(self) -> None:
        """Make the root directory a shared mount, so that mountPropagation reaches containers (as upstream)."""
        try:
            self.root_dir.mkdir(parents=True, exist_ok=True)
            mounts.make_rshared(self.root_dir)
        except OSError as err:
            log.warning("Cannot make the root directory a shared mount; mountPropagation other than None will "
                        "not see later mounts", rootDir=str(self.root_dir), err=str(err))

    # ------------------------------------------------------------------ API reads

    async def _get(self, path: str) -> dict | None:
        response = await self.http().get(path)
        if response.status_code == 404:
            return None
        if response.status_code >= 400:
            try:
                message = response.json().get("message", response.text)
            except ValueError:
                message = response.text
            raise ValueError(message)
        return response.json()

    async def _object(self, namespace: str, kind: str, name: str) -> dict | None:
        cache = self.configmaps if kind == "configmap" else self.secrets
        try:
            return await cache.get(namespace, name)
        except Unavailable as err:
            raise ValueError(str(err)) from None

    async def _trust_bundles(self, source: dict) -> bytes:
        """The PEM certificates of one clusterTrustBundle source (by name, or by signer and labels)."""
        base = "/apis/certificates.k8s.io/v1beta1/clustertrustbundles"
        optional = bool(source.get("optional"))
        if source.get("name"):
            bundle = await self._get(f"{base}/{source['name']}")
            bundles = [bundle] if bundle else []
        elif source.get("signerName"):
            selector = ",".join(f"{k}={v}" for k, v in
                                ((source.get("labelSelector") or {}).get("matchLabels") or {}).items())
            params = {"fieldSelector": f"spec.signerName={source['signerName']}"}
            if selector:
                params["labelSelector"] = selector
            response = await self.http().get(base, params=params)
            if response.status_code == 404:
                raise ValueError("the API server does not serve ClusterTrustBundles (certificates.k8s.io/v1beta1)")
            response.raise_for_status()
            bundles = response.json().get("items") or []
        else:
            raise ValueError("ClusterTrustBundle projection requires either name or signerName to be set")
        seen: list[str] = []
        for bundle in sorted(bundles, key=lambda b: b["metadata"]["name"]):
            for block in (bundle.get("spec") or {}).get("trustBundle", "").split("-----END CERTIFICATE-----"):
                block = block.strip()
                if block:
                    pem = block + "\n-----END CERTIFICATE-----\n"
                    if pem not in seen:
                        seen.append(pem)
        if not seen and not optional:
            raise ValueError("combined trust anchor set is empty")
        return "".join(seen).encode()

    # ------------------------------------------------------------------ set-up

    def _path(self, uid: str, kind: str, name: str) -> Path:
        return pod_dir(self.root_dir, uid) / "volumes" / PLUGIN_DIRS[kind] / name

    async def setup(self, pod: dict) -> dict[str, Prepared]:
        """Every volume of the pod ready on the host; MountProblem names each that is not (the others are)."""
        meta = pod["metadata"]
        uid, namespace = meta["uid"], meta.get("namespace", "")
        self.configmaps.register(uid, namespace, referenced(pod, "configMap"))
        self.secrets.register(uid, namespace, referenced(pod, "secret"))
        state = self._pods.setdefault(uid, _PodVolumes())
        prepared: dict[str, Prepared] = {}
        failures: list[tuple[str, str]] = []
        for volume in (pod.get("spec") or {}).get("volumes") or []:
            name = volume.get("name", "")
            try:
                prepared[name] = await self._setup_one(pod, volume, state)
            except (ValueError, OSError) as err:
                failures.append((name, str(err)))
        if failures:
            raise MountProblem(failures)
        return prepared

    async def _setup_one(self, pod: dict, volume: dict, state: _PodVolumes) -> Prepared:
        name = volume["name"]
        kind = volume_kind(volume)
        if kind is None:
            other = next((k for k in volume if k != "name"), "unknown")
            raise ValueError(f"volume type {other!r} is not supported by pykubelet (no volume plugin matched)")
        held = state.volumes.get(name)
        if kind in ATOMIC:
            return await self._atomic(pod, volume, kind, held, state)
        if held is not None:
            return held.prepared  # emptyDir, hostPath and claims need nothing more once set up
        uid = pod["metadata"]["uid"]
        if kind == "emptyDir":
            source = volume["emptyDir"]
            memory = emptydir.medium(source) == "Memory"
            path = self._path(uid, kind, name)
            size = emptydir.tmpfs_size(pod, source.get("sizeLimit"), self.node_allocatable.get("memory")) \
                if memory else None
            if emptydir.set_up(path, memory=memory, size=size):
                ownership.apply(path, ownership.fs_group(pod), policy=ownership.change_policy(pod))
            result = Prepared(path)
        elif kind == "hostPath":
            path = Path(volume["hostPath"].get("path", ""))
            hostpath.check(path, volume["hostPath"].get("type"))
            result = Prepared(path)
        else:
            claimed = await persistent.resolve(pod, volume, self._get)
            if claimed.kind == "hostPath":
                hostpath.check(claimed.path, claimed.host_path_type)
            elif not claimed.path.is_dir():
                raise ValueError(f"local PersistentVolume {claimed.volume}: path {claimed.path} does not exist")
            if claimed.kind == "local" and not claimed.read_only:
                ownership.apply(claimed.path, ownership.fs_group(pod), policy=ownership.change_policy(pod))
            result = Prepared(claimed.path, read_only=claimed.read_only)
            state.volumes[name] = _Volume(result, claimed=claimed)
            return result
        state.volumes[name] = _Volume(result)
        return result

    async def _atomic(self, pod: dict, volume: dict, kind: str, held: _Volume | None,
                      state: _PodVolumes) -> Prepared:
        name = volume["name"]
        uid, namespace = pod["metadata"]["uid"], pod["metadata"].get("namespace", "")
        source = volume[kind]
        path = self._path(uid, kind, name)
        payload = await self._payload(pod, name, kind, source, namespace)
        digest = _digest(payload)
        if held is not None and held.digest == digest:
            return held.prepared
        if held is None:  # first set-up (of this pykubelet): the mount point, the tmpfs, nested mount points
            path.mkdir(parents=True, exist_ok=True)
            if kind in ON_TMPFS and not mounts.is_tmpfs_mounted(path):
                mounts.mount_tmpfs(path, emptydir.tmpfs_size(pod, None, self.node_allocatable.get("memory")))
            for directory in nested_mount_points(pod, name):
                (path / directory).mkdir(mode=0o755, parents=True, exist_ok=True)
        group = ownership.fs_group(pod)
        try:
            written = atomicwriter.write(path, payload, set_permissions=None if group is None else
                                         lambda _: ownership.apply(path, group, read_only=True))
        except atomicwriter.PayloadError as err:
            raise ValueError(str(err)) from None
        if written and held is not None:
            log.info("Updated volume", pod=f"{namespace}/{pod['metadata'].get('name')}", volume=name, kind=kind)
        prepared = Prepared(path, read_only=True, atomic=True)
        state.volumes[name] = _Volume(prepared, digest)
        return prepared

    async def _payload(self, pod: dict, name: str, kind: str, source: dict,
                       namespace: str) -> dict[str, atomicwriter.FileProjection]:
        if kind in ("configMap", "secret"):
            object_kind = kind.lower()
            object_name = source.get("name" if kind == "configMap" else "secretName", "")
            obj = await self._object(namespace, object_kind, object_name)
            if obj is None and not source.get("optional"):
                raise ValueError(configmaps.not_found(object_kind, object_name))
            return configmaps.payload(object_kind, source, obj, source.get("defaultMode"))
        if kind == "downwardAPI":
            return downwardapi.payload(pod, source, source.get("defaultMode"), self.node_allocatable,
                                       self.node_name)

        async def get_object(object_kind: str, object_name: str) -> dict | None:
            return await self._object(namespace, object_kind, object_name)

        return await projected.payload(pod, name, source, get_object=get_object, tokens=self.tokens,
                                       trust_bundles=self._trust_bundles, node_allocatable=self.node_allocatable,
                                       fs_user=ownership.fs_user(pod), fs_group=ownership.fs_group(pod))

    def local_claims(self, uid: str) -> list[tuple[str, str, Path]]:
        """(volume, claim, path) of the pod's volumes on local PersistentVolumes: the ones with stats (upstream
        measures local volumes with statfs and has no metrics for hostPath ones)."""
        state = self._pods.get(uid)
        return [(name, v.claimed.claim, v.claimed.path) for name, v in (state.volumes.items() if state else ())
                if v.claimed is not None and v.claimed.kind == "local"]

    def next_refresh(self, uid: str) -> float | None:
        """Seconds until one of the pod's service account tokens needs renewing, if any."""
        return self.tokens.next_renewal(uid)

    # ------------------------------------------------------------------ tear-down

    def forget(self, uid: str) -> None:
        """Stop watching what the pod referenced and drop what is held for it (not what is on disk)."""
        self.configmaps.unregister(uid)
        self.secrets.unregister(uid)
        self.tokens.forget(uid)
        self._pods.pop(uid, None)

    def release(self, uid: str) -> None:
        """A finished pod's volumes go (its tmpfs memory is freed, its watches stop); the rest of its directory
        (termination messages, /etc/hosts) stays until the pod is removed."""
        if uid in self._released:
            return
        self.forget(uid)
        self._released.add(uid)
        directory = pod_dir(self.root_dir, uid)
        for part in ("volume-subpaths", "volumes"):
            if (directory / part).exists() and not mounts.unmount_all(directory / part):
                shutil.rmtree(directory / part, ignore_errors=True)

    def tear_down(self, uid: str) -> None:
        """Unmount and remove everything under the pod's directory (its containers are gone)."""
        self.forget(uid)
        self._released.discard(uid)
        directory = pod_dir(self.root_dir, uid)
        errors = mounts.unmount_all(directory)
        if errors:
            log.warning("Some of a removed pod's mounts would not go; leaving its directory", uid=uid,
                        errors="; ".join(errors))
            return
        shutil.rmtree(directory, ignore_errors=True)

    def clean_orphans(self, known: Iterable[str]) -> list[str]:
        """Tear down the directories of pods that are neither known nor running; returns their uids."""
        keep = set(known)
        removed = []
        pods = self.root_dir / "pods"
        if not pods.is_dir():
            return removed
        for directory in pods.iterdir():
            if directory.name not in keep:
                self.tear_down(directory.name)
                removed.append(directory.name)
        if removed:
            log.info("Removed volumes of pods that are gone", pods=len(removed))
        return removed

    async def close(self) -> None:
        await self.configmaps.close()
        await self.secrets.close()
