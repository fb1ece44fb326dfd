"""Many long GET requests (list+watch streams) over a few HTTP/2 connections to the apiserver, as client-go does.

The kubelet follows every ConfigMap and Secret its pods mount with a watch of its own. Over HTTP/1.1 each watch
holds a TLS connection (about 100 KiB here, on both ends); over HTTP/2 a watch is a stream of a shared connection
and costs a few KiB. httpx's own HTTP/2 stalled every request of a connection here after a while, so this is a
small client of our own on the h2 protocol library, for GET only: a reader task per connection feeds each stream's
queue and returns the flow-control window at once (watch data is small and read promptly), so one slow stream
never holds the others back. A connection carries at most the server's MAX_CONCURRENT_STREAMS; past that a new
one opens. A connection that fails or is told GOAWAY fails its streams (the callers' list+watch resume) and is
replaced on the next request.

`H2Client` offers the two calls nodeagent.listwatch.ListWatch makes of an httpx client: `get` and `stream`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlencode, urlsplit

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from . import logs

log = logs.get(__name__)

READ_SIZE = 65536
CONNECT_TIMEOUT = 10.0


class H2Error(Exception):
    """The stream or its connection failed (reset, GOAWAY, closed, timed out)."""


class Response:
    """What ListWatch reads of a response: the status, the body as lines or as JSON."""

    def __init__(self, stream: "_Stream", status: int):
        self._stream = stream
        self.status_code = status
        self._body: bytes | None = None

    def raise_for_status(self) -> None:
        if self.status_code >= 400:
            raise H2Error(f"HTTP {self.status_code} for {self._stream.path}")

    async def aiter_lines(self) -> AsyncIterator[str]:
        pending = b""
        async for chunk in self._stream.chunks():
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
    def text(self) -> str:
        return (self._body or b"").decode(errors="replace")

    def json(self):
        return json.loads(self._body or b"null")


class _Stream:
    def __init__(self, connection: "_Connection", stream_id: int, path: str, read_timeout: float | None):
        self.connection = connection
        self.id = stream_id
        self.path = path
        self.read_timeout = read_timeout
        self.status: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
        self.ended = False

    def fail(self, err: BaseException) -> None:
        if not self.status.done():
            self.status.set_exception(err)
        self.queue.put_nowait(err)
        self.ended = True

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            try:
                item = await asyncio.wait_for(self.queue.get(), self.read_timeout)
            except asyncio.TimeoutError:
                raise H2Error(f"no data on {self.path} for {self.read_timeout:.0f}s") from None
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.streams: dict[int, _Stream] = {}
        self.max_streams = 100  # until the server's SETTINGS say otherwise
        self.closed = False
        self.task: asyncio.Task | None = None

    @property
    def free(self) -> bool:
        return not self.closed and len(self.streams) < self.max_streams

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.closed:
            self.writer.write(data)

    async def start(self) -> None:
        self.h2.initiate_connection()
        # Each stream may run ahead by 1 MiB before we read it; we read everything at once anyway.
        self.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20,
                                 h2.settings.SettingCodes.ENABLE_PUSH: 0})
        self.h2.increment_flow_control_window(1 << 24)
        self.flush()
        await self.writer.drain()
        self.task = asyncio.create_task(self._read(), name="h2watch-reader")

    async def _read(self) -> None:
        error: BaseException = H2Error("connection closed by the server")
        try:
            while True:
                data = await self.reader.read(READ_SIZE)
                if not data:
                    break
                for event in self.h2.receive_data(data):
                    self._handle(event)
                self.flush()
                if self.closed:
                    break
        except (OSError, h2.exceptions.ProtocolError, ssl.SSLError) as err:
            error = H2Error(f"connection failed: {err}")
        except asyncio.CancelledError:
            error = H2Error("connection closed")
            raise
        finally:
            self._close(error)

    def _handle(self, event) -> None:
        stream = self.streams.get(getattr(event, "stream_id", 0) or 0)
        if isinstance(event, h2.events.ResponseReceived) and stream is not None:
            status = dict(event.headers).get(b":status", b"0")
            if not stream.status.done():
                stream.status.set_result(int(status))
        elif isinstance(event, h2.events.DataReceived):
            if event.flow_controlled_length:
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            if stream is not None:
                stream.queue.put_nowait(event.data)
        elif isinstance(event, h2.events.StreamEnded) and stream is not None:
            stream.queue.put_nowait(None)
            stream.ended = True
            self.streams.pop(stream.id, None)
        elif isinstance(event, h2.events.StreamReset) and stream is not None:
            stream.fail(H2Error(f"stream of {stream.path} reset by the server (error {event.error_code})"))
            self.streams.pop(stream.id, None)
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            changed = event.changed_settings.get(h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS)
            if changed is not None:
                self.max_streams = changed.new_value
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._close(H2Error(f"the server ended the connection (GOAWAY, error {event.error_code})"))

    def _close(self, error: BaseException) -> None:
        if self.closed:
            return
        self.closed = True
        for stream in list(self.streams.values()):
            stream.fail(error)
        self.streams.clear()
        with contextlib.suppress(Exception):
            self.writer.close()

    def open(self, headers: list[tuple[bytes, bytes]], path: str, read_timeout: float | None) -> _Stream:
        stream_id = self.h2.get_next_available_stream_id()
        self.h2.send_headers(stream_id, headers, end_stream=True)
        stream = self.streams[stream_id] = _Stream(self, stream_id, path, read_timeout)
        self.flush()
        return stream

    def cancel(self, stream: _Stream) -> None:
        """The caller is done with `stream` before its end: tell the server, forget it."""
        if self.streams.pop(stream.id, None) is not None and not self.closed:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2.reset_stream(stream.id, h2.errors.ErrorCodes.CANCEL)
            self.flush()

    async def aclose(self) -> None:
        if not self.closed:
            with contextlib.suppress(Exception):
                self.h2.close_connection()
                self.flush()
        self._close(H2Error("client closed"))
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


class H2Client:
    """GET requests over HTTP/2 to `base_url` with `ssl_context` (its client certificate) and optional headers."""

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
        self._connections: list[_Connection] = []
        self._connecting = asyncio.Lock()

    @property
    def open_streams(self) -> int:
        return sum(len(c.streams) for c in self._connections)

    @property
    def connections(self) -> int:
        return sum(not c.closed for c in self._connections)

    async def _connection(self) -> _Connection:
        async with self._connecting:
            self._connections = [c for c in self._connections if not c.closed]
            for connection in self._connections:
                if connection.free:
                    return connection
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, ssl=self.ssl, server_hostname=self.host,
                                        limit=READ_SIZE * 4), CONNECT_TIMEOUT)
            protocol = writer.get_extra_info("ssl_object").selected_alpn_protocol()
            if protocol != "h2":
                writer.close()
                raise H2Error(f"{self.authority} does not speak HTTP/2 (ALPN gave {protocol!r})")
            connection = _Connection(reader, writer)
            await connection.start()
            self._connections.append(connection)
            return connection

    def _headers(self, path: str, params: dict | None) -> tuple[str, list[tuple[bytes, bytes]]]:
        target = self.prefix + path + (f"?{urlencode(params)}" if params else "")
        return target, [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", self.authority.encode()),
                        (b":path", target.encode()), (b"accept", b"application/json"), *self.headers]

    @contextlib.asynccontextmanager
    async def stream(self, method: str, path: str, params: dict | None = None, timeout=None):
        """A streamed GET (`method` must be GET); `timeout.read` bounds the wait for each piece of data."""
        if method != "GET":
            raise ValueError("H2Client only does GET")
        read = getattr(timeout, "read", None) if timeout is not None else None
        target, headers = self._headers(path, params)
        started, status = time.monotonic(), None
        try:
            connection = await self._connection()
            stream = connection.open(headers, target, read)
            status = await asyncio.wait_for(asyncio.shield(stream.status), CONNECT_TIMEOUT)
        finally:
            if self.observe is not None:
                self.observe("GET", self.authority, status, time.monotonic() - started)
        try:
            yield Response(stream, status)
        finally:
            if not stream.ended:
                connection.cancel(stream)

    async def get(self, path: str, params: dict | None = None) -> Response:
        async with self.stream("GET", path, params=params) as response:
            response._stream.read_timeout = CONNECT_TIMEOUT * 3
            await response.read()
            return response

    async def aclose(self) -> None:
        connections, self._connections = self._connections, []
        await asyncio.gather(*(c.aclose() for c in connections), return_exceptions=True)
