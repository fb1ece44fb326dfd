"""cri.h2rpc against a real gRPC server (grpcio's, a test double): messages both ways past the flow-control
windows, statuses and their messages, deadlines, many calls at once, a server that restarts, size limits."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from cri.h2rpc import Channel, RpcError, StatusCode

METHOD = "/test.Echo/Call"


async def handler(request: bytes, context) -> bytes:
    """Echo; b"sleep:<s>" sleeps first, b"big:<n>" answers n bytes, b"fail:<text>" aborts with that text."""
    if request.startswith(b"sleep:"):
        await asyncio.sleep(float(request[6:]))
    if request.startswith(b"big:"):
        return b"x" * int(request[4:])
    if request.startswith(b"fail:"):
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, request[5:].decode())
    return request


async def serve(path) -> grpc.aio.Server:
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20),
                                      ("grpc.max_send_message_length", 64 << 20)])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "test.Echo", {"Call": grpc.unary_unary_rpc_method_handler(handler)})])
    server.add_insecure_port(f"unix://{path}")
    await server.start()
    return server


def scenario(tmp_path, body, **channel):
    async def run():
        server = await serve(tmp_path / "s.sock")
        client = Channel(unix=str(tmp_path / "s.sock"), **channel)
        try:
            return await body(client, server)
        finally:
            await client.close()
            await server.stop(None)
    return asyncio.run(run())


def test_messages_larger_than_the_windows_go_both_ways(tmp_path):
    async def body(client, _):
        request = bytes(range(256)) * 8192  # 2 MiB out: past the server's 64 KiB initial window
        assert await client.unary(METHOD, request, 10) == request
        return await client.unary(METHOD, b"big:%d" % (12 << 20), 10)  # 12 MiB back

    assert len(scenario(tmp_path, body, max_message_bytes=16 << 20)) == 12 << 20


def test_statuses_come_back_with_their_messages(tmp_path):
    async def body(client, _):
        with pytest.raises(RpcError) as failed:
            await client.unary(METHOD, "fail:ça ne va pas: 100%".encode(), 5)
        with pytest.raises(RpcError) as unknown:
            await client.unary("/test.Echo/Nothing", b"", 5)
        return failed.value, unknown.value

    failed, unknown = scenario(tmp_path, body)
    assert (failed.code, failed.details) == (StatusCode.FAILED_PRECONDITION, "ça ne va pas: 100%")
    assert unknown.code == StatusCode.UNIMPLEMENTED


def test_a_deadline_ends_the_call_and_leaves_the_connection_usable(tmp_path):
    async def body(client, _):
        start = time.monotonic()
        with pytest.raises(RpcError) as late:
            await client.unary(METHOD, b"sleep:5", 0.3)
        took = time.monotonic() - start
        return late.value.code, took, await client.unary(METHOD, b"after", 5)

    code, took, after = scenario(tmp_path, body)
    assert code == StatusCode.DEADLINE_EXCEEDED and took < 2
    assert after == b"after"


def test_many_calls_share_one_connection(tmp_path):
    async def body(client, _):
        answers = await asyncio.gather(*(client.unary(METHOD, b"sleep:0.2" if i % 2 else b"%d" % i, 10)
                                         for i in range(200)))
        return answers, client._connection

    answers, connection = scenario(tmp_path, body)
    assert answers == [b"sleep:0.2" if i % 2 else b"%d" % i for i in range(200)]
    assert connection is not None and not connection.streams


def test_calls_wait_for_a_restarted_server_within_their_deadline(tmp_path):
    path = tmp_path / "s.sock"

    async def run():
        server = await serve(path)
        client = Channel(unix=str(path))
        try:
            assert await client.unary(METHOD, b"one", 5) == b"one"
            await server.stop(None)
            with pytest.raises(RpcError) as down:
                await client.unary(METHOD, b"down", 0.5)
            call = asyncio.create_task(client.unary(METHOD, b"two", 10))
            await asyncio.sleep(0.5)
            server = await serve(path)
            return down.value.code, await call
        finally:
            await client.close()
            await server.stop(None)

    code, answer = asyncio.run(run())
    assert code == StatusCode.UNAVAILABLE
    assert answer == b"two"


def test_a_response_over_the_limit_is_refused(tmp_path):
    async def body(client, _):
        with pytest.raises(RpcError) as big:
            await client.unary(METHOD, b"big:%d" % (2 << 20), 10)
        return big.value.code, await client.unary(METHOD, b"small", 5)

    assert scenario(tmp_path, body, max_message_bytes=1 << 20) == (StatusCode.RESOURCE_EXHAUSTED, b"small")


def test_a_cancelled_call_resets_its_stream_only(tmp_path):
    async def body(client, _):
        slow = asyncio.create_task(client.unary(METHOD, b"sleep:5", 10))
        await asyncio.sleep(0.2)
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        return await client.unary(METHOD, b"still", 5), len(client._connection.streams)

    assert scenario(tmp_path, body) == (b"still", 0)


def test_a_call_cancelled_as_its_connection_opens_stays_cancelled(monkeypatch):
    """Whatever moment the cancellation meets the connection's arrival, the call ends cancelled, and no request
    goes out after it was cancelled (Python 3.11's wait_for returned the connection and dropped the
    cancellation: the call went on, and waited for its answer as if nothing had happened)."""
    from nodeagent import http2

    opened_while_cancelling = []

    class Connection:
        closed = False

        async def open(self, headers, path, body):
            opened_while_cancelling.append(asyncio.current_task().cancelling())
            await asyncio.Event().wait()  # the server never answers

        def cancel(self, stream):
            pass

    async def connect(**_):
        await asyncio.sleep(0)
        return Connection()

    monkeypatch.setattr(http2, "connect", connect)

    async def attempt(yields: int) -> bool:
        call = asyncio.create_task(Channel(unix="/nonexistent").unary(METHOD, b"x", 5))
        for _ in range(yields):
            await asyncio.sleep(0)
        call.cancel()
        done, _ = await asyncio.wait({call}, timeout=1)
        return bool(done) and call.cancelled()

    assert [asyncio.run(attempt(n)) for n in range(8)] == [True] * 8
    assert set(opened_while_cancelling) <= {0}
