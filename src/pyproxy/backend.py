"""What every proxy mode (iptables, nftables, ipvs) offers the agent.

The agent keeps the desired state — service ports and their endpoints — and
calls `Backend.sync` with it, naming the services changed since the last sync
(or None for a full sync). A backend owns everything it writes to the kernel:
it never touches another mode's objects except in `cleanup`.
"""

from __future__ import annotations

import abc
import subprocess
from dataclasses import dataclass
from typing import ClassVar, Collection, Mapping, Sequence

from pyproxy.model import Endpoint, ServicePort

PortKey = tuple[str, str, str]  # (namespace, service name, port name)
ServiceName = tuple[str, str]  # (namespace, service name)


class BackendUnavailable(Exception):
    """This mode cannot run on this host (missing kernel support or tools); the message says what is missing."""


class SyncFailed(Exception):
    """Programming the kernel failed; nothing was half-applied, and the next sync must be a full one."""


@dataclass(frozen=True)
class NodeContext:
    """What the node contributes to the rules."""
    node_name: str
    node_ips: tuple[str, ...] = ()
    zone: str = ""
    cluster_cidr: str | None = None  # --cluster-cidr: traffic from outside it is masqueraded
    masquerade_all: bool = False
    nodeport_addresses: tuple[str, ...] = ()  # CIDRs or "primary"; empty means every local address
    localhost_nodeports: bool = True  # NodePorts answer on 127.0.0.1 too (iptables mode, route_localnet)


class Backend(abc.ABC):
    mode: ClassVar[str]

    def __init__(self, node: NodeContext, *, netns: str | None = None):
        self.node = node
        self.netns = netns  # run the tools inside this named netns (tests); None: our own namespace

    def check(self) -> None:
        """Raise BackendUnavailable if this host cannot run the mode."""

    @abc.abstractmethod
    def sync(self, services: Mapping[PortKey, ServicePort], endpoints: Mapping[PortKey, Sequence[Endpoint]],
             changed: Collection[ServiceName] | None) -> bool:
        """Program the kernel for `services`; `changed` None means a full sync. Returns True if it was full.

        Raises SyncFailed when the kernel refused the update; the kernel is then left
        as it was before the call.
        """

    @abc.abstractmethod
    def cleanup(self) -> bool:
        """Remove everything this mode may have created (also by an earlier process); True if anything was."""

    def run(self, *argv: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        """Run a tool (iptables-restore, nft...), inside `netns` when one is set."""
        cmd = (["ip", "netns", "exec", self.netns] if self.netns else []) + list(argv)
        return subprocess.run(cmd, input=input, capture_output=True, text=True, check=check, timeout=600)
