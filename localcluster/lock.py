"""One user of the local cluster at a time: an exclusive lock beside its state directory.

A test session and a conformance run share the one cluster; whichever comes second waits, rather than have
one's `down` or proxy mode switch pull the cluster from under the other. The lock file names its holder.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from .settings import Cluster


def path(cluster: Cluster) -> Path:
    return cluster.state.with_name(cluster.state.name + ".lock")


@contextlib.contextmanager
def holding(cluster: Cluster, holder: str) -> Iterator[Path]:
    """Hold the cluster's lock for the block, waiting (and saying so) while someone else holds it."""
    lock_path = path(cluster)
    with open(lock_path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            print(f"[localcluster] waiting for {lock.read().strip() or 'another user'} to release {lock_path}",
                  file=sys.stderr, flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        lock.seek(0)
        lock.truncate()
        lock.write(f"{holder} (pid {os.getpid()})\n")
        lock.flush()
        yield lock_path
