"""Who is asking, and may they: the kubelet API's authentication and authorization, as kubeadm sets them up.

Authentication, first match wins: a client certificate that chains to
``authentication.x509.clientCAFile`` (CN is the user, O the groups); a bearer token the
apiserver accepts in a TokenReview (``authentication.webhook``, cached for ``cacheTTL``);
anonymous, when ``authentication.anonymous.enabled``. Nobody: 401.

Authorization (``authorization.mode: Webhook``): a SubjectAccessReview for the node object,
``nodes/<subresource>`` with the HTTP method as verb, mapped from the path as upstream does
(with fine-grained kubelet authorization: ``pods``, ``healthz`` or ``configz`` first, then
``stats``, ``metrics``, ``log`` or ``proxy``); any allowed subresource lets the request through.
Answers are cached for ``cacheAuthorizedTTL`` / ``cacheUnauthorizedTTL``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from nodeagent import logs
from nodeagent.durations import parse_duration

log = logs.get(__name__)

ANONYMOUS = "system:anonymous"
_VERBS = {"GET": "get", "HEAD": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
_CACHE_LIMIT = 4096


@dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...] = ()
    uid: str = ""
    extra: dict = field(default_factory=dict, compare=False, hash=False)


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def subresources(path: str) -> list[str]:
    """The nodes/<subresource> a request path needs, in the order they are tried."""
    found = []
    for prefix, name in (("/pods", "pods"), ("/healthz", "healthz"), ("/configz", "configz"),
                         ("/runningpods", "pods")):
        if _under(path, prefix):
            found.append(name)
            break
    for prefix, name in (("/stats", "stats"), ("/metrics", "metrics"), ("/logs", "log")):
        if _under(path, prefix):
            found.append(name)
            break
    else:
        found.append("proxy")
    return found


def verb(method: str) -> str:
    return _VERBS.get(method.upper(), "")


def user_from_certificate(peercert: dict | None) -> User | None:
    """The user a verified client certificate names (the dict ssl's getpeercert() gives)."""
    if not peercert:
        return None
    names: dict[str, list[str]] = {}
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            names.setdefault(key, []).append(value)
    common = names.get("commonName")
    if not common:
        return None
    return User(common[0], tuple(names.get("organizationName", ())))


class _TTLCache:
    def __init__(self):
        self._items: dict = {}

    def get(self, key):
        hit = self._items.get(key)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def put(self, key, value, ttl: float) -> None:
        if len(self._items) >= _CACHE_LIMIT:
            now = time.monotonic()
            self._items = {k: v for k, v in self._items.items() if v[0] >= now}
            if len(self._items) >= _CACHE_LIMIT:
                self._items.clear()
        self._items[key] = (time.monotonic() + ttl, value)


class Authenticator:
    def __init__(self, authentication: dict, http: Callable):
        """`http()` gives the current authenticated client for the apiserver (httpx)."""
        self.anonymous = bool(authentication.get("anonymous", {}).get("enabled"))
        webhook = authentication.get("webhook", {})
        self.webhook = bool(webhook.get("enabled"))
        self.ttl = parse_duration(webhook.get("cacheTTL") or "2m0s")
        self.http = http
        self._cache = _TTLCache()

    async def authenticate(self, peercert: dict | None, authorization: str | None) -> User | None:
        user = user_from_certificate(peercert)
        if user is not None:
            return user
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() == "bearer" and token.strip() and self.webhook:
            user = await self._review(token.strip())
            if user is not None:
                return user
        return User(ANONYMOUS, ("system:unauthenticated",)) if self.anonymous else None

    async def _review(self, token: str) -> User | None:
        cached = self._cache.get(token)
        if cached is not None:
            return cached or None
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
        try:
            response = await self.http().post("/apis/authentication.k8s.io/v1/tokenreviews", content=json.dumps(body),
                                              headers={"Content-Type": "application/json"})
            response.raise_for_status()
            status = response.json().get("status") or {}
        except Exception as err:  # noqa: BLE001 - the apiserver is away: not authenticated, not cached
            log.warning("Token review failed", err=err)
            return None
        user: User | bool = False
        if status.get("authenticated"):
            info = status.get("user") or {}
            user = User(info.get("username", ""), tuple(info.get("groups") or ()), info.get("uid", ""),
                        info.get("extra") or {})
        self._cache.put(token, user, self.ttl)
        return user or None


class Authorizer:
    def __init__(self, authorization: dict, node_name: str, http: Callable):
        self.always_allow = authorization.get("mode") == "AlwaysAllow"
        webhook = authorization.get("webhook", {})
        self.allowed_ttl = parse_duration(webhook.get("cacheAuthorizedTTL") or "5m0s")
        self.denied_ttl = parse_duration(webhook.get("cacheUnauthorizedTTL") or "30s")
        self.node_name = node_name
        self.http = http
        self._cache = _TTLCache()

    async def authorize(self, user: User, method: str, path: str) -> str | None:
        """None when allowed; otherwise the text of the 403 answer."""
        if self.always_allow:
            return None
        wanted = subresources(path)
        action = verb(method)
        for subresource in wanted:
            if await self._allowed(user, action, subresource):
                return None
        return (f"Forbidden (user={user.name}, verb={action}, resource=nodes, "
                f"subresource(s)=[{' '.join(wanted)}])")

    async def _allowed(self, user: User, action: str, subresource: str) -> bool:
        key = (user.name, user.groups, user.uid, action, subresource)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        spec = {"user": user.name, "groups": list(user.groups),
                "resourceAttributes": {"verb": action, "version": "v1", "resource": "nodes",
                                       "subresource": subresource, "name": self.node_name}}
        if user.uid:
            spec["uid"] = user.uid
        if user.extra:
            spec["extra"] = user.extra
        body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec}
        try:
            response = await self.http().post("/apis/authorization.k8s.io/v1/subjectaccessreviews",
                                              content=json.dumps(body), headers={"Content-Type": "application/json"})
            response.raise_for_status()
            allowed = bool((response.json().get("status") or {}).get("allowed"))
        except Exception as err:  # noqa: BLE001 - the apiserver is away: deny, do not cache
            log.warning("Subject access review failed", err=err)
            return False
        self._cache.put(key, allowed, self.allowed_ttl if allowed else self.denied_ttl)
        return allowed
