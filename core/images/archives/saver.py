"""``docker save``: Docker 25's format, an OCI layout that is also a classic archive.

``oci-layout``, ``index.json`` and ``blobs/sha256/`` next to ``manifest.json``,
``repositories`` and ``<v1 id>/{VERSION,json,layer.tar}``; each layer is stored
once, as ``blobs/sha256/<diffID>``, which ``manifest.json`` names and the legacy
``layer.tar`` links to.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
from collections.abc import Generator, Iterator, Sequence
from typing import IO, Any

from skiff.core import metrics
from skiff.core.archive import ChunkReader
from skiff.core.errors import InvalidParameter
from skiff.core.images.archives.formats import (
    _CHUNK,
    ANNOTATION_CONTAINERD_NAME,
    ANNOTATION_REF_NAME,
    MT_OCI_CONFIG,
    MT_OCI_INDEX,
    MT_OCI_LAYER,
    MT_OCI_MANIFEST,
)
from skiff.core.images.errors import (
    ImageNotFound,
    InvalidImage,
    LayerDigestMismatch,
)
from skiff.core.images.layers import LayerStore, LayerTarStream
from skiff.core.images.records import ZERO_CONTAINER_CONFIG
from skiff.core.images.reference import (
    Reference,
    familiar_name,
    familiar_string,
    is_full_id,
    parse,
)
from skiff.core.images.store import ImageStore


def _header(name: str, size: int = 0, *, mtime: int = 0, kind: bytes = tarfile.REGTYPE,
            linkname: str = "") -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size if kind == tarfile.REGTYPE else 0
    info.type = kind
    info.mode = 0o755 if kind == tarfile.DIRTYPE else (0o777 if kind == tarfile.SYMTYPE
                                                         else 0o644)
    info.mtime = max(mtime, 0)
    info.linkname = linkname
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _file(name: str, data: bytes, mtime: int = 0) -> Iterator[bytes]:
    yield _header(name, len(data), mtime=mtime)
    yield data
    pad = (-len(data)) % 512
    if pad:
        yield bytes(pad)


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def plan_save(names: Sequence[str], image_store: ImageStore) -> dict[str, list[Reference]]:
    """Which images, with which tags: Docker's ``parseNames`` of ``docker save``.

    Image ID -> the tags to record for it.  A bare repository name means every
    tag of it.  Raises ``ImageNotFound``/``InvalidReference`` for a bad name,
    so the API can answer 404 before it starts streaming.
    """
    plan: dict[str, list[Reference]] = {}

    def add(image_id: str, ref: Reference | None) -> None:
        refs = plan.setdefault(image_id, [])
        if ref is not None and ref.tag is not None and ref not in refs:
            refs.append(Reference(ref.domain, ref.path, ref.tag))

    for name in names:
        if is_full_id(name) or re.fullmatch(r"sha256:[a-f0-9]{64}", name):
            add(image_store.resolve(name), None)
            continue
        ref = parse(name, default_tag=False)
        if familiar_name(ref) == "sha256":
            found = image_store.search(name)
            if found is None:
                raise ImageNotFound(name)
            add(found, None)
        elif ref.name_only:
            assocs = image_store.references_by_name(ref)
            for r, image_id in assocs:
                add(image_id, r)
            if not assocs:
                found = image_store.search(name)
                if found is None:
                    raise ImageNotFound(familiar_string(ref.with_default_tag()))
                add(found, None)
        else:
            tagged = image_store.lookup_ref(ref)
            if tagged is None:
                raise ImageNotFound(familiar_string(ref))
            add(tagged, ref)
    return plan


def _v1_id(chain: str, parent: str | None, top_config: bytes | None) -> str:
    """A stable legacy layer-directory ID (Docker's v1.CreateID, in spirit)."""
    doc: dict[str, Any] = {"layer_id": chain}
    if parent:
        doc["parent"] = "sha256:" + parent
    if top_config is not None:
        doc["config"] = hashlib.sha256(top_config).hexdigest()
    return hashlib.sha256(_json_bytes(doc)).hexdigest()


def _save_chunks(
    plan: dict[str, list[Reference]], layer_store: LayerStore, image_store: ImageStore
) -> Generator[bytes, None, None]:
    written: dict[str, int] = {}  # blob hex -> size
    legacy_dirs: set[str] = set()
    manifest_json: list[dict[str, Any]] = []
    index_manifests: list[dict[str, Any]] = []
    repositories: dict[str, dict[str, str]] = {}
    yield _header("blobs/", kind=tarfile.DIRTYPE)
    yield _header("blobs/sha256/", kind=tarfile.DIRTYPE)
    for image_id, refs in plan.items():
        image = image_store.get(image_id)
        config = image_store.config_bytes(image_id)
        mtime = image.created_unix
        cfg_hex = image_id[7:]
        if cfg_hex not in written:
            yield from _file(f"blobs/sha256/{cfg_hex}", config, mtime)
            written[cfg_hex] = len(config)
        layer_descs = []
        layer_paths = []
        v1_parent: str | None = None
        for i, (chain, diff_id) in enumerate(zip(image.chain, image.diff_ids, strict=True)):
            diff_hex = diff_id[7:]
            if diff_hex not in written:
                size = yield from _layer_blob(layer_store, chain, diff_id, mtime)
                written[diff_hex] = size
            layer_descs.append({"mediaType": MT_OCI_LAYER, "digest": diff_id,
                                "size": written[diff_hex]})
            layer_paths.append(f"blobs/sha256/{diff_hex}")
            top = i == len(image.chain) - 1
            v1 = _v1_id(chain, v1_parent, config if top else None)
            if v1 not in legacy_dirs:
                legacy_dirs.add(v1)
                v1_json: dict[str, Any] = {"id": v1}
                if v1_parent:
                    v1_json["parent"] = v1_parent
                if top:
                    cfg = image.config
                    v1_json.update({k: cfg[k] for k in ("created", "architecture", "os",
                                                        "config", "author", "comment")
                                    if cfg.get(k) is not None})
                else:
                    v1_json["created"] = "0001-01-01T00:00:00Z"
                container_config = image.config.get("container_config") if top else None
                v1_json["container_config"] = container_config or dict(ZERO_CONTAINER_CONFIG)
                yield _header(f"{v1}/", kind=tarfile.DIRTYPE, mtime=mtime)
                yield from _file(f"{v1}/VERSION", b"1.0", mtime)
                yield from _file(f"{v1}/json", _json_bytes(v1_json), mtime)
                yield _header(f"{v1}/layer.tar", kind=tarfile.SYMTYPE, mtime=mtime,
                              linkname=f"../blobs/sha256/{diff_hex}")
            v1_parent = v1
        manifest = _json_bytes({
            "schemaVersion": 2,
            "mediaType": MT_OCI_MANIFEST,
            "config": {"mediaType": MT_OCI_CONFIG, "digest": image_id, "size": len(config)},
            "layers": layer_descs,
        })
        manifest_hex = hashlib.sha256(manifest).hexdigest()
        if manifest_hex not in written:
            yield from _file(f"blobs/sha256/{manifest_hex}", manifest, mtime)
            written[manifest_hex] = len(manifest)
        desc = {"mediaType": MT_OCI_MANIFEST, "digest": "sha256:" + manifest_hex,
                "size": len(manifest)}
        if refs:
            for ref in refs:
                index_manifests.append({**desc, "annotations": {
                    ANNOTATION_CONTAINERD_NAME: str(ref),
                    ANNOTATION_REF_NAME: ref.tag,
                }})
                if v1_parent is not None and ref.tag is not None:
                    repositories.setdefault(familiar_name(ref), {})[ref.tag] = v1_parent
        else:
            index_manifests.append(desc)
        manifest_json.append({
            "Config": f"blobs/sha256/{cfg_hex}",
            "RepoTags": [familiar_string(r) for r in refs] or None,
            "Layers": layer_paths,
        })
    yield from _file("index.json", _json_bytes({
        "schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": index_manifests}))
    yield from _file("manifest.json", _json_bytes(manifest_json))
    yield from _file("oci-layout", _json_bytes({"imageLayoutVersion": "1.0.0"}))
    if repositories:
        yield from _file("repositories", _json_bytes(repositories))
    yield bytes(1024)


def _layer_blob(
    layer_store: LayerStore, chain: str, diff_id: str, mtime: int
) -> Generator[bytes, None, int]:  # returns the size through StopIteration
    name = f"blobs/sha256/{diff_id[7:]}"
    with contextlib.ExitStack() as stack:
        stream = stack.enter_context(layer_store.tar_stream(chain))
        source: IO[bytes] | LayerTarStream = stream
        length = stream.length
        if length is None:
            # no record to rebuild the original from: measure (and check) a copy first
            tmp_dir = os.path.join(layer_store.data_root, "tmp")
            os.makedirs(tmp_dir, mode=0o700, exist_ok=True)
            source = stack.enter_context(tempfile.TemporaryFile(dir=tmp_dir))
            sha = hashlib.sha256()
            for data in iter(lambda: stream.read(_CHUNK), b""):
                sha.update(data)
                source.write(data)
            if "sha256:" + sha.hexdigest() != diff_id:
                raise LayerDigestMismatch(diff_id, "sha256:" + sha.hexdigest(),
                                          f"layer {chain} as the storage driver exports it")
            length = source.tell()
            source.seek(0)
        yield _header(name, length, mtime=mtime)
        sent = 0
        for data in iter(lambda: source.read(_CHUNK), b""):
            sent += len(data)
            yield data
        if sent != length:
            raise InvalidImage(f"layer {chain}: expected {length} bytes, produced {sent}")
        pad = (-length) % 512
        if pad:
            yield bytes(pad)
        return length
    raise AssertionError("unreachable")  # pragma: no cover


@metrics.timed(metrics.image_actions, "save")
def save(
    names: Sequence[str],
    layer_store: LayerStore,
    image_store: ImageStore,
    out: IO[bytes] | None = None,
) -> IO[bytes] | None:
    """``docker save``: the named images as one tar (Docker 25's layout).

    Names are resolved first, so an unknown name raises ``ImageNotFound``
    before a byte is produced.  With ``out`` the tar is written there and
    None is returned; without, a readable stream is returned (close it).
    """
    if not names:
        raise InvalidParameter("name at least one image to save")
    plan = plan_save(names, image_store)
    chunks = _save_chunks(plan, layer_store, image_store)
    if out is None:
        return io.BufferedReader(ChunkReader(chunks), _CHUNK)
    try:
        for data in chunks:
            out.write(data)
    finally:
        chunks.close()
    return None
