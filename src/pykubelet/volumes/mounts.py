"""mount(2) and umount2(2) for the volumes pykubelet mounts itself: tmpfs and read-only-safe bind mounts.

Called through libc (no `mount` process per volume). The kubelet and the runtime share a mount namespace,
so what is mounted here is what containerd bind-mounts into containers.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

MS_BIND = 0x1000
MS_REC = 0x4000
MS_SHARED = 1 << 20
MNT_DETACH = 0x2

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def mount_tmpfs(target: Path, size: int | None = None) -> None:
    options = f"size={size}" if size else ""
    _check(_libc.mount(b"tmpfs", os.fsencode(target), b"tmpfs", 0, options.encode() or None),
           f"mount -t tmpfs {'-o ' + options + ' ' if options else ''}tmpfs {target}")


def bind(source: str | Path, target: Path, recursive: bool = True) -> None:
    flags = MS_BIND | (MS_REC if recursive else 0)
    _check(_libc.mount(os.fsencode(source), os.fsencode(target), None, flags, None),
           f"mount --{'r' if recursive else ''}bind {source} {target}")


def make_rshared(path: Path) -> None:
    """Make `path` a shared mount (bound onto itself first if it is not a mount point), as the upstream kubelet
    makes its root directory: mounts under it then propagate to containers that ask for HostToContainer."""
    if path not in mounts_under(path):
        bind(path, path)
    _check(_libc.mount(None, os.fsencode(path), None, MS_SHARED | MS_REC, None), f"mount --make-rshared {path}")


def unmount(target: Path) -> None:
    """Unmount `target`; a busy mount is detached instead (it goes once the last user lets go)."""
    path = os.fsencode(target)
    if _libc.umount2(path, 0) != 0:
        _check(_libc.umount2(path, MNT_DETACH), f"umount {target}")


def _unescape(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def mounts_under(path: Path) -> list[Path]:
    """Mount points at or below `path`, deepest first (the order to unmount them in)."""
    prefix = str(path).rstrip("/")
    found = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        point = _unescape(line.split()[4])
        if point == prefix or point.startswith(prefix + "/"):
            found.append(Path(point))
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


def is_tmpfs_mounted(path: Path) -> bool:
    """Is a filesystem (our tmpfs) mounted at `path`? (Its device differs from its parent's.)"""
    return os.path.ismount(path)


def unmount_all(path: Path) -> list[str]:
    """Unmount everything at or below `path`; returns the errors (as text) of those that would not go."""
    errors = []
    for point in mounts_under(path):
        try:
            unmount(point)
        except OSError as err:
            errors.append(str(err))
    return errors
