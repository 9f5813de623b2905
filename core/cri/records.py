"""The CRI's record of a pod or container, read from its label, parsed once.

A record (metadata, labels, annotations, creation time, ...) is JSON in one
label of the engine container, written at create and never changed after, so
the parse of a given label text is cached: a status, a listing and a filter
read every record of the CRI's namespace, which was one ``json.loads`` per
container per call.  The cache is keyed by the text itself (a record holds its
creation time in ns, so two containers' texts differ): nothing to invalidate,
and a removed container's entry only ages out.

The dict returned is shared by every caller: read it, never change it.
"""

from __future__ import annotations

import functools
import json
from typing import Any

#: a node's pods and containers, with room: a miss only parses again
CACHED = 4096


@functools.lru_cache(maxsize=CACHED)
def parsed(text: str) -> dict[str, Any] | None:
    """The record in a label's ``text``; None when it is no JSON object."""
    try:
        record = json.loads(text)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None
