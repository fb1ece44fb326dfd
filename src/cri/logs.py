"""Read and follow CRI container log files.

The runtime writes one line per chunk of container output::

    2016-10-06T00:17:09.669794202Z stdout F the line
    2016-10-06T00:17:09.669794202+02:00 stderr P first part of a long line

``F`` ends a line; ``P`` means the line continues in the next ``P``/``F`` entry
of the same stream. Lines we cannot parse are skipped. Rotation renames the
file (``0.log`` -> ``0.log.<time>``) and the runtime reopens ``0.log``;
:func:`follow_log` drains the old file and continues in the new one.
"""

from __future__ import annotations

import asyncio
import calendar
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO, NamedTuple

STDOUT = "stdout"
STDERR = "stderr"
STREAMS = (STDOUT, STDERR)
_STREAM_NAMES = {b"stdout": STDOUT, b"stderr": STDERR}
READ_CHUNK = 256 * 1024  # a followed file is read this much at a time, however large it is
TAIL_BATCH = 4096  # entries per batch of a tail, which is read whole

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TIMESTAMP = re.compile(
    rb"(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d\d):(\d\d))\Z"
)


def parse_timestamp(text: bytes | str) -> int:
    """RFC 3339 with up to nanoseconds (Go's RFC3339Nano) -> unix nanoseconds."""
    raw = text.encode() if isinstance(text, str) else text
    m = _TIMESTAMP.match(raw)
    if not m:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    seconds = calendar.timegm((year, month, day, hour, minute, second))
    if not m[8]:
        offset = (int(m[10]) * 60 + int(m[11])) * 60
        seconds -= offset if m[9] == b"+" else -offset
    return seconds * 1_000_000_000 + int((m[7] or b"0").ljust(9, b"0"))


def format_timestamp(ns: int) -> str:
    """Unix nanoseconds -> RFC 3339 in UTC with exactly nine fraction digits."""
    seconds, frac = divmod(ns, 1_000_000_000)
    return (_EPOCH + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:09d}Z"


def to_ns(value: datetime | int) -> int:
    """A datetime (naive means UTC) or unix nanoseconds -> unix nanoseconds."""
    if isinstance(value, int):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - _EPOCH) // timedelta(microseconds=1) * 1000


@dataclass(frozen=True, slots=True)
class LogLine:
    """One line of the file, as written by the runtime."""

    time_ns: int
    stream: str
    partial: bool
    content: bytes


class LogEntry(NamedTuple):
    """One line of container output; partial fragments already joined (a tuple: cheap to make,
    as `kubectl logs` makes one per line)."""

    time_ns: int  # of the line's first fragment
    stream: str
    content: bytes  # without the trailing newline
    partial: bool = False  # the line was never finished (only at the end of a read)

    @property
    def time(self) -> datetime:
        return _EPOCH + timedelta(microseconds=self.time_ns // 1000)

    @property
    def timestamp(self) -> str:
        return format_timestamp(self.time_ns)


def parse_line(line: bytes) -> LogLine:
    """Parse one line (with or without its newline); raises ValueError if malformed."""
    if line.endswith(b"\n"):
        line = line[:-1]
    parts = line.split(b" ", 3)
    if len(parts) < 3:
        raise ValueError(f"malformed CRI log line: {line[:80]!r}")
    stamp, stream, tags = parts[:3]
    if stream not in (b"stdout", b"stderr"):
        raise ValueError(f"unknown stream {stream!r} in CRI log line")
    tag = tags.split(b":", 1)[0]
    if tag not in (b"P", b"F"):
        raise ValueError(f"unknown tag {tags!r} in CRI log line")
    return LogLine(parse_timestamp(stamp), stream.decode(), tag == b"P", parts[3] if len(parts) == 4 else b"")


class LogParser:
    """Incremental parser: feed raw bytes, get finished entries (P fragments joined per stream)."""

    def __init__(self) -> None:
        self._rest = b""  # an unterminated line from the previous feed
        self._pending: dict[str, tuple[int, list[bytes]]] = {}
        self._seconds: dict[bytes, int] = {}  # "YYYY-MM-DDTHH:MM:SS" -> unix ns

    def feed(self, data: bytes) -> list[LogEntry]:
        lines = (self._rest + data).split(b"\n")
        self._rest = lines.pop()
        return [e for line in lines if (e := self._line(line)) is not None]

    def end_of_file(self) -> list[LogEntry]:
        """The file ends here: an unterminated last line counts as a line."""
        rest, self._rest = self._rest, b""
        entry = self._line(rest) if rest else None
        return [] if entry is None else [entry]

    def flush(self) -> list[LogEntry]:
        """End of input: also unfinished P fragments become partial entries."""
        out = self.end_of_file()
        for stream, (time_ns, parts) in self._pending.items():
            out.append(LogEntry(time_ns, stream, b"".join(parts), partial=True))
        self._pending.clear()
        return sorted(out, key=lambda e: e.time_ns)

    def reset(self) -> None:
        self._rest = b""
        self._pending.clear()

    def _line(self, raw: bytes) -> LogEntry | None:
        # The hot path of `kubectl logs`: parse_line's checks, without its LogLine, and each
        # second's timestamp prefix converted once (_timestamp_ns).
        parts = raw.split(b" ", 3)
        if len(parts) < 3:
            return None
        stream = _STREAM_NAMES.get(parts[1])
        tags = parts[2]
        if stream is None:
            return None
        if tags == b"F" or tags == b"P":
            partial = tags == b"P"
        else:
            tag = tags.split(b":", 1)[0]
            if tag not in (b"P", b"F"):
                return None
            partial = tag == b"P"
        time_ns = self._timestamp_ns(parts[0])
        if time_ns is None:
            return None
        content = parts[3] if len(parts) == 4 else b""
        pending = self._pending.get(stream)
        if partial:
            if pending is None:
                self._pending[stream] = (time_ns, [content])
            else:
                pending[1].append(content)
            return None
        if pending is None:
            return LogEntry(time_ns, stream, content)
        del self._pending[stream]
        return LogEntry(pending[0], stream, b"".join([*pending[1], content]))

    def _timestamp_ns(self, stamp: bytes) -> int | None:
        """parse_timestamp, with the common UTC nanosecond form's whole seconds cached."""
        if len(stamp) == 30 and stamp[19:20] == b"." and stamp[29:] == b"Z" and stamp[20:29].isdigit():
            prefix = stamp[:19]
            seconds = self._seconds.get(prefix)
            if seconds is None:
                try:
                    seconds = parse_timestamp(prefix + b"Z")
                except ValueError:
                    return None
                if len(self._seconds) > 64:
                    self._seconds.clear()
                self._seconds[prefix] = seconds
            return seconds + int(stamp[20:29])
        try:
            return parse_timestamp(stamp)
        except ValueError:
            return None


class _Filter:
    def __init__(self, stream: str | None, since: datetime | int | None):
        if stream not in (None, *STREAMS):
            raise ValueError(f"stream must be one of {STREAMS} or None, not {stream!r}")
        self.stream = stream
        self.since_ns = None if since is None else to_ns(since)

    def __call__(self, entry: LogEntry) -> bool:
        if self.stream is not None and entry.stream != self.stream:
            return False
        return self.since_ns is None or entry.time_ns >= self.since_ns


def _tail(entries: list[LogEntry], tail: int | None) -> list[LogEntry]:
    if tail is None or tail < 0:
        return entries
    return entries[len(entries) - tail:] if tail else []


def read_log(
    path: str | os.PathLike,
    *,
    stream: str | None = None,
    since: datetime | int | None = None,
    tail: int | None = None,
) -> list[LogEntry]:
    """The entries of one log file, filtered by stream and since, then the last ``tail`` of them."""
    keep = _Filter(stream, since)
    parser = LogParser()
    entries = parser.feed(Path(path).read_bytes()) + parser.flush()
    return _tail([e for e in entries if keep(e)], tail)


def _replaced(path: str | os.PathLike, f: BinaryIO) -> bool:
    """Whether ``path`` now names a different file than the open ``f`` (not while it is missing)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(f.fileno())
    return (st.st_dev, st.st_ino) != (own.st_dev, own.st_ino)


async def follow_log_batches(
    path: str | os.PathLike,
    *,
    stream: str | None = None,
    since: datetime | int | None = None,
    tail: int | None = None,
    poll_interval: float = 0.1,
    stop: asyncio.Event | None = None,
) -> AsyncIterator[list[LogEntry]]:
    """Like :func:`read_log`, then new entries as they are written, across rotations: a list per read,
    never empty, so that a server can write each read's lines at once.

    Runs until cancelled or until ``stop`` is set; then the rest of the file is
    read, and an unfinished line is yielded as a partial entry.
    """
    keep = _Filter(stream, since)
    parser = LogParser()
    f = open(path, "rb")

    def kept(entries: list[LogEntry]) -> list[LogEntry]:
        return [e for e in entries if keep(e)]

    try:
        if tail is not None and tail >= 0:
            entries = _tail(kept(parser.feed(f.read())), tail)
            for start in range(0, len(entries), TAIL_BATCH):
                yield entries[start:start + TAIL_BATCH]

        quiet_since_replaced = False
        while True:
            data = f.read(READ_CHUNK)
            if data:
                quiet_since_replaced = False
                batch = kept(parser.feed(data))
                if batch:
                    yield batch
                continue
            if stop is not None and stop.is_set():
                batch = kept(parser.flush())
                if batch:
                    yield batch
                return
            if _replaced(path, f):
                # Switch only after the old file stayed quiet for a whole poll
                # interval, so that writes racing with the reopen are not lost.
                if quiet_since_replaced:
                    try:
                        new = open(path, "rb")
                    except FileNotFoundError:
                        pass
                    else:
                        f.close()
                        f, quiet_since_replaced = new, False
                        batch = kept(parser.end_of_file())
                        if batch:
                            yield batch
                        continue
                quiet_since_replaced = True
            elif os.fstat(f.fileno()).st_size < f.tell():  # truncated in place
                f.seek(0)
                parser.reset()
            # A plain sleep, `stop` looked at on the next round: waiting on the event with a timeout would cost a
            # task and a timer on every poll of every follower.
            await asyncio.sleep(poll_interval)
    finally:
        f.close()


async def follow_log(path: str | os.PathLike, **options) -> AsyncIterator[LogEntry]:
    """:func:`follow_log_batches` one entry at a time (same options)."""
    batches = follow_log_batches(path, **options)
    try:
        async for batch in batches:
            for entry in batch:
                yield entry
    finally:
        await batches.aclose()
