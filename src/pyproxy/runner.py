"""A bounded-frequency runner: run a sync when asked, but never more often than
`min_interval`, and at least every `max_interval` (upstream's BoundedFrequencyRunner).

Requests that arrive while a run is in progress or during the quiet period
coalesce into one later run, so a burst of changes costs one sync.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class BoundedFrequencyRunner:
    def __init__(self, fn: Callable[[], Awaitable[bool]], *, min_interval: float, max_interval: float,
                 retry_interval: float | None = None, clock: Callable[[], float] = time.monotonic):
        """`fn` returns True to ask for a retry, after `retry_interval` (default: min_interval, at least 1 s)."""
        self.fn = fn
        self.retry_interval = max(min_interval, 1.0) if retry_interval is None else retry_interval
        self.min_interval = min_interval
        self.max_interval = max_interval
        self.clock = clock
        self._wanted = asyncio.Event()
        self.runs = 0

    def request(self) -> None:
        """Ask for a run as soon as the minimum interval allows."""
        self._wanted.set()

    async def loop(self) -> None:
        last = float("-inf")
        while True:
            until_periodic = last + self.max_interval - self.clock()
            if until_periodic > 0 and not self._wanted.is_set():
                try:
                    await asyncio.wait_for(self._wanted.wait(), until_periodic)
                except asyncio.TimeoutError:
                    pass
            quiet = last + self.min_interval - self.clock()
            if quiet > 0:
                await asyncio.sleep(quiet)
            self._wanted.clear()
            last = self.clock()
            self.runs += 1
            if await self.fn():
                asyncio.get_running_loop().call_later(self.retry_interval, self.request)
