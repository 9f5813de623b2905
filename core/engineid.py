"""The daemon's stable identity, kept in the data-root as dockerd keeps its engine-id."""

from __future__ import annotations

import os
import uuid

from skiff.core.atomic import write_atomic


def engine_id(data_root: str) -> str:
    """The ID in ``<data-root>/engine-id``, made on first use (``docker info``'s ``ID``)."""
    path = os.path.join(data_root, "engine-id")
    try:
        with open(path) as f:
            return f.read().strip()
    except FileNotFoundError:
        ident = str(uuid.uuid4())
        write_atomic(path, ident + "\n")
        return ident
