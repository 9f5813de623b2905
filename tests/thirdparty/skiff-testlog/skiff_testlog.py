"""``testlog``: a third-party log driver, as a package outside skiff would ship one.

It appends each line a container writes to the file named by ``--log-opt
testlog-path=`` as ``<stream> <line>``, and cannot read back (``readable =
False``): skiff keeps its dual-logging cache beside it, so ``docker logs`` works.
Installed by an entry point in group ``skiff.logging`` and nothing else.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

from skiff.core.hookspecs import (
    GENERIC_LOG_OPTIONS,
    LogContext,
    LogMessage,
    ReadConfig,
    hookimpl,
)

NAME = "testlog"
PATH_OPT = "testlog-path"

#: the plugin contract this module was written for
SKIFF_CONTRACT = "2.3"


def check_options(options: Mapping[str, str]) -> str:
    """The file to write to; ``ValueError`` naming a bad option."""
    for key in options:
        if key != PATH_OPT and key not in GENERIC_LOG_OPTIONS:
            raise ValueError(f"unknown log opt '{key}' for log driver {NAME}")
    path = options.get(PATH_OPT, "")
    if not os.path.isabs(path):
        raise ValueError(f"log opt '{PATH_OPT}' of the {NAME} log driver must be an "
                         "absolute path")
    return path


class FileLogDriver:
    name = NAME
    readable = False

    def __init__(self, ctx: LogContext) -> None:
        self.path = check_options(ctx.options)
        self._fd = -1

    def write(self, msg: LogMessage) -> None:
        if self._fd < 0:  # on the first line: a driver built to be asked writes nothing
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                               0o640)
        os.write(self._fd, msg.stream.encode() + b" " + msg.line)

    def read(self, config: ReadConfig) -> Iterator[LogMessage]:
        raise NotImplementedError(f"the {NAME} log driver cannot read back")

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


@hookimpl
def skiff_log_drivers() -> dict[str, object]:
    return {NAME: FileLogDriver}


@hookimpl
def skiff_container_validate(host_config: Mapping[str, Any]) -> None:
    lc = host_config.get("LogConfig") or {}
    if lc.get("Type") == NAME:
        check_options(lc.get("Config") or {})
