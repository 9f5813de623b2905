"""Docker's JSON progress messages for pull and push.

Each message is ``{"status": ..., "id": ..., "progressDetail": {...},
"progress": "[==>  ] 1.2MB/3.4MB"}``; the docker CLI redraws one line per
``id``.  :class:`Progress` throttles byte counts so a fast local download does
not turn into thousands of lines.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

Emit = Callable[[dict[str, Any]], None]

_UNITS = ("B", "kB", "MB", "GB", "TB", "PB")
#: at most this many progress messages a second per layer
_RATE = 10


def human_size(n: float) -> str:
    """Go's ``units.HumanSize``: decimal units, 3 significant digits (``2.22MB``)."""
    i = 0
    while n >= 1000 and i < len(_UNITS) - 1:
        n /= 1000
        i += 1
    return f"{n:.3g}{_UNITS[i]}"


def bar(current: int, total: int, width: int = 50) -> str:
    """The progress string dockerd puts next to ``progressDetail``."""
    if total <= 0:
        return f"{human_size(current):>8}"
    pct = min(1.0, current / total)
    n = int(width * pct)
    return f"[{'=' * n}>{' ' * (width - n)}] {human_size(current):>7}/{human_size(total)}"


def short(digest: str) -> str:
    """The 12-hex id the CLI shows per layer."""
    return digest.split(":", 1)[-1][:12]


class Progress:
    """Throttled byte-count messages for one layer id and one status."""

    def __init__(self, emit: Emit, ident: str, status: str, total: int) -> None:
        self._emit = emit
        self.ident = ident
        self.status = status
        self.total = total
        self._last = 0.0

    def update(self, current: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < 1 / _RATE and current < self.total:
            return
        self._last = now
        self._emit({"status": self.status,
                    "progressDetail": {"current": current, "total": self.total},
                    "progress": bar(current, self.total), "id": self.ident})


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error worth showing from a nursery's exception group (not a Cancelled)."""
    import trio

    leaves: list[BaseException] = []

    def walk(g: BaseException) -> None:
        if isinstance(g, BaseExceptionGroup):
            for e in g.exceptions:
                walk(e)
        else:
            leaves.append(g)

    walk(group)
    for e in leaves:
        if not isinstance(e, trio.Cancelled):
            return e
    return leaves[0]
