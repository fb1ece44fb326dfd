"""Service proxy sync times and footprint, pyproxy vs upstream kube-proxy, side by side, in one run.

    python -m bench.proxy_sync [--sizes 1000,5000,10000] [--modes iptables,nftables] [--changes 5]

Needs the local cluster up (`make up`). In namespace pynode-bench-proxy it creates N selector-less
Services (1 in 10 NodePort) with one EndpointSlice of 5 ready endpoints each, growing from one size
to the next. For each size and mode it runs pyproxy, then the upstream kube-proxy (built from the
same Kubernetes version), one at a time, each in a fresh network namespace of its own (pynode-bp,
on the host bridge as 10.221.0.201) with the same KubeProxyConfiguration, and reads from each one's
metrics: the duration of its first full sync and when it finished (from process start), then, for
--changes single-endpoint changes of one EndpointSlice, that sync's duration and the network
programming latency; and finally its peak RSS (VmHWM). An ipvs row says why that mode cannot run
here. The tables go to stdout and, with the machine's facts, to
bench/results/proxy_sync-<UTC date>.md. The namespace, the network namespace and the bench's
Node object are removed at the end, also after an error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import ipaddress
import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import yaml
from lightkube import ApiError, AsyncClient, Client, KubeConfig
from lightkube.models.core_v1 import NodeAddress, NodeSpec, NodeStatus, ServicePort, ServiceSpec, Taint
from lightkube.models.discovery_v1 import Endpoint, EndpointConditions, EndpointPort
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, Node, Service
from lightkube.resources.discovery_v1 import EndpointSlice
from lightkube.types import PatchType

from localcluster import network, procs, settings
from localcluster import cluster as local

from .nodes import MIB, interrupt_on_signals, log, started_at

RESULTS = Path(__file__).resolve().parent / "results"
WORK = Path("/tmp/pynode-bench-proxy")  # config files and the proxies' logs; kept after the run
NAMESPACE = "pynode-bench-proxy"
NODE_NAME = "pynode-bench-proxy"  # the proxies' hostnameOverride, and a Node object of that name
NETNS = "pynode-bp"
HOST_VETH = "pynbp-host"
HOST_INDEX = 201  # the netns address: 10.221.0.201
ENDPOINTS = ipaddress.ip_network("10.222.128.0/17")  # endpoint addresses; no traffic is ever sent to them
ENDPOINTS_PER_SERVICE = 5
NODEPORT_EVERY = 10  # 1 service in 10 is a NodePort
MANAGED_BY = "pynode-bench"
TRIGGER = "endpoints.kubernetes.io/last-change-trigger-time"
CREATES_IN_FLIGHT = 16
METRICS_PORT = 10249
PROXIES = ("pyproxy", "upstream")
LABELS = {"pyproxy": "pyproxy", "upstream": "upstream kube-proxy"}

TOTAL = "kubeproxy_sync_proxy_rules_duration_seconds"
FULL = "kubeproxy_sync_full_proxy_rules_duration_seconds"
PARTIAL = "kubeproxy_sync_partial_proxy_rules_duration_seconds"
NPL = "kubeproxy_network_programming_duration_seconds"
LAST = "kubeproxy_sync_proxy_rules_last_timestamp_seconds"


class ProxyFailed(RuntimeError):
    """A proxy exited, or did not get where we waited for it; the message says what its log said."""


# --- the network namespace ----------------------------------------------------------------------

def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise procs.UpError(f"`{' '.join(argv)}` failed: {proc.stderr.strip()}")
    return proc


def in_netns(*argv: str) -> list[str]:
    return ["nsenter", f"--net=/run/netns/{NETNS}", "--", *argv]


def netns_ip(cluster) -> str:
    return str(cluster.node_network.network_address + HOST_INDEX)


def make_netns(cluster) -> None:
    """A fresh namespace on the host bridge: eth0 with the bench's address, lo, IPv4 only."""
    remove_netns()
    sh("ip", "netns", "add", NETNS)
    # IPv4 only, as pyproxy: the upstream kube-proxy then runs single-stack (it checks
    # net.ipv6.conf.all.disable_ipv6) instead of syncing an IPv6 proxier beside. Per namespace.
    for key in ("all", "default"):
        sh(*in_netns("sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1"))
    sh("ip", "link", "add", HOST_VETH, "type", "veth", "peer", "name", "eth0", "netns", NETNS)
    sh("ip", "link", "set", HOST_VETH, "master", cluster.bridge, "up")
    sh("ip", "-n", NETNS, "link", "set", "lo", "up")
    sh("ip", "-n", NETNS, "addr", "add", f"{netns_ip(cluster)}/{cluster.node_network.prefixlen}", "dev", "eth0")
    sh("ip", "-n", NETNS, "link", "set", "eth0", "up")


def remove_netns() -> None:
    """Delete the namespace (its tables go with it); first stop what still runs in it (our proxies only)."""
    procs.kill_and_wait(network.pids_in(NETNS), grace=5)
    if network.netns_exists(NETNS):
        sh("ip", "netns", "delete", NETNS, check=False)
    if sh("ip", "link", "show", "dev", HOST_VETH, check=False).returncode == 0:
        sh("ip", "link", "delete", HOST_VETH, check=False)


# --- the API objects ----------------------------------------------------------------------------

def endpoint_address(n: int) -> str:
    return str(ENDPOINTS.network_address + 1 + n % (ENDPOINTS.num_addresses - 2))


def service(i: int) -> Service:
    node_port = i % NODEPORT_EVERY == 0
    return Service(
        metadata=ObjectMeta(name=f"svc-{i:05d}", namespace=NAMESPACE),
        spec=ServiceSpec(type="NodePort" if node_port else "ClusterIP",
                         ports=[ServicePort(name="http", port=80, targetPort=8080, protocol="TCP")]))


def endpoint_slice(i: int) -> EndpointSlice:
    return EndpointSlice(
        metadata=ObjectMeta(name=f"svc-{i:05d}-bench", namespace=NAMESPACE, labels={
            "kubernetes.io/service-name": f"svc-{i:05d}", "endpointslice.kubernetes.io/managed-by": MANAGED_BY}),
        addressType="IPv4",
        endpoints=[Endpoint(addresses=[endpoint_address(i * ENDPOINTS_PER_SERVICE + j)],
                            conditions=EndpointConditions(ready=True, serving=True, terminating=False))
                   for j in range(ENDPOINTS_PER_SERVICE)],
        ports=[EndpointPort(name="http", port=8080, protocol="TCP")])


async def create_objects(config, start: int, stop: int) -> None:
    """Services start..stop-1 and their EndpointSlices, CREATES_IN_FLIGHT calls at a time."""
    client = AsyncClient(config=config, field_manager=MANAGED_BY)
    slots = asyncio.Semaphore(CREATES_IN_FLIGHT)

    async def one(i: int) -> None:
        async with slots:
            await client.create(service(i))
            await client.create(endpoint_slice(i))

    try:
        await asyncio.gather(*(one(i) for i in range(start, stop)))
    finally:
        await client.close()


def namespace_phase(client) -> str | None:
    try:
        return client.get(Namespace, NAMESPACE).status.phase
    except ApiError as err:
        if err.status.code == 404:
            return None
        raise


def delete_namespace(client, timeout: float = 1200) -> float:
    """Delete the bench's namespace and wait until it is gone; the seconds it took."""
    start = time.monotonic()
    try:
        client.delete(Namespace, NAMESPACE)
    except ApiError as err:
        if err.status.code != 404:
            raise
    last_note = start
    while namespace_phase(client) is not None:
        now = time.monotonic()
        if now - start > timeout:
            raise procs.UpError(f"namespace {NAMESPACE} still there {timeout:.0f}s after the delete")
        if now - last_note > 30:
            log(f"namespace {NAMESPACE} still terminating after {now - start:.0f}s")
            last_note = now
        time.sleep(1)
    return time.monotonic() - start


def create_node(client, cluster) -> None:
    """A Node for the proxies' hostnameOverride, so that neither waits 30 s for it (see bench/README.md).

    No kubelet ever reports for it; it is unschedulable and tainted so that no one's pod lands on it.
    """
    delete_node(client)
    client.create(Node(
        metadata=ObjectMeta(name=NODE_NAME, labels={"pynode.dev/bench": "proxy-sync"}),
        spec=NodeSpec(unschedulable=True, taints=[
            Taint(key="pynode.dev/bench", value="proxy-sync", effect="NoSchedule"),
            Taint(key="pynode.dev/bench", value="proxy-sync", effect="NoExecute")]),
        status=NodeStatus(addresses=[NodeAddress(type="InternalIP", address=netns_ip(cluster)),
                                     NodeAddress(type="Hostname", address=NODE_NAME)])))


def delete_node(client) -> None:
    try:
        client.delete(Node, NODE_NAME)
    except ApiError as err:
        if err.status.code != 404:
            raise


def change_endpoint(client, i: int, rng: random.Random) -> None:
    """Replace one endpoint address of service i's EndpointSlice; stamp the trigger time."""
    name = f"svc-{i:05d}-bench"
    current = client.get(EndpointSlice, name, namespace=NAMESPACE)
    taken = {a for e in current.endpoints for a in e.addresses}
    new = endpoint_address(rng.randrange(ENDPOINTS.num_addresses))
    while new in taken:
        new = endpoint_address(rng.randrange(ENDPOINTS.num_addresses))
    ready = {"ready": True, "serving": True, "terminating": False}
    endpoints = [{"addresses": list(e.addresses), "conditions": ready} for e in current.endpoints]
    endpoints[0]["addresses"] = [new]
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    client.patch(EndpointSlice, name, {"metadata": {"annotations": {TRIGGER: now}}, "endpoints": endpoints},
                 namespace=NAMESPACE, patch_type=PatchType.MERGE)


# --- metrics ------------------------------------------------------------------------------------

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


class Metrics(dict):
    """One scrape: (name, ip_family label or "") -> value, for the series without other labels that matter."""

    def get_value(self, name: str) -> float | None:
        return self.get((name, "IPv4"), self.get((name, "")))

    def histogram(self, name: str) -> tuple[float, int] | None:
        """(_sum, _count) of a histogram's IPv4 series, or None if it has none."""
        total, count = self.get_value(f"{name}_sum"), self.get_value(f"{name}_count")
        return None if count is None else (total or 0.0, int(count))


def scrape(url: str, timeout: float = 10) -> Metrics:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        text = response.read().decode()
    out = Metrics()
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        if not match or not match.group(1).startswith("kubeproxy_"):
            continue
        labels = dict(LABEL.findall(match.group(2) or ""))
        if "le" in labels:
            continue
        try:
            out[(match.group(1), labels.get("ip_family", ""))] = float(match.group(3))
        except ValueError:
            continue
    return out


def delta(after: Metrics, before: Metrics, name: str) -> tuple[float, int]:
    a, b = after.histogram(name) or (0.0, 0), before.histogram(name) or (0.0, 0)
    return a[0] - b[0], a[1] - b[1]


# --- one proxy, one mode, one size --------------------------------------------------------------

@dataclasses.dataclass
class Run:
    proxy: str
    mode: str
    size: int
    full_s: float | None = None  # the first full sync's duration
    full_source: str = FULL
    first_sync_s: float | None = None  # process start -> end of the first sync
    change_sync_s: list[float] = dataclasses.field(default_factory=list)
    change_source: str = PARTIAL
    change_npl_s: list[float] = dataclasses.field(default_factory=list)
    hwm_mib: float | None = None
    kernel: str = ""  # what it left in the kernel: chains / rules (/ set and map elements)
    busy_pct: float | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    failure: str = ""
    log_path: Path | None = None
    code: str = ""  # pynode's `git describe` when the proxy started (pyproxy imports the tree as of then)


def configuration(cluster, mode: str) -> dict:
    """The KubeProxyConfiguration both proxies get."""
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(cluster.kubeconfig("kube-proxy"))},
        "mode": mode,
        "clusterCIDR": str(cluster.pod_cidr),
        "hostnameOverride": NODE_NAME,
        "bindAddress": netns_ip(cluster),
        "metricsBindAddress": f"0.0.0.0:{METRICS_PORT}",  # in the bench's own network namespace
        "healthzBindAddress": "0.0.0.0:10256",
        # maxPerCore 0 and 0s timeouts: the upstream kube-proxy leaves the conntrack sysctls alone
        # (nf_conntrack_max is host-wide); pyproxy never writes them.
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
    }


def argv_of(cluster, proxy: str, config: Path) -> list[str]:
    if proxy == "pyproxy":
        return [str(settings.REPO / ".venv" / "bin" / "pyproxy"), f"--config={config}"]
    return [str(cluster.bin / "kube-proxy"), f"--config={config}"]


class Process:
    """A proxy started in the bench's network namespace, logging to WORK/<name>.log."""

    def __init__(self, cluster, proxy: str, mode: str, name: str):
        config = WORK / f"{name}.yaml"
        config.write_text(yaml.safe_dump(configuration(cluster, mode), sort_keys=False))
        self.log_path = WORK / f"{name}.log"
        with open(self.log_path, "wb") as out:
            self.popen = subprocess.Popen(in_netns(*argv_of(cluster, proxy, config)), stdin=subprocess.DEVNULL,
                                          stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.popen.pid  # nsenter execs the proxy
        self.started = started_at(self.pid)

    def check(self, when: str) -> None:
        code = self.popen.poll()
        if code is not None:
            raise ProxyFailed(f"exited with status {code} {when}; the end of {self.log_path}:\n"
                              + "\n".join(self.tail()))

    def tail(self, n: int = 15) -> list[str]:
        return [line[:400] for line in self.log_path.read_text(errors="replace").splitlines()[-n:]]

    def hwm_mib(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / MIB
        raise ProxyFailed("no VmHWM in /proc/<pid>/status")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def wait_metrics(proc: Process, url: str, until, timeout: float, what: str, interval: float = 0.2) -> Metrics:
    """Scrape until `until(metrics)`; fail if the proxy exits or `timeout` passes without `what`."""
    deadline = time.monotonic() + timeout
    while True:
        proc.check(f"while waiting for {what}")
        try:
            m = scrape(url)
            if until(m):
                return m
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise ProxyFailed(f"no {what} after {timeout:.0f}s; the end of {proc.log_path}:\n" + "\n".join(proc.tail()))
        time.sleep(interval)


def total_count(m: Metrics) -> int:
    return (m.histogram(TOTAL) or (0, 0))[1]


def measure_change(client, proc: Process, url: str, run: Run, i: int, rng: random.Random, timeout: float) -> None:
    """Patch one EndpointSlice; the duration of the sync that applied it, and the network programming latency."""
    before = scrape(url)
    npl0 = (before.histogram(NPL) or (0.0, 0))[1]
    change_endpoint(client, i, rng)
    # Poll until a sync has run with the change's network programming latency observed; take that
    # sync's duration from the step in which the sync count moved (upstream observes the latency
    # inside the sync and the duration when it returns, pyproxy the duration first, then the latency).
    prev, step = before, None
    deadline = time.monotonic() + timeout
    while step is None:
        proc.check("while applying an endpoint change")
        if time.monotonic() > deadline:
            raise ProxyFailed(f"no sync with a network programming latency {timeout:.0f}s after an endpoint "
                              f"change; the end of {proc.log_path}:\n" + "\n".join(proc.tail()))
        time.sleep(0.05)
        try:
            now = scrape(url)
        except OSError:
            continue
        npl_seen = (now.histogram(NPL) or (0.0, 0))[1] > npl0
        if total_count(now) > total_count(prev) and npl_seen:
            step = (prev, now)
        prev = now
    time.sleep(0.3)
    after = scrape(url)  # upstream observes the latency before the sync's duration: let both settle
    a, b = step
    value, n = delta(b, a, PARTIAL)
    if delta(b, a, FULL)[1] >= 1:
        run.notes.append("a full sync ran in the step of an endpoint change's sync; took the mean of all syncs there")
        n = 0
    if n < 1:  # a full sync, or a proxy without the partial-sync histogram
        run.change_source = TOTAL
        value, n = delta(b, a, TOTAL)
    if n > 1:
        run.notes.append(f"{n} syncs between two scrapes 50 ms apart for one change; took their mean")
    run.change_sync_s.append(value / n)
    npl_sum, npl_n = delta(after, before, NPL)
    if npl_n > 1:
        run.notes.append(f"{npl_n} network programming latencies observed for one change (others' endpoint "
                         "changes meanwhile); took their mean")
    run.change_npl_s.append(npl_sum / npl_n)


def kernel_objects(mode: str) -> str:
    """What the proxy put in the kernel: iptables chains and rules, or nftables chains, rules and elements."""
    if mode == "iptables":
        out = sh(*in_netns("iptables-save"), check=False).stdout.splitlines()
        chains = sum(1 for line in out if line.startswith(":"))
        rules = sum(1 for line in out if line.startswith("-A "))
        return f"{chains} chains, {rules} rules"
    out = sh(*in_netns("nft", "-j", "list", "ruleset"), check=False).stdout
    try:
        items = json.loads(out)["nftables"]
    except (ValueError, KeyError):
        return "n/a"
    chains = sum(1 for x in items if "chain" in x)
    rules = sum(1 for x in items if "rule" in x)
    elements = sum(len(x[k].get("elem", [])) for x in items for k in ("set", "map") if k in x)
    return f"{chains} chains, {rules} rules, {elements} set/map elements"


def run_proxy(cluster, client, proxy: str, mode: str, size: int, changes: int) -> Run:
    run = Run(proxy, mode, size)
    make_netns(cluster)
    url = f"http://{netns_ip(cluster)}:{METRICS_PORT}/metrics"
    name = f"{proxy}-{mode}-{size}"
    log(f"{LABELS[proxy]}, {mode}, {size} services: starting")
    if proxy == "pyproxy":
        run.code = describe()
    psutil.cpu_percent()
    proc = Process(cluster, proxy, mode, name)
    run.log_path = proc.log_path
    try:
        first = wait_metrics(proc, url, lambda m: total_count(m) >= 1, 300 + 0.1 * size, "its first sync", 0.1)
        last = first.get_value(LAST)  # set inside the sync; upstream observes the histograms as it returns
        full = first.histogram(FULL)
        if full is None:
            time.sleep(0.3)
            full = scrape(url).histogram(FULL)
        if full is not None and full[1] >= 1:
            run.full_s = full[0] / full[1]
            if full[1] > 1:
                run.notes.append(f"{full[1]} full syncs by the first scrape after the first sync; took their mean")
        else:
            run.full_source = TOTAL
            total = first.histogram(TOTAL)
            run.full_s = total[0] / total[1]
        if total_count(first) > 1:
            took = (f" (they took {first.histogram(TOTAL)[0] - full[0]:.3f} s together)"
                    if full is not None and full[1] == 1 else "")
            run.notes.append(f"{total_count(first)} syncs by the first scrape after the first sync (scrapes 100 ms "
                             f"apart): start → first sync done is to the end of the last of them{took}")
        run.first_sync_s = last - proc.started if last else None
        log(f"  first sync {run.full_s:.3f}s, done {run.first_sync_s:.1f}s after start")
        # Let any sync that follows the first (changes that came in meanwhile) go by.
        settle = time.monotonic()
        count = total_count(first)
        while time.monotonic() - settle < 3:
            time.sleep(0.5)
            now = total_count(wait_metrics(proc, url, lambda m: True, 60, "an answer on /metrics"))
            if now != count:
                count, settle = now, time.monotonic()
        rng = random.Random(f"{size}-{mode}")  # the same services and addresses for both proxies
        for i in rng.sample(range(size), changes):
            measure_change(client, proc, url, run, i, rng, timeout=60 + 0.02 * size)
            time.sleep(1.5)  # past min-sync-period (1 s), so the next change is not held back
        log(f"  endpoint change: sync {statistics.median(run.change_sync_s) * 1000:.1f} ms, network programming "
            f"{statistics.median(run.change_npl_s):.3f} s (medians of {changes})")
        run.hwm_mib = proc.hwm_mib()
        proc.check("before the end of its run")
        run.kernel = kernel_objects(mode)
    except (ProxyFailed, OSError) as err:  # OSError: its /metrics did not answer
        run.failure = str(err)
        log(f"  {LABELS[proxy]} failed: {err}")
    finally:
        proc.stop()
        run.busy_pct = psutil.cpu_percent()
        remove_netns()
    return run


def ipvs_check(cluster, proxy: str) -> str:
    """Start `proxy` in ipvs mode; what became of it, in a few words and its own error line."""
    make_netns(cluster)
    proc = Process(cluster, proxy, "ipvs", f"{proxy}-ipvs")
    try:
        try:
            code = proc.popen.wait(60)
        except subprocess.TimeoutExpired:
            return "still running after 60 s (not measured by this benchmark)"
        errors = [line for line in proc.log_path.read_text(errors="replace").splitlines()
                  if line[:1] in ("E", "F") or "error" in line.lower()]
        said = errors[-1] if errors else (proc.tail(1) or [""])[0]
        said = re.sub(r"^[EFWI]\d{4} [\d:.]+\s+\d+ [^]]+\] ", "", said)[:300]
        return f"exits {code}: `{said}`"
    finally:
        proc.stop()
        remove_netns()


# --- the report ---------------------------------------------------------------------------------

def cell(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else fmt.format(value)


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def spread(values: list[float], fmt: str) -> str:
    return f"{fmt.format(min(values))}–{fmt.format(max(values))}" if values else "n/a"


def table(pair: list[Run], changes: int) -> str:
    py, up = pair

    def row(title: str, values: list[float | None], fmt: str) -> str:
        a, b = values
        ratio = f"{a / b:.2f}×" if a is not None and b else ""
        return f"| {title} | {cell(a, fmt)} | {cell(b, fmt)} | {ratio} |"

    def text(title: str, values: list[str]) -> str:
        return f"| {title} | {values[0]} | {values[1]} | |"

    lines = [f"| {py.mode}, {py.size} services | pyproxy | upstream kube-proxy | pyproxy / upstream |",
             "| --- | ---: | ---: | ---: |",
             row("first full sync (s)", [r.full_s for r in pair], "{:.3f}"),
             row("start → first sync done (s)", [r.first_sync_s for r in pair], "{:.2f}"),
             row(f"endpoint change: sync (ms), median of {changes}",
                 [None if median(r.change_sync_s) is None else median(r.change_sync_s) * 1000 for r in pair],
                 "{:.1f}"),
             text("endpoint change: sync (ms), min–max", [spread([v * 1000 for v in r.change_sync_s], "{:.1f}")
                                                         for r in pair]),
             row(f"endpoint change: network programming latency (s), median of {changes}",
                 [median(r.change_npl_s) for r in pair], "{:.3f}"),
             text("endpoint change: network programming latency (s), min–max",
                  [spread(r.change_npl_s, "{:.3f}") for r in pair]),
             row("peak RSS, VmHWM (MiB)", [r.hwm_mib for r in pair], "{:.1f}"),
             text("in the kernel at the end", [r.kernel or "n/a" for r in pair]),
             text("machine CPUs busy during the run (%)", [cell(r.busy_pct, "{:.0f}") for r in pair])]
    return "\n".join(lines) + "\n"


def sources(run: Run) -> str:
    short = {FULL: "full-sync histogram", PARTIAL: "partial-sync histogram", TOTAL: "all-syncs histogram"}
    return f"first sync from the {short[run.full_source]}, changes from the {short[run.change_source]}"


def describe() -> str:
    """pynode's commit, "-dirty" if src/ (what pyproxy runs) has uncommitted changes."""
    def git(*args: str) -> str:
        argv = ["git", "-C", str(settings.REPO), *args]
        return subprocess.run(argv, capture_output=True, text=True).stdout.strip()

    return (git("describe", "--always") or "?") + ("-dirty" if git("status", "--porcelain", "--", "src") else "")


def facts(cluster, runs: list[Run]) -> dict[str, str]:
    def output(*argv: str) -> str:
        proc = subprocess.run(argv, capture_output=True, text=True)
        return (proc.stdout or proc.stderr).strip().splitlines()[0] if (proc.stdout or proc.stderr) else "?"

    return {
        "nproc": str(os.cpu_count()),
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "kernel": platform.release(),
        "Kubernetes": f"{cluster.version} (upstream kube-proxy: "
                      f"{output(str(cluster.bin / 'kube-proxy'), '--version')})",
        "python": output(str(settings.REPO / ".venv" / "bin" / "python"), "--version"),
        "iptables": output("iptables", "-V"),
        "nft": output("nft", "-v"),
        "pynode (pyproxy's code)": ", ".join(
            f"{code} ({', '.join(f'{r.mode} {r.size}' for r in runs if r.code == code)})"
            for code in dict.fromkeys(r.code for r in runs if r.code)) or describe(),
    }


def report(args, runs: list[Run], ipvs: dict[str, str], tables: str, machine: dict[str, str], wall_s: float,
           create_s: dict[int, float]) -> str:
    notes = []
    for r in runs:
        bits = (["failed (below)"] if r.failure else [sources(r)]) + list(dict.fromkeys(r.notes))
        notes.append(f"- {r.mode}, {r.size}, {LABELS[r.proxy]}: " + "; ".join(bits) + ".")
    failures = "".join(f"\n**{r.mode}, {r.size} services, {LABELS[r.proxy]}**:\n\n```\n{r.failure}\n```\n"
                       for r in runs if r.failure)
    created = ", ".join(f"{n} in {s:.0f} s" for n, s in create_s.items())
    return (
        "# Service proxy sync: pyproxy vs upstream kube-proxy\n\n"
        f"`python -m bench.proxy_sync --sizes {','.join(map(str, args.sizes))} --modes {','.join(args.modes)} "
        f"--changes {args.changes}`, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, "
        f"{wall_s / 60:.0f} min from start to the last measurement. N selector-less Services in namespace "
        f"`{NAMESPACE}` (ClusterIP, 1 in {NODEPORT_EVERY} NodePort, one TCP port), each with one EndpointSlice of "
        f"{ENDPOINTS_PER_SERVICE} ready endpoints; grown from one size to the next ({created}, "
        f"{CREATES_IN_FLIGHT} create calls in flight). For each size and mode, pyproxy "
        "and then the upstream kube-proxy ran alone, each in a fresh network namespace with the same "
        "KubeProxyConfiguration, against the same apiserver and objects (plus whatever other Services the cluster "
        "had).\n\n"
        + tables
        + f"\n| ipvs | pyproxy | upstream kube-proxy |\n| --- | --- | --- |\n"
          f"| cannot run on this kernel | {ipvs.get('pyproxy', 'n/a')} | {ipvs.get('upstream', 'n/a')} |\n"
        + "\nFirst full sync: `kubeproxy_sync_full_proxy_rules_duration_seconds` _sum/_count once _count ≥ 1 "
        "(where a proxy does not expose it, the first observation of `kubeproxy_sync_proxy_rules_duration_seconds`). "
        "Start → first sync done: `kubeproxy_sync_proxy_rules_last_timestamp_seconds` minus the process's start "
        "time (/proc, 10 ms); it includes start-up, the initial lists, and the clean-up of other modes' leftovers. "
        f"Endpoint change ({args.changes} times, a different Service each time, the same ones for both proxies): "
        "one EndpointSlice patched, one endpoint address replaced, "
        f"`{TRIGGER}` set to the time of the patch; the sync is the one whose _count step "
        "(scrapes 50 ms apart) came with the change's network programming latency, its duration the "
        "`kubeproxy_sync_partial_proxy_rules_duration_seconds` _sum delta over that step (or "
        "`kubeproxy_sync_proxy_rules_duration_seconds`'s where there is no partial one); the latency is the "
        "`kubeproxy_network_programming_duration_seconds` delta: patch → watch event → min-sync-period → rules "
        "written. Peak RSS: VmHWM of the proxy process at the end of its run (the iptables-restore / nft programs "
        "both run are not included). In the kernel: `iptables-save` or `nft -j list ruleset` in the namespace at "
        "the end, a check that both programmed comparable rule sets. Machine CPUs busy: everything on the "
        "2 CPUs during that proxy's run (others' tests may run on the same cluster).\n\n"
        + "Which histogram each figure came from, and anything odd:\n\n" + "\n".join(notes) + "\n"
        + (f"\n## What went wrong\n{failures}" if failures else "")
        + "\n| machine | |\n| --- | --- |\n" + "".join(f"| {k} | {v} |\n" for k, v in machine.items())
    )


# --- main ---------------------------------------------------------------------------------------

def leftovers(client) -> bool:
    try:
        client.get(Node, NODE_NAME)
        node = True
    except ApiError as err:
        if err.status.code != 404:
            raise
        node = False
    return node or namespace_phase(client) is not None or network.netns_exists(NETNS)


def cleanup(client) -> float | None:
    """Remove the network namespace, the bench's namespace (waiting until it is gone) and its Node."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # let the cleanup finish
    remove_netns()
    took = None
    try:
        log(f"deleting namespace {NAMESPACE} and waiting until it is gone")
        took = delete_namespace(client)
        log(f"namespace gone after {took:.0f}s")
    except Exception as err:  # noqa: BLE001 - the apiserver may be gone; say so and go on
        log(f"could not delete namespace {NAMESPACE}: {err}")
    try:
        delete_node(client)
    except Exception as err:  # noqa: BLE001
        log(f"could not delete Node {NODE_NAME}: {err}")
    return took


def run(cluster, client, args) -> str:
    start = time.monotonic()
    config = KubeConfig.from_file(str(cluster.admin_kubeconfig))
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    create_node(client, cluster)
    ipvs = {p: ipvs_check(cluster, p) for p in PROXIES}
    for p, said in ipvs.items():
        log(f"ipvs, {LABELS[p]}: {said}")
    client.create(Namespace(metadata=ObjectMeta(name=NAMESPACE)))
    have, runs, tables, create_s = 0, [], [], {}
    for size in args.sizes:
        log(f"creating services {have}..{size - 1} and their EndpointSlices")
        t0 = time.monotonic()
        asyncio.run(create_objects(config, have, size))
        create_s[size] = time.monotonic() - t0
        log(f"  {size - have} services and slices created in {create_s[size]:.1f}s")
        have = size
        for mode in args.modes:
            pair = [run_proxy(cluster, client, proxy, mode, size, args.changes) for proxy in PROXIES]
            runs += pair
            tables.append(table(pair, args.changes))
            print(tables[-1], flush=True)
    print(f"| ipvs | {ipvs['pyproxy']} | {ipvs['upstream']} |", flush=True)
    wall = time.monotonic() - start
    return report(args, runs, ipvs, "\n".join(tables), facts(cluster, runs), wall, create_s)


def sizes(text: str) -> list[int]:
    values = [int(part) for part in text.split(",")]
    if any(n < 10 for n in values) or values != sorted(set(values)):
        raise argparse.ArgumentTypeError("increasing service counts, each at least 10")
    return values


def modes(text: str) -> list[str]:
    values = text.split(",")
    if not values or any(m not in ("iptables", "nftables") for m in values):
        raise argparse.ArgumentTypeError("iptables and/or nftables (ipvs is always checked, once)")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.proxy_sync", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=sizes, default=[1000, 5000, 10000],
                        help="service counts, increasing (default 1000,5000,10000)")
    parser.add_argument("--modes", type=modes, default=["iptables", "nftables"],
                        help="proxy modes to measure (default iptables,nftables)")
    parser.add_argument("--changes", type=int, default=5, help="endpoint changes per run (default 5)")
    args = parser.parse_args(argv)

    cluster = settings.load()
    stopped = [name for name, ok in local.status(cluster).items() if not ok]
    if stopped:
        print(f"bench: the local cluster is not up ({', '.join(stopped)} not running); start it with `make up`",
              file=sys.stderr)
        return 1
    log("building the upstream kube-proxy (cached after the first time)")
    local.build_upstream(cluster, ["kube-proxy"])
    client = Client(config=KubeConfig.from_file(str(cluster.admin_kubeconfig)), field_manager=MANAGED_BY)
    interrupt_on_signals()
    if leftovers(client):
        log("removing what an earlier run left behind")
        cleanup(client)
        interrupt_on_signals()
    text = None
    try:
        text = run(cluster, client, args)
    except (procs.UpError, ApiError) as err:
        print(f"bench: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    finally:
        took = cleanup(client)
        if text is not None and took is not None:
            text += f"\nDeleting the namespace at the end took {took:.0f} s.\n"
    results = RESULTS / f"proxy_sync-{datetime.datetime.now(datetime.UTC):%Y-%m-%d}.md"
    results.parent.mkdir(exist_ok=True)
    results.write_text(text)
    log(f"written to {results.relative_to(settings.REPO)}; the proxies' logs are in {WORK}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
