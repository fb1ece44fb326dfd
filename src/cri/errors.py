"""Exceptions raised by the CRI client, one per gRPC status the kubelet acts on."""

from __future__ import annotations

from .h2rpc import RpcError, StatusCode


class CRIError(Exception):
    """A CRI call failed. ``socket`` is the runtime's socket path, ``rpc`` the method name."""

    def __init__(self, message: str, *, socket: str, rpc: str, code: StatusCode | None = None):
        super().__init__(f"CRI {rpc} on {socket}: {message}")
        self.socket = socket
        self.rpc = rpc
        self.code = code
        self.details = message


class NotFound(CRIError):
    """The sandbox, container or image does not exist."""


class Unavailable(CRIError):
    """The runtime is not reachable: socket missing, nobody listening, or connection lost."""


class DeadlineExceeded(CRIError):
    """The runtime did not answer within the call's deadline."""


class Unimplemented(CRIError):
    """The runtime does not implement this RPC (or runtime.v1 at all)."""


class ExitError(CRIError):
    """ExecSync ran the command and it exited non-zero. Never raised: only reported to the client's observer."""


class RPCError(CRIError):
    """Any other non-OK status; see ``code``."""


_BY_CODE: dict[StatusCode, type[CRIError]] = {
    StatusCode.NOT_FOUND: NotFound,
    StatusCode.UNAVAILABLE: Unavailable,
    StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    StatusCode.UNIMPLEMENTED: Unimplemented,
}


def from_rpc_error(err: RpcError, *, socket: str, rpc: str) -> CRIError:
    """Map a failed gRPC call to a CRIError."""
    code = err.code
    details = err.details or code.name
    cls = _BY_CODE.get(code, RPCError)
    if cls is RPCError:
        details = f"{code.name}: {details}"
    return cls(details, socket=socket, rpc=rpc, code=code)
