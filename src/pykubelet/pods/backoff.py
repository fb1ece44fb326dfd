"""Exponential back-off per key: CrashLoopBackOff for containers, ImagePullBackOff for images.

As upstream: 10 s doubling to 5 min, measured from the failure; a key that has
been quiet for twice the maximum (10 min) starts over.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class _Entry:
    delay: float
    last: float  # when the last failure was recorded


class Backoff:
    def __init__(self, initial: float = 10.0, maximum: float = 300.0, clock=time.time):
        self.initial = initial
        self.maximum = maximum
        self.clock = clock
        self._entries: dict[object, _Entry] = {}

    def _entry(self, key) -> _Entry | None:
        entry = self._entries.get(key)
        if entry and self.clock() - entry.last > 2 * self.maximum:
            del self._entries[key]
            return None
        return entry

    def remaining(self, key, since: float | None = None) -> float:
        """Seconds still to wait after the failure at `since` (default: the last recorded one); 0 if none."""
        entry = self._entry(key)
        if entry is None:
            return 0.0
        start = entry.last if since is None else since
        return max(0.0, start + entry.delay - self.clock())

    def delay(self, key) -> float:
        """The current back-off period of `key` (0 if it has none)."""
        entry = self._entry(key)
        return entry.delay if entry else 0.0

    def failed(self, key, at: float | None = None) -> float:
        """Record a failure (or a restart after one); returns the new delay."""
        entry = self._entry(key)
        delay = self.initial if entry is None else min(entry.delay * 2, self.maximum)
        self._entries[key] = _Entry(delay, self.clock() if at is None else at)
        return delay

    def reset(self, key) -> None:
        self._entries.pop(key, None)

    def forget_prefix(self, prefix) -> None:
        """Drop every key that is a tuple starting with `prefix` (a pod's uid, say)."""
        for key in [k for k in self._entries if isinstance(k, tuple) and k[:1] == (prefix,)]:
            del self._entries[key]
