"""The json-file log driver: format, read-back filters, rotation, options, speed."""

from __future__ import annotations

import calendar
import json
import os
import re
import time
from pathlib import Path

import pluggy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skiff.core.hookspecs import PROJECT, LogContext, LogMessage, ReadConfig, SkiffSpec
from skiff.plugins.logging import jsonfile, jsonlog, logfiles
from skiff.plugins.logging.jsonfile import JsonFileDriver, parse_size

T0 = 1_795_000_000.0  # 2026-11-18T11:06:40Z, a fixed base for message times
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")


def make(tmp_path: Path, **options: str) -> JsonFileDriver:
    return JsonFileDriver(LogContext("c" * 64, "test", str(tmp_path / "c-json.log"), options))


def fill(drv: JsonFileDriver, n: int, start: int = 0) -> list[LogMessage]:
    msgs = []
    for i in range(start, start + n):
        stream = "stdout" if i % 3 else "stderr"
        msg = LogMessage(stream, f"line {i}\n".encode(), T0 + i)  # type: ignore[arg-type]
        drv.write(msg)
        msgs.append(msg)
    return msgs


def lines(msgs: list[LogMessage]) -> list[bytes]:
    return [m.line for m in msgs]


def test_registered_through_the_hook() -> None:
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(SkiffSpec)
    pm.register(jsonfile)
    (drivers,) = pm.hook.skiff_log_drivers()
    assert set(drivers) == {"json-file"}
    assert drivers["json-file"](LogContext("x", "x", "/nonexistent/x.log", {})).name == "json-file"


def test_file_format_is_dockers(tmp_path: Path) -> None:
    drv = make(tmp_path)
    drv.write(LogMessage("stdout", b"hello \"w\"\n", T0 + 0.123456))
    drv.write(LogMessage("stderr", b"no newline", T0 + 1))
    drv.write(LogMessage("stdout", b"caf\xc3\xa9 \x1b[0m bad \xff\n", T0 + 2))
    drv.close()
    raw = (tmp_path / "c-json.log").read_bytes().splitlines()
    objs = [json.loads(line) for line in raw]
    assert [list(o) for o in objs] == [["log", "stream", "time"]] * 3
    assert objs[0]["log"] == 'hello "w"\n' and objs[0]["stream"] == "stdout"
    assert objs[1] == {"log": "no newline", "stream": "stderr",
                       "time": "2026-11-18T11:06:41.000000000Z"}
    # non-ASCII stays UTF-8 on disk; invalid bytes become U+FFFD, as Go's encoder does
    assert "café".encode() in raw[2]
    assert objs[2]["log"] == "caf\u00e9 \x1b[0m bad \ufffd\n"
    assert objs[0]["time"] == "2026-11-18T11:06:40.123456000Z"
    assert all(STAMP.match(o["time"]) for o in objs)
    assert (tmp_path / "c-json.log").stat().st_mode & 0o777 == 0o640


def test_time_format_rounds_and_carries() -> None:
    fmt = jsonlog.TimeFormatter()
    assert fmt(0.0) == "1970-01-01T00:00:00.000000000Z"
    assert fmt(59.9999996) == "1970-01-01T00:01:00.000000000Z"
    assert fmt(T0 + 0.5) == "2026-11-18T11:06:40.500000000Z"
    assert fmt(T0 + 0.5) == "2026-11-18T11:06:40.500000000Z"  # the cached path
    assert fmt(T0 + 1.25) == "2026-11-18T11:06:41.250000000Z"
    parse = jsonlog.TimeParser()
    for ts in (T0, T0 + 0.123456, T0 + 86399.999999):
        assert abs(parse(fmt(ts)) - ts) < 1e-6
    # a stamp from another writer (offset, fewer digits) still parses
    assert parse("2026-11-18T12:06:40.5+01:00") == pytest.approx(T0 + 0.5)
    assert calendar.timegm(time.gmtime(T0)) == T0


def test_round_trip(tmp_path: Path) -> None:
    drv = make(tmp_path)
    sent = fill(drv, 50)
    got = list(drv.read(ReadConfig()))
    assert lines(got) == lines(sent)
    assert [m.stream for m in got] == [m.stream for m in sent]
    assert [m.time for m in got] == pytest.approx([m.time for m in sent], abs=1e-6)
    drv.close()
    # a fresh driver, as the daemon opens for `docker logs`, reads the same
    assert lines(list(make(tmp_path).read(ReadConfig()))) == lines(sent)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["stdout", "stderr"]), st.text(max_size=200)),
                max_size=20))
def test_round_trip_any_text(tmp_path_factory: pytest.TempPathFactory,
                             items: list[tuple[str, str]]) -> None:
    drv = make(tmp_path_factory.mktemp("rt"))
    sent = [LogMessage(s, t.encode(), T0 + i) for i, (s, t) in enumerate(items)]  # type: ignore[arg-type]
    for m in sent:
        drv.write(m)
    got = list(drv.read(ReadConfig()))
    drv.close()
    # a message that is empty leaves an empty "log": it still reads back
    assert [(m.stream, m.line) for m in got] == [(m.stream, m.line) for m in sent]


def test_reader_alone_creates_nothing(tmp_path: Path) -> None:
    drv = make(tmp_path)
    assert list(drv.read(ReadConfig())) == []
    assert list(drv.read(ReadConfig(tail=5))) == []
    drv.close()
    assert not (tmp_path / "c-json.log").exists()


def test_appends_to_an_existing_log(tmp_path: Path) -> None:
    drv = make(tmp_path)
    fill(drv, 3)
    drv.close()
    drv = make(tmp_path)  # the container restarted
    fill(drv, 2, start=3)
    drv.close()
    assert lines(list(make(tmp_path).read(ReadConfig()))) == [
        f"line {i}\n".encode() for i in range(5)
    ]


def test_visible_to_readers_before_close(tmp_path: Path) -> None:
    writer = make(tmp_path)
    fill(writer, 10)
    # no close, no flush: a reader in another driver instance sees every line
    assert len(list(make(tmp_path).read(ReadConfig()))) == 10
    assert len(list(make(tmp_path).read(ReadConfig(tail=4)))) == 4
    writer.close()


def test_unfinished_last_line_is_skipped(tmp_path: Path) -> None:
    drv = make(tmp_path)
    fill(drv, 3)
    drv.close()
    with open(tmp_path / "c-json.log", "ab") as f:
        f.write(b'{"log":"torn","stream":"std')  # a write in progress
    assert lines(list(drv.read(ReadConfig()))) == [b"line 0\n", b"line 1\n", b"line 2\n"]
    assert lines(list(drv.read(ReadConfig(tail=2)))) == [b"line 1\n", b"line 2\n"]


def test_tail(tmp_path: Path) -> None:
    drv = make(tmp_path)
    sent = fill(drv, 100)
    assert lines(list(drv.read(ReadConfig(tail=3)))) == lines(sent[-3:])
    assert list(drv.read(ReadConfig(tail=0))) == []
    assert lines(list(drv.read(ReadConfig(tail=1000)))) == lines(sent)
    drv.close()


def test_tail_reads_backwards_across_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    drv = make(tmp_path)
    big = [LogMessage("stdout", b"x" * (i % 700) + b"\n", T0 + i) for i in range(3000)]
    for m in big:
        drv.write(m)
    size = (tmp_path / "c-json.log").stat().st_size
    assert size > 10 * logfiles.BACK_BLOCK
    for n in (1, 2, 97, 1500, 3000):
        assert lines(list(drv.read(ReadConfig(tail=n)))) == lines(big[-n:])
    # a small tail reads only the end of the file
    reads: list[int] = []
    real = jsonfile.lines_backwards

    def counting(lf):  # type: ignore[no-untyped-def]
        f = lf.f
        orig_read = f.read

        def read(n: int = -1) -> bytes:
            data = orig_read(n)
            reads.append(len(data))
            return data

        f.read = read
        return real(lf)

    monkeypatch.setattr(jsonfile, "lines_backwards", counting)
    assert len(list(drv.read(ReadConfig(tail=5)))) == 5
    # one block backwards to find the start, the five lines again forwards
    assert sum(reads) <= 2 * logfiles.BACK_BLOCK < size
    drv.close()


def test_since_until_inclusive(tmp_path: Path) -> None:
    drv = make(tmp_path)
    sent = fill(drv, 20)
    got = list(drv.read(ReadConfig(since=T0 + 5, until=T0 + 8)))
    assert lines(got) == lines(sent[5:9])
    assert lines(list(drv.read(ReadConfig(since=T0 + 18.5)))) == lines(sent[19:])
    assert lines(list(drv.read(ReadConfig(until=T0 + 1)))) == lines(sent[:2])
    # tail counts within the window, and stops reading once past "since"
    assert lines(list(drv.read(ReadConfig(tail=2, since=T0 + 5, until=T0 + 8)))) == lines(
        sent[7:9]
    )
    assert lines(list(drv.read(ReadConfig(tail=10, since=T0 + 15)))) == lines(sent[15:])
    drv.close()


def test_stream_filters(tmp_path: Path) -> None:
    drv = make(tmp_path)
    sent = fill(drv, 30)
    out = [m for m in sent if m.stream == "stdout"]
    err = [m for m in sent if m.stream == "stderr"]
    assert lines(list(drv.read(ReadConfig(stderr=False)))) == lines(out)
    assert lines(list(drv.read(ReadConfig(stdout=False)))) == lines(err)
    assert list(drv.read(ReadConfig(stdout=False, stderr=False))) == []
    assert lines(list(drv.read(ReadConfig(tail=3, stdout=False)))) == lines(err[-3:])
    drv.close()


def test_rotation(tmp_path: Path) -> None:
    drv = make(tmp_path, **{"max-size": "1k", "max-file": "3"})
    sent = fill(drv, 500)
    drv.close()
    path = tmp_path / "c-json.log"
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["c-json.log", "c-json.log.1", "c-json.log.2"]
    one_line = max(len(line) for line in path.read_bytes().splitlines(keepends=True))
    for name in ("c-json.log.1", "c-json.log.2"):
        size = (tmp_path / name).stat().st_size
        # a file rotates at the first write that finds it at max-size or over
        assert 1000 <= size < 1000 + one_line
    got = list(drv.read(ReadConfig()))
    # what is kept is the most recent part of the log, in order, without gaps
    assert 20 < len(got) < 100
    assert lines(got) == lines(sent[-len(got):])
    assert lines(list(drv.read(ReadConfig(tail=len(got) - 1)))) == lines(sent[-len(got) + 1:])
    # the oldest file's first line is the first message read
    first = json.loads((tmp_path / "c-json.log.2").read_bytes().splitlines()[0])
    assert first["log"].encode() == got[0].line


def test_rotation_tail_spans_files(tmp_path: Path) -> None:
    drv = make(tmp_path, **{"max-size": "200", "max-file": "5"})
    sent = fill(drv, 30)
    assert len(list(tmp_path.iterdir())) == 5
    current = len((tmp_path / "c-json.log").read_bytes().splitlines())
    n = current + 3
    assert lines(list(drv.read(ReadConfig(tail=n)))) == lines(sent[-n:])
    drv.close()


def test_max_file_one_starts_over(tmp_path: Path) -> None:
    drv = make(tmp_path, **{"max-size": "300"})
    sent = fill(drv, 40)
    drv.close()
    assert [p.name for p in tmp_path.iterdir()] == ["c-json.log"]
    got = list(drv.read(ReadConfig()))
    assert 0 < len(got) < 10 and lines(got) == lines(sent[-len(got):])


def test_reader_keeps_its_files_through_rotation(tmp_path: Path) -> None:
    drv = make(tmp_path, **{"max-size": "500", "max-file": "2"})
    fill(drv, 20)
    reader = make(tmp_path, **{"max-size": "500", "max-file": "2"}).read(ReadConfig())
    first = next(reader)
    fill(drv, 200, start=20)  # rotates many times while the reader is half way
    rest = list(reader)
    got = [first, *rest]
    # the reader sees the log as it was when it started: consecutive, no duplicates
    nums = [int(m.line.split()[1]) for m in got]
    assert nums == list(range(nums[0], nums[0] + len(nums)))
    assert nums[-1] == 19
    drv.close()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"foo": "1"}, "unknown log opt 'foo' for json-file log driver"),
        ({"max-size": "ten"}, "'max-size'"),
        ({"max-size": "0"}, "'max-size' of the json-file log driver must be positive"),
        ({"max-size": "-5m"}, "'max-size'"),
        ({"max-file": "x"}, "'max-file'"),
        ({"max-file": "0"}, "'max-file' of the json-file log driver cannot be less than 1"),
        ({"compress": "true", "max-size": "1m"},
         "compress cannot be true when max-file is less than 2 or max-size is not set"),
        ({"compress": "true", "max-size": "-1", "max-file": "3"},
         "compress cannot be true when max-file"),
        ({"tag": "{{.Name | upper}}"}, "log opt 'tag' of the json-file log driver"),
        ({"tag": "{{.Name"}, "log opt 'tag'"),
        ({"labels-regex": "a("}, "log opt labels-regex: invalid regular expression"),
        ({"env-regex": "*"}, "log opt env-regex: invalid regular expression"),
        ({"compress": "maybe"}, "'compress'"),
    ],
)
def test_bad_options(tmp_path: Path, options: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        make(tmp_path, **options)


def test_accepted_options(tmp_path: Path) -> None:
    drv = make(tmp_path, **{"max-size": "10m", "max-file": "3", "compress": "false",
                            "labels": "a,b", "env": "X", "tag": "{{.Name}}"})
    assert (drv.max_size, drv.max_file) == (10_000_000, 3)


@pytest.mark.parametrize(
    ("text", "size"),
    [("1", 1), ("1k", 1000), ("10m", 10_000_000), ("10MB", 10_000_000), ("1.5k", 1500),
     ("2g", 2_000_000_000), ("3 kb", 3000), ("4KiB", 4000)],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_throughput_one_million_writes(tmp_path: Path) -> None:
    """Prints the write rate; asserts only that every line arrived."""
    n = 1_000_000
    drv = make(tmp_path, **{"max-size": "-1"})
    line = b"a typical log line of some sixty bytes, give or take a few\n"
    now = time.time()
    msgs = [LogMessage("stdout", line, now + i * 1e-5) for i in range(1000)]
    t = time.perf_counter()
    for i in range(n):
        drv.write(msgs[i % 1000])
    elapsed = time.perf_counter() - t
    drv.close()
    size = os.path.getsize(tmp_path / "c-json.log")
    print(f"\njson-file: {n} writes in {elapsed:.2f} s = {n / elapsed:,.0f} lines/s, "
          f"{elapsed / n * 1e6:.2f} us/line, {size / elapsed / 1e6:.1f} MB/s")
    t = time.perf_counter()
    last = list(drv.read(ReadConfig(tail=10)))
    tail_ms = (time.perf_counter() - t) * 1000
    print(f"json-file: tail=10 of a {size / 1e6:.0f} MB log in {tail_ms:.2f} ms")
    assert len(last) == 10 and last[-1].line == line
    with open(tmp_path / "c-json.log", "rb") as f:
        assert sum(1 for _ in f) == n
