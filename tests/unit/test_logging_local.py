"""The local log driver: the format byte for byte, rotation and compression,
reading forwards and backwards, damaged files; and the dual-logging cache."""

from __future__ import annotations

import gzip
import json
import os
import struct
import time
from pathlib import Path

import pytest

from skiff.core.containers import logcache
from skiff.core.containers.config import InvalidConfig, log_config
from skiff.core.containers.logopts import check_generic
from skiff.core.containers.model import Container
from skiff.core.hookspecs import LogContext, LogMessage, PartialMeta, ReadConfig
from skiff.plugins.logging import localfmt, localgz
from skiff.plugins.logging.local import LocalDriver, parse_options, skiff_container_validate

T0 = 1_796_000_000.25


def ctx(path: Path, **options: str) -> LogContext:
    return LogContext("c" * 64, "/web", str(path), dict(options))


def lines(driver: LocalDriver, **cfg: object) -> list[bytes]:
    return [m.line for m in driver.read(ReadConfig(**cfg))]  # type: ignore[arg-type]


def fill(path: Path, n: int, **options: str) -> LocalDriver:
    d = LocalDriver(ctx(path, **options))
    for i in range(n):
        d.write(LogMessage("stderr" if i % 4 == 3 else "stdout", b"line %05d\n" % i, T0 + i))
    d.close()
    return LocalDriver(ctx(path, **options))


# -- the format -----------------------------------------------------------


def test_entry_bytes_are_dockerds() -> None:
    # LogEntry{source:"stdout", time_nano:1, line:"hi"} as gogo protobuf marshals it
    payload = b"\x0a\x06stdout" + b"\x10\x01" + b"\x1a\x02hi"
    size = struct.pack(">I", len(payload))
    assert localfmt.encode("stdout", b"hi\n", 1) == size + payload + size
    # a partial line keeps no newline and says partial; an empty line has no line field
    assert localfmt.encode("stderr", b"ab", 300)[4:-4] == (
        b"\x0a\x06stderr\x10\xac\x02\x1a\x02ab\x20\x01")
    assert localfmt.encode("stdout", b"\n", 1)[4:-4] == b"\x0a\x06stdout\x10\x01"


@pytest.mark.parametrize("line", [b"hello\n", b"\n", b"no newline", b"\xff\x00bin\r\n",
                                  b"x" * 20000 + b"\n"])
def test_round_trip(line: bytes) -> None:
    data = localfmt.encode("stderr", line, 1_796_000_000_123_456_000)
    msg = localfmt.decode(data, 4, len(data) - 4)
    assert (msg.stream, msg.line) == ("stderr", line)
    assert msg.time == pytest.approx(1_796_000_000.123456, abs=1e-6)


def test_reads_partial_metadata_and_unknown_fields() -> None:
    # what dockerd writes for a piece of a long line, plus a field from a newer writer
    meta = b"\x08\x01" + b"\x12\x03abc" + b"\x18\x02"
    payload = (b"\x0a\x06stdout\x10\x05\x1a\x03end\x20\x01\x2a" + bytes([len(meta)]) + meta
               + b"\x32\x01z" + b"\x38\x07")
    msg = localfmt.decode(payload, 0, len(payload))
    # the last piece of a cut line: dockerd's readers end the line there
    assert (msg.stream, msg.line, msg.time) == ("stdout", b"end\n", 5e-9)
    assert msg.partial == PartialMeta("abc", 2, True)


def test_pieces_of_a_cut_line_written_as_dockerd_writes_them() -> None:
    ident = "f" * 64
    first = localfmt.encode("stdout", b"x" * 5, 7, PartialMeta(ident, 1, False))
    last = localfmt.encode("stdout", b"yz\n", 7, PartialMeta(ident, 2, True))
    # every piece partial, the last one too; metadata fields 1 last, 2 id, 3 ordinal
    meta1 = b"\x12\x40" + ident.encode() + b"\x18\x01"
    assert first[4:-4] == (b"\x0a\x06stdout\x10\x07\x1a\x05xxxxx\x20\x01\x2a"
                           + bytes([len(meta1)]) + meta1)
    meta2 = b"\x08\x01\x12\x40" + ident.encode() + b"\x18\x02"
    assert last[4:-4] == (b"\x0a\x06stdout\x10\x07\x1a\x02yz\x20\x01\x2a"
                          + bytes([len(meta2)]) + meta2)
    got = [localfmt.decode(e, 4, len(e) - 4) for e in (first, last)]
    assert [(m.line, m.partial) for m in got] == [
        (b"xxxxx", PartialMeta(ident, 1, False)), (b"yz\n", PartialMeta(ident, 2, True))]


def test_a_broken_entry_raises_corrupt_entry() -> None:
    with pytest.raises(localfmt.CorruptEntry):
        localfmt.decode(b"\x1a\x09short", 0, 7)
    with pytest.raises(localfmt.CorruptEntry):
        localfmt.decode(b"\x0a\x03foo", 0, 5)  # no such stream


# -- writing, rotating, reading -----------------------------------------


def test_writes_where_dockerd_does_and_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "local-logs" / "container.log"
    d = fill(path, 10)
    assert oct(path.parent.stat().st_mode & 0o777) == "0o700"
    assert oct(path.stat().st_mode & 0o777) == "0o640"
    got = list(d.read(ReadConfig()))
    assert [m.line for m in got] == [b"line %05d\n" % i for i in range(10)]
    assert [m.stream for m in got[:4]] == ["stdout", "stdout", "stdout", "stderr"]
    assert [m.time for m in got] == [pytest.approx(T0 + i, abs=1e-6) for i in range(10)]
    assert lines(d, stdout=False) == [b"line 00003\n", b"line 00007\n"]


def test_a_driver_built_only_to_read_creates_nothing(tmp_path: Path) -> None:
    d = LocalDriver(ctx(tmp_path / "local-logs" / "container.log"))
    assert lines(d) == []
    d.close()
    assert not (tmp_path / "local-logs").exists()


def test_rotation_compresses_and_bounds_the_disk(tmp_path: Path) -> None:
    path = tmp_path / "container.log"
    d = fill(path, 3000, **{"max-size": "4k", "max-file": "3"})
    names = sorted(os.listdir(tmp_path))
    assert names == ["container.log", "container.log.1.gz", "container.log.2.gz"]
    # the compressed file holds dockerd's gzip header: {"lastTime": ...} in FEXTRA
    raw = (tmp_path / "container.log.1.gz").read_bytes()
    assert raw[3] & 4
    (xlen,) = struct.unpack("<H", raw[10:12])
    assert set(json.loads(raw[12:12 + xlen])) == {"lastTime"}
    newest = localgz.last_time(str(tmp_path / "container.log.1.gz"))
    assert newest is not None and T0 < newest < T0 + 3000
    assert gzip.decompress(raw).startswith(b"\x00\x00")  # plain gzip to any reader
    got = lines(d)
    # every kept line in order, the newest last, none repeated
    first = int(got[0].split()[1])
    assert got == [b"line %05d\n" % i for i in range(first, 3000)]
    assert 3000 - first > 200  # three files' worth
    plain = sum(len(gzip.decompress((tmp_path / n).read_bytes())) if n.endswith(".gz")
                else (tmp_path / n).stat().st_size for n in names)
    assert plain <= 3 * (4000 + 64)


def test_rotation_without_compression_and_one_file(tmp_path: Path) -> None:
    d = fill(tmp_path / "a.log", 1000, **{"max-size": "2k", "max-file": "2", "compress": "false"})
    assert sorted(os.listdir(tmp_path)) == ["a.log", "a.log.1"]
    got = lines(d)
    assert got[-1] == b"line 00999\n" and len(got) > 60
    d = fill(tmp_path / "b.log", 1000, **{"max-size": "2k", "max-file": "1", "compress": "0"})
    assert "b.log.1" not in os.listdir(tmp_path)
    assert lines(d)[-1] == b"line 00999\n"


def test_tail_since_until_across_rotated_files(tmp_path: Path) -> None:
    d = fill(tmp_path / "c.log", 2000, **{"max-size": "3k", "max-file": "5"})
    assert lines(d, tail=3) == [b"line 01997\n", b"line 01998\n", b"line 01999\n"]
    assert lines(d, tail=0) == []
    everything = lines(d)
    assert lines(d, tail=len(everything) + 50) == everything
    # the tail reaches into a compressed file
    assert lines(d, tail=400) == everything[-400:]
    assert lines(d, tail=2, stdout=False) == [b"line 01995\n", b"line 01999\n"]
    assert lines(d, since=T0 + 1990) == [b"line %05d\n" % i for i in range(1990, 2000)]
    assert lines(d, since=T0 + 1990, until=T0 + 1992) == [
        b"line 01990\n", b"line 01991\n", b"line 01992\n"]
    assert lines(d, tail=2, until=T0 + 1992) == [b"line 01991\n", b"line 01992\n"]


def test_tail_reads_from_the_end_only(tmp_path: Path) -> None:
    path = tmp_path / "container.log"
    d = fill(path, 5000)
    with open(path, "r+b") as f:  # damage the start: a forward reader stops there
        f.write(b"\xff" * 64)
    assert lines(d, tail=2) == [b"line 04998\n", b"line 04999\n"]
    assert lines(d) == []  # forwards: the first entry is damaged, the file is skipped


def test_torn_last_entry_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "container.log"
    d = fill(path, 20)
    with open(path, "r+b") as f:  # a crash in the middle of the last write
        f.truncate(path.stat().st_size - 5)
    assert lines(d)[-1] == b"line 00018\n"
    assert lines(d, tail=2) == [b"line 00017\n", b"line 00018\n"]


def test_damage_in_the_middle_keeps_what_is_whole(tmp_path: Path) -> None:
    path = tmp_path / "container.log"
    d = fill(path, 20)
    entry = len(localfmt.encode("stdout", b"line 00000\n", localfmt_nanos(T0)))
    with open(path, "r+b") as f:  # the leading size of entry 10 made enormous
        f.seek(10 * entry)
        f.write(b"\x7f\xff\xff\xff")
    assert lines(d) == [b"line %05d\n" % i for i in range(10)]
    # backwards passes entries 19..11, then falls back to forwards for the rest
    assert lines(d, tail=3) == [b"line 00017\n", b"line 00018\n", b"line 00019\n"]


def test_a_broken_compressed_file_is_skipped(tmp_path: Path) -> None:
    d = fill(tmp_path / "c.log", 2000, **{"max-size": "3k", "max-file": "3"})
    newest_first = lines(d)
    (tmp_path / "c.log.2.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    got = lines(d)
    assert got and got[-1] == b"line 01999\n" and len(got) < len(newest_first)
    assert lines(d, tail=len(newest_first)) == got


def test_since_skips_compressed_files_by_their_header(tmp_path: Path) -> None:
    d = fill(tmp_path / "c.log", 2000, **{"max-size": "3k", "max-file": "3"})
    # a rotated file whose header says "all before T0 + 1": whatever it holds is
    # never read by a reader --since later than that
    fake = tmp_path / "fake"
    fake.write_bytes(localfmt.encode("stdout", b"never read\n", localfmt_nanos(T0 + 5000)))
    localgz.compress(str(fake), T0 + 1)
    os.replace(tmp_path / "fake.gz", tmp_path / "c.log.2.gz")
    assert lines(d, since=T0 + 1999) == [b"line 01999\n"]
    assert b"never read\n" in lines(d)


def localfmt_nanos(t: float) -> int:
    return int(t * 1e6 + 0.5) * 1000


def test_a_reader_keeps_its_view_while_the_writer_rotates(tmp_path: Path) -> None:
    path = tmp_path / "container.log"
    opts = {"max-size": "2k", "max-file": "3"}
    d = fill(path, 300, **opts)
    it = d.read(ReadConfig())
    first = next(it)
    w = LocalDriver(ctx(path, **opts))
    for i in range(300, 1300):
        w.write(LogMessage("stdout", b"line %05d\n" % i, T0 + i))
    w.close()
    rest = [m.line for m in it]
    got = [first.line, *rest]
    start = int(got[0].split()[1])
    assert got == [b"line %05d\n" % i for i in range(start, 300)]


def test_write_speed(tmp_path: Path) -> None:
    d = LocalDriver(ctx(tmp_path / "container.log"))
    line = b"x" * 80 + b"\n"
    t = time.perf_counter()
    for i in range(50_000):
        d.write(LogMessage("stdout", line, T0 + i // 100))
    d.close()
    write_s = time.perf_counter() - t
    t = time.perf_counter()
    n = sum(1 for _ in d.read(ReadConfig()))
    read_s = time.perf_counter() - t
    print(f"local: 50k lines written in {write_s:.2f}s, read in {read_s:.2f}s")
    assert n == 50_000


# -- options ----------------------------------------------------------------


def test_defaults_are_dockerds() -> None:
    opts = parse_options({})
    assert (opts.max_size, opts.max_file, opts.compress) == (20 * 1024 * 1024, 5, True)
    assert parse_options({"max-size": "1.5k", "max-file": "+3"}).max_size == 1500


@pytest.mark.parametrize(("options", "words"), [
    ({"foo": "1"}, "unknown log opt 'foo' for log driver local"),
    ({"max-size": "abc"}, "invalid value for max-size: abc: invalid size: 'abc'"),
    ({"max-size": "0"}, "max size should be a positive number"),
    ({"max-file": "x"}, 'invalid value for max-file: x: strconv.Atoi: parsing "x": invalid syntax'),
    ({"max-file": "-1"}, "max file count cannot be less than 0"),
    ({"compress": "yes"},
     'error reading compress log option: strconv.ParseBool: parsing "yes": invalid syntax'),
    ({"max-file": "1"}, "compression cannot be enabled when max file count is 1"),
])
def test_bad_options_in_dockerds_words(options: dict[str, str], words: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_options(options)
    assert str(err.value) == words


def test_refused_at_create_and_cache_options_checked_for_any_driver() -> None:
    with pytest.raises(ValueError, match="unknown log opt 'x' for log driver local"):
        skiff_container_validate({"LogConfig": {"Type": "local", "Config": {"x": "1"}}})
    skiff_container_validate({"LogConfig": {"Type": "local", "Config": {
        "max-size": "1m", "cache-disabled": "true", "cache-max-file": "2"}}})
    with pytest.raises(ValueError, match=r"^invalid value for cache-max-size: big: invalid size"):
        skiff_container_validate({"LogConfig": {"Type": "syslog", "Config": {
            "cache-max-size": "big"}}})
    with pytest.raises(ValueError, match=r"^compression cannot be enabled"):
        skiff_container_validate({"LogConfig": {"Type": "syslog", "Config": {
            "cache-max-file": "1"}}})


# -- dual logging -------------------------------------------------------------


class Unreadable:
    """A driver that cannot read back, as syslog: what it was given, kept."""

    name = "remote"
    readable = False

    def __init__(self, ctx: LogContext) -> None:
        self.got: list[bytes] = []
        self.closed = False
        self.fail = False

    def write(self, msg: LogMessage) -> None:
        self.got.append(msg.line)
        if self.fail:
            raise OSError("the server went away")

    def read(self, config: ReadConfig):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def close(self) -> None:
        self.closed = True


def factories(name: str):  # type: ignore[no-untyped-def]
    drivers = {"local": LocalDriver, "remote": Unreadable}
    if name not in drivers:
        raise LookupError(f"logging driver {name!r} is not installed")
    return drivers[name]


def container(tmp_path: Path, **opts: str) -> Container:
    return Container(id="c" * 64, name="web", created="", image_id="", config={},
                     host_config={"LogConfig": {"Type": "remote", "Config": opts}}, path="sh",
                     args=[], driver="vfs", root=str(tmp_path))


def test_an_unreadable_driver_gets_a_local_cache(tmp_path: Path) -> None:
    c = container(tmp_path, **{"cache-max-size": "2k", "cache-max-file": "2",
                               "cache-compress": "false"})
    ctx_ = LogContext(c.id, c.name, c.log_path, {})
    remote = Unreadable(ctx_)
    tee = logcache.with_cache(factories, remote, ctx_, c, c.host_config["LogConfig"]["Config"])
    assert isinstance(tee, logcache.CachedLog) and logcache.known_unreadable("remote")
    for i in range(200):
        tee.write(LogMessage("stdout", b"line %05d\n" % i, T0 + i))
    remote.fail = True  # the server went away: the lines still reach the cache,
    for t in (200, 201):  # and the failure goes on to the delivery layer, which counts it
        with pytest.raises(OSError):
            tee.write(LogMessage("stderr", b"undelivered\n", T0 + t))
    remote.fail = False
    tee.write(LogMessage("stdout", b"back\n", T0 + 202))
    tee.close()
    assert remote.closed and len(remote.got) == 203
    # dockerd's file, with the cache's own options: 2 files of 2k, not compressed
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "container-cached.log", "container-cached.log.1"]
    reader = logcache.open_cache(factories, "remote", ctx_, c, {"cache-max-file": "2",
                                                                "cache-compress": "false"})
    got = [m.line for m in reader.read(ReadConfig())]
    assert got[-4:] == [b"line 00199\n", b"undelivered\n", b"undelivered\n", b"back\n"]


def test_cache_disabled_and_readable_drivers_get_none(tmp_path: Path) -> None:
    c = container(tmp_path, **{"cache-disabled": "true"})
    ctx_ = LogContext(c.id, c.name, c.log_path, {})
    remote = Unreadable(ctx_)
    assert logcache.with_cache(factories, remote, ctx_, c, {"cache-disabled": "true"}) is remote
    local = LocalDriver(LogContext(c.id, c.name, str(tmp_path / "x.log"), {}))
    assert logcache.with_cache(factories, local, ctx_, c, {}) is local


def test_the_cache_needs_the_local_driver(tmp_path: Path) -> None:
    c = container(tmp_path)
    ctx_ = LogContext(c.id, c.name, c.log_path, {})
    remote = Unreadable(ctx_)

    def without_local(name: str):  # type: ignore[no-untyped-def]
        raise LookupError(f"logging driver {name!r} is not installed")

    with pytest.raises(LookupError, match=r"needs the 'local' log driver.*cache-disabled=true"):
        logcache.with_cache(without_local, remote, ctx_, c, {})
    assert remote.closed


def test_where_the_daemon_puts_each_log(tmp_path: Path) -> None:
    c = container(tmp_path)
    assert logcache.driver_log_path(c, "local") == str(tmp_path / "local-logs" / "container.log")
    assert logcache.driver_log_path(c, "json-file") == c.log_path


def test_generic_cache_options_checked_at_create() -> None:
    check_generic({"cache-disabled": "false", "cache-max-size": "1m"})
    with pytest.raises(InvalidConfig, match=r"^invalid value for option cache-disabled: maybe$"):
        check_generic({"cache-disabled": "maybe"})
    assert logcache.enabled({}) and not logcache.enabled({"cache-disabled": "1"})


def test_daemon_cache_options_apply_to_every_driver() -> None:
    daemon_opts = {"max-size": "1m", "cache-disabled": "true"}
    got = log_config({"Type": "syslog", "Config": {}}, "json-file", daemon_opts)
    assert got["Config"] == {"cache-disabled": "true"}
    got = log_config({"Type": "syslog", "Config": {"cache-disabled": "false"}}, "json-file",
                     daemon_opts)
    assert got["Config"] == {"cache-disabled": "false"}
    assert log_config({}, "json-file", daemon_opts)["Config"] == daemon_opts


def test_third_party_testlog_driver(tmp_path: Path) -> None:
    skiff_testlog = pytest.importorskip("skiff_testlog")
    out = tmp_path / "out.txt"
    d = skiff_testlog.FileLogDriver(LogContext("c", "n", "/x", {"testlog-path": str(out)}))
    assert d.readable is False
    d.write(LogMessage("stderr", b"hello\n", T0))
    d.close()
    assert out.read_bytes() == b"stderr hello\n"
    with pytest.raises(ValueError, match="unknown log opt 'x' for log driver testlog"):
        skiff_testlog.check_options({"x": "1"})


# -- the daemon's side, with the installed plugins ---------------------------


def test_open_log_with_the_installed_drivers(tmp_path: Path) -> None:
    pytest.importorskip("skiff_testlog")
    from skiff.core.containers.logstream import LogStreams, log_readable, open_log
    from skiff.core.errors import InvalidParameter
    from skiff.core.plugins import load_plugins

    plugins = load_plugins()

    def found(name: str):  # type: ignore[no-untyped-def]
        return plugins.factory("logging", name)

    streams = LogStreams(None, found, None)  # type: ignore[arg-type]
    c = container(tmp_path)
    c.host_config["LogConfig"] = {"Type": "local", "Config": {}}
    local = open_log(found, c)
    assert isinstance(local, LocalDriver)
    assert local.path == str(tmp_path / "local-logs" / "container.log")
    local.close()

    out = tmp_path / "delivered.txt"
    c.host_config["LogConfig"] = {"Type": "testlog", "Config": {"testlog-path": str(out)}}
    tee = open_log(found, c)
    assert isinstance(tee, logcache.CachedLog) and tee.name == "testlog"
    tee.write(LogMessage("stdout", b"both\n", T0))
    tee.close()
    assert out.read_bytes() == b"stdout both\n"
    assert streams.readable(c)
    reader = streams.open_reader(c)  # the cache alone: the driver is not built to read
    assert isinstance(reader, LocalDriver)
    assert reader.path == str(tmp_path / "container-cached.log")
    assert [m.line for m in reader.read(ReadConfig())] == [b"both\n"]

    c.host_config["LogConfig"]["Config"]["cache-disabled"] = "true"
    assert not log_readable(c) and not streams.readable(c)
    with pytest.raises(InvalidParameter, match="does not support reading"):
        streams.open_reader(c)
