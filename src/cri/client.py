"""Async CRI client over a unix socket (gRPC on our own HTTP/2 transport, cri.h2rpc).

Every call has a deadline: the client's ``timeout`` (``pull_timeout`` for
PullImage), or the ``timeout=`` given to the call. A missing socket fails at once
with Unavailable; otherwise the call waits, within its deadline, for the channel
to (re)connect, so calls work again as soon as a restarted runtime listens.
Failures raise :mod:`cri.errors` exceptions.

An optional ``observer(operation, seconds, error)`` hears of every call once it ends:
``operation`` is the name upstream's kubelet gives the RPC in its runtime metrics
(``list_containers``, ``run_podsandbox``...), ``error`` what it raised (a CRIError, or
CancelledError) or None.
As upstream's remote client, an ExecSync whose command exits non-zero is reported
with an ExitError (and returned as usual).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from . import api_pb2 as api
from .errors import CRIError, ExitError, Unavailable, Unimplemented, from_rpc_error
from .h2rpc import Channel, RpcError

DEFAULT_TIMEOUT = 120.0  # the kubelet's --runtime-request-timeout default
DEFAULT_PULL_TIMEOUT = 30 * 60.0
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # as the kubelet; ListContainers can exceed gRPC's 4 MiB default

USER_AGENT = "pykubelet-cri"

# The kubelet's CRI version, sent in VersionRequest.
KUBELET_API_VERSION = "0.1.0"

# Each RPC's operation_type in the kubelet's runtime metrics (pkg/kubelet/kuberuntime/instrumented_services.go).
OPERATIONS = {
    "Version": "version", "Status": "status", "UpdateRuntimeConfig": "update_runtime_config",
    "RunPodSandbox": "run_podsandbox", "StopPodSandbox": "stop_podsandbox", "RemovePodSandbox": "remove_podsandbox",
    "PodSandboxStatus": "podsandbox_status", "ListPodSandbox": "list_podsandbox",
    "CreateContainer": "create_container", "StartContainer": "start_container", "StopContainer": "stop_container",
    "RemoveContainer": "remove_container", "ListContainers": "list_containers", "ContainerStatus": "container_status",
    "UpdateContainerResources": "update_container", "ReopenContainerLog": "reopen_container_log",
    "ExecSync": "exec_sync", "Exec": "exec", "Attach": "attach", "PortForward": "port_forward",
    "ContainerStats": "container_stats", "ListContainerStats": "list_container_stats",
    "PodSandboxStats": "podsandbox_stats", "ListPodSandboxStats": "list_podsandbox_stats",
    "ListImages": "list_images", "ImageStatus": "image_status", "PullImage": "pull_image",
    "RemoveImage": "remove_image", "ImageFsInfo": "image_fs_info",
}

Observer = Callable[[str, float, "BaseException | None"], None]


@dataclass(frozen=True)
class Endpoint:
    """A runtime socket, from ``unix:///path`` or a bare path."""

    path: str

    @classmethod
    def parse(cls, value: str) -> Endpoint:
        if "://" in value:
            scheme, _, rest = value.partition("://")
            if scheme != "unix":
                raise ValueError(f"unsupported CRI endpoint {value!r}: only unix sockets are supported")
            value = rest
        elif value.startswith("unix:"):
            value = value[len("unix:"):]
        if not value:
            raise ValueError("empty CRI endpoint")
        return cls(os.path.abspath(value))

    @property
    def target(self) -> str:
        return f"unix://{self.path}"


class CRIClient:
    """RuntimeService and ImageService of one container runtime.

    ``image_endpoint`` defaults to ``endpoint`` (as the kubelet's
    --image-service-endpoint does). Use as ``async with CRIClient(...) as cri``
    or call :meth:`close`.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        image_endpoint: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        pull_timeout: float = DEFAULT_PULL_TIMEOUT,
        observer: Observer | None = None,
    ):
        self.endpoint = Endpoint.parse(endpoint)
        self.image_endpoint = Endpoint.parse(image_endpoint) if image_endpoint else self.endpoint
        self.timeout = timeout
        self.pull_timeout = pull_timeout
        self.observer = observer
        self._channels: dict[Endpoint, Channel] = {}

    async def __aenter__(self) -> CRIClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        for channel in channels.values():
            await channel.close()

    def _channel(self, endpoint: Endpoint) -> Channel:
        channel = self._channels.get(endpoint)
        if channel is None:
            channel = self._channels[endpoint] = Channel(unix=endpoint.path, max_message_bytes=MAX_MESSAGE_BYTES,
                                                         user_agent=USER_AGENT)
        return channel

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until the runtime (and image service) sockets accept connections."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        for endpoint in {self.endpoint, self.image_endpoint}:
            while not os.path.exists(endpoint.path):
                if time.monotonic() >= deadline:
                    raise Unavailable(f"socket does not exist after {timeout:g}s", socket=endpoint.path, rpc="connect")
                await asyncio.sleep(0.1)
            try:
                await self._channel(endpoint).connect(deadline)
            except RpcError as err:
                raise Unavailable(f"no connection within {timeout:g}s ({err.details})", socket=endpoint.path,
                                  rpc="connect", code=err.code) from None

    async def _call(self, endpoint: Endpoint, service: str, rpc: str, request, timeout: float):
        if self.observer is None:
            return await self._send(endpoint, service, rpc, request, timeout)
        started = time.monotonic()
        try:
            response = await self._send(endpoint, service, rpc, request, timeout)
        except BaseException as err:  # a CRIError, or the caller cancelled the call (counted too, as upstream)
            self.observer(OPERATIONS.get(rpc, rpc), time.monotonic() - started, err)
            raise
        error = None
        if rpc == "ExecSync" and response.exit_code != 0:
            error = ExitError(f"command {' '.join(request.cmd)!r} exited with {response.exit_code}",
                              socket=endpoint.path, rpc=rpc)
        self.observer(OPERATIONS.get(rpc, rpc), time.monotonic() - started, error)
        return response

    async def _send(self, endpoint: Endpoint, service: str, rpc: str, request, timeout: float):
        if not os.path.exists(endpoint.path):
            raise Unavailable(
                "socket does not exist (is the container runtime running?)", socket=endpoint.path, rpc=rpc
            )
        channel = self._channel(endpoint)
        connected = channel.connected
        try:
            answer = await channel.unary(f"/runtime.v1.{service}/{rpc}", request.SerializeToString(), timeout)
        except RpcError as e:
            if not connected and not channel.connected:
                raise Unavailable(f"runtime not reachable within {timeout:g}s ({e.details})", socket=endpoint.path,
                                  rpc=rpc, code=e.code) from e
            raise from_rpc_error(e, socket=endpoint.path, rpc=rpc) from e
        return getattr(api, f"{rpc}Response").FromString(answer)

    async def _runtime_call(self, rpc: str, request, timeout: float | None, extra: float = 0.0):
        timeout = self.timeout + extra if timeout is None else timeout
        return await self._call(self.endpoint, "RuntimeService", rpc, request, timeout)

    async def _image_call(self, rpc: str, request, timeout: float | None, default: float | None = None):
        if timeout is None:
            timeout = self.timeout if default is None else default
        return await self._call(self.image_endpoint, "ImageService", rpc, request, timeout)

    # ------------------------------------------------------------- version

    async def version(self, *, timeout: float | None = None) -> api.VersionResponse:
        """Version on runtime.v1; raises Unimplemented with a clear message if the runtime lacks runtime.v1."""
        try:
            return await self._runtime_call("Version", api.VersionRequest(version=KUBELET_API_VERSION), timeout)
        except Unimplemented as e:
            raise Unimplemented(
                "the runtime does not implement CRI runtime.v1 (runtime.v1.RuntimeService/Version is "
                f"unimplemented: {e.details}); upgrade it to a release that serves runtime.v1",
                socket=e.socket,
                rpc=e.rpc,
                code=e.code,
            ) from e

    # ------------------------------------------------------------- sandboxes

    async def run_pod_sandbox(
        self, request: api.RunPodSandboxRequest, *, timeout: float | None = None
    ) -> api.RunPodSandboxResponse:
        return await self._runtime_call("RunPodSandbox", request, timeout)

    async def stop_pod_sandbox(
        self, request: api.StopPodSandboxRequest, *, timeout: float | None = None
    ) -> api.StopPodSandboxResponse:
        return await self._runtime_call("StopPodSandbox", request, timeout)

    async def remove_pod_sandbox(
        self, request: api.RemovePodSandboxRequest, *, timeout: float | None = None
    ) -> api.RemovePodSandboxResponse:
        return await self._runtime_call("RemovePodSandbox", request, timeout)

    async def pod_sandbox_status(
        self, request: api.PodSandboxStatusRequest, *, timeout: float | None = None
    ) -> api.PodSandboxStatusResponse:
        return await self._runtime_call("PodSandboxStatus", request, timeout)

    async def list_pod_sandbox(
        self, request: api.ListPodSandboxRequest | None = None, *, timeout: float | None = None
    ) -> api.ListPodSandboxResponse:
        return await self._runtime_call("ListPodSandbox", request or api.ListPodSandboxRequest(), timeout)

    # ------------------------------------------------------------- containers

    async def create_container(
        self, request: api.CreateContainerRequest, *, timeout: float | None = None
    ) -> api.CreateContainerResponse:
        return await self._runtime_call("CreateContainer", request, timeout)

    async def start_container(
        self, request: api.StartContainerRequest, *, timeout: float | None = None
    ) -> api.StartContainerResponse:
        return await self._runtime_call("StartContainer", request, timeout)

    async def stop_container(
        self, request: api.StopContainerRequest, *, timeout: float | None = None
    ) -> api.StopContainerResponse:
        """The default deadline is the client timeout plus the request's grace period."""
        return await self._runtime_call("StopContainer", request, timeout, extra=max(0, request.timeout))

    async def remove_container(
        self, request: api.RemoveContainerRequest, *, timeout: float | None = None
    ) -> api.RemoveContainerResponse:
        return await self._runtime_call("RemoveContainer", request, timeout)

    async def list_containers(
        self, request: api.ListContainersRequest | None = None, *, timeout: float | None = None
    ) -> api.ListContainersResponse:
        return await self._runtime_call("ListContainers", request or api.ListContainersRequest(), timeout)

    async def container_status(
        self, request: api.ContainerStatusRequest, *, timeout: float | None = None
    ) -> api.ContainerStatusResponse:
        return await self._runtime_call("ContainerStatus", request, timeout)

    async def update_container_resources(
        self, request: api.UpdateContainerResourcesRequest, *, timeout: float | None = None
    ) -> api.UpdateContainerResourcesResponse:
        return await self._runtime_call("UpdateContainerResources", request, timeout)

    async def reopen_container_log(
        self, request: api.ReopenContainerLogRequest, *, timeout: float | None = None
    ) -> api.ReopenContainerLogResponse:
        return await self._runtime_call("ReopenContainerLog", request, timeout)

    # ------------------------------------------------------------- exec and streaming

    async def exec_sync(
        self, request: api.ExecSyncRequest, *, timeout: float | None = None
    ) -> api.ExecSyncResponse:
        """The default deadline is the client timeout plus the request's own timeout."""
        return await self._runtime_call("ExecSync", request, timeout, extra=max(0, request.timeout))

    async def exec(self, request: api.ExecRequest, *, timeout: float | None = None) -> api.ExecResponse:
        return await self._runtime_call("Exec", request, timeout)

    async def attach(self, request: api.AttachRequest, *, timeout: float | None = None) -> api.AttachResponse:
        return await self._runtime_call("Attach", request, timeout)

    async def port_forward(
        self, request: api.PortForwardRequest, *, timeout: float | None = None
    ) -> api.PortForwardResponse:
        return await self._runtime_call("PortForward", request, timeout)

    # ------------------------------------------------------------- stats

    async def container_stats(
        self, request: api.ContainerStatsRequest, *, timeout: float | None = None
    ) -> api.ContainerStatsResponse:
        return await self._runtime_call("ContainerStats", request, timeout)

    async def list_container_stats(
        self, request: api.ListContainerStatsRequest | None = None, *, timeout: float | None = None
    ) -> api.ListContainerStatsResponse:
        return await self._runtime_call("ListContainerStats", request or api.ListContainerStatsRequest(), timeout)

    async def pod_sandbox_stats(
        self, request: api.PodSandboxStatsRequest, *, timeout: float | None = None
    ) -> api.PodSandboxStatsResponse:
        return await self._runtime_call("PodSandboxStats", request, timeout)

    async def list_pod_sandbox_stats(
        self, request: api.ListPodSandboxStatsRequest | None = None, *, timeout: float | None = None
    ) -> api.ListPodSandboxStatsResponse:
        return await self._runtime_call("ListPodSandboxStats", request or api.ListPodSandboxStatsRequest(), timeout)

    # ------------------------------------------------------------- runtime

    async def update_runtime_config(
        self, request: api.UpdateRuntimeConfigRequest, *, timeout: float | None = None
    ) -> api.UpdateRuntimeConfigResponse:
        return await self._runtime_call("UpdateRuntimeConfig", request, timeout)

    async def status(
        self, request: api.StatusRequest | None = None, *, timeout: float | None = None
    ) -> api.StatusResponse:
        return await self._runtime_call("Status", request or api.StatusRequest(), timeout)

    # ------------------------------------------------------------- images

    async def list_images(
        self, request: api.ListImagesRequest | None = None, *, timeout: float | None = None
    ) -> api.ListImagesResponse:
        return await self._image_call("ListImages", request or api.ListImagesRequest(), timeout)

    async def image_status(
        self, request: api.ImageStatusRequest, *, timeout: float | None = None
    ) -> api.ImageStatusResponse:
        return await self._image_call("ImageStatus", request, timeout)

    async def pull_image(
        self, request: api.PullImageRequest, *, timeout: float | None = None
    ) -> api.PullImageResponse:
        """The default deadline is the client's ``pull_timeout``."""
        return await self._image_call("PullImage", request, timeout, default=self.pull_timeout)

    async def remove_image(
        self, request: api.RemoveImageRequest, *, timeout: float | None = None
    ) -> api.RemoveImageResponse:
        return await self._image_call("RemoveImage", request, timeout)

    async def image_fs_info(
        self, request: api.ImageFsInfoRequest | None = None, *, timeout: float | None = None
    ) -> api.ImageFsInfoResponse:
        return await self._image_call("ImageFsInfo", request or api.ImageFsInfoRequest(), timeout)


__all__ = ["CRIClient", "CRIError", "Endpoint", "OPERATIONS", "Observer", "DEFAULT_TIMEOUT", "DEFAULT_PULL_TIMEOUT",
           "KUBELET_API_VERSION"]
