"""The options of one build (``POST /build``'s query, checked)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from skiff.core.errors import InvalidParameter

__all__ = ["SUPPORTED_PLATFORMS", "BuildOptions", "check_platform"]

#: what ``platform`` may name: the one this daemon builds for
SUPPORTED_PLATFORMS = frozenset({"linux", "linux/amd64", "amd64", "linux/x86_64", "linux/x86-64"})


def check_platform(value: str, where: str = "platform") -> None:
    """Refuse any platform but linux/amd64 (no emulation here)."""
    if value and value.lower() not in SUPPORTED_PLATFORMS:
        raise InvalidParameter(
            f"{where} {value!r} is not supported: skiff builds linux/amd64 images only "
            "(it runs no emulator); leave it out or use linux/amd64")


@dataclass(frozen=True)
class BuildOptions:
    """One build's options, as the client gave them."""

    #: the names to tag the result with (``t``, several)
    tags: tuple[str, ...] = ()
    #: the Dockerfile's path in the context
    dockerfile: str = "Dockerfile"
    #: ``buildargs``: None for a name given without a value
    build_args: Mapping[str, str | None] = field(default_factory=dict)
    target: str | None = None
    nocache: bool = False
    #: pull every base image, even when present
    pull: bool = False
    #: remove the intermediate containers of the steps that succeeded
    rm: bool = True
    #: remove them always, even a failed step's
    forcerm: bool = False
    #: ``labels``: set on the built image, as a last LABEL step
    labels: Mapping[str, str] = field(default_factory=dict)
    network_mode: str = "default"
    #: images whose chains count as cache (``cachefrom``)
    cache_from: tuple[str, ...] = ()
    shm_size: int = 0
    extra_hosts: tuple[str, ...] = ()
    quiet: bool = False
    #: HostConfig resource fields for RUN's containers (Memory, CpuShares ...)
    resources: Mapping[str, Any] = field(default_factory=dict)
