"""A cgroup per local node, so that `down` can find every process the node started.

The node's containerd joins `<own cgroup>/pynode/<node>` in every mounted
hierarchy; its shims inherit that, and runc puts containers whose cgroup
parent is relative below it. We nest under the cgroup we already run in (never
escaping a limit somebody set on us), so the absolute directories differ from
machine to machine: they are recorded next to the node's state.
"""

from __future__ import annotations

import os
from pathlib import Path


def _hierarchies() -> list[Path]:
    """For each mounted cgroup hierarchy, the directory of the cgroup this process is in."""
    own: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for c in (controllers.split(",") if controllers else [""]):
            own[c] = path
    dirs = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fstype, _, options = right.split()[:3]
        mountpoint, root = left.split()[4], left.split()[3]
        if fstype == "cgroup2":
            key = ""
        elif fstype == "cgroup":
            names = [o for o in options.split(",") if o not in ("rw", "ro") and not o.startswith(("relatime", "no"))]
            key = next((n for n in names if n in own), None) or ",".join(names)
        else:
            continue
        path = own.get(key)
        if path is None:
            continue
        relative = os.path.relpath(path, root) if path.startswith(root) else path
        dirs.append(Path(mountpoint) / relative.lstrip("./") if relative != "." else Path(mountpoint))
    return dirs


def ensure(name: str, record: Path) -> tuple[Path, ...]:
    """Create cgroup `name` below our own in every hierarchy; return the cgroup.procs files to join."""
    created = []
    for parent in _hierarchies():
        path = parent / name
        path.mkdir(parents=True, exist_ok=True)
        if (path / "cpuset.cpus").exists():
            _inherit_cpuset(parent, path)
        created.append(path)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text("".join(f"{p}\n" for p in created))
    return tuple(p / "cgroup.procs" for p in created)


def _inherit_cpuset(top: Path, leaf: Path) -> None:
    """cgroup v1 cpusets start empty; give each new level its parent's cpus and mems."""
    chain = []
    node = leaf
    while node != top:
        chain.append(node)
        node = node.parent
    for level in reversed(chain):
        for knob in ("cpuset.cpus", "cpuset.mems"):
            if not (level / knob).read_text().strip():
                (level / knob).write_text((level.parent / knob).read_text().strip())


def recorded(record: Path) -> list[Path]:
    try:
        return [Path(line) for line in record.read_text().split()]
    except OSError:
        return []


def pids(dirs: list[Path]) -> set[int]:
    """Every process in these cgroups and their descendants."""
    found: set[int] = set()
    for top in dirs:
        for procs in top.rglob("cgroup.procs") if top.is_dir() else ():
            try:
                found.update(int(p) for p in procs.read_text().split())
            except OSError:
                pass
    return found


def remove(dirs: list[Path]) -> list[Path]:
    """rmdir the cgroups bottom-up, and the empty `pynode` parents; return those that would not go."""
    stuck = []
    for top in dirs:
        if not top.is_dir():
            continue
        for path in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)) + [top]:
            try:
                path.rmdir()
            except OSError:
                stuck.append(path)
        try:
            top.parent.rmdir()  # the shared `pynode` level, once no node is left in it
        except OSError:
            pass
    return stuck
