"""The build cache as ``docker system df`` shows it and ``/build/prune`` empties it.

The cache's entries point at the intermediate images the builder stored
(dockerd's classic builder keeps them too, as untagged parents).  An entry's
size is its step's own layer; it is *shared* while a tagged image is built on
it (pruning the cache frees nothing of it then).  Pruning drops the entries
and deletes the intermediate images nothing else holds: untagged, no child,
no container; Docker's image delete rules decide, so a tagged image or its
parents are never touched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from skiff.core.builder.cache import BuildCache, CacheEntry
from skiff.core.errors import SkiffError
from skiff.core.images.layers import LayerStore
from skiff.core.images.store import ImageStore
from skiff.core.timefmt import rfc3339_nano_trimmed

log = structlog.get_logger("skiff.builder.prune")

__all__ = ["cache_usage", "prune_cache"]


def _own_layer(images: ImageStore, layers: LayerStore, image_id: str) -> tuple[str | None, int]:
    """The layer an image adds over its parent, and its size (None, 0: none)."""
    image = images.by_id(image_id)
    if image is None or image.top_layer is None:
        return None, 0
    parent = images.by_id(image.parent) if image.parent else None
    if parent is not None and parent.top_layer == image.top_layer:
        return None, 0
    below = parent.top_layer if parent is not None else None
    return image.top_layer, layers.size(image.top_layer) - layers.size(below)


def _kept_by_tags(images: ImageStore) -> set[str]:
    """Every tagged image and all its ancestors."""
    kept: set[str] = set()
    for _, image_id in images.all_references():
        current: str | None = image_id
        while current and current not in kept:
            kept.add(current)
            image = images.by_id(current)
            current = image.parent if image is not None else None
    return kept


def cache_usage(cache: BuildCache, images: ImageStore, layers: LayerStore) -> list[dict[str, Any]]:
    """``/system/df``'s ``BuildCache``: one record per cached step."""
    kept = _kept_by_tags(images)
    out = []
    for entry in cache.entries():
        _, size = _own_layer(images, layers, entry.image_id)
        out.append({
            "ID": entry.key[:25], "Parent": "", "Type": "regular",
            "Description": entry.description, "InUse": False,
            "Shared": entry.image_id in kept, "Size": size,
            "CreatedAt": rfc3339_nano_trimmed(int(entry.created * 1e9)),
            "LastUsedAt": rfc3339_nano_trimmed(int(entry.last_used * 1e9)),
            "UsageCount": entry.usage,
        })
    return out


def prune_cache(cache: BuildCache, images: ImageStore, layers: LayerStore,
                in_use: Callable[[str], Any], *, until: float | None = None
                ) -> dict[str, Any]:
    """``POST /build/prune``: drop the entries (last used before ``until`` if
    given) and delete the images only they held; Docker's answer."""
    entries: list[CacheEntry] = [e for e in cache.entries()
                                 if until is None or e.last_used < until]
    cache.drop([e.key for e in entries])
    cache.save()
    held = {e.image_id for e in cache.entries()}
    reclaimed = 0
    # newest first: a child goes before its parent, which may then go too
    for entry in sorted(entries, key=lambda e: e.created, reverse=True):
        if entry.image_id in held or images.by_id(entry.image_id) is None:
            continue
        if images.references(entry.image_id) or images.children(entry.image_id):
            continue
        layer, size = _own_layer(images, layers, entry.image_id)
        try:
            images.delete(entry.image_id, prune=False, in_use=in_use)
        except SkiffError as exc:  # used by a container: it stays, the entry goes
            log.info("builder.prune_kept", image=entry.image_id, reason=str(exc))
            continue
        if layer is not None and not layers.exists(layer):
            reclaimed += size
    return {"CachesDeleted": [e.key[:25] for e in entries] or None,
            "SpaceReclaimed": reclaimed}
