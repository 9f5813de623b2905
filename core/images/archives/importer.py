"""``docker import``: a one-layer image from a root filesystem tar, with
``--change`` instructions applied to its config."""

from __future__ import annotations

from collections.abc import Sequence
from typing import IO

import structlog

from skiff.core import metrics
from skiff.core.images.archives.formats import host_architecture
from skiff.core.images.dockerfile_changes import apply_changes
from skiff.core.images.errors import (
    InvalidReference,
)
from skiff.core.images.layers import LayerStore
from skiff.core.images.records import ZERO_CONTAINER_CONFIG, encode_config
from skiff.core.images.reference import (
    familiar_string,
    parse,
)
from skiff.core.images.store import ImageStore
from skiff.core.timefmt import now_rfc3339

log = structlog.get_logger("skiff.images.archives")


@metrics.timed(metrics.image_actions, "import")
def import_tarball(
    stream: IO[bytes],
    layer_store: LayerStore,
    image_store: ImageStore,
    repo_tag: str | None = None,
    changes: Sequence[str] = (),
    message: str = "",
    *,
    src: str = "-",
) -> str:
    """``docker import``: a one-layer image from a root filesystem tar.

    ``repo_tag`` is ``name[:tag]`` (tag defaults to ``latest``); ``changes``
    are Dockerfile instructions for the config; ``message`` becomes the
    image's comment (default ``Imported from -``).  Returns the image ID.
    """
    ref = None
    if repo_tag:
        ref = parse(repo_tag)
        if ref.digest is not None:
            raise InvalidReference("cannot import with a digest reference")
    config = apply_changes(dict(ZERO_CONTAINER_CONFIG), changes)  # refuse bad input first
    layer = layer_store.register(stream, None)
    try:
        created = now_rfc3339()
        comment = message or f"Imported from {src}"
        image_config = {
            "architecture": host_architecture(),
            "comment": comment,
            "config": config,
            "created": created,
            "history": [{"created": created, "comment": comment}],
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
        }
        image_id = image_store.create(encode_config(image_config))
    finally:
        layer_store.release(layer.chain_id)
    if ref is not None:
        image_store.tag(image_id, ref)
    log.info("image.imported", id=image_id, ref=familiar_string(ref) if ref else None)
    return image_id
