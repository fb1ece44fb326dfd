"""The Container Runtime Interface for Python.

The stubs track CRI ``runtime.v1`` as of Kubernetes v1.36 (k8s.io/cri-api), the
subset the kubelet uses; see api.proto. ``api`` holds the messages, :class:`CRIClient`
is an asyncio client (on cri.h2rpc, a small gRPC transport of our own).
"""

from . import api_pb2 as api
from .client import DEFAULT_PULL_TIMEOUT, DEFAULT_TIMEOUT, CRIClient, Endpoint
from .config import container_config, pod_sandbox_config
from .errors import CRIError, DeadlineExceeded, ExitError, NotFound, RPCError, Unavailable, Unimplemented

__all__ = [
    "api",
    "CRIClient",
    "Endpoint",
    "DEFAULT_TIMEOUT",
    "DEFAULT_PULL_TIMEOUT",
    "pod_sandbox_config",
    "container_config",
    "CRIError",
    "NotFound",
    "Unavailable",
    "DeadlineExceeded",
    "Unimplemented",
    "RPCError",
    "ExitError",
]
