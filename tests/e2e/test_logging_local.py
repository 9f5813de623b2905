"""The local log driver side by side with dockerd's, file for file (issue 18, item 1
local); dual logging for a driver that cannot read back (item 2) with the
third-party ``testlog`` driver (item 6, tests/thirdparty/skiff-testlog)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.engines import Dockerd
from skiff.core.hookspecs import LogContext, ReadConfig
from skiff.core.timefmt import parse_rfc3339
from skiff.plugins.logging.local import LocalDriver
from tests.daemon import Daemon, running_daemon
from tests.e2e.conftest import twin_of
from tests.logdisk import peak_until_exit
from tests.sidebyside import Side, SideBySide, fields, removing, unique

NONE = ("--network", "none")
#: 300 lines on stdout and 100 on stderr, then a last one without its newline
WRITER = ("i=0; while [ $i -lt 300 ]; do echo \"out line $i\"; "
          "[ $((i % 3)) = 0 ] && echo \"err line $i\" >&2; i=$((i+1)); done; "
          "printf 'no newline'")
#: one stream only where the engines' files are compared: how two pipes' lines
#: interleave in the file is a race on either engine, and rotation keeps the last ones
ONE_STREAM = ("i=0; while [ $i -lt 300 ]; do echo \"out line $i\"; i=$((i+1)); done; "
              "printf 'no newline'")
SMALL = ("--log-driver", "local", "--log-opt", "max-size=2k", "--log-opt", "max-file=3")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_daemon(tmp_path_factory.mktemp("skiffd-local")) as d:
        d.skiff("image", "bootstrap", "busybox")
        yield d


@pytest.fixture(scope="module")
def sbs(daemon: Daemon, twin_dockerd: Dockerd, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[SideBySide]:
    both = twin_of(daemon, twin_dockerd, tmp_path_factory.mktemp("local-twin"))
    yield both
    both.close()


@pytest.fixture(scope="module")
def roots(daemon: Daemon, twin_dockerd: Dockerd) -> dict[str, Path]:
    """Each engine's containers directory, by side name."""
    return {"skiffd": daemon.data_root / "containers",
            "dockerd": twin_dockerd.base / "data" / "containers"}


def cid(side: Side, name: str) -> str:
    return side.out("inspect", "--format", "{{.Id}}", name)


def settled(logs: Path, timeout: float = 10) -> list[str]:
    """The names in a local-logs directory once no rotated file is still being
    compressed (both engines gzip in the background)."""
    deadline = time.monotonic() + timeout
    while True:
        names = sorted(p.name for p in logs.iterdir())
        busy = [n for n in names if n.endswith((".tmp", ".1", ".2"))]
        if not busy or time.monotonic() > deadline:
            return names
        time.sleep(0.1)


def dockerd_messages(side: Side, name: str) -> list[tuple[str, bytes, int]]:
    """(stream, line, time in µs) as dockerd's ``docker logs`` gives them, per stream
    (docker-py, with timestamps), merged in time order."""
    c = side.client.containers.get(name)
    got = []
    for stream in ("stdout", "stderr"):
        raw = c.logs(stdout=stream == "stdout", stderr=stream == "stderr", timestamps=True)
        for piece in raw.splitlines(keepends=True):
            stamp, _, line = piece.partition(b" ")
            got.append((stream, line, round(parse_rfc3339(stamp.decode()) * 1e6)))
    return sorted(got, key=lambda m: m[2])


def test_skiff_reads_the_files_dockerds_local_driver_wrote(
        sbs: SideBySide, roots: dict[str, Path]) -> None:
    side = sbs.dockerd
    n = unique("loc")
    with removing(side, ("container", n)):
        side.out("run", "--name", n, *NONE, *SMALL, "busybox", "sh", "-c", WRITER)
        logs = roots["dockerd"] / cid(side, n) / "local-logs"
        names = settled(logs)
        assert names[0] == "container.log" and "container.log.1.gz" in names
        want = dockerd_messages(side, n)
        reader = LocalDriver(LogContext(n, n, str(logs / "container.log"),
                                        {"max-size": "2k", "max-file": "3"}))
        got = [(m.stream, m.line, round(m.time * 1e6)) for m in reader.read(ReadConfig())]
        # each stream in its own order: dockerd's two copiers write one file, so
        # under load a line may land after a later-stamped line of the other stream
        for stream in ("stdout", "stderr"):
            assert [m for m in got if m[0] == stream] == [m for m in want if m[0] == stream]
        assert len(got) == len(want) > 40
        assert got[-1][:2] == ("stdout", b"no newline")
        # --tail from the end, across the rotated files: the file's last entries
        tail = [m.line for m in reader.read(ReadConfig(tail=30))]
        assert tail == [line for _, line, _ in got[-30:]]


def test_docker_logs_with_local_as_dockerd(sbs: SideBySide, roots: dict[str, Path]) -> None:
    def run(side: Side) -> dict[str, Any]:
        n = unique("loc")
        with removing(side, ("container", n)):
            side.out("run", "--name", n, *NONE, *SMALL, "busybox", "sh", "-c", ONE_STREAM)
            out = side.docker("logs", n)
            tail = side.docker("logs", "--tail", "7", n)
            info = json.loads(side.out("inspect", n))[0]
            logs = roots[side.name] / info["Id"] / "local-logs"
            return {"stdout": out.stdout, "stderr": out.stderr,
                    "tail": (tail.stdout, tail.stderr),
                    "files": settled(logs), "modes": oct(logs.stat().st_mode & 0o777),
                    **fields(info, "LogPath", "HostConfig.LogConfig")}

    got = sbs.same(run)
    assert got["files"] == ["container.log", "container.log.1.gz", "container.log.2.gz"]
    assert got["LogPath"] == "" and got["stdout"].endswith(b"out line 299\nno newline")


def test_dockerd_reads_the_files_skiff_wrote(sbs: SideBySide, roots: dict[str, Path]) -> None:
    """skiff's files put in place of a dockerd container's: dockerd's own reader
    gives what skiff's ``docker logs`` gives."""
    s, d = sbs.skiffd, sbs.dockerd
    a, b = unique("loc"), unique("loc")
    with removing(s, ("container", a)), removing(d, ("container", b)):
        s.out("run", "--name", a, *NONE, *SMALL, "busybox", "sh", "-c", WRITER)
        d.out("run", "--name", b, *NONE, *SMALL, "busybox", "true")
        src = roots["skiffd"] / cid(s, a) / "local-logs"
        dst = roots["dockerd"] / cid(d, b) / "local-logs"
        names = settled(src)
        assert "container.log.1.gz" in names
        for old in dst.iterdir():
            old.unlink()
        for name in names:
            shutil.copy2(src / name, dst / name)
        for args in ((), ("--tail", "12"), ("-t",)):
            mine, theirs = s.docker("logs", *args, a), d.docker("logs", *args, b)
            assert (theirs.returncode, theirs.stdout, theirs.stderr) == (
                0, mine.stdout, mine.stderr), args


#: a 40,000-byte line (cut in three pieces by either engine), a short one, and
#: unfinished bytes at exit
LONG_LINE = ("head -c 40000 /dev/zero | tr '\\0' x; echo; echo after; printf 'tail end'")


def test_a_cut_line_as_dockerd_and_each_reads_the_others_file(
        sbs: SideBySide, roots: dict[str, Path]) -> None:
    def run(side: Side) -> dict[str, Any]:
        n = unique("long")
        with removing(side, ("container", n)):
            side.out("run", "--name", n, *NONE, "--log-driver", "local", "busybox",
                     "sh", "-c", LONG_LINE)
            out = side.docker("logs", n).stdout
            tail = side.docker("logs", "--tail", "2", n).stdout
            path = roots[side.name] / cid(side, n) / "local-logs" / "container.log"
            reader = LocalDriver(LogContext(n, n, str(path), {}))
            entries = list(reader.read(ReadConfig()))
            # a digest, not 40 kB of x's, in a failure's message
            return {"logs": (len(out), out.count(b"x"), out[-20:]), "tail": tail,
                    "pieces": [(len(m.line), m.partial is not None and m.partial.ordinal,
                                m.partial is not None and m.partial.last) for m in entries],
                    "ids": len({m.partial.id for m in entries if m.partial})}

    seen = sbs.each(run)
    # dockerd 20.10's reader drops the newline of a cut line (it adds one only to
    # entries without partial metadata; later moby adds it after the last piece
    # too, as skiff does): everything else is the same
    assert seen["dockerd"].pop("logs") == (40000 + 14, 40000, b"xxxxxxafter\ntail end")
    got = seen["skiffd"]
    assert got.pop("logs") == (40000 + 15, 40000, b"xxxxx\nafter\ntail end")
    assert got == seen["dockerd"]
    assert got["tail"] == b"after\ntail end"
    # three pieces with one id, the last ending the line; a whole line; the exit's rest
    assert got["pieces"] == [(16384, 1, False), (16384, 2, False), (7233, 3, True),
                             (6, False, False), (8, 1, False)]
    assert got["ids"] == 2


def test_follow_and_since_as_dockerd(sbs: SideBySide) -> None:
    def run(side: Side) -> dict[str, Any]:
        n = unique("loc")
        with removing(side, ("container", n)):
            side.out("run", "-d", "--name", n, *NONE, "--log-driver", "local", "busybox",
                     "sh", "-c", "echo first; sleep 2; echo second >&2; echo third")
            followed = side.docker("logs", "-f", n, timeout=30)
            since = side.docker("logs", "--since", "1h", n)
            return {"follow": (followed.stdout, followed.stderr),
                    "since": (since.stdout, since.stderr)}

    got = sbs.same(run)
    assert got["follow"] == (b"first\nthird\n", b"second\n") == got["since"]


def test_bad_options_refused_in_dockerds_words(sbs: SideBySide) -> None:
    for opt, words in (("max-file=1", "compression cannot be enabled when max file count is 1"),
                       ("max-size=abc", "invalid value for max-size: abc")):
        for side in sbs.sides:
            n = unique("loc")
            with removing(side, ("container", n)):
                res = side.docker("run", "--name", n, *NONE, "--log-driver", "local",
                                  "--log-opt", opt, "busybox", "true")
                assert res.returncode == 125 and words in res.stderr.decode(), (side.name, res)
    n = unique("loc")
    res = sbs.skiffd.docker("create", "--name", n, "--log-driver", "local", "--log-opt",
                            "color=red", "busybox", "true")
    assert res.returncode != 0 and b"unknown log opt 'color' for log driver local" in res.stderr


#: 200,000 lines of 1,000 bytes: 200 MB, far past any bound here
WRITE_200_MB = ('BEGIN { s = sprintf("%993s", ""); '
                'for (i = 0; i < 200000; i++) printf "%06d%s\\n", i, s }')


def _run_measuring_peak(daemon: Daemon, n: str, *args: str) -> tuple[Path, int]:
    """Run a container to its end, sampling its local-logs directory as it
    writes: (the directory, the most it held at any sample)."""
    c = daemon.docker("run", "-d", "--name", n, *NONE, "--log-driver", "local", *args,
                      check=True).stdout.decode().strip()
    logs = daemon.data_root / "containers" / c / "local-logs"
    return logs, peak_until_exit(daemon, c, lambda: logs.iterdir() if logs.exists() else ())


def _kept_lines_in_order(daemon: Daemon, n: str) -> list[int]:
    res = subprocess.run(["docker", "logs", n], env=daemon.env(), capture_output=True,
                         timeout=300, check=True)
    nums = [int(line[:6]) for line in res.stdout.splitlines()]
    assert nums[-1] == 199999 and nums == list(range(nums[0], 200000))
    tail = daemon.docker("logs", "--tail", "2", n, check=True).stdout.split()
    assert tail == [b"199998", b"199999"]
    return nums


def test_rotation_keeps_the_disk_bounded_and_every_kept_line(daemon: Daemon) -> None:
    n = unique("loc")
    try:
        logs, peak = _run_measuring_peak(daemon, n, "--log-opt", "max-size=1m", "--log-opt",
                                         "max-file=3", "--log-opt", "compress=false",
                                         "busybox", "awk", WRITE_200_MB)
        assert sorted(p.name for p in logs.iterdir()) == [
            "container.log", "container.log.1", "container.log.2"]
        # the bound, one entry over per file, at every moment of the 200 MB
        assert peak <= 3 * (1_000_000 + 1100), peak
        nums = _kept_lines_in_order(daemon, n)
        assert len(nums) > 2 * 1_000_000 / 1100  # the kept files' worth, not just the live one
    finally:
        daemon.docker("rm", "-f", n)


def test_default_bound_holds_while_writing_200_mb(daemon: Daemon) -> None:
    """dockerd's defaults for local: 20 MiB x 5 files, the rotated ones gzipped."""
    n = unique("locdef")
    try:
        logs, peak = _run_measuring_peak(daemon, n, "busybox", "awk", WRITE_200_MB)
        # while writing, the newest rotated file waits uncompressed for its gzip:
        # never more than the nominal 20 MiB x 5, one entry over per file
        assert peak <= 5 * (20 * 2**20 + 1100), peak
        # the last rotation's gzip runs in a thread of its own: give it a moment
        deadline = time.monotonic() + 30
        while (any(not p.name.endswith(".gz") and p.name != "container.log"
                   for p in logs.iterdir()) and time.monotonic() < deadline):
            time.sleep(0.2)
        assert sorted(p.name for p in logs.iterdir()) == [
            "container.log", *(f"container.log.{i}.gz" for i in range(1, 5))]
        total = sum(p.stat().st_size for p in logs.iterdir())
        assert total <= 20 * 2**20 + 1100 + 4 * 2**20  # the live file; the rest compressed
        nums = _kept_lines_in_order(daemon, n)
        assert len(nums) > 4 * 20 * 2**20 / 1100  # the compressed files read back too
    finally:
        daemon.docker("rm", "-f", n)


# -- dual logging, with a third-party driver that cannot read back -------------


def test_third_party_driver_gets_lines_and_logs_work_through_the_cache(
        daemon: Daemon, tmp_path: Path) -> None:
    out = tmp_path / "testlog.txt"
    n = unique("tl")
    try:
        res = daemon.docker("run", "--name", n, *NONE, "--log-driver", "testlog",
                            "--log-opt", f"testlog-path={out}", "--log-opt", "cache-max-size=1k",
                            "--log-opt", "cache-max-file=2", "busybox", "sh", "-c",
                            "seq 1 200; sleep 0.5; echo oops >&2", check=True)
        assert res.stdout.splitlines()[-1] == b"200"
        delivered = out.read_bytes().splitlines()
        # in order per stream (two pipes: how they interleave is a race)
        assert [line for line in delivered if line.startswith(b"stdout ")] == [
            b"stdout %d" % i for i in range(1, 201)]
        assert b"stderr oops" in delivered
        logs = daemon.docker("logs", n, check=True)
        kept = logs.stdout.splitlines()
        assert kept[-1] == b"200" and logs.stderr == b"oops\n"
        assert kept == [str(i).encode() for i in range(int(kept[0]), 201)]
        tail = daemon.docker("logs", "--tail", "2", n, check=True)
        assert (tail.stdout, tail.stderr) == (b"200\n", b"oops\n")
        c = daemon.docker("inspect", "--format", "{{.Id}}", n, check=True).stdout.decode().strip()
        cached = sorted(p.name for p in (daemon.data_root / "containers" / c).iterdir()
                        if p.name.startswith("container-cached.log"))
        assert cached == ["container-cached.log", "container-cached.log.1.gz"]
    finally:
        daemon.docker("rm", "-f", n)


def test_cache_disabled_answers_as_dockerd(daemon: Daemon, tmp_path: Path) -> None:
    n = unique("tl")
    try:
        daemon.docker("run", "--name", n, *NONE, "--log-driver", "testlog",
                      "--log-opt", f"testlog-path={tmp_path / 'x.txt'}",
                      "--log-opt", "cache-disabled=true", "busybox", "echo", "hi", check=True)
        assert (tmp_path / "x.txt").read_bytes() == b"stdout hi\n"
        res = daemon.docker("logs", n)
        assert res.returncode == 1 and res.stderr.decode().strip() == (
            "Error response from daemon: configured logging driver does not support reading")
        res = daemon.docker("create", "--log-driver", "testlog", "--log-opt",
                            f"testlog-path={tmp_path / 'y'}", "--log-opt", "cache-disabled=maybe",
                            "busybox")
        assert res.returncode != 0 and (
            b"invalid value for option cache-disabled: maybe" in res.stderr)
        res = daemon.docker("create", "--log-driver", "testlog", "--log-opt", "testlog-path=rel",
                            "busybox")
        assert res.returncode != 0 and b"must be an absolute path" in res.stderr
    finally:
        daemon.docker("rm", "-f", n)


def test_daemon_log_opts_disable_the_cache_for_every_driver(tmp_path: Path) -> None:
    out = tmp_path / "t.txt"
    with running_daemon(tmp_path / "d", **{"log-opts": {"cache-disabled": "true"}}) as d:
        d.skiff("image", "bootstrap", "busybox")
        n = unique("tl")
        d.docker("run", "--name", n, *NONE, "--log-driver", "testlog", "--log-opt",
                 f"testlog-path={out}", "busybox", "echo", "hi", check=True)
        lc = json.loads(d.docker("inspect", "--format", "{{json .HostConfig.LogConfig}}", n,
                                 check=True).stdout)
        assert lc["Config"] == {"cache-disabled": "true", "testlog-path": str(out)}
        assert d.docker("logs", n).returncode == 1
        # json-file, the daemon's driver, can read itself: the option does nothing there
        assert d.docker("run", "--rm", *NONE, "busybox", "echo", "x", check=True).stdout == b"x\n"
