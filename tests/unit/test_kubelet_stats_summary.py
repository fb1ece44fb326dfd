"""Stats: cgroupfs readers, CPU rates, the Summary from runtime answers, and the /metrics/resource text."""

from __future__ import annotations

import asyncio
from pathlib import Path


from cri import CRIError, api

from pykubelet.pods.podstate import Container, PodRuntime, Sandbox
from pykubelet.stats import PodRef, SummaryProvider, as_api, cadvisor_metrics, resource_metrics
from pykubelet.stats.cgroups import Hierarchies, cgroup_dir
from pykubelet.stats.summary import _CpuRates, network_stats

HYBRID = """\
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 /outer /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""


def test_hierarchies_prefer_v1_controllers_and_keep_the_mount_root():
    found = Hierarchies.discover(HYBRID)
    assert found.cpuacct == (Path("/sys/fs/cgroup/cpu,cpuacct"), "/")
    assert str(found.memory[0]) == "/sys/fs/cgroup/memory" and found.memory[1] == "/outer"
    assert str(found.unified[0]) == "/sys/fs/cgroup/unified"
    # A mount whose root is a cgroup holds the paths below it without that prefix.
    assert str(cgroup_dir(found.memory, "/outer/node/kubepods")) == "/sys/fs/cgroup/memory/node/kubepods"
    assert str(cgroup_dir(found.cpuacct, "/outer/node")) == "/sys/fs/cgroup/cpu,cpuacct/outer/node"


def test_v1_usage_has_working_set_without_inactive_file(tmp_path):
    (tmp_path / "cpuacct" / "n").mkdir(parents=True)
    (tmp_path / "memory" / "n").mkdir(parents=True)
    (tmp_path / "cpuacct" / "n" / "cpuacct.usage").write_text("123456789\n")
    (tmp_path / "memory" / "n" / "memory.usage_in_bytes").write_text("1000000\n")
    (tmp_path / "memory" / "n" / "memory.stat").write_text(
        "cache 10\ntotal_inactive_file 300000\ntotal_rss 600000\ntotal_pgfault 42\ntotal_pgmajfault 3\n")
    found = Hierarchies((tmp_path / "cpuacct", "/"), (tmp_path / "memory", "/"), None)
    usage = found.read("/n")
    assert (usage.cpu_ns, usage.memory_usage, usage.working_set) == (123456789, 1000000, 700000)
    assert (usage.rss, usage.page_faults, usage.major_page_faults) == (600000, 42, 3)
    assert found.read("/gone") is None


def test_v2_usage(tmp_path):
    (tmp_path / "n").mkdir()
    (tmp_path / "n" / "cpu.stat").write_text("usage_usec 2500\nuser_usec 2000\n")
    (tmp_path / "n" / "memory.current").write_text("5000\n")
    (tmp_path / "n" / "memory.stat").write_text("anon 3000\ninactive_file 1500\npgfault 7\npgmajfault 1\n")
    usage = Hierarchies(None, None, (tmp_path, "/")).read("/n")
    assert (usage.cpu_ns, usage.memory_usage, usage.working_set, usage.rss) == (2_500_000, 5000, 3500, 3000)


def test_network_stats_from_proc_net_dev():
    text = """Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0
  cni0:     500       5    1    0    0     0          0         0      600       6    2    0    0     0       0          0
  eth0:    1000      10    3    0    0     0          0         0     2000      20    4    0    0     0       0          0
"""
    stats = network_stats(7, text)
    assert (stats["name"], stats["rxBytes"], stats["rxErrors"], stats["txBytes"], stats["txErrors"]) == \
        ("eth0", 1000, 3, 2000, 4)
    assert [i["name"] for i in stats["interfaces"]] == ["cni0", "eth0"]


def test_cpu_rate_needs_two_samples_and_survives_a_reset():
    rates = _CpuRates()
    assert rates.rate("c", 1_000_000_000, 5_000_000_000) is None
    assert rates.rate("c", 3_000_000_000, 6_000_000_000) == 500_000_000  # half a core
    assert rates.rate("c", 3_000_000_000, 6_000_000_000) == 500_000_000  # the same sample: the same rate
    assert rates.rate("c", 4_000_000_000, 1_000) is None  # the counter went back: a new container
    rates.keep([])
    assert rates.rate("c", 5_000_000_000, 2_000) is None


def _usage(ts, cpu, memory):
    return (api.CpuUsage(timestamp=ts, usage_core_nano_seconds=api.UInt64Value(value=cpu)),
            api.MemoryUsage(timestamp=ts, working_set_bytes=api.UInt64Value(value=memory),
                            usage_bytes=api.UInt64Value(value=memory + 10), available_bytes=api.UInt64Value(value=0)))


class _Runtime:
    """The CRI calls SummaryProvider makes, answered from fixed stats; one sandbox has none."""

    def __init__(self, ts):
        self.ts = ts

    async def list_container_stats(self, request):
        stats = []
        for cid, cpu, memory in (("c1", 2_000_000_000, 4096), ("c2", 1_000_000_000, 1024), ("old", 5, 5)):
            c, m = _usage(self.ts, cpu, memory)
            stats.append(api.ContainerStats(
                attributes=api.ContainerAttributes(id=cid), cpu=c, memory=m,
                writable_layer=api.FilesystemUsage(timestamp=self.ts, used_bytes=api.UInt64Value(value=8192),
                                                   fs_id=api.FilesystemIdentifier(mountpoint="/"))))
        return api.ListContainerStatsResponse(stats=stats)

    async def pod_sandbox_stats(self, request):
        if request.pod_sandbox_id == "s2":
            raise CRIError("not here", socket="test", rpc="PodSandboxStats")
        c, m = _usage(self.ts, 2_500_000_000, 9000)
        return api.PodSandboxStatsResponse(stats=api.PodSandboxStats(
            attributes=api.PodSandboxAttributes(id=request.pod_sandbox_id),
            linux=api.LinuxPodSandboxStats(cpu=c, memory=m, process=api.ProcessUsage(
                timestamp=self.ts, process_count=api.UInt64Value(value=3)))))

    async def image_fs_info(self, request):
        return api.ImageFsInfoResponse(image_filesystems=[api.FilesystemUsage(
            timestamp=self.ts, used_bytes=api.UInt64Value(value=1 << 20), fs_id=api.FilesystemIdentifier(mountpoint="/"))])


def _container(cid, name, sandbox, state=api.CONTAINER_RUNNING):
    return Container(id=cid, name=name, attempt=0, state=state, created_at=1_700_000_000_000_000_000,
                     sandbox_id=sandbox, image="sha256:abc", labels={}, annotations={})


def _provider(tmp_path, ts):
    ready = PodRuntime(sandboxes=[Sandbox("s1", 0, api.SANDBOX_READY, 1_699_999_999_000_000_000)],
                       containers=[_container("c1", "app", "s1"),
                                   _container("old", "app", "s1", state=api.CONTAINER_EXITED)])
    no_sandbox_stats = PodRuntime(sandboxes=[Sandbox("s2", 0, api.SANDBOX_READY, 1)],
                                  containers=[_container("c2", "side", "s2")])
    gone = PodRuntime(sandboxes=[Sandbox("s3", 0, api.SANDBOX_NOTREADY, 1)], containers=[])
    (tmp_path / "memory" / "node").mkdir(parents=True)
    (tmp_path / "memory" / "node" / "memory.usage_in_bytes").write_text("3000\n")
    pods = [(PodRef("web", "ns", "u1", "/node/kubepods/podu1", (("app", "busybox:1.36"),)), ready),
            (PodRef("side", "ns", "u2"), no_sandbox_stats), (PodRef("done", "ns", "u3"), gone)]
    return SummaryProvider(cri=_Runtime(ts), pods=lambda: pods, node_name="n1", root_dir=tmp_path,
                           cgroup_root="/node", memory_capacity=10_000,
                           hierarchies=Hierarchies(None, (tmp_path / "memory", "/"), None), log_root=tmp_path)


def test_summary_from_the_runtime(tmp_path):
    ts = 1_800_000_000_000_000_000
    (tmp_path / "ns_web_u1" / "app").mkdir(parents=True)
    (tmp_path / "ns_web_u1" / "app" / "0.log").write_bytes(b"x" * 10000)
    volumes = tmp_path / "pods" / "u1" / "volumes"
    for plugin, name in (("kubernetes.io~empty-dir", "scratch"), ("kubernetes.io~projected", "token"),
                         ("kubernetes.io~host-path", "host")):
        (volumes / plugin / name).mkdir(parents=True)
        (volumes / plugin / name / "data").write_bytes(b"v" * 20000)
    provider = _provider(tmp_path, ts)
    got = asyncio.run(provider.summary())
    node = got["node"]
    assert node["nodeName"] == "n1"
    assert node["memory"]["workingSetBytes"] == 3000 and node["memory"]["availableBytes"] == 7000
    assert node["fs"]["capacityBytes"] > 0 and node["runtime"]["imageFs"]["usedBytes"] == 1 << 20
    assert [p["podRef"]["name"] for p in got["pods"]] == ["web", "side"]  # no ready sandbox: not listed
    web, side = got["pods"]
    assert [c["name"] for c in web["containers"]] == ["app"]  # the exited one is left out
    app = web["containers"][0]
    assert app["cpu"]["usageCoreNanoSeconds"] == 2_000_000_000 and "usageNanoCores" not in app["cpu"]
    assert "availableBytes" not in app["memory"]  # containerd's 0 means "no limit"
    assert app["rootfs"]["usedBytes"] == 8192 and app["logs"]["usedBytes"] >= 10000
    # Every volume but hostPath is measured; emptyDir counts as ephemeral storage, the projected token not.
    assert [v["name"] for v in web["volume"]] == ["scratch", "token"]
    assert all(v["usedBytes"] >= 20000 and v["capacityBytes"] > 0 for v in web["volume"])
    assert web["ephemeral-storage"]["usedBytes"] == 8192 + app["logs"]["usedBytes"] + web["volume"][0]["usedBytes"]
    assert "volume" not in side
    assert web["memory"]["workingSetBytes"] == 9000 and web["process_stats"] == {"process_count": 3}
    # Without sandbox stats the pod is the sum of its containers.
    assert side["cpu"]["usageCoreNanoSeconds"] == 1_000_000_000 and side["memory"]["workingSetBytes"] == 1024

    served = as_api(got)
    assert served["pods"][0]["startTime"] == "2023-11-14T22:13:19Z"
    assert served["pods"][0]["containers"][0]["cpu"]["time"] == "2027-01-15T08:00:00Z"
    assert not any(k.startswith("_") for k in served["pods"][0]) and "_id" not in served["pods"][0]["containers"][0]

    # A later sample gives the rate.
    provider.cri.ts = ts + 2_000_000_000
    again = asyncio.run(provider.summary(only_cpu_and_memory=True))
    assert again["pods"][0]["cpu"]["usageNanoCores"] == 0  # the fixed stats did not move
    assert "fs" not in again["node"] and "rootfs" not in again["pods"][0]["containers"][0]


def test_resource_metrics_text(tmp_path):
    ts = 1_800_000_000_000_000_000
    text = resource_metrics(asyncio.run(_provider(tmp_path, ts).summary(only_cpu_and_memory=True))).decode()
    lines = text.splitlines()
    assert ('container_cpu_usage_seconds_total{container="app",namespace="ns",pod="web"} 2.0 1800000000000'
            in lines)
    assert 'container_memory_working_set_bytes{container="app",namespace="ns",pod="web"} 4096.0 1800000000000' \
        in lines
    assert 'container_start_time_seconds{container="app",namespace="ns",pod="web"} 1.7e+09' in lines
    assert 'pod_memory_working_set_bytes{namespace="ns",pod="web"} 9000.0 1800000000000' in lines
    assert "# TYPE node_memory_working_set_bytes gauge" in lines and "resource_scrape_error 0.0" in lines
    assert "# HELP pod_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the pod in core-seconds" \
        in lines
    failed = resource_metrics(None).decode().splitlines()
    assert [line for line in failed if not line.startswith("#")] == ["resource_scrape_error 1.0", "scrape_error 1.0"]


def test_cadvisor_labels(tmp_path):
    summary = asyncio.run(_provider(tmp_path, 1_800_000_000_000_000_000).summary())
    lines = cadvisor_metrics(summary, 1_800_000_000_000_000_000).decode().splitlines()
    assert ('container_memory_working_set_bytes{container="app",id="/node/kubepods/podu1/c1",image="busybox:1.36",'
            'name="c1",namespace="ns",pod="web"} 4096.0 1800000000000') in lines
    assert any(line.startswith('container_memory_working_set_bytes{container="",id="/node",') for line in lines)


def test_stats_calls_never_overlap_even_across_summaries(tmp_path):
    """containerd 1.6 dies ("concurrent map writes") when two stats calls overlap; pykubelet makes them one at a
    time, whoever asks (the eviction manager, /stats/summary, metrics-server's /metrics/resource)."""
    provider = _provider(tmp_path, 1_800_000_000_000_000_000)
    runtime = provider.cri
    in_flight, most = 0, 0

    def counted(call):
        async def wrapper(request):
            nonlocal in_flight, most
            in_flight += 1
            most = max(most, in_flight)
            await asyncio.sleep(0.01)
            try:
                return await call(request)
            finally:
                in_flight -= 1
        return wrapper
    runtime.list_container_stats = counted(runtime.list_container_stats)
    runtime.pod_sandbox_stats = counted(runtime.pod_sandbox_stats)

    async def both():
        await asyncio.gather(provider.summary(), provider.summary(only_cpu_and_memory=True), provider.summary())
    asyncio.run(both())
    assert most == 1
