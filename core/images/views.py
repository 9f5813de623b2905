"""What the image API shows: ``GET /images/json``, ``/images/{name}/json`` and
``/images/{name}/history`` in Docker's shapes, read from an ``ImageStore``
under its lock so each answer is one consistent view."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog

from skiff.core.errors import InvalidParameter
from skiff.core.images.errors import InvalidImage
from skiff.core.images.filters import list_filters, match_labels
from skiff.core.images.records import ZERO_CONTAINER_CONFIG, Image, go_time, unix, unix_float
from skiff.core.images.reference import Reference, familiar_match, familiar_string

if TYPE_CHECKING:
    from collections.abc import Mapping

    from skiff.core.images.store import ImageStore

log = structlog.get_logger("skiff.images.store")

__all__ = ["image_history", "inspect_image", "list_images"]


def list_images(
    store: ImageStore, all: bool = False, filters: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """``GET /images/json``: summaries, newest first; Docker's filters
    ``dangling``, ``label``, ``before``, ``since``, ``reference``."""
    flt = list_filters(filters)
    dangling_only = False
    if "dangling" in flt:
        values = set(flt["dangling"])
        if values <= {"true", "1"}:
            dangling_only = True
        elif not values <= {"false", "0"}:
            raise InvalidParameter(f"Invalid filter 'dangling={sorted(values)[0]}'")
    before = since = None
    for value in flt.get("before", []):
        before = store.get(value)
    for value in flt.get("since", []):
        since = store.get(value)
    out: list[tuple[float, dict[str, Any]]] = []
    with store.lock:
        refs_of: dict[str, list[Reference]] = {}
        for ref, iid in store.all_references():
            refs_of.setdefault(iid, []).append(ref)
        for image in store.images():
            image_id = image.id
            if dangling_only and store.children(image_id):
                continue
            created = unix_float(image.config.get("created"))
            if before is not None and created >= unix_float(before.config.get("created")):
                continue
            if since is not None and created <= unix_float(since.config.get("created")):
                continue
            if "label" in flt:
                labels = image.labels or {}
                if not labels or not match_labels(flt["label"], labels):
                    continue
            tags: list[str] = []
            digests: list[str] = []
            for ref in sorted(refs_of.get(image_id, []), key=str):
                if "reference" in flt and not any(
                    familiar_match(p, ref) for p in flt["reference"]
                ):
                    continue
                if ref.digest is not None:
                    digests.append(familiar_string(ref))
                if ref.tag is not None:
                    tags.append(familiar_string(ref))
            if not tags and not digests:
                if all or not store.children(image_id):
                    if "dangling" in flt and not dangling_only:
                        continue
                    if "reference" in flt:
                        continue
                    digests, tags = ["<none>@<none>"], ["<none>:<none>"]
                else:
                    continue
            elif dangling_only and tags:
                continue
            size = store.layers.size(image.top_layer)
            out.append((created, {
                "Containers": -1,
                "Created": image.created_unix,
                "Id": image_id,
                "Labels": image.labels,
                "ParentId": image.parent,
                "RepoDigests": digests,
                "RepoTags": tags,
                "SharedSize": -1,
                "Size": size,
                "VirtualSize": size,
            }))
    out.sort(key=lambda x: x[0], reverse=True)
    return [summary for _, summary in out]

def inspect_image(store: ImageStore, name: str) -> dict[str, Any]:
    """``GET /images/{name}/json`` in Docker's shape."""
    with store.lock:
        image = store.get(name)
        cfg = image.config
        comment = cfg.get("comment") or ""
        history = cfg.get("history") or []
        if not comment and history and isinstance(history[-1], dict):
            comment = history[-1].get("comment") or ""
        out: dict[str, Any] = {
            "Id": image.id,
            "RepoTags": store.repo_tags(image.id),
            "RepoDigests": store.repo_digests(image.id),
            "Parent": image.parent,
            "Comment": comment,
            "Created": image.created,
            "Container": cfg.get("container") or "",
            "ContainerConfig": cfg.get("container_config") or dict(ZERO_CONTAINER_CONFIG),
            "DockerVersion": cfg.get("docker_version") or "",
            "Author": cfg.get("author") or "",
            "Config": cfg.get("config"),
            "Architecture": cfg.get("architecture") or "",
        }
        if cfg.get("variant"):
            out["Variant"] = cfg["variant"]
        out["Os"] = cfg.get("os") or "linux"
        if cfg.get("os.version"):
            out["OsVersion"] = cfg["os.version"]
        out["Size"] = image.size
        out["VirtualSize"] = image.size
        graph_data = None
        if image.top_layer is not None:
            try:
                graph_data = store.layers.metadata(image.top_layer)
            except Exception as exc:  # a driver hiccup must not hide the image
                log.warning("image.graphdriver_metadata_failed", id=image.id,
                            error=str(exc))
        out["GraphDriver"] = {"Data": graph_data, "Name": store.driver_name}
        rootfs: dict[str, Any] = {"Type": "layers"}
        if image.diff_ids:
            rootfs["Layers"] = list(image.diff_ids)
        out["RootFS"] = rootfs
        out["Metadata"] = {"LastTagTime": go_time(image.last_updated)}
        return out

def image_history(store: ImageStore, name: str) -> list[dict[str, Any]]:
    """``GET /images/{name}/history``: newest first, Docker's shape."""
    with store.lock:
        image = store.get(name)
        items: list[dict[str, Any]] = []
        layer_index = 0
        for h in image.config.get("history") or []:
            if not isinstance(h, dict):
                continue
            size = 0
            if not h.get("empty_layer"):
                if layer_index >= len(image.chain):
                    raise InvalidImage("too many non-empty layers in History section")
                size = store.layers.get(image.chain[layer_index]).size
                layer_index += 1
            items.insert(0, {
                "Comment": h.get("comment") or "",
                "Created": unix(h.get("created")),
                "CreatedBy": h.get("created_by") or "",
                "Id": "<missing>",
                "Size": size,
                "Tags": None,
            })
        current: Image | None = image
        for item in items:
            if current is None:
                break
            item["Id"] = current.id
            item["Tags"] = store.repo_tags(current.id) or None
            parent = current.parent
            current = store.by_id(parent) if parent else None
            if current is None:
                break
        return items
