"""A cgroup per local node, so that `down` finds every process the node started.

The node's containerd, and so its shims, run in the node's cgroup, and the
node's pods are created below it (their cgroup parent names it). CRI passes
one absolute cgroup path for all hierarchies, so the node's cgroup has the same
path in each: our own deepest cgroup (the one some supervisor may have put us
in, say memory:/process_api/<id>) plus `pynode/<node>`. In every other
hierarchy that path lies below the one we run in too, so nothing escapes a
limit set on us. The path differs from machine to machine, so it is recorded
next to the node's state.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from . import procs

PATH_FILE = "cgroup"  # the node's absolute cgroup path
DIRS_FILE = "cgroups"  # its directory in every hierarchy
CREATED_FILE = "cgroups-created"  # every directory `ensure` had to create, parents included


def _hierarchies() -> list[tuple[Path, str]]:
    """(mount point, our cgroup path in that hierarchy) for each mounted hierarchy."""
    own: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            own[controller] = path
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fstype, _, options = right.split()[:3]
        root, mountpoint = left.split()[3:5]
        if fstype == "cgroup2":
            key = ""
        elif fstype == "cgroup":
            key = next((o for o in options.split(",") if o in own), None)
        else:
            continue
        if key is None or key not in own or root != "/":
            continue  # a hierarchy we are not in, or a bind mount of part of one
        found.append((Path(mountpoint), own[key]))
    return found


def node_path(name: str) -> str:
    """The absolute cgroup path for `name`: below the deepest cgroup we are in."""
    hierarchies = _hierarchies()
    base = max((path for _, path in hierarchies), key=len, default="/")
    for mountpoint, path in hierarchies:
        if not (base + "/").startswith(path.rstrip("/") + "/"):
            raise RuntimeError(f"cgroups: we run in {path} under {mountpoint} but in {base} elsewhere; "
                               "a node cgroup cannot sit below both")
    return f"{base.rstrip('/')}/{name}"


def ensure(name: str, node_dir: Path) -> tuple[str, tuple[Path, ...]]:
    """Create the node's cgroup in every hierarchy; return its path and the cgroup.procs files to join."""
    path = node_path(name)
    dirs, created = [], []
    for mountpoint, _ in _hierarchies():
        directory = mountpoint / path.lstrip("/")
        missing = directory
        while not missing.exists():
            created.append(missing)
            missing = missing.parent
        directory.mkdir(parents=True, exist_ok=True)
        if (directory / "cpuset.cpus").exists():
            _inherit_cpuset(mountpoint, directory)
        dirs.append(directory)
    node_dir.mkdir(parents=True, exist_ok=True)
    (node_dir / PATH_FILE).write_text(path + "\n")
    (node_dir / DIRS_FILE).write_text("".join(f"{d}\n" for d in dirs))
    previously = _read_paths(node_dir / CREATED_FILE)
    (node_dir / CREATED_FILE).write_text("".join(f"{d}\n" for d in dict.fromkeys(previously + created)))
    return path, tuple(d / "cgroup.procs" for d in dirs)


def _inherit_cpuset(top: Path, leaf: Path) -> None:
    """cgroup v1 cpusets start empty; give each new level its parent's cpus and mems."""
    chain = []
    level = leaf
    while level != top:
        chain.append(level)
        level = level.parent
    for level in reversed(chain):
        for knob in ("cpuset.cpus", "cpuset.mems"):
            if not (level / knob).read_text().strip():
                (level / knob).write_text((level.parent / knob).read_text().strip())


def recorded_path(node_dir: Path) -> str | None:
    try:
        return (node_dir / PATH_FILE).read_text().strip()
    except OSError:
        return None


def _read_paths(file: Path) -> list[Path]:
    try:
        return [Path(line) for line in file.read_text().split()]
    except OSError:
        return []


def recorded_dirs(node_dir: Path) -> list[Path]:
    return _read_paths(node_dir / DIRS_FILE)


def created_dirs(node_dir: Path) -> list[Path]:
    return _read_paths(node_dir / CREATED_FILE)


def pids(dirs: list[Path]) -> set[int]:
    """Every process in these cgroups and the cgroups below them."""
    return _ids(dirs, ("cgroup.procs",))


def threads(dirs: list[Path]) -> set[int]:
    """Every thread in these cgroups and below them (v1 `tasks`, v2 `cgroup.threads`). A process whose leader has
    exited shows as a zombie in cgroup.procs while its other threads, still exiting, keep the cgroup busy."""
    return _ids(dirs, ("tasks", "cgroup.threads"))


def _ids(dirs: list[Path], files: tuple[str, ...]) -> set[int]:
    found: set[int] = set()
    for top in dirs:
        for name in files:
            for listing in top.rglob(name) if top.is_dir() else ():
                try:
                    found.update(int(p) for p in listing.read_text().split())
                except OSError:
                    pass
    return found


def live(dirs: list[Path]) -> set[int]:
    """The processes and threads in these cgroups, and the processes below them, that have not yet died."""
    return {task for task in procs.with_descendants(pids(dirs)) | threads(dirs) if procs.alive(task)}


def thaw(dirs: list[Path]) -> None:
    """Thaw every frozen cgroup below `dirs`: a frozen process does not die of SIGKILL until it is thawed (runc
    freezes a container's cgroup around some operations, and one cut off half-way leaves it frozen)."""
    for top in dirs:
        if not top.is_dir():
            continue
        for knob, thawed in (("freezer.state", "THAWED"), ("cgroup.freeze", "0")):
            for path in top.rglob(knob):
                try:
                    if path.read_text().strip() not in (thawed, ""):
                        path.write_text(thawed)
                except OSError:
                    pass


def kill_all(dirs: list[Path], timeout: float = 15.0) -> dict[int, str]:
    """SIGKILL every process in these cgroups and below them (a shim's containers, say), again and again until
    none is left: a process forked between two reads escapes one round, not the next. Returns what is still there
    after `timeout`: pid (or thread id) -> its name and state."""
    deadline = time.monotonic() + timeout
    while True:
        thaw(dirs)
        found = live(dirs)  # a zombie is dead; a thread of an exited leader is not
        if not found:
            return {}
        if time.monotonic() >= deadline:
            return {task: procs.describe(task) for task in sorted(found)}
        for task in found:
            try:
                os.kill(task, signal.SIGKILL)  # a thread's id reaches its whole process
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def remove(node_dirs: list[Path], timeout: float = 30.0) -> list[Path]:
    """rmdir the nodes' cgroups (whose processes must be gone) and every parent `ensure` created.

    Takes all nodes at once because they share parents. Returns what would not go: a node's own cgroups are tried
    for up to `timeout` seconds, killing again whatever still lives in them; the parents once, since another
    supervisor's cgroups may share them.
    """
    subtree: set[Path] = set()
    for node_dir in node_dirs:
        for top in recorded_dirs(node_dir):
            if top.is_dir():
                subtree.update(p for p in top.rglob("*") if p.is_dir())
                subtree.add(top)
    parents = {p for node_dir in node_dirs for p in created_dirs(node_dir)} - subtree
    deadline = time.monotonic() + timeout
    while stuck := _rmdir_deepest_first(subtree):
        if time.monotonic() >= deadline:
            break
        # A killed process's last thread may take seconds to finish exiting (I/O in flight, say); whatever still
        # lives in a stuck cgroup is killed again.
        kill_all(stuck, timeout=0.5)
        subtree = set(stuck)
        time.sleep(0.5)
    return stuck + _rmdir_deepest_first(parents)


def _rmdir_deepest_first(dirs: set[Path]) -> list[Path]:
    stuck = []
    for path in sorted(dirs, key=lambda p: -len(p.parts)):
        try:
            path.rmdir()
        except FileNotFoundError:
            pass
        except OSError:
            stuck.append(path)
    return stuck
