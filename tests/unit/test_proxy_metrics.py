"""kube-proxy's metrics: upstream names and shapes, the text exposition read back, the :10249 server."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from tests.unit.httpget import get
from pyproxy import metrics
from pyproxy.metrics import Registry, exponential_buckets, go_float, observe_network_programming

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> dict[str, dict]:
    """Prometheus text format 0.0.4 → {family: {help, type, samples: [(name, labels, value)]}}."""
    families: dict[str, dict] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, help = line[7:].split(" ", 1)
            current = families.setdefault(name, {"samples": []})
            current["help"] = help
        elif line.startswith("# TYPE "):
            name, kind = line[7:].split(" ")
            assert name in families, f"TYPE before HELP for {name}"
            families[name]["type"] = kind
        else:
            m = SAMPLE.match(line)
            assert m, f"not a sample line: {line!r}"
            name, labels, value = m.groups()
            assert name.startswith(current_name(families)), f"{name} outside its family"
            pairs = dict(LABEL.findall(labels or ""))
            current["samples"].append((name, pairs, float(value)))
    return families


def current_name(families: dict) -> str:
    return list(families)[-1]


UPSTREAM = {  # name: (type, help, labels) — Kubernetes v1.36 metrics reference
    "kubeproxy_sync_proxy_rules_duration_seconds": ("histogram", "SyncProxyRules latency in seconds", {"ip_family"}),
    "kubeproxy_sync_full_proxy_rules_duration_seconds":
        ("histogram", "SyncProxyRules latency in seconds for full resyncs", {"ip_family"}),
    "kubeproxy_sync_partial_proxy_rules_duration_seconds":
        ("histogram", "SyncProxyRules latency in seconds for partial resyncs", {"ip_family"}),
    "kubeproxy_sync_proxy_rules_last_timestamp_seconds":
        ("gauge", "The last time proxy rules were successfully synced", {"ip_family"}),
    "kubeproxy_network_programming_duration_seconds":
        ("histogram", "In Cluster Network Programming Latency in seconds", {"ip_family"}),
    "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds":
        ("gauge", "The last time a sync of proxy rules was queued", {"ip_family"}),
    "kubeproxy_sync_proxy_rules_endpoint_changes_pending": ("gauge", "Pending proxy rules Endpoint changes", set()),
    "kubeproxy_sync_proxy_rules_endpoint_changes_total":
        ("counter", "Cumulative proxy rules Endpoint changes", set()),
    "kubeproxy_sync_proxy_rules_service_changes_pending": ("gauge", "Pending proxy rules Service changes", set()),
    "kubeproxy_sync_proxy_rules_service_changes_total": ("counter", "Cumulative proxy rules Service changes", set()),
    "kubeproxy_sync_proxy_rules_iptables_restore_failures_total":
        ("counter", "Cumulative proxy iptables restore failures", {"ip_family"}),
    "kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total":
        ("counter", "Cumulative proxy iptables partial restore failures", {"ip_family"}),
    "kubeproxy_sync_proxy_rules_iptables_total":
        ("gauge", "Total number of iptables rules owned by kube-proxy", {"ip_family", "table"}),
    "kubeproxy_sync_proxy_rules_iptables_last":
        ("gauge", "Number of iptables rules written by kube-proxy in last sync", {"ip_family", "table"}),
    "kubeproxy_sync_proxy_rules_nftables_sync_failures_total":
        ("counter", "Cumulative proxy nftables sync failures", {"ip_family"}),
    "kubeproxy_sync_proxy_rules_nftables_cleanup_failures_total":
        ("counter", "Cumulative proxy nftables cleanup failures", {"ip_family"}),
    "kubeproxy_sync_proxy_rules_no_local_endpoints_total":
        ("gauge", "Number of services with a Local traffic policy and no endpoints", {"ip_family", "traffic_policy"}),
    "kubeproxy_proxy_healthz_total": ("counter", "Cumulative proxy healthz HTTP status", {"code"}),
    "kubeproxy_proxy_livez_total": ("counter", "Cumulative proxy livez HTTP status", {"code"}),
    "kubeproxy_conntrack_reconciler_sync_duration_seconds":
        ("histogram", "ReconcileConntrackFlowsLatency latency in seconds", {"ip_family"}),
    "kubeproxy_conntrack_reconciler_deleted_entries_total":
        ("counter", "Cumulative conntrack flows deleted by conntrack reconciler", {"ip_family"}),
}


def test_the_registry_holds_upstreams_metrics():
    assert set(metrics.REGISTRY.metrics) == set(UPSTREAM)
    for name, (kind, help, labels) in UPSTREAM.items():
        m = metrics.REGISTRY.metrics[name]
        assert (m.kind, m.help, set(m.labelnames), m.stability) == (kind, help, labels, "ALPHA"), name


def test_exposition_reads_back_with_upstream_help_and_types():
    metrics.ENDPOINT_CHANGES_TOTAL.inc()
    metrics.SYNC_PROXY_RULES_NO_LOCAL_ENDPOINTS_TOTAL.set(2, ip_family="IPv4", traffic_policy="internal")
    metrics.record_sync(0.003, full=True)
    families = parse(metrics.REGISTRY.render("iptables"))
    for name in ("kubeproxy_sync_proxy_rules_endpoint_changes_total", "kubeproxy_sync_proxy_rules_duration_seconds",
                 "kubeproxy_sync_full_proxy_rules_duration_seconds",
                 "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
                 "kubeproxy_sync_proxy_rules_service_changes_pending"):  # unlabelled: present at 0 from the start
        kind, help, _ = UPSTREAM[name]
        assert families[name]["type"] == kind
        assert families[name]["help"] == f"[ALPHA] {help}"
    assert ("kubeproxy_sync_proxy_rules_no_local_endpoints_total", {"ip_family": "IPv4", "traffic_policy": "internal"},
            2.0) in families["kubeproxy_sync_proxy_rules_no_local_endpoints_total"]["samples"]
    [(name, labels, _)] = families["kubeproxy_sync_proxy_rules_service_changes_pending"]["samples"]
    assert (name, labels) == ("kubeproxy_sync_proxy_rules_service_changes_pending", {})
    last = families["kubeproxy_sync_proxy_rules_last_timestamp_seconds"]["samples"][0]
    assert abs(last[2] - time.time()) < 60
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total", "process_start_time_seconds",
                 "process_open_fds", "process_max_fds", "process_virtual_memory_bytes"):
        assert families[name]["samples"][0][2] > 0, name
    assert families["process_cpu_seconds_total"]["type"] == "counter"
    assert abs(families["process_start_time_seconds"]["samples"][0][2] - time.time()) < 3600
    names = [n for n in families if n.startswith("kubeproxy_")]
    assert names == sorted(names)


def test_each_mode_exposes_what_upstream_registers_for_it():
    for m in (metrics.IPTABLES_RULES_TOTAL, metrics.NFTABLES_SYNC_FAILURES_TOTAL,
              metrics.IPTABLES_RESTORE_FAILURES_TOTAL):
        (m.set if isinstance(m, metrics.Gauge) else m.inc)(1, ip_family="IPv4", **(
            {"table": "nat"} if "table" in m.labelnames else {}))
    metrics.SYNC_PARTIAL_PROXY_RULES_LATENCY.observe(0.01, ip_family="IPv4")
    iptables = parse(metrics.REGISTRY.render("iptables"))
    nftables = parse(metrics.REGISTRY.render("nftables"))
    ipvs = parse(metrics.REGISTRY.render("ipvs"))
    assert "kubeproxy_sync_proxy_rules_iptables_total" in iptables
    assert "kubeproxy_sync_partial_proxy_rules_duration_seconds" in iptables
    assert "kubeproxy_sync_proxy_rules_nftables_sync_failures_total" not in iptables
    assert "kubeproxy_sync_proxy_rules_nftables_sync_failures_total" in nftables
    assert "kubeproxy_sync_proxy_rules_iptables_total" not in nftables
    assert "kubeproxy_sync_partial_proxy_rules_duration_seconds" in nftables  # upstream registers it there too
    assert "kubeproxy_sync_partial_proxy_rules_duration_seconds" not in ipvs
    assert "kubeproxy_sync_proxy_rules_iptables_restore_failures_total" in ipvs
    assert "kubeproxy_sync_proxy_rules_iptables_total" not in ipvs


def buckets_of(family: dict, **labels) -> list[tuple[str, float]]:
    return [(s[1]["le"], s[2]) for s in family["samples"]
            if s[0].endswith("_bucket") and {k: v for k, v in s[1].items() if k != "le"} == labels]


def test_histograms_are_cumulative_with_inf_sum_and_count():
    r = Registry()
    h = r.histogram("test_seconds", "A test", ["ip_family"], buckets=[0.1, 1, 10])
    for v in (0.05, 0.1, 0.5, 5, 50):
        h.observe(v, ip_family="IPv4")
    h.observe(2, ip_family="IPv6")
    fam = parse(r.render())["test_seconds"]
    assert fam["type"] == "histogram" and fam["help"] == "[ALPHA] A test"
    assert buckets_of(fam, ip_family="IPv4") == [("0.1", 2), ("1", 3), ("10", 4), ("+Inf", 5)]
    assert buckets_of(fam, ip_family="IPv6") == [("0.1", 0), ("1", 0), ("10", 1), ("+Inf", 1)]
    samples = {(s[0], s[1].get("ip_family")): s[2] for s in fam["samples"] if "le" not in s[1]}
    assert samples[("test_seconds_sum", "IPv4")] == pytest.approx(55.65)
    assert samples[("test_seconds_count", "IPv4")] == 5
    assert samples[("test_seconds_count", "IPv6")] == 1
    for labels in ({"ip_family": "IPv4"}, {"ip_family": "IPv6"}):
        counts = [c for _, c in buckets_of(fam, **labels)]
        assert counts == sorted(counts)
    # ip_family comes before le, as client_golang writes it
    assert 'test_seconds_bucket{ip_family="IPv4",le="0.1"} 2' in r.render()


def test_upstream_buckets():
    les = [le for le, _ in buckets_of(_observed(metrics.SYNC_PROXY_RULES_LATENCY), ip_family="IPv4")]
    assert les == ["0.001", "0.002", "0.004", "0.008", "0.016", "0.032", "0.064", "0.128", "0.256", "0.512",
                   "1.024", "2.048", "4.096", "8.192", "16.384", "+Inf"]
    les = [le for le, _ in buckets_of(_observed(metrics.NETWORK_PROGRAMMING_LATENCY), ip_family="IPv4")]
    assert les[:5] == ["0", "0.25", "0.5", "1", "2"]
    assert les[-10:] == ["110", "115", "120", "150", "180", "210", "240", "270", "300", "+Inf"]
    assert len(les) == 1 + 2 + 59 + 12 + 7 + 1
    assert metrics.RECONCILE_CONNTRACK_FLOWS_LATENCY.buckets == tuple(exponential_buckets(0.001, 2, 15))


def _observed(h: metrics.Histogram) -> dict:
    r = Registry()
    copy = r.histogram(h.name, h.help, h.labelnames, buckets=h.buckets)
    copy.observe(0.0005, ip_family="IPv4")
    return parse(r.render())[h.name]


def test_unused_labelled_families_are_left_out_and_labels_escaped():
    r = Registry()
    r.counter("quiet_total", "Never used", ["code"])
    c = r.counter("loud_total", 'Help with \\ and\nnewline', ["path"])
    c.inc(path='a"b\\c\nd')
    text = r.render()
    assert "quiet_total" not in text
    assert '# HELP loud_total [ALPHA] Help with \\\\ and\\nnewline' in text
    assert 'loud_total{path="a\\"b\\\\c\\nd"} 1' in text
    with pytest.raises(ValueError):
        c.inc(code="200")
    with pytest.raises(ValueError):
        c.inc(-1, path="x")


def test_numbers_are_written_as_go_writes_them():
    assert [go_float(v) for v in (0, 1, 0.25, 1e-05, 123456, 1e6, 1.7e9, 42692608, float("inf"))] == [
        "0", "1", "0.25", "1e-05", "123456", "1e+06", "1.7e+09", "4.2692608e+07", "+Inf"]


def test_network_programming_latency_from_the_annotation():
    now = 1_700_000_100.0
    before = metrics.NETWORK_PROGRAMMING_LATENCY.count(ip_family="IPv6")
    assert observe_network_programming("2023-11-14T22:13:20Z", ip_family="IPv6", now=now,
                                       not_before=0) == pytest.approx(100)
    assert observe_network_programming("2023-11-14T23:14:58.5+01:00", ip_family="IPv6", now=now,
                                       not_before=0) == pytest.approx(1.5)
    assert observe_network_programming("2023-11-14T22:14:59.123456789Z", ip_family="IPv6", now=now,
                                       not_before=0) == pytest.approx(0.876544, abs=1e-6)
    assert metrics.NETWORK_PROGRAMMING_LATENCY.count(ip_family="IPv6") == before + 3
    # Unparsable, without an offset, or older than this process: not observed.
    for bad in ("", "yesterday", "2023-11-14T22:13:20"):
        assert observe_network_programming(bad, ip_family="IPv6", now=now, not_before=0) is None
    assert observe_network_programming("2023-11-14T22:13:20Z", ip_family="IPv6", now=now) is None
    assert metrics.NETWORK_PROGRAMMING_LATENCY.count(ip_family="IPv6") == before + 3


def test_metrics_server():
    async def scenario():
        server = await metrics.serve("127.0.0.1", 0, proxy_mode="nftables")
        port = server.sockets[0].getsockname()[1]
        try:
            status, headers, body = await get(port, "/metrics")
            assert status == 200 and headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
            families = parse(body.decode())
            assert "kubeproxy_sync_proxy_rules_endpoint_changes_total" in families
            assert "process_resident_memory_bytes" in families
            assert "kubeproxy_sync_proxy_rules_iptables_total" not in families
            status, headers, body = await get(port, "/proxyMode")
            assert (status, body) == (200, b"nftables")
            assert headers["Content-Type"] == "text/plain; charset=utf-8"
            assert headers["X-Content-Type-Options"] == "nosniff"
            assert (await get(port, "/healthz"))[::2] == (200, b"ok")
            assert (await get(port, "/nope"))[::2] == (404, b"404 page not found\n")
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())
