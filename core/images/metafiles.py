"""The small files of the layer database (``diff``, ``parent``, ``cache-id`` ...):
written synced, because a layer or mount directory is renamed into place only
once its files are on disk."""

from __future__ import annotations

import os

__all__ = ["read_meta", "write_synced"]


def read_meta(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def write_synced(path: str, data: bytes | str) -> None:
    with open(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
