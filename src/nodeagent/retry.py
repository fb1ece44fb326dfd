"""Retry an async action with exponential back-off until it returns: the agents' loops that must not give up
(registration, TLS bootstrap, certificate requests, the kubelet API server) share this one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from .logs import Logger

T = TypeVar("T")


async def until_done(action: Callable[[], Awaitable[T]], log: Logger, message: str, *, initial: float = 1.0,
                     maximum: float = 60.0, **fields) -> T:
    """The result of the first `action()` that does not raise; each failure is logged as `message` with
    `fields`, the error and the wait, and the wait doubles from `initial` up to `maximum`.
    """
    delay = initial
    while True:
        try:
            return await action()
        except Exception as err:  # noqa: BLE001 - the caller's errors are all retried; cancellation is not
            log.error(message, **fields, err=err, retryIn=f"{delay:.1f}s")
            await asyncio.sleep(delay)
            delay = min(delay * 2, maximum)
