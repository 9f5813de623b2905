"""``POST /images/prune``, as Moby's ``ImagesPrune``: which images of an
``ImageStore`` go, deleted by the store's own ``delete`` so that Docker's
conflict rules decide what stays."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import structlog

from skiff.core.images.errors import ImageConflict, ImageNotFound, LayerNotFound
from skiff.core.images.filters import match_labels, prune_filters
from skiff.core.images.records import Image, unix_float
from skiff.core.images.reference import familiar_string

if TYPE_CHECKING:
    from collections.abc import Mapping

    from skiff.core.images.delete_rules import ContainerUsers
    from skiff.core.images.store import ImageStore

log = structlog.get_logger("skiff.images.store")

__all__ = ["prune_images"]


def prune_images(
    store: ImageStore,
    filters: Mapping[str, Any] | None = None,
    in_use: ContainerUsers | None = None,
    until: float | None = None,
) -> dict[str, Any]:
    """``POST /images/prune``, as Moby's ``ImagesPrune``.

    By default (``dangling=true``) the images nobody names and no image
    builds on are deleted; with ``dangling=false`` every image no
    container uses.  ``label``/``label!`` filter by label; ``until``
    (seconds since the epoch, parsed by the caller from the ``until``
    filter) keeps images created after it.  An image a container uses is
    skipped (the delete conflicts).  Returns Docker's report:
    ``{"ImagesDeleted": [...] or None, "SpaceReclaimed": bytes}``.
    """
    flt, dangling_only = prune_filters(filters)
    records: list[dict[str, str]] = []
    sizes: dict[str, int] = {}
    with store.lock:
        candidates: list[Image] = []
        for image in store.images():
            image_id = image.id
            has_children = bool(store.children(image_id))
            if dangling_only and has_children:
                continue  # not a head
            if not store.references(image_id) and has_children:
                continue  # an intermediate image: goes with its child
            if until is not None and unix_float(image.config.get("created")) > until:
                continue
            labels = image.labels or {}
            if flt.get("label") and not match_labels(flt["label"], labels):
                continue
            if flt.get("label!") and labels and match_labels(flt["label!"], labels):
                continue
            candidates.append(image)
            for chain in image.chain:
                with contextlib.suppress(LayerNotFound):
                    sizes[chain] = store.layers.get(chain).size
        for image in candidates:
            if not store.exists(image.id):
                continue  # went with an image deleted before it
            refs = store.references(image.id)
            names: list[str]
            if refs:
                if dangling_only and any(r.tag is not None for r in refs):
                    continue
                names = [familiar_string(r) for r in refs]
            else:
                names = [image.id[7:]]
            for name in names:
                try:
                    records.extend(store.delete(name, False, True, in_use))
                except (ImageConflict, ImageNotFound):
                    continue
                except Exception as exc:  # one bad image must not stop the prune
                    log.warning("image.prune_failed", image=name, error=str(exc))
    reclaimed = sum(sizes.get(r.get("Deleted", ""), 0) for r in records)
    log.info("image.pruned", images=sum(1 for r in records if "Deleted" in r),
             reclaimed=reclaimed)
    return {"ImagesDeleted": records or None, "SpaceReclaimed": reclaimed}
