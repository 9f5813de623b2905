"""Which registry blobs hold each local layer (Docker's ``distribution`` metadata).

A layer is stored uncompressed; a registry holds it compressed, under the
digest of the compressed bytes.  Pull and push record ``diffID -> [{Digest,
SourceRepository, MediaType}]`` so a later push can tell the registry "you
have this" (HEAD), mount it from the repository it came from, or re-use the
blob digest, instead of recompressing and uploading::

    <data-root>/image/<driver>/distribution/v2metadata-by-diffid/sha256/<hex>
    <data-root>/image/<driver>/distribution/diffid-by-digest/sha256/<hex>
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from typing import Any

from skiff.core.atomic import write_atomic

_MAX_ENTRIES = 50


@dataclass(frozen=True)
class BlobRecord:
    """One place a layer's compressed blob is known to exist."""

    digest: str
    repository: str  #: full name, e.g. ``127.0.0.1:5000/app``
    media_type: str

    @property
    def domain(self) -> str:
        return self.repository.split("/", 1)[0]

    @property
    def path(self) -> str:
        return self.repository.split("/", 1)[1] if "/" in self.repository else ""


class DistributionMetadata:
    """The diffID <-> blob digest records of one image root (thread-safe)."""

    def __init__(self, image_root: str) -> None:
        base = os.path.join(image_root, "distribution")
        self._by_diff = os.path.join(base, "v2metadata-by-diffid", "sha256")
        self._by_digest = os.path.join(base, "diffid-by-digest", "sha256")
        for d in (self._by_diff, self._by_digest):
            os.makedirs(d, mode=0o700, exist_ok=True)
        self._lock = threading.Lock()

    def records(self, diff_id: str) -> list[BlobRecord]:
        path = os.path.join(self._by_diff, diff_id.split(":", 1)[1])
        try:
            with open(path, "rb") as f:
                data: list[dict[str, Any]] = json.load(f)
        except (OSError, ValueError):
            return []
        return [BlobRecord(str(d.get("Digest", "")), str(d.get("SourceRepository", "")),
                           str(d.get("MediaType", "")))
                for d in data if isinstance(d, dict) and d.get("Digest")]

    def diff_id(self, digest: str) -> str | None:
        try:
            with open(os.path.join(self._by_digest, digest.split(":", 1)[1])) as f:
                return f.read().strip() or None
        except OSError:
            return None

    def add(self, diff_id: str, record: BlobRecord) -> None:
        with self._lock:
            current = [r for r in self.records(diff_id)
                       if not (r.digest == record.digest and r.repository == record.repository)]
            current.insert(0, record)  # most recent first: tried first on push
            data = [{"Digest": r.digest, "SourceRepository": r.repository, "HMAC": "",
                     "MediaType": r.media_type} for r in current[:_MAX_ENTRIES]]
            write_atomic(os.path.join(self._by_diff, diff_id.split(":", 1)[1]),
                         json.dumps(data).encode(), 0o600)
            write_atomic(os.path.join(self._by_digest, record.digest.split(":", 1)[1]),
                         diff_id.encode(), 0o600)
