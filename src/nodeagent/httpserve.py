"""The tiny HTTP/1.1 server behind /metrics, /healthz and the service health checks: one request per connection."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from email.utils import formatdate

from . import logs

log = logs.get(__name__)

Response = tuple[int, dict[str, str], bytes]
_REASONS = {200: "OK", 404: "Not Found", 500: "Internal Server Error", 503: "Service Unavailable"}


def not_found() -> Response:
    """What Go's ServeMux answers for an unknown path."""
    return 404, {"Content-Type": "text/plain; charset=utf-8", "X-Content-Type-Options": "nosniff"}, \
        b"404 page not found\n"


async def serve_http(host: str | Sequence[str] | None, port: int,
                     handle: Callable[[str, str], Response]) -> asyncio.Server:
    """Answer one request per connection with `handle(method, path)` (path without the query).

    Raises OSError when the address cannot be bound; a bad or slow request just
    closes its connection.
    """

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            method, target, _version = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ValueError,
                ConnectionError):
            writer.close()
            return
        try:
            status, headers, body = handle(method, target.split("?", 1)[0])
            lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}", f"Date: {formatdate(usegmt=True)}"]
            lines += [f"{k}: {v}" for k, v in headers.items()]
            lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
            writer.write("\r\n".join(lines).encode("latin-1") + (b"" if method == "HEAD" else body))
            await writer.drain()
        except ConnectionError:
            pass
        except Exception as exc:  # a handler bug must not kill the server
            log.error("HTTP handler failed", path=target, err=exc)
        finally:
            writer.close()

    return await asyncio.start_server(connection, host, port)
