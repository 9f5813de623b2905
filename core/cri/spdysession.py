"""A SPDY/3.1 server session on a trio stream: the client opens streams
(SYN_STREAM), the server answers each (SYN_REPLY) and both send data on them.

Flow control: the Go implementation kubelet's clients use (moby/spdystream)
neither sends nor honours WINDOW_UPDATE, so neither does this; a stream whose
reader falls behind holds the connection's reading (TCP's own backpressure)
once ``STREAM_BUFFER`` frames wait for it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import structlog
import trio

from skiff.core.cri import spdy

log = structlog.get_logger("skiff.cri")

#: frames one stream may hold unread before the session stops reading
STREAM_BUFFER = 64
#: bytes of one data frame the server sends (the clients' own size)
CHUNK = 32 << 10
READ_SIZE = 64 << 10


class SpdyStream(trio.abc.HalfCloseableStream):
    """One stream of the session: data in, data out, FIN and reset."""

    def __init__(self, session: SpdySession, stream_id: int, headers: dict[str, str]) -> None:
        self.session = session
        self.id = stream_id
        self.headers = headers
        self._in, self._out = trio.open_memory_channel[bytes](STREAM_BUFFER)
        self._pending = b""
        self.remote_closed = False
        self.local_closed = False
        self.was_reset = False

    # -- what the peer sent ---------------------------------------------------

    def _remote_fin(self) -> None:
        self.remote_closed = True
        self._in.close()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if not self._pending:
            try:
                self._pending = await self._out.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return b""
        n = max_bytes or len(self._pending)
        data, self._pending = self._pending[:n], self._pending[n:]
        return data

    # -- what the server sends -------------------------------------------------

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.local_closed or self.was_reset:
            raise trio.ClosedResourceError("the stream is closed")
        view = memoryview(data)
        for at in range(0, len(view), CHUNK):
            await self.session.send(spdy.data_frame(self.id, bytes(view[at:at + CHUNK])))

    async def wait_send_all_might_not_block(self) -> None:
        return None

    async def send_eof(self) -> None:
        """FIN: nothing more from this side (the peer's half stays open)."""
        if self.local_closed or self.was_reset:
            return
        self.local_closed = True
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.session.send(spdy.data_frame(self.id, b"", fin=True))

    async def aclose(self) -> None:
        await self.send_eof()

    async def reset(self, status: int = spdy.CANCEL) -> None:
        if self.was_reset:
            return
        self.was_reset = True
        self._in.close()
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.session.send(spdy.rst_stream(self.id, status))


class SpdySession:
    """Reads frames until the peer goes away; new streams go to ``accept``."""

    def __init__(self, transport: trio.abc.Stream, already_read: bytes = b"") -> None:
        self.transport = transport
        self.codec = spdy.HeaderCodec()
        self.parser = spdy.Parser(self.codec)
        self.streams: dict[int, SpdyStream] = {}
        self._send_lock = trio.Lock()
        self._already = already_read
        self._new_in, self.incoming = trio.open_memory_channel[SpdyStream](256)
        self.closed = trio.Event()
        self.last_stream = 0

    async def send(self, frame: bytes) -> None:
        async with self._send_lock:
            await self.transport.send_all(frame)

    async def run(self, accept: Callable[[SpdyStream], bool] | None = None) -> None:
        """Serve frames until EOF, GOAWAY or a protocol error; every stream then
        reads its end.  ``accept`` may refuse a stream (RST REFUSED_STREAM)."""
        try:
            data: bytes | bytearray = self._already
            while True:
                if data:
                    for frame in self.parser.feed(bytes(data)):
                        if not await self._handle(frame, accept):
                            return
                try:
                    data = await self.transport.receive_some(READ_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                if not data:
                    return
        except spdy.ProtocolError as exc:
            log.info("cri.stream_protocol_error", error=str(exc))
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self.send(spdy.goaway(self.last_stream, spdy.PROTOCOL_ERROR))
        finally:
            self.closed.set()
            self._new_in.close()
            for s in self.streams.values():
                s._remote_fin()

    async def _handle(self, frame: spdy.Frame,
                      accept: Callable[[SpdyStream], bool] | None) -> bool:
        kind = frame.kind
        if kind == 0:
            s = self.streams.get(frame.stream_id)
            if s is None or s.remote_closed or s.was_reset:
                return True  # a stream already ended or reset: the late data goes
            if frame.data:
                await s._in.send(frame.data)
            if frame.fin:
                s._remote_fin()
        elif kind == spdy.SYN_STREAM:
            sid = frame.stream_id
            if sid in self.streams or sid % 2 == 0 or sid <= self.last_stream:
                raise spdy.ProtocolError(f"stream {sid} opened twice or out of order")
            self.last_stream = sid
            s = SpdyStream(self, sid, frame.headers)
            if accept is not None and not accept(s):
                await self.send(spdy.rst_stream(sid, spdy.REFUSED_STREAM))
                return True
            self.streams[sid] = s
            await self.send(spdy.syn_reply(self.codec, sid, {}))
            if frame.fin:
                s._remote_fin()
            try:
                self._new_in.send_nowait(s)
            except trio.WouldBlock:
                raise spdy.ProtocolError("too many streams waiting") from None
        elif kind == spdy.RST_STREAM:
            s = self.streams.pop(frame.stream_id, None)
            if s is not None:
                s.was_reset = True
                s._remote_fin()
        elif kind == spdy.PING:
            if frame.value % 2 == 1:  # the client's (odd ids): echoed
                await self.send(spdy.ping(frame.value))
        elif kind == spdy.GOAWAY:
            return False
        # SETTINGS, WINDOW_UPDATE, HEADERS, SYN_REPLY: nothing the server needs
        return True

    async def wait_closed(self, timeout: float) -> None:
        """Give the client ``timeout`` to close its end: data it has not read yet
        is lost if the server closes first (spdystream drops queued frames)."""
        with trio.move_on_after(timeout):
            await self.closed.wait()
