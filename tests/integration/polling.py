"""Waiting in integration tests: poll a check until it gives something true, or fail saying what was awaited."""

from __future__ import annotations

import time


def eventually(check, timeout: float = 20.0, what: str = "the condition", interval: float = 0.3):
    """`check()`'s first true value within `timeout` seconds; AssertionError naming `what` and the last value."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
