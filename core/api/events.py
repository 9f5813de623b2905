"""``GET /events``: the event stream of ``docker events``."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import trio

from skiff.core.api.filters import parse_filters
from skiff.core.api.router import Request, Router, StreamResponse, json_bytes
from skiff.core.errors import InvalidParameter
from skiff.core.events import matches
from skiff.core.timefmt import parse_time_param

if TYPE_CHECKING:
    from skiff.core.engine import Engine

EVENT_FILTERS = {"config", "container", "daemon", "event", "image", "label", "network",
                 "node", "plugin", "scope", "secret", "service", "type", "volume"}


def _time_ns(req: Request, name: str) -> int | None:
    raw = req.q(name)
    if raw in (None, ""):
        return None
    try:
        return int(parse_time_param(raw) * 1_000_000_000)
    except ValueError as exc:
        raise InvalidParameter(
            f"invalid {name} value {raw!r}: give Unix seconds or an RFC 3339 time"
        ) from exc


def register(router: Router, engine: Engine) -> None:
    bus = engine.events

    @router.route("GET", "/events")
    async def events(req: Request) -> StreamResponse:
        filters = parse_filters(req.q("filters"), EVENT_FILTERS)
        since = _time_ns(req, "since")
        until = _time_ns(req, "until")
        if since is not None and until is not None and until < since:
            raise InvalidParameter("until must not be before since")

        async def body() -> AsyncIterator[bytes]:
            with bus.subscribe(since) as (past, live):
                for event in past:
                    if until is not None and event.time_nano > until:
                        return
                    if matches(event, filters):
                        yield json_bytes(event.to_json())
                if until is not None and until <= time.time_ns():
                    return
                deadline = (trio.current_time() + (until - time.time_ns()) / 1e9
                            if until is not None else float("inf"))
                with trio.move_on_at(deadline):
                    async for event in live:
                        if matches(event, filters):
                            yield json_bytes(event.to_json())

        return StreamResponse(body(), content_type="application/json")
