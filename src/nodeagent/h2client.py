"""The agents' client for the kube-apiserver: every request (lists, watches, creates, patches) a stream of a few
HTTP/2 connections, as client-go does, on nodeagent.http2.

The kubelet follows every ConfigMap and Secret its pods mount with a watch of its own; over HTTP/1.1 each watch
would hold a TLS connection (about 100 KiB here, on both ends), over HTTP/2 it is a stream of a shared connection
and costs a few KiB. httpx's own HTTP/2 stalled every request of a connection here after a while, and httpx with
lightkube cost the agents about 10 MiB of memory, so this small client does what they did for us. A connection
carries at most the server's MAX_CONCURRENT_STREAMS; past that a new one opens. A connection that fails or is
told GOAWAY fails its streams (the callers retry, a list+watch resumes) and is replaced on the next request.

`H2Client` offers the calls the agents made of an httpx client: `request`, `get`, `post`, `put`, `patch`,
`delete` (the whole answer, within `timeout`) and `stream` (an answer read as it comes, `read_timeout` per piece).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlencode, urlsplit

from . import http2, logs
from .http2 import HTTP2Error

log = logs.get(__name__)

CONNECT_TIMEOUT = 10.0
REQUEST_TIMEOUT = 10.0

__all__ = ["H2Client", "HTTP2Error", "HTTPStatusError", "Response"]


class HTTPStatusError(Exception):
    """An answer with a 4xx or 5xx status; `response` is it, `status_code` its code."""

    def __init__(self, message: str, response: "Response"):
        super().__init__(message)
        self.response = response
        self.status_code = response.status_code


class Response:
    def __init__(self, method: str, stream: http2.Stream, headers: dict[bytes, bytes]):
        self.method = method
        self._stream = stream
        self.status_code = int(headers.get(b":status", b"0"))
        self.headers = {k.decode(): v.decode(errors="replace") for k, v in headers.items() if not k.startswith(b":")}
        self._body: bytes | None = None

    def raise_for_status(self) -> None:
        if self.status_code >= 400:
            detail = ""
            with contextlib.suppress(ValueError, AttributeError):
                detail = f": {self.json().get('message')}" if self._body else ""
            raise HTTPStatusError(f"HTTP {self.status_code} for {self.method} {self._stream.path}{detail}", self)

    async def aiter_lines(self, read_timeout: float | None = None) -> AsyncIterator[str]:
        pending = b""
        async for chunk in self._stream.chunks(read_timeout):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield line.decode()
        if pending:
            yield pending.decode()

    async def read(self) -> bytes:
        if self._body is None:
            self._body = b"".join([chunk async for chunk in self._stream.chunks()])
        return self._body

    @property
    def content(self) -> bytes:
        return self._body or b""

    @property
    def text(self) -> str:
        return self.content.decode(errors="replace")

    def json(self):
        return json.loads(self._body or b"null")


class H2Client:
    """Requests over HTTP/2 to `base_url` with `ssl_context` (its client certificate) and optional headers."""

    def __init__(self, base_url: str, ssl_context: ssl.SSLContext, headers: dict[str, str] | None = None,
                 observe: Callable[[str, str, int | None, float], None] | None = None):
        """`observe(method, host, status or None, seconds)` hears of each request once its status is known (the
        apiclient's Observe: rest_client_requests_total and its latency)."""
        self.observe = observe
        url = urlsplit(base_url)
        self.host, self.port = url.hostname or "", url.port or 443
        self.authority = url.netloc
        self.prefix = url.path.rstrip("/")
        self.ssl = ssl_context
        self.ssl.set_alpn_protocols(["h2"])
        self.headers = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        self._connections: list[http2.Connection] = []
        self._connecting = asyncio.Lock()

    @property
    def open_streams(self) -> int:
        return sum(len(c.streams) for c in self._connections)

    @property
    def connections(self) -> int:
        return sum(not c.closed for c in self._connections)

    async def _open(self, fields: http2.Headers, target: str,
                    body: bytes | None) -> tuple[http2.Connection, http2.Stream]:
        """A stream for the request on a connection with room for it (a new one if none has)."""
        async with self._connecting:
            self._connections = [c for c in self._connections if not c.closed]
            connection = next((c for c in self._connections if c.free), None)
            if connection is None:
                async with asyncio.timeout(CONNECT_TIMEOUT):  # not wait_for: see cri.h2rpc.Channel.connect
                    connection = await http2.connect(host=self.host, port=self.port, tls=self.ssl)
                self._connections.append(connection)
            stream = connection.request(fields, target, end_stream=not body)
        if body:
            await asyncio.wait_for(connection.send_body(stream, body), CONNECT_TIMEOUT)
        return connection, stream

    def _headers(self, method: str, path: str, params: dict | None,
                 headers: dict[str, str] | None, body: bytes | None) -> tuple[str, http2.Headers]:
        target = self.prefix + path + (f"?{urlencode(params)}" if params else "")
        fields = [(b":method", method.encode()), (b":scheme", b"https"), (b":authority", self.authority.encode()),
                  (b":path", target.encode()), (b"accept", b"application/json"), *self.headers]
        if body is not None:
            fields.append((b"content-length", str(len(body)).encode()))
        fields += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        return target, fields

    @contextlib.asynccontextmanager
    async def stream(self, method: str, path: str, params: dict | None = None, content: bytes | str | None = None,
                     headers: dict[str, str] | None = None):
        """A request whose answer is read as it comes (`Response.aiter_lines`, `read`); the status and headers
        must come within CONNECT_TIMEOUT."""
        body = content.encode() if isinstance(content, str) else content
        target, fields = self._headers(method, path, params, headers, body)
        started, status = time.monotonic(), None
        try:
            connection, stream = await self._open(fields, target, body)
            try:
                answer = await asyncio.wait_for(asyncio.shield(stream.headers), CONNECT_TIMEOUT)
            except BaseException:
                connection.cancel(stream)
                raise
            status = int(answer.get(b":status", b"0"))
        finally:
            if self.observe is not None:
                self.observe(method, self.authority, status, time.monotonic() - started)
        try:
            yield Response(method, stream, answer)
        finally:
            if not stream.ended:
                connection.cancel(stream)

    async def request(self, method: str, path: str, params: dict | None = None, content: bytes | str | None = None,
                      headers: dict[str, str] | None = None, timeout: float = REQUEST_TIMEOUT) -> Response:
        """A request and its whole answer, within `timeout` seconds."""
        async with asyncio.timeout(timeout):
            async with self.stream(method, path, params=params, content=content, headers=headers) as response:
                await response.read()
                return response

    async def get(self, path: str, params: dict | None = None, **kw) -> Response:
        return await self.request("GET", path, params=params, **kw)

    async def post(self, path: str, **kw) -> Response:
        return await self.request("POST", path, **kw)

    async def put(self, path: str, **kw) -> Response:
        return await self.request("PUT", path, **kw)

    async def patch(self, path: str, **kw) -> Response:
        return await self.request("PATCH", path, **kw)

    async def delete(self, path: str, **kw) -> Response:
        return await self.request("DELETE", path, **kw)

    async def aclose(self) -> None:
        connections, self._connections = self._connections, []
        await asyncio.gather(*(c.aclose() for c in connections), return_exceptions=True)
