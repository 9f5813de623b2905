"""How much a container's log takes on disk while it writes: the check that a
bound holds at every moment, not only once the writer is done."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from tests.daemon import Daemon


def files_bytes(files: Iterable[Path]) -> int:
    total = 0
    for p in files:
        # rotated away between the listing and the stat: counted in its new name
        with contextlib.suppress(FileNotFoundError):
            total += p.stat().st_size
    return total


def peak_until_exit(daemon: Daemon, cid: str, files: Callable[[], Iterable[Path]],
                    every: float = 0.02) -> int:
    """The most ``files()`` held at any sample (every ``every`` seconds) until the
    container ``cid`` ended, and once after; its exit code must be 0."""
    waiter = subprocess.Popen(["docker", "wait", cid], env=daemon.env(),
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    peak = 0
    try:
        while waiter.poll() is None:
            peak = max(peak, files_bytes(files()))
            time.sleep(every)
    finally:
        if waiter.poll() is None:
            waiter.kill()
        out, _ = waiter.communicate(timeout=60)
    assert out.strip() == b"0", out
    return max(peak, files_bytes(files()))
