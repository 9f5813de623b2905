"""The gunzip pipeline of a pull: both of its threads always run to the end.

A cancel that arrived after the reading thread started but before the
gunzip thread did left the reader blocked on a pipe nobody would write,
and trio waits for a running thread without end: the pull, then the
daemon's shutdown, hung.  These tests cancel at the worst moments.
"""

from __future__ import annotations

import gzip
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeVar

import trio

from skiff.core.images.distribution.progress import Progress
from skiff.core.images.distribution.pull import _pipelined

T = TypeVar("T")


class _Threads:
    """What ``_pipelined`` needs of the engine: its bounded ``to_thread``."""

    def __init__(self, tokens: int = 4) -> None:
        self.limiter = trio.CapacityLimiter(tokens)

    async def to_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _layer(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(1 << 20) * 3  # larger than the pipe: the writer must wait for the reader
    path = tmp_path / "layer.gz"
    path.write_bytes(gzip.compress(data, compresslevel=1))
    return path, data


def test_a_cancel_before_the_threads_start_still_runs_both(tmp_path: Path) -> None:
    path, data = _layer(tmp_path)
    got: list[bytes] = []
    before = _open_fds()

    async def main() -> None:
        with trio.fail_after(30), trio.CancelScope() as scope:
            scope.cancel()  # already cancelled when the pipeline begins
            await _pipelined(_Threads().to_thread, str(path), Progress(lambda m: None, "x", "x", 1),
                             lambda src: got.append(src.read()))

    trio.run(main)
    assert got == [data]
    assert _open_fds() == before


def test_a_cancel_while_one_end_waits_for_a_thread_does_not_hang(tmp_path: Path) -> None:
    # One token of the limiter is held elsewhere (busy downloads), so one end
    # of the pipe runs while the other waits for a thread; then the pull is
    # cancelled.  Unshielded, the waiting end gave up and the running one
    # blocked on the pipe for ever.
    path, data = _layer(tmp_path)
    threads = _Threads(tokens=2)
    started = threading.Event()
    got: list[int] = []

    def consume(src: IO[bytes]) -> None:
        started.set()
        got.append(len(src.read()))

    async def main() -> None:
        release = trio.Event()

        async def blocker(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            async with threads.limiter:
                task_status.started()
                with trio.CancelScope(shield=True):
                    await release.wait()

        async with trio.open_nursery() as n:
            await n.start(blocker)
            with trio.CancelScope() as scope:
                async def cancel_soon() -> None:
                    # the reader may be the end that waits: then it never starts
                    await trio.to_thread.run_sync(started.wait, 1.0)
                    scope.cancel()
                    release.set()

                n.start_soon(cancel_soon)
                await _pipelined(threads.to_thread, str(path),
                                 Progress(lambda m: None, "x", "x", 1), consume)

    trio.run(main)
    assert got == [len(data)]
