"""The daemon's event bus: what ``docker events`` shows.

Every service publishes through ``Engine.events.publish``; ``GET /events``
subscribes.  Recent events are kept in a ring so that ``--since`` can replay
them, as dockerd does (it keeps 256; we keep more because a container's
life is a handful of events and a test or operator asks about the last
minute, not the last second).

Publishing never blocks and never fails: a subscriber that cannot keep up
loses its subscription (its stream ends) rather than slowing the daemon.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from skiff.core import metrics

#: events kept for replay (``since``)
HISTORY = 1024
#: events queued per subscriber before it is dropped as too slow
SUBSCRIBER_BUFFER = 4096

#: Docker's event types (``Type`` in the JSON, ``type=`` in filters)
TYPES = ("container", "image", "volume", "network", "daemon", "plugin", "node",
         "service", "secret", "config", "builder")


@dataclass(frozen=True)
class Event:
    """One event, as Docker's ``events.Message``."""

    type: str
    action: str
    actor_id: str
    attributes: Mapping[str, str] = field(default_factory=dict)
    time_nano: int = 0

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        if self.type in ("container", "image"):
            # the pre-1.22 fields, which the CLI's default format still prints
            data["status"] = self.action
            data["id"] = self.actor_id
            if "image" in self.attributes and self.type == "container":
                data["from"] = self.attributes["image"]
        data.update(
            Type=self.type,
            Action=self.action,
            Actor={"ID": self.actor_id, "Attributes": dict(self.attributes)},
            scope="local",
            time=self.time_nano // 1_000_000_000,
            timeNano=self.time_nano,
        )
        return data


#: ``EventBus.publish`` as the services are given it: (type, action, actor id,
#: attributes); from the trio thread only
Publish = Callable[[str, str, str, dict[str, str]], object]


class EventBus:
    """Fan-out of events to live subscribers, with a replay ring."""

    def __init__(self, history: int = HISTORY) -> None:
        self._ring: deque[Event] = deque(maxlen=history)
        self._subscribers: set[trio.MemorySendChannel[Event]] = set()

    @property
    def subscribers(self) -> int:
        """How many ``docker events`` streams are open."""
        return len(self._subscribers)

    def publish(self, type: str, action: str, actor_id: str,
                attributes: Mapping[str, str] | None = None) -> Event:
        """Record and fan out one event.  Call from the trio thread."""
        event = Event(type, action, actor_id,
                      {k: str(v) for k, v in (attributes or {}).items()}, time.time_ns())
        self._ring.append(event)
        metrics.events.inc()
        for send in list(self._subscribers):
            try:
                send.send_nowait(event)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.discard(send)
                send.close()
        return event

    def history(self, since_ns: int | None = None) -> list[Event]:
        """Recorded events at or after ``since_ns`` (all when None), oldest first."""
        if since_ns is None:
            return list(self._ring)
        return [e for e in self._ring if e.time_nano >= since_ns]

    @contextmanager
    def subscribe(self, since_ns: int | None = None
                  ) -> Iterator[tuple[list[Event], trio.MemoryReceiveChannel[Event]]]:
        """Past events since ``since_ns`` (none when None) and a channel of new ones.

        Both are taken at the same instant, so no event falls between them.
        """
        send, receive = trio.open_memory_channel[Event](SUBSCRIBER_BUFFER)
        past = self.history(since_ns) if since_ns is not None else []
        self._subscribers.add(send)
        try:
            yield past, receive
        finally:
            self._subscribers.discard(send)
            send.close()
            receive.close()


def matches(event: Event, filters: Mapping[str, list[str]]) -> bool:
    """Docker's event filters: each named filter must match one of its values."""
    attrs = event.attributes

    def any_of(name: str, *candidates: str | None) -> bool:
        wanted = filters.get(name)
        if not wanted:
            return True
        return any(c and (c == w or (len(w) >= 3 and c.startswith(w)))
                   for w in wanted for c in candidates)

    if filters.get("type") and event.type not in filters["type"]:
        return False
    if filters.get("event") and not any(
        event.action == w or event.action.split(":")[0] == w for w in filters["event"]
    ):
        return False
    if filters.get("scope") and "local" not in filters["scope"]:
        return False
    by_type = {"container": "container", "image": "image", "volume": "volume",
               "network": "network", "daemon": "daemon", "plugin": "plugin"}
    for name, kind in by_type.items():
        if filters.get(name):
            if event.type != kind and not (name == "image" and event.type == "container"):
                return False
            candidates: tuple[str | None, ...] = (event.actor_id, attrs.get("name"))
            if name == "image" and event.type == "container":
                candidates = (attrs.get("image"),)
            if not any_of(name, *candidates):
                return False
    for want in filters.get("label", []):
        key, eq, value = want.partition("=")
        if key not in attrs or (eq and attrs[key] != value):
            return False
    return True
