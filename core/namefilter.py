"""The ``name`` filter of ``ps``, ``network ls`` and ``volume ls``, read as dockerd reads it.

dockerd takes each value as a regular expression and searches the name with it,
unanchored (``web`` matches ``my-web-1``; ``^web$`` only ``web``); a name equal to
a value matches even when the value is not a valid expression, and a value that
does not compile is otherwise ignored (never an error: the client gets fewer rows,
as from dockerd).  Containers are tried both as ``/name`` and ``name``, so
``^/web$`` and ``^web$`` both find the container ``web``.

Go's RE2 has no look-around and no back-references; Python's ``re`` has both.
Values using them are treated as RE2 would, as expressions that do not compile.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

# Constructs re accepts and RE2 refuses: look-ahead/behind, back-references,
# possessive/atomic groups and conditionals.
_NOT_RE2 = re.compile(r"\(\?(?:=|!|<=|<!|>|\(|P=)|\\[1-9]|\\g<")


@functools.lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern[str] | None:
    if _NOT_RE2.search(pattern):
        return None
    try:
        return re.compile(pattern)
    except (re.error, RecursionError, OverflowError):
        return None


def matches(patterns: Iterable[str], name: str) -> bool:
    """Whether ``name`` is one of ``patterns`` or one of them (a regexp) finds it."""
    for pattern in patterns:
        if pattern == name:
            return True
        rx = _compiled(pattern)
        if rx is not None and rx.search(name):
            return True
    return False


def matches_container(patterns: Iterable[str], name: str) -> bool:
    """``matches`` for a container name, tried with and without its leading ``/``."""
    bare = name.lstrip("/")
    wanted = list(patterns)
    return matches(wanted, "/" + bare) or matches(wanted, bare)
