"""Reading a container's recorded log back without holding it in memory.

``docker logs`` of a container that wrote gigabytes must not make the daemon
hold gigabytes: :class:`RecordedLog` takes the log driver's messages a batch
at a time, each batch in a worker thread, the next one only when the client
took the last.  Its first batch is taken while the container's hub holds its
``log_lock`` (no message can be written meanwhile), so a driver that settles
what it returns when iteration starts (json-file notes each file's size then)
gives a reader exactly the messages before its live subscription.

:class:`LogCursor` remembers how far a ``logs -f`` reader got, so a reader
that fell behind its live subscription (and was dropped from it) can read the
rest from the log and follow again, losing nothing and slowing no one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from typing import Any

from skiff.core.containers.streams import LineSplitter
from skiff.core.hookspecs import LogDriver, LogMessage, LogRender, ReadConfig, RenderedLog

#: bytes of log lines taken from the driver per batch (one worker-thread call)
BATCH_BYTES = 64 * 1024
#: messages per batch at most (many empty lines cost more than their bytes)
BATCH_MESSAGES = 2048


def micros(t: float) -> int:
    """A message time as whole microseconds, rounded as json-file writes it."""
    return int(t * 1e6 + 0.5)


def _take(it: Iterator[LogMessage]) -> tuple[list[LogMessage], bool]:
    """The next batch from ``it``; whether it is exhausted."""
    out: list[LogMessage] = []
    size = 0
    for msg in it:
        out.append(msg)
        size += len(msg.line)
        if size >= BATCH_BYTES or len(out) >= BATCH_MESSAGES:
            return out, False
    return out, True


class RecordedLog:
    """A container's recorded log, read batch by batch from worker threads."""

    def __init__(self, driver: LogDriver, cfg: ReadConfig,
                 run_thread: Callable[..., Any]) -> None:
        self.driver = driver
        self._cfg = cfg
        self._run = run_thread
        self._it: Iterator[LogMessage] | None = None
        self._first: list[LogMessage] = []
        self._done = False
        self._closed = False

    async def start(self) -> None:
        """Take the first batch: the driver decides now what this reader will see."""
        def first() -> tuple[list[LogMessage], bool]:
            self._it = iter(self.driver.read(self._cfg))
            return _take(self._it)

        self._first, self._done = await self._run(first)

    async def batches(self) -> AsyncIterator[list[LogMessage]]:
        """The batches, the first one included; call :meth:`start` first."""
        batch, self._first = self._first, []
        if batch:
            yield batch
        while not self._done and self._it is not None:
            batch, self._done = await self._run(_take, self._it)
            if batch:
                yield batch

    def close(self) -> None:
        """Release the driver's files; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        try:
            close = getattr(self._it, "close", None)
            if close is not None:
                close()  # a generator's finally: the driver closes its files
        finally:
            self.driver.close()


class RenderedRecordedLog:
    """A recorded log the driver renders itself (``read_rendered``), a run at a
    time from worker threads; the same contract as :class:`RecordedLog`.

    Each worker-thread call takes up to two runs, so a read that ends within
    them (``--tail 10``: one run) costs one thread hop, not a second one just
    to learn the driver is done: on a busy machine a hop costs about as much
    as the driver's whole part of a tail."""

    #: runs taken per worker-thread call
    AHEAD = 2

    def __init__(self, driver: LogDriver, cfg: ReadConfig, how: LogRender,
                 run_thread: Callable[..., Any]) -> None:
        self.driver = driver
        self._cfg = cfg
        self._how = how
        self._run = run_thread
        self._it: Iterator[RenderedLog] | None = None
        self._ready: list[RenderedLog] = []
        self._done = False
        self._closed = False

    @staticmethod
    def supported(driver: LogDriver) -> bool:
        return callable(getattr(driver, "read_rendered", None))

    def _take(self) -> tuple[list[RenderedLog], bool]:
        """The next runs (up to ``AHEAD``); whether the driver is done."""
        assert self._it is not None
        runs = []
        for run in self._it:
            runs.append(run)
            if len(runs) == self.AHEAD:
                return runs, False
        return runs, True

    async def start(self) -> None:
        # a driver that can serve a short read from the page cache does it here,
        # on the event loop (``read_rendered_nowait``, or BlockingIOError): no hop
        nowait = getattr(self.driver, "read_rendered_nowait", None)
        if nowait is not None and self._cfg.tail is not None:
            try:
                self._ready, self._done = nowait(self._cfg, self._how), True
                return
            except BlockingIOError:
                pass

        def first() -> tuple[list[RenderedLog], bool]:
            self._it = iter(self.driver.read_rendered(  # type: ignore[attr-defined]
                self._cfg, self._how))
            return self._take()

        self._ready, self._done = await self._run(first)

    async def batches(self) -> AsyncIterator[RenderedLog]:
        while True:
            ready, self._ready = self._ready, []
            for run in ready:
                yield run
            if self._done or self._it is None:
                return
            self._ready, self._done = await self._run(self._take)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._ready = []
        try:
            close = getattr(self._it, "close", None)
            if close is not None:
                close()
        finally:
            self.driver.close()


class LogCursor:
    """How far a reader got: the last message's time and how many it got at that time.

    Times are compared in whole microseconds, the precision json-file keeps.
    After :meth:`rewind` a catch-up read asks the driver for messages since
    the cursor's time and :meth:`take` skips the ones the reader already
    has.  (A wall clock set back while a reader falls behind can make a
    catch-up skip messages stamped earlier than ones it already sent.)
    """

    def __init__(self, since: float | None = None) -> None:
        #: microseconds of the newest message sent (or of ``since``), None before
        self.at: int | None = None if since is None else micros(since)
        #: messages sent with that time
        self.sent = 0
        self._catching = False
        self._skip = 0
        self._seen = 0

    def take(self, msg: LogMessage) -> bool:
        """Whether ``msg`` is new to the reader; if so, the cursor moves past it."""
        t = micros(msg.time)
        if self.at is None or t > self.at:
            self.at, self.sent = t, 1
            self._catching, self._skip, self._seen = False, 0, 0
            return True
        if t == self.at:
            self._seen += 1
            if self._seen <= self._skip:
                return False  # sent before the reader fell behind
            self.sent += 1
            return True
        # older than the cursor: a catch-up has sent it; live, the clock went back
        return not self._catching

    def advance(self, when: float, n: int) -> None:
        """``n`` messages logged at ``when`` were sent some other way (raw, by attach)."""
        t = micros(when)
        if self.at is None or t > self.at:
            self.at, self.sent = t, n
        elif t == self.at:
            self.sent += n

    def rewind(self, cfg: ReadConfig) -> ReadConfig:
        """``cfg`` for reading on from here: no tail, since the cursor's time."""
        if self.at is None:
            return replace(cfg, tail=None)
        self._catching, self._skip, self._seen = True, self.sent, 0
        return replace(cfg, tail=None, since=(self.at - 1) / 1e6)


class RawProgress:
    """How far an attached client got in the log, from the raw chunks it was sent.

    The pump logs a chunk's complete lines at the chunk's time and keeps an
    unfinished line for later; mirroring its line splitting (from the hub's
    ``pending`` bytes at subscription) tells which log messages the client
    has whole, and how much of the next one per stream it already has.  If
    the client falls behind and is dropped from the live output, it reads
    on from the log with :attr:`cursor`, :meth:`trim` cutting what it had.
    """

    def __init__(self, pending: dict[str, bytes], since: float) -> None:
        self.cursor = LogCursor(since)
        self._split: dict[str, LineSplitter] = {}
        #: bytes of the next logged message of each stream the client has, or
        #: never gets (written before it attached)
        self._have: dict[str, int] = {}
        for stream in ("stdout", "stderr"):
            self._split[stream] = splitter = LineSplitter()
            splitter.buf = pending.get(stream, b"")
            self._have[stream] = len(splitter.buf)

    def sent(self, stream: str, data: bytes, when: float) -> None:
        lines = self._split[stream].feed(data)
        if lines:
            self.cursor.advance(when, len(lines))
            self._have[stream] = len(self._split[stream].buf)
        else:
            self._have[stream] += len(data)

    def trim(self, msg: LogMessage) -> bytes:
        """What of a message read from the log the client does not have yet."""
        have = self._have[msg.stream]
        if not have:
            return msg.line
        self._have[msg.stream] = 0
        return msg.line[have:]
