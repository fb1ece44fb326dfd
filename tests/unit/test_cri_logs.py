"""CRI log files: parsing, partial lines, filters, and following across rotation."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta, timezone

import pytest

from cri.logs import (
    LogEntry,
    LogParser,
    TAIL_BATCH,
    follow_log,
    follow_log_batches,
    format_timestamp,
    parse_line,
    parse_timestamp,
    read_log,
    to_ns,
)

T0 = parse_timestamp("2026-01-02T03:04:05.000000001Z")
POLL = 0.02


def line(seconds: float, stream: str, tag: str, content: str) -> bytes:
    ns = T0 + int(seconds * 1e9)
    return f"{format_timestamp(ns)} {stream} {tag} {content}\n".encode()


def at(seconds: float) -> int:
    return T0 + int(seconds * 1e9)


# ------------------------------------------------------------- timestamps and lines


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1970-01-01T00:00:00Z", 0),
        ("1970-01-01T00:00:01.5Z", 1_500_000_000),
        ("2016-10-06T00:17:09.669794202Z", 1475713029_669794202),
        ("2016-10-06T02:17:09.669794202+02:00", 1475713029_669794202),
        ("2016-10-05T23:47:09.669794202-00:30", 1475713029_669794202),
        ("2016-10-06T00:17:09.000000001Z", 1475713029_000000001),
    ],
)
def test_parse_timestamp(text, expected):
    assert parse_timestamp(text) == expected
    assert parse_timestamp(text.encode()) == expected


@pytest.mark.parametrize(
    "text", ["", "2016-10-06", "2016-10-06T00:17:09", "2016-10-06T00:17:09.1234567890Z", "yesterday"]
)
def test_parse_timestamp_rejects(text):
    with pytest.raises(ValueError):
        parse_timestamp(text)


def test_format_timestamp_round_trips():
    assert format_timestamp(1475713029_669794202) == "2016-10-06T00:17:09.669794202Z"
    assert format_timestamp(0) == "1970-01-01T00:00:00.000000000Z"
    assert parse_timestamp(format_timestamp(T0)) == T0


def test_to_ns():
    assert to_ns(5) == 5
    assert to_ns(datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC)) == 1_000_000_000
    assert to_ns(datetime(1970, 1, 1, 0, 0, 1)) == 1_000_000_000  # naive is UTC
    assert to_ns(datetime(1970, 1, 1, 1, 0, 1, tzinfo=timezone(timedelta(hours=1)))) == 1_000_000_000


def test_entry_time():
    entry = LogEntry(1475713029_669794202, "stdout", b"x")
    assert entry.time == datetime(2016, 10, 6, 0, 17, 9, 669794, tzinfo=UTC)
    assert entry.timestamp == "2016-10-06T00:17:09.669794202Z"


def test_parse_line():
    parsed = parse_line(b"2016-10-06T00:17:09.669794202Z stdout F hello  world \n")
    assert (parsed.time_ns, parsed.stream, parsed.partial, parsed.content) == (
        1475713029_669794202, "stdout", False, b"hello  world ",
    )
    assert parse_line(b"2016-10-06T00:17:09Z stderr P part").partial
    assert parse_line(b"2016-10-06T00:17:09Z stdout F \n").content == b""
    assert parse_line(b"2016-10-06T00:17:09Z stdout F\n").content == b""
    assert parse_line(b"2016-10-06T00:17:09Z stdout F:extra x").content == b"x"  # tags may grow
    assert parse_line(b"2016-10-06T00:17:09Z stdout F \xff\xfe").content == b"\xff\xfe"


@pytest.mark.parametrize(
    "raw",
    [b"", b"garbage", b"2016-10-06T00:17:09Z stdin F x", b"2016-10-06T00:17:09Z stdout X x", b"nope stdout F x"],
)
def test_parse_line_rejects(raw):
    with pytest.raises(ValueError):
        parse_line(raw)


# ------------------------------------------------------------- reading


def test_partial_lines_are_joined_per_stream(tmp_path):
    path = tmp_path / "0.log"
    path.write_bytes(
        line(0, "stdout", "P", "hello ")
        + line(1, "stderr", "F", "an error")
        + line(2, "stdout", "P", "big ")
        + line(3, "stdout", "F", "world")
        + line(4, "stderr", "P", "")
        + line(5, "stderr", "F", "done")
    )
    assert read_log(path) == [
        LogEntry(at(1), "stderr", b"an error"),
        LogEntry(at(0), "stdout", b"hello big world"),
        LogEntry(at(4), "stderr", b"done"),
    ]


def test_unfinished_and_unterminated_lines_at_the_end(tmp_path):
    path = tmp_path / "0.log"
    unterminated = line(2, "stderr", "F", "last")[:-1]
    path.write_bytes(line(0, "stdout", "F", "one") + line(1, "stdout", "P", "half") + unterminated)
    assert read_log(path) == [
        LogEntry(at(0), "stdout", b"one"),
        LogEntry(at(1), "stdout", b"half", partial=True),
        LogEntry(at(2), "stderr", b"last"),
    ]


def test_malformed_lines_are_skipped(tmp_path):
    path = tmp_path / "0.log"
    path.write_bytes(line(0, "stdout", "F", "a") + b"not a log line\n\n" + line(1, "stdout", "F", "b"))
    assert [e.content for e in read_log(path)] == [b"a", b"b"]


@pytest.fixture
def busy_log(tmp_path):
    path = tmp_path / "0.log"
    path.write_bytes(b"".join(line(i, "stdout" if i % 2 else "stderr", "F", f"line {i}") for i in range(10)))
    return path


def test_stream_filter(busy_log):
    assert [e.content for e in read_log(busy_log, stream="stdout")] == [f"line {i}".encode() for i in (1, 3, 5, 7, 9)]
    assert [e.stream for e in read_log(busy_log, stream="stderr")] == ["stderr"] * 5
    with pytest.raises(ValueError):
        read_log(busy_log, stream="stdin")


def test_since(busy_log):
    since = datetime.fromtimestamp(0, UTC) + timedelta(microseconds=at(7) // 1000)
    assert [e.content for e in read_log(busy_log, since=at(7))] == [b"line 7", b"line 8", b"line 9"]
    assert len(read_log(busy_log, since=since)) == 3  # datetime works too (microseconds)


def test_tail(busy_log):
    assert [e.content for e in read_log(busy_log, tail=2)] == [b"line 8", b"line 9"]
    assert read_log(busy_log, tail=0) == []
    assert len(read_log(busy_log, tail=-1)) == 10
    assert len(read_log(busy_log, tail=100)) == 10
    # tail counts lines after filtering
    assert [e.content for e in read_log(busy_log, stream="stderr", tail=2)] == [b"line 6", b"line 8"]
    assert [e.content for e in read_log(busy_log, since=at(5), tail=10)] == [f"line {i}".encode() for i in range(5, 10)]


def test_parser_handles_arbitrary_chunking():
    data = line(0, "stdout", "P", "ab") + line(1, "stdout", "F", "cd") + line(2, "stderr", "F", "ef")
    for size in (1, 3, 7, len(data)):
        parser = LogParser()
        out = []
        for i in range(0, len(data), size):
            out += parser.feed(data[i:i + size])
        out += parser.flush()
        assert [(e.stream, e.content) for e in out] == [("stdout", b"abcd"), ("stderr", b"ef")], size


# ------------------------------------------------------------- following


class Writer:
    """Appends to a log file the way the runtime does (one open file, flushed writes)."""

    def __init__(self, path):
        self.path = path
        self.file = open(path, "ab")

    def write(self, data: bytes) -> None:
        self.file.write(data)
        self.file.flush()

    def reopen(self) -> None:
        self.file.close()
        self.file = open(self.path, "ab")

    def close(self) -> None:
        self.file.close()


async def collect(gen, count: int, timeout: float = 5.0) -> list[LogEntry]:
    out = []

    async def take():
        async for entry in gen:
            out.append(entry)
            if len(out) == count:
                return

    await asyncio.wait_for(take(), timeout)
    return out


def test_follow_tail_then_new_lines(tmp_path):
    path = tmp_path / "0.log"
    writer = Writer(path)
    writer.write(b"".join(line(i, "stdout", "F", f"old {i}") for i in range(5)))

    async def scenario():
        gen = follow_log(path, tail=2, poll_interval=POLL)
        first = await collect(gen, 2)
        writer.write(line(10, "stdout", "F", "new 1"))
        writer.write(line(11, "stdout", "P", "split "))
        await asyncio.sleep(3 * POLL)
        writer.write(line(12, "stdout", "F", "line")[:10])  # the runtime may be caught mid-write
        await asyncio.sleep(3 * POLL)
        writer.write(line(12, "stdout", "F", "line")[10:])
        rest = await collect(gen, 2)
        await gen.aclose()
        return first + rest

    try:
        entries = asyncio.run(scenario())
    finally:
        writer.close()
    assert [e.content for e in entries] == [b"old 3", b"old 4", b"new 1", b"split line"]
    assert entries[3].time_ns == at(11)


def test_follow_filters(tmp_path):
    path = tmp_path / "0.log"
    writer = Writer(path)
    writer.write(line(0, "stdout", "F", "early"))

    async def scenario():
        gen = follow_log(path, stream="stderr", since=at(5), poll_interval=POLL)
        writer.write(line(6, "stdout", "F", "out"))
        writer.write(line(7, "stderr", "F", "err"))
        got = await collect(gen, 1)
        await gen.aclose()
        return got

    try:
        assert [e.content for e in asyncio.run(scenario())] == [b"err"]
    finally:
        writer.close()


def test_follow_across_rotation(tmp_path):
    path = tmp_path / "0.log"
    writer = Writer(path)
    writer.write(line(0, "stdout", "F", "before"))

    async def scenario():
        gen = follow_log(path, poll_interval=POLL)
        got = await collect(gen, 1)

        # Rotation: rename, the runtime keeps writing to the renamed file until it
        # reopens (including the start of a partial line), then writes to a new 0.log.
        os.rename(path, tmp_path / "0.log.20260102-030405")
        writer.write(line(1, "stdout", "F", "after rename"))
        writer.write(line(2, "stdout", "P", "straddles "))
        writer.reopen()
        writer.write(line(3, "stdout", "F", "rotation"))
        writer.write(line(4, "stderr", "F", "in new file"))
        got += await collect(gen, 3)

        # A second rotation, this time with a gap before the new file appears.
        os.rename(path, tmp_path / "0.log.20260102-030406")
        await asyncio.sleep(5 * POLL)
        writer.reopen()
        writer.write(line(5, "stdout", "F", "third file"))
        got += await collect(gen, 1)
        await gen.aclose()
        return got

    try:
        entries = asyncio.run(scenario())
    finally:
        writer.close()
    assert [(e.stream, e.content) for e in entries] == [
        ("stdout", b"before"),
        ("stdout", b"after rename"),
        ("stdout", b"straddles rotation"),
        ("stderr", b"in new file"),
        ("stdout", b"third file"),
    ]


def test_follow_stops_and_flushes_unfinished_line(tmp_path):
    path = tmp_path / "0.log"
    writer = Writer(path)
    writer.write(line(0, "stdout", "F", "one") + line(1, "stdout", "P", "no newline yet"))

    async def scenario():
        stop = asyncio.Event()
        got = []

        async def consume():
            async for entry in follow_log(path, poll_interval=POLL, stop=stop):
                got.append(entry)

        task = asyncio.create_task(consume())
        await asyncio.sleep(3 * POLL)
        writer.write(line(2, "stderr", "F", "exit"))
        stop.set()
        await asyncio.wait_for(task, 2)
        return got

    try:
        entries = asyncio.run(scenario())
    finally:
        writer.close()
    assert entries == [
        LogEntry(at(0), "stdout", b"one"),
        LogEntry(at(2), "stderr", b"exit"),
        LogEntry(at(1), "stdout", b"no newline yet", partial=True),
    ]


def test_follow_missing_file(tmp_path):
    async def scenario():
        async for _ in follow_log(tmp_path / "nope.log"):
            pass

    with pytest.raises(FileNotFoundError):
        asyncio.run(scenario())


def test_batches_are_one_per_read_and_a_long_tail_comes_in_slices(tmp_path):
    path = tmp_path / "0.log"
    count = TAIL_BATCH * 2 + 10
    path.write_bytes(b"".join(line(i / 1000, "stdout", "F", f"n{i}") for i in range(count)))

    async def collect(**options):
        stop = asyncio.Event()
        stop.set()  # read what is there, then end
        return [batch async for batch in follow_log_batches(path, poll_interval=POLL, stop=stop, **options)]

    tailed = asyncio.run(collect(tail=count - 1))
    assert [len(b) for b in tailed] == [TAIL_BATCH, TAIL_BATCH, 9]
    assert [e.content for b in tailed for e in b] == [f"n{i}".encode() for i in range(1, count)]
    read = asyncio.run(collect())
    assert all(read) and len(read) < count / 100  # a read's worth of lines per batch, not a line each
    assert [e.content for b in read for e in b] == [f"n{i}".encode() for i in range(count)]
