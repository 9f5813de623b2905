"""A dockerd of the tests' own, for comparing skiff with Docker side by side."""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from benchmarks.engines import Dockerd, EngineError, mounts_under


@contextmanager
def own_dockerd(prefix: str) -> Iterator[Dockerd]:
    """Debian's dockerd under /tmp/<prefix>-<random>, on vfs; stopped after, and
    it must leave no process and no mount behind."""
    # a short base: containerd's sockets live under the exec-root (108-byte
    # limit); vfs, so that this dockerd mounts nothing of its own
    d = Dockerd(Path(f"/tmp/{prefix}-{secrets.token_hex(3)}"), storage_driver="vfs")
    try:
        try:
            d.start()
        except EngineError as exc:
            pytest.fail(str(exc))
        yield d
    finally:
        d.stop()
        leftovers = [p.pid for p in d.processes()], mounts_under(d.base)
        shutil.rmtree(d.base, ignore_errors=True)
        assert leftovers == ([], []), f"dockerd left processes or mounts: {leftovers}"
