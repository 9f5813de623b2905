"""The small files of the layer database (``diff``, ``parent``, ``cache-id`` ...)
and their directories: files written synced, because a layer or mount
directory is renamed into place only once its files are on disk."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil

import structlog

from skiff.core.atomic import fsync_dir
from skiff.core.hookspecs import StorageDriver

log = structlog.get_logger("skiff.images.layers")

__all__ = ["MetaDirs", "read_meta", "write_synced"]


def read_meta(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def write_synced(path: str, data: bytes | str) -> None:
    with open(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())


class MetaDirs:
    """Where the layer database's directories are made and unmade: written
    under ``tmp/`` and renamed into place, retired into ``tmp/`` and then
    discarded with the driver layers they name, so a crash at any point
    leaves a whole directory or debris that start-up removes."""

    def __init__(self, tmp_dir: str, driver: StorageDriver) -> None:
        self.tmp_dir = tmp_dir
        self.driver = driver

    def new(self, prefix: str) -> str:
        """A fresh path under tmp/ (not yet made)."""
        return os.path.join(self.tmp_dir, f"{prefix}-{secrets.token_hex(8)}")

    def retire(self, path: str, durable: bool = True) -> str:
        """Move a live metadata dir into tmp/ (fast, atomic); the caller frees it.

        ``durable``: the rename survives a power cut (an image layer's, whose
        driver layer goes next); a caller whose record makes the removal all
        or nothing at the next start may pass False."""
        dest = self.new("del")
        os.rename(path, dest)
        if durable:
            fsync_dir(os.path.dirname(path))
        return dest

    def discard(self, path: str) -> None:
        """Remove the driver layers a (temporary) metadata dir names, then the dir."""
        for name in ("mount-id", "init-id", "cache-id"):
            with contextlib.suppress(OSError):
                ident = read_meta(os.path.join(path, name))
                if ident:
                    try:
                        self.driver.remove(ident)
                    except Exception as exc:  # keep going: the rest can still be freed
                        log.warning("layer.driver_remove_failed", id=ident, error=str(exc))
        shutil.rmtree(path, ignore_errors=True)

    def clean(self) -> None:
        """Remove what a crash left half-done: metadata under tmp/ and the
        driver layers it names."""
        for entry in os.listdir(self.tmp_dir):
            self.discard(os.path.join(self.tmp_dir, entry))
