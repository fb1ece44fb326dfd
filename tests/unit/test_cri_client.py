"""CRIClient without a runtime: endpoints, deadlines, error mapping, unreachable sockets."""

from __future__ import annotations

import asyncio
import re
import socket
import time

import grpc
import pytest

from cri import api, errors
from cri.client import DEFAULT_PULL_TIMEOUT, DEFAULT_TIMEOUT, CRIClient, Endpoint
from cri.h2rpc import RpcError, StatusCode


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


ALL_RPCS = [
    (service.name, method.name, method.input_type.name)
    for service in api.DESCRIPTOR.services_by_name.values()
    for method in service.methods
]


def run(coro):
    return asyncio.run(coro)


# ------------------------------------------------------------- endpoints


@pytest.mark.parametrize(
    "value, path",
    [
        ("unix:///run/containerd/containerd.sock", "/run/containerd/containerd.sock"),
        ("/run/containerd/containerd.sock", "/run/containerd/containerd.sock"),
        ("unix:/run/crio/crio.sock", "/run/crio/crio.sock"),
        ("/run//x/../containerd.sock", "/run/containerd.sock"),
    ],
)
def test_endpoint_parse(value, path):
    endpoint = Endpoint.parse(value)
    assert endpoint.path == path
    assert endpoint.target == f"unix://{path}"


def test_relative_endpoint_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert Endpoint.parse("cri.sock").path == str(tmp_path / "cri.sock")


@pytest.mark.parametrize("value", ["tcp://127.0.0.1:1234", "npipe:////./pipe/containerd", "", "unix://"])
def test_endpoint_rejects_non_unix(value):
    with pytest.raises(ValueError):
        Endpoint.parse(value)


def test_every_rpc_has_a_method():
    for _, rpc, _ in ALL_RPCS:
        assert callable(getattr(CRIClient, snake(rpc), None)), rpc


# ------------------------------------------------------------- unreachable runtime


@pytest.mark.parametrize("service, rpc, request_type", ALL_RPCS, ids=[r for _, r, _ in ALL_RPCS])
def test_missing_socket_is_unavailable_at_once(tmp_path, service, rpc, request_type):
    path = tmp_path / "missing" / "containerd.sock"
    request = getattr(api, request_type)()

    async def call():
        async with CRIClient(f"unix://{path}", timeout=30) as client:
            method = getattr(client, snake(rpc))
            return await (method() if rpc == "Version" else method(request))

    start = time.monotonic()
    with pytest.raises(errors.Unavailable) as info:
        run(call())
    assert time.monotonic() - start < 1.0
    err = info.value
    assert isinstance(err, errors.CRIError)
    assert (err.socket, err.rpc) == (str(path), rpc)
    assert str(path) in str(err) and rpc in str(err)


def test_missing_image_socket_names_the_image_endpoint(tmp_path):
    runtime, images = tmp_path / "runtime.sock", tmp_path / "images.sock"

    async def call():
        async with CRIClient(str(runtime), image_endpoint=f"unix://{images}") as client:
            await client.list_images()

    with pytest.raises(errors.Unavailable) as info:
        run(call())
    assert info.value.socket == str(images)
    assert info.value.rpc == "ListImages"


def test_dead_socket_is_unavailable_after_the_deadline(tmp_path):
    # A socket file nobody listens on, as left behind by a crashed runtime.
    path = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))

        async def call():
            async with CRIClient(str(path), timeout=0.3) as client:
                await client.list_containers()

        start = time.monotonic()
        with pytest.raises(errors.Unavailable) as info:
            run(call())
        assert 0.25 < time.monotonic() - start < 2
        assert info.value.rpc == "ListContainers"
        assert info.value.socket == str(path)
        assert "not reachable" in str(info.value)


def test_a_socket_that_is_not_a_grpc_server_is_one_clear_error(tmp_path):
    """Something else listens on the socket (here: a server that answers HTTP/1.1)."""
    path = tmp_path / "http.sock"

    async def scenario():
        async def answer(reader, writer):
            await reader.read(1024)
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_unix_server(answer, path=str(path))
        async with server:
            async with CRIClient(str(path), timeout=1) as client:
                await client.version()

    start = time.monotonic()
    with pytest.raises(errors.CRIError) as info:
        run(scenario())
    assert time.monotonic() - start < 5
    assert (info.value.socket, info.value.rpc) == (str(path), "Version")
    assert str(path) in str(info.value) and "Version" in str(info.value)


def test_a_grpc_server_without_runtime_v1_is_explained(tmp_path):
    """A gRPC server that serves no CRI service: Version is UNIMPLEMENTED there."""
    path = tmp_path / "other.sock"

    async def scenario():
        server = grpc.aio.server()
        server.add_insecure_port(f"unix://{path}")
        await server.start()
        try:
            async with CRIClient(str(path), timeout=5) as client:
                await client.version()
        finally:
            await server.stop(None)

    with pytest.raises(errors.Unimplemented) as info:
        run(scenario())
    assert "does not implement CRI runtime.v1" in str(info.value)
    assert info.value.socket == str(path)


def test_wait_ready_gives_up_on_a_missing_socket(tmp_path):
    path = tmp_path / "never.sock"

    async def wait():
        async with CRIClient(str(path)) as client:
            await client.wait_ready(timeout=0.2)

    with pytest.raises(errors.Unavailable) as info:
        run(wait())
    assert str(path) in str(info.value)


# ------------------------------------------------------------- deadlines


class Recorder:
    """Stands in for CRIClient._call: records the call, returns an empty response."""

    def __init__(self, raises: Exception | None = None):
        self.calls: list[tuple[str, str, float]] = []
        self.raises = raises

    async def __call__(self, endpoint, service, rpc, request, timeout):
        self.calls.append((endpoint.path, rpc, timeout))
        if self.raises:
            raise self.raises
        return getattr(api, f"{rpc}Response")()


@pytest.fixture
def recorded():
    client = CRIClient("/run/test.sock", timeout=7, pull_timeout=900)
    client._call = Recorder()
    return client


def test_default_deadlines():
    client = CRIClient("/run/test.sock")
    assert (client.timeout, client.pull_timeout) == (DEFAULT_TIMEOUT, DEFAULT_PULL_TIMEOUT)


def test_deadline_per_client_and_per_call(recorded):
    run(recorded.list_containers())
    run(recorded.list_containers(timeout=0.5))
    run(recorded.pull_image(api.PullImageRequest(image=api.ImageSpec(image="busybox"))))
    run(recorded.pull_image(api.PullImageRequest(), timeout=3))
    run(recorded.image_status(api.ImageStatusRequest()))
    assert [(rpc, t) for _, rpc, t in recorded._call.calls] == [
        ("ListContainers", 7),
        ("ListContainers", 0.5),
        ("PullImage", 900),
        ("PullImage", 3),
        ("ImageStatus", 7),
    ]


def test_deadline_covers_grace_period_and_exec_timeout(recorded):
    run(recorded.stop_container(api.StopContainerRequest(container_id="c", timeout=30)))
    run(recorded.exec_sync(api.ExecSyncRequest(container_id="c", cmd=["true"], timeout=5)))
    run(recorded.exec_sync(api.ExecSyncRequest(container_id="c", cmd=["true"])))
    assert [t for *_, t in recorded._call.calls] == [37, 12, 7]


def test_requests_default_where_nothing_is_required(recorded):
    for method in ("list_pod_sandbox", "list_containers", "list_container_stats", "list_pod_sandbox_stats",
                   "status", "list_images", "image_fs_info"):
        run(getattr(recorded, method)())
    assert len(recorded._call.calls) == 7


def test_version_sends_the_kubelet_api_version(recorded):
    sent = []

    async def call(endpoint, service, rpc, request, timeout):
        sent.append(request)
        return api.VersionResponse(version="0.1.0", runtime_name="containerd", runtime_api_version="v1")

    recorded._call = call
    assert run(recorded.version()).runtime_api_version == "v1"
    assert sent == [api.VersionRequest(version="0.1.0")]


def test_version_explains_a_runtime_without_runtime_v1(recorded):
    unknown = errors.Unimplemented("unknown service runtime.v1.RuntimeService", socket="/run/test.sock", rpc="Version")
    recorded._call = Recorder(unknown)
    with pytest.raises(errors.Unimplemented) as info:
        run(recorded.version())
    message = str(info.value)
    assert "runtime.v1" in message and "/run/test.sock" in message and "Version" in message
    assert "unknown service" in message


# ------------------------------------------------------------- error mapping


def rpc_error(code: StatusCode, details: str = "boom") -> RpcError:
    return RpcError(code, details)


@pytest.mark.parametrize(
    "code, cls",
    [
        (StatusCode.NOT_FOUND, errors.NotFound),
        (StatusCode.UNAVAILABLE, errors.Unavailable),
        (StatusCode.DEADLINE_EXCEEDED, errors.DeadlineExceeded),
        (StatusCode.UNIMPLEMENTED, errors.Unimplemented),
        (StatusCode.INTERNAL, errors.RPCError),
        (StatusCode.ALREADY_EXISTS, errors.RPCError),
        (StatusCode.INVALID_ARGUMENT, errors.RPCError),
    ],
)
def test_status_codes_map_to_exceptions(code, cls):
    err = errors.from_rpc_error(rpc_error(code), socket="/run/c.sock", rpc="ContainerStatus")
    assert type(err) is cls
    assert isinstance(err, errors.CRIError)
    assert (err.socket, err.rpc, err.code) == ("/run/c.sock", "ContainerStatus", code)
    assert str(err).startswith("CRI ContainerStatus on /run/c.sock: ")
    assert "boom" in str(err)
    if cls is errors.RPCError:
        assert code.name in str(err)


def test_error_without_details_names_the_code():
    err = errors.from_rpc_error(rpc_error(StatusCode.NOT_FOUND, None), socket="/s", rpc="PodSandboxStatus")
    assert "NOT_FOUND" in str(err)
