"""live-restore's pure parts: the monitor's spool read back, and replayed into a
log with the times the monitor read it (issue 21)."""

from __future__ import annotations

import struct
from pathlib import Path

from skiff.core.containers import liverestore
from skiff.core.hookspecs import LogMessage
from skiff.plugins.isolation import adopt


def _spool(path: Path, records: list[tuple[int, int, bytes]], dropped: int = 0,
           torn: bytes = b"") -> None:
    data = b"skspool1" + struct.pack("=Q", dropped)
    for ns, stream, body in records:
        data += struct.pack("=QII", ns, len(body), stream) + body
    path.write_bytes(data + torn)


class Log:
    def __init__(self) -> None:
        self.messages: list[LogMessage] = []

    def write(self, msg: LogMessage) -> None:
        self.messages.append(msg)


def test_the_spool_is_read_back_in_order_a_torn_record_left_out(tmp_path: Path) -> None:
    path = tmp_path / "spool"
    torn = struct.pack("=QII", 9, 100, 1) + b"only part"  # the monitor killed mid-write
    _spool(path, [(1, 1, b"a\n"), (2, 2, b"e\n"), (3, 1, b"b")], dropped=42, torn=torn)
    want = [(1, "stdout", b"a\n"), (2, "stderr", b"e\n"), (3, "stdout", b"b")]
    got = adopt.read_spool(str(path))
    assert (got.records, got.dropped) == (want, 42)
    # core reads a spool left by a monitor that exited the same way
    assert liverestore._read_spool_file(str(path)) == (want, 42)


def test_no_spool_or_not_a_spool_is_empty(tmp_path: Path) -> None:
    assert adopt.read_spool(str(tmp_path / "none")) == adopt.Spooled()
    (tmp_path / "junk").write_bytes(b"something else entirely")
    assert adopt.read_spool(str(tmp_path / "junk")) == adopt.Spooled()
    assert liverestore._read_spool_file(str(tmp_path / "junk")) == ([], 0)


def test_replay_stamps_each_line_with_the_read_that_ended_it() -> None:
    log = Log()
    carry = liverestore.replay(
        [(1_000_000_000, "stdout", b"one\ntw"), (2_000_000_000, "stdout", b"o\nthr"),
         (3_000_000_000, "stderr", b"err\n")], log)  # type: ignore[arg-type]
    assert [(m.stream, m.line, m.time) for m in log.messages] == [
        ("stdout", b"one\n", 1.0), ("stdout", b"two\n", 2.0), ("stderr", b"err\n", 3.0)]
    # the unfinished line goes on with the live output
    assert carry == {"stdout": b"thr", "stderr": b""}


def test_an_adopted_runs_spec_is_built_once_on_first_use() -> None:
    """Adoption leaves the spec to the first exec (its build was half of a start
    with 500 to adopt); execs at once must all get it, built once."""
    from typing import Any, cast

    import trio

    from skiff.core.containers.registry import Track

    builds: list[int] = []
    marker = cast(Any, object())

    async def load() -> Any:
        builds.append(1)
        await trio.sleep(0.01)  # a thread's work: the second exec arrives meanwhile
        return marker

    async def main() -> list[Any]:
        track = Track()
        track.spec_loader = load
        got: list[Any] = []

        async def one() -> None:
            got.append(await track.run_spec())

        async with trio.open_nursery() as n:
            for _ in range(3):
                n.start_soon(one)
        assert track.spec_loader is None
        got.append(await track.run_spec())
        return got

    assert trio.run(main) == [marker] * 4
    assert builds == [1]
