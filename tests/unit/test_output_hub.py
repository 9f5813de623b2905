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


class PumpModel:
    """What ``streams.pump`` does with each chunk of one stream, and the log it writes."""

    def __init__(self, hub: OutputHub) -> None:
        from skiff.core.containers.streams import LineSplitter

        self.hub = hub
        self.splitter = LineSplitter()
        self.logged: list[LogMessage] = []

    def record(self, data: bytes, when: float) -> None:
        lines = self.splitter.feed(data)
        self.logged += [LogMessage("stdout", line, when) for line in lines]  # type: ignore[arg-type]
        self.hub.pending["stdout"] = self.splitter.buf
        self.hub.publish("stdout", data, lines, when)

    def end(self) -> None:
        self.logged += [LogMessage("stdout", line, 9999.0)  # type: ignore[arg-type]
                        for line in self.splitter.flush()]


def catch_up(progress: object, logged: list[LogMessage]) -> list[bytes]:
    cursor = progress.cursor  # type: ignore[attr-defined]
    since = cursor.rewind(ReadConfig()).since
    return [progress.trim(m) for m in logged  # type: ignore[attr-defined]
            if (since is None or m.time >= since) and cursor.take(m)]


def test_attach_inside_a_long_line_then_dropped_at_its_cut() -> None:
    """The client attaches 5000 bytes into a line the pump cuts at 16 KiB and falls
    behind right after the cut: the catch-up neither repeats nor skips a byte."""
    from skiff.core.containers.logread import RawProgress

    async def main() -> None:
        hub = OutputHub()
        pump = PumpModel(hub)
        pump.record(b"before\n" + b"y" * 5000, 1.0)
        sub = hub.subscribe(limit=4096)
        progress = RawProgress(hub.pending, 1.5)
        after = [b"y" * 11384, b"y" * 3616 + b"\nz\n"] + [b"line %d\n" % i for i in range(2000)]
        pump.record(after[0], 2.0)  # the pump cuts the 16 KiB line here
        async for kind, raw, when in sub:
            progress.sent(kind, raw, when)
            got = [raw]
            break
        for i, data in enumerate(after[1:]):
            pump.record(data, 3.0 + i)
        assert sub.dropped
        pump.end()
        got += catch_up(progress, pump.logged)
        assert b"".join(got) == b"".join(after)

    trio.run(main)


def test_attach_reader_dropped_mid_line_reads_on_from_the_log_exactly() -> None:
    """An attach client gets raw chunks; dropped part-way (mid-line, mid-batch of
    same-time lines), it reads on from the log: every byte once, none missing."""
    import random

    from skiff.core.containers.logread import RawProgress

    rng = random.Random(7)
    text = b"".join(b"line %d %s\n" % (i, b"x" * rng.randrange(0, 40)) for i in range(300))
    long_at = len(text) + 5000  # the client subscribes inside a line the pump cuts at 16 KiB
    text += b"y" * 20000 + b"\n"
    text += b"".join(b"line %d %s\n" % (i, b"x" * rng.randrange(0, 40)) for i in range(3000))
    text += b"unfinished"
    chunks = []
    pos = 0
    while pos < len(text):
        n = rng.randrange(1, 200)
        chunks.append(text[pos:pos + n])
        pos += n

    async def main() -> None:
        hub = OutputHub()
        pump = PumpModel(hub)
        start = next(i for i in range(len(chunks))
                     if sum(map(len, chunks[:i])) >= long_at)
        for i, data in enumerate(chunks[:start]):
            pump.record(data, 1000.0 + i // 3)  # three chunks share each time
        sub = hub.subscribe(limit=16 * 1024)
        progress = RawProgress(hub.pending, 1000.0 + start // 3)
        got = []
        for i, data in enumerate(chunks[start:], start):
            pump.record(data, 1000.0 + i // 3)
            if i < start + 300:  # the client reads for a while, then stops
                async for kind, raw, when in sub:
                    got.append(raw)
                    progress.sent(kind, raw, when)
                    break
        assert sub.dropped
        pump.end()
        got += catch_up(progress, pump.logged)
        assert b"".join(got) == b"".join(chunks[start:])

    trio.run(main)


def test_the_splitter_tags_the_pieces_of_a_cut_line_as_dockerd() -> None:
    from skiff.core.containers.streams import MAX_LINE, LineSplitter
    from skiff.core.hookspecs import PartialMeta

    s = LineSplitter(tag_pieces=True)
    assert s.feed(b"short\nand ") == [b"short\n"] and s.meta is None
    pieces = s.feed(b"y" * (2 * MAX_LINE))  # the line is cut twice, the rest waits
    assert [len(p) for p in pieces] == [MAX_LINE, MAX_LINE] and s.meta is not None
    ident = s.meta[0].id  # type: ignore[union-attr]
    assert len(ident) == 64 and s.meta == [PartialMeta(ident, 1, False),
                                           PartialMeta(ident, 2, False)]
    # "and " and the first y's went out in the first piece: 4 y's wait for the rest
    assert s.feed(b"end\nnext\nleft") == [b"yyyyend\n", b"next\n"]
    assert s.meta == [PartialMeta(ident, 3, True), None]
    # the unfinished bytes at exit are a piece too: a new line, a new id
    assert s.flush() == [b"left"]
    assert s.meta is not None and s.meta[0].ordinal == 1 and s.meta[0].id != ident
    assert not s.meta[0].last
    # a whole line that came in one chunk is cut the same way; exactly 16 KiB
    # leaves an empty last piece, as dockerd's full buffer does
    t = LineSplitter(tag_pieces=True)
    assert t.feed(b"a\n" + b"z" * (MAX_LINE + 5) + b"\nb\n" + b"w" * MAX_LINE + b"\n") == [
        b"a\n", b"z" * MAX_LINE, b"zzzzz\n", b"b\n", b"w" * MAX_LINE, b"\n"]
    assert t.meta is not None
    m = t.meta
    assert (m[0], m[3]) == (None, None) and m[1].id == m[2].id != m[4].id == m[5].id  # type: ignore[union-attr]
    assert [(x.ordinal, x.last) for x in (m[1], m[2], m[4], m[5])] == [  # type: ignore[union-attr]
        (1, False), (2, True), (1, False), (2, True)]
    # untagged (attach's own bookkeeping): the same lines, no metadata
    u = LineSplitter()
    assert len(u.feed(b"z" * MAX_LINE)) == 1 and u.meta is None
    assert u.feed(b"z" * (MAX_LINE + 1) + b"\n") == [b"z" * MAX_LINE, b"z\n"] and u.meta is None
