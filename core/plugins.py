"""The plugin manager: entry points in, named drivers out.

Every driver, built-in or third-party, arrives the same way: an entry point in
one of the groups of ``hookspecs.ENTRY_POINT_GROUPS`` names a module holding
``@hookimpl`` functions.  Nothing is imported by a shortcut, so a third-party
driver is a first-class citizen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import pluggy

from skiff.core import hookspecs
from skiff.core.hookspecs import PROJECT, merge_named

#: discovery hook per driver kind; "isolation" contributes runtimes, "limits" cgroup drivers,
#: "volume" volume drivers
DISCOVERY_HOOKS: dict[str, str] = {
    "storage": "skiff_storage_drivers",
    "network": "skiff_network_drivers",
    "logging": "skiff_log_drivers",
    "isolation": "skiff_runtimes",
    "limits": "skiff_cgroup_drivers",
    "volume": "skiff_volume_drivers",  # entry-point group skiff.volume (docs/volumes.md)
}


class PluginLoadError(Exception):
    """An entry point could not be imported or registered."""


@dataclass
class Plugins:
    """The loaded plugins and, per kind, the drivers they provide."""

    manager: pluggy.PluginManager
    drivers: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: plugin modules per kind, as "entry-point-name=module" for ``docker info``
    modules: dict[str, list[str]] = field(default_factory=dict)

    @property
    def hook(self) -> Any:
        return self.manager.hook

    def factory(self, kind: str, name: str) -> Any:
        """The factory of driver ``name`` of ``kind``; a clear error when absent."""
        found = self.drivers.get(kind, {})
        if name not in found:
            installed = ", ".join(sorted(found)) or "none"
            raise LookupError(
                f"{kind} driver {name!r} is not installed; installed {kind} drivers: {installed}"
            )
        return found[name]


def load_plugins(extra_modules: list[Any] | None = None) -> Plugins:
    """Load every entry point of every skiff group and collect its drivers.

    ``extra_modules`` are registered too (tests use it for in-process plugins).
    A module that fails to import is an error naming the entry point: a broken
    driver package must not silently disappear from the list.
    """
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs.SkiffSpec)
    modules: dict[str, list[str]] = {}
    for kind, group in hookspecs.ENTRY_POINT_GROUPS.items():
        modules[kind] = []
        for ep in sorted(entry_points(group=group), key=lambda e: e.name):
            try:
                module = ep.load()
            except Exception as exc:  # report which package is broken, with its cause
                raise PluginLoadError(
                    f"cannot load {group} entry point {ep.name!r} ({ep.value}): {exc}"
                ) from exc
            if pm.is_registered(module):
                continue
            pm.register(module, name=f"{group}:{ep.name}")
            modules[kind].append(f"{ep.name}={ep.value}")
    for module in extra_modules or []:
        pm.register(module)
    drivers = {
        kind: merge_named(getattr(pm.hook, hook)(), kind)
        for kind, hook in DISCOVERY_HOOKS.items()
    }
    return Plugins(manager=pm, drivers=drivers, modules=modules)
