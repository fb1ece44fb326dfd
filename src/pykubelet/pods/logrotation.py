"""Container log rotation, as the upstream kubelet's container log manager does it.

Every `containerLogMonitorInterval` each running container's log is checked; one that reached
`containerLogMaxSize` is rotated: leftovers of an interrupted rotation are removed, old rotated
files beyond `containerLogMaxFiles - 2` deleted (oldest first, so a reader of a newer one is
not cut off), the previous rotated file gzipped (through a ``.tmp`` file, then renamed), and the
live file renamed to ``<log>.<YYYYMMDD-hhmmss>`` before CRI `ReopenContainerLog` makes the
runtime open a new one. A reopen that fails renames the file back, to be tried next round.
`containerLogMaxWorkers` containers are handled at once; compression runs in a thread.

The log path is the one pykubelet gave the container (runtime_config: the pod's log directory,
``<name>/<attempt>.log``), read from the container's labels, so a round costs no CRI call for a
log that is below the limit.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from cri import CRIError, api
from nodeagent import logs

from .podstate import POD_NAME, POD_NAMESPACE, POD_UID, Container
from .runtime_config import pod_log_directory

log = logs.get(__name__)

TIMESTAMP_FORMAT = "%Y%m%d-%H%M%S"
COMPRESS_SUFFIX = ".gz"
TMP_SUFFIX = ".tmp"
LOG_ROOT = Path("/var/log/pods")


def log_path(record: Container, log_root: Path = LOG_ROOT) -> Path | None:
    """Where pykubelet told the runtime to write this container's log; None for a container not ours."""
    labels = record.labels
    if POD_UID not in labels:
        return None
    pod = {"metadata": {"namespace": labels.get(POD_NAMESPACE, ""), "name": labels.get(POD_NAME, ""),
                        "uid": labels[POD_UID]}}
    return pod_log_directory(pod, log_root) / record.name / f"{record.attempt}.log"


def rotated_files(path: Path) -> list[Path]:
    """The rotated (and temporary) files of a log, oldest first: their names sort by time."""
    try:
        names = os.listdir(path.parent)
    except OSError:
        return []
    prefix = path.name + "."
    return [path.parent / n for n in sorted(names) if n.startswith(prefix)]


def clean(path: Path) -> None:
    """Remove a container's log and every rotated file of it (the container was removed)."""
    for file in [path, *rotated_files(path)]:
        try:
            file.unlink()
        except FileNotFoundError:
            pass
        except OSError as err:
            log.warning("Failed to remove container log", path=str(file), err=str(err))


def prepare(path: Path, max_files: int) -> None:
    """Everything before the rename: drop leftovers, keep at most max_files-2 rotated files, gzip the rest."""
    files = rotated_files(path)
    names = {f.name for f in files}
    kept = []
    for file in files:
        unused = file.name.endswith(TMP_SUFFIX) or (
            not file.name.endswith(COMPRESS_SUFFIX) and file.name + COMPRESS_SUFFIX in names)
        if unused:
            file.unlink(missing_ok=True)
        else:
            kept.append(file)
    excess = len(kept) - max(max_files - 2, 0)
    for file in kept[:max(excess, 0)]:
        file.unlink(missing_ok=True)
    for file in kept[max(excess, 0):]:
        if not file.name.endswith(COMPRESS_SUFFIX):
            compress(file)


def compress(file: Path) -> None:
    tmp = file.with_name(file.name + TMP_SUFFIX)
    with open(file, "rb") as source, gzip.open(tmp, "wb") as target:
        shutil.copyfileobj(source, target, 1 << 20)
    tmp.rename(file.with_name(file.name + COMPRESS_SUFFIX))
    file.unlink()


class LogRotation:
    """`running()` gives the running containers (the PLEG's view)."""

    def __init__(self, cri, running: Callable[[], list[Container]], *, max_size: int, max_files: int,
                 workers: int = 1, interval: float = 10.0, log_root: Path = LOG_ROOT,
                 clock: Callable[[], float] = time.time):
        self.cri = cri
        self.running = running
        self.max_size = max_size
        self.max_files = max_files
        self.workers = max(workers, 1)
        self.interval = interval
        self.log_root = log_root
        self.clock = clock

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.rotate_all()
            except Exception as err:  # a bad round must not end rotation for good
                log.error("Container log rotation round failed", err=str(err))

    async def rotate_all(self) -> None:
        queue: asyncio.Queue = asyncio.Queue()
        for record in self.running():
            path = log_path(record, self.log_root)
            if path is not None:
                queue.put_nowait((record.id, path))

        async def worker() -> None:
            while not queue.empty():
                cid, path = queue.get_nowait()
                await self.rotate_if_needed(cid, path)

        await asyncio.gather(*(worker() for _ in range(min(self.workers, queue.qsize()))))

    async def rotate_if_needed(self, cid: str, path: Path) -> bool:
        """Rotate the container's log if it reached the limit; True when it was rotated."""
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            # Removed behind the runtime's back: have it open a new file, as upstream does.
            try:
                await self.cri.reopen_container_log(api.ReopenContainerLogRequest(container_id=cid))
            except CRIError as err:
                log.error("Container log doesn't exist, reopen container log failed", containerID=cid,
                          path=str(path), err=str(err))
            return False
        if size < self.max_size:
            return False
        try:
            await asyncio.to_thread(prepare, path, self.max_files)
        except OSError as err:
            log.error("Failed to rotate log for container", containerID=cid, path=str(path), err=str(err))
            return False
        stamp = time.strftime(TIMESTAMP_FORMAT, time.localtime(self.clock()))
        rotated = path.with_name(f"{path.name}.{stamp}")
        if rotated.exists():
            return False  # rotated already within this second; the next round will do it
        try:
            path.rename(rotated)
        except OSError as err:
            log.error("Failed to rotate log for container", containerID=cid, path=str(path), err=str(err))
            return False
        try:
            await self.cri.reopen_container_log(api.ReopenContainerLogRequest(container_id=cid))
        except CRIError as err:
            try:
                rotated.rename(path)  # so that the next round can try again
            except OSError as rename_err:
                log.error("Failed to rename rotated log", rotatedLog=str(rotated), newLog=str(path),
                          containerID=cid, err=str(rename_err))
            log.error("Failed to rotate log for container", containerID=cid, path=str(path), err=str(err))
            return False
        log.debug("Rotated container log", containerID=cid, path=str(path), size=size)
        return True
