"""The stat fast path: a context file's sha256 known from an earlier build.

Every build receives its whole context again as a tar, and COPY/ADD cache keys
need the sha256 of each file.  Hashing is the largest cost of receiving a big
context, so the daemon remembers, per file, what it last computed: the key is
what the tar header says of the file (its path in the context, size, mtime,
mode, uid, gid), the value the file's adler32 and sha256.

Why adler32 too: a stat match alone proves nothing.  The index is shared by
every context the daemon sees, and two checkouts (two branches, two projects
with a ``src/main.py``) can hold a file with the same path, size and mtime
(a fresh ``git clone`` sets mtimes to the clone time, tools normalise them to
0 for reproducible builds) and other content.  So the content is still read
(it has to be written to the spool anyway) and checked with adler32, which is
several times cheaper than sha256; only when it matches is the stored sha256
taken.  adler32 is no cryptographic proof, and need not be one here: an
attacker who can craft a colliding file can as well send it under its own
digest; what it guards against is honest coincidence.

The index is a JSON file written atomically (:mod:`skiff.core.atomic`), bounded
to ``max_entries`` (the least recently used go first), and a damaged or
foreign file is ignored with a warning: it is a cache, never an authority.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator

import structlog

from skiff.core.atomic import write_json_atomic

__all__ = ["StatIndex", "StatKey"]

log = structlog.get_logger("skiff.builder.statindex")

_VERSION = 1

#: (relative path, size, mtime in ns, mode, uid, gid) as the tar header gives them
StatKey = tuple[str, int, int, int, int, int]


def _encode(key: StatKey) -> str:
    path, size, mtime_ns, mode, uid, gid = key
    # the path last: it is the one field that may hold the separator
    return f"{size}:{mtime_ns}:{mode}:{uid}:{gid}:{path}"


class StatIndex:
    """What earlier builds computed: stat key -> (adler32, ``"sha256:<hex>"``).

    Safe to share between builds running in threads; :meth:`save` writes it
    when it changed.
    """

    def __init__(self, path: str, max_entries: int = 100_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.path = path
        self.max_entries = max_entries
        self._lock = threading.Lock()
        #: insertion order is use order: the first entries are the oldest
        self._entries: dict[str, tuple[int, str]] = {}
        self._dirty = False
        self._load()

    def _load(self) -> None:
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("builder.statindex_unreadable", path=self.path, error=str(exc))
            return
        try:
            doc = json.loads(raw)
            if not isinstance(doc, dict) or doc.get("version") != _VERSION:
                raise ValueError("not a stat index of this version")
            entries = doc["entries"]
            if not isinstance(entries, dict):
                raise ValueError("entries is not an object")
            for key, value in entries.items():
                adler, digest = value
                if (not isinstance(key, str) or not isinstance(adler, int)
                        or not isinstance(digest, str) or not digest.startswith("sha256:")):
                    raise ValueError(f"bad entry {key!r}")
                self._entries[key] = (adler, digest)
        except (ValueError, KeyError, TypeError) as exc:
            # a cache: a damaged file costs one build its fast path, never the build
            self._entries.clear()
            log.warning("builder.statindex_ignored", path=self.path,
                        reason=f"{type(exc).__name__}: {exc}")
            return
        self._trim()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: StatKey) -> bool:
        return _encode(key) in self._entries

    def keys(self) -> Iterator[str]:
        """The encoded keys, oldest first (for tests and diagnostics)."""
        return iter(list(self._entries))

    def get(self, key: StatKey) -> tuple[int, str] | None:
        """(adler32, digest) recorded for ``key``, or None; a hit counts as a use."""
        k = _encode(key)
        with self._lock:
            value = self._entries.pop(k, None)
            if value is not None:
                self._entries[k] = value
            return value

    def put(self, key: StatKey, adler: int, digest: str) -> None:
        """Record what was computed for ``key`` (the oldest entries go beyond the bound)."""
        k = _encode(key)
        with self._lock:
            old = self._entries.pop(k, None)
            self._entries[k] = (adler, digest)
            if old != (adler, digest):
                self._dirty = True
            self._trim()

    def _trim(self) -> None:
        excess = len(self._entries) - self.max_entries
        if excess > 0:
            for k in list(self._entries)[:excess]:
                del self._entries[k]
            self._dirty = True

    def save(self) -> None:
        """Write the index (atomically, not fsynced: a cache) if it changed."""
        with self._lock:
            if not self._dirty:
                return
            doc = {"version": _VERSION,
                   "entries": {k: [a, d] for k, (a, d) in self._entries.items()}}
            self._dirty = False
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, 0o700, exist_ok=True)
        write_json_atomic(self.path, doc, 0o600, durable=False)
