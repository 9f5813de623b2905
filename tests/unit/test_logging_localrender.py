"""The local driver's ``read_rendered`` (C, ``localrender``) gives exactly what its
``read`` and the daemon's general renderer give, for any file and any request."""

from __future__ import annotations

import struct
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from skiff.core.containers.framing import HEADER
from skiff.core.containers.logrender import render
from skiff.core.hookspecs import LogContext, LogMessage, LogRender, PartialMeta, ReadConfig
from skiff.plugins.logging import localfmt
from skiff.plugins.logging.local import LocalDriver

T0 = 1_796_000_000


def general(driver: LocalDriver, cfg: ReadConfig, how: LogRender) -> bytes:
    return b"".join(render(m, how) for m in driver.read(cfg))


def fast(driver: LocalDriver, cfg: ReadConfig, how: LogRender) -> bytes:
    return b"".join(r.data for r in driver.read_rendered(cfg, how))


def demux(data: bytes) -> list[tuple[int, bytes]]:
    """The bytes of each stream, with runs of one stream joined: what a client that
    copies frames into two streams sees (coalesced frames must not change it)."""
    out: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(data):
        kind, size = HEADER.unpack_from(data, pos)
        payload = data[pos + 8:pos + 8 + size]
        if out and out[-1][0] == kind:
            out[-1] = (kind, out[-1][1] + payload)
        else:
            out.append((kind, payload))
        pos += 8 + size
    return out


metas = st.one_of(st.none(), st.builds(
    PartialMeta, st.sampled_from(["", "a" * 64]), st.integers(min_value=0, max_value=300),
    st.booleans()))

entries = st.lists(st.tuples(
    st.sampled_from(["stdout", "stderr"]),
    st.binary(max_size=300).map(lambda b: b.replace(b"\n", b"")),
    st.one_of(st.booleans(), metas),  # partial: a bare flag, or dockerd's metadata
    st.integers(min_value=0, max_value=3),  # seconds after the previous one
    # whole microseconds, as skiff writes them; see test_nanoseconds_* for dockerd's
    st.integers(min_value=0, max_value=999_999).map(lambda us: us * 1000),
), max_size=60)

#: half a microsecond off the messages' grid: a float this size is exact to about
#: 0.1 us, so which messages a bound lets through never depends on rounding
bounds = st.one_of(st.none(), st.integers(min_value=-1_000_000, max_value=100_000_000).map(
    lambda us: T0 + (us + 0.5) / 1e6))

requests = st.builds(
    ReadConfig,
    tail=st.one_of(st.none(), st.integers(min_value=0, max_value=70)),
    since=bounds, until=bounds,
    stdout=st.booleans(), stderr=st.booleans())

renders = st.builds(LogRender, timestamps=st.booleans(), details=st.booleans(),
                    framed=st.booleans(), coalesce=st.booleans())


def write(path: Path, items: list[tuple[str, bytes, bool | PartialMeta | None, int, int]],
          **opts: str) -> LocalDriver:
    # entries as other writers (dockerd) make them: full nanoseconds, partials
    d = LocalDriver(LogContext("c" * 64, "/x", str(path), dict(opts)))
    sec = T0
    with open(path, "ab") as f:
        for stream, line, partial, gap, ns in items:
            sec += gap
            if isinstance(partial, PartialMeta):
                text = line + b"\n" if partial.last else line
                f.write(localfmt.encode(stream, text, sec * 1_000_000_000 + ns, partial))
                continue
            f.write(localfmt.encode(stream, line if partial else line + b"\n",
                                    sec * 1_000_000_000 + ns))
    return d


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=entries, cfg=requests, how=renders)
# found by hypothesis: a clock set back (stderr at +2 s after stdout at +2.000001 s)
# with --tail and --until; the general tail read let the later one in, the C
# renderer stopped at the first message past --until
@example(items=[("stdout", b"", False, 2, 0), ("stderr", b"", False, 0, 0),
                ("stdout", b"", False, 0, 1000), ("stderr", b"", False, 0, 0)],
         cfg=ReadConfig(tail=2, since=None, until=T0 + 2.0000005, stdout=False, stderr=True),
         how=LogRender(timestamps=False, details=False, framed=False, coalesce=False))
def test_rendered_equals_the_general_path(tmp_path: Path, items: list, cfg: ReadConfig,
                                          how: LogRender) -> None:
    path = tmp_path / "container.log"
    path.unlink(missing_ok=True)
    d = write(path, items)
    want, got = general(d, cfg, how), fast(d, cfg, how)
    if how.framed and how.coalesce:
        assert demux(got) == demux(want)
    else:
        assert got == want


def test_rotated_and_compressed_files_render_as_read(tmp_path: Path) -> None:
    d = LocalDriver(LogContext("c" * 64, "/x", str(tmp_path / "c.log"),
                               {"max-size": "4k", "max-file": "4"}))
    for i in range(3000):
        d.write(LogMessage("stderr" if i % 3 else "stdout", b"line %05d\n" % i, T0 + i / 7))
    d.close()
    assert list(tmp_path.glob("c.log.*.gz"))
    for cfg in (ReadConfig(), ReadConfig(tail=10), ReadConfig(tail=500),
                ReadConfig(since=T0 + 300, until=T0 + 400), ReadConfig(stdout=False)):
        for how in (LogRender(), LogRender(timestamps=True, framed=False)):
            want = general(d, cfg, how)
            assert want and fast(d, cfg, how) == want


def test_the_cursor_facts_of_each_run(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    d = write(path, [("stdout", b"a", False, 0, 1000), ("stdout", b"b", False, 1, 5000),
                     ("stderr", b"c", False, 0, 5400), ("stdout", b"d", False, 0, 6000)])
    runs = list(d.read_rendered(ReadConfig(), LogRender()))
    assert len(runs) == 1
    # the last two share their microsecond (5400 ns rounds to 5 us, 6000 ns to 6 us: no)
    assert runs[0].last_time == T0 + 1 + 6000 / 1e9 and runs[0].last_count == 1
    d = write(path, [("stdout", b"e", False, 1, 6200)])
    runs = list(d.read_rendered(ReadConfig(), LogRender()))
    assert runs[-1].last_count == 2  # 6000 and 6200 ns: the same microsecond


def test_nanoseconds_show_as_their_microsecond(tmp_path: Path) -> None:
    """dockerd writes whole nanoseconds; the general path goes through a float,
    which at 1.8e9 s is exact to about 0.2 us: the C path rounds the integer."""
    path = tmp_path / "c.log"
    d = write(path, [("stdout", b"a", False, 0, 212_671_400),
                     ("stdout", b"b", False, 0, 999_999_600)])
    got = fast(d, ReadConfig(), LogRender(timestamps=True, framed=False))
    assert got == (b"2026-11-30T00:53:20.212671000Z a\n"
                   b"2026-11-30T00:53:21.000000000Z b\n")


def test_corrupt_entries_end_the_file_as_the_general_reader_does(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    d = write(path, [("stdout", b"line %d" % i, False, 1, 0) for i in range(10)])
    good = path.read_bytes()
    bad_source = localfmt.SIZE.pack(8) + b"\x0a\x06stdin!" + localfmt.SIZE.pack(8)
    unknown_wire = localfmt.SIZE.pack(2) + b"\x0b\x00" + localfmt.SIZE.pack(2)
    sizes_disagree = localfmt.SIZE.pack(2) + b"\x20\x01" + localfmt.SIZE.pack(3)
    too_big = struct.pack(">I", localfmt.MAX_ENTRY + 1) + b"\0" * 64
    for damage in (bad_source, unknown_wire, sizes_disagree, too_big):
        path.write_bytes(good + damage + good)
        want = general(d, ReadConfig(), LogRender())
        assert want.count(b"line") == 10
        assert fast(d, ReadConfig(), LogRender()) == want


def test_a_line_larger_than_the_output_buffer(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    big = b"x" * (localfmt.MAX_ENTRY - 100)
    d = write(path, [("stdout", big, False, 0, 0)] * 6 + [("stderr", b"end", True, 1, 0)])
    how = LogRender(timestamps=True, details=True)
    assert fast(d, ReadConfig(), how) == general(d, ReadConfig(), how)


def test_speed_of_a_million_lines(tmp_path: Path) -> None:
    """Not a timing assertion: the count and the bytes are checked, the time is printed."""
    import time
    path = tmp_path / "c.log"
    head = localfmt.entry_head("stdout", T0 * 1_000_000_000)
    with open(path, "wb") as f:
        f.write(b"".join(localfmt.frame(head, b"%d\n" % i) for i in range(1_000_000)))
    d = LocalDriver(LogContext("c" * 64, "/x", str(path), {}))
    t = time.perf_counter()
    data = fast(d, ReadConfig(), LogRender(framed=False))
    print(f"1,000,000 lines rendered in {time.perf_counter() - t:.3f} s")
    assert data == b"".join(b"%d\n" % i for i in range(1_000_000))


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=st.lists(st.lists(st.binary(max_size=400).map(lambda b: b.replace(b"\n", b"")),
                                min_size=1, max_size=40), min_size=1, max_size=8),
       max_size=st.sampled_from(["1k", "3k", "100k"]))
def test_write_lines_writes_what_write_writes(tmp_path: Path, chunks: list[list[bytes]],
                                              max_size: str) -> None:
    """The C framer's files are byte for byte the per-message writer's, rotation
    points included."""
    files = {}
    for way in ("one", "many"):
        root = tmp_path / way
        if root.exists():
            for p in root.iterdir():
                p.unlink()
        d = LocalDriver(LogContext("c" * 64, "/x", str(root / "c.log"),
                                   {"max-size": max_size, "max-file": "50", "compress": "false"}))
        for i, chunk in enumerate(chunks):
            lines = [line + b"\n" for line in chunk]
            stream = "stderr" if i % 2 else "stdout"
            if way == "one":
                for line in lines:
                    d.write(LogMessage(stream, line, T0 + i))  # type: ignore[arg-type]
            else:
                d.write_lines(stream, lines, T0 + i)
        d.close()
        files[way] = {p.name: p.read_bytes() for p in sorted(root.iterdir())}
    assert files["many"] == files["one"]
