"""SIGHUP: daemon.json read again and the keys dockerd reloads applied live.

dockerd 20.10 reloads its debug switch, labels, registry settings
(mirrors, insecure registries, download/upload concurrency and attempts)
and live-restore; skiff reloads the same keys it has, plus ``log-level``
and the registry settings of its own (``registry-domain-mirrors``,
``registry-timeout``).  Each of them is read where it is used (a pull builds
its registry settings from the configuration, shutdown reads live-restore),
so a reload is the configuration's dict updated in place.

Unlike dockerd, which ignores a changed key it cannot reload, skiff refuses
the whole reload and names the key: an operator who edits ``data-root`` and
sends SIGHUP would otherwise believe it applied.  A file that cannot be read
or does not validate is refused the same way.  Either way the daemon keeps
serving with the configuration it had.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

from skiff.core.config import BY_KEY, ConfigError, load

#: keys a SIGHUP applies; any other change refuses the reload
RELOADABLE = frozenset({
    "debug", "log-level", "labels", "live-restore",
    "max-concurrent-downloads", "max-concurrent-uploads", "max-download-attempts",
    "insecure-registries", "registry-mirrors", "registry-domain-mirrors", "registry-timeout",
})


def reread(argv: Sequence[str] | None, current: Mapping[str, Any]) -> dict[str, Any]:
    """The reloadable keys whose value changed, as daemon.json and the flags
    now say; ``ConfigError`` naming the file and the key when the file is
    unusable or a key that takes a restart changed."""
    new, _ = load(argv)
    changed = {key for key in BY_KEY if new[key] != current.get(key)}
    fixed = sorted(changed - RELOADABLE)
    if fixed:
        raise ConfigError(
            f"{new['config-file']}: {', '.join(fixed)} cannot be changed by a reload "
            f"(only {', '.join(sorted(RELOADABLE))} can); restart skiffd to apply "
            "it. Nothing was reloaded")
    return {key: new[key] for key in changed}


def apply(changes: Mapping[str, Any], *configs: MutableMapping[str, Any]) -> None:
    """Every holder of the configuration sees the new values (the engine's
    dict is a copy of the loaded one with userns-remap)."""
    for config in {id(c): c for c in configs}.values():
        config.update(changes)


def unique_labels(config: Mapping[str, Any]) -> list[str]:
    """``labels`` without repeats (validated: a key has one value)."""
    return list(dict.fromkeys(config["labels"]))


def event_attributes(config: Mapping[str, Any], name: str) -> dict[str, str]:
    """The ``daemon reload`` event's attributes: dockerd's names, every reloadable
    setting skiff shares with dockerd as it is now (lists as JSON)."""
    def listing(values: list[str]) -> str:
        return json.dumps(values, separators=(",", ":"))
    return {
        "debug": "true" if config["debug"] else "false",
        "labels": listing(unique_labels(config)),
        "live-restore": "true" if config["live-restore"] else "false",
        "max-concurrent-downloads": str(config["max-concurrent-downloads"]),
        "max-concurrent-uploads": str(config["max-concurrent-uploads"]),
        "max-download-attempts": str(config["max-download-attempts"]),
        "insecure-registries": listing(list(config["insecure-registries"])),
        "registry-mirrors": listing(list(config["registry-mirrors"])),
        "name": name,
    }
