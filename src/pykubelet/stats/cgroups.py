"""CPU and memory usage of a cgroup, read from cgroupfs (v1 controllers or the v2 unified hierarchy).

The node's own figures come from here, as cadvisor gives them to the upstream kubelet: the
node is the cgroup `cgroupRoot` names ("/" by default, the whole machine), plus the kubelet's
own cgroup and the pods' parent as system containers. Pods and containers are measured by the
runtime over CRI instead (see summary.py).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Usage:
    timestamp: int  # ns since the epoch
    cpu_ns: int | None = None  # cumulative CPU time, all cores
    memory_usage: int | None = None
    working_set: int | None = None  # usage minus inactive file pages, as cadvisor computes it
    rss: int | None = None
    page_faults: int | None = None
    major_page_faults: int | None = None


@dataclass(frozen=True)
class Hierarchies:
    """Where the cpu accounting and memory controllers are mounted; a v1 controller wins over cgroup2."""

    cpuacct: tuple[Path, str] | None  # (mount point, the mount's root in the hierarchy)
    memory: tuple[Path, str] | None
    unified: tuple[Path, str] | None

    @classmethod
    def discover(cls, mountinfo: str | None = None) -> "Hierarchies":
        cpuacct = memory = unified = None
        for fstype, mountpoint, root, options in cgroup_mounts(mountinfo):
            if fstype == "cgroup2" and unified is None:
                unified = (mountpoint, root)
            elif fstype == "cgroup":
                if "cpuacct" in options and cpuacct is None:
                    cpuacct = (mountpoint, root)
                if "memory" in options and memory is None:
                    memory = (mountpoint, root)
        return cls(cpuacct, memory, unified)

    def read(self, path: str) -> Usage | None:
        """The cgroup's usage, or None when no controller holds it (it went away, or never was)."""
        now = time.time_ns()
        if self.memory is not None or self.cpuacct is not None:
            return self._read_v1(path, now)
        if self.unified is not None:
            return self._read_v2(path, now)
        return None

    def _read_v1(self, path: str, now: int) -> Usage | None:
        cpu = memory = working = rss = faults = major = None
        if self.cpuacct is not None:
            cpu = _int(cgroup_dir(self.cpuacct, path) / "cpuacct.usage")
        if self.memory is not None:
            directory = cgroup_dir(self.memory, path)
            memory = _int(directory / "memory.usage_in_bytes")
            stat = _stat(directory / "memory.stat")
            if memory is not None:
                working = max(memory - stat.get("total_inactive_file", 0), 0)
            rss, faults, major = stat.get("total_rss"), stat.get("total_pgfault"), stat.get("total_pgmajfault")
        if cpu is None and memory is None:
            return None
        return Usage(now, cpu, memory, working, rss, faults, major)

    def _read_v2(self, path: str, now: int) -> Usage | None:
        directory = cgroup_dir(self.unified, path)
        cpu_stat = _stat(directory / "cpu.stat")
        cpu = cpu_stat["usage_usec"] * 1000 if "usage_usec" in cpu_stat else None
        stat = _stat(directory / "memory.stat")
        memory = _int(directory / "memory.current")
        if memory is None and path.strip("/") == "":
            memory = _machine_memory_used()  # the root cgroup has no memory.current; cadvisor uses meminfo
        working = max(memory - stat.get("inactive_file", 0), 0) if memory is not None else None
        if cpu is None and memory is None:
            return None
        return Usage(now, cpu, memory, working, stat.get("anon"), stat.get("pgfault"), stat.get("pgmajfault"))


def own_cgroup(controller: str = "memory") -> str:
    """This process's cgroup path in the hierarchy holding `controller` (the v2 path when there is none)."""
    unified = "/"
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return path
        if controllers == "":
            unified = path
    return unified


def cgroup_mounts(mountinfo: str | None = None) -> Iterator[tuple[str, Path, str, set[str]]]:
    """(cgroup or cgroup2, mount point, the mount's root in its hierarchy, super options) of each cgroup mount in
    /proc/self/mountinfo (or the text given)."""
    if mountinfo is None:
        mountinfo = Path("/proc/self/mountinfo").read_text()
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields, rest = left.split(), right.split()
        if len(fields) >= 5 and len(rest) >= 3 and rest[0] in ("cgroup", "cgroup2"):
            yield rest[0], Path(fields[4]), fields[3], set(rest[2].split(","))


def cgroup_dir(mount: tuple[Path, str], path: str) -> Path:
    """The cgroup's directory under a mount whose root may itself be a cgroup (a bind mount, a cgroup namespace)."""
    mountpoint, root = mount
    path = "/" + path.strip("/")
    root = "/" + root.strip("/")
    if root != "/" and (path == root or path.startswith(root + "/")):
        path = path[len(root):] or "/"
    return mountpoint / path.lstrip("/")


def _int(file: Path) -> int | None:
    try:
        return int(file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _stat(file: Path) -> dict[str, int]:
    try:
        text = file.read_text()
    except OSError:
        return {}
    found = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            found[key] = int(value)
    return found


def _machine_memory_used() -> int | None:
    info = _meminfo()
    if "MemTotal" not in info or "MemFree" not in info:
        return None
    return (info["MemTotal"] - info["MemFree"]) * 1024


def _meminfo() -> dict[str, int]:
    found = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, value = line.partition(":")
            parts = value.split()
            if parts and parts[0].isdigit():
                found[key] = int(parts[0])
    except OSError:
        pass
    return found


def pid_limits() -> tuple[int | None, int | None]:
    """(kernel.pid_max, the number of processes now), the node's rlimit stats."""
    maximum = _int(Path("/proc/sys/kernel/pid_max"))
    try:
        running = int(Path("/proc/loadavg").read_text().split()[3].split("/")[1])
    except (OSError, ValueError, IndexError):
        running = sum(1 for name in os.listdir("/proc") if name.isdigit())
    return maximum, running
