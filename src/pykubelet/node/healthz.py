"""The kubelet's plain-HTTP health endpoint (default 127.0.0.1:10248), which `kubeadm join` polls."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from nodeagent import httpserve, logs

log = logs.get(__name__)

_TEXT = {"Content-Type": "text/plain; charset=utf-8"}


async def serve(host: str, port: int, healthy: Callable[[], tuple[bool, str]]) -> asyncio.Server:
    """Answer GET /healthz with 200 "ok", or 500 and the reason while `healthy()` says no."""

    def handle(method: str, path: str) -> httpserve.Response:
        if path != "/healthz":
            return httpserve.not_found()
        ok, reason = healthy()
        return (200, _TEXT, b"ok") if ok else (500, _TEXT, f"{reason}\n".encode())

    server = await httpserve.serve_http(host, port, handle)
    log.info("Serving healthz", address=f"{host}:{port}")
    return server
