"""Service proxy sync times and footprint, pyproxy vs upstream kube-proxy, side by side, in one run.

    python -m bench.proxy_sync [--sizes 1000,5000,10000] [--modes iptables,nftables] [--changes 5]
    python -m bench.proxy_sync --modes ipvs --vm pynode-w1 [--sizes 200] [--changes 2]

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

With --vm, both proxies run one at a time in that Vagrant worker instead (`make vagrant-up`; its kernel
has IP_VS, this host's has not), over ssh, as transient systemd units: the worker's own kube-proxy unit is
stopped for the run and started again at the end, and each proxy's `--cleanup` runs after it, so that
neither finds the other's state. Metrics are scraped from here at the worker's address; VmHWM, the log and
the kernel's state (`ipvsadm -Ln`, `ipset list -t`, `iptables-save`) are read in the worker. The report
goes to bench/results/proxy_sync-<UTC date>-<modes>-vm.md.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import hashlib
import ipaddress
import json
import os
import platform
import random
import re
import shlex
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
from localcluster import vagrant as vg

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
MODES = ("iptables", "nftables", "ipvs")
HOST_MODES = ("iptables", "nftables")  # this host's kernel has no IP_VS
VM_DIR = "/var/lib/pynode-bench-proxy"  # in the worker: configurations, logs, the upstream kube-proxy
VM_PYPROXY = "/opt/pynode/bin/pyproxy"  # the ansible pynode role's install, from the tree's wheelhouse
VM_PYTHON = "/opt/pynode/bin/python"  # that virtualenv's interpreter
VM_OWN_PROXY = "/usr/bin/kube-proxy"  # the worker's kube-proxy unit's program (a link to pyproxy)
VM_OWN_UNIT = "kube-proxy"
VM_UNIT_PREFIX = "pynode-bench-"  # the transient units the proxies run in
PACKAGE_SUMS = "find . -name '*.py' | LC_ALL=C sort | xargs sha256sum"  # a package's, for its digest
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


def create_node(client, address: str) -> None:
    """A Node for the proxies' hostnameOverride, so that neither waits 30 s for it (see bench/README.md).

    No kubelet ever reports for it; it is unschedulable and tainted so that no one's pod lands on it.
    """
    delete_node(client)
    client.create(Node(
        metadata=ObjectMeta(name=NODE_NAME, labels={"pynode.dev/bench": "proxy-sync"}),
        spec=NodeSpec(unschedulable=True, taints=[
            Taint(key="pynode.dev/bench", value="proxy-sync", effect="NoSchedule"),
            Taint(key="pynode.dev/bench", value="proxy-sync", effect="NoExecute")]),
        status=NodeStatus(addresses=[NodeAddress(type="InternalIP", address=address),
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


def configuration(cluster, mode: str, address: str, kubeconfig: str) -> dict:
    """The KubeProxyConfiguration both proxies get, where they run at `address` with `kubeconfig`."""
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": kubeconfig},
        "mode": mode,
        "clusterCIDR": str(cluster.pod_cidr),
        "hostnameOverride": NODE_NAME,
        "bindAddress": address,
        "metricsBindAddress": f"0.0.0.0:{METRICS_PORT}",  # the bench's network namespace, or the worker
        "healthzBindAddress": "0.0.0.0:10256",
        # maxPerCore 0 and 0s timeouts: the upstream kube-proxy leaves the conntrack sysctls alone
        # (nf_conntrack_max is host-wide); pyproxy never writes them.
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
    }


# --- where the proxies run: this host's network namespace, or a Vagrant worker ------------------

def proxy_argv(binary: str, config: str) -> list[str]:
    return [binary, f"--config={config}"]


class LocalProcess:
    """A proxy started in the bench's network namespace, logging to WORK/<name>.log."""

    def __init__(self, argv: list[str], name: str):
        self.log_path = WORK / f"{name}.log"
        with open(self.log_path, "wb") as out:
            self.popen = subprocess.Popen(in_netns(*argv), stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT, start_new_session=True)
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
        return vm_hwm_mib(Path(f"/proc/{self.pid}/status").read_text())

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


class LocalNetns:
    """Each proxy alone in a fresh network namespace of this host (pynode-bp), deleted after its run."""

    name = "this host"
    patience = 1.0  # how much longer than here a proxy may take to get somewhere
    clock = (0.0, 0.0)  # the proxy's clock minus this host's, and its uncertainty (s): the same clock

    def __init__(self, cluster):
        self.cluster = cluster
        self.address = netns_ip(cluster)
        self.kubeconfig = str(cluster.kubeconfig("kube-proxy"))
        self.binaries = {"pyproxy": str(settings.REPO / ".venv" / "bin" / "pyproxy"),
                         "upstream": str(cluster.bin / "kube-proxy")}

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass  # each run's namespace is gone after it; cleanup() removes a killed run's

    def before(self, proxy: str) -> None:
        make_netns(self.cluster)

    def after(self, proxy: str) -> None:
        remove_netns()  # the namespace's tables go with it

    def start(self, proxy: str, mode: str, name: str) -> LocalProcess:
        config = WORK / f"{name}.yaml"
        config.write_text(yaml.safe_dump(configuration(self.cluster, mode, self.address, self.kubeconfig),
                                         sort_keys=False))
        return LocalProcess(proxy_argv(self.binaries[proxy], str(config)), name)

    def output(self, *argv: str) -> str:
        return sh(*in_netns(*argv), check=False).stdout

    def facts(self) -> dict[str, str]:
        return {"iptables": first_line(["iptables", "-V"]), "nft": first_line(["nft", "-v"]),
                "python": first_line([str(settings.REPO / ".venv" / "bin" / "python"), "--version"])}

    def description(self) -> str:
        return "each in a fresh network namespace of this host"

    def results_name(self, day: str, modes: list[str]) -> str:
        return f"proxy_sync-{day}.md"


def first_line(argv: list[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True)
    text = (proc.stdout or proc.stderr).strip()
    return text.splitlines()[0] if text else "?"


def vm_hwm_mib(status: str) -> float:
    """VmHWM from the text of /proc/<pid>/status, in MiB."""
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / MIB
    raise ProxyFailed("no VmHWM in /proc/<pid>/status")


# The worker: commands over ssh (one multiplexed connection), the proxies as transient systemd units.

def worker_index(name: str) -> int:
    """pynode-w3 -> 3: the worker's number in the Vagrantfile's address plan."""
    match = re.fullmatch(re.escape(vg.NAME_PREFIX) + r"([1-9]\d*)", name)
    if not match or int(match.group(1)) > vg.MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"a Vagrant worker's name, {vg.worker_name(1)} to "
                                         f"{vg.worker_name(vg.MAX_WORKERS)}, not {name!r}")
    return int(match.group(1))


def ssh_argv(ssh_config: Path, host: str, script: str, control: Path, root: bool = True) -> list[str]:
    """ssh to `host` running `script` with sh (as root unless not `root`), over the master connection at
    `control` if there is one (a connection of its own otherwise)."""
    return ["ssh", "-F", str(ssh_config), "-o", "BatchMode=yes", "-o", "ConnectTimeout=30",
            "-o", "ControlMaster=no", "-o", f"ControlPath={control}", host,
            *(["sudo"] if root else []), "sh", "-c", shlex.quote(script)]


def ssh_master_argv(ssh_config: Path, host: str, control: Path) -> list[str]:
    """The master connection the others share (in the background, until `ssh -O exit`): an ssh round trip
    to a TCG guest costs a handshake otherwise."""
    return ["ssh", "-F", str(ssh_config), "-o", "BatchMode=yes", "-o", "ConnectTimeout=30",
            "-o", "ControlMaster=yes", "-o", f"ControlPath={control}", "-o", "ControlPersist=yes", "-N", "-f", host]


def unit_name(name: str) -> str:
    return VM_UNIT_PREFIX + name


def start_script(unit: str, argv: list[str], log_path: str) -> str:
    """Start `argv` as transient unit `unit` logging to `log_path`; print its pid, /proc/<pid>/stat,
    /proc/uptime, the clock and the clock tick, for its start time on the worker's clock."""
    return (f"systemctl stop {unit} 2>/dev/null; systemctl reset-failed {unit} 2>/dev/null; "
            f"systemd-run --quiet --unit={unit} --property=TimeoutStopSec=15 "
            f"--property=StandardOutput=truncate:{log_path} --property=StandardError=inherit -- {shlex.join(argv)} "
            f"&& pid=$(systemctl show --property=MainPID --value {unit}) && echo $pid && "
            f"cat /proc/$pid/stat /proc/uptime && date +%s.%N && getconf CLK_TCK")


def parse_start(output: str) -> tuple[int, float]:
    """The pid and wall-clock start (to a clock tick) from what start_script printed."""
    lines = output.strip().splitlines()
    if len(lines) != 5 or not lines[0].isdigit() or lines[0] == "0":
        raise ProxyFailed(f"did not start (or exited at once): {output.strip()[-400:]!r}")
    pid, stat, uptime, now, hz = lines
    ticks = int(stat.rsplit(")", 1)[1].split()[19])
    return int(pid), float(now) - float(uptime.split()[0]) + ticks / int(hz)


def unit_state(output: str) -> dict[str, str]:
    """`systemctl show --property=A,B` output as {A: ..., B: ...}."""
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)


def ipvs_counts(listing: str) -> tuple[int, int]:
    """Virtual servers and real servers in `ipvsadm -Ln` output."""
    virtual = sum(1 for line in listing.splitlines() if line.startswith(("TCP ", "UDP ", "SCTP ", "FWM ")))
    real = sum(1 for line in listing.splitlines()
               if line.lstrip().startswith("->") and not line.lstrip()[2:].lstrip().startswith("RemoteAddress"))
    return virtual, real


def ipset_counts(listing: str) -> tuple[int, int]:
    """Sets and their entries in `ipset list -t` output (the headers; "Number of entries" each)."""
    sets = sum(1 for line in listing.splitlines() if line.startswith("Name:"))
    entries = sum(int(line.split(":", 1)[1]) for line in listing.splitlines()
                  if line.startswith("Number of entries:"))
    return sets, entries


def iptables_counts(save: str) -> tuple[int, int]:
    """Chains and rules in `iptables-save` output."""
    lines = save.splitlines()
    return sum(1 for line in lines if line.startswith(":")), sum(1 for line in lines if line.startswith("-A "))


def clock_offset(samples: list[tuple[float, float, float]]) -> tuple[float, float]:
    """The worker's clock minus this host's, and its uncertainty, from (host before, worker, host after)
    readings: the one with the shortest round trip, its worker reading against the round trip's middle."""
    before, remote, after = min(samples, key=lambda s: s[2] - s[0])
    return remote - (before + after) / 2, (after - before) / 2


class RemoteProcess:
    """A proxy running as a transient unit in the worker; its log is fetched to WORK/<name>.log at the end."""

    CHECK_EVERY = 2.0  # s between asking systemd whether it still runs (each ask is an ssh round trip)

    def __init__(self, vm: "VMWorker", argv: list[str], name: str):
        self.vm, self.unit = vm, unit_name(name)
        self.remote_log = f"{VM_DIR}/{name}.log"
        self.log_path = WORK / f"{name}.log"
        self.pid, self.started = parse_start(vm.run(start_script(self.unit, argv, self.remote_log)).stdout)
        self.checked = time.monotonic()

    def check(self, when: str) -> None:
        if time.monotonic() - self.checked < self.CHECK_EVERY:
            return
        self.checked = time.monotonic()
        state = unit_state(self.vm.run(f"systemctl show --property=ActiveState,ExecMainStatus {self.unit}",
                                       check=False).stdout)
        if state.get("ActiveState") not in ("active", "activating", "reloading"):
            raise ProxyFailed(f"exited with status {state.get('ExecMainStatus', '?')} {when} "
                              f"({state.get('ActiveState', '?')}); the end of {self.vm.host}:{self.remote_log}:\n"
                              + "\n".join(self.tail()))

    def tail(self, n: int = 15) -> list[str]:
        text = self.vm.run(f"tail -n {n} {self.remote_log}", check=False).stdout
        return [line[:400] for line in text.splitlines()]

    def hwm_mib(self) -> float:
        return vm_hwm_mib(self.vm.run(f"cat /proc/{self.pid}/status").stdout)

    def stop(self) -> None:
        self.vm.run(f"systemctl stop {self.unit}; systemctl reset-failed {self.unit} 2>/dev/null; true",
                    check=False, timeout=60)
        self.log_path.write_text(self.vm.run(f"cat {self.remote_log}", check=False).stdout)


class VMWorker:
    """Each proxy alone in a Vagrant worker (`make vagrant-up`), its own kube-proxy unit stopped meanwhile."""

    patience = 4.0  # QEMU's software emulation here

    def __init__(self, cluster, name: str):
        self.cluster, self.host = cluster, name
        self.address = vg.worker_ip(cluster, worker_index(name))
        self.kubeconfig = "/var/lib/kube-proxy/kubeconfig.conf"  # the worker's own (its node's identity)
        self.binaries = {"pyproxy": VM_PYPROXY, "upstream": f"{VM_DIR}/kube-proxy"}
        self.ssh_config = WORK / "ssh_config"
        self.control = WORK / "ssh-control"
        self.own_unit_stopped = False
        self.ipv6: dict[str, str] = {}
        self.offsets: list[str] = []
        self.clock = (0.0, 0.0)

    def run(self, script: str, check: bool = True, timeout: float = 300, stdin: bytes | None = None,
            root: bool = True) -> subprocess.CompletedProcess:
        argv = ssh_argv(self.ssh_config, self.host, script, self.control, root)
        proc = subprocess.run(argv, input=stdin if stdin is not None else b"", capture_output=True,
                              timeout=timeout)
        result = subprocess.CompletedProcess(argv, proc.returncode, proc.stdout.decode(errors="replace"),
                                             proc.stderr.decode(errors="replace"))
        if check and proc.returncode != 0:
            raise procs.UpError(f"{self.host}: `{script[:200]}` failed ({proc.returncode}): "
                                f"{result.stderr.strip()[-600:]}")
        return result

    def open(self) -> None:
        """ssh, the tools, the upstream kube-proxy copied in, IPv4 only, the worker's kube-proxy stopped and
        its state cleaned up."""
        self.ssh_config.write_text(vg.vagrant("ssh-config", self.host, env={
            "PYNODE_WORKERS": str(worker_index(self.host))}).stdout)
        subprocess.run(ssh_master_argv(self.ssh_config, self.host, self.control), stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
        self.run("command -v ipvsadm >/dev/null && command -v ipset >/dev/null || "
                 "apt-get install -y -qq --no-install-recommends ipvsadm ipset >/dev/null")
        self.copy_upstream()
        keys = ("net.ipv6.conf.all.disable_ipv6", "net.ipv6.conf.default.disable_ipv6")
        values = self.run(f"sysctl -n {' '.join(keys)}").stdout.split()
        self.ipv6 = dict(zip(keys, values))
        # As in the bench's namespace: the upstream kube-proxy then runs single-stack, like pyproxy.
        self.run(f"sysctl -qw {' '.join(f'{k}=1' for k in keys)}")
        self.own_unit_stopped = True
        self.run(f"systemctl stop {VM_OWN_UNIT} && {VM_OWN_PROXY} --cleanup", timeout=600)

    def copy_upstream(self) -> None:
        local_binary = self.cluster.bin / "kube-proxy"
        digest = hashlib.sha256(local_binary.read_bytes()).hexdigest()
        target = self.binaries["upstream"]
        if self.run(f"sha256sum {target} 2>/dev/null", check=False).stdout.split()[:1] == [digest]:
            return
        log(f"copying {local_binary} to {self.host}:{target}")
        self.run(f"mkdir -p {VM_DIR} && cat > {target}.new && chmod 755 {target}.new && mv {target}.new {target}",
                 stdin=local_binary.read_bytes(), timeout=900)

    def close(self) -> None:
        """The worker as it was: its kube-proxy unit started, its IPv6 settings back; the ssh master closed."""
        try:
            if self.own_unit_stopped:
                self.run(f"systemctl start {VM_OWN_UNIT}", check=False, timeout=120)
                self.own_unit_stopped = False
            if self.ipv6:
                self.run(f"sysctl -qw {' '.join(f'{k}={v}' for k, v in self.ipv6.items())}", check=False)
                self.ipv6 = {}
        except (OSError, subprocess.TimeoutExpired) as err:
            log(f"could not restore {self.host}: {err}")
        if self.ssh_config.exists():
            subprocess.run(["ssh", "-F", str(self.ssh_config), "-o", f"ControlPath={self.control}", "-O", "exit",
                            self.host], capture_output=True, timeout=30)

    def before(self, proxy: str) -> None:
        """The worker's clock against this host's (no sudo: the shortest round trip), for the latencies."""
        samples = []
        for _ in range(8):
            t0 = time.time()
            remote = float(self.run("date +%s.%N", root=False).stdout)
            samples.append((t0, remote, time.time()))
        self.clock = clock_offset(samples)
        offset, error = self.clock
        self.offsets.append(f"{offset * 1000:+.0f} ms (±{error * 1000:.0f})")
        log(f"  {self.host}'s clock minus this host's: {self.offsets[-1]}")

    def after(self, proxy: str) -> None:
        cleanup = self.run(f"{self.binaries[proxy]} --cleanup", check=False, timeout=900)
        if cleanup.returncode != 0:
            log(f"  {proxy} --cleanup exited {cleanup.returncode}: {cleanup.stderr.strip()[-300:]}")

    def start(self, proxy: str, mode: str, name: str) -> RemoteProcess:
        config = configuration(self.cluster, mode, self.address, self.kubeconfig)
        text = yaml.safe_dump(config, sort_keys=False)
        (WORK / f"{name}.yaml").write_text(text)
        remote = f"{VM_DIR}/{name}.yaml"
        self.run(f"mkdir -p {VM_DIR} && cat > {remote}", stdin=text.encode())
        return RemoteProcess(self, proxy_argv(self.binaries[proxy], remote), name)

    def output(self, *argv: str) -> str:
        return self.run(shlex.join(argv), check=False, timeout=600).stdout

    def pyproxy_digest(self) -> str:
        """A digest of the worker's installed pyproxy package (its .py files), as tree_digest makes."""
        script = (f"cd \"$({VM_PYTHON} -c "
                  "'import os, pyproxy; print(os.path.dirname(pyproxy.__file__))')\" && " + PACKAGE_SUMS)
        return hashlib.sha256(self.run(script).stdout.encode()).hexdigest()[:12]

    def facts(self) -> dict[str, str]:
        script = ("uname -r; nproc; awk '/MemTotal/ {print $2}' /proc/meminfo; ipvsadm --version; "
                  "ipset --version; " + f"{VM_PYTHON} --version; iptables -V")
        lines = (self.run(script, check=False).stdout.splitlines() + ["?"] * 7)[:7]
        kernel, cpus, mem_kib, ipvsadm, ipset, python, iptables = lines
        tree, installed = tree_digest(), self.pyproxy_digest()
        return {
            "VM": f"{self.host} ({self.address}), QEMU software emulation (TCG), {cpus} vCPUs, "
                  f"{int(mem_kib) / 2**20:.1f} GiB" if mem_kib.isdigit() else self.host,
            "VM kernel": kernel,
            "VM tools": f"{ipvsadm}; {ipset}; {iptables}",
            "python (VM)": python,
            "pyproxy in the VM": f"{VM_PYPROXY}, package digest {installed}: "
                                 + ("the same as this tree's src/pyproxy" if installed == tree
                                    else f"NOT this tree's src/pyproxy ({tree})"),
            "VM clock minus this host's, before each run": "; ".join(self.offsets) or "n/a",
        }

    def description(self) -> str:
        return (f"each as a transient systemd unit in the Vagrant worker {self.host} (QEMU software emulation), "
                "its own kube-proxy unit stopped, and each proxy's own `--cleanup` after its run")

    def results_name(self, day: str, modes: list[str]) -> str:
        return f"proxy_sync-{day}-{'-'.join(modes)}-vm.md"


def tree_digest() -> str:
    """A digest of this tree's src/pyproxy .py files, as the worker's is made (sha256sum lines, sorted)."""
    root = settings.REPO / "src" / "pyproxy"
    lines = "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  ./{p.relative_to(root)}\n"
                    for p in sorted(root.rglob("*.py"), key=lambda p: str(p.relative_to(root)).encode()))
    return hashlib.sha256(lines.encode()).hexdigest()[:12]


def wait_metrics(proc: LocalProcess | RemoteProcess, url: str, until, timeout: float, what: str, interval: float = 0.2) -> Metrics:
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


def measure_change(client, proc: LocalProcess | RemoteProcess, url: str, run: Run, i: int, rng: random.Random, timeout: float) -> None:
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


def kernel_objects(output, mode: str) -> str:
    """What the proxy put in the kernel, read with `output(*argv)` where it ran: iptables chains and rules;
    nftables chains, rules and elements; or IPVS virtual and real servers, ipsets and their entries, and the
    iptables rules beside them."""
    if mode == "iptables":
        return "{} chains, {} rules".format(*iptables_counts(output("iptables-save")))
    if mode == "ipvs":
        virtual, real = ipvs_counts(output("ipvsadm", "-Ln"))
        sets, entries = ipset_counts(output("ipset", "list", "-t"))
        chains, rules = iptables_counts(output("iptables-save"))
        return (f"{virtual} virtual servers, {real} real servers; {sets} ipsets, {entries} entries; "
                f"{chains} iptables chains, {rules} rules")
    out = output("nft", "-j", "list", "ruleset")
    try:
        items = json.loads(out)["nftables"]
    except (ValueError, KeyError):
        return "n/a"
    chains = sum(1 for x in items if "chain" in x)
    rules = sum(1 for x in items if "rule" in x)
    elements = sum(len(x[k].get("elem", [])) for x in items for k in ("set", "map") if k in x)
    return f"{chains} chains, {rules} rules, {elements} set/map elements"


def run_proxy(site: LocalNetns | VMWorker, client, proxy: str, mode: str, size: int, changes: int) -> Run:
    run = Run(proxy, mode, size)
    site.before(proxy)
    url = f"http://{site.address}:{METRICS_PORT}/metrics"
    name = f"{proxy}-{mode}-{size}"
    log(f"{LABELS[proxy]}, {mode}, {size} services: starting")
    if proxy == "pyproxy":
        run.code = describe()
    psutil.cpu_percent()
    try:
        proc = site.start(proxy, mode, name)
    except (ProxyFailed, procs.UpError) as err:
        run.failure = str(err)
        log(f"  {LABELS[proxy]} failed to start: {err}")
        site.after(proxy)
        return run
    run.log_path = proc.log_path
    patience = site.patience
    try:
        first = wait_metrics(proc, url, lambda m: total_count(m) >= 1, (300 + 0.1 * size) * patience,
                             "its first sync", 0.1)
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
            now = total_count(wait_metrics(proc, url, lambda m: True, 60 * patience, "an answer on /metrics"))
            if now != count:
                count, settle = now, time.monotonic()
        rng = random.Random(f"{size}-{mode}")  # the same services and addresses for both proxies
        for i in rng.sample(range(size), changes):
            measure_change(client, proc, url, run, i, rng, timeout=(60 + 0.02 * size) * patience)
            time.sleep(1.5)  # past min-sync-period (1 s), so the next change is not held back
        offset, error = site.clock
        if offset or error:
            run.change_npl_s = [v - offset for v in run.change_npl_s]
            run.notes.append(f"network programming latencies less the proxy's clock offset to this host's, "
                             f"{offset * 1000:+.0f} ms (±{error * 1000:.0f}): the trigger time is this host's clock")
        log(f"  endpoint change: sync {statistics.median(run.change_sync_s) * 1000:.1f} ms, network programming "
            f"{statistics.median(run.change_npl_s):.3f} s (medians of {changes})")
        run.hwm_mib = proc.hwm_mib()
        proc.check("before the end of its run")
        run.kernel = kernel_objects(site.output, mode)
    except (ProxyFailed, OSError, procs.UpError) as err:  # OSError: its /metrics did not answer
        run.failure = str(err)
        log(f"  {LABELS[proxy]} failed: {err}")
    finally:
        proc.stop()
        run.busy_pct = psutil.cpu_percent()
        site.after(proxy)
    return run


def ipvs_check(site: LocalNetns, proxy: str) -> str:
    """Start `proxy` in ipvs mode here; what became of it, in a few words and its own error line."""
    site.before(proxy)
    proc = site.start(proxy, "ipvs", f"{proxy}-ipvs")
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
        site.after(proxy)


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


def facts(cluster, runs: list[Run], site: LocalNetns | VMWorker) -> dict[str, str]:
    return {
        "nproc": str(os.cpu_count()),
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "kernel": platform.release(),
        "Kubernetes": f"{cluster.version} (upstream kube-proxy: "
                      f"{first_line([str(cluster.bin / 'kube-proxy'), '--version'])})",
        **site.facts(),
        "pynode (pyproxy's code)": ", ".join(
            f"{code} ({', '.join(f'{r.mode} {r.size}' for r in runs if r.code == code)})"
            for code in dict.fromkeys(r.code for r in runs if r.code)) or describe(),
    }


def ipvs_table(ipvs: dict[str, str]) -> str:
    """The row that says why neither proxy runs in the ipvs mode here (empty when ipvs was not checked)."""
    if not ipvs:
        return ""
    return ("\n| ipvs | pyproxy | upstream kube-proxy |\n| --- | --- | --- |\n"
            f"| cannot run on this kernel | {ipvs.get('pyproxy', 'n/a')} | {ipvs.get('upstream', 'n/a')} |\n")


KERNEL_NOTE = ("In the kernel: `iptables-save` or `nft -j list ruleset` at the end (ipvs: `ipvsadm -Ln` virtual "
               "and real servers, `ipset list -t` sets and entries, and `iptables-save` beside them), a check that "
               "both programmed comparable rule sets.")


def report(args, runs: list[Run], ipvs: dict[str, str], tables: str, machine: dict[str, str], wall_s: float,
           create_s: dict[int, float], where: str) -> str:
    notes = []
    for r in runs:
        bits = (["failed (below)"] if r.failure else [sources(r)]) + list(dict.fromkeys(r.notes))
        notes.append(f"- {r.mode}, {r.size}, {LABELS[r.proxy]}: " + "; ".join(bits) + ".")
    failures = "".join(f"\n**{r.mode}, {r.size} services, {LABELS[r.proxy]}**:\n\n```\n{r.failure}\n```\n"
                       for r in runs if r.failure)
    created = ", ".join(f"{n} in {s:.0f} s" for n, s in create_s.items())
    vm = f" --vm {args.vm}" if args.vm else ""
    return (
        "# Service proxy sync: pyproxy vs upstream kube-proxy\n\n"
        f"`python -m bench.proxy_sync --sizes {','.join(map(str, args.sizes))} --modes {','.join(args.modes)} "
        f"--changes {args.changes}{vm}`, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, "
        f"{wall_s / 60:.0f} min from start to the last measurement. N selector-less Services in namespace "
        f"`{NAMESPACE}` (ClusterIP, 1 in {NODEPORT_EVERY} NodePort, one TCP port), each with one EndpointSlice of "
        f"{ENDPOINTS_PER_SERVICE} ready endpoints; grown from one size to the next ({created}, "
        f"{CREATES_IN_FLIGHT} create calls in flight). For each size and mode, pyproxy "
        f"and then the upstream kube-proxy ran alone, {where}, with the same "
        "KubeProxyConfiguration, against the same apiserver and objects (plus whatever other Services the cluster "
        "had).\n\n"
        + tables
        + ipvs_table(ipvs)
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
        f"both run are not included). {KERNEL_NOTE} Machine CPUs busy: everything on this host's "
        "2 CPUs during that proxy's run (others' tests may run on the same cluster; a VM's vCPUs are host "
        "threads).\n\n"
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


def cleanup(client, site: LocalNetns | VMWorker) -> float | None:
    """Put the site back as it was (the worker's own kube-proxy); remove the network namespace, the bench's
    namespace (waiting until it is gone) and its Node."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # let the cleanup finish
    site.close()
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


def run(cluster, client, args, site: LocalNetns | VMWorker) -> str:
    start = time.monotonic()
    config = KubeConfig.from_file(str(cluster.admin_kubeconfig))
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    site.open()
    create_node(client, site.address)
    ipvs = {} if args.vm else {p: ipvs_check(site, p) for p in PROXIES}
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
            pair = [run_proxy(site, client, proxy, mode, size, args.changes) for proxy in PROXIES]
            runs += pair
            tables.append(table(pair, args.changes))
            print(tables[-1], flush=True)
    if ipvs:
        print(f"| ipvs | {ipvs['pyproxy']} | {ipvs['upstream']} |", flush=True)
    wall = time.monotonic() - start
    return report(args, runs, ipvs, "\n".join(tables), facts(cluster, runs, site), wall, create_s,
                  site.description())


def sizes(text: str) -> list[int]:
    values = [int(part) for part in text.split(",")]
    if any(n < 10 for n in values) or values != sorted(set(values)):
        raise argparse.ArgumentTypeError("increasing service counts, each at least 10")
    return values


def modes(text: str) -> list[str]:
    values = text.split(",")
    if not values or any(m not in MODES for m in values) or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"some of {', '.join(MODES)}, each once")
    return values


def check_modes(values: list[str], vm: str | None) -> str | None:
    """What is wrong with measuring these modes here (None: nothing)."""
    if not vm and any(m not in HOST_MODES for m in values):
        return ("this host's kernel has no IP_VS: measure ipvs in a Vagrant worker (--vm pynode-w1; "
                "without --vm, the bench only checks what each proxy says in that mode)")
    return None


def vm_name(text: str) -> str:
    worker_index(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.proxy_sync", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=sizes, default=[1000, 5000, 10000],
                        help="service counts, increasing (default 1000,5000,10000)")
    parser.add_argument("--modes", type=modes, default=["iptables", "nftables"],
                        help="proxy modes to measure (default iptables,nftables)")
    parser.add_argument("--changes", type=int, default=5, help="endpoint changes per run (default 5)")
    parser.add_argument("--vm", type=vm_name, default=None,
                        help="run both proxies in this Vagrant worker (make vagrant-up), e.g. pynode-w1")
    args = parser.parse_args(argv)
    wrong = check_modes(args.modes, args.vm)
    if wrong:
        parser.error(wrong)

    cluster = settings.load()
    stopped = [name for name, ok in local.status(cluster).items() if not ok]
    if stopped:
        print(f"bench: the local cluster is not up ({', '.join(stopped)} not running); start it with `make up`",
              file=sys.stderr)
        return 1
    log("building the upstream kube-proxy (cached after the first time)")
    local.build_upstream(cluster, ["kube-proxy"])
    client = Client(config=KubeConfig.from_file(str(cluster.admin_kubeconfig)), field_manager=MANAGED_BY)
    site = VMWorker(cluster, args.vm) if args.vm else LocalNetns(cluster)
    interrupt_on_signals()
    if leftovers(client):
        log("removing what an earlier run left behind")
        cleanup(client, site)
        interrupt_on_signals()
    text = None
    try:
        text = run(cluster, client, args, site)
    except (procs.UpError, ApiError) as err:
        print(f"bench: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    finally:
        took = cleanup(client, site)
        if text is not None and took is not None:
            text += f"\nDeleting the namespace at the end took {took:.0f} s.\n"
    results = RESULTS / site.results_name(f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d}", args.modes)
    results.parent.mkdir(exist_ok=True)
    results.write_text(text)
    log(f"written to {results.relative_to(settings.REPO)}; the proxies' logs are in {WORK}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
