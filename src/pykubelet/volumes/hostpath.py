"""hostPath volumes: a path of the node itself, checked against the volume's `type` with upstream's texts."""

from __future__ import annotations

import os
import stat
from pathlib import Path

_KINDS = {"Directory": (stat.S_ISDIR, "a directory"), "File": (stat.S_ISREG, "a file"),
          "Socket": (stat.S_ISSOCK, "a socket file"), "CharDevice": (stat.S_ISCHR, "a character device"),
          "BlockDevice": (stat.S_ISBLK, "a block device")}


def _is(path: Path, kind: str) -> bool:
    try:
        return _KINDS[kind][0](os.stat(path).st_mode)
    except OSError:
        return False


def check(path: Path, kind: str | None) -> None:
    """Raise ValueError (upstream's message) unless `path` is of `kind`; the *OrCreate kinds create it."""
    if not kind:
        return
    if kind == "DirectoryOrCreate":
        if not os.path.lexists(path):
            path.mkdir(mode=0o755, parents=True)
            return
        kind = "Directory"
    elif kind == "FileOrCreate":
        if not os.path.lexists(path):
            os.close(os.open(path, os.O_CREAT | os.O_RDONLY, 0o644))
            return
        kind = "File"
    if kind not in _KINDS:
        raise ValueError(f"{kind} is an invalid volume type")
    if not _is(path, kind):
        raise ValueError(f"hostPath type check failed: {path} is not {_KINDS[kind][1]}")
