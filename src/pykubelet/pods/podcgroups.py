"""The pod-level cgroup beyond what CRI sets: its pids limit, and its removal with the pod.

Upstream's pod container manager makes `kubepods[/burstable|/besteffort]/pod<uid>` itself, with
`pids.max = podPidsLimit` when that is positive, before the sandbox starts under it; runc only makes each
container's own cgroup below it, so the limit binds every process of the pod together (a fork bomb stops
there, not at the host's pid_max). When the pod is removed its cgroup goes too, in every hierarchy: left
behind, each empty pod cgroup keeps kernel memory for as long as the node runs.

cgroup v1: the `pids` hierarchy. cgroup v2: the unified one, where `pids` must also be enabled in each
ancestor's `cgroup.subtree_control` for `pids.max` to exist.
"""

from __future__ import annotations

import os
from pathlib import Path

from nodeagent import logs

from ..stats.cgroups import cgroup_dir, cgroup_mounts

log = logs.get(__name__)

QOS_TIERS = ("", "burstable/", "besteffort/")
MOUNT_OPTIONS = {"rw", "ro", "relatime", "nosuid", "nodev", "noexec", "clone_children"}  # not controllers


def mounts(mountinfo: str | None = None) -> tuple[list[tuple[Path, str, set[str]]], tuple[Path, str] | None]:
    """Every v1 hierarchy as (mount point, mount root, controllers), and the cgroup2 mount (or None)."""
    v1, unified, seen = [], None, set()
    for fstype, mountpoint, root, options in cgroup_mounts(mountinfo):
        if fstype == "cgroup2":
            unified = unified or (mountpoint, root)
            continue
        controllers = options - MOUNT_OPTIONS
        if frozenset(controllers) not in seen:  # the same hierarchy mounted twice
            seen.add(frozenset(controllers))
            v1.append((mountpoint, root, controllers))
    return v1, unified


class PodCgroups:
    def __init__(self, cgroup_root: str, pids_limit: int, mountinfo: str | None = None):
        self.root = "/" + (cgroup_root or "").strip("/")
        self.pids_limit = pids_limit  # podPidsLimit: > 0 sets pids.max; 0 or -1 leaves it unlimited
        self.v1, self.unified = mounts(mountinfo)

    def _pids_mount(self) -> tuple[Path, str] | None:
        for mountpoint, root, controllers in self.v1:
            if "pids" in controllers:
                return mountpoint, root
        return None

    def prepare(self, cgroup_parent: str) -> None:
        """Make the pod's cgroup with its pids limit, before its sandbox; OSError if the kernel refuses."""
        if self.pids_limit <= 0:
            return
        mount = self._pids_mount()
        if mount is None and self.unified is not None:
            self._enable_pids_v2(cgroup_parent)
            mount = self.unified
        if mount is None:
            log.warning("podPidsLimit is set but no cgroup hierarchy has the pids controller", limit=self.pids_limit)
            return
        directory = cgroup_dir(mount, cgroup_parent)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "pids.max").write_text(str(self.pids_limit))

    def _enable_pids_v2(self, cgroup_parent: str) -> None:
        """+pids in cgroup.subtree_control of every ancestor of the pod's cgroup, from the mount's root down."""
        assert self.unified is not None
        parts = cgroup_parent.strip("/").split("/")[:-1]
        for depth in range(len(parts) + 1):
            directory = cgroup_dir(self.unified, "/" + "/".join(parts[:depth]))
            directory.mkdir(exist_ok=True)
            control = directory / "cgroup.subtree_control"
            if "pids" not in control.read_text().split():
                control.write_text("+pids")

    def remove(self, uid: str) -> None:
        """Remove the pod's cgroup (whatever its QoS tier) from every hierarchy, deepest first; a cgroup that still
        holds processes or children stays (the kernel refuses), and is tried again at the next removal."""
        for tier in QOS_TIERS:
            path = f"{self.root.rstrip('/')}/kubepods/{tier}pod{uid}"
            for mountpoint, root, _ in self.v1:
                _remove_tree(cgroup_dir((mountpoint, root), path))
            if self.unified is not None:
                _remove_tree(cgroup_dir(self.unified, path))


def _remove_tree(directory: Path) -> None:
    if not directory.is_dir():
        return
    for below, _, _ in sorted(os.walk(directory), key=lambda entry: -len(entry[0])):
        try:
            os.rmdir(below)
        except OSError as err:
            log.debug("Pod cgroup not removed", path=below, err=err.strerror)
