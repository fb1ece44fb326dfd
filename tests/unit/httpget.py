"""A raw HTTP/1.1 GET against a server on 127.0.0.1, for the tests of pyproxy's tiny servers."""

from __future__ import annotations

import asyncio


async def get(port: int, path: str = "/", method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body); checks that Content-Length matches the body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    assert int(headers["Content-Length"]) == len(body) or method == "HEAD"
    return int(status.split()[1]), headers, body
