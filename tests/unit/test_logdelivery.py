"""Delivery modes (core/containers/logdelivery.py): the options in dockerd's
words, the bounded buffer of non-blocking mode, drop counting."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from skiff.core.containers import logdelivery
from skiff.core.containers.config import InvalidConfig
from skiff.core.containers.logopts import check_generic
from skiff.core.hookspecs import LogContext, LogMessage, ReadConfig
from skiff.plugins.logging.jsonfile import JsonFileDriver


class GatedDriver:
    """A driver whose writes wait for a gate (a remote that stalls), or fail
    (a remote that is gone)."""

    name = "gated"
    readable = False

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.failing = False
        self.got: list[bytes] = []
        self.closed = threading.Event()
        self.entered = threading.Event()

    def write(self, msg: LogMessage) -> None:
        self.entered.set()
        self.gate.wait()
        if self.failing:
            raise ConnectionRefusedError(111, "Connection refused")
        self.got.append(msg.line)

    def read(self, config: ReadConfig) -> Iterator[LogMessage]:
        raise NotImplementedError

    def close(self) -> None:
        self.closed.set()


def msg(text: str) -> LogMessage:
    return LogMessage("stdout", text.encode(), time.time())


@pytest.mark.parametrize(("opts", "words"), [
    ({"mode": "fast"}, "logger: logging mode not supported: fast"),
    ({"max-buffer-size": "1m"},
     "logger: max-buffer-size option is only supported with 'mode=non-blocking'"),
    ({"mode": "blocking", "max-buffer-size": "1m"},
     "logger: max-buffer-size option is only supported with 'mode=non-blocking'"),
    ({"mode": "non-blocking", "max-buffer-size": "lots"},
     "error parsing option max-buffer-size: invalid size: 'lots'"),
    ({"mode": "non-blocking", "max-buffer-size": "-1"},
     "error parsing option max-buffer-size: invalid size: '-1'"),
])
def test_bad_options_refused_in_dockerds_words(opts: dict[str, str], words: str) -> None:
    with pytest.raises(InvalidConfig) as exc:
        check_generic(opts)
    assert str(exc.value) == words


def test_good_options_accepted() -> None:
    for opts in ({}, {"mode": "blocking"}, {"mode": ""}, {"mode": "non-blocking"},
                 {"mode": "non-blocking", "max-buffer-size": "4m"},
                 {"mode": "non-blocking", "max-buffer-size": "512KiB"}):
        check_generic(opts)


def test_buffer_size_in_binary_units() -> None:
    assert logdelivery.parse_buffer_size("1m") == 1 << 20
    assert logdelivery.parse_buffer_size("512k") == 512 << 10
    assert logdelivery.parse_buffer_size("1.5KiB") == 1536
    assert logdelivery.parse_buffer_size("100") == 100


def test_blocking_writes_through_and_counts_failures(tmp_path: Path) -> None:
    ctx = LogContext("c" * 64, "/x", str(tmp_path / "x-json.log"), {})
    d = logdelivery.deliver(JsonFileDriver(ctx), {}, ctx.container_id)
    assert isinstance(d, logdelivery.BlockingDelivery) and d.readable and d.name == "json-file"
    d.write(msg("a\n"))
    assert next(iter(d.read(ReadConfig()))).line == b"a\n"  # in the file when write returns
    d.close()

    gone = GatedDriver()
    gone.gate.set()
    gone.failing = True
    before = logdelivery.dropped_total()
    d = logdelivery.deliver(gone, {"mode": "blocking"}, "d" * 64)
    for _ in range(3):
        d.write(msg("lost\n"))  # never raises: the pump carries on
    d.close()
    assert logdelivery.dropped_total() - before == 3
    assert not d.readable


def test_non_blocking_never_waits_and_drops_what_does_not_fit() -> None:
    stalled = GatedDriver()
    before = logdelivery.dropped_total()
    d = logdelivery.deliver(stalled, {"mode": "non-blocking", "max-buffer-size": "100"}, "e" * 64)
    assert isinstance(d, logdelivery.NonBlockingDelivery) and d.max_bytes == 100
    d.write(msg(f"{0:09d}\n"))  # 10 bytes each
    assert stalled.entered.wait(5)  # the drainer took it and is stuck in the driver
    t0 = time.monotonic()
    for i in range(1, 1000):
        d.write(msg(f"{i:09d}\n"))
    assert time.monotonic() - t0 < 1.0  # the driver is stalled; the writer is not
    stalled.gate.set()
    d.close()
    assert stalled.closed.is_set()
    # the one being written, then the ten that fit the buffer, in order; the rest dropped
    assert stalled.got == [f"{i:09d}\n".encode() for i in range(11)]
    assert logdelivery.dropped_total() - before == 1000 - 11


def test_a_message_larger_than_the_buffer_goes_through_alone() -> None:
    drv = GatedDriver()
    drv.gate.set()
    d = logdelivery.deliver(drv, {"mode": "non-blocking", "max-buffer-size": "4"}, "f" * 64)
    d.write(msg("a much longer line\n"))
    d.close()
    assert drv.got == [b"a much longer line\n"]


def test_non_blocking_default_buffer_and_close_gives_up_on_a_stuck_driver(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logdelivery, "CLOSE_WAIT", 0.3)
    stuck = GatedDriver()
    d = logdelivery.deliver(stuck, {"mode": "non-blocking"}, "a" * 64)
    assert isinstance(d, logdelivery.NonBlockingDelivery)
    assert d.max_bytes == logdelivery.DEFAULT_MAX_BUFFER
    before = logdelivery.dropped_total()
    for _ in range(50):
        d.write(msg("x\n"))
    assert stuck.entered.wait(5)  # the drainer is inside the driver's write
    t0 = time.monotonic()
    d.close()
    assert time.monotonic() - t0 < 2.0  # the container's exit is not held by a dead remote
    d.write(msg("after close\n"))  # counted, not queued
    stuck.gate.set()  # the write in progress returns; the rest is given up and counted
    assert stuck.closed.wait(5)
    assert stuck.got == [b"x\n"]
    assert logdelivery.dropped_total() - before == 50


def test_blocking_passes_batched_writes_through(tmp_path: Path) -> None:
    """json-file takes a chunk's lines in one write(2); blocking delivery keeps that."""
    drv = JsonFileDriver(LogContext("d" * 64, "t", str(tmp_path / "d-json.log"), {}))
    wrapped = logdelivery.deliver(drv, {}, "d" * 64)
    batched = getattr(wrapped, "write_lines", None)
    assert batched is not None
    batched("stdout", [b"a\n", b"b\n"], 1_795_000_000.0)
    wrapped.close()
    assert [m.line for m in drv.read(ReadConfig())] == [b"a\n", b"b\n"]
    # a driver without it gets none: the pump then writes message by message
    assert not hasattr(logdelivery.deliver(GatedDriver(), {}, "e" * 64), "write_lines")


class ListCache:
    """A cache that takes every line at once."""

    name = "local"

    def __init__(self) -> None:
        self.got: list[bytes] = []
        self.closed = False

    def write(self, msg: LogMessage) -> None:
        self.got.append(msg.line)

    def read(self, config: ReadConfig) -> Iterator[LogMessage]:
        return iter(())

    def close(self) -> None:
        self.closed = True


def test_a_stalled_driver_never_starves_its_cache() -> None:
    """The cache is written as the output is read, whatever the mode; the
    remote behind its own non-blocking buffer stalls and drops, and the
    drops are the remote's alone: the cache has every line, at once."""
    from skiff.core.containers.logcache import CachedLog

    stalled, cache = GatedDriver(), ListCache()
    before = logdelivery.dropped_total()
    d = logdelivery.deliver(CachedLog(stalled, cache),  # type: ignore[arg-type]
                            {"mode": "non-blocking", "max-buffer-size": "1k"}, "c" * 64)
    lines = [f"{i:09d}\n".encode() for i in range(2000)]
    # as fast as the writer goes: no pause for anybody to drain
    for line in lines[:1000]:
        d.write(LogMessage("stdout", line, time.time()))
    batched = getattr(d, "write_lines", None)
    assert batched is not None  # the pump's path for a read's whole lines
    batched("stdout", lines[1000:], time.time())
    assert cache.got == lines
    assert stalled.entered.wait(5) and stalled.got == []  # the remote took nothing yet
    stalled.gate.set()
    d.close()
    assert cache.closed and stalled.closed.is_set()
    # the remote got the line it was stuck on, what its buffer held, and what
    # the buffer took while those were written (twice the buffer at most); the
    # rest counted as its drops, none as the cache's
    assert 1 + 2 * (1024 // 10) >= len(stalled.got) > 0
    assert logdelivery.dropped_total() - before == 2000 - len(stalled.got)


def test_blocking_a_failing_driver_costs_the_cache_nothing() -> None:
    from skiff.core.containers.logcache import CachedLog

    gone, cache = GatedDriver(), ListCache()
    gone.failing = True
    gone.gate.set()
    before = logdelivery.dropped_total()
    d = logdelivery.deliver(CachedLog(gone, cache), {}, "b" * 64)  # type: ignore[arg-type]
    for i in range(10):
        d.write(msg(f"{i}\n"))
    d.close()
    assert cache.got == [f"{i}\n".encode() for i in range(10)]
    assert logdelivery.dropped_total() - before == 10
