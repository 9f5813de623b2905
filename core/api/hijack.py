"""The raw connection a handler gets when it hijacks a request (attach, exec start).

After the response head the connection stops being HTTP: the handler reads
and writes the socket directly, starting with whatever request bytes h11 had
already buffered.  Apart from :mod:`.connection` because it is what handlers
hold, while the connection is what the server runs.
"""

from __future__ import annotations

import fcntl
import struct
import termios

import trio

__all__ = ["HIJACK_HEAD_WAIT", "HijackedStream", "wait_consumed"]

#: how long a hijack waits for the client to read the response head (see wait_consumed)
HIJACK_HEAD_WAIT = 1.0


class HijackedStream(trio.abc.HalfCloseableStream):
    """The raw connection after a hijack, starting with bytes h11 had already buffered."""

    def __init__(self, stream: trio.SocketStream, buffered: bytes, eof: bool) -> None:
        self._stream = stream
        self._buffered = buffered
        self._eof = eof

    @property
    def socket(self) -> trio.socket.SocketType:
        return self._stream.socket

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        """Half-close: the client reads EOF on its side, and may still send."""
        await self._stream.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._buffered:
            await trio.lowlevel.checkpoint()
            if max_bytes is None or max_bytes >= len(self._buffered):
                data, self._buffered = self._buffered, b""
            else:
                data, self._buffered = self._buffered[:max_bytes], self._buffered[max_bytes:]
            return data
        if self._eof:
            await trio.lowlevel.checkpoint()
            return b""
        return await self._stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self._stream.aclose()


def _unread(sock: trio.socket.SocketType) -> int:
    # SIOCOUTQ (== TIOCOUTQ): on a unix socket, bytes we sent that the peer has not read yet
    return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0])


async def wait_consumed(sock: trio.socket.SocketType) -> None:
    """Wait (briefly) until the client has read the hijack response head.

    docker-py parses the head through a buffered reader and then reads the
    raw socket, so stream bytes that arrive in the same read as the head are
    lost to it.  Holding the first stream byte back until the head is read
    keeps them apart; the docker CLI reads the head at once, so this costs
    it well under a millisecond.
    """
    delay = 0.0002
    deadline = trio.current_time() + HIJACK_HEAD_WAIT
    try:
        while _unread(sock) > 0 and trio.current_time() < deadline:
            await trio.sleep(delay)
            delay = min(delay * 2, 0.02)
    except OSError:
        pass  # not a unix socket (or closed): nothing to wait for
