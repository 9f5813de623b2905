"""A container's output fan-out: one producer per stream, many attached readers.

The daemon reads the container's stdout and stderr pipes itself; every chunk
goes to the log driver (split into lines) and to whoever is attached.  A hub
lives as long as the container record, so a client can attach before the
container starts, as ``docker run`` does.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import structlog
import trio

from skiff.core.hookspecs import LogDriver, LogMessage

logger = structlog.get_logger("skiff.logs")

#: Docker splits lines longer than this into partial messages
MAX_LINE = 16 * 1024
READ_SIZE = 64 * 1024


@dataclass
class Subscriber:
    send: trio.MemorySendChannel[tuple[str, bytes]]
    stdout: bool
    stderr: bool


@dataclass
class OutputHub:
    """Fan-out of one container's output, reused across its runs."""

    subscribers: list[Subscriber] = field(default_factory=list)
    #: serialises (log write + publish) against (history read + subscribe) so a
    #: ``logs -f`` reader sees every message exactly once
    log_lock: trio.Lock = field(default_factory=trio.Lock)
    #: the container's stdin pipe while it runs with OpenStdin
    stdin: trio.abc.SendStream | None = None
    stdin_ready: trio.Event = field(default_factory=trio.Event)
    #: set when the current run's output has ended; replaced at the next start
    run_ended: trio.Event = field(default_factory=trio.Event)

    def subscribe(self, stdout: bool = True, stderr: bool = True
                  ) -> trio.MemoryReceiveChannel[tuple[str, bytes]]:
        send, recv = trio.open_memory_channel[tuple[str, bytes]](math.inf)
        self.subscribers.append(Subscriber(send, stdout, stderr))
        return recv

    def unsubscribe(self, recv: trio.MemoryReceiveChannel[tuple[str, bytes]]) -> None:
        recv.close()

    def publish(self, stream: str, data: bytes) -> None:
        alive = []
        for sub in self.subscribers:
            if (stream == "stdout" and not sub.stdout) or (stream == "stderr" and not sub.stderr):
                alive.append(sub)
                continue
            try:
                sub.send.send_nowait((stream, data))
                alive.append(sub)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the reader went away
        self.subscribers = alive

    def end_run(self) -> None:
        """The container stopped: attached readers see the end of their stream."""
        for sub in self.subscribers:
            sub.send.close()
        self.subscribers = []
        self.stdin = None
        self.stdin_ready = trio.Event()
        self.run_ended.set()

    def begin_run(self) -> None:
        self.run_ended = trio.Event()


class LineSplitter:
    """Cuts a byte stream into log lines, keeping the newline, as Docker does."""

    def __init__(self) -> None:
        self.buf = b""

    def feed(self, data: bytes) -> list[bytes]:
        buf = self.buf + data
        lines = buf.split(b"\n")
        self.buf = lines.pop()
        out = [line + b"\n" for line in lines]
        while len(self.buf) >= MAX_LINE:
            out.append(self.buf[:MAX_LINE])
            self.buf = self.buf[MAX_LINE:]
        return out

    def flush(self) -> list[bytes]:
        rest, self.buf = self.buf, b""
        return [rest] if rest else []


async def pump(
    source: trio.abc.ReceiveStream,
    stream: str,
    hub: OutputHub,
    log: LogDriver | None,
    limiter: trio.CapacityLimiter,
) -> None:
    """Copy one output stream to the log driver and the attached readers until EOF."""
    splitter = LineSplitter()

    def write_lines(lines: list[bytes], now: float) -> None:
        assert log is not None
        try:
            for line in lines:
                log.write(LogMessage(stream, line, now))  # type: ignore[arg-type]
        except OSError as exc:
            # A full disk must not stop the container's output: attached clients
            # still get it.  Docker drops the lines the same way.
            logger.warning("log.write_failed", stream=stream, error=str(exc),
                           dropped=len(lines))

    async def record(lines: list[bytes], data: bytes) -> None:
        async with hub.log_lock:
            if log is not None and lines:
                await trio.to_thread.run_sync(write_lines, lines, time.time(), limiter=limiter)
            if data:
                hub.publish(stream, data)

    async with source:
        while True:
            try:
                data = await source.receive_some(READ_SIZE)
            except trio.BrokenResourceError:
                data = b""
            if not data:
                break
            await record(splitter.feed(data), data)
    await record(splitter.flush(), b"")

