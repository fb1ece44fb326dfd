"""Run pynode's agents (pykubelet, pyproxy) as daemons of a local node.

They run inside the node's network namespace and cgroup, like its containerd,
log to logs/<program>-<node>.log, and are stopped by `down` with the rest.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from . import cgroups, procs
from .settings import Node

PROGRAMS = ("pykubelet", "pyproxy")


@dataclass
class Agent:
    node: Node
    program: str
    pid: int

    @property
    def name(self) -> str:
        return f"{self.program}-{self.node.name}"

    @property
    def log(self) -> Path:
        return procs.log_path(self.node.cluster, self.name)

    def running(self) -> bool:
        return procs.running(self.node.cluster, self.name) == self.pid

    def stop(self, grace: float = 10) -> None:
        procs.stop(self.node.cluster, self.name, grace)


def executable(program: str) -> str:
    """The console script next to the running interpreter (the virtualenv's), else on PATH."""
    beside = Path(sys.executable).parent / program
    found = str(beside) if beside.exists() else shutil.which(program)
    if not found:
        raise procs.UpError(f"{program}: not installed (run `make venv`)")
    return found


def start(node: Node, program: str, *flags: str) -> Agent:
    if program not in PROGRAMS:
        raise ValueError(f"unknown agent {program!r}; expected one of {PROGRAMS}")
    name = f"{program}-{node.name}"
    if procs.running(node.cluster, name):
        raise procs.UpError(f"{name} is already running")
    pid = procs.start(node.cluster, name, [executable(program), *flags], netns=node.netns,
                      cgroup_procs=tuple(d / "cgroup.procs" for d in cgroups.recorded_dirs(node.dir)))
    return Agent(node, program, pid)
