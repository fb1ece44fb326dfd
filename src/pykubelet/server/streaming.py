"""exec, attach and port-forward: ask CRI for a streaming URL, then proxy the upgraded connection to it.

The client's upgrade request (SPDY/3.1 or a WebSocket subprotocol) is replayed to the
runtime's streaming server with the headers that negotiate the protocol; its answer goes
back to the client, and after a 101 both directions are copied byte for byte until either
side ends. Nothing after the 101 is parsed.

aiohttp has no public way to take over a connection, so after accepting the upgrade we
install a pass-through parser on the request's protocol (the hook aiohttp's own WebSocket
support uses) and write to its transport directly.
"""

from __future__ import annotations

import asyncio
import urllib.parse

from aiohttp import web

from nodeagent import logs

log = logs.get(__name__)

# Request headers replayed to the runtime: the upgrade negotiation and nothing else.
_FORWARD = ("Connection", "Upgrade", "X-Stream-Protocol-Version", "Sec-WebSocket-Key", "Sec-WebSocket-Version",
            "Sec-WebSocket-Protocol", "Sec-WebSocket-Extensions", "Origin")
_HOP_BY_HOP = {"content-length", "transfer-encoding", "date", "server", "keep-alive"}
_CHUNK = 256 * 1024
_LINGER = 5  # seconds the runtime may go on writing after the client left
_HIGH_WATER = 1 * 2**20


class _Pipe:
    """What aiohttp's protocol feeds once the connection is ours: bytes from the client go to the runtime."""

    def __init__(self, upstream: asyncio.StreamWriter, client_transport: asyncio.Transport):
        self.upstream = upstream
        self.client_transport = client_transport
        self.closed = asyncio.Event()

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if not self.upstream.is_closing():
            self.upstream.write(data)
            if self.upstream.transport.get_write_buffer_size() > _HIGH_WATER:
                self.client_transport.pause_reading()
                asyncio.ensure_future(self._resume())
        return False, b""

    async def _resume(self) -> None:
        try:
            await self.upstream.drain()
        except ConnectionError:
            pass
        if not self.client_transport.is_closing():
            self.client_transport.resume_reading()

    def feed_eof(self) -> None:
        self.closed.set()
        if not self.upstream.is_closing() and self.upstream.can_write_eof():
            try:
                self.upstream.write_eof()
            except OSError:
                pass


def is_upgrade(request: web.Request) -> bool:
    return "upgrade" in request.headers.get("Connection", "").lower() and bool(request.headers.get("Upgrade"))


async def proxy(request: web.Request, url: str) -> web.StreamResponse:
    """Replay the upgrade request to `url` (the runtime's streaming server) and join the two connections."""
    target = urllib.parse.urlsplit(url)
    if target.scheme != "http" or not target.hostname:
        raise web.HTTPInternalServerError(text=f"unsupported streaming URL {url!r}")
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(target.hostname, target.port or 80), 10)
    except (OSError, asyncio.TimeoutError) as err:
        raise web.HTTPInternalServerError(text=f"error dialing the container runtime's streaming server: {err}")
    try:
        path = target.path + (f"?{target.query}" if target.query else "")
        head = [f"{request.method} {path} HTTP/1.1", f"Host: {target.netloc}"]
        head += [f"{name}: {value}" for name in _FORWARD for value in request.headers.getall(name, [])]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        await writer.drain()
        status, headers = await _read_head(reader)
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ValueError) as err:
        writer.close()
        raise web.HTTPInternalServerError(text=f"the container runtime's streaming server failed: {err}")
    if status != 101:
        body = await _read_body(reader, headers)
        writer.close()
        response = web.Response(status=status, body=body)
        for name, value in headers:
            if name.lower() not in _HOP_BY_HOP and name.lower() != "connection":
                response.headers.add(name, value)
        return response

    response = web.StreamResponse(status=101)
    for name, value in headers:
        if name.lower() not in _HOP_BY_HOP:
            response.headers.add(name, value)
    response.force_close()
    transport = request.transport
    if transport is None:
        writer.close()
        return response
    pipe = _Pipe(writer, transport)
    # Before the 101 leaves: the client's first frames must already find the pipe.
    request.protocol.set_parser(pipe)
    await response.prepare(request)
    try:
        await _copy_to_client(reader, request, pipe)
    finally:
        writer.close()
        if not transport.is_closing():
            transport.close()
    return response


async def _copy_to_client(reader: asyncio.StreamReader, request: web.Request, pipe: _Pipe) -> None:
    """Runtime → client until the runtime ends; once the client is gone, until the runtime has been
    quiet for _LINGER seconds. One plain read per chunk (no task or wait per chunk: this is the
    port-forward throughput)."""
    transport = request.transport
    loop = asyncio.get_running_loop()
    me = asyncio.current_task()
    last = loop.time()
    ended = False

    async def end_once_quiet() -> None:
        nonlocal ended
        await pipe.closed.wait()
        while (quiet := loop.time() - last) < _LINGER:
            await asyncio.sleep(_LINGER - quiet)
        ended = True
        me.cancel()

    watcher = asyncio.ensure_future(end_once_quiet())
    try:
        while transport is not None and not transport.is_closing():
            data = await reader.read(_CHUNK)
            if not data:
                return
            last = loop.time()
            transport.write(data)
            if transport.get_write_buffer_size() > _HIGH_WATER:
                await request.protocol._drain_helper()  # noqa: SLF001 - aiohttp's flow control for raw writes
    except ConnectionError:
        return
    except asyncio.CancelledError:
        if not ended:
            raise
        me.uncancel()
    finally:
        watcher.cancel()


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, list[tuple[str, str]]]:
    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise ValueError(f"not an HTTP response: {lines[0]!r}")
    headers = []
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers.append((name.strip(), value.strip()))
    return int(parts[1]), headers


async def _read_body(reader: asyncio.StreamReader, headers: list[tuple[str, str]]) -> bytes:
    length = next((int(v) for k, v in headers if k.lower() == "content-length"), None)
    try:
        if length is not None:
            return await asyncio.wait_for(reader.readexactly(length), 10)
        return await asyncio.wait_for(reader.read(1 << 16), 10)
    except (asyncio.IncompleteReadError, asyncio.TimeoutError, OSError):
        return b""
