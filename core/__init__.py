"""skiff's core: the daemon, the API and the domain (docs/design.md).

structlog, which nearly every module here imports, is imported here first,
before any module of the core, with two of its own imports left out of
skiffd's start (together ~60-100 ms of it, and their memory):

* rich, imported whenever it is installed (httpx and the test tools bring
  it), for a console renderer's tracebacks skiffd never uses: exceptions are
  formatted to text (``format_exc_info``) before any renderer sees them.
  Hidden while structlog is imported, structlog takes it as absent; rich
  itself stays importable for whoever wants it.
* asyncio, which structlog imports for its ``a*`` logging methods (they hand
  the call to asyncio's executor); skiff runs on trio and never calls them.
  structlog gets a stand-in that imports the real asyncio on first use.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any


class _OnFirstUse(types.ModuleType):
    """Stands for a module until one of its attributes is asked for."""

    def __getattr__(self, name: str) -> Any:
        if sys.modules.get(self.__name__) is self:
            raise AttributeError(name)  # still standing in: not importable yet
        return getattr(importlib.import_module(self.__name__), name)


def _import_structlog_lean() -> None:
    if "structlog" in sys.modules:
        return
    hidden: dict[str, Any] = {}
    if "rich" not in sys.modules:
        hidden["rich"] = None  # import rich -> ImportError: structlog goes without
    if "asyncio" not in sys.modules:
        hidden["asyncio"] = _OnFirstUse("asyncio")
    sys.modules.update(hidden)
    try:
        import structlog  # noqa: F401
    finally:
        for name, stand_in in hidden.items():
            if sys.modules.get(name, 0) is stand_in:
                del sys.modules[name]


_import_structlog_lean()
