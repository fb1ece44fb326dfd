"""Pod volumes on the node: the service-account projected volume every pod carries, emptyDir and hostPath.

Layout as upstream: <root-dir>/pods/<uid>/volumes/<plugin>/<volume>. Projected
volumes are written atomically like upstream's AtomicWriter: the files go to a
fresh `..<timestamp>` directory, `..data` is switched to it with one rename,
and each visible name is a symlink through `..data`, so a reader never sees a
half-written set. The token is re-requested when 80% of its lifetime has passed.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from nodeagent import logs
from ..apiclient import Api

log = logs.get(__name__)

SUPPORTED = ("projected", "emptyDir", "hostPath")


class MountProblem(Exception):
    """A volume cannot be set up; the message says which and why (becomes a FailedMount event)."""


@dataclass
class Prepared:
    host_path: Path
    read_only: bool = False


def pod_dir(root_dir: Path, uid: str) -> Path:
    return root_dir / "pods" / uid


def _plugin_dir(volume: dict) -> str:
    kind = next(k for k in SUPPORTED if k in volume)
    return {"projected": "kubernetes.io~projected", "emptyDir": "kubernetes.io~empty-dir",
            "hostPath": "kubernetes.io~host-path"}[kind]


def write_atomic(target: Path, files: dict[str, bytes], mode: int = 0o644) -> None:
    """Publish `files` (relative path -> content) in `target` through a ..data symlink swap."""
    target.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("..%Y_%m_%d_%H_%M_%S.%f")
    fresh = target / stamp
    fresh.mkdir()
    for rel, data in files.items():
        path = fresh / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(mode)
    tmp_link = target / "..data_tmp"
    tmp_link.unlink(missing_ok=True)
    tmp_link.symlink_to(stamp)
    old = os.readlink(target / "..data") if (target / "..data").is_symlink() else None
    tmp_link.replace(target / "..data")
    for rel in {r.split("/", 1)[0] for r in files}:
        link = target / rel
        if not link.is_symlink():
            link.symlink_to(f"..data/{rel}")
    for stale in target.iterdir():
        if stale.name.startswith("..") and stale.name not in ("..data", stamp) and stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    if old and old != stamp:
        shutil.rmtree(target / old, ignore_errors=True)


class VolumeManager:
    def __init__(self, api: Api, root_dir: Path):
        self.api = api
        self.root_dir = root_dir
        self._refresh_at: dict[tuple[str, str], float] = {}  # (pod uid, volume) -> when to renew its token

    async def _get(self, path: str) -> dict | None:
        response = await self.api.http.get(path)
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.json()

    async def _token(self, pod: dict, source: dict) -> tuple[bytes, float]:
        meta, spec = pod["metadata"], pod["spec"]
        account = spec.get("serviceAccountName") or "default"
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "spec": {"audiences": [source["audience"]] if source.get("audience") else None,
                         "expirationSeconds": source.get("expirationSeconds", 3607),
                         "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"],
                                            "uid": meta["uid"]}}}
        response = await self.api.http.post(
            f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{account}/token", content=json.dumps(body),
            headers={"Content-Type": "application/json"})
        if response.status_code >= 400:
            raise MountProblem(f"failed to fetch token: {response.json().get('message', response.text)}")
        status = response.json()["status"]
        expires = dt.datetime.fromisoformat(status["expirationTimestamp"].replace("Z", "+00:00")).timestamp()
        lifetime = max(expires - time.time(), 60)
        return status["token"].encode(), time.time() + 0.8 * min(lifetime, 24 * 3600)

    async def _projected(self, pod: dict, name: str, volume: dict) -> tuple[dict[str, bytes], float | None]:
        meta = pod["metadata"]
        files: dict[str, bytes] = {}
        refresh = None
        for source in volume.get("sources", []):
            if "serviceAccountToken" in source:
                token_source = source["serviceAccountToken"]
                files[token_source["path"]], refresh = await self._token(pod, token_source)
            elif "configMap" in source or "secret" in source:
                kind = "configMap" if "configMap" in source else "secret"
                ref = source[kind]
                plural = "configmaps" if kind == "configMap" else "secrets"
                obj = await self._get(f"/api/v1/namespaces/{meta['namespace']}/{plural}/{ref['name']}")
                if obj is None:
                    if ref.get("optional"):
                        continue
                    raise MountProblem(f'{kind.lower() if kind == "secret" else "configmap"} '
                                       f'"{ref["name"]}" not found')
                data = {k: v.encode() for k, v in (obj.get("data") or {}).items()} if kind == "configMap" else \
                    {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
                items = ref.get("items") or [{"key": k, "path": k} for k in data]
                for item in items:
                    if item["key"] not in data:
                        if ref.get("optional"):
                            continue
                        raise MountProblem(f"configmap references non-existent config key: {item['key']}")
                    files[item["path"]] = data[item["key"]]
            elif "downwardAPI" in source:
                for item in source["downwardAPI"].get("items", []):
                    field_path = item.get("fieldRef", {}).get("fieldPath", "")
                    value = _field(pod, field_path)
                    if value is None:
                        raise MountProblem(f"unsupported downwardAPI field {field_path!r} in volume {name!r}")
                    files[item["path"]] = value.encode()
            else:
                raise MountProblem(f"unsupported projected source {sorted(source)} in volume {name!r}")
        return files, refresh

    async def setup(self, pod: dict) -> dict[str, Prepared]:
        """Make every volume of the pod ready on the host; raises MountProblem for the first that cannot be."""
        uid = pod["metadata"]["uid"]
        prepared: dict[str, Prepared] = {}
        for volume in pod["spec"].get("volumes", []):
            name = volume["name"]
            kind = next((k for k in SUPPORTED if k in volume), None)
            if kind is None:
                other = next((k for k in volume if k != "name"), "unknown")
                raise MountProblem(f"volume {name!r}: volume type {other!r} is not supported by pykubelet yet")
            if kind == "hostPath":
                path = Path(volume["hostPath"]["path"])
                if volume["hostPath"].get("type") in ("Directory", "File", "Socket") and not path.exists():
                    raise MountProblem(f"hostPath type check failed: {path} does not exist")
                if volume["hostPath"].get("type") == "DirectoryOrCreate":
                    path.mkdir(parents=True, exist_ok=True)
                prepared[name] = Prepared(path)
                continue
            target = pod_dir(self.root_dir, uid) / "volumes" / _plugin_dir(volume) / name
            if kind == "emptyDir":
                target.mkdir(parents=True, exist_ok=True)
                target.chmod(0o777)
            else:
                key = (uid, name)
                if not (target / "..data").exists() or time.time() >= self._refresh_at.get(key, 0):
                    files, refresh = await self._projected(pod, name, volume["projected"])
                    write_atomic(target, files, volume["projected"].get("defaultMode", 0o644))
                    self._refresh_at[key] = refresh or float("inf")
            prepared[name] = Prepared(target, read_only=(kind == "projected"))
        return prepared

    def next_refresh(self, uid: str) -> float | None:
        """Seconds until one of the pod's tokens needs renewing, if any."""
        times = [t for (u, _), t in self._refresh_at.items() if u == uid and t != float("inf")]
        return max(0.0, min(times) - time.time()) if times else None

    def cleanup(self, uid: str) -> None:
        for key in [k for k in self._refresh_at if k[0] == uid]:
            del self._refresh_at[key]
        shutil.rmtree(pod_dir(self.root_dir, uid), ignore_errors=True)


def _field(pod: dict, field_path: str) -> str | None:
    meta = pod["metadata"]
    return {"metadata.namespace": meta.get("namespace"), "metadata.name": meta.get("name"),
            "metadata.uid": meta.get("uid")}.get(field_path)
