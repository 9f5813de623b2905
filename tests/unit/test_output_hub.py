"""A container's output fan-out: slow readers cost bounded memory and nobody else.

Class: resource exhaustion by a slow consumer (an attach or ``logs -f`` client
that stops reading).  The hub is driven the way the daemon's pump drives it;
memory is measured with tracemalloc.  With the limit off (``limit=inf``) the
same reader makes the queue grow with everything the container writes.
"""

from __future__ import annotations

import math
import tracemalloc

import pytest
import trio

from skiff.core.containers import streams
from skiff.core.containers.logread import LogCursor
from skiff.core.containers.streams import ITEM_COST, SUBSCRIBER_BACKLOG, OutputHub
from skiff.core.hookspecs import LogMessage, ReadConfig

CHUNK = 64 * 1024
WRITTEN = 32 << 20  # what the "container" writes during one test


async def flood(hub: OutputHub, reader_got: list[int]) -> int:
    """Publish WRITTEN bytes while one reader keeps up; the traced peak."""
    sub = hub.subscribe()

    async def read() -> None:
        async for _stream, data, _when in sub:
            reader_got[0] += len(data)

    tracemalloc.start()
    async with trio.open_nursery() as n:
        n.start_soon(read)
        for i in range(WRITTEN // CHUNK):
            data = bytes([i % 256]) * CHUNK  # a new chunk each time, as the pump reads
            hub.publish("stdout", data, [data], float(i))
            await trio.sleep(0)
        hub.end_run()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_readers_that_never_read_are_dropped_at_their_limit() -> None:
    async def main() -> None:
        hub = OutputHub(owner="c1")
        stuck = [hub.subscribe() for _ in range(4)] + [hub.subscribe(lines=True)]
        got = [0]
        peak = await flood(hub, got)
        assert got[0] == WRITTEN, "a reader that keeps up gets everything"
        assert all(s.dropped for s in stuck)
        assert all(s.backlog == 0 for s in stuck), "a dropped reader's queue is freed"
        assert peak < 8 << 20, f"peak {peak} bytes"
        assert streams._Backlog.total == 0
        for s in stuck:  # a dropped reader's stream ends
            assert [item async for item in s] == []

    trio.run(main)


def test_without_the_limit_a_stuck_reader_holds_everything() -> None:
    """The protection off: the same stuck reader with no limit keeps every chunk."""
    async def main() -> None:
        hub = OutputHub()
        stuck = hub.subscribe(limit=math.inf)  # type: ignore[arg-type]
        got = [0]
        peak = await flood(hub, got)
        assert not stuck.dropped
        assert stuck.backlog >= WRITTEN
        assert peak >= WRITTEN
        stuck.close()
        assert streams._Backlog.total == 0

    trio.run(main)


def test_daemon_wide_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many readers each under their own limit still cannot pile up without end."""
    monkeypatch.setattr(streams, "TOTAL_BACKLOG", 4 << 20)

    async def main() -> None:
        hub = OutputHub()
        subs = [hub.subscribe() for _ in range(16)]
        for i in range(8):
            hub.publish("stdout", bytes(CHUNK), [], float(i))
        assert streams._Backlog.total <= (4 << 20) + 16 * (CHUNK + ITEM_COST)
        assert any(s.dropped for s in subs)
        assert any(not s.dropped for s in subs)
        for s in subs:
            hub.unsubscribe(s)
        assert streams._Backlog.total == 0

    trio.run(main)


def test_a_reader_behind_by_less_than_its_limit_keeps_everything() -> None:
    async def main() -> None:
        hub = OutputHub()
        sub = hub.subscribe()
        n = SUBSCRIBER_BACKLOG // (CHUNK + ITEM_COST)
        for i in range(n):
            hub.publish("stdout", bytes(CHUNK), [], float(i))
        hub.end_run()
        assert not sub.dropped
        assert len([item async for item in sub]) == n

    trio.run(main)


def test_stream_filters_and_lines() -> None:
    async def main() -> None:
        hub = OutputHub()
        raw = hub.subscribe(stdout=False)
        lines = hub.subscribe(lines=True)
        hub.publish("stdout", b"a\nb\nc", [b"a\n", b"b\n"], 1.0)
        hub.publish("stderr", b"e\n", [b"e\n"], 2.0)
        hub.end_run()
        assert [item async for item in raw] == [("stderr", b"e\n", 2.0)]
        assert [item async for item in lines] == [
            ("stdout", b"a\n", 1.0), ("stdout", b"b\n", 1.0), ("stderr", b"e\n", 2.0)]

    trio.run(main)


def test_log_cursor_resumes_without_repeats_or_gaps() -> None:
    """A logs -f reader dropped after part of a same-time batch reads on exactly."""
    log = [LogMessage("stdout", b"%d\n" % i, 100.0 + (i // 3) * 0.5)  # type: ignore[arg-type]
           for i in range(12)]
    cursor = LogCursor()
    sent = [m for m in log[:7] if cursor.take(m)]  # 7: partway through the third time
    cfg = cursor.rewind(ReadConfig(tail=5, until=1e12))
    assert cfg.tail is None and cfg.until == 1e12
    assert cfg.since is not None
    since = cfg.since
    catch_up = [m for m in log if m.time >= since]  # what the driver returns
    sent += [m for m in catch_up if cursor.take(m)]
    assert sent == log
    # live lines after the catch-up go through
    late = LogMessage("stdout", b"late\n", 200.0)  # type: ignore[arg-type]
    assert cursor.take(late)
