"""nodeagent.h2client against a real HTTP/2 server (hypercorn, TLS with ALPN h2) on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import subprocess

import h2.config
import pytest
from hypercorn.asyncio import serve
from hypercorn.config import Config

from nodeagent.h2client import H2Client, HTTP2Error, HTTPStatusError
from nodeagent.listwatch import ListWatch


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return d / "cert.pem", d / "key.pem"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """An ASGI app: /lines/<n> streams n lines then holds the stream open; /json answers once; /big a 4 MiB body."""

    def __init__(self):
        self.open = 0
        self.seen_paths: list[str] = []
        self.observed: list[tuple] = []  # what the client told its observe callback
        self.release = asyncio.Event()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        path = scope["path"]
        self.seen_paths.append(path + ("?" + scope["query_string"].decode() if scope["query_string"] else ""))
        if path == "/json":
            body = json.dumps({"items": [{"n": 1}], "metadata": {"resourceVersion": "7"}}).encode()
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})
            return
        if path == "/echo":  # the request's method, headers and body, as JSON
            body = b""
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
            answer = json.dumps({"method": scope["method"], "length": len(body), "sum": sum(body) % 65521,
                                 "type": dict(scope["headers"]).get(b"content-type", b"").decode()}).encode()
            await send({"type": "http.response.start", "status": 201, "headers": []})
            await send({"type": "http.response.body", "body": answer})
            return
        if path == "/conflict":
            await send({"type": "http.response.start", "status": 409, "headers": []})
            await send({"type": "http.response.body", "body": b'{"kind":"Status","message":"the object was modified"}'})
            return
        if path == "/gone":
            await send({"type": "http.response.start", "status": 410, "headers": []})
            await send({"type": "http.response.body", "body": b"{}"})
            return
        if path == "/big":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for _ in range(64):
                await send({"type": "http.response.body", "body": b"x" * 65536, "more_body": True})
            await send({"type": "http.response.body", "body": b"\n"})
            return
        count = int(path.rsplit("/", 1)[1])
        self.open += 1
        try:
            await receive()  # the (empty) request body; the next receive() is the client leaving
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for i in range(count):
                await send({"type": "http.response.body", "body": f'{{"i":{i}}}\n'.encode(), "more_body": True})
            receive_task = asyncio.ensure_future(receive())
            release_task = asyncio.ensure_future(self.release.wait())
            await asyncio.wait({receive_task, release_task}, return_when=asyncio.FIRST_COMPLETED)
            release_task.cancel()
            if self.release.is_set():
                await send({"type": "http.response.body", "body": b""})
            else:
                receive_task.cancel()
        finally:
            self.open -= 1


async def with_server(certificate, body):
    cert, key = certificate
    app = Server()
    config = Config()
    port = free_port()
    config.bind = [f"127.0.0.1:{port}"]
    config.certfile, config.keyfile = str(cert), str(key)
    config.h2_max_concurrent_streams = 50
    config.loglevel = "WARNING"
    stop = asyncio.Event()
    server = asyncio.create_task(serve(app, config, shutdown_trigger=stop.wait))
    await asyncio.sleep(0.3)
    client = H2Client(f"https://127.0.0.1:{port}", ssl.create_default_context(cafile=str(cert)),
                      {"Authorization": "Bearer t0ken"}, observe=lambda *request: app.observed.append(request))
    try:
        return await body(client, app, stop)
    finally:
        await client.aclose()
        stop.set()
        # hypercorn complains when it is stopped under an open stream, which one test does on purpose
        await asyncio.wait_for(asyncio.gather(server, return_exceptions=True), 10)


def test_many_streams_share_few_connections_and_each_gets_its_lines(certificate):
    async def body(client, app, stop):
        all_open = asyncio.Event()
        reading = []

        async def one(n):
            async with client.stream("GET", f"/lines/{n}") as response:
                assert response.status_code == 200
                got = []
                async for line in response.aiter_lines():
                    got.append(json.loads(line)["i"])
                    if len(got) == n:
                        reading.append(1)
                        if len(reading) == 120:
                            all_open.set()
                        await all_open.wait()  # every stream open at once
                        return got
        results = await asyncio.wait_for(asyncio.gather(*(one(3) for _ in range(120))), 20)
        assert results == [[0, 1, 2]] * 120
        connections = client.connections
        await asyncio.sleep(0.3)
        return connections, app.open
    connections, still_open = asyncio.run(with_server(certificate, body))
    assert connections == 3  # 50 streams a connection (the server's setting), not one each
    assert still_open == 0  # leaving a stream early resets it: the server lets go of every one


def test_get_reads_json_and_status_codes_pass_through(certificate):
    async def body(client, app, stop):
        response = await client.get("/json", params={"limit": "500"})
        gone = await client.get("/gone")
        big = await client.get("/big")
        return response.status_code, response.json(), gone.status_code, len(await big.read()), app
    status, obj, gone, size, app = asyncio.run(with_server(certificate, body))
    assert (status, obj["metadata"]["resourceVersion"], gone, size) == (200, "7", 410, 64 * 65536 + 1)
    assert "/json?limit=500" in app.seen_paths
    # each request reaches the agent's request metrics (rest_client_requests_total), as those on httpx do
    assert [(method, code) for method, _, code, _ in app.observed] == [("GET", 200), ("GET", 410), ("GET", 200)]


def test_streams_end_when_the_server_ends_them_and_fail_when_it_goes(certificate):
    async def body(client, app, stop):
        async def read_all():
            async with client.stream("GET", "/lines/1") as response:
                return [line async for line in response.aiter_lines()]
        ending = asyncio.create_task(read_all())
        await asyncio.sleep(0.3)
        app.release.set()
        ended = await asyncio.wait_for(ending, 5)
        app.release.clear()
        failing = asyncio.create_task(read_all())
        await asyncio.sleep(0.3)
        stop.set()  # the server shuts down under the open stream
        with pytest.raises(HTTP2Error):
            await asyncio.wait_for(failing, 10)
        return ended
    assert asyncio.run(with_server(certificate, body)) == ['{"i":0}']


def test_list_watch_runs_over_it(certificate):
    async def body(client, app, stop):
        seen = []
        source = ListWatch(lambda: client, "/json", kind="Thing", replace=lambda items: seen.append(items),
                           update=seen.append, remove=seen.append)
        task = asyncio.create_task(source.run())
        await asyncio.wait_for(source.synced.wait(), 5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return seen
    assert asyncio.run(with_server(certificate, body))[0] == [{"n": 1}]


def test_requests_with_bodies_larger_than_the_windows_and_error_statuses(certificate):
    async def body(client, app, stop):
        big = bytes(range(256)) * 8192  # 2 MiB: past the server's initial flow-control window
        posted = await client.post("/echo", content=big, headers={"Content-Type": "application/octet-stream"})
        patched = await client.patch("/echo", content='{"a": 1}', headers={"Content-Type": "application/merge-patch+json"})
        conflict = await client.put("/conflict", content="{}")
        with pytest.raises(HTTPStatusError) as failed:
            conflict.raise_for_status()
        return posted.status_code, posted.json(), patched.json(), failed.value
    status, posted, patched, failed = asyncio.run(with_server(certificate, body))
    assert status == 201
    assert posted == {"method": "POST", "length": 2 << 20, "sum": sum(bytes(range(256)) * 8192) % 65521,
                      "type": "application/octet-stream"}
    assert patched == {"method": "PATCH", "length": 8, "sum": sum(b'{"a": 1}') % 65521,
                       "type": "application/merge-patch+json"}
    assert failed.status_code == 409 and "the object was modified" in str(failed)


def test_a_long_lived_connection_remembers_few_closed_streams():
    # h2's default keeps 65 536 closed streams per connection (~7 MiB); ours keep 256.
    from nodeagent.http2 import _H2Connection

    conn = _H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    for _ in range(1000):
        stream = conn.get_next_available_stream_id()
        conn.send_headers(stream, [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"https"),
                                   (b":authority", b"x")], end_stream=True)
        conn.reset_stream(stream)
    assert len(conn._closed_streams) == 256
