"""What the builder is given of the daemon: narrow, typed, no Engine.

The engine (the composition root) builds one :class:`BuildServices` from its
stores and managers.  The builder runs RUN steps as the engine's own
containers (same runtime, limits, network and storage drivers), makes COPY,
ADD and WORKDIR layers on a bare read-write layer with no process, and
stores every step as an image.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from skiff.core.builder.cache import BuildCache
from skiff.core.containers.model import Container
from skiff.core.containers.registry import Notice
from skiff.core.images.layers import LayerStore
from skiff.core.images.store import ImageStore

T = TypeVar("T")

__all__ = ["BuildContainers", "BuildServices", "OutputStream", "PullImage"]


class OutputStream(Protocol):
    """A container's output from the moment of subscribing: ``(stream, data,
    when)`` items until its run ends."""

    def __aiter__(self) -> AsyncIterator[tuple[str, bytes, float]]: ...

    def close(self) -> None: ...


class BuildContainers(Protocol):
    """The container operations a RUN step uses (the container manager's)."""

    async def create(self, body: dict[str, Any], name: str | None) -> tuple[str, list[str]]: ...

    async def start(self, ref: str) -> None: ...

    async def remove(self, ref: str, force: bool = False, volumes: bool = False) -> None: ...

    def waiter(self, ref: str, condition: str) -> Notice | None: ...

    def get(self, ref: str) -> Container: ...


#: pull an image by reference, sending progress messages; returns its ID
PullImage = Callable[[str, Callable[[dict[str, Any]], None]], Awaitable[str]]


@dataclass(frozen=True)
class BuildServices:
    """Everything a build reaches the daemon through."""

    containers: BuildContainers
    #: subscribe to a container's output now (before start: nothing is missed)
    subscribe_output: Callable[[str], OutputStream]
    images: ImageStore
    layers: LayerStore
    cache: BuildCache
    pull: PullImage
    #: blocking work off the event loop, on the engine's bounded threads
    to_thread: Callable[..., Awaitable[Any]]
    #: where contexts are unpacked and URLs fetched (under the data-root)
    spool_dir: str
    #: the largest build context accepted, in bytes (after decompression)
    max_context_size: int
    #: a tmpfs where small contexts are unpacked (None: always ``spool_dir``)
    memory_spool: str | None = None
