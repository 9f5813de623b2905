"""Image endpoints: list, inspect, history, tag, remove, import, load, save."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import IO, TYPE_CHECKING, Any

from skiff.core import metrics
from skiff.core.api.bridge import feed_sync_consumer, stream_sync_producer
from skiff.core.api.filters import parse_filters
from skiff.core.api.router import Request, Router, StreamResponse
from skiff.core.api.streams import json_line
from skiff.core.errors import InvalidParameter
from skiff.core.images import archives
from skiff.core.images.reference import familiar_string

if TYPE_CHECKING:
    from skiff.core.engine import Engine


def register(router: Router, engine: Engine) -> None:
    images = engine.images

    def in_use(image_id: str) -> list[tuple[str, bool]]:
        # running users too: even `rmi -f` must not delete an image under a running container
        return [(c.id, bool(c.state.Running)) for c in engine.containers.using_image(image_id)]

    @router.route("GET", "/images/json")
    async def list_images(req: Request) -> list[dict[str, Any]]:
        filters = parse_filters(req.q("filters"))
        return await engine.to_thread(images.list, req.qbool("all"), filters)

    @router.route("GET", "/images/{name:path}/json")
    async def inspect(req: Request, name: str) -> dict[str, Any]:
        return await engine.to_thread(images.inspect, name)

    @router.route("GET", "/images/{name:path}/history")
    async def history(req: Request, name: str) -> list[dict[str, Any]]:
        return await engine.to_thread(images.history, name)

    @router.route("POST", "/images/{name:path}/tag")
    async def tag(req: Request, name: str) -> Any:
        repo = req.q("repo", "")
        if not repo:
            raise InvalidParameter("repository name must have at least one component")
        target = repo + (":" + req.q("tag") if req.q("tag") else "")
        # resolved once: a name untagged meanwhile must not turn a tag made
        # into a 404 (found by tests/chaos.py)
        image_id = images.resolve(name)
        with metrics.image_actions.time("tag"):
            new_ref = await engine.to_thread(images.tag, image_id, target)
        image_event(engine, "tag", image_id, familiar_string(new_ref))
        return _created()

    @router.route("DELETE", "/images/{name:path}")
    async def remove(req: Request, name: str) -> list[dict[str, str]]:
        force = req.qbool("force")
        prune = not req.qbool("noprune")
        image_id = images.resolve(name)
        known = set(images.ids())
        records = await engine.to_thread(images.delete, name, force, prune, in_use)
        for r in records:
            if "Untagged" in r:
                image_event(engine, "untag", image_id, image_id)
            elif r.get("Deleted") in known:
                image_event(engine, "delete", r["Deleted"], r["Deleted"])
        return records

    @router.route("POST", "/images/create")
    async def create(req: Request) -> Any:
        src = req.q("fromSrc")
        if src == "-":
            repo = req.q("repo", "")
            tag = req.q("tag", "")
            ref = (repo + (":" + tag if tag else "")) if repo else None
            changes = req.query.get("changes", [])
            message = req.q("message", "")

            def consume(stream: IO[bytes]) -> str:
                return archives.import_tarball(stream, engine.layers, images, ref, changes,
                                               message)

            image_id = await feed_sync_consumer(req.body_stream(), consume, engine.transfers)
            image_event(engine, "import", image_id, image_id)
            return StreamResponse(_one(json_line({"status": image_id})))
        if src:
            raise InvalidParameter(
                f"importing from a URL ({src}) is not supported: pipe the tarball to stdin "
                "(docker import - ) instead"
            )
        from skiff.core.api.distribution import pull_response

        return await pull_response(req, engine, req.q("fromImage", ""), req.q("tag", ""))

    @router.route("POST", "/images/load")
    async def load(req: Request) -> StreamResponse:
        quiet = req.qbool("quiet")

        def consume(stream: IO[bytes]) -> list[str]:
            return archives.load(stream, engine.layers, images)

        messages = await feed_sync_consumer(req.body_stream(), consume, engine.transfers)
        for m in messages:
            loaded = m.partition(": ")[2].strip()
            if m.startswith("Loaded image") and loaded:
                with contextlib.suppress(Exception):
                    image_event(engine, "load", images.resolve(loaded), loaded)
        lines = b"".join(json_line({"stream": m + "\n"}) for m in messages)
        return StreamResponse(_one(b"" if quiet and not messages else lines))

    @router.route("GET", "/images/get")
    async def save_many(req: Request) -> StreamResponse:
        names = req.query.get("names", [])
        if not names:
            raise InvalidParameter("name at least one image to save (?names=...)")
        return await _save(names)

    @router.route("GET", "/images/{name:path}/get")
    async def save_one(req: Request, name: str) -> StreamResponse:
        return await _save([name])

    async def _save(names: list[str]) -> StreamResponse:
        for n in names:  # refuse before any byte is sent: a 404 instead of a broken tar
            await engine.to_thread(images.get, n)
        saved = [images.resolve(n) for n in names]

        def produce(out: IO[bytes]) -> None:
            archives.save(names, engine.layers, images, out)

        async def body() -> AsyncIterator[bytes]:
            async for chunk in stream_sync_producer(produce, engine.transfers, engine.nursery):
                yield chunk
            # Docker announces "save" once the archive is written: an aborted or failed
            # export (the producer raises) must not be reported as saved.
            for image_id in saved:
                image_event(engine, "save", image_id, image_id)

        return StreamResponse(body(), content_type="application/x-tar")




def image_event(engine: Engine, action: str, image_id: str, name: str) -> None:
    """Publish an image event as Docker does: the image's labels and ``name``."""
    attrs: dict[str, str] = {}
    with contextlib.suppress(Exception):
        attrs.update({str(k): str(v) for k, v in (engine.images.get(image_id).labels or {}
                                                  ).items()})
    attrs["name"] = name
    engine.events.publish("image", action, image_id, attrs)


async def _one(data: bytes) -> AsyncIterator[bytes]:
    if data:
        yield data


def _created() -> Any:
    from skiff.core.api.router import Response

    return Response(201, b"", "text/plain")
