"""Unary gRPC calls over HTTP/2, on the h2 protocol library: all the kubelet needs of gRPC (CRI calls on a unix
socket, gRPC health probes over TCP), without grpcio, whose C core, threads and buffers cost pykubelet about
12 MiB of resident memory (measured; see the README).

A `Channel` keeps one connection (nodeagent.http2) to its target (plaintext HTTP/2 with prior knowledge, as gRPC
speaks on unix sockets and to probe targets) and carries each call as a stream of it. The connection opens on first use, and
again after it fails: a call waits for it, retrying every 0.1 s doubling to 3 s, until the call's deadline, as
gRPC's wait-for-ready does, so calls work again soon after a runtime restarts. On the wire a call is HEADERS
(POST, content-type application/grpc, te: trailers, grpc-timeout), the request as one length-prefixed message
and END_STREAM; the answer HEADERS, the response as one length-prefixed message, and trailers carrying
grpc-status and grpc-message (or only trailers, for an error).
"""

from __future__ import annotations

import asyncio
import enum
import struct
import time
from urllib.parse import unquote

import h2.errors

from nodeagent import http2

RETRY_FIRST, RETRY_MAX = 0.1, 3.0


class StatusCode(enum.IntEnum):
    """gRPC status codes (google.rpc.Code)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


# gRPC's mapping of an HTTP status (an answer that is not gRPC) to a gRPC status.
_HTTP_STATUS = {400: StatusCode.INTERNAL, 401: StatusCode.UNAUTHENTICATED, 403: StatusCode.PERMISSION_DENIED,
                404: StatusCode.UNIMPLEMENTED, 429: StatusCode.UNAVAILABLE, 502: StatusCode.UNAVAILABLE,
                503: StatusCode.UNAVAILABLE, 504: StatusCode.UNAVAILABLE}


class RpcError(Exception):
    def __init__(self, code: StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


def _timeout_header(seconds: float) -> bytes:
    millis = max(1, int(seconds * 1000))
    return f"{millis}m".encode() if millis < 10**8 else f"{min(int(seconds), 10**8 - 1)}S".encode()


def _code(raw: bytes) -> StatusCode:
    value = int(raw)
    return StatusCode(value) if value in StatusCode._value2member_map_ else StatusCode.UNKNOWN


def _result(headers: dict[bytes, bytes], trailers: dict[bytes, bytes], body: bytes) -> bytes:
    """The response message, or the RpcError the status says."""
    status = int(headers.get(b":status", b"0"))
    fields = trailers or headers  # a trailers-only answer has its status in the headers
    if b"grpc-status" not in fields:
        code = _HTTP_STATUS.get(status, StatusCode.UNKNOWN) if status != 200 else StatusCode.INTERNAL
        raise RpcError(code, f"the server did not answer with a gRPC status (HTTP {status})")
    code = _code(fields[b"grpc-status"])
    if code != StatusCode.OK:
        raise RpcError(code, unquote(fields.get(b"grpc-message", b"").decode(errors="replace")))
    if len(body) < 5:
        return b""
    compressed, length = struct.unpack(">BI", body[:5])
    if compressed:
        raise RpcError(StatusCode.INTERNAL, "a compressed response message, though none was asked for")
    return bytes(body[5:5 + length])


def _reset_status(err: http2.HTTP2Error) -> StatusCode:
    """gRPC's status for a failed stream: REFUSED_STREAM may be retried, CANCEL was a cancel."""
    if err.reset_code == h2.errors.ErrorCodes.CANCEL:
        return StatusCode.CANCELLED
    if err.reset_code is None or err.reset_code == h2.errors.ErrorCodes.REFUSED_STREAM:
        return StatusCode.UNAVAILABLE
    return StatusCode.INTERNAL


class Channel:
    """Unary calls to one gRPC server: `unix` is a socket path, else `host` and `port` name it."""

    def __init__(self, *, unix: str | None = None, host: str = "", port: int = 0,
                 max_message_bytes: int = 4 * 1024 * 1024, user_agent: str = "pynode-h2rpc"):
        self.unix, self.host, self.port = unix, host, port
        self.authority = b"localhost" if unix else (f"[{host}]:{port}" if ":" in host else f"{host}:{port}").encode()
        self.limit = max_message_bytes
        self.user_agent = user_agent.encode()
        self._connection: http2.Connection | None = None
        self._connecting = asyncio.Lock()

    @property
    def connected(self) -> bool:
        return self._connection is not None and not self._connection.closed

    async def connect(self, deadline: float) -> http2.Connection:
        """The live connection, opened (retrying until `deadline`, a time.monotonic()) if there is none. Each
        caller retries on its own deadline; one attempt at a time."""
        wait, last = RETRY_FIRST, "no attempt"
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RpcError(StatusCode.UNAVAILABLE, f"no connection before the deadline ({last})")
            try:
                async with self._connecting:
                    if self.connected:
                        return self._connection
                    # asyncio.timeout, not wait_for: Python 3.11's wait_for returns a result that arrives together
                    # with a cancellation, and the cancelled call would go on with the new connection.
                    async with asyncio.timeout(max(deadline - time.monotonic(), 0.001)):
                        self._connection = await http2.connect(unix=self.unix, host=self.host, port=self.port)
                    return self._connection
            except asyncio.TimeoutError:
                last = "connecting timed out"
            except OSError as err:
                last = err.strerror or str(err)
            await asyncio.sleep(min(wait, max(deadline - time.monotonic(), 0)))
            wait = min(wait * 2, RETRY_MAX)

    async def unary(self, method: str, message: bytes, timeout: float) -> bytes:
        """Call `method` ("/package.Service/Method") with a serialized request; the serialized response."""
        deadline = time.monotonic() + timeout
        connection = await self.connect(deadline)
        headers = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", method.encode()),
                   (b":authority", self.authority), (b"content-type", b"application/grpc"), (b"te", b"trailers"),
                   (b"user-agent", self.user_agent),
                   (b"grpc-timeout", _timeout_header(max(deadline - time.monotonic(), 0.001)))]
        stream = None
        try:
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.001)):
                stream = await connection.open(headers, method, struct.pack(">BI", 0, len(message)) + message)
                response = await stream.headers
                body = bytearray()
                async for chunk in stream.chunks():
                    body += chunk
                    if len(body) > self.limit + 5:
                        raise RpcError(StatusCode.RESOURCE_EXHAUSTED,
                                       f"response larger than the {self.limit} bytes allowed")
        except TimeoutError:
            raise RpcError(StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
        except http2.HTTP2Error as err:
            raise RpcError(_reset_status(err), str(err)) from None
        finally:
            if stream is not None and not stream.ended:
                connection.cancel(stream)
        return _result(response, stream.trailers, bytes(body))

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.aclose()
