"""The SIGUSR2 memory dump: RSS always; with tracing, the sites that hold memory and how they changed."""

from __future__ import annotations

import logging
import tracemalloc

from nodeagent.memdump import MemoryDumps


def lines(caplog, message: str) -> list[dict]:
    return [r.kv for r in caplog.records if r.getMessage() == message]


def test_without_tracing_only_the_rss_is_logged(caplog):
    caplog.set_level(logging.INFO)
    MemoryDumps().dump()
    [memory] = lines(caplog, "Memory")
    assert memory["rssMiB"] > 1 and "PYTHONTRACEMALLOC" in memory["tracing"]


def test_with_tracing_the_second_dump_shows_what_grew(caplog):
    caplog.set_level(logging.INFO)
    dumps = MemoryDumps(top=5)
    tracemalloc.start()
    try:
        dumps.dump()
        kept = [bytearray(4096) for _ in range(512)]  # 2 MiB held at this line
        caplog.clear()
        dumps.dump()
    finally:
        tracemalloc.stop()
    top = lines(caplog, "Memory held")[0]
    assert "test_memdump.py" in top["at"] and top["changeKiB"] >= 2048 and top["changeBlocks"] >= 512, top
    assert len(kept) == 512


def test_the_allocators_account_for_small_python_objects_and_for_malloc():
    from nodeagent.memdump import allocators

    before = allocators()
    kept = [str(i) * 3 for i in range(200_000)]  # small objects: pymalloc's
    after = allocators()
    assert after["pymallocUsedMiB"] - before["pymallocUsedMiB"] > 8 * 2**20
    assert after["pymallocArenasMiB"] >= after["pymallocUsedMiB"]
    assert after["mallocHeapMiB"] >= after["mallocUsedMiB"] > 0  # glibc's own figures
    assert len(kept) == 200_000
