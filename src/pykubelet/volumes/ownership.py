"""fsGroup: give a volume's files to the pod's group, as upstream's SetVolumeOwnership.

Every entry under the volume gets group `fs_group` (symlinks themselves, not their targets); files and
directories other than symlinks get group read (and write, unless the volume is read-only) added to their
mode, directories also group/owner execute and the setgid bit, so that new files inherit the group.
With `fsGroupChangePolicy: OnRootMismatch` nothing is walked when the volume's root already has that group
and those bits.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

RW_MASK = 0o660
RO_MASK = 0o440
EXEC_MASK = 0o110


def fs_group(pod: dict) -> int | None:
    value = ((pod.get("spec") or {}).get("securityContext") or {}).get("fsGroup")
    return None if value is None else int(value)


def change_policy(pod: dict) -> str | None:
    return ((pod.get("spec") or {}).get("securityContext") or {}).get("fsGroupChangePolicy")


def fs_user(pod: dict) -> int | None:
    """The one user every container of the pod runs as, if they agree (upstream's FsUserFrom), else None."""
    spec = pod.get("spec") or {}
    pod_user = (spec.get("securityContext") or {}).get("runAsUser")
    users = set()
    for key in ("initContainers", "containers"):
        for container in spec.get(key) or []:
            user = (container.get("securityContext") or {}).get("runAsUser", pod_user)
            if user is None:
                return None
            users.add(int(user))
    return users.pop() if len(users) == 1 else None


def _change(path: str, group: int, read_only: bool, info: os.stat_result) -> None:
    try:
        os.lchown(path, -1, group)
    except OSError:
        pass  # as upstream: logged there, not fatal
    if stat.S_ISLNK(info.st_mode):
        return
    mask = RO_MASK if read_only else RW_MASK
    if stat.S_ISDIR(info.st_mode):
        mask |= stat.S_ISGID | EXEC_MASK
    try:
        os.chmod(path, stat.S_IMODE(info.st_mode) | mask)
    except OSError:
        pass


def needs_change(root: Path, group: int, read_only: bool) -> bool:
    """OnRootMismatch: does the volume's root lack the group or the bits?"""
    try:
        info = os.stat(root)
    except OSError:
        return True
    if info.st_gid != group or not stat.S_ISDIR(info.st_mode):
        return True
    wanted = (RO_MASK if read_only else RW_MASK) | EXEC_MASK
    return (stat.S_IMODE(info.st_mode) & wanted) != wanted or not info.st_mode & stat.S_ISGID


def apply(root: Path, group: int | None, *, read_only: bool = False, policy: str | None = None) -> int:
    """Give `root` and everything under it to `group`; returns how many entries were changed."""
    if group is None:
        return 0
    if policy == "OnRootMismatch" and not needs_change(root, group, read_only):
        return 0
    count = 0
    for directory, dirs, files in os.walk(root, topdown=False):
        for name in files + dirs:
            path = os.path.join(directory, name)
            try:
                info = os.lstat(path)
            except OSError:
                continue
            _change(path, group, read_only, info)
            count += 1
    _change(str(root), group, read_only, os.lstat(root))
    return count + 1
