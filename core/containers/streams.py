"""A container's output fan-out: one producer per stream, many attached readers.

The daemon reads the container's stdout and stderr pipes itself; every chunk
goes to the log driver (split into lines) and to whoever is attached.  A hub
lives as long as the container record, so a client can attach before the
container starts, as ``docker run`` does.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import secrets
import struct
import termios
import time
from dataclasses import dataclass, field
from typing import Literal

import structlog
import trio

from skiff.core.hookspecs import (
    ContainerProcess,
    LogDriver,
    LogMessage,
    PartialMeta,
    StartError,
)

logger = structlog.get_logger("skiff.logs")

#: Docker splits lines longer than this into partial messages
MAX_LINE = 16 * 1024
READ_SIZE = 64 * 1024
#: Docker's default detach sequence (``--detach-keys``)
DEFAULT_DETACH_KEYS = "ctrl-p,ctrl-q"

_CTRL = {**{chr(c): c - ord("a") + 1 for c in range(ord("a"), ord("z") + 1)},
         "@": 0, "[": 27, "\\": 28, "]": 29, "^": 30, "_": 31}


def parse_detach_keys(spec: str) -> bytes:
    """Docker's ``--detach-keys`` syntax (``ctrl-p,ctrl-q``, ``a,ctrl-@``) as bytes.

    Raises ``ValueError`` with Docker's wording for anything else.
    """
    out = bytearray()
    for key in spec.split(","):
        if len(key) == 1:
            out.append(ord(key) & 0xFF)
            continue
        low = key.lower()
        if not low.startswith("ctrl-") or len(low) != 6 or low[5] not in _CTRL:
            raise ValueError(f"Unknown character: '{key}'")
        out.append(_CTRL[low[5]])
    return bytes(out)


class DetachScanner:
    """Finds the detach sequence in a stdin stream, holding back a partial match.

    Bytes that start the sequence are kept until the sequence either
    completes (detach: they are dropped) or breaks (they are passed on), as
    Docker's escape proxy does.
    """

    def __init__(self, keys: bytes) -> None:
        self.keys = keys
        self.matched = 0

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """(bytes for the process, whether the sequence is complete)."""
        keys = self.keys
        if not keys:
            return data, False
        out = bytearray()
        for b in data:
            if b == keys[self.matched]:
                self.matched += 1
                if self.matched == len(keys):
                    self.matched = 0
                    return bytes(out), True
                continue
            if self.matched:
                out += keys[:self.matched]
                self.matched = 0
                if b == keys[0]:
                    self.matched = 1
                    if len(keys) == 1:
                        return bytes(out), True
                    continue
            out.append(b)
        return bytes(out), False


def set_winsize(fd: int, height: int, width: int) -> None:
    """TIOCSWINSZ on a pty master; the kernel sends SIGWINCH to the foreground group."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))


def open_stdio(tty: bool, open_stdin: bool, opened: list[int]
               ) -> tuple[int, int, int, int, int, int]:
    """Descriptors for a process's stdio: ``(out_r, out_w, err_r, err_w, in_r, in_w)``.

    Without ``tty``: a pipe per stream (stdin from /dev/null unless
    ``open_stdin``).  With ``tty`` the runtime allocates the terminal inside
    the container (``ContainerProcess.terminal``, see ``take_terminal``), so
    the three ends given to the process are distinct descriptors of
    /dev/null, which the runtime ignores, and the daemon's ends are all -1
    until ``take_terminal``.  Unused ends are -1.  Every descriptor is
    appended to ``opened`` as soon as it exists, so the caller can close them
    all if something fails.  All are close-on-exec.
    """
    if tty:
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        opened.append(null)
        err_w = os.dup(null)
        opened.append(err_w)
        in_r = os.dup(null)
        opened.append(in_r)
        return -1, null, -1, err_w, in_r, -1
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    opened += [out_r, out_w]
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    opened += [err_r, err_w]
    if open_stdin:
        in_r, in_w = os.pipe2(os.O_CLOEXEC)
        opened += [in_r, in_w]
    else:
        in_r, in_w = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC), -1
        opened.append(in_r)
    return out_r, out_w, err_r, err_w, in_r, in_w


class KeptStdin(trio.abc.SendStream):
    """A run's stdin pipe a runtime keeps a copy of (``Stdio.daemon_stdin``,
    live-restore): closing ours is not the end of file for the container
    until the runtime closes its copy too, so ``aclose`` tells it
    (``ContainerProcess.stdin_closed``, contract 2.11)."""

    def __init__(self, fd: int, process: ContainerProcess) -> None:
        self._stream = trio.lowlevel.FdStream(fd)
        self._process = process

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._stream.aclose()
        closed = getattr(self._process, "stdin_closed", None)
        if closed is not None:
            await closed()

    def close(self) -> None:
        """At the run's end: nothing to tell, the container is gone."""
        self._stream.close()


def take_terminal(process: ContainerProcess, open_stdin: bool,
                  console_size: list[int] | None = None) -> tuple[int, int]:
    """The daemon's ends of a TTY process's terminal: ``(out_r, in_w)``.

    ``out_r`` is the pty master the runtime allocated in the container
    (``ContainerProcess.terminal``, the caller's to close from now on),
    ``in_w`` a duplicate of it when ``open_stdin``, else -1.  ``console_size``
    (``[height, width]``, the client's ConsoleSize) is applied before the
    process runs.  On error nothing is left open and ``StartError`` says why.
    """
    master = getattr(process, "terminal", -1)
    if master < 0:
        raise StartError("the runtime allocated no terminal for a TTY process "
                         "(ContainerProcess.terminal)")
    try:
        if console_size and len(console_size) == 2 and all(console_size):
            with contextlib.suppress(OSError, struct.error, TypeError, ValueError):
                set_winsize(master, int(console_size[0]), int(console_size[1]))
        in_w = os.dup(master) if open_stdin else -1
    except BaseException:
        os.close(master)
        raise
    return master, in_w


async def feed_stdin(source: trio.abc.ReceiveStream, target: trio.abc.SendStream, *,
                     tty: bool, close_on_eof: bool, detach_keys: bytes) -> str:
    """Copy an attached client's stdin to a process until it ends; say how.

    Returns ``"detach"`` when the client typed the detach sequence (only
    with a TTY, as Docker), ``"eof"`` when its stdin ended and the attach
    should end with it, ``"closed"`` when its stdin ended and the process's
    stdin was closed (``close_on_eof`` without TTY: ``StdinOnce``, so the
    attach goes on until the output ends), ``"gone"`` when the process's
    stdin went away.
    """
    scanner = DetachScanner(detach_keys if tty else b"")
    while True:
        try:
            # bytes() of bytes is the same object: no copy for the pipes and sockets
            # skiff reads; a bytearray from another stream becomes immutable
            data = bytes(await source.receive_some(65536))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            if close_on_eof and not tty:
                with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
                    await target.aclose()
                return "closed"
            return "eof"
        data, detached = scanner.feed(data)
        try:
            if data:
                await target.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return "gone"
        if detached:
            return "detach"


#: bytes of output one attached reader (attach, ``logs -f``) may leave unread;
#: one that falls further behind is dropped.  dockerd's per-reader buffer also
#: holds 1 MB, but then blocks the container's output for every reader and the
#: log; here only the slow reader loses, and ``docker logs`` still has it all.
SUBSCRIBER_BACKLOG = 1 << 20
#: bytes every attached reader of the daemon may leave unread together
TOTAL_BACKLOG = 64 << 20
#: what a queued chunk or line costs besides its bytes (the tuple, the float):
#: a flood of empty lines must count too
ITEM_COST = 128


class _Backlog:
    """Unread output queued for every reader of this daemon, in bytes."""

    total = 0


class Subscription:
    """One attached reader's queue of a container's output, bounded in bytes.

    ``lines`` readers (``logs -f``) get the log's messages as recorded (whole
    lines, the time they were logged at); the others (attach) get the raw
    chunks as the container wrote them.  Iterate it (``async for stream,
    data, when in sub``) to take the output; the
    iteration ends when the container's run ends, when the reader was
    dropped for falling behind (``dropped``), or after :meth:`close`.  A
    reader that keeps up is never dropped: a chunk is always accepted while
    nothing is waiting.
    """

    def __init__(self, stdout: bool, stderr: bool, limit: int = SUBSCRIBER_BACKLOG,
                 lines: bool = False) -> None:
        self._send, self._recv = trio.open_memory_channel[tuple[str, bytes, float]](math.inf)
        self.lines = lines
        self.stdout = stdout
        self.stderr = stderr
        self.limit = limit
        #: bytes queued and not yet taken
        self.backlog = 0
        #: dropped because it fell more than ``limit`` behind (or the daemon's
        #: readers together fell ``TOTAL_BACKLOG`` behind)
        self.dropped = False

    def wants(self, stream: str) -> bool:
        return self.stdout if stream == "stdout" else self.stderr if stream == "stderr" else True

    def offer(self, stream: str, data: bytes, when: float) -> bool:
        """Queue ``data``; False once this reader is finished (gone or dropped)."""
        n = len(data) + ITEM_COST
        if self.backlog and (self.backlog + n > self.limit
                             or _Backlog.total + n > TOTAL_BACKLOG):
            self.dropped = True
            self.close()
            return False
        try:
            self._send.send_nowait((stream, data, when))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.close()
            return False
        self.backlog += n
        _Backlog.total += n
        return True

    def end(self) -> None:
        """The run ended: the reader takes what is queued, then sees the end."""
        self._send.close()

    def close(self) -> None:
        """Finish now: what is queued is freed, the reader's next take ends."""
        self._send.close()
        self._recv.close()
        _Backlog.total -= self.backlog
        self.backlog = 0

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> tuple[str, bytes, float]:
        try:
            item = await self._recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None
        n = len(item[1]) + ITEM_COST
        self.backlog -= n
        _Backlog.total -= n
        return item

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


@dataclass
class OutputHub:
    """Fan-out of one container's output, reused across its runs."""

    subscribers: list[Subscription] = field(default_factory=list)
    #: serialises (log write + publish) against (history read + subscribe) so a
    #: ``logs -f`` reader sees every message exactly once
    log_lock: trio.Lock = field(default_factory=trio.Lock)
    #: the container's stdin pipe while it runs with OpenStdin
    stdin: trio.abc.SendStream | None = None
    stdin_ready: trio.Event = field(default_factory=trio.Event)
    #: set when the current run's output has ended; replaced at the next start
    run_ended: trio.Event = field(default_factory=trio.Event)
    #: a duplicate of the pty master while the container runs with a TTY (resize)
    terminal: int = -1
    #: the container's ID, for what the hub logs
    owner: str = ""
    #: per stream, the unfinished line the pump holds back from the log
    pending: dict[str, bytes] = field(default_factory=dict)

    def subscribe(self, stdout: bool = True, stderr: bool = True,
                  limit: int = SUBSCRIBER_BACKLOG, lines: bool = False) -> Subscription:
        """A new reader of the output from now on (see :class:`Subscription`)."""
        sub = Subscription(stdout, stderr, limit, lines)
        self.subscribers.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        sub.close()
        with contextlib.suppress(ValueError):
            self.subscribers.remove(sub)

    def publish(self, stream: str, data: bytes, lines: list[bytes], when: float) -> None:
        """Hand ``data`` (or its logged ``lines``) to every reader; never waits."""
        alive = []
        for sub in self.subscribers:
            if not sub.wants(stream):
                alive.append(sub)
                continue
            if sub.lines:
                ok = all(sub.offer(stream, line, when) for line in lines)
            else:
                ok = not data or sub.offer(stream, data, when)
            if ok:
                alive.append(sub)
            elif sub.dropped:
                logger.warning("container.reader_dropped", id=self.owner,
                               reader="logs -f" if sub.lines else "attach", limit=sub.limit,
                               reason="the client fell more than the limit behind the "
                                      "output; its stream ends (logs -f reads on from the "
                                      "log), the container and its log go on")
        self.subscribers = alive

    def end_run(self) -> None:
        """The container stopped: attached readers see the end of their stream."""
        for sub in self.subscribers:
            sub.end()
        self.subscribers = []
        if isinstance(self.stdin, (trio.lowlevel.FdStream, KeptStdin)):
            # the run's stdin pipe (or pty master duplicate) is ours to close
            with contextlib.suppress(OSError):
                self.stdin.close()
        self.stdin = None
        self.stdin_ready = trio.Event()
        self.run_ended.set()
        if self.terminal >= 0:
            os.close(self.terminal)
            self.terminal = -1

    def begin_run(self, terminal: int = -1) -> None:
        """A new run starts; ``terminal`` is its pty master (duplicated here) if any."""
        self.run_ended = trio.Event()
        self.pending = {}
        if terminal >= 0:
            self.terminal = os.dup(terminal)

    def resize(self, height: int, width: int) -> None:
        """Set the terminal's size; nothing to do for a container without a TTY."""
        if self.terminal >= 0:
            set_winsize(self.terminal, height, width)


class LineSplitter:
    """Cuts a byte stream into log lines, keeping the newline, as Docker does:
    a line longer than :data:`MAX_LINE` goes out in pieces of that size, every
    piece but the last without a newline (dockerd's copier has a 16 KiB buffer).

    With ``tag_pieces`` it also says which lines are such pieces (or unfinished
    bytes left at the end), as dockerd's copier does: :attr:`meta` holds, after
    each :meth:`feed` or :meth:`flush`, a :class:`PartialMeta` or None per
    line returned, or is None when none of them is a piece (the common case,
    which then costs one ``max`` over the lengths).
    """

    def __init__(self, tag_pieces: bool = False) -> None:
        self.buf = b""
        self.meta: list[PartialMeta | None] | None = None
        self._tag = tag_pieces
        self._id = ""  # of the line being cut, while it is
        self._ordinal = 0

    def feed(self, data: bytes) -> list[bytes]:
        buf = self.buf + data
        lines = buf.split(b"\n")
        self.buf = lines.pop()
        self.meta = None
        if lines and (self._id or max(map(len, lines)) >= MAX_LINE):
            out = self._cut(lines)
        else:
            out = [line + b"\n" for line in lines]
        while len(self.buf) >= MAX_LINE:
            out.append(self.buf[:MAX_LINE])
            self.buf = self.buf[MAX_LINE:]
            self._tag_last(out, last=False)
        return out

    def flush(self) -> list[bytes]:
        rest, self.buf = self.buf, b""
        self.meta = None
        if not rest:
            return []
        out = [rest]
        self._tag_last(out, last=False)
        return out

    def _cut(self, lines: list[bytes]) -> list[bytes]:
        """Whole lines, the long ones in pieces; the first may end a line cut before."""
        out: list[bytes] = []
        for line in lines:
            while len(line) >= MAX_LINE:
                out.append(line[:MAX_LINE])
                line = line[MAX_LINE:]
                self._tag_last(out, last=False)
            out.append(line + b"\n")
            if self._id:
                self._tag_last(out, last=True)
            elif self.meta is not None:
                self.meta.append(None)
        return out

    def _tag_last(self, out: list[bytes], last: bool) -> None:
        """The last line of ``out`` is a piece (the final one of its line if ``last``)."""
        if not self._tag:
            return
        if not self._id:
            self._id, self._ordinal = secrets.token_hex(32), 0
        self._ordinal += 1
        if self.meta is None:
            self.meta = [None] * (len(out) - 1)
        self.meta.append(PartialMeta(self._id, self._ordinal, last))
        if last:
            self._id = ""


async def pump(
    source: trio.abc.ReceiveStream,
    stream: str,
    hub: OutputHub,
    log: LogDriver | None,
    limiter: trio.CapacityLimiter,
    carry: bytes = b"",
) -> None:
    """Copy one output stream to the log driver and the attached readers until EOF.

    ``carry``: the start of a line read before (by the runtime while no daemon
    ran), which the first bytes read finish."""
    splitter = LineSplitter(tag_pieces=log is not None)
    kind: Literal["stdout", "stderr"] = "stderr" if stream == "stderr" else "stdout"

    # a driver may take a chunk's lines at once (json-file: one write(2) for them)
    batched = getattr(log, "write_lines", None)

    def write_lines(lines: list[bytes], now: float, meta: list[PartialMeta | None] | None
                    ) -> None:
        assert log is not None
        try:
            if batched is not None and meta is None:
                batched(kind, lines, now)
                return
            for i, line in enumerate(lines):
                log.write(LogMessage(kind, line, now, partial=meta[i] if meta else None))
        except OSError as exc:
            # A full disk must not stop the container's output: attached clients
            # still get it.  Docker drops the lines the same way.
            logger.warning("log.write_failed", stream=stream, error=str(exc),
                           dropped=len(lines))

    async def record(lines: list[bytes], data: bytes) -> None:
        meta = splitter.meta  # of these lines: the next feed waits for this record
        async with hub.log_lock:
            now = time.time()
            if log is not None and lines:
                await trio.to_thread.run_sync(write_lines, lines, now, meta, limiter=limiter)
            hub.pending[stream] = splitter.buf
            hub.publish(stream, data, lines, now)

    async with source:
        while True:
            try:
                data = bytes(await source.receive_some(READ_SIZE))  # no copy: see above
            except trio.BrokenResourceError:
                data = b""
            if not data:
                break
            if carry:
                data, carry = carry + data, b""
            await record(splitter.feed(data), data)
    if carry:
        await record(splitter.feed(carry), carry)
    await record(splitter.flush(), b"")

