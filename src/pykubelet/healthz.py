"""The kubelet's plain-HTTP health endpoint (default 127.0.0.1:10248), which `kubeadm join` polls."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from nodeagent import logs

log = logs.get(__name__)


async def serve(host: str, port: int, healthy: Callable[[], tuple[bool, str]]) -> asyncio.Server:
    """Answer GET /healthz with 200 "ok", or 500 and the reason while `healthy()` says no."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            method, path, *_ = request.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            if path.split("?")[0] != "/healthz":
                status, body = "404 Not Found", "404 page not found\n"
            else:
                ok, reason = healthy()
                status, body = ("200 OK", "ok") if ok else ("500 Internal Server Error", f"{reason}\n")
            data = body.encode()
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                         f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
                         + (data if method != "HEAD" else b""))
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ValueError,
                ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, port)
    log.info("Serving healthz", address=f"{host}:{port}")
    return server
