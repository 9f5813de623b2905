"""skiff's core: the daemon, the API and the domain (docs/design.md).

structlog, which nearly every module here imports, imports rich at its own
import whenever rich is installed (httpx and the test tools bring it), for a
console renderer's tracebacks skiffd never uses: exceptions are formatted to
text (``format_exc_info``) before any renderer sees them.  That import was
~40 ms of skiffd's start and a few MB of its memory, so structlog is
imported here, before any module of the core, with rich hidden; rich itself
stays importable afterwards for whoever wants it.
"""

from __future__ import annotations

import sys


def _import_structlog_without_rich() -> None:
    if "structlog" in sys.modules or "rich" in sys.modules:
        return  # too late, or someone uses rich anyway: nothing to save
    sys.modules["rich"] = None  # type: ignore[assignment]  # import rich -> ImportError
    try:
        import structlog  # noqa: F401
    finally:
        if sys.modules.get("rich", 0) is None:
            del sys.modules["rich"]


_import_structlog_without_rich()
