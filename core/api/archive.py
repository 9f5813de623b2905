"""``docker cp``: ``HEAD|GET|PUT /containers/{id}/archive`` (Docker's archive API).

The file work, and why it cannot leave the container's root, is in
:mod:`skiff.core.containers.archive`.  ``HEAD`` answers only the
``X-Docker-Container-Path-Stat`` header; ``GET`` streams a tar with the same
header; ``PUT`` unpacks the request body (a tar) into a directory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import IO, TYPE_CHECKING

import structlog
import trio

from skiff.core.api.bridge import feed_sync_consumer, stream_sync_producer
from skiff.core.api.router import Request, Response, Router, StreamResponse
from skiff.core.containers import archive as cp
from skiff.core.containers.model import Container
from skiff.core.errors import Conflict, InvalidParameter

if TYPE_CHECKING:
    from skiff.core.engine import Engine

log = structlog.get_logger("skiff.api.archive")


def _path(req: Request) -> str:
    path = req.q("path")
    if not path:
        raise InvalidParameter("the path query parameter is required")
    return path


def _usable(c: Container) -> None:
    if c.state.Status == "removing":
        raise Conflict(f"container {c.id} is being removed")


class _Held:
    """A GET archive body that lets go of the resolved path even if it is never
    read (the client went away before the first chunk)."""

    def __init__(self, body: AsyncIterator[bytes], opened: cp.OpenedPath,
                 engine: Engine) -> None:
        self._body = body
        self._opened = opened
        self._engine = engine

    def __aiter__(self) -> _Held:
        return self

    async def __anext__(self) -> bytes:
        return await self._body.__anext__()

    async def aclose(self) -> None:
        try:
            # the body is an async generator; AsyncIterator does not promise aclose
            await self._body.aclose()  # type: ignore[attr-defined]
        finally:
            # a no-op once the producer has taken it (it releases it itself);
            # shielded: a disconnect cancels us, and the mounts must still go
            with trio.CancelScope(shield=True):
                await self._engine.to_thread(self._opened.discard)


def register(router: Router, engine: Engine) -> None:
    mgr = engine.containers

    @router.route("HEAD", "/containers/{id}/archive")
    async def stat(req: Request, id: str) -> Response:
        c = mgr.get(id)
        _usable(c)
        found = await engine.to_thread(cp.stat_path, engine.container_files, c, _path(req))
        return Response(200, b"", None, headers=[(cp.STAT_HEADER, found.header())])

    @router.route("GET", "/containers/{id}/archive")
    async def get(req: Request, id: str) -> StreamResponse:
        c = mgr.get(id)
        _usable(c)
        path = _path(req)
        # resolved once, before the response: a missing path is a 404 before any
        # tar byte goes out, and the tar is read through what was resolved
        opened = await engine.to_thread(cp.open_path, engine.container_files, c, path)
        mgr.event(c, "archive-path")
        log.info("container.archive_path", id=c.id, path=path)
        body = stream_sync_producer(opened.write_tar, engine.transfers, engine.nursery)
        return StreamResponse(_Held(body, opened, engine),
                              content_type="application/x-tar",
                              headers=[(cp.STAT_HEADER, opened.stat.header())])

    @router.route("PUT", "/containers/{id}/archive")
    async def put(req: Request, id: str) -> None:
        c = mgr.get(id)
        _usable(c)
        path = _path(req)
        no_overwrite = req.qbool("noOverwriteDirNonDir")
        copy_ids = req.qbool("copyUIDGID")

        def consume(stream: IO[bytes]) -> None:
            cp.extract_to_dir(engine.container_files, c, path, stream,
                              no_overwrite_dir_non_dir=no_overwrite, copy_uid_gid=copy_ids)

        await feed_sync_consumer(req.body_stream(), consume, engine.transfers)
        mgr.event(c, "extract-to-dir")
        log.info("container.extract_to_dir", id=c.id, path=path)
