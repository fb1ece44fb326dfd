"""What every proxy mode (iptables, nftables, ipvs) offers the agent.

The agent keeps the desired state — service ports and their endpoints — and
calls `Backend.sync` with it, naming the services changed since the last sync
(or None for a full sync). A backend owns everything it writes to the kernel:
it never touches another mode's objects except in `cleanup`.
"""

from __future__ import annotations

import abc
import subprocess
import tempfile
from dataclasses import dataclass
from typing import ClassVar, Collection, Iterable, Iterator, Mapping, Sequence

from pyproxy.model import Endpoint, ServicePort

TOOL_TIMEOUT = 600  # seconds; loading 10k services into iptables-nft takes minutes on a small host
PortKey = tuple[str, str, str]  # (namespace, service name, port name)
ServiceName = tuple[str, str]  # (namespace, service name)


def changed_ports(changed: Collection[ServiceName], services: Mapping[PortKey, ServicePort],
                  ) -> Mapping[ServiceName, Sequence[PortKey]]:
    """The changed services with their port keys in `services` now.

    The agent's change tracker passes `changed` as exactly that mapping; given bare
    names (tests, tools), the keys are looked up, which costs a pass over `services`.
    """
    if isinstance(changed, Mapping):
        return changed
    names = set(changed)
    found: dict[ServiceName, list[PortKey]] = {name: [] for name in names}
    for key in services:
        if (key[0], key[1]) in names:
            found[(key[0], key[1])].append(key)
    return found


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

        `changed` names the services that changed since the last sync; the agent passes it
        as a mapping to their port keys now (see `changed_ports`), so a partial sync never
        has to scan every service.

        Raises SyncFailed when the kernel refused the update; the kernel is then left
        as it was before the call.
        """

    @abc.abstractmethod
    def cleanup(self) -> bool:
        """Remove everything this mode may have created (also by an earlier process); True if anything was."""

    def command(self, *argv: str) -> list[str]:
        return (["ip", "netns", "exec", self.netns] if self.netns else []) + list(argv)

    def run(self, *argv: str, input: str | Iterable[str] | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
        """Run a tool (iptables-restore, nft...), inside `netns` when one is set.

        `input` may be an iterable of text chunks, written as they are produced, so a
        large ruleset is never held whole in memory.
        """
        if input is None or isinstance(input, str):
            return subprocess.run(self.command(*argv), input=input, capture_output=True, text=True, check=check,
                                  timeout=TOOL_TIMEOUT)
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            proc = subprocess.Popen(self.command(*argv), stdin=subprocess.PIPE, stdout=out, stderr=err, text=True)
            try:
                for chunk in input:
                    proc.stdin.write(chunk)
            except BrokenPipeError:
                pass  # the tool gave up early; its exit status and stderr say why
            finally:
                try:
                    proc.stdin.close()
                except BrokenPipeError:
                    pass
            code = proc.wait(timeout=TOOL_TIMEOUT)
            out.seek(0)
            err.seek(0)
            result = subprocess.CompletedProcess(argv, code, out.read(), err.read())
        if check:
            result.check_returncode()
        return result

    def run_lines(self, *argv: str) -> Iterator[str]:
        """A tool's output, line by line as it comes (iptables-save of a large table)."""
        with subprocess.Popen(self.command(*argv), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True) as proc:
            for line in proc.stdout:
                yield line.rstrip("\n")
