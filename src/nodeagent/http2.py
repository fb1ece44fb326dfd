"""One HTTP/2 client connection on the h2 protocol library, shared by the agents' API client (nodeagent.h2client)
and the CRI's gRPC transport (cri.h2rpc).

A reader task feeds each stream's queue and returns the flow-control window at once (callers read what they
asked for promptly, and a size limit is theirs to keep), so one slow stream never holds the others back. A
request body goes out in frames as the server's windows allow. A connection that fails or is told GOAWAY
fails its open streams with `HTTP2Error`; whoever owns it opens a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

READ_SIZE = 65536
WINDOW = 1 << 24  # per stream and for the connection: the peer may run 16 MiB ahead of our reading

Headers = list[tuple[bytes, bytes]]


class HTTP2Error(Exception):
    """The stream or its connection failed (reset, GOAWAY, closed, timed out)."""

    def __init__(self, message: str, *, reset_code: int | None = None):
        super().__init__(message)
        self.reset_code = reset_code  # the RST_STREAM error code, when the server reset the stream


class Stream:
    def __init__(self, stream_id: int, path: str):
        self.id = stream_id
        self.path = path
        self.headers: asyncio.Future[dict[bytes, bytes]] = asyncio.get_running_loop().create_future()
        self.queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
        self.trailers: dict[bytes, bytes] = {}
        self.ended = False

    def fail(self, err: BaseException) -> None:
        if not self.headers.done():
            self.headers.set_exception(err)
            self.headers.exception()  # retrieved: a caller that no longer waits is not worth a warning
        self.queue.put_nowait(err)
        self.ended = True

    async def chunks(self, read_timeout: float | None = None) -> AsyncIterator[bytes]:
        """The body as it arrives; `read_timeout` bounds the wait for each piece."""
        while True:
            try:
                item = await asyncio.wait_for(self.queue.get(), read_timeout)
            except asyncio.TimeoutError:
                raise HTTP2Error(f"no data on {self.path} for {read_timeout:.0f}s") from None
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


class _H2Connection(h2.connection.H2Connection):
    # h2 remembers how each closed stream ended, to answer late frames on it, for the last 65 536 streams: on a
    # connection that lives for days and opens a stream per call, that is ~8 MiB held for nothing (it showed as
    # growth over pod churn). Our streams are short and the server's late frames on one are ignored anyway.
    MAX_CLOSED_STREAMS = 256


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.h2 = _H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.streams: dict[int, Stream] = {}
        self.max_streams = 100  # until the server's SETTINGS say otherwise
        self.closed = False
        self._window_opened = asyncio.Event()
        self.task: asyncio.Task | None = None

    @property
    def free(self) -> bool:
        return not self.closed and len(self.streams) < self.max_streams

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.closed:
            self.writer.write(data)

    async def start(self) -> None:
        self.h2.initiate_connection()
        self.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW,
                                 h2.settings.SettingCodes.ENABLE_PUSH: 0})
        self.h2.increment_flow_control_window(WINDOW)
        self.flush()
        await self.writer.drain()
        self.task = asyncio.create_task(self._read(), name="http2-reader")

    async def _read(self) -> None:
        error: BaseException = HTTP2Error("connection closed by the server")
        try:
            while not self.closed:
                data = await self.reader.read(READ_SIZE)
                if not data:
                    break
                for event in self.h2.receive_data(data):
                    self._handle(event)
                self.flush()
        except (OSError, h2.exceptions.ProtocolError, ssl.SSLError) as err:
            error = HTTP2Error(f"connection failed: {err or type(err).__name__}")
        except asyncio.CancelledError:
            error = HTTP2Error("connection closed")
            raise
        finally:
            self.close(error)

    def _handle(self, event) -> None:
        stream = self.streams.get(getattr(event, "stream_id", 0) or 0)
        if isinstance(event, h2.events.ResponseReceived) and stream is not None:
            if not stream.headers.done():
                stream.headers.set_result(dict(event.headers))
        elif isinstance(event, h2.events.DataReceived):
            if event.flow_controlled_length:
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            if stream is not None:
                stream.queue.put_nowait(event.data)
        elif isinstance(event, h2.events.TrailersReceived) and stream is not None:
            stream.trailers = dict(event.headers)
        elif isinstance(event, h2.events.StreamEnded) and stream is not None:
            stream.queue.put_nowait(None)
            stream.ended = True
            self.streams.pop(stream.id, None)
        elif isinstance(event, h2.events.StreamReset) and stream is not None:
            stream.fail(HTTP2Error(f"stream of {stream.path} reset by the server (error {event.error_code})",
                                   reset_code=event.error_code))
            self.streams.pop(stream.id, None)
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            changed = event.changed_settings.get(h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS)
            if changed is not None:
                self.max_streams = changed.new_value
            self._window_opened.set()
        elif isinstance(event, h2.events.WindowUpdated):
            self._window_opened.set()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.close(HTTP2Error(f"the server ended the connection (GOAWAY, error {event.error_code})"))

    def request(self, headers: Headers, path: str, *, end_stream: bool = True) -> Stream:
        """Open a stream with the request's headers (at once: a caller that picked this connection because it
        had room holds its place); with `end_stream` False, `send_body` follows."""
        if self.closed:
            raise HTTP2Error("the connection closed")
        try:
            stream_id = self.h2.get_next_available_stream_id()
            self.h2.send_headers(stream_id, headers, end_stream=end_stream)
        except h2.exceptions.ProtocolError as err:
            raise HTTP2Error(f"cannot send {path}: {err}") from None
        stream = self.streams[stream_id] = Stream(stream_id, path)
        self.flush()
        return stream

    async def send_body(self, stream: Stream, body: bytes) -> None:
        """The request body, in frames as the server's flow-control windows allow, and the end of the stream."""
        view = memoryview(body)
        try:
            while True:
                size = min(len(view), self.h2.local_flow_control_window(stream.id), self.h2.max_outbound_frame_size)
                if size <= 0 and view:
                    self._window_opened.clear()
                    self.flush()
                    await self._window_opened.wait()
                    if self.closed or stream.ended:
                        raise HTTP2Error(f"the connection closed while sending {stream.path}")
                    continue
                self.h2.send_data(stream.id, view[:size].tobytes(), end_stream=size == len(view))
                view = view[size:]
                if not view:
                    break
            self.flush()
        except h2.exceptions.ProtocolError as err:
            self.cancel(stream)
            raise HTTP2Error(f"cannot send {stream.path}: {err}") from None
        except BaseException:
            self.cancel(stream)
            raise

    async def open(self, headers: Headers, path: str, body: bytes | None = None) -> Stream:
        """Send a request, with its body if any; its stream."""
        stream = self.request(headers, path, end_stream=not body)
        if body:
            await self.send_body(stream, body)
        return stream

    def cancel(self, stream: Stream) -> None:
        """The caller is done with `stream` before its end: tell the server, forget it."""
        if self.streams.pop(stream.id, None) is not None and not self.closed:
            with contextlib.suppress(h2.exceptions.ProtocolError, KeyError):
                self.h2.reset_stream(stream.id, h2.errors.ErrorCodes.CANCEL)
            self.flush()

    def close(self, error: BaseException) -> None:
        if self.closed:
            return
        self.closed = True
        for stream in list(self.streams.values()):
            stream.fail(error)
        self.streams.clear()
        self._window_opened.set()
        with contextlib.suppress(Exception):
            self.writer.close()

    async def aclose(self) -> None:
        if not self.closed:
            with contextlib.suppress(Exception):
                self.h2.close_connection()
                self.flush()
        self.close(HTTP2Error("client closed"))
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


async def connect(*, unix: str | None = None, host: str = "", port: int = 0,
                  tls: ssl.SSLContext | None = None) -> Connection:
    """A started connection: to a unix socket or host:port, plaintext with prior knowledge or TLS with ALPN h2."""
    if unix:
        reader, writer = await asyncio.open_unix_connection(unix, limit=READ_SIZE * 4)
    else:
        reader, writer = await asyncio.open_connection(host, port, ssl=tls, server_hostname=host if tls else None,
                                                       limit=READ_SIZE * 4)
    if tls is not None:
        protocol = writer.get_extra_info("ssl_object").selected_alpn_protocol()
        if protocol != "h2":
            writer.close()
            raise HTTP2Error(f"{host}:{port} does not speak HTTP/2 (ALPN gave {protocol!r})")
    connection = Connection(reader, writer)
    await connection.start()
    return connection
