"""Where an agent's memory goes, for leak hunts: started with PYTHONTRACEMALLOC=1 (Python traces every
allocation from start-up), the agent logs on SIGUSR2 the allocation sites holding the most memory and how each
changed since the previous dump. Without tracing the signal only logs the process's RSS. Tracing slows the
agent and costs memory of its own: a diagnosis tool, not for production."""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import sys
import tempfile
import tracemalloc

import psutil

from . import logs

log = logs.get(__name__)

TOP = 25


class MemoryDumps:
    def __init__(self, top: int = TOP):
        self.top = top
        self.previous: tracemalloc.Snapshot | None = None

    def dump(self) -> None:
        rss = psutil.Process().memory_info().rss
        log.info("Memory allocators", **{k: round(v / 2**20, 1) for k, v in allocators().items()})
        if not tracemalloc.is_tracing():
            log.info("Memory", rssMiB=round(rss / 2**20, 1), tracing="off (start with PYTHONTRACEMALLOC=1)")
            return
        snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        traced = sum(stat.size for stat in snapshot.statistics("filename"))
        log.info("Memory", rssMiB=round(rss / 2**20, 1), tracedMiB=round(traced / 2**20, 1))
        if self.previous is None:
            for rank, stat in enumerate(snapshot.statistics("lineno")[:self.top], 1):
                log.info("Memory held", rank=rank, KiB=stat.size // 1024, blocks=stat.count,
                         at=str(stat.traceback[0]))
        else:
            for rank, diff in enumerate(snapshot.compare_to(self.previous, "lineno")[:self.top], 1):
                log.info("Memory held", rank=rank, KiB=diff.size // 1024, changeKiB=diff.size_diff // 1024,
                         blocks=diff.count, changeBlocks=diff.count_diff, at=str(diff.traceback[0]))
        self.previous = snapshot


def allocators() -> dict[str, int]:
    """Where the heap is, in bytes: Python's small-object allocator (its arenas, the bytes of live blocks in
    them, the free ones) and glibc malloc (its heap, in use and free in it, and mmapped blocks) — RSS that grows
    while the traced Python memory does not is one of these keeping freed memory, or C code (protobuf's upb
    arenas, OpenSSL) allocating beside Python."""
    found: dict[str, int] = {}
    with tempfile.TemporaryFile() as out:
        saved = os.dup(2)
        try:
            os.dup2(out.fileno(), 2)
            sys._debugmallocstats()  # writes to the C stderr
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        text = out.read().decode(errors="replace")
    figures = {"# arenas allocated current": "pymallocArenas", "# bytes in allocated blocks": "pymallocUsed",
               "# bytes in available blocks": "pymallocFreeBlocks"}
    for line in text.splitlines():
        name, _, value = line.partition("=")
        if name.strip() in figures and value.strip().replace(",", "").isdigit():
            found[figures[name.strip()]] = int(value.strip().replace(",", ""))
    if "pymallocArenas" in found:
        found["pymallocArenas"] *= _ARENA_SIZE
    info = _mallinfo2()
    if info is not None:
        found.update(mallocHeap=info.arena, mallocUsed=info.uordblks, mallocFree=info.fordblks,
                     mallocMmapped=info.hblkhd)
    return {f"{k}MiB": v for k, v in found.items()}


_ARENA_SIZE = 1 << 20  # pymalloc's arena since Python 3.10


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]


def _mallinfo2():
    try:
        function = ctypes.CDLL(None).mallinfo2  # glibc 2.33 and later
    except (OSError, AttributeError):
        return None
    function.restype = _Mallinfo2
    return function()


def install(loop: asyncio.AbstractEventLoop) -> MemoryDumps:
    """Log a memory dump on each SIGUSR2."""
    dumps = MemoryDumps()
    loop.add_signal_handler(signal.SIGUSR2, dumps.dump)
    return dumps
