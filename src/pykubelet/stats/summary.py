"""The Summary API (`/stats/summary`, stats/v1alpha1): node, pod and container usage.

`SummaryProvider.summary()` builds it with times as nanoseconds since the epoch; `as_api` gives the
JSON the kubelet serves.

Pods and containers are measured by the runtime: one ListContainerStats for every container,
and one PodSandboxStats per ready sandbox (containerd 1.6's ListPodSandboxStats fails as a
whole when any sandbox is not ready, so it is never used). The node comes from cgroupfs, /proc
and statvfs (cgroups.py). Only running containers of a pod's newest ready sandbox are listed,
as upstream does. `usageNanoCores` needs two samples: the runtime's own figure when it gives
one, otherwise the rate since the previous call for that container or pod (none on the first).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import psutil

from cri import CRIError, api
from nodeagent import logs

from ..pods.podstate import PodRuntime
from ..pods.runtime_config import pod_log_directory
from .cgroups import Hierarchies, Usage, own_cgroup, pid_limits

log = logs.get(__name__)

LOG_ROOT = Path("/var/log/pods")
UNMEASURED_PLUGINS = {"kubernetes.io~host-path"}  # the host's files, not the pod's (upstream has no metrics)
# Local ephemeral storage as upstream counts it (a Memory-medium emptyDir, once served, must not count).
EPHEMERAL_PLUGINS = {"kubernetes.io~empty-dir", "kubernetes.io~configmap", "kubernetes.io~git-repo"}


@dataclass(frozen=True)
class PodRef:
    name: str
    namespace: str
    uid: str
    cgroup: str = ""  # the pod's cgroup, where the kubelet knows it
    images: tuple[tuple[str, str], ...] = ()  # (container name, image as the pod spec names it)


def rfc3339(ns: int) -> str:
    """metav1.Time's JSON form: seconds, UTC."""
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def as_api(value):
    """The Summary as the API serves it: the nanosecond ``time``/``startTime`` fields kept while it is built
    (/metrics/resource stamps samples with them, in ms) turned into metav1.Time strings, and the builder's
    private ``_`` keys (cgroups, container ids and images for /metrics/cadvisor) left out."""
    if isinstance(value, dict):
        return {k: rfc3339(v) if k in ("time", "startTime") else as_api(v) for k, v in value.items()
                if not k.startswith("_")}
    if isinstance(value, list):
        return [as_api(v) for v in value]
    return value


def _value(message, field: str) -> int | None:
    """A wrapped UInt64Value field of a CRI message, or None when the runtime left it out."""
    return getattr(message, field).value if message.HasField(field) else None


def _drop_none(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


def fs_stats(path: str | Path, now: int, used: int | None = None, inodes_used: int | None = None) -> dict | None:
    """FsStats of the filesystem holding `path`; `used`/`inodes_used` override the filesystem's own (a
    directory's share of it) when given."""
    try:
        vfs = os.statvfs(path)
    except OSError:
        return None
    return _drop_none({
        "time": now,
        "availableBytes": vfs.f_bavail * vfs.f_frsize,
        "capacityBytes": vfs.f_blocks * vfs.f_frsize,
        "usedBytes": used if used is not None else (vfs.f_blocks - vfs.f_bfree) * vfs.f_frsize,
        "inodesFree": vfs.f_ffree,
        "inodes": vfs.f_files,
        "inodesUsed": inodes_used if inodes_used is not None else vfs.f_files - vfs.f_ffree,
    })


def directory_usage(path: Path) -> tuple[int, int]:
    """(bytes in regular files, inodes) below `path`; what vanishes while it is read is skipped."""
    size = inodes = 0
    stack = [path]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    inodes += 1
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(Path(entry.path))
                        elif entry.is_file(follow_symlinks=False):
                            size += entry.stat(follow_symlinks=False).st_blocks * 512
                    except OSError:
                        continue
        except OSError:
            continue
    return size, inodes


def network_stats(now: int, net_dev: str | None = None) -> dict | None:
    """NetworkStats of this network namespace from /proc/net/dev: eth0 (or the first interface) inline,
    every interface but lo listed."""
    if net_dev is None:
        try:
            net_dev = Path("/proc/net/dev").read_text()
        except OSError:
            return None
    interfaces = []
    for line in net_dev.splitlines()[2:]:
        name, _, counters = line.partition(":")
        name, fields = name.strip(), counters.split()
        if name == "lo" or len(fields) < 16:
            continue
        interfaces.append({"name": name, "rxBytes": int(fields[0]), "rxErrors": int(fields[2]),
                           "txBytes": int(fields[8]), "txErrors": int(fields[10])})
    if not interfaces:
        return None
    default = next((i for i in interfaces if i["name"] == "eth0"), interfaces[0])
    return {"time": now, **default, "interfaces": interfaces}


def _cri_network(usage: api.NetworkUsage) -> dict | None:
    def interface(i):
        return _drop_none({"name": i.name, "rxBytes": _value(i, "rx_bytes"), "rxErrors": _value(i, "rx_errors"),
                           "txBytes": _value(i, "tx_bytes"), "txErrors": _value(i, "tx_errors")})

    if not usage.timestamp or not usage.default_interface.name:
        return None
    default = interface(usage.default_interface)
    return {"time": usage.timestamp, **default,
            "interfaces": [default, *(interface(i) for i in usage.interfaces)]}


def _keep_only(cache: dict, keys: Iterable[str]) -> None:
    """Forget what is cached for anything no longer seen."""
    keys = set(keys)
    for key in [k for k in cache if k not in keys]:
        del cache[key]


class _CpuRates:
    """The previous sample of each container's or pod's cumulative CPU, for usageNanoCores."""

    def __init__(self):
        self._last: dict[str, tuple[int, int, int | None]] = {}  # key -> (timestamp ns, usage ns, rate)

    def rate(self, key: str, timestamp: int, usage: int) -> int | None:
        previous = self._last.get(key)
        if previous is not None and timestamp <= previous[0]:
            return previous[2]  # the same sample again: the rate computed from it
        rate = None
        if previous is not None and usage >= previous[1]:
            rate = (usage - previous[1]) * 1_000_000_000 // (timestamp - previous[0])
        self._last[key] = (timestamp, usage, rate)
        return rate

    def keep(self, keys: Iterable[str]) -> None:
        _keep_only(self._last, keys)


class _VolumeStats:
    """Each pod's volume usage, walked in a thread at most once per `volumeStatsAggPeriod` (du is not free)."""

    def __init__(self, root_dir: Path, period: float):
        self.root_dir = root_dir
        self.period = period
        self._cache: dict[str, tuple[float, list[tuple[str, dict]]]] = {}

    async def get(self, uid: str) -> list[tuple[str, dict]]:
        """[(plugin dir, VolumeStats)] for the pod's volumes."""
        cached = self._cache.get(uid)
        if cached is not None and time.monotonic() - cached[0] < self.period:
            return cached[1]
        found = await asyncio.to_thread(self._walk, uid)
        self._cache[uid] = (time.monotonic(), found)
        return found

    def _walk(self, uid: str) -> list[tuple[str, dict]]:
        found = []
        base = self.root_dir / "pods" / uid / "volumes"
        try:
            plugins = sorted(os.listdir(base))
        except OSError:
            return []
        for plugin in plugins:
            if plugin in UNMEASURED_PLUGINS:
                continue
            try:
                names = sorted(os.listdir(base / plugin))
            except OSError:
                continue
            for name in names:
                used, inodes = directory_usage(base / plugin / name)
                stats = fs_stats(base / plugin / name, time.time_ns(), used, inodes)
                if stats is not None:
                    found.append((plugin, {**stats, "name": name}))
        return found

    def keep(self, uids: Iterable[str]) -> None:
        _keep_only(self._cache, uids)


class SummaryProvider:
    """Builds the Summary. `pods()` gives (PodRef, PodRuntime) for the pods the kubelet knows;
    `memory_capacity` is the node's, for the node's availableBytes."""

    def __init__(self, *, cri, pods: Callable[[], list[tuple[PodRef, PodRuntime]]], node_name: str,
                 root_dir: Path, cgroup_root: str, memory_capacity: int,
                 volume_stats_period: float = 60.0, hierarchies: Hierarchies | None = None,
                 log_root: Path = LOG_ROOT, claims: Callable[[str], list] = lambda uid: []):
        self.cri = cri
        self.pods = pods
        self.node_name = node_name
        self.root_dir = root_dir
        self.node_cgroup = "/" + cgroup_root.strip("/")
        self.pods_cgroup = f"{self.node_cgroup.rstrip('/')}/kubepods"  # pykubelet always nests pods by QoS
        self.memory_capacity = memory_capacity
        self.hierarchies = hierarchies or Hierarchies.discover()
        self.log_root = log_root
        self.boot_time = int(psutil.boot_time() * 1e9)
        self.kubelet_start = int(psutil.Process().create_time() * 1e9)
        self.kubelet_cgroup = own_cgroup()
        self._rates = _CpuRates()
        self._volumes = _VolumeStats(root_dir, volume_stats_period)
        self._runtime_lock = asyncio.Lock()
        self.claims = claims  # pod uid -> [(volume, claim, path)] of its local PersistentVolumes
        self.pvc_stats: list[dict] = []  # volume stats with a pvcRef, from the last full summary

    # ------------------------------------------------------------------ pieces

    def _cpu(self, key: str, timestamp: int, usage: int | None, nano_cores: int | None = None) -> dict | None:
        if usage is None:
            return None
        if nano_cores is None:
            nano_cores = self._rates.rate(key, timestamp, usage)
        return _drop_none({"time": timestamp, "usageNanoCores": nano_cores, "usageCoreNanoSeconds": usage})

    def _cgroup_cpu_memory(self, key: str, usage: Usage | None, limit: int | None) -> tuple[dict | None, dict | None]:
        if usage is None:
            return None, None
        cpu = self._cpu(key, usage.timestamp, usage.cpu_ns)
        memory = None
        if usage.memory_usage is not None:
            available = max(limit - usage.working_set, 0) if limit and usage.working_set is not None else None
            memory = _drop_none({"time": usage.timestamp, "availableBytes": available,
                                 "usageBytes": usage.memory_usage, "workingSetBytes": usage.working_set,
                                 "rssBytes": usage.rss, "pageFaults": usage.page_faults,
                                 "majorPageFaults": usage.major_page_faults})
        return cpu, memory

    def _cri_cpu(self, key: str, cpu: api.CpuUsage) -> dict | None:
        if not cpu.timestamp:
            return None
        return self._cpu(key, cpu.timestamp, _value(cpu, "usage_core_nano_seconds"),
                         _value(cpu, "usage_nano_cores") or None)

    @staticmethod
    def _cri_memory(memory: api.MemoryUsage) -> dict | None:
        if not memory.timestamp:
            return None
        # containerd writes availableBytes 0 for a cgroup without a memory limit: no figure, not an empty one.
        return _drop_none({"time": memory.timestamp, "availableBytes": _value(memory, "available_bytes") or None,
                           "usageBytes": _value(memory, "usage_bytes"),
                           "workingSetBytes": _value(memory, "working_set_bytes"),
                           "rssBytes": _value(memory, "rss_bytes"), "pageFaults": _value(memory, "page_faults"),
                           "majorPageFaults": _value(memory, "major_page_faults")})

    def _system_container(self, name: str, cgroup: str, start: int) -> dict | None:
        cpu, memory = self._cgroup_cpu_memory(f"system/{name}", self.hierarchies.read(cgroup), None)
        if cpu is None and memory is None:
            return None
        return _drop_none({"name": name, "startTime": start, "cpu": cpu, "memory": memory})

    async def _image_fs(self, now: int) -> tuple[dict | None, dict | None]:
        try:
            info = await self.cri.image_fs_info(api.ImageFsInfoRequest())
        except CRIError as err:
            log.warning("Cannot read the runtime's image filesystem", err=str(err))
            return None, None

        def one(usages) -> dict | None:
            if not usages:
                return None
            usage = usages[0]
            return fs_stats(usage.fs_id.mountpoint, usage.timestamp or now, _value(usage, "used_bytes"),
                            _value(usage, "inodes_used"))

        image = one(info.image_filesystems)
        return image, one(info.container_filesystems) or image

    # ------------------------------------------------------------------ node and pods

    async def _node(self, now: int, only_cpu_and_memory: bool) -> dict:
        cpu, memory = self._cgroup_cpu_memory("node", self.hierarchies.read(self.node_cgroup), self.memory_capacity)
        node = {"nodeName": self.node_name, "startTime": self.boot_time, "cpu": cpu, "memory": memory,
                "_cgroup": self.node_cgroup}
        if only_cpu_and_memory:
            return _drop_none(node)
        system = [self._system_container("kubelet", self.kubelet_cgroup, self.kubelet_start),
                  self._system_container("pods", self.pods_cgroup, self.boot_time)]
        image_fs, container_fs = await self._image_fs(now)
        maximum, running = pid_limits()
        node.update({
            "systemContainers": [c for c in system if c] or None,
            "network": network_stats(now),
            "fs": fs_stats(self.root_dir, now),
            "runtime": _drop_none({"imageFs": image_fs, "containerFs": container_fs}) or None,
            "rlimit": _drop_none({"time": now, "maxpid": maximum, "curproc": running}),
        })
        return _drop_none(node)

    async def _sandbox_stats(self, sandbox_id: str):
        try:
            return (await self.cri.pod_sandbox_stats(api.PodSandboxStatsRequest(pod_sandbox_id=sandbox_id))).stats
        except CRIError as err:
            log.debug("No sandbox stats", podSandboxID=sandbox_id, err=str(err))
            return None

    async def _runtime_stats(self, sandbox_ids: list[str]) -> tuple[list, list]:
        """ListContainerStats, then PodSandboxStats for each sandbox, one call at a time and never two summaries'
        at once: containerd 1.6 updates a map without a lock on both paths and dies ("fatal error: concurrent
        map writes") when two such calls overlap."""
        async with self._runtime_lock:
            try:
                listed = (await self.cri.list_container_stats(api.ListContainerStatsRequest())).stats
            except CRIError as err:
                log.warning("Cannot list container stats", err=str(err))
                listed = []
            return listed, [await self._sandbox_stats(sandbox_id) for sandbox_id in sandbox_ids]

    async def node(self) -> dict:
        """The summary's node part alone: what the eviction manager observes every round."""
        return await self._node(time.time_ns(), False)

    async def summary(self, only_cpu_and_memory: bool = False) -> dict:
        now = time.time_ns()
        pods = [(ref, rt, rt.sandbox) for ref, rt in self.pods()
                if rt.sandbox is not None and rt.sandbox.state == api.SANDBOX_READY]
        (listed, sandboxes), node = await asyncio.gather(
            self._runtime_stats([sandbox.id for _, _, sandbox in pods]), self._node(now, only_cpu_and_memory))
        by_id = {s.attributes.id: s for s in listed}
        if not only_cpu_and_memory:
            fs_for_logs = fs_stats(self.log_root, now) or {}
        seen: list[str] = []
        out = []
        pvc_stats: list[dict] = []
        for (ref, rt, sandbox), stats in zip(pods, sandboxes):
            containers = []
            for record in rt.containers:
                if record.sandbox_id != sandbox.id or record.state != api.CONTAINER_RUNNING:
                    continue
                got = by_id.get(record.id)
                seen.append(record.id)
                container = {"name": record.name, "startTime": record.created_at, "_id": record.id,
                             "_image": dict(ref.images).get(record.name) or record.image}
                if got is not None:
                    container["cpu"] = self._cri_cpu(record.id, got.cpu)
                    container["memory"] = self._cri_memory(got.memory)
                    if not only_cpu_and_memory:
                        layer = got.writable_layer
                        if layer.timestamp or layer.fs_id.mountpoint:
                            container["rootfs"] = fs_stats(layer.fs_id.mountpoint or self.root_dir,
                                                           layer.timestamp or now, _value(layer, "used_bytes"),
                                                           _value(layer, "inodes_used"))
                if not only_cpu_and_memory:
                    used, inodes = directory_usage(pod_log_directory(
                        {"metadata": {"namespace": ref.namespace, "name": ref.name, "uid": ref.uid}},
                        self.log_root) / record.name)
                    if fs_for_logs:
                        container["logs"] = {**fs_for_logs, "usedBytes": used, "inodesUsed": inodes}
                containers.append(_drop_none(container))
            pod = {"podRef": {"name": ref.name, "namespace": ref.namespace, "uid": ref.uid},
                   "startTime": sandbox.created_at, "containers": containers, "_cgroup": ref.cgroup}
            seen.append(sandbox.id)
            linux = stats.linux if stats is not None and stats.HasField("linux") else None
            if linux is not None:
                pod["cpu"] = self._cri_cpu(sandbox.id, linux.cpu)
                pod["memory"] = self._cri_memory(linux.memory)
                if not only_cpu_and_memory:
                    pod["network"] = _cri_network(linux.network)
                    if linux.process.timestamp:
                        pod["process_stats"] = _drop_none({"process_count": _value(linux.process, "process_count")})
            else:
                pod.update(self._pod_from_containers(sandbox.id, containers, now))
            if not only_cpu_and_memory:
                volumes = await self._volumes.get(ref.uid)
                claimed = [{**stats, "name": volume, "pvcRef": {"name": claim, "namespace": ref.namespace}}
                           for volume, claim, path in self.claims(ref.uid)
                           if (stats := fs_stats(path, now)) is not None]
                pvc_stats.extend(claimed)
                pod["volume"] = [stats for _, stats in volumes] + claimed or None
                pod["ephemeral-storage"] = self._ephemeral(
                    containers, [stats for plugin, stats in volumes if plugin in EPHEMERAL_PLUGINS], now)
            out.append(_drop_none(pod))
        self._rates.keep(seen + ["node", "system/kubelet", "system/pods"])
        if not only_cpu_and_memory:
            self._volumes.keep(ref.uid for ref, _, _ in pods)
            self.pvc_stats = pvc_stats
        return {"node": node, "pods": out}

    def _pod_from_containers(self, sandbox_id: str, containers: list[dict], now: int) -> dict:
        """Pod cpu and memory as the sum of its containers', when the runtime has no sandbox stats."""
        cpu = [c["cpu"]["usageCoreNanoSeconds"] for c in containers if "cpu" in c]
        working = [c["memory"]["workingSetBytes"] for c in containers if "workingSetBytes" in c.get("memory", {})]
        out = {}
        if cpu:
            out["cpu"] = self._cpu(sandbox_id, now, sum(cpu))
        if working:
            out["memory"] = {"time": now, "workingSetBytes": sum(working)}
        return out

    @staticmethod
    def _ephemeral(containers: list[dict], volumes: list[dict], now: int) -> dict | None:
        """The pod's local ephemeral storage, as upstream counts it: writable layers, logs, and the emptyDir,
        configMap (and gitRepo) volumes."""
        parts = [c[k] for c in containers for k in ("rootfs", "logs") if k in c] + volumes
        if not parts:
            return None
        used = sum(p.get("usedBytes", 0) for p in parts)
        inodes = sum(p.get("inodesUsed", 0) for p in parts)
        return {**parts[0], "time": now, "usedBytes": used, "inodesUsed": inodes}
