"""``docker commit``: a container's read-write layer as a new image.

Moby's ``CreateImageFromContainer`` and ``CommitImage`` (daemon/commit.go,
daemon/images/image_commit.go in 20.10), step for step:

1. the new image's config is the container's config (or the one the client
   sent) with the ``--change`` instructions applied, then ``merge``d with the
   container's config so that what the client left out is inherited;
2. the read-write layer's diff against the container's *init* layer is
   registered on top of the image's layers.  Diffing against the init layer,
   not the image, is what keeps ``/etc/hosts``, ``/etc/hostname``,
   ``/etc/resolv.conf``, ``/.dockerenv`` and the ``/dev``, ``/proc``,
   ``/sys`` mount points out of every committed image: they live in the init
   layer, and the real files are bind mounts whose writes never reach the
   read-write layer.  Volume contents likewise live elsewhere; only the
   mount-point directories the runtime created in the read-write layer show;
3. a history entry is appended (``empty_layer`` when nothing changed, in which
   case no layer is added, as Docker does for an empty tar);
4. the image is stored with the container's image as its parent and tagged.

Everything here blocks; the daemon calls it from a worker thread.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import structlog

from skiff.core import idshift, metrics
from skiff.core.images.archives.formats import host_architecture
from skiff.core.images.dockerfile_changes import apply_changes
from skiff.core.images.errors import InvalidReference
from skiff.core.images.layers import LayerStore
from skiff.core.images.records import encode_config
from skiff.core.images.reference import familiar_string, parse
from skiff.core.images.store import ImageStore
from skiff.core.timefmt import now_rfc3339
from skiff.core.userns import IdMap

log = structlog.get_logger("skiff.images.commit")

__all__ = ["EMPTY_TAR_DIFF_ID", "commit_container", "commit_layer", "commit_metadata",
           "merge_config"]

#: sha256 of a tar holding nothing but its two end blocks (Docker's
#: ``layer.DigestSHA256EmptyTar``): a commit that changed nothing
EMPTY_TAR_DIFF_ID = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"


def merge_config(user: dict[str, Any], container: Mapping[str, Any]) -> dict[str, Any]:
    """Moby's ``merge(userConf, imageConf)``: fill what ``user`` left unset from
    ``container`` (User, ExposedPorts, Env, Labels, Cmd/Entrypoint, WorkingDir,
    Volumes, StopSignal, Healthcheck).  Changes ``user`` in place and returns it."""
    if not user.get("User"):
        user["User"] = container.get("User") or ""
    if not user.get("ExposedPorts"):
        user["ExposedPorts"] = container.get("ExposedPorts")
    elif container.get("ExposedPorts"):
        for port, value in container["ExposedPorts"].items():
            user["ExposedPorts"].setdefault(port, value)
    if not user.get("Env"):
        user["Env"] = container.get("Env")
    else:
        keys = {e.split("=", 1)[0] for e in user["Env"]}
        for item in container.get("Env") or []:
            if item.split("=", 1)[0] not in keys:
                user["Env"].append(item)
    labels = user.get("Labels") or {}
    for key, value in (container.get("Labels") or {}).items():
        labels.setdefault(key, value)
    user["Labels"] = labels
    if not user.get("Entrypoint"):
        if not user.get("Cmd"):
            user["Cmd"] = container.get("Cmd")
            if "ArgsEscaped" in container:
                user["ArgsEscaped"] = container["ArgsEscaped"]
        if user.get("Entrypoint") is None:
            user["Entrypoint"] = container.get("Entrypoint")
    if container.get("Healthcheck") is not None:
        mine = dict(user.get("Healthcheck") or {})
        theirs = container["Healthcheck"]
        if not mine.get("Test"):
            mine["Test"] = theirs.get("Test")
        for key in ("Interval", "Timeout", "StartPeriod", "Retries"):
            if not mine.get(key):
                mine[key] = theirs.get(key)
        user["Healthcheck"] = mine
    if not user.get("WorkingDir"):
        user["WorkingDir"] = container.get("WorkingDir") or ""
    if not user.get("Volumes"):
        user["Volumes"] = container.get("Volumes")
    else:
        user["Volumes"].update(container.get("Volumes") or {})
    if not user.get("StopSignal"):
        if container.get("StopSignal"):
            user["StopSignal"] = container["StopSignal"]
        else:
            user.pop("StopSignal", None)
    return user


def _target(repo: str, tag: str) -> str | None:
    if not repo:
        return None
    ref = parse(repo, default_tag=False)
    if ref.digest is not None:
        raise InvalidReference("refusing to create a tag with a digest reference")
    if tag:
        ref = parse(f"{familiar_string(ref)}:{tag}", default_tag=False)
    return familiar_string(ref.with_default_tag() if ref.tag is None else ref)


@metrics.timed(metrics.container_actions, "commit")
def commit_container(
    layers: LayerStore,
    images: ImageStore,
    *,
    container_id: str,
    mount_id: str,
    init_id: str,
    image_id: str | None,
    container_config: Mapping[str, Any],
    config: Mapping[str, Any] | None = None,
    changes: Sequence[str] = (),
    author: str = "",
    comment: str = "",
    repo: str = "",
    tag: str = "",
    chowned: IdMap | None = None,
) -> str:
    """Make an image of a container's read-write layer; returns the image ID.

    ``mount_id``/``init_id`` are the storage driver's ids of the container's
    read-write and init layers; ``image_id`` is the container's image (the
    new image's parent), None for a container without one.
    ``container_config`` is the container's Config; ``config``, when given,
    replaces it as the base of the new image's config (the request body of
    ``POST /commit``).  Bad ``changes`` or a bad ``repo``/``tag`` are refused
    before any layer is written.  ``chowned``: the container's layers are
    chowned copies for that user-namespace mapping, whose host ids go back
    to container ids in the image.
    """
    # a deep copy: the image keeps the config as it was at commit time
    own_config: dict[str, Any] = json.loads(json.dumps(dict(container_config)))
    base = dict(config) if config is not None else own_config
    new_config = merge_config(apply_changes(base, changes), own_config)
    target = _target(repo, tag)

    created_by = " ".join(own_config.get("Cmd") or [])
    new_id, empty = commit_layer(
        layers, images, container_id=container_id, mount_id=mount_id, init_id=init_id,
        image_id=image_id, config=new_config, container_config=own_config,
        created_by=created_by, author=author, comment=comment, chowned=chowned)
    if target is not None:
        images.tag(new_id, target)
    log.info("image.committed", id=new_id, container=container_id, ref=target,
             empty_layer=empty)
    return new_id


def commit_layer(
    layers: LayerStore,
    images: ImageStore,
    *,
    container_id: str,
    mount_id: str,
    init_id: str,
    image_id: str | None,
    config: Mapping[str, Any],
    container_config: Mapping[str, Any],
    created_by: str,
    author: str = "",
    comment: str = "",
    chowned: IdMap | None = None,
) -> tuple[str, bool]:
    """Store the container's read-write layer (against its init layer) as a new
    image whose config is ``config`` as given (no merge: the builder's steps
    say exactly what the image is), child of ``image_id``.  Returns the new
    image's ID and whether the layer was empty (then no layer is added and
    the history entry says ``empty_layer``)."""
    own_config: dict[str, Any] = json.loads(json.dumps(dict(container_config)))
    new_config: dict[str, Any] = json.loads(json.dumps(dict(config)))
    parent = images.get(image_id) if image_id else None
    parent_cfg: dict[str, Any] = parent.config if parent is not None else {}
    diff_ids = list(parent.diff_ids) if parent is not None else []
    top = parent.top_layer if parent is not None else None

    stream = layers.driver.diff(mount_id, init_id)
    try:
        if chowned is not None:
            source, stream = stream, layers.spooled_owners(stream, idshift.to_container(chowned))
            source.close()
        layer = layers.register(stream, top)
    finally:
        stream.close()
    try:
        empty = layer.diff_id == EMPTY_TAR_DIFF_ID
        if not empty:
            diff_ids.append(layer.diff_id)
        created = now_rfc3339()
        entry: dict[str, Any] = {"created": created}
        if author:
            entry["author"] = author
        if created_by:
            entry["created_by"] = created_by
        if comment:
            entry["comment"] = comment
        if empty:
            entry["empty_layer"] = True
        image_config = _child_config(
            parent_cfg, config=new_config, container_config=own_config,
            container_id=container_id, created=created, entry=entry, diff_ids=diff_ids,
            author=author)
        new_id = images.create(encode_config(image_config),
                               parent=parent.id if parent is not None else None)
    finally:
        # the image holds its own reference now; an empty layer nobody holds goes
        layers.release(layer.chain_id)
    return new_id, empty


def commit_metadata(
    images: ImageStore,
    *,
    image_id: str | None,
    config: Mapping[str, Any],
    container_config: Mapping[str, Any],
    created_by: str,
    author: str = "",
) -> str:
    """A child of ``image_id`` (None: of nothing, a ``FROM scratch`` stage) with
    the same layers and ``config``: a builder step that changes only metadata
    (ENV, LABEL, CMD ...).  Its history entry is ``empty_layer``."""
    parent = images.get(image_id) if image_id else None
    parent_cfg: dict[str, Any] = parent.config if parent is not None else {}
    created = now_rfc3339()
    entry: dict[str, Any] = {"created": created, "created_by": created_by, "empty_layer": True}
    if author:
        entry["author"] = author
    image_config = _child_config(
        parent_cfg, config=config, container_config=container_config, container_id="",
        created=created, entry=entry,
        diff_ids=list(parent.diff_ids) if parent is not None else [], author=author)
    return images.create(encode_config(image_config),
                         parent=parent.id if parent is not None else None)


def _child_config(parent_cfg: Mapping[str, Any], *, config: Mapping[str, Any],
                  container_config: Mapping[str, Any], container_id: str, created: str,
                  entry: dict[str, Any], diff_ids: list[str], author: str) -> dict[str, Any]:
    """The image config of a child of the image whose config is ``parent_cfg``:
    its platform fields and history carried over, ``entry`` appended."""
    image_config: dict[str, Any] = {
        "architecture": parent_cfg.get("architecture") or host_architecture(),
        "config": json.loads(json.dumps(dict(config))),
        "container_config": json.loads(json.dumps(dict(container_config))),
        "created": created,
        "history": [*(parent_cfg.get("history") or []), entry],
        "os": parent_cfg.get("os") or "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    if container_id:
        image_config["container"] = container_id
    if author:
        image_config["author"] = author
    for key in ("variant", "os.version", "os.features"):
        if parent_cfg.get(key):
            image_config[key] = parent_cfg[key]
    return image_config
