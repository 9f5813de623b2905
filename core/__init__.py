"""skiff's core: the daemon, the API and the domain (docs/design.md).

structlog, which nearly every module here imports, imports two modules at its
own import that skiffd never uses, together ~60-100 ms of its start (and
their memory); whenever structlog is first imported in a process that
imported this package, it goes without them:

* rich, imported whenever it is installed (httpx and the test tools bring
  it), for a console renderer's tracebacks skiffd never uses: exceptions are
  formatted to text (``format_exc_info``) before any renderer sees them.
  Hidden while structlog is imported, structlog takes it as absent; rich
  itself stays importable for whoever wants it.
* asyncio, which structlog imports for its ``a*`` logging methods (they hand
  the call to asyncio's executor); skiff runs on trio and never calls them.
  structlog gets a stand-in that imports the real asyncio on first use.

Done by an import hook rather than by importing structlog here: the fork
server and the shims import this package too, and log nothing.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import types
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from importlib.abc import Loader


class _OnFirstUse(types.ModuleType):
    """Stands for a module until one of its attributes is asked for."""

    def __getattr__(self, name: str) -> Any:
        if sys.modules.get(self.__name__) is self:
            raise AttributeError(name)  # still standing in: not importable yet
        return getattr(importlib.import_module(self.__name__), name)


# duck-typed, not importlib.abc's: that module imports importlib.resources,
# tempfile, shutil and the compressors, which the fork server does without
class _Hiding:
    """structlog's own loader, run with rich hidden and asyncio stood in for."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:  # get_data, is_package, ...: the inner's
        return getattr(self.inner, name)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        created: types.ModuleType | None = self.inner.create_module(spec)
        return created

    def exec_module(self, module: types.ModuleType) -> None:
        hidden: dict[str, Any] = {}
        if "rich" not in sys.modules:
            hidden["rich"] = None  # import rich -> ImportError: structlog goes without
        if "asyncio" not in sys.modules:
            hidden["asyncio"] = _OnFirstUse("asyncio")
        sys.modules.update(hidden)
        try:
            self.inner.exec_module(module)
        finally:
            for name, stand_in in hidden.items():
                if sys.modules.get(name, 0) is stand_in:
                    del sys.modules[name]


class _LeanStructlog:
    """Finds structlog as the path finder does, once, with ``_Hiding`` as its loader."""

    def find_spec(self, name: str, path: Sequence[str] | None = None,
                  target: types.ModuleType | None = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if name != "structlog":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = cast("Loader", _Hiding(spec.loader))
        return spec


if "structlog" not in sys.modules:
    sys.meta_path.insert(0, _LeanStructlog())
