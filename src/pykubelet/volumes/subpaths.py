"""A volumeMount's subPath: `subPathExpr` expanded from the container's environment, then checked.

As upstream's makeMounts: a `$(VAR)` whose variable is unset or empty, an absolute path or a `..` step
is refused with upstream's message (the container waits in CreateContainerConfigError), and the path,
symlinks resolved, must stay inside the volume; a subPath that does not exist yet is created as a
directory. Upstream also closes the race between that check and the mount by bind-mounting an opened file
descriptor; that part belongs to the volume manager and is not done here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from ..envvars import config_problem, expand_with


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
