"""Image garbage collection, as upstream's image GC manager (pkg/kubelet/images).

Every five minutes (and once at start) the runtime's images are listed and each is remembered with when it was
first seen and last used by a container (running or exited; pinned images, such as the sandbox image, never go).
Then, in upstream's order:

- `imageMaximumGCAge` (when not 0, and once the kubelet has run that long): every unused image whose last use
  (or, never used, the kubelet's start) is older than that is removed, whatever the disk usage;
- when the image filesystem is `imageGCHighThresholdPercent` full or more, unused images go, least recently used
  first, until it would be down to `imageGCLowThresholdPercent`; an image first seen less than
  `imageMinimumGCAge` ago, or in use at this very look, stays. Not enough freed: a `FreeDiskSpaceFailed` Warning
  on the node.

A round that fails twice in a row is an `ImageGCFailed` Warning. The eviction manager calls `delete_unused` to
reclaim disk before it evicts a pod for nodefs/imagefs pressure. High 100 with no maximum age turns it all off.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

from cri import CRIError, api
from nodeagent import logs

log = logs.get(__name__)

GC_PERIOD = 300.0  # upstream's ImageGCPeriod


class ImageGCError(Exception):
    pass


@dataclass
class ImageRecord:
    first_detected: float
    last_used: float = 0.0  # 0: not used by a container since the kubelet started
    size: int = 0
    pinned: bool = False


def format_size(size: int) -> str:
    """Upstream's formatSize: 512 B, 1.5 KiB, 20.0 GiB."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


class ImageGC:
    def __init__(self, cri, image_fs: Callable[[], Awaitable[dict | None]], *, high_percent: int, low_percent: int,
                 min_age: float, max_age: float, node_event: Callable[[str, str, str], None] | None = None,
                 collected=None, clock: Callable[[], float] = time.time):
        self.cri = cri
        self.image_fs = image_fs  # the summary's node.runtime.imageFs: capacityBytes, availableBytes
        self.high, self.low = high_percent, low_percent
        self.min_age, self.max_age = min_age, max_age
        self.node_event = node_event
        self.collected = collected  # kubelet_image_garbage_collected_total{reason}
        self.clock = clock
        self.began = clock()
        self.records: dict[str, ImageRecord] = {}

    @property
    def enabled(self) -> bool:
        return self.high < 100 or self.max_age > 0

    async def _detect(self, now: float) -> set[str]:
        """Refresh the records from the runtime; the image IDs some container (in any state) uses."""
        images = (await self.cri.list_images(api.ListImagesRequest())).images
        containers = (await self.cri.list_containers(api.ListContainersRequest())).containers
        in_use = {c.image_ref for c in containers if c.image_ref} | {c.image_id for c in containers if c.image_id}
        current = set()
        for image in images:
            current.add(image.id)
            record = self.records.setdefault(image.id, ImageRecord(first_detected=now))
            if image.id in in_use:
                record.last_used = now
            record.size, record.pinned = image.size, image.pinned
        for gone in set(self.records) - current:
            del self.records[gone]
        return in_use

    async def _candidates(self, now: float) -> list[tuple[str, ImageRecord]]:
        """Unused, unpinned images, least recently used first (ties: first seen first)."""
        in_use = await self._detect(now)
        unused = [(image_id, record) for image_id, record in self.records.items()
                  if image_id not in in_use and not record.pinned]
        return sorted(unused, key=lambda item: (item[1].last_used, item[1].first_detected))

    async def _remove(self, image_id: str, record: ImageRecord, reason: str) -> None:
        log.info("Removing image to free bytes", imageID=image_id, size=record.size)
        await self.cri.remove_image(api.RemoveImageRequest(image=api.ImageSpec(image=image_id)))
        self.records.pop(image_id, None)
        if self.collected is not None:
            self.collected.labels(reason).inc()

    async def _free_space(self, wanted: float, now: float, candidates: list[tuple[str, ImageRecord]]) -> int:
        """Remove candidates until `wanted` bytes are freed; returns the bytes freed. ImageGCError if a removal
        failed (after trying the rest)."""
        freed, errors = 0, []
        for image_id, record in candidates:
            if record.last_used >= now or now - record.first_detected < self.min_age:
                continue
            try:
                await self._remove(image_id, record, "space")
            except CRIError as err:
                errors.append(f"{image_id}: {err}")
                continue
            freed += record.size
            if freed >= wanted:
                break
        if errors:
            raise ImageGCError(f"wanted to free {wanted} bytes, but freed {freed} bytes space with errors in image "
                               f"deletion: {'; '.join(errors)}")
        return freed

    async def _free_old(self, now: float, candidates: list[tuple[str, ImageRecord]]) -> list[tuple[str, ImageRecord]]:
        if not self.max_age or now - self.began <= self.max_age:
            return candidates
        left, errors = [], []
        for image_id, record in candidates:
            if now - record.last_used > self.max_age:
                try:
                    await self._remove(image_id, record, "age")
                    continue
                except CRIError as err:
                    errors.append(f"{image_id}: {err}")
            left.append((image_id, record))
        if errors:
            raise ImageGCError(f"wanted to free images older than {self.max_age:g}s, encountered errors in image "
                               f"deletion: {'; '.join(errors)}")
        return left

    async def collect(self) -> None:
        """One round (upstream's GarbageCollect); ImageGCError when it could not do what the policy asks."""
        now = self.clock()
        candidates = await self._free_old(now, await self._candidates(now))
        if self.high >= 100:
            return
        fs = await self.image_fs() or {}
        capacity, available = int(fs.get("capacityBytes") or 0), int(fs.get("availableBytes") or 0)
        if capacity == 0:
            message = "invalid capacity 0 on image filesystem"
            if self.node_event is not None:
                self.node_event("Warning", "InvalidDiskCapacity", message)
            raise ImageGCError(message)
        available = min(available, capacity)
        usage = 100 - available * 100 // capacity
        if usage < self.high:
            return
        wanted = capacity * (100 - self.low) // 100 - available
        log.info("Disk usage on image filesystem is over the high threshold, trying to free bytes down to the low "
                 "threshold", usage=usage, highThreshold=self.high, amountToFree=wanted, lowThreshold=self.low)
        freed = await self._free_space(wanted, now, candidates)
        if freed < wanted:
            message = (f"Insufficient free disk space on the node's image filesystem ({usage}% of "
                       f"{format_size(capacity)} used). Failed to free sufficient space by deleting unused images "
                       f"(freed {freed} bytes). Investigate disk usage, as it could be used by active images, logs, "
                       "volumes, or other data.")
            if self.node_event is not None:
                self.node_event("Warning", "FreeDiskSpaceFailed", message)
            raise ImageGCError(message)

    async def delete_unused(self) -> int:
        """Remove every unused image old enough (for the eviction manager's node-level reclaim); bytes freed."""
        log.info("Attempting to delete unused images")
        now = self.clock()
        return await self._free_space(float("inf"), now, await self._candidates(now))

    async def run(self, period: float = GC_PERIOD) -> None:
        if not self.enabled:
            log.info("imageGCHighThresholdPercent is 100 and imageMaximumGCAge is 0: image garbage collection is off")
            return
        failed_before = False
        while True:
            try:
                await self.collect()
                if failed_before:
                    log.info("Image garbage collection succeeded")
                failed_before = False
            except (ImageGCError, CRIError) as err:
                if failed_before:
                    log.error("Image garbage collection failed multiple times in a row", err=str(err))
                    if self.node_event is not None:
                        self.node_event("Warning", "ImageGCFailed", str(err))
                else:
                    log.warning("Image garbage collection failed once. Stats initialization may not have completed "
                                "yet", err=str(err))
                failed_before = True
            except Exception as err:  # noqa: BLE001 - a failed round is retried next period
                log.error("Image garbage collection failed", err=repr(err))
                failed_before = True
            await asyncio.sleep(period)
