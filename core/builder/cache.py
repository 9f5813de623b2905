"""The build cache: which image a step already made.

A step is known by its key: the image it starts from and the config it is
recorded under (for RUN the command and the build args it sees, for COPY and
ADD the content hash of what is copied, for the others the ``#(nop)``
comment), the same facts dockerd's classic cache compares.  The index maps
each key to the image the step produced; it is kept in
``<data-root>/builder/cache.json`` and survives restarts.  An entry whose
image is gone is a miss (and dropped), so deleting images never makes the
cache wrong.

dockerd searches every child of the parent image for an equal config at
each step; a dictionary lookup is what lets a fully cached build cost
almost nothing per step.  ``--cache-from`` images add candidates: an image
in the chain of one of them whose parent and recorded config match.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from skiff.core.atomic import write_atomic

log = structlog.get_logger("skiff.builder.cache")

__all__ = ["BuildCache", "CacheEntry", "step_key"]


def canonical(cfg: Mapping[str, Any]) -> str:
    """A config as one canonical JSON text (the cache compares these).  Here,
    not in runconfig, which imports the Dockerfile's instructions: the daemon's
    start reads the cache's usage (``system df``) long before any build."""
    return json.dumps(cfg, sort_keys=True, separators=(",", ":"))


def step_key(parent: str | None, config: Mapping[str, Any]) -> str:
    """The key of a step: sha256 of its parent image ID and its recorded config."""
    text = (parent or "") + "\n" + canonical(config)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class CacheEntry:
    """One cached step."""

    key: str
    image_id: str
    #: the step's history text (``docker system df -v`` shows it)
    description: str
    created: float
    last_used: float
    usage: int = 1

    def to_json(self) -> dict[str, Any]:
        return {"image": self.image_id, "description": self.description,
                "created": self.created, "last_used": self.last_used, "usage": self.usage}


class BuildCache:
    """The index of cached steps (see the module's doc); thread-safe."""

    def __init__(self, root: str, image_exists: Callable[[str], bool]) -> None:
        self.path = os.path.join(root, "cache.json")
        os.makedirs(root, mode=0o700, exist_ok=True)
        self._exists = image_exists
        self._lock = threading.Lock()
        self._dirty = False
        self._entries: dict[str, CacheEntry] = {}
        self._load()

    def _load(self) -> None:
        try:
            with open(self.path, "rb") as f:
                raw = json.load(f)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            # a cache is only a shortcut: start empty rather than refuse to start
            log.warning("builder.cache_unreadable", path=self.path, error=str(exc))
            return
        if not isinstance(raw, dict):
            return
        for key, item in raw.items():
            try:
                self._entries[key] = CacheEntry(
                    key, str(item["image"]), str(item.get("description", "")),
                    float(item["created"]), float(item["last_used"]), int(item.get("usage", 1)))
            except (KeyError, TypeError, ValueError):
                continue

    def lookup(self, key: str) -> str | None:
        """The image the step ``key`` made, if it still exists."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if not self._exists(entry.image_id):
                del self._entries[key]
                self._dirty = True
                return None
            entry.last_used = time.time()
            entry.usage += 1
            self._dirty = True
            return entry.image_id

    def record(self, key: str, image_id: str, description: str) -> None:
        """Remember that the step ``key`` made ``image_id``."""
        now = time.time()
        with self._lock:
            self._entries[key] = CacheEntry(key, image_id, description, now, now)
            self._dirty = True

    def entries(self) -> list[CacheEntry]:
        """Every entry whose image still exists."""
        with self._lock:
            return [e for e in self._entries.values() if self._exists(e.image_id)]

    def drop(self, keys: list[str]) -> None:
        with self._lock:
            for key in keys:
                if self._entries.pop(key, None) is not None:
                    self._dirty = True

    def save(self) -> None:
        """Write the index if it changed (once per build, not per step)."""
        with self._lock:
            if not self._dirty:
                return
            data = {k: e.to_json() for k, e in self._entries.items()}
            self._dirty = False
        # not durable: a lost index costs a rebuild, never a wrong hit (the
        # rename is atomic, so it is the old index or the new, whole)
        write_atomic(self.path, json.dumps(data, separators=(",", ":")).encode(), 0o600,
                     durable=False)
