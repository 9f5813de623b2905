"""The daemon's container records, their per-container run-time state, and
the events that name them.

Every part of the container domain looks containers up here; none needs the
manager or the engine for that.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from skiff.core.containers.model import Container
from skiff.core.containers.streams import OutputHub
from skiff.core.errors import InvalidParameter, NotFound
from skiff.core.events import Publish
from skiff.core.hookspecs import ContainerProcess, ContainerSpec, Endpoint

#: ``Engine.to_thread``: blocking driver work on the engine's bounded worker threads
ToThread = Callable[..., Awaitable[Any]]


@dataclass
class Notice:
    """A one-shot event carrying the exit code it announces."""

    event: trio.Event = field(default_factory=trio.Event)
    code: int = 0

    def fire(self, code: int) -> None:
        self.code = code
        self.event.set()


@dataclass
class Track:
    """Everything kept per container besides its record."""

    hub: OutputHub = field(default_factory=OutputHub)
    lock: trio.Lock = field(default_factory=trio.Lock)
    next_exit: Notice = field(default_factory=Notice)
    removed: Notice = field(default_factory=Notice)
    process: ContainerProcess | None = None
    #: network name -> (driver, endpoint) while the container runs
    endpoints: dict[str, tuple[Any, Endpoint]] = field(default_factory=dict)
    stopping: bool = False
    log_limiter: trio.CapacityLimiter = field(default_factory=lambda: trio.CapacityLimiter(1))
    #: the spec of the current run, after every plugin amended it: what an exec inherits
    spec: ContainerSpec | None = None
    #: an adopted run's spec, built on its first exec rather than at adoption
    #: (see ``run_spec``); None once built or for a run this daemon started
    spec_loader: Callable[[], Awaitable[ContainerSpec | None]] | None = None
    _spec_lock: trio.Lock = field(default_factory=trio.Lock, init=False, repr=False)
    #: cancels the watch of the current run without ending it (live-restore shutdown)
    detach: trio.CancelScope | None = None

    async def run_spec(self) -> ContainerSpec | None:
        """The spec of the current run, built now if its adoption left it for
        later: building the specs of 500 adopted containers was half of a
        daemon's start-up, and only an exec needs one."""
        loader = self.spec_loader
        if loader is not None:
            async with self._spec_lock:  # two execs at once build it once
                if self.spec_loader is loader:
                    self.spec = await loader()
                    self.spec_loader = None
        return self.spec


class ContainerRegistry:
    """Records by ID and name, their tracks, and container events."""

    def __init__(self, publish: Publish) -> None:
        self.by_id: dict[str, Container] = {}
        self.by_name: dict[str, str] = {}
        self.tracks: dict[str, Track] = {}
        #: called with (container, action) for each container event, before it
        #: is published: how the healthchecks follow starts and deaths
        self.observers: list[Callable[[Container, str], None]] = []
        self._publish = publish

    def get(self, ref: str) -> Container:
        """By full ID, name (with or without "/") or unique ID prefix: Docker's order."""
        if ref in self.by_id:
            return self.by_id[ref]
        name = ref.lstrip("/")
        if name in self.by_name:
            return self.by_id[self.by_name[name]]
        if ref:
            matches = [cid for cid in self.by_id if cid.startswith(ref)]
            if len(matches) == 1:
                return self.by_id[matches[0]]
            if len(matches) > 1:
                raise InvalidParameter(
                    f"multiple IDs found with provided prefix: {ref}"
                )
        raise NotFound(f"No such container: {ref}")

    def using_image(self, image_id: str) -> list[Container]:
        # called from a worker thread (rmi's in-use check) while the loop adds
        # and drops containers: a copy first, one operation under the GIL
        return [c for c in list(self.by_id.values()) if c.image_id == image_id]

    def counts(self) -> tuple[int, int, int, int]:
        running = sum(1 for c in self.by_id.values() if c.state.Running and not c.state.Paused)
        paused = sum(1 for c in self.by_id.values() if c.state.Paused)
        total = len(self.by_id)
        return total, running, paused, total - running - paused

    def index(self, c: Container) -> None:
        self.by_id[c.id] = c
        self.by_name[c.name] = c.id
        self.tracks.setdefault(c.id, Track()).hub.owner = c.id

    def drop(self, c: Container) -> None:
        """Forget ``c`` (its name only if it is still ``c``'s)."""
        self.by_id.pop(c.id, None)
        if self.by_name.get(c.name) == c.id:
            del self.by_name[c.name]
        self.tracks.pop(c.id, None)

    def event(self, c: Container, action: str, **extra: Any) -> None:
        """Publish a container event with Docker's attributes (image, name, labels)."""
        attrs = {str(k): str(v) for k, v in (c.config.get("Labels") or {}).items()}
        attrs.update(image=c.config.get("Image") or c.image_id, name=c.name)
        attrs.update({k: str(v) for k, v in extra.items()})
        for observe in self.observers:
            observe(c, action)
        self._publish("container", action, c.id, attrs)
