"""A volumeMount's subPath: `subPathExpr` expanded from the container's environment, then checked.

As upstream's makeMounts: a `$(VAR)` whose variable is unset or empty, an absolute path or a `..` step
is refused with upstream's message (the container waits in CreateContainerConfigError), and the path,
symlinks resolved, must stay inside the volume; a subPath that does not exist yet is created as a
directory.

The container does not get the path itself: the checked file is opened step by step without following a
symlink, and what was opened is bind-mounted (through /proc/self/fd) at
<pod dir>/volume-subpaths/<volume>/<container>/<mount index>, so that a symlink swapped in after the check
cannot lead the mount out of the volume (the CVE-2017-1002101 class). A bind that still holds the same file
is reused when the container restarts; one whose file changed (an AtomicWriter volume that was updated) is
bound again, as upstream does — a running container keeps what it saw.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from ..pods.envvars import config_problem, expand_with
from . import mounts


def subpath(mount: Mapping, env: Mapping[str, str]) -> str:
    """The mount's subPath ('' for none) with subPathExpr expanded; ConfigProblem when it is not allowed."""
    path = mount.get("subPath") or ""
    expression = mount.get("subPathExpr")
    if expression:
        missing: set[str] = set()

        def lookup(name: str) -> str:
            value = env.get(name) or ""
            if not value:
                missing.add(name)
            return value

        path = expand_with(expression, lookup)
        if missing:
            raise config_problem(f"missing value for {', '.join(sorted(missing))}")
    if path:
        if path.startswith("/"):
            raise config_problem(f"error SubPath `{path}` must not be an absolute path")
        if ".." in path.split("/"):
            raise config_problem(f"unable to provision SubPath `{path}`: must not contain '..'")
    return path


def prepare(volume_path: Path, path: str, mount_name: str, container_name: str) -> Path:
    """The host path of `path` inside the volume, created as a directory if missing; ConfigProblem if it
    leads out of the volume through a symlink."""
    volume = Path(os.path.realpath(volume_path))
    target = Path(os.path.realpath(volume / path))
    if target != volume and volume not in target.parents:
        raise config_problem(f'failed to prepare subPath for volumeMount "{mount_name}" of container "{container_name}"')
    if not target.exists():
        mode = volume.stat().st_mode & 0o7777
        target.mkdir(parents=True)
        target.chmod(mode)
    return target


def _open_within(volume: Path, target: Path) -> int:
    """An O_PATH descriptor of `target`, opened one component at a time from `volume` without following a
    symlink; OSError if a step is a symlink or missing."""
    fd = os.open(volume, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        for part in target.relative_to(volume).parts:
            child = os.open(part, os.O_PATH | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = child
            if stat.S_ISLNK(os.fstat(fd).st_mode):
                raise OSError(f"{target} is an unsupported symlink")
        return fd
    except BaseException:
        os.close(fd)
        raise


def _bound(bind_target: Path, fd: int) -> bool:
    """Is `bind_target` already a mount of the file behind `fd`?"""
    if bind_target not in mounts.mounts_under(bind_target):
        return False
    try:
        here, there = os.stat(bind_target), os.fstat(fd)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def bind(volume_path: Path, path: str, bind_target: Path, mount_name: str, container_name: str) -> Path:
    """Check `path` inside the volume (prepare), then bind what it names at `bind_target`; returns that."""
    target = prepare(volume_path, path, mount_name, container_name)
    volume = Path(os.path.realpath(volume_path))
    try:
        fd = _open_within(volume, target)
    except OSError as err:
        raise config_problem(f'failed to prepare subPath for volumeMount "{mount_name}" of container '
                             f'"{container_name}": {err}') from None
    try:
        if _bound(bind_target, fd):
            return bind_target
        if bind_target in mounts.mounts_under(bind_target):
            mounts.unmount(bind_target)
        bind_target.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            bind_target.mkdir(mode=0o750, exist_ok=True)
        elif not bind_target.exists():
            bind_target.touch(mode=0o640)
        mounts.bind(f"/proc/self/fd/{fd}", bind_target, recursive=False)
    except OSError as err:
        with contextlib.suppress(OSError):
            if bind_target not in mounts.mounts_under(bind_target):
                bind_target.rmdir() if bind_target.is_dir() else bind_target.unlink()
        raise config_problem(f'failed to prepare subPath for volumeMount "{mount_name}" of container '
                             f'"{container_name}": {err}') from None
    finally:
        os.close(fd)
    return bind_target
