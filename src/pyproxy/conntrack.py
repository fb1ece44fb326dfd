"""Stale UDP conntrack entries: find them from the desired state, delete them through netlink.

UDP has no connection to break, so a conntrack entry that NATed a client's flow to
an endpoint keeps sending that flow there after the endpoint is gone, for as long
as the client keeps talking. Upstream (pkg/proxy/conntrack/cleanup.go,
CleanStaleEntries, v1.36) therefore reconciles the table after a sync in which
some UDP service's endpoints changed:

- every UDP service port that has at least one *serving* endpoint (the endpoint's
  serving condition only: traffic policies, topology and terminating state are
  deliberately ignored, so UDP behaves like TCP) contributes frontends —
  clusterIP:port, each load-balancer IP:port, each external IP:port, and its
  NodePort (any destination address);
- a UDP entry whose original destination is such a frontend and whose reply
  source ip:port is not one of that frontend's serving endpoints is deleted.

That one rule covers both historical cases: flows DNATed to an endpoint that no
longer serves, and flows created while the service had no endpoint (not NATed, so
their reply source is the service address itself), which would otherwise keep
black-holing once the service gets its first endpoint. Services without a serving
endpoint are left alone.

`stale_flows` is the pure part; `ConntrackCleaner` lists and deletes through
netlink (pyroute2, asyncio) in the network namespace the process runs in.
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import socket
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from pyroute2.netlink.exceptions import NetlinkDumpInterrupted, NetlinkError
from pyroute2.netlink.nfnetlink.nfctsocket import AsyncNFCTSocket, NFCTAttrTuple

from nodeagent import logs
from pyproxy import metrics
from pyproxy.backend import PortKey, ServiceName
from pyproxy.model import Endpoint, ServicePort

log = logs.get(__name__)

IP_PROTOCOLS = {"TCP": socket.IPPROTO_TCP, "UDP": socket.IPPROTO_UDP, "SCTP": socket.IPPROTO_SCTP}
_PROTOCOL_NAMES = {number: name for name, number in IP_PROTOCOLS.items()}
_FAMILIES = {"IPv4": socket.AF_INET, "IPv6": socket.AF_INET6}
DEFAULT_PROTOCOLS = ("UDP",)  # upstream cleans UDP only; SCTP can be asked for


@dataclass(frozen=True)
class Flow:
    """One conntrack entry, as far as the cleanup cares: its original and reply tuples.

    Addresses are in canonical text form (``str(ipaddress.ip_address(...))``), as
    `flow_from_netlink` gives them.
    """
    protocol: str  # TCP, UDP or SCTP
    orig_src_ip: str
    orig_src_port: int
    orig_dst_ip: str
    orig_dst_port: int
    reply_src_ip: str
    reply_src_port: int
    zone: int = 0  # an entry is identified by its original tuple within its zone

    @property
    def family(self) -> str:
        return "IPv6" if ":" in self.orig_dst_ip else "IPv4"

    def __str__(self) -> str:
        return (f"{self.protocol} {self.orig_src_ip}:{self.orig_src_port} -> {self.orig_dst_ip}:{self.orig_dst_port}"
                f" (reply from {self.reply_src_ip}:{self.reply_src_port})")


@dataclass(frozen=True)
class Frontends:
    """Where flows to services arrive, and which endpoints (ip, port) may answer them."""
    by_address: dict[tuple[str, str, int], frozenset[tuple[str, int]]]  # (protocol, ip, port)
    by_node_port: dict[tuple[str, int], frozenset[tuple[str, int]]]  # (protocol, node port)

    @property
    def families(self) -> set[str]:
        """The IP families that can hold a stale flow (those of the frontends and their endpoints)."""
        ips = {ip for _, ip, _ in self.by_address}
        for backends in (*self.by_address.values(), *self.by_node_port.values()):
            ips.update(ip for ip, _ in backends)
        return {"IPv6" if ":" in ip else "IPv4" for ip in ips}


def _norm(ip: str) -> str:
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        return ip


def frontends(services: Mapping[PortKey, ServicePort], endpoints: Mapping[PortKey, Sequence[Endpoint]],
              protocols: Collection[str] = DEFAULT_PROTOCOLS) -> Frontends:
    """The frontends of every service port (of `protocols`) that has a serving endpoint.

    Two service ports sharing a frontend (an external IP, say) pool their endpoints.
    """
    by_address: dict[tuple[str, str, int], set[tuple[str, int]]] = {}
    by_node_port: dict[tuple[str, int], set[tuple[str, int]]] = {}
    for key, svc in services.items():
        if svc.protocol not in protocols:
            continue
        serving = {(_norm(e.ip), e.port) for e in endpoints.get(key, ()) if e.serving}
        if not serving:
            continue  # nothing can answer yet: leave its flows alone
        for ip in (*svc.cluster_ips, *svc.load_balancer_ips, *svc.external_ips):
            by_address.setdefault((svc.protocol, _norm(ip), svc.port), set()).update(serving)
        if svc.node_port:
            by_node_port.setdefault((svc.protocol, svc.node_port), set()).update(serving)
    return Frontends({k: frozenset(v) for k, v in by_address.items()},
                     {k: frozenset(v) for k, v in by_node_port.items()})


def stale_flows(flows: Iterable[Flow], services: Mapping[PortKey, ServicePort],
                endpoints: Mapping[PortKey, Sequence[Endpoint]], *,
                protocols: Collection[str] = DEFAULT_PROTOCOLS) -> list[Flow]:
    """The flows to delete: addressed to a service frontend, answered by no serving endpoint of it."""
    fronts = frontends(services, endpoints, protocols)
    return _stale(flows, fronts)


def _stale(flows: Iterable[Flow], fronts: Frontends) -> list[Flow]:
    return [flow for flow in flows if _is_stale(flow, fronts)]


def _is_stale(flow: Flow, fronts: Frontends) -> bool:
    reply = (flow.reply_src_ip, flow.reply_src_port)
    backends = fronts.by_address.get((flow.protocol, flow.orig_dst_ip, flow.orig_dst_port))
    if backends is not None and reply not in backends:
        return True
    backends = fronts.by_node_port.get((flow.protocol, flow.orig_dst_port))  # any destination address
    return backends is not None and reply not in backends


def cleanup_needed(changed: Mapping[ServiceName, Sequence[PortKey]], services_before: Mapping[PortKey, ServicePort],
                   services_after: Mapping[PortKey, ServicePort],
                   protocols: Collection[str] = DEFAULT_PROTOCOLS) -> bool:
    """Whether a sync of the `changed` services (with their port keys now) calls for a clean-up.

    Upstream cleans after a sync in which the endpoints of a service with a UDP port
    (before or after the change) changed. `services_before` holds the changed services'
    ports as they were; only the changed services are looked at.
    """
    before = (svc for svc in services_before.values() if (svc.namespace, svc.name) in changed)
    after = (services_after[key] for keys in changed.values() for key in keys)
    return any(svc.protocol in protocols for svc in itertools.chain(before, after))


def flow_from_netlink(msg) -> Flow | None:
    """A `Flow` from one ctnetlink message as pyroute2 decodes it; None for non-port protocols."""
    v = "V6" if msg.get("nfgen_family") == socket.AF_INET6 else "V4"
    try:
        orig, reply = msg.get_attr("CTA_TUPLE_ORIG"), msg.get_attr("CTA_TUPLE_REPLY")
        o_ip, o_proto = orig.get_attr("CTA_TUPLE_IP"), orig.get_attr("CTA_TUPLE_PROTO")
        r_ip, r_proto = reply.get_attr("CTA_TUPLE_IP"), reply.get_attr("CTA_TUPLE_PROTO")
        protocol = _PROTOCOL_NAMES.get(o_proto.get_attr("CTA_PROTO_NUM"))
        if protocol is None:
            return None
        return Flow(protocol=protocol,
                    orig_src_ip=str(ipaddress.ip_address(o_ip.get_attr(f"CTA_IP_{v}_SRC"))),
                    orig_src_port=int(o_proto.get_attr("CTA_PROTO_SRC_PORT")),
                    orig_dst_ip=str(ipaddress.ip_address(o_ip.get_attr(f"CTA_IP_{v}_DST"))),
                    orig_dst_port=int(o_proto.get_attr("CTA_PROTO_DST_PORT")),
                    reply_src_ip=str(ipaddress.ip_address(r_ip.get_attr(f"CTA_IP_{v}_SRC"))),
                    reply_src_port=int(r_proto.get_attr("CTA_PROTO_SRC_PORT")),
                    zone=int(msg.get_attr("CTA_ZONE") or 0))
    except (AttributeError, TypeError, ValueError):  # something missing from a malformed message
        return None


class ConntrackCleaner:
    """Deletes stale service flows from the conntrack table of the current network namespace.

    Never raises for netlink trouble: failures are logged and counted in `errors`;
    an entry that vanished between listing and deletion (ENOENT) is not a failure.
    """

    def __init__(self, *, protocols: Collection[str] = DEFAULT_PROTOCOLS,
                 socket_factory: Callable[[int], AsyncNFCTSocket] = AsyncNFCTSocket):
        """`socket_factory(address_family)` opens a ctnetlink socket (replaceable in tests)."""
        unknown = set(protocols) - set(IP_PROTOCOLS)
        if unknown:
            raise ValueError(f"unsupported protocols: {sorted(unknown)}")
        self.protocols = tuple(protocols)
        self._socket = socket_factory
        self.errors = 0  # netlink failures since creation
        self.deleted = 0  # entries deleted since creation

    async def clean(self, services: Mapping[PortKey, ServicePort],
                    endpoints: Mapping[PortKey, Sequence[Endpoint]]) -> int:
        """Reconcile the table with the desired state; returns how many entries were deleted."""
        fronts = frontends(services, endpoints, self.protocols)
        total, failed = 0, 0
        for family in sorted(fronts.families):
            start = time.monotonic()
            deleted, errors = 0, 0
            try:
                sock = self._socket(_FAMILIES[family])
            except Exception as exc:
                log.error("Cannot open a conntrack netlink socket", ipFamily=family, err=exc)
                self.errors += 1
                failed += 1
                continue
            try:
                flows, errors = await self._list(sock, family)
                for flow in _stale(flows, fronts):
                    outcome, exc = await self._delete(sock, flow)
                    deleted += outcome
                    if exc is not None:
                        # One line for the first failure; the summary below counts the rest.
                        (log.debug if errors else log.error)("Failed to delete a conntrack entry", flow=flow, err=exc)
                        errors += 1
            finally:
                sock.close()
            self.errors += errors
            failed += errors
            total += deleted
            metrics.conntrack_reconciled(family, time.monotonic() - start, deleted)
        self.deleted += total
        if total or failed:
            log.info("Deleted stale conntrack entries", entriesDeleted=total, errors=failed)
        else:
            log.debug("Deleted stale conntrack entries", entriesDeleted=0, errors=0)
        return total

    async def list_flows(self, family: str = "IPv4") -> list[Flow]:
        """Every flow of our protocols in one IP family (a diagnostic and test aid)."""
        sock = self._socket(_FAMILIES[family])
        try:
            flows, errors = await self._list(sock, family)
        finally:
            sock.close()
        self.errors += errors
        return flows

    async def _list(self, sock, family: str) -> tuple[list[Flow], int]:
        """The flows of one family; a failed dump yields what was read before it failed."""
        flows: list[Flow] = []
        for protocol in self.protocols:
            # Filtered in the kernel by protocol (CTA_FILTER, Linux >= 5.8), checked again below.
            selector = NFCTAttrTuple(family=_FAMILIES[family], proto=IP_PROTOCOLS[protocol])
            try:
                async for msg in await sock.dump(tuple_orig=selector):
                    flow = flow_from_netlink(msg)
                    if flow is not None and flow.protocol == protocol:
                        flows.append(flow)
            except NetlinkDumpInterrupted:
                # The table changed under the dump: go on with what we have, as upstream does on EINTR.
                log.debug("Conntrack dump interrupted, using the partial result", ipFamily=family,
                          protocol=protocol)
            except Exception as exc:  # netlink errors, a closed socket...
                log.error("Failed to list conntrack entries", ipFamily=family, protocol=protocol, err=exc)
                return flows, 1
        return flows, 0

    async def _delete(self, sock, flow: Flow) -> tuple[bool, Exception | None]:
        """(deleted, error); an entry already gone is neither."""
        family = _FAMILIES[flow.family]
        orig = NFCTAttrTuple(family=family, saddr=flow.orig_src_ip, daddr=flow.orig_dst_ip,
                             proto=IP_PROTOCOLS[flow.protocol], sport=flow.orig_src_port, dport=flow.orig_dst_port)
        try:
            await sock.entry("del", tuple_orig=orig, zone=flow.zone or None)
        except NetlinkError as exc:
            return False, (None if exc.code == errno.ENOENT else exc)
        except Exception as exc:
            return False, exc
        log.debug("Deleted stale conntrack entry", flow=flow)
        return True, None
