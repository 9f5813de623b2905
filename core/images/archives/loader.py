"""``docker load``: classic ``docker save`` archives and OCI image layouts.

The archive is read once, front to back, because it arrives as a request
body; members are spooled to a temporary directory under ``<data-root>/tmp``
(never memory), since ``manifest.json`` may well come last.  Every layer is
checked against the ``rootfs.diff_ids`` of its image config while it is
unpacked, and images and tags are only created once every layer of every
image in the archive is in: a corrupt archive leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import posixpath
import re
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

import structlog

from skiff.core import metrics
from skiff.core.images.archives.formats import (
    _CHUNK,
    _INDEX_TYPES,
    _META_MAX,
    ANNOTATION_CONTAINERD_NAME,
    ANNOTATION_REF_NAME,
    host_architecture,
)
from skiff.core.images.errors import (
    ImageNotFound,
    InvalidImage,
    InvalidReference,
    LayerDigestMismatch,
)
from skiff.core.images.layers import LayerStore, chain_id
from skiff.core.images.records import parse_config
from skiff.core.images.reference import (
    Reference,
    familiar_string,
    parse,
    parse_digest,
)
from skiff.core.images.store import ImageStore
from skiff.core.tarlimits import open_stream

log = structlog.get_logger("skiff.images.archives")


def _clean(name: str) -> str:
    """An archive member name as a relative path that cannot climb out."""
    return posixpath.normpath("/" + name).lstrip("/")


class _Spool:
    """Archive members on disk, by name; links resolved inside the archive."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.files: dict[str, str] = {}
        self.links: dict[str, str] = {}  # name -> archive path it points at
        self._n = 0

    def add(self, name: str, src: IO[bytes]) -> None:
        self._n += 1
        path = os.path.join(self.root, f"m{self._n}")
        with open(path, "wb") as out:
            shutil.copyfileobj(src, out, _CHUNK)
        self.files[name] = path
        self.links.pop(name, None)

    def link(self, name: str, target: str) -> None:
        self.links[name] = target
        self.files.pop(name, None)

    def resolve(self, name: str) -> str | None:
        name = _clean(name)
        for _ in range(41):
            if name in self.files:
                return self.files[name]
            # a link may sit on any parent directory (old saves link whole layer dirs)
            parts = name.split("/")
            for i in range(len(parts), 0, -1):
                head = "/".join(parts[:i])
                if head in self.links:
                    name = _clean(posixpath.join(self.links[head], *parts[i:]))
                    break
            else:
                return None
        raise InvalidImage(f"invalid archive: too many levels of links at {name}")

    def read(self, name: str, what: str) -> bytes:
        path = self.resolve(name)
        if path is None:
            raise InvalidImage(f"invalid archive: {what} {name} is missing")
        if os.path.getsize(path) > _META_MAX:
            raise InvalidImage(f"invalid archive: {what} {name} is too large")
        with open(path, "rb") as f:
            return f.read()

    def json(self, name: str, what: str) -> Any:
        try:
            return json.loads(self.read(name, what))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise InvalidImage(f"invalid archive: {what} {name} is not valid JSON: {exc}") from exc


@dataclass
class _Entry:
    """One image to load: where its parts are in the spool."""

    config: bytes
    layers: list[str]
    tags: list[Reference] = field(default_factory=list)
    parent: str | None = None
    what: str = ""


def _spool_archive(stream: IO[bytes], spool: _Spool) -> None:
    try:
        with open_stream(stream) as tar:
            for member in tar:
                tar.members.clear()  # type: ignore[attr-defined]  # typeshed lacks TarFile.members  # tarfile keeps every member otherwise
                name = _clean(member.name)
                if not name:
                    continue
                if member.isreg():
                    src = tar.extractfile(member)
                    if src is not None:
                        spool.add(name, src)
                elif member.issym():
                    base = "" if member.linkname.startswith("/") else posixpath.dirname(name)
                    spool.link(name, _clean(posixpath.join(base, member.linkname)))
                elif member.islnk():
                    spool.link(name, _clean(member.linkname))
    except (tarfile.TarError, EOFError) as exc:
        raise InvalidImage(f"{TAR_FAILED}: {go_tar_reason(exc)}") from exc


#: dockerd's words for a load whose archive does not read (scripts look for them)
TAR_FAILED = "Error processing tar file(exit status 1)"


def go_tar_reason(exc: BaseException) -> str:
    """Python's tarfile complaint in the words of Go's archive/tar, which dockerd
    reports: a damaged header, or input that ends too soon."""
    text = str(exc)
    if isinstance(exc, EOFError) or text in ("truncated header", "empty file",
                                             "unexpected end of data"):
        return "unexpected EOF"
    if text in ("invalid header", "bad checksum", "end of file header"):
        return "archive/tar: invalid tar header"
    return text  # skiff's own limits (tarlimits) say what they refused


def _parse_tags(tags: Any, what: str) -> list[Reference]:
    if tags is None:
        return []
    if not isinstance(tags, list):
        raise InvalidImage(f"invalid archive: RepoTags of {what} must be a list")
    out = []
    for t in tags:
        if not isinstance(t, str):
            raise InvalidImage(f"invalid tag {t!r}")
        ref = parse(t, default_tag=False)
        if ref.tag is None or ref.digest is not None:
            raise InvalidImage(f'invalid tag "{t}"')
        out.append(ref)
    return out


def _docker_entries(spool: _Spool) -> list[_Entry]:
    manifest = spool.json("manifest.json", "manifest")
    if not isinstance(manifest, list):
        raise InvalidImage("invalid archive: manifest.json must be a list")
    entries = []
    for i, item in enumerate(manifest):
        if not isinstance(item, dict) or not isinstance(item.get("Config"), str):
            raise InvalidImage(f"invalid archive: manifest.json entry {i} has no Config")
        layers = item.get("Layers") or []
        if not isinstance(layers, list) or not all(isinstance(p, str) for p in layers):
            raise InvalidImage(f"invalid archive: Layers of manifest.json entry {i}")
        what = item["Config"]
        entries.append(_Entry(
            config=spool.read(item["Config"], "image config"),
            layers=list(layers),
            tags=_parse_tags(item.get("RepoTags"), what),
            parent=item.get("Parent") if isinstance(item.get("Parent"), str) else None,
            what=what,
        ))
    return entries


def _blob_path(desc: Any, what: str) -> str:
    if not isinstance(desc, dict) or not isinstance(desc.get("digest"), str):
        raise InvalidImage(f"invalid archive: {what} has no digest")
    try:
        digest = parse_digest(desc["digest"])
    except InvalidReference as exc:
        raise InvalidImage(f"invalid archive: {what} digest {desc['digest']!r}: {exc}") from None
    alg, _, hexpart = digest.partition(":")
    return f"blobs/{alg}/{hexpart}"


def _read_blob(spool: _Spool, desc: Any, what: str) -> bytes:
    """A small blob (manifest, config), checked against its descriptor's digest."""
    path = _blob_path(desc, what)
    data = spool.read(path, what)
    alg, _, hexpart = desc["digest"].partition(":")
    if alg in ("sha256", "sha384", "sha512"):
        actual = hashlib.new(alg, data).hexdigest()
        if actual != hexpart:
            raise LayerDigestMismatch(desc["digest"], f"{alg}:{actual}", what)
    return data


def _platform_score(desc: dict[str, Any]) -> int:
    plat = desc.get("platform") or {}
    if plat.get("os", "linux") != "linux":
        return 0
    if plat.get("architecture") == host_architecture():
        return 2
    return 1 if not plat.get("architecture") else 0


def _manifest_of(spool: _Spool, desc: dict[str, Any], depth: int = 0) -> dict[str, Any]:
    """The image manifest a descriptor leads to, picking this host's platform in an index."""
    if depth > 4:
        raise InvalidImage("invalid archive: image indexes nested too deeply")
    try:
        data = json.loads(_read_blob(spool, desc, "manifest"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidImage(f"invalid archive: manifest {desc.get('digest')} is not JSON") from exc
    media = desc.get("mediaType") or data.get("mediaType")
    if media in _INDEX_TYPES or (media is None and "manifests" in data):
        candidates = [d for d in data.get("manifests") or [] if isinstance(d, dict)]
        if not candidates:
            raise InvalidImage(f"invalid archive: index {desc.get('digest')} is empty")
        best = max(candidates, key=_platform_score)
        if _platform_score(best) == 0:
            raise InvalidImage(
                f"the archive has no image for linux/{host_architecture()} "
                f"(index {desc.get('digest')})"
            )
        return _manifest_of(spool, best, depth + 1)
    if not isinstance(data.get("config"), dict):
        raise InvalidImage(f"invalid archive: manifest {desc.get('digest')} has no config")
    return data


def _oci_names(desc: dict[str, Any]) -> list[Reference]:
    notes = desc.get("annotations") or {}
    candidates = [notes.get(ANNOTATION_CONTAINERD_NAME), notes.get(ANNOTATION_REF_NAME)]
    for name in candidates:
        # a bare tag ("latest") names no repository: nothing to tag with
        if not isinstance(name, str) or not re.search(r"[:/@]", name):
            continue
        try:
            ref = parse(name, default_tag=False)
        except InvalidReference:
            continue
        if ref.tag is not None and ref.digest is None:
            return [ref]
    return []


def _oci_entries(spool: _Spool) -> list[_Entry]:
    index = spool.json("index.json", "index")
    if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
        raise InvalidImage("invalid archive: index.json has no manifests")
    by_config: dict[bytes, _Entry] = {}
    for desc in index["manifests"]:
        if not isinstance(desc, dict):
            continue
        manifest = _manifest_of(spool, desc)
        config = _read_blob(spool, manifest["config"], "image config")
        layers = [_blob_path(d, "layer") for d in manifest.get("layers") or []]
        entry = by_config.get(config)
        if entry is None:
            entry = by_config[config] = _Entry(config=config, layers=layers,
                                               what=str(desc.get("digest")))
        for ref in _oci_names(desc):
            if ref not in entry.tags:
                entry.tags.append(ref)
    return list(by_config.values())


@metrics.timed(metrics.image_actions, "load")
def load(
    stream: IO[bytes],
    layer_store: LayerStore,
    image_store: ImageStore,
    *,
    tmp_root: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[str]:
    """``docker load``: every image in a ``docker save`` archive or OCI layout.

    ``stream`` is read once, sequentially (it may be gzip, bzip2 or xz).
    Returns Docker's messages (``Loaded image: busybox:latest``, or ``Loaded
    image ID: sha256:...`` for an image without tags); ``progress`` receives
    them too, as they happen.  A layer whose content does not match the
    config's diff_ids raises ``LayerDigestMismatch`` and nothing is loaded.
    """
    tmp_root = tmp_root or os.path.join(layer_store.data_root, "tmp")
    os.makedirs(tmp_root, mode=0o700, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="load-", dir=tmp_root)
    messages: list[str] = []

    def say(msg: str) -> None:
        messages.append(msg)
        if progress is not None:
            progress(msg)

    held: list[str] = []
    try:
        spool = _Spool(workdir)
        _spool_archive(stream, spool)
        if spool.resolve("manifest.json") is not None:
            entries = _docker_entries(spool)
        elif spool.resolve("index.json") is not None:
            entries = _oci_entries(spool)
        else:
            raise InvalidImage(
                "invalid archive: neither manifest.json (docker save) nor index.json "
                "(OCI image layout) found; is this an image archive? (a root filesystem "
                "tar is imported with `docker import`)"
            )
        # 1. every layer of every image, each held until its image holds it
        parsed: list[tuple[_Entry, list[str]]] = []
        for entry in entries:
            _, diff_ids = parse_config(entry.config)
            if len(diff_ids) != len(entry.layers):
                raise InvalidImage(
                    f"invalid manifest, layers length mismatch: expected {len(diff_ids)}, "
                    f"got {len(entry.layers)}"
                )
            parsed.append((entry, diff_ids))
        for entry, diff_ids in parsed:
            parent: str | None = None
            for path, diff_id in zip(entry.layers, diff_ids, strict=True):
                if layer_store.exists(chain_id(parent, diff_id)):
                    layer = layer_store.register(io.BytesIO(), parent, diff_id)
                else:
                    local = spool.resolve(path)
                    if local is None:
                        raise InvalidImage(f"invalid archive: layer {path} is missing")
                    with open(local, "rb") as f:
                        try:
                            layer = layer_store.register(f, parent, diff_id)
                        except LayerDigestMismatch as exc:
                            raise LayerDigestMismatch(exc.expected, exc.actual,
                                                      f"layer {path}") from None
                held.append(layer.chain_id)
                parent = layer.chain_id
        # 2. the images, their parents and tags
        for entry, _ in parsed:
            image_id = image_store.create(entry.config)
            if entry.parent and image_store.exists(entry.parent):
                with contextlib.suppress(ImageNotFound):
                    image_store.set_parent(image_id, entry.parent)
            if not entry.tags:
                say(f"Loaded image ID: {image_id}")
            for ref in entry.tags:
                previous = image_store.lookup_ref(ref)
                if previous is not None and previous != image_id:
                    say(f"The image {familiar_string(ref)} already exists, renaming the old "
                        f"one with ID {previous} to empty string")
                image_store.tag(image_id, ref, touch=False)
                say(f"Loaded image: {familiar_string(ref)}")
            log.info("image.loaded", id=image_id, tags=[familiar_string(r) for r in entry.tags])
    finally:
        for chain in reversed(held):
            layer_store.release(chain)
        shutil.rmtree(workdir, ignore_errors=True)
    return messages
