"""projected volumes: several sources in one directory — configMap, secret, downwardAPI, serviceAccountToken,
clusterTrustBundle — written together by the AtomicWriter (so on tmpfs, as they may hold secrets).

Service account tokens come from the TokenRequest API, bound to the pod, and are requested again once 80%
of their lifetime (at most 24 h) has passed, as upstream's token manager does. When the pod has an fsGroup
or one user for all its containers, a token file is 0600 and owned by that user (fsGroup then adds 0040).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Awaitable, Callable

from nodeagent.h2client import H2Client

from . import configmaps, downwardapi
from .atomicwriter import FileProjection

DEFAULT_MODE = 0o644
DEFAULT_TOKEN_SECONDS = 3607  # what the API server defaults expirationSeconds to for the default token volume
MAX_REFRESH_AGE = 24 * 3600

GetObject = Callable[[str, str], Awaitable["dict | None"]]  # (kind, name) -> object of the pod's namespace


class Tokens:
    """Service account tokens per (pod uid, volume, path), renewed when due."""

    def __init__(self, http: Callable[[], H2Client]):
        self.http = http
        self._tokens: dict[tuple[str, str, str], tuple[bytes, float]] = {}  # -> (token, renew at)

    async def get(self, pod: dict, volume: str, source: dict) -> bytes:
        key = (pod["metadata"]["uid"], volume, source.get("path", ""))
        held = self._tokens.get(key)
        if held and time.time() < held[1]:
            return held[0]
        token, renew_at = await self._request(pod, source)
        self._tokens[key] = (token, renew_at)
        return token

    async def _request(self, pod: dict, source: dict) -> tuple[bytes, float]:
        meta, spec = pod["metadata"], pod["spec"]
        account = spec.get("serviceAccountName") or "default"
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "spec": {"audiences": [source["audience"]] if source.get("audience") else None,
                         "expirationSeconds": source.get("expirationSeconds", DEFAULT_TOKEN_SECONDS),
                         "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"],
                                            "uid": meta["uid"]}}}
        response = await self.http().post(
            f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{account}/token", content=json.dumps(body),
            headers={"Content-Type": "application/json"})
        if response.status_code >= 400:
            try:
                message = response.json().get("message", response.text)
            except ValueError:
                message = response.text
            raise ValueError(f"failed to fetch token: {message}")
        status = response.json()["status"]
        expires = dt.datetime.fromisoformat(status["expirationTimestamp"].replace("Z", "+00:00")).timestamp()
        lifetime = max(expires - time.time(), 60)
        return status["token"].encode(), time.time() + 0.8 * min(lifetime, MAX_REFRESH_AGE)

    def next_renewal(self, uid: str) -> float | None:
        """Seconds until one of the pod's tokens is due, if it has any."""
        times = [at for (owner, _, _), (_, at) in self._tokens.items() if owner == uid]
        return max(0.0, min(times) - time.time()) if times else None

    def forget(self, uid: str) -> None:
        self._tokens = {k: v for k, v in self._tokens.items() if k[0] != uid}


async def payload(pod: dict, name: str, source: dict, *, get_object: GetObject, tokens: Tokens,
                  trust_bundles: Callable[[dict], Awaitable[bytes]], node_allocatable: dict[str, str],
                  fs_user: int | None, fs_group: int | None) -> dict[str, FileProjection]:
    """Every source's files, later sources winning a path; ValueError listing what failed (upstream's
    aggregate: one message alone, several in brackets)."""
    default = DEFAULT_MODE if source.get("defaultMode") is None else int(source["defaultMode"])
    private = 0o600 if fs_user is not None or fs_group is not None else default
    files: dict[str, FileProjection] = {}
    errors: list[str] = []
    for item in source.get("sources") or []:
        try:
            if item.get("secret") is not None or item.get("configMap") is not None:
                kind, ref = ("secret", item["secret"]) if item.get("secret") is not None else \
                    ("configmap", item["configMap"])
                obj = await get_object(kind, ref.get("name", ""))
                if obj is None and not ref.get("optional"):
                    raise ValueError(configmaps.not_found(kind, ref.get("name", "")))
                files.update(configmaps.payload(kind, ref, obj, default))
            elif item.get("downwardAPI") is not None:
                files.update(downwardapi.payload(pod, item["downwardAPI"], default, node_allocatable))
            elif item.get("serviceAccountToken") is not None:
                token = item["serviceAccountToken"]
                files[token.get("path", "")] = FileProjection(await tokens.get(pod, name, token), private, fs_user)
            elif item.get("clusterTrustBundle") is not None:
                bundle = item["clusterTrustBundle"]
                files[bundle.get("path", "")] = FileProjection(await trust_bundles(bundle), private, fs_user)
            else:
                raise ValueError(f"projected source {sorted(item)} is not supported by pykubelet")
        except ValueError as err:
            errors.append(str(err))
    if errors:
        raise ValueError(errors[0] if len(errors) == 1 else "[" + ", ".join(errors) + "]")
    return files
