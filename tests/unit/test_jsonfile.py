"""The json-file log driver: format, read-back filters, rotation, options, speed."""

from __future__ import annotations

import calendar
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pluggy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skiff.core.hookspecs import PROJECT, LogContext, LogMessage, LogRender, ReadConfig, SkiffSpec
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


# -- attrs, dockerd's escaping, --details -------------------------------------

def attr_ctx(tmp_path: Path, **options: str) -> LogContext:
    return LogContext("0123456789ab" + "c" * 52, "/web", str(tmp_path / "c-json.log"),
                      dict(options), image_name="busybox:latest",
                      labels={"team": "a b", "com.x.y": "z", "other": "o"},
                      env=["A=1", "PATH=/bin", "NOVALUE"], command=["sh"], hostname="h")


def test_attrs_written_as_dockerd(tmp_path: Path) -> None:
    drv = JsonFileDriver(attr_ctx(tmp_path, labels="team,missing", **{
        "labels-regex": r"^com\.", "env": "A,NOVALUE", "env-regex": "^PA",
        "tag": "{{.Name}}/{{.ID}}"}))
    drv.write(LogMessage("stdout", b"hi\n", T0))
    drv.close()
    assert (tmp_path / "c-json.log").read_bytes() == (
        b'{"log":"hi\\n","stream":"stdout","attrs":{"A":"1","PATH":"/bin","com.x.y":"z",'
        b'"tag":"web/0123456789ab","team":"a b"},"time":"2026-11-18T11:06:40.000000000Z"}\n')
    (msg,) = list(JsonFileDriver(attr_ctx(tmp_path)).read(ReadConfig()))
    assert msg.attrs == {"A": "1", "PATH": "/bin", "com.x.y": "z", "tag": "web/0123456789ab",
                         "team": "a b"}


@pytest.mark.parametrize("options", [{}, {"tag": ""}, {"labels": "nosuch"}, {"env": ""}])
def test_no_attrs_unless_something_is_selected(tmp_path: Path, options: dict[str, str]) -> None:
    # dockerd has no default tag for json-file: attrs only when asked for and not empty
    drv = JsonFileDriver(attr_ctx(tmp_path, **options))
    drv.write(LogMessage("stderr", b"x", T0))
    drv.close()
    assert b"attrs" not in (tmp_path / "c-json.log").read_bytes()


def test_escapes_are_gos(tmp_path: Path) -> None:
    drv = make(tmp_path)
    drv.write(LogMessage("stdout", "<a>&\t\x01\r\u2028é\"\\".encode() + b"\xff\n", T0))
    drv.close()
    line = (tmp_path / "c-json.log").read_bytes()
    assert line.startswith(b'{"log":"\\u003ca\\u003e\\u0026\\u0009\\u0001\\r\\u2028'
                           + "é".encode() + b'\\"\\\\\\ufffd\\n","stream"')
    assert jsonlog.encode_attrs({"k\t": "<v>"}) == b'{"k\\t":"\\u003cv\\u003e"}'


def test_details_text() -> None:
    from skiff.core.containers.logrender import details_text
    assert details_text({"b": "x y", "a": "1=2&3,/~"}) == b"a=1%3D2%263%2C%2F~,b=x+y"
    assert details_text(None) == details_text({}) == b""


# -- the fast path renders exactly what the general one does ------------------

def general(drv: JsonFileDriver, cfg: ReadConfig, how: LogRender) -> Any:
    from skiff.core.containers.logrender import render
    out = b"".join(render(m, how) for m in drv.read(cfg))
    return demuxed(out) if how.coalesce else out


def fast(drv: JsonFileDriver, cfg: ReadConfig, how: LogRender) -> Any:
    out = b"".join(r.data for r in drv.read_rendered(cfg, how))
    return demuxed(out) if how.coalesce else out


def demuxed(data: bytes) -> list[tuple[int, bytes]]:
    """What a client that copies frames into two streams sees: runs of one stream."""
    runs: list[tuple[int, bytes]] = []
    while data:
        kind, size = int(data[0]), int.from_bytes(data[4:8], "big")
        payload, data = data[8:8 + size], data[8 + size:]
        if runs and runs[-1][0] == kind:
            runs[-1] = (kind, runs[-1][1] + payload)
        else:
            runs.append((kind, payload))
    return runs


HOWS = [LogRender(), LogRender(timestamps=True), LogRender(details=True),
        LogRender(timestamps=True, details=True, framed=False), LogRender(framed=False),
        LogRender(coalesce=True), LogRender(timestamps=True, details=True, coalesce=True)]


def configs(n: int) -> list[ReadConfig]:
    return [ReadConfig(), ReadConfig(stderr=False), ReadConfig(stdout=False),
            ReadConfig(tail=7), ReadConfig(tail=0), ReadConfig(tail=n + 5),
            ReadConfig(since=T0 + 3), ReadConfig(until=T0 + n / 2),
            ReadConfig(since=T0 + 2.5, until=T0 + 9, stdout=False, tail=3)]


@pytest.mark.parametrize("how", HOWS)
def test_fast_path_matches_general(tmp_path: Path, how: LogRender,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logfiles, "READ_BLOCK", 300)  # many blocks, lines across them
    drv = JsonFileDriver(attr_ctx(tmp_path, tag="{{.Name}}", **{"max-size": "2k",
                                                                "max-file": "4", "compress": "1"}))
    texts = [b"plain\n", b"tab\there\n", b"quote \" and \\n\n", b"no newline", b"\n",
             "é ü\n".encode(), b"x" * 500 + b"\n"]
    n = 0
    for i in range(40):  # runs of one stream and one time, as the pump writes them
        stream = "stderr" if i % 4 == 3 else "stdout"
        batch = [texts[(i + j) % len(texts)] if i % 5 == 0 else b"line %d.%d\n" % (i, j)
                 for j in range(1 + i % 3)]
        drv.write_lines(stream, batch, T0 + i / 2)
        n += len(batch)
    drv.files.wait()
    assert sorted(os.listdir(tmp_path)) == ["c-json.log", "c-json.log.1.gz", "c-json.log.2.gz",
                                            "c-json.log.3.gz"]
    reader = JsonFileDriver(attr_ctx(tmp_path, tag="{{.Name}}"))
    for cfg in configs(20):
        want = general(reader, cfg, how)
        assert fast(reader, cfg, how) == want, cfg
    assert b"line 39.0" in general(reader, ReadConfig(), LogRender())
    drv.close()


def test_fast_path_last_time_for_the_cursor(tmp_path: Path) -> None:
    drv = make(tmp_path)
    drv.write_lines("stdout", [b"a\n", b"b\n"], T0)
    drv.write_lines("stdout", [b"c\n", b"d\n", b"e\n"], T0 + 1.5)
    (run,) = list(drv.read_rendered(ReadConfig(), LogRender(framed=False)))
    assert run.data == b"a\nb\nc\nd\ne\n"
    assert (run.last_time, run.last_count) == (pytest.approx(T0 + 1.5), 3)


def test_fast_path_skips_an_unfinished_line(tmp_path: Path) -> None:
    drv = make(tmp_path)
    fill(drv, 5)
    with open(tmp_path / "c-json.log", "ab") as f:
        f.write(b'{"log":"half')
    assert fast(drv, ReadConfig(), LogRender(framed=False)) == b"".join(
        b"line %d\n" % i for i in range(5))


def test_write_lines_is_write_in_bulk(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    opts = {"max-size": "300", "max-file": "2"}
    one, many = make(tmp_path / "a", **opts), make(tmp_path / "b", **opts)
    lines_ = [b"message %d\n" % i for i in range(30)]
    for line in lines_:
        one.write(LogMessage("stdout", line, T0))
    many.write_lines("stdout", lines_, T0)
    for name in ("c-json.log", "c-json.log.1"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


# -- compression ------------------------------------------------------------

def test_compressed_rotation_as_dockerd(tmp_path: Path) -> None:
    import gzip
    drv = make(tmp_path, **{"max-size": "1k", "max-file": "3", "compress": "true"})
    sent = fill(drv, 100)
    drv.close()  # waits for the last compression
    names = sorted(os.listdir(tmp_path))
    assert names == ["c-json.log", "c-json.log.1.gz", "c-json.log.2.gz"]
    gz = tmp_path / "c-json.log.1.gz"
    assert gz.stat().st_mode & 0o777 == 0o640
    raw = gz.read_bytes()
    assert raw[3] & 0x04  # FEXTRA: dockerd's {"lastTime": ...}
    xlen = int.from_bytes(raw[10:12], "little")
    extra = json.loads(raw[12:12 + xlen])
    plain = gzip.decompress(raw).splitlines()
    assert extra == {"lastTime": json.loads(plain[-1])["time"]}
    got = list(make(tmp_path, **{"max-size": "1k", "max-file": "3"}).read(ReadConfig()))
    nums = [int(m.line.split()[1]) for m in got]
    assert nums == list(range(nums[0], 100)) and len(nums) > 20  # every kept line, in order
    assert lines(list(drv.read(ReadConfig(tail=len(nums))))) == lines(sent[-len(nums):])
    assert lines(list(drv.read(ReadConfig(tail=len(nums) - 3)))) == lines(sent[-len(nums) + 3:])


def test_since_skips_compressed_files_by_header(tmp_path: Path) -> None:
    drv = make(tmp_path, **{"max-size": "1k", "max-file": "5", "compress": "true"})
    fill(drv, 80)
    drv.close()
    opened = drv.files.open_all()
    try:
        assert [lf.compressed for lf in opened] == [True] * (len(opened) - 1) + [False]
        assert all(lf.last_time is not None for lf in opened[:-1])
        late = opened[-2].last_time
    finally:
        for lf in opened:
            lf.close()
    assert late is not None
    got = list(drv.read(ReadConfig(since=late + 0.5)))
    assert got and all(m.time >= late + 0.5 for m in got)


# -- the default bound --------------------------------------------------------

@pytest.mark.parametrize(("options", "bound"), [
    ({}, (10_000_000, 5)),
    ({"max-size": "1m"}, (1_000_000, 1)),  # Docker's one file when only the size is given
    ({"max-file": "3"}, (10_000_000, 3)),
    ({"max-size": "-1"}, (-1, 1)),  # Docker's unbounded log
])
def test_bounded_by_default(tmp_path: Path, options: dict[str, str],
                            bound: tuple[int, int]) -> None:
    drv = make(tmp_path, **options)
    assert (drv.max_size, drv.max_file) == bound


def test_default_bound_holds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jsonfile, "DEFAULT_MAX_SIZE", 2000)
    drv = make(tmp_path)
    sent = fill(drv, 1000)
    drv.close()
    assert len(os.listdir(tmp_path)) == 5
    total = sum(p.stat().st_size for p in tmp_path.iterdir())
    assert total <= 5 * 2000 + 100
    got = list(drv.read(ReadConfig()))
    assert lines(got) == lines(sent[-len(got):])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["stdout", "stderr"]),
                          st.lists(st.binary(max_size=40).map(lambda b: b + b"\n"), min_size=1,
                                   max_size=4)), max_size=12))
def test_fast_path_matches_general_any_bytes(tmp_path_factory: pytest.TempPathFactory,
                                              runs: list[tuple[str, list[bytes]]]) -> None:
    drv = make(tmp_path_factory.mktemp("fast"))
    for i, (stream, batch) in enumerate(runs):
        drv.write_lines(stream, batch, T0 + i // 2)
    for how in HOWS:
        for cfg in configs(len(runs)):
            assert fast(drv, cfg, how) == general(drv, cfg, how)
    drv.close()


def test_fast_path_is_taken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    drv = make(tmp_path)
    fill(drv, 30)
    drv.write_lines("stdout", [b"a\\n \"q\" <b>\n"], T0 + 40)
    calls: list[bool] = []
    real = jsonfile.FastRenderer.render

    def spy(self, block):  # type: ignore[no-untyped-def]
        got = real(self, block)
        calls.append(got is not None)
        return got

    monkeypatch.setattr(jsonfile.FastRenderer, "render", spy)
    monkeypatch.setattr(logfiles, "READ_BLOCK", 200)
    assert fast(drv, ReadConfig(), LogRender()) == general(drv, ReadConfig(), LogRender())
    # blocks in skiff's form are rendered whole; the one with other escapes line by line
    assert calls.count(True) >= 3 and calls[-1] is False and calls.count(False) == 1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=30), min_size=1, max_size=8), st.booleans())
def test_write_lines_same_bytes_as_write(tmp_path_factory: pytest.TempPathFactory,
                                         bodies: list[bytes], last_newline: bool) -> None:
    base = tmp_path_factory.mktemp("wl")
    (base / "a").mkdir()
    (base / "b").mkdir()
    batch = [b + b"\n" for b in bodies]
    if not last_newline:
        batch[-1] = batch[-1][:-1]
    one, many = make(base / "a"), make(base / "b")
    for line in batch:
        one.write(LogMessage("stderr", line, T0))
    many.write_lines("stderr", batch, T0)
    assert (base / "a" / "c-json.log").read_bytes() == (base / "b" / "c-json.log").read_bytes()
    if all(_utf8(x) for x in batch):  # (invalid bytes read back as U+FFFD)
        assert [m.line for m in many.read(ReadConfig())] == batch


def _utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def test_bulk_encoding_only_for_plain_lines() -> None:
    end = b'","stream":"stdout","time":"T"}\n'
    assert jsonlog.encode_lines([b"a b\n", b"c\n"], end) == (
        b'{"log":"a b\\n' + end + b'{"log":"c\\n' + end)
    for odd in ([b"a\n", b"tab\t\n"], [b"<\n"], [b"no newline"], [b"a\nb\n"], [b"\xc3\xa9\n"]):
        assert jsonlog.encode_lines(odd, end) is None


def test_a_damaged_compressed_file_reads_as_far_as_it_goes(tmp_path: Path) -> None:
    drv = make(tmp_path, **{"max-size": "1k", "max-file": "3", "compress": "true"})
    sent = fill(drv, 60)
    drv.close()
    gz = tmp_path / "c-json.log.2.gz"
    gz.write_bytes(gz.read_bytes()[:-40])
    got = lines(list(drv.read(ReadConfig())))
    assert got[-20:] == lines(sent[-20:])  # the newer files whole, in order
    assert fast(drv, ReadConfig(), LogRender()) == general(drv, ReadConfig(), LogRender())


def test_coalesced_frames_are_few(tmp_path: Path) -> None:
    drv = make(tmp_path)
    drv.write_lines("stdout", [b"%d\n" % i for i in range(1000)], T0)
    drv.write_lines("stderr", [b"e\n"] * 3, T0 + 1)
    drv.write_lines("stdout", [b"x\n"], T0 + 2)
    runs = b"".join(r.data for r in drv.read_rendered(ReadConfig(), LogRender(coalesce=True)))
    assert demuxed(runs) == [(1, b"".join(b"%d\n" % i for i in range(1000))), (2, b"e\n" * 3),
                             (1, b"x\n")]
    assert len(runs) == 3890 + 6 + 2 + 3 * 8  # three frames, not one a line


def test_render_all_coalesces_runs_of_a_stream() -> None:
    from skiff.core.containers.logrender import render_all
    msgs = [LogMessage("stdout", b"a\n", T0), LogMessage("stdout", b"b\n", T0),
            LogMessage("stderr", b"c\n", T0, {"k": "v"}), LogMessage("stdout", b"d", T0)]
    per_line = render_all(msgs, LogRender(details=True))
    runs = render_all(msgs, LogRender(details=True, coalesce=True))
    assert demuxed(runs) == demuxed(per_line) == [(1, b" a\n b\n"), (2, b"k=v c\n"), (1, b" d")]
    assert len(per_line) - len(runs) == 8  # one header fewer


def test_lines_dockerd_wrote_go_the_general_way(tmp_path: Path) -> None:
    drv = make(tmp_path)
    fill(drv, 3)
    with open(tmp_path / "c-json.log", "ab") as f:
        f.write(b'{"log":"trimmed\\n","stream":"stdout","time":"2026-11-18T11:07:40.5Z"}\n'
                b'{"log":"attrs\\n","stream":"stderr","attrs":{"a":"b"},'
                b'"time":"2026-11-18T11:07:41.123456000Z"}\n'
                b'{"stream":"stdout","time":"2026-11-18T11:07:42.1Z"}\n'
                b'{"log":"zone\\n","stream":"stdout","time":"2026-11-18T12:07:43.000001000+01:00"}\n')
    drv.write(LogMessage("stdout", b"after\n", T0 + 100))
    got = list(drv.read(ReadConfig()))
    assert lines(got)[3:] == [b"trimmed\n", b"attrs\n", b"", b"zone\n", b"after\n"]
    assert got[4].attrs == {"a": "b"}
    for how in HOWS:
        for cfg in configs(8):
            assert fast(drv, cfg, how) == general(drv, cfg, how), (how, cfg)


# -- read_rendered_nowait: a short --tail on the event loop, or BlockingIOError ------------


@pytest.mark.parametrize("cfg", [
    ReadConfig(tail=0), ReadConfig(tail=1), ReadConfig(tail=10), ReadConfig(tail=250),
    ReadConfig(tail=1000), ReadConfig(tail=10, stdout=False),
    ReadConfig(tail=10, since=T0 + 100, until=T0 + 280),
])
@pytest.mark.parametrize("how", [LogRender(), LogRender(timestamps=True, details=True),
                                 LogRender(framed=False), LogRender(coalesce=True)])
def test_nowait_tail_gives_what_read_rendered_gives(tmp_path: Path, cfg: ReadConfig,
                                                    how: LogRender) -> None:
    # rotated across three plain files, the tails reaching into the older ones
    drv = make(tmp_path, **{"max-size": "4k", "max-file": "3", "labels": "a"})
    fill(drv, 300)
    assert len(list(tmp_path.iterdir())) == 3
    want = b"".join(r.data for r in drv.read_rendered(cfg, how))
    got = drv.read_rendered_nowait(cfg, how)
    assert b"".join(r.data for r in got) == want
    drv.close()


def test_nowait_refuses_what_would_wait_or_take_long(tmp_path: Path) -> None:
    drv = make(tmp_path, **{"max-size": "4k", "max-file": "3", "compress": "true"})
    fill(drv, 300)
    drv.files.wait()
    how = LogRender()
    with pytest.raises(BlockingIOError):  # a compressed file in the set
        drv.read_rendered_nowait(ReadConfig(tail=10), how)
    drv.close()
    big = JsonFileDriver(LogContext("d" * 64, "t", str(tmp_path / "d-json.log"), {}))
    for _ in range(1000):
        big.write(LogMessage("stdout", b"x" * 2000 + b"\n", T0))
    for cfg in (ReadConfig(), ReadConfig(tail=1001), ReadConfig(tail=-1)):
        with pytest.raises(BlockingIOError):  # not a short tail
            big.read_rendered_nowait(cfg, how)
    with pytest.raises(BlockingIOError):  # 2 MB to read: past the budget
        big.read_rendered_nowait(ReadConfig(tail=1000), how)
    assert b"".join(r.data for r in big.read_rendered_nowait(ReadConfig(tail=3), how)) == \
        b"".join(r.data for r in big.read_rendered(ReadConfig(tail=3), how))
    big.close()


def test_nowait_falls_back_when_the_page_cache_does_not_hold_the_file(tmp_path: Path) -> None:
    drv = make(tmp_path)
    fill(drv, 50)
    fd = os.open(tmp_path / "c-json.log", os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # out of the page cache
    finally:
        os.close(fd)
    # RWF_NOWAIT: the disk would be needed, so the daemon's thread reads instead
    with pytest.raises(BlockingIOError):
        drv.read_rendered_nowait(ReadConfig(tail=5), LogRender())
    assert b"".join(r.data for r in drv.read_rendered(ReadConfig(tail=5), LogRender())) \
        .count(b"line ") == 5
    drv.close()
