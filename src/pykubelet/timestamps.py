"""The API's time formats: RFC 3339 in whole seconds (Time) and with microseconds (MicroTime)."""

from __future__ import annotations

import datetime as dt

_SECONDS = "%Y-%m-%dT%H:%M:%SZ"


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime(_SECONDS)


def micro_now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def from_ns(ns: int) -> str | None:
    """A CRI timestamp (ns since the epoch) as an API Time; None for 0 (never happened)."""
    if not ns:
        return None
    return dt.datetime.fromtimestamp(ns / 1e9, dt.timezone.utc).strftime(_SECONDS)


def parse(text: str | None) -> float | None:
    """An API Time as seconds since the epoch."""
    if not text:
        return None
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
