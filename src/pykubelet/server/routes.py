"""The kubelet API's routes on :10250 (and the read-only port): what each path answers.

`host` is what the server reads from the kubelet: ``find_pod(namespace, name)`` gives
(pod, API view) or None, ``runtime(uid)`` the PLEG's PodRuntime, ``pods()`` the pods it
runs as the API shows them, ``cri`` the runtime client, ``healthy()``, ``config`` and
``registry`` and ``probes_registry`` (prometheus_client) for /metrics and /metrics/probes, ``stats``
(a stats.SummaryProvider) for /stats/summary, /metrics/resource and /metrics/cadvisor.
"""

from __future__ import annotations

import json
import shlex
import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from cri import CRIError, api
from nodeagent import logs
from nodeagent.metrics import exposition

from .. import stats
from . import auth, streaming
from .containerlogs import container_logs

_TRUE = {"1", "true", "True"}

log = logs.get(__name__)


def _json(body) -> web.Response:
    return web.Response(text=json.dumps(body), content_type="application/json")


def _running_container(host, namespace: str, pod_name: str, container: str, uid: str | None):
    found = host.find_pod(namespace, pod_name)
    if found is None or (uid and found[0]["metadata"]["uid"] != uid):
        raise web.HTTPNotFound(text="pod does not exist")
    pod = found[0]
    rt = host.runtime(pod["metadata"]["uid"])
    record = next((c for c in rt.running if c.name == container), None)
    if record is None:
        raise web.HTTPNotFound(text=f'container not found ("{container}")')
    return pod, rt, record


def _stream_options(query) -> tuple[bool, bool, bool, bool]:
    stdin, stdout, stderr, tty = (query.get(k) in _TRUE for k in ("input", "output", "error", "tty"))
    if not (stdin or stdout or stderr):
        raise web.HTTPBadRequest(text="you must specify at least 1 of stdin, stdout, stderr")
    return stdin, stdout, stderr and not tty, tty


def _require_upgrade(request: web.Request) -> None:
    if not streaming.is_upgrade(request):
        raise web.HTTPBadRequest(text="Upgrade request required")


def _runtime_error(err: CRIError) -> web.HTTPException:
    return web.HTTPInternalServerError(text=str(err))


def build(host, authenticator: auth.Authenticator | None, authorizer: auth.Authorizer | None,
          read_only: bool = False) -> web.Application:
    """The application; `read_only` (the read-only port) has no auth and only the read paths."""

    @web.middleware
    async def authenticate(request: web.Request, handler):
        if authenticator is None:
            return await handler(request)
        transport = request.transport
        peercert = transport.get_extra_info("peercert") if transport is not None else None
        user = await authenticator.authenticate(peercert, request.headers.get("Authorization"))
        if user is None:
            return web.Response(status=401, text="Unauthorized")
        denied = await authorizer.authorize(user, request.method, request.path)
        if denied:
            return web.Response(status=403, text=denied)
        return await handler(request)

    async def healthz(request):
        ok, reason = host.healthy()
        return web.Response(text="ok") if ok else web.Response(status=500, text=f"{reason}\n")

    async def pods(request):
        return _json({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": host.pods()})

    async def running_pods(request):
        items = []
        for uid, rt in host.runtime_pods():
            running = rt.running
            if not running:
                continue
            labels = running[0].labels
            items.append({"metadata": {"name": labels.get("io.kubernetes.pod.name", ""),
                                       "namespace": labels.get("io.kubernetes.pod.namespace", ""), "uid": uid,
                                       "creationTimestamp": None},
                          "spec": {"containers": [{"name": c.name, "image": c.image, "resources": {}}
                                                  for c in running]},
                          "status": {}})
        return _json({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items})

    async def configz(request):
        return _json({"kubeletconfig": host.config.effective})

    async def metrics(request):
        return web.Response(body=exposition(host.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def probe_metrics(request):
        return web.Response(body=exposition(host.probes_registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def logs(request):
        return await container_logs(request, host)

    async def summary(request):
        only = request.query.get("only_cpu_and_memory", "").lower() == "true"
        return _json(stats.as_api(await host.stats.summary(only_cpu_and_memory=only)))

    async def resource_metrics(request):
        try:
            got = await host.stats.summary(only_cpu_and_memory=True)
        except Exception as err:  # the error gauges say so; the scraper keeps its series
            log.error("Error getting summary for resourceMetric prometheus endpoint", err=str(err))
            got = None
        return web.Response(body=stats.resource_metrics(got), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def cadvisor_metrics(request):
        got = await host.stats.summary()
        return web.Response(body=stats.cadvisor_metrics(got, time.time_ns()),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _container_stream(request, make_request, call):
        """exec and attach: a CRI request for the running container, then the upgrade proxy to its URL."""
        info = request.match_info
        _require_upgrade(request)
        _, _, record = _running_container(host, info["namespace"], info["pod"], info["container"], info.get("uid"))
        stdin, stdout, stderr, tty = _stream_options(request.query)
        try:
            answer = await call(make_request(record.id, stdin=stdin, stdout=stdout, stderr=stderr, tty=tty))
        except CRIError as err:
            raise _runtime_error(err) from None
        return await streaming.proxy(request, answer.url)

    async def exec_(request):
        command = request.query.getall("command", [])
        if not command:
            raise web.HTTPBadRequest(text="you must specify a command")
        return await _container_stream(
            request, lambda cid, **opts: api.ExecRequest(container_id=cid, cmd=command, **opts), host.cri.exec)

    async def attach(request):
        return await _container_stream(
            request, lambda cid, **opts: api.AttachRequest(container_id=cid, **opts), host.cri.attach)

    async def port_forward(request):
        info = request.match_info
        _require_upgrade(request)
        found = host.find_pod(info["namespace"], info["pod"])
        if found is None or (info.get("uid") and found[0]["metadata"]["uid"] != info["uid"]):
            raise web.HTTPNotFound(text="pod does not exist")
        sandbox = host.runtime(found[0]["metadata"]["uid"]).sandbox
        if sandbox is None or sandbox.state != api.SANDBOX_READY:
            raise web.HTTPNotFound(text=f"pod {info['namespace']}/{info['pod']} has no running sandbox")
        try:
            ports = [int(p) for value in request.query.getall("port", []) for p in value.split(",") if p]
        except ValueError:
            raise web.HTTPBadRequest(text="invalid port") from None
        try:
            answer = await host.cri.port_forward(api.PortForwardRequest(pod_sandbox_id=sandbox.id, port=ports))
        except CRIError as err:
            raise _runtime_error(err) from None
        return await streaming.proxy(request, answer.url)

    async def run(request):
        info = request.match_info
        _, _, record = _running_container(host, info["namespace"], info["pod"], info["container"], info.get("uid"))
        command = request.query.get("cmd", "")
        if not command:
            raise web.HTTPBadRequest(text="you must specify a command")
        try:
            answer = await host.cri.exec_sync(api.ExecSyncRequest(container_id=record.id, cmd=shlex.split(command),
                                                                  timeout=0))
        except CRIError as err:
            raise _runtime_error(err) from None
        return web.Response(body=answer.stdout + answer.stderr, content_type="text/plain")

    app = web.Application(middlewares=[] if read_only else [authenticate])
    read = [web.get("/healthz", healthz), web.get("/pods", pods), web.get("/pods/", pods),
            web.get("/metrics", metrics), web.get("/metrics/probes", probe_metrics),
            web.get("/stats/summary", summary), web.get("/stats/summary/", summary),
            web.get("/metrics/resource", resource_metrics), web.get("/metrics/cadvisor", cadvisor_metrics)]
    app.add_routes(read)
    if read_only:
        return app
    app.add_routes([web.get("/runningpods/", running_pods), web.get("/configz", configz),
                    web.get("/containerLogs/{namespace}/{pod}/{container}", logs)])
    for method in ("GET", "POST"):
        app.add_routes([
            web.route(method, "/exec/{namespace}/{pod}/{container}", exec_),
            web.route(method, "/exec/{namespace}/{pod}/{uid}/{container}", exec_),
            web.route(method, "/attach/{namespace}/{pod}/{container}", attach),
            web.route(method, "/attach/{namespace}/{pod}/{uid}/{container}", attach),
            web.route(method, "/portForward/{namespace}/{pod}", port_forward),
            web.route(method, "/portForward/{namespace}/{pod}/{uid}", port_forward),
        ])
    app.add_routes([web.post("/run/{namespace}/{pod}/{container}", run),
                    web.post("/run/{namespace}/{pod}/{uid}/{container}", run)])
    return app
