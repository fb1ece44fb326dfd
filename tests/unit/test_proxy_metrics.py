"""kube-proxy's metrics: upstream names and shapes, the text exposition read back, the :10249 server."""

from __future__ import annotations

import asyncio
import re
import time

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from tests.unit.httpget import get
from pyproxy import metrics
from pyproxy.metrics import observe_network_programming

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


def render(mode: str) -> str:
    text = generate_latest(metrics.new_registry(mode)).decode()
    assert "_created" not in text  # client_golang writes no *_created series
    return text


def touch_all(ip_family: str = "touched") -> None:
    """One series in every kube-proxy metric, labelled as upstream labels it (labels() refuses other names)."""
    for metric in metrics.MODES:
        [desc] = metric.describe()
        name = desc.name + ("_total" if desc.type == "counter" else "")
        labels = {label: ip_family if label == "ip_family" else "x" for label in UPSTREAM[name][2]}
        child = metric.labels(**labels) if labels else metric
        (child.inc if desc.type == "counter" else child.set if desc.type == "gauge" else child.observe)(1)


def test_the_registries_hold_upstreams_metrics_for_each_mode():
    touch_all()
    everywhere = set(UPSTREAM) - {
        "kubeproxy_sync_full_proxy_rules_duration_seconds", "kubeproxy_sync_partial_proxy_rules_duration_seconds",
        "kubeproxy_sync_proxy_rules_iptables_restore_failures_total",
        "kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total",
        "kubeproxy_sync_proxy_rules_iptables_total", "kubeproxy_sync_proxy_rules_iptables_last",
        "kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
        "kubeproxy_sync_proxy_rules_nftables_cleanup_failures_total"}
    full_partial = {"kubeproxy_sync_full_proxy_rules_duration_seconds",
                    "kubeproxy_sync_partial_proxy_rules_duration_seconds"}  # upstream: iptables and nftables
    expected = {
        "iptables": everywhere | full_partial | {
            "kubeproxy_sync_proxy_rules_iptables_restore_failures_total",
            "kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total",
            "kubeproxy_sync_proxy_rules_iptables_total", "kubeproxy_sync_proxy_rules_iptables_last"},
        "nftables": everywhere | full_partial | {
            "kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
            "kubeproxy_sync_proxy_rules_nftables_cleanup_failures_total"},
        "ipvs": everywhere | {"kubeproxy_sync_proxy_rules_iptables_restore_failures_total"},
    }
    for mode, names in expected.items():
        families = parse(render(mode))
        assert {n for n in families if not n.startswith("process_")} == names, mode
        for name in names:
            kind, help, labels = UPSTREAM[name]
            fam = families[name]
            assert (fam["type"], fam["help"]) == (kind, f"[ALPHA] {help}"), name
            assert {frozenset(set(s[1]) - {"le"}) for s in fam["samples"]} == {frozenset(labels)}, name
        kubeproxy = [n for n in families if n.startswith("kubeproxy_")]
        assert kubeproxy == sorted(kubeproxy)  # sorted by name, as client_golang writes them


def test_exposition_reads_back_with_values_and_process_metrics():
    metrics.SYNC_PROXY_RULES_NO_LOCAL_ENDPOINTS_TOTAL.labels(ip_family="IPv4", traffic_policy="internal").set(2)
    before = parse(render("iptables"))["kubeproxy_sync_proxy_rules_endpoint_changes_total"]["samples"][0][2]
    metrics.ENDPOINT_CHANGES_TOTAL.inc()
    metrics.record_sync(0.003, full=True)
    text = render("iptables")
    assert 'kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family="IPv4",traffic_policy="internal"} 2.0\n' \
        in text
    families = parse(text)
    assert families["kubeproxy_sync_proxy_rules_endpoint_changes_total"]["samples"] == [
        ("kubeproxy_sync_proxy_rules_endpoint_changes_total", {}, before + 1)]
    [(name, labels, _)] = families["kubeproxy_sync_proxy_rules_service_changes_pending"]["samples"]
    assert (name, labels) == ("kubeproxy_sync_proxy_rules_service_changes_pending", {})  # present from the start
    [last] = [s for s in families["kubeproxy_sync_proxy_rules_last_timestamp_seconds"]["samples"]
              if s[1] == {"ip_family": "IPv4"}]
    assert abs(last[2] - time.time()) < 60
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total", "process_start_time_seconds",
                 "process_open_fds", "process_max_fds", "process_virtual_memory_bytes"):
        assert families[name]["samples"][0][2] > 0, name
    assert families["process_cpu_seconds_total"]["type"] == "counter"
    assert abs(families["process_start_time_seconds"]["samples"][0][2] - time.time()) < 3600


def buckets_of(family: dict, **labels) -> list[tuple[str, float]]:
    return [(s[1]["le"], s[2]) for s in family["samples"]
            if s[0].endswith("_bucket") and {k: v for k, v in s[1].items() if k != "le"} == labels]


def test_histograms_are_cumulative_with_inf_sum_and_count():
    for v in (0.0005, 0.001, 0.003, 5, 50):
        metrics.record_sync(v, full=False, ip_family="hist-a")
    metrics.record_sync(2, full=False, ip_family="hist-b")
    text = render("nftables")
    fam = parse(text)["kubeproxy_sync_partial_proxy_rules_duration_seconds"]
    a = buckets_of(fam, ip_family="hist-a")
    assert a[:4] == [("0.001", 2), ("0.002", 2), ("0.004", 3), ("0.008", 3)]
    assert a[-3:] == [("8.192", 4), ("16.384", 4), ("+Inf", 5)]
    b = buckets_of(fam, ip_family="hist-b")
    assert [c for _, c in b] == [0] * 11 + [1] * 5  # 2s falls in le="2.048" and above
    samples = {(s[0], s[1].get("ip_family")): s[2] for s in fam["samples"] if "le" not in s[1]}
    assert samples[("kubeproxy_sync_partial_proxy_rules_duration_seconds_sum", "hist-a")] == pytest.approx(55.0045)
    assert samples[("kubeproxy_sync_partial_proxy_rules_duration_seconds_count", "hist-a")] == 5
    assert samples[("kubeproxy_sync_partial_proxy_rules_duration_seconds_count", "hist-b")] == 1
    # ip_family comes before le, as client_golang writes it
    assert 'kubeproxy_sync_partial_proxy_rules_duration_seconds_bucket{ip_family="hist-a",le="0.001"} 2.0\n' in text


def test_upstream_buckets():
    metrics.record_sync(0.0005, full=True, ip_family="buckets")
    metrics.observe_network_programming("2023-11-14T22:13:20Z", ip_family="buckets", now=1_700_000_000,
                                        not_before=0)
    metrics.conntrack_reconciled("buckets", 0.0005, 0)
    families = parse(render("iptables"))
    sync = ["0.001", "0.002", "0.004", "0.008", "0.016", "0.032", "0.064", "0.128", "0.256", "0.512",
            "1.024", "2.048", "4.096", "8.192", "16.384", "+Inf"]
    for name in ("kubeproxy_sync_proxy_rules_duration_seconds", "kubeproxy_sync_full_proxy_rules_duration_seconds",
                 "kubeproxy_conntrack_reconciler_sync_duration_seconds"):
        assert [le for le, _ in buckets_of(families[name], ip_family="buckets")] == sync, name
    les = [le for le, _ in buckets_of(families["kubeproxy_network_programming_duration_seconds"],
                                      ip_family="buckets")]
    assert les[:5] == ["0.0", "0.25", "0.5", "1.0", "2.0"]  # prometheus_client writes whole numbers with ".0"
    assert les[-10:] == ["110.0", "115.0", "120.0", "150.0", "180.0", "210.0", "240.0", "270.0", "300.0", "+Inf"]
    assert [float(le) for le in les[3:62]] == [float(n) for n in range(1, 60)]
    assert len(les) == 1 + 2 + 59 + 12 + 7 + 1


def test_unused_labelled_families_are_left_out_and_labels_escaped():
    quiet = Counter("quiet_total", "Never used", ["code"], registry=None)
    loud = Counter("loud_total", 'Help with \\ and\nnewline', ["path"], registry=None)
    plain = Gauge("plain", "Unlabelled", registry=None)
    registry = CollectorRegistry()
    registry.register(metrics.UsedFamilies([quiet, loud, plain]))
    loud.labels(path='a"b\\c\nd').inc()
    text = generate_latest(registry).decode()
    assert "quiet_total" not in text
    assert text == ('# HELP loud_total Help with \\\\ and\\nnewline\n'
                    '# TYPE loud_total counter\n'
                    'loud_total{path="a\\"b\\\\c\\nd"} 1.0\n'
                    '# HELP plain Unlabelled\n'
                    '# TYPE plain gauge\n'
                    'plain 0.0\n')
    with pytest.raises(ValueError):
        loud.labels(code="200")
    with pytest.raises(ValueError):
        loud.labels(path="x").inc(-1)


def test_network_programming_latency_from_the_annotation():
    now = 1_700_000_100.0
    def count() -> float:
        return metrics.new_registry("ipvs").get_sample_value(
            "kubeproxy_network_programming_duration_seconds_count", {"ip_family": "IPv6"}) or 0

    before = count()
    assert observe_network_programming("2023-11-14T22:13:20Z", ip_family="IPv6", now=now,
                                       not_before=0) == pytest.approx(100)
    assert observe_network_programming("2023-11-14T23:14:58.5+01:00", ip_family="IPv6", now=now,
                                       not_before=0) == pytest.approx(1.5)
    assert observe_network_programming("2023-11-14T22:14:59.123456789Z", ip_family="IPv6", now=now,
                                       not_before=0) == pytest.approx(0.876544, abs=1e-6)
    assert count() == before + 3
    # Unparsable, without an offset, or older than this process: not observed.
    for bad in ("", "yesterday", "2023-11-14T22:13:20"):
        assert observe_network_programming(bad, ip_family="IPv6", now=now, not_before=0) is None
    assert observe_network_programming("2023-11-14T22:13:20Z", ip_family="IPv6", now=now) is None
    assert count() == before + 3


def test_metrics_server():
    async def scenario():
        server = await metrics.serve("127.0.0.1", 0, proxy_mode="nftables",
                                     registry=metrics.new_registry("nftables"))
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
