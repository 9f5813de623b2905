"""Delivery modes: how a container's messages reach its log driver.

``mode=blocking`` (the default) writes each message through the driver from
the output pump: the pump waits for the driver, and while it waits it reads
no more of the container's output, so a container that writes faster than
the driver takes its lines blocks in its own ``write(2)`` once the pipe is
full.  ``mode=non-blocking`` puts messages in a buffer of
``max-buffer-size`` bytes (dockerd's default: 1 MB, in dockerd's units)
drained by a thread of its own: the pump never waits for the driver, and a
message that does not fit is dropped (as dockerd's ring buffer: the new
message, never one already queued; a message larger than the whole buffer
still goes through when the buffer is empty).  The thread takes everything
queued at once and hands a driver that offers ``write_lines`` each run of
one read's lines in one call, so the buffer drains at the driver's batch
speed; while it writes such a batch the buffer takes new messages, so up to
twice ``max-buffer-size`` may be held.

In both modes a message the driver fails to write (``OSError``: a syslog
server gone, a full disk) is lost, not retried.  Every lost message is
counted: per container, and for the whole daemon in ``dropped_total()``
(the metrics' ``logger_log_entries_dropped_total``); skiffd's log says so in
a ``log.messages_dropped`` warning with the count, at most once every
``WARN_INTERVAL`` seconds per container, and once more when the container's
log closes.
"""

from __future__ import annotations

import collections
import re
import threading
import time
from collections.abc import Iterator, Mapping

import structlog

from skiff.core.containers.config import InvalidConfig
from skiff.core.containers.logcache import CachedLog
from skiff.core.hookspecs import LogDriver, LogMessage, ReadConfig

log = structlog.get_logger("skiff.containers")

#: the keys this module carries out (of ``hookspecs.GENERIC_LOG_OPTIONS``)
DELIVERY_OPTIONS = frozenset({"mode", "max-buffer-size"})
BLOCKING = "blocking"
NON_BLOCKING = "non-blocking"
#: dockerd's ``defaultRingMaxSize`` (decimal, although the option is read in binary units)
DEFAULT_MAX_BUFFER = 1_000_000
#: a drop is reported at once, then at most this often (seconds) per container
WARN_INTERVAL = 10.0
#: how long closing waits for the buffer to drain before giving up on the rest
CLOSE_WAIT = 5.0

_SIZE = re.compile(r"^(\d+(?:\.\d+)*) ?([kKmMgGtTpP])?[iI]?[bB]?$")
_BINARY = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}

_total_lock = threading.Lock()
_dropped_total = 0


def dropped_total() -> int:
    """Messages lost by delivery (buffer full, or the driver failed to write)
    since the daemon started, all containers together."""
    return _dropped_total


def _count_total(n: int) -> None:
    global _dropped_total
    with _total_lock:
        _dropped_total += n


def parse_buffer_size(text: str) -> int:
    """Bytes in ``max-buffer-size`` as dockerd reads it (``units.RAMInBytes``:
    binary units, ``1m`` is 1048576); ``ValueError`` in dockerd's words."""
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"invalid size: '{text}'")
    return int(float(m.group(1)) * _BINARY[(m.group(2) or "").lower()])


def check_options(options: Mapping[str, str]) -> None:
    """Refuse a bad ``mode`` or ``max-buffer-size`` at create, in dockerd's words."""
    mode = options.get("mode", "")
    if mode not in ("", BLOCKING, NON_BLOCKING):
        raise InvalidConfig(f"logger: logging mode not supported: {mode}")
    if "max-buffer-size" in options:
        if mode != NON_BLOCKING:
            raise InvalidConfig("logger: max-buffer-size option is only supported with "
                                f"'mode={NON_BLOCKING}'")
        try:
            parse_buffer_size(options["max-buffer-size"])
        except ValueError as exc:
            raise InvalidConfig(f"error parsing option max-buffer-size: {exc}") from None


class _Drops:
    """One container's lost messages, and the rate-limited warning about them."""

    def __init__(self, container_id: str, driver: str) -> None:
        self.container_id = container_id
        self.driver = driver
        self.total = 0
        self._unreported = 0
        self._reason = ""
        self._last_warning = -WARN_INTERVAL
        self._lock = threading.Lock()

    def add(self, n: int, reason: str) -> None:
        _count_total(n)
        with self._lock:
            self.total += n
            self._unreported += n
            self._reason = reason
            if time.monotonic() - self._last_warning < WARN_INTERVAL:
                return
            self._warn_locked()

    def flush(self) -> None:
        with self._lock:
            if self._unreported:
                self._warn_locked()

    def _warn_locked(self) -> None:
        self._last_warning = time.monotonic()
        log.warning("log.messages_dropped", id=self.container_id, driver=self.driver,
                    dropped=self._unreported, total=self.total, reason=self._reason)
        self._unreported = 0


class _Delivery:
    """What both modes share: the driver's face (name, readable, read)."""

    def __init__(self, driver: LogDriver, container_id: str, label: str = "") -> None:
        self.driver = driver
        self.name = driver.name
        self.drops = _Drops(container_id, label or driver.name)

    @property
    def readable(self) -> bool:
        return bool(getattr(self.driver, "readable", True))

    def read(self, config: ReadConfig) -> Iterator[LogMessage]:
        return self.driver.read(config)

    def _write_through(self, msg: LogMessage,
                       errors: type[Exception] | tuple[type[Exception], ...] = OSError) -> None:
        try:
            self.driver.write(msg)
        except errors as exc:
            self.drops.add(1, f"the {self.name} driver failed to write: {exc}")


class BlockingDelivery(_Delivery):
    """``mode=blocking``: the caller writes through the driver and waits for it."""

    def __init__(self, driver: LogDriver, container_id: str, label: str = "") -> None:
        super().__init__(driver, container_id, label)
        self._write = driver.write  # bound once: this is every line's path
        batched = getattr(driver, "write_lines", None)
        if batched is not None:
            # the pump hands a chunk's lines at once to a driver that takes
            # them so (json-file: one write(2)); hiding it would cost that
            def write_lines(stream: str, lines: list[bytes], ts: float) -> None:
                try:
                    batched(stream, lines, ts)
                except OSError as exc:
                    self.drops.add(len(lines), f"the {self.name} driver failed to write: {exc}")

            self.write_lines = write_lines

    def write(self, msg: LogMessage) -> None:
        try:
            self._write(msg)
        except OSError as exc:
            self.drops.add(1, f"the {self.name} driver failed to write: {exc}")

    def close(self) -> None:
        try:
            self.driver.close()
        finally:
            self.drops.flush()


class NonBlockingDelivery(_Delivery):
    """``mode=non-blocking``: a bounded buffer, drained into the driver by a thread."""

    def __init__(self, driver: LogDriver, container_id: str, max_bytes: int,
                 label: str = "") -> None:
        super().__init__(driver, container_id, label)
        self.max_bytes = max_bytes
        self._queue: collections.deque[LogMessage] = collections.deque()
        self._bytes = 0
        self._cond = threading.Condition()
        self._closing = False
        self._abandoned = False
        self._batched = getattr(driver, "write_lines", None)
        self._thread = threading.Thread(target=self._drain, daemon=True,
                                        name=f"log-{container_id[:12]}")
        self._thread.start()

    def write(self, msg: LogMessage) -> None:
        size = len(msg.line)
        with self._cond:
            dropped = self._closing or (bool(self._queue)
                                        and self._bytes + size > self.max_bytes)
            if not dropped:
                self._queue.append(msg)
                self._bytes += size
                self._cond.notify()
        if dropped:
            self.drops.add(1, f"the buffer of {self.max_bytes} bytes was full")

    def _drain(self) -> None:
        left = 0
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._closing:
                        self._cond.wait()
                    if self._abandoned or not self._queue:
                        left = len(self._queue)
                        self._queue.clear()
                        self._bytes = 0
                        break
                    # everything queued at once: a driver that takes runs of lines
                    # (json-file, local) writes them with one write(2), so the
                    # buffer empties far faster than one message at a time
                    batch = list(self._queue)
                    self._queue.clear()
                    self._bytes = 0
                done = 0
                for run in _runs(batch) if self._batched is not None else [[m] for m in batch]:
                    if self._abandoned:  # close gave up on us: the rest is counted
                        break
                    done += len(run)
                    if self._batched is not None and len(run) > 1:
                        # anything, not only OSError: this thread must outlive a driver's bug
                        try:
                            self._batched(run[0].stream, [m.line for m in run], run[0].time)
                        except Exception as exc:
                            self.drops.add(len(run), f"the {self.name} driver failed to "
                                                     f"write: {exc}")
                        continue
                    for msg in run:
                        self._write_through(msg, Exception)
                if done < len(batch):
                    with self._cond:
                        left = len(batch) - done + len(self._queue)
                        self._queue.clear()
                        self._bytes = 0
                    break
            if left:
                self.drops.add(left, f"the {self.name} driver was still behind when "
                                     f"the log closed ({CLOSE_WAIT:g} s)")
        finally:
            try:
                self.driver.close()
            finally:
                self.drops.flush()

    def close(self) -> None:
        """Drain what is buffered, for at most ``CLOSE_WAIT`` seconds: a dead
        remote must not hold the container's exit.  The rest is counted as
        dropped; the driver is closed by the draining thread when its write
        in progress (if any) returns."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(CLOSE_WAIT)
        if self._thread.is_alive():
            with self._cond:
                self._abandoned = True


def _runs(batch: list[LogMessage]) -> list[list[LogMessage]]:
    """``batch`` cut into runs a driver's ``write_lines`` takes: consecutive whole
    lines of one stream and one time (the lines of one read of the output)."""
    runs: list[list[LogMessage]] = []
    key: tuple[str, float] | None = None
    for msg in batch:
        whole = msg.partial is None and msg.line.endswith(b"\n")
        if whole and runs and key == (msg.stream, msg.time):
            runs[-1].append(msg)
            continue
        runs.append([msg])
        key = (msg.stream, msg.time) if whole else None
    return runs


def deliver(driver: LogDriver, options: Mapping[str, str], container_id: str) -> LogDriver:
    """``driver`` behind the delivery ``options`` ask for (``check_options`` passed).

    A driver with a dual-logging cache gets one delivery for the driver and
    one for the cache.  The cache's is blocking whatever the mode: it is a
    local file written at disk speed (the ``local`` driver, a read's lines in
    one write(2)), so ``docker logs`` gets every line even while a stalled
    remote drops from its non-blocking buffer; what either loses is counted
    as its own.  (dockerd gives the cache a ring buffer too, which drops
    lines of a fast writer: a departure on purpose.)
    """
    if isinstance(driver, CachedLog):
        driver.cache = BlockingDelivery(driver.cache, container_id, "dual-logging cache")
        driver.driver = _deliver_one(driver.driver, options, container_id)
        return driver
    return _deliver_one(driver, options, container_id)


def _deliver_one(driver: LogDriver, options: Mapping[str, str], container_id: str,
                 label: str = "") -> LogDriver:
    if options.get("mode") == NON_BLOCKING:
        size = options.get("max-buffer-size")
        max_bytes = parse_buffer_size(size) if size is not None else DEFAULT_MAX_BUFFER
        return NonBlockingDelivery(driver, container_id, max_bytes, label)
    return BlockingDelivery(driver, container_id, label)
