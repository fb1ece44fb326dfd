"""Which conntrack flows are stale (upstream's CleanStaleEntries rule), and the cleaner's error handling."""

from __future__ import annotations

import dataclasses

import asyncio
import errno
import logging
import socket

from pyroute2.netlink.exceptions import NetlinkDumpInterrupted, NetlinkError

from pyproxy import conntrack as ct
from pyproxy import metrics
from pyproxy.conntrack import ConntrackCleaner, Flow, cleanup_needed, flow_from_netlink, stale_flows
from pyproxy.model import Endpoint, ServicePort

DNS = ServicePort("kube-system", "dns", "dns", "UDP", 53, cluster_ips=("10.96.0.10",), node_port=30053,
                  external_ips=("192.0.2.10",), load_balancer_ips=("198.51.100.10",))
DNS_KEY = DNS.key
CLIENT = "10.244.9.9"


def ep(ip: str, port: int = 5353, **kw) -> Endpoint:
    return Endpoint(ip=ip, port=port, **kw)


def flow(dst: str, dport: int, reply: str, rport: int = 5353, *, protocol: str = "UDP", sport: int = 40000) -> Flow:
    return Flow(protocol, CLIENT, sport, dst, dport, reply, rport)


def stale(flows, services=None, endpoints=None, **kw):
    services = {DNS_KEY: DNS} if services is None else services
    endpoints = {DNS_KEY: [ep("10.244.1.5"), ep("10.244.2.7")]} if endpoints is None else endpoints
    return stale_flows(flows, services, endpoints, **kw)


def test_flows_to_every_frontend_answered_by_a_gone_endpoint_are_stale():
    gone = "10.244.3.3"
    flows = [flow("10.96.0.10", 53, gone), flow("192.0.2.10", 53, gone), flow("198.51.100.10", 53, gone),
             flow("10.0.0.1", 30053, gone), flow("10.0.0.2", 30053, gone)]  # NodePort, on any node address
    assert stale(flows) == flows


def test_flows_answered_by_a_serving_endpoint_stay():
    flows = [flow("10.96.0.10", 53, "10.244.1.5"), flow("192.0.2.10", 53, "10.244.2.7"),
             flow("10.0.0.1", 30053, "10.244.2.7")]
    assert stale(flows) == []


def test_the_endpoint_port_counts_too():
    # Same pod IP, but the endpoint's port changed: the old flow is stale.
    assert stale([flow("10.96.0.10", 53, "10.244.1.5", 5300)]) == [flow("10.96.0.10", 53, "10.244.1.5", 5300)]


def test_only_the_service_port_is_matched_not_the_whole_ip():
    other_port = flow("10.96.0.10", 9153, "10.244.3.3", 9153)  # another port of the same cluster IP
    assert stale([other_port]) == []


def test_a_flow_created_while_the_service_had_no_endpoint_is_stale_once_it_has_one():
    # Not NATed: the reply comes from the service address itself.
    unnated = [flow("10.96.0.10", 53, "10.96.0.10", 53), flow("10.0.0.1", 30053, "10.0.0.1", 30053)]
    assert stale(unnated) == unnated
    assert stale(unnated, endpoints={DNS_KEY: []}) == []  # still no endpoint: left alone
    assert stale(unnated, endpoints={}) == []


def test_serving_is_the_only_condition_that_counts():
    # Terminating-but-serving endpoints, endpoints on other nodes, not-ready-but-serving: all still serve.
    endpoints = {DNS_KEY: [ep("10.244.1.5", ready=False, serving=True, terminating=True, node_name="other"),
                           ep("10.244.2.7", ready=False, serving=False)]}
    flows = [flow("10.96.0.10", 53, "10.244.1.5"), flow("10.96.0.10", 53, "10.244.2.7")]
    assert stale(flows, endpoints=endpoints) == [flows[1]]
    local = {DNS_KEY: dataclasses.replace(DNS, external_traffic_policy="Local",
                                                internal_traffic_policy="Local")}
    assert stale(flows, services=local, endpoints=endpoints) == [flows[1]]


def test_without_any_serving_endpoint_nothing_is_touched():
    endpoints = {DNS_KEY: [ep("10.244.1.5", ready=False, serving=False)]}
    assert stale([flow("10.96.0.10", 53, "10.244.3.3")], endpoints=endpoints) == []


def test_tcp_is_left_alone_and_sctp_only_when_asked():
    tcp = ServicePort("d", "web", "http", "TCP", 80, cluster_ips=("10.96.0.20",))
    sctp = ServicePort("d", "sig", "s", "SCTP", 3868, cluster_ips=("10.96.0.30",))
    services = {DNS_KEY: DNS, tcp.key: tcp, sctp.key: sctp}
    endpoints = {DNS_KEY: [ep("10.244.1.5")], tcp.key: [ep("10.244.1.5", 8080)], sctp.key: [ep("10.244.1.5", 3868)]}
    flows = [flow("10.96.0.20", 80, "10.244.3.3", 8080, protocol="TCP"),
             flow("10.96.0.30", 3868, "10.244.3.3", 3868, protocol="SCTP"),
             flow("10.96.0.10", 53, "10.244.3.3", protocol="TCP")]  # a TCP flow to a UDP service port
    assert stale(flows, services, endpoints) == []
    assert stale(flows, services, endpoints, protocols=("UDP", "SCTP")) == [flows[1]]


def test_frontends_shared_by_two_services_pool_their_endpoints():
    other = ServicePort("d", "dns2", "dns", "UDP", 53, cluster_ips=("10.96.0.11",), external_ips=("192.0.2.10",))
    services = {DNS_KEY: DNS, other.key: other}
    endpoints = {DNS_KEY: [ep("10.244.1.5")], other.key: [ep("10.244.2.7")]}
    flows = [flow("192.0.2.10", 53, "10.244.1.5"), flow("192.0.2.10", 53, "10.244.2.7"),
             flow("10.96.0.11", 53, "10.244.1.5")]
    assert stale(flows, services, endpoints) == [flows[2]]


def test_ipv6_frontends():
    v6 = ServicePort("d", "dns6", "dns", "UDP", 53, cluster_ips=("fd00:10:96::a",))
    endpoints = {v6.key: [ep("fd00:10:244::5")]}
    flows = [Flow("UDP", "fd00::1", 40000, "fd00:10:96::a", 53, "fd00:10:244::6", 5353),
             Flow("UDP", "fd00::1", 40001, "fd00:10:96::a", 53, "fd00:10:244::5", 5353)]
    assert stale_flows(flows, {v6.key: v6}, endpoints) == [flows[0]]
    assert flows[0].family == "IPv6"
    assert ct.frontends({v6.key: v6}, endpoints).families == {"IPv6"}


def test_cleanup_is_needed_when_a_changed_service_has_a_udp_port_before_or_after():
    tcp = ServicePort("d", "web", "http", "TCP", 80, cluster_ips=("10.96.0.20",))
    assert cleanup_needed({("kube-system", "dns"): ()}, {DNS_KEY: DNS}, {})
    assert cleanup_needed({("kube-system", "dns"): (DNS_KEY,)}, {}, {DNS_KEY: DNS})
    assert not cleanup_needed({("d", "web"): (tcp.key,)}, {tcp.key: tcp}, {tcp.key: tcp, DNS_KEY: DNS})
    assert not cleanup_needed({}, {}, {DNS_KEY: DNS})


class _Attrs:
    """Enough of a pyroute2 nla for flow_from_netlink."""

    def __init__(self, family=socket.AF_INET, **attrs):
        self.attrs = attrs
        self.family = family

    def get_attr(self, name):
        return self.attrs.get(name)

    def get(self, name):
        return self.family if name == "nfgen_family" else None


def _msg(proto, src, sport, dst, dport, rsrc, rport, family=socket.AF_INET, zone=None):
    v = "V6" if family == socket.AF_INET6 else "V4"

    def tup(s, sp, d, dp):
        return _Attrs(CTA_TUPLE_IP=_Attrs(**{f"CTA_IP_{v}_SRC": s, f"CTA_IP_{v}_DST": d}),
                      CTA_TUPLE_PROTO=_Attrs(CTA_PROTO_NUM=proto, CTA_PROTO_SRC_PORT=sp, CTA_PROTO_DST_PORT=dp))
    return _Attrs(family, CTA_TUPLE_ORIG=tup(src, sport, dst, dport), CTA_TUPLE_REPLY=tup(rsrc, rport, src, sport),
                  CTA_ZONE=zone)


def test_flows_from_netlink_messages():
    assert flow_from_netlink(_msg(17, CLIENT, 40000, "10.96.0.10", 53, "10.244.1.5", 5353, zone=3)) == \
        Flow("UDP", CLIENT, 40000, "10.96.0.10", 53, "10.244.1.5", 5353, zone=3)
    six = flow_from_netlink(_msg(132, "fd00::1", 1, "fd00:0:0::a", 2, "fd00::b", 3, socket.AF_INET6))
    assert six == Flow("SCTP", "fd00::1", 1, "fd00::a", 2, "fd00::b", 3)
    assert flow_from_netlink(_msg(1, CLIENT, None, "10.0.0.1", None, "10.0.0.1", None)) is None  # ICMP
    assert flow_from_netlink(_Attrs(CTA_TUPLE_ORIG=_msg(17, CLIENT, 1, CLIENT, 2, CLIENT, 3))) is None  # no reply
    assert flow_from_netlink(_msg(17, CLIENT, None, "10.0.0.1", 53, "10.0.0.1", 53)) is None


class FakeSocket:
    """Our own stand-in for the ctnetlink socket: a table, and failures on demand."""

    def __init__(self, table, *, gone=(), fail=(), dump_error=None):
        self.table, self.gone, self.fail, self.dump_error = list(table), set(gone), set(fail), dump_error
        self.deleted, self.closed = [], False

    async def dump(self, tuple_orig):
        async def entries():
            for msg in self.table:
                yield msg
            if self.dump_error:
                raise self.dump_error
        return entries()

    async def entry(self, cmd, tuple_orig, zone=None):
        assert cmd == "del" and tuple_orig.proto == 17
        if tuple_orig.sport in self.gone:
            raise NetlinkError(errno.ENOENT, "No such file or directory")
        if tuple_orig.sport in self.fail:
            raise NetlinkError(errno.EPERM, "Operation not permitted")
        self.deleted.append((tuple_orig.sport, tuple_orig.daddr, tuple_orig.dport, zone))
        return []

    def close(self):
        self.closed = True


TABLE = [_msg(17, CLIENT, 40001, "10.96.0.10", 53, "10.244.3.3", 5353),  # stale
         _msg(17, CLIENT, 40002, "10.96.0.10", 53, "10.244.1.5", 5353),  # fine
         _msg(17, CLIENT, 40003, "10.0.0.1", 30053, "10.244.3.3", 5353, zone=7),  # stale
         _msg(17, CLIENT, 40004, "10.96.0.10", 53, "10.244.3.4", 5353)]  # stale


def clean(sock, endpoints=None):
    cleaner = ConntrackCleaner(socket_factory=lambda family: sock)
    endpoints = {DNS_KEY: [ep("10.244.1.5")]} if endpoints is None else endpoints
    return cleaner, asyncio.run(cleaner.clean({DNS_KEY: DNS}, endpoints))


def test_cleaner_deletes_the_stale_entries_by_original_tuple_and_zone(caplog):
    caplog.set_level(logging.INFO)
    def deleted() -> float:
        return metrics.new_registry("nftables").get_sample_value(
            "kubeproxy_conntrack_reconciler_deleted_entries_total", {"ip_family": "IPv4"}) or 0

    before = deleted()
    sock = FakeSocket(TABLE)
    cleaner, n = clean(sock)
    assert n == 3 and cleaner.errors == 0 and sock.closed
    assert sock.deleted == [(40001, "10.96.0.10", 53, None), (40003, "10.0.0.1", 30053, 7),
                            (40004, "10.96.0.10", 53, None)]
    assert deleted() == before + 3
    lines = [r for r in caplog.records if r.getMessage() == "Deleted stale conntrack entries"]
    assert len(lines) == 1 and lines[0].kv == {"entriesDeleted": 3, "errors": 0}


def test_entries_that_vanished_are_fine_and_failures_are_counted_not_raised(caplog):
    caplog.set_level(logging.INFO)
    sock = FakeSocket(TABLE, gone={40001}, fail={40003, 40004})
    cleaner, n = clean(sock)
    assert n == 0 and cleaner.errors == 2
    failures = [r for r in caplog.records if r.getMessage() == "Failed to delete a conntrack entry"
                and r.levelno == logging.ERROR]
    assert len(failures) == 1  # the first one; the summary line counts them all
    summary = [r for r in caplog.records if r.getMessage() == "Deleted stale conntrack entries"]
    assert summary[0].kv == {"entriesDeleted": 0, "errors": 2}


def test_a_failed_or_interrupted_dump_does_not_raise():
    sock = FakeSocket(TABLE[:1], dump_error=NetlinkDumpInterrupted())
    cleaner, n = clean(sock)
    assert n == 1 and cleaner.errors == 0  # the partial result is used, as upstream does on EINTR

    sock = FakeSocket(TABLE[:1], dump_error=NetlinkError(errno.EPERM))
    cleaner, n = clean(sock)
    assert n == 1 and cleaner.errors == 1

    def no_socket(family):
        raise OSError(errno.EPROTONOSUPPORT, "no ctnetlink")
    cleaner = ConntrackCleaner(socket_factory=no_socket)
    assert asyncio.run(cleaner.clean({DNS_KEY: DNS}, {DNS_KEY: [ep("10.244.1.5")]})) == 0
    assert cleaner.errors == 1


def test_nothing_to_reconcile_opens_no_socket():
    def no_socket(family):
        raise AssertionError("no socket should be opened")
    cleaner = ConntrackCleaner(socket_factory=no_socket)
    assert asyncio.run(cleaner.clean({DNS_KEY: DNS}, {})) == 0
    assert cleaner.errors == 0
