"""The plugin manager: entry points in, named drivers out.

Every driver, built-in or third-party, arrives the same way: an entry point in
one of the groups of ``hookspecs.ENTRY_POINT_GROUPS`` names a module holding
``@hookimpl`` functions.  Nothing is imported by a shortcut, so a third-party
driver is a first-class citizen.

Each plugin module declares the contract version it was written for
(``SKIFF_CONTRACT = "2.0"``, see ``hookspecs.CONTRACT_VERSION``).  Another
major is refused before the module is registered, so the daemon does not
start with a driver that may misread its records.  A module that declares
nothing was written before versions, for contract 1, whose network records
were dicts: it is refused like any other major, at start and with the fix
(one line, once the author checked the plugin against the contract), rather
than accepted with a warning and failing at the first container that uses it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import pluggy

from skiff.core import hookspecs
from skiff.core.hookspecs import (
    CONTRACT_ATTRIBUTE,
    CONTRACT_VERSION,
    PROJECT,
    UNDECLARED_CONTRACT,
    merge_named,
)

#: discovery hook per driver kind; "isolation" contributes runtimes, "limits" cgroup drivers,
#: "volume" volume drivers
DISCOVERY_HOOKS: dict[str, str] = {
    "storage": "skiff_storage_drivers",
    "network": "skiff_network_drivers",
    "logging": "skiff_log_drivers",
    "isolation": "skiff_runtimes",
    "limits": "skiff_cgroup_drivers",
    "volume": "skiff_volume_drivers",  # entry-point group skiff.volume (docs/volumes.md)
    # a second hook of the limits kind (entry-point group skiff.limits): bandwidth
    "traffic": "skiff_traffic_shapers",
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


def _major_minor(version: str) -> tuple[int, int]:
    major, minor = version.split(".")
    return int(major), int(minor)


def check_contract(module: Any, what: str, remedy: str) -> None:
    """Refuse ``module`` unless it declares a contract of the daemon's major.

    ``what`` names the plugin in messages (entry point and module); ``remedy``
    tells the operator how to get rid of it.
    """
    speaks = CONTRACT_VERSION
    declared = getattr(module, CONTRACT_ATTRIBUTE, None)
    if declared is None:
        raise PluginLoadError(
            f"plugin {what} declares no {CONTRACT_ATTRIBUTE}: it was written before skiff"
            f" plugin contracts had versions (contract {UNDECLARED_CONTRACT}), and this skiffd"
            f" speaks contract {speaks}: install a release of the plugin that declares"
            f' {CONTRACT_ATTRIBUTE} = "{speaks}" (its author checks it against docs/plugins.md'
            f" and adds that line), or {remedy}"
        )
    major: int | None = None
    if isinstance(declared, str):
        with contextlib.suppress(ValueError):
            major = _major_minor(declared)[0]
    if major is None:
        raise PluginLoadError(
            f"plugin {what} declares {CONTRACT_ATTRIBUTE} = {declared!r}, which is not a"
            f' contract version ("MAJOR.MINOR"); this skiffd speaks contract {speaks}.'
            f" Fix the plugin, or {remedy}"
        )
    speaks_major = _major_minor(speaks)[0]
    if major != speaks_major:
        raise PluginLoadError(
            f"plugin {what} is written for skiff plugin contract {declared}, but this"
            f" skiffd speaks contract {speaks} (another major version): install a release"
            f" of the plugin written for contract {speaks_major}.x, or {remedy}"
        )


def load_plugins(extra_modules: list[Any] | None = None) -> Plugins:
    """Load every entry point of every skiff group and collect its drivers.

    ``extra_modules`` are registered too (tests use it for in-process plugins).
    A module that fails to import is an error naming the entry point: a broken
    driver package must not silently disappear from the list.
    """
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs.SkiffSpec)
    modules: dict[str, list[str]] = {}
    # one scan of the installed distributions' metadata for all the groups, not
    # one per group: each scan reads every dist-info of the environment
    installed = entry_points()
    for kind, group in hookspecs.ENTRY_POINT_GROUPS.items():
        modules[kind] = []
        for ep in sorted(installed.select(group=group), key=lambda e: e.name):
            try:
                module = ep.load()
            except Exception as exc:  # report which package is broken, with its cause
                raise PluginLoadError(
                    f"cannot load {group} entry point {ep.name!r} ({ep.value}): {exc}"
                ) from exc
            if pm.is_registered(module):
                continue
            dist = ep.dist.name if ep.dist is not None else None
            check_contract(
                module, f"{group} entry point {ep.name!r} ({ep.value})",
                f"uninstall it (pip uninstall {dist})" if dist
                else f"remove the {group} entry point {ep.name!r}",
            )
            pm.register(module, name=f"{group}:{ep.name}")
            modules[kind].append(f"{ep.name}={ep.value}")
    for module in extra_modules or []:
        check_contract(module, repr(getattr(module, "__name__", module)), "leave it out")
        pm.register(module)
    drivers = {
        kind: merge_named(getattr(pm.hook, hook)(), kind)
        for kind, hook in DISCOVERY_HOOKS.items()
    }
    return Plugins(manager=pm, drivers=drivers, modules=modules)
