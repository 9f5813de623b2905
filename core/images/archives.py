"""Image archives: ``docker load``, ``docker save`` and ``docker import``.

``load`` reads what ``docker save`` writes (``manifest.json`` + configs + layer
tars, in either the old ``<id>/layer.tar`` or the newer ``blobs/sha256/``
placement) and OCI image layouts (``index.json`` + ``blobs/``).  The archive
is read once, front to back, because it arrives as a request body; members are
spooled to a temporary directory under ``<data-root>/tmp`` (never memory),
since ``manifest.json`` may well come last.  Every layer is checked against the
``rootfs.diff_ids`` of its image config while it is unpacked, and images and
tags are only created once every layer of every image in the archive is in: a
corrupt archive leaves nothing behind.

``save`` writes Docker 25's format: an OCI layout (``oci-layout``,
``index.json``, ``blobs/sha256/``) that is also a classic ``docker save``
archive (``manifest.json``, ``repositories``, ``<v1 id>/{VERSION,json,
layer.tar}``); each layer is stored once, as ``blobs/sha256/<diffID>``, which
``manifest.json`` names and the legacy ``layer.tar`` links to.

``import_tarball`` makes a one-layer image from a root filesystem tar, with
``--change`` Dockerfile instructions applied to its config.

Everything here is synchronous and blocking; the daemon runs it in a worker
thread and bridges the HTTP body to a file-like object.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import platform
import posixpath
import re
import shutil
import signal
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import structlog

from skiff.core.archive import ChunkReader
from skiff.core.errors import InvalidParameter
from skiff.core.images.errors import (
    ImageNotFound,
    InvalidImage,
    InvalidReference,
    LayerDigestMismatch,
)
from skiff.core.images.layers import LayerStore, chain_id
from skiff.core.images.records import ZERO_CONTAINER_CONFIG, encode_config, parse_config
from skiff.core.images.reference import (
    Reference,
    familiar_name,
    familiar_string,
    is_full_id,
    parse,
    parse_digest,
)
from skiff.core.images.store import ImageStore
from skiff.core.tarlimits import open_stream

log = structlog.get_logger("skiff.images.archives")

__all__ = ["apply_changes", "host_architecture", "import_tarball", "load", "plan_save", "save"]

_CHUNK = 1 << 20
_META_MAX = 64 << 20  # a manifest, index or config larger than this is not one

MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
_INDEX_TYPES = (MT_OCI_INDEX, MT_DOCKER_LIST)
_MANIFEST_TYPES = (MT_OCI_MANIFEST, MT_DOCKER_MANIFEST)

ANNOTATION_CONTAINERD_NAME = "io.containerd.image.name"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"


def host_architecture() -> str:
    """The host's CPU architecture in Go's (and so OCI's) spelling."""
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
            "i386": "386", "i686": "386", "armv7l": "arm", "ppc64le": "ppc64le",
            "s390x": "s390x", "riscv64": "riscv64"}.get(machine, machine)


def _now_rfc3339() -> str:
    t = time.time()
    ns = int((t - int(t)) * 1e9)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{ns:09d}Z"


# ---------------------------------------------------------------------------
# load
# ---------------------------------------------------------------------------


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
                tar.members.clear()  # tarfile keeps every member otherwise
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
    except tarfile.TarError as exc:
        raise InvalidImage(f"invalid tar archive: {exc}") from exc
    except EOFError as exc:
        raise InvalidImage(f"invalid tar archive: unexpected end of data ({exc})") from exc


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


# ---------------------------------------------------------------------------
# save
# ---------------------------------------------------------------------------


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
            image_id = image_store.lookup_ref(ref)
            if image_id is None:
                raise ImageNotFound(familiar_string(ref))
            add(image_id, ref)
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
) -> Iterator[bytes]:
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
) -> Iterator[bytes]:  # returns the size through StopIteration
    name = f"blobs/sha256/{diff_id[7:]}"
    with contextlib.ExitStack() as stack:
        stream = stack.enter_context(layer_store.tar_stream(chain))
        source: IO[bytes] = stream
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


# ---------------------------------------------------------------------------
# import and --change
# ---------------------------------------------------------------------------

#: instructions ``docker import --change`` and ``docker commit --change`` accept
CHANGE_INSTRUCTIONS = ("CMD", "ENTRYPOINT", "ENV", "EXPOSE", "LABEL", "ONBUILD", "STOPSIGNAL",
                       "USER", "VOLUME", "WORKDIR")


def _split_words(rest: str) -> list[str]:
    """BuildKit's ``parseWords``: split on blanks, keeping quotes and escapes for later."""
    words: list[str] = []
    word = ""
    quote = ""
    blank_ok = False
    in_word = False
    i = 0
    n = len(rest)
    while i < n:
        ch = rest[i]
        if not in_word and not quote:
            if ch.isspace():
                i += 1
                continue
            in_word = True
        if quote:
            if ch == quote:
                quote = ""
            elif ch == "\\" and quote != "'" and i + 1 < n:
                word += ch
                i += 1
                ch = rest[i]
            word += ch
            i += 1
            continue
        if ch.isspace():
            if blank_ok or word:
                words.append(word)
            word, blank_ok, in_word = "", False, False
            i += 1
            continue
        if ch in "'\"":
            quote = ch
            blank_ok = True
        elif ch == "\\":
            if i + 1 == n:
                i += 1
                continue
            word += ch
            i += 1
            ch = rest[i]
        word += ch
        i += 1
    if in_word and (blank_ok or word):
        words.append(word)
    return words


_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _expand(word: str, env: dict[str, str]) -> str:
    """Dockerfile word processing: quote removal, escapes and ``$VAR``/``${VAR}``,
    ``${VAR:-default}``, ``${VAR:+alternative}``."""
    out: list[str] = []
    i = 0
    n = len(word)

    def dollar(j: int) -> tuple[str, int]:
        # word[j] == "$"
        if j + 1 < n and word[j + 1] == "{":
            end = word.find("}", j + 2)
            if end < 0:
                raise InvalidParameter(f"missing '}}' in {word!r}")
            body = word[j + 2 : end]
            m = _VAR.match(body)
            if not m:
                raise InvalidParameter(f"bad substitution in {word!r}")
            name, rest = m.group(0), body[m.end() :]
            value = env.get(name)
            if rest.startswith(":-"):
                value = value if value else _expand(rest[2:], env)
            elif rest.startswith(":+"):
                value = _expand(rest[2:], env) if value else ""
            elif rest:
                raise InvalidParameter(f"unsupported modifier ({rest[:2]}) in substitution")
            return value or "", end + 1
        m = _VAR.match(word, j + 1)
        if not m:
            return "$", j + 1
        return env.get(m.group(0), ""), m.end()

    while i < n:
        ch = word[i]
        if ch == "'":
            end = word.find("'", i + 1)
            if end < 0:
                raise InvalidParameter(f"unexpected end of statement while looking for "
                                       f"matching single-quote in {word!r}")
            out.append(word[i + 1 : end])
            i = end + 1
        elif ch == '"':
            i += 1
            while True:
                if i >= n:
                    raise InvalidParameter(f"unexpected end of statement while looking for "
                                           f"matching double-quote in {word!r}")
                c = word[i]
                if c == '"':
                    i += 1
                    break
                if c == "\\" and i + 1 < n and word[i + 1] in '"$\\':
                    out.append(word[i + 1])
                    i += 2
                elif c == "$":
                    value, i = dollar(i)
                    out.append(value)
                else:
                    out.append(c)
                    i += 1
        elif ch == "\\":
            if i + 1 < n:
                out.append(word[i + 1])
            i += 2
        elif ch == "$":
            value, i = dollar(i)
            out.append(value)
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _json_array(rest: str) -> list[str] | None:
    text = rest.strip()
    if not text.startswith("["):
        return None
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def _name_values(rest: str, instr: str, env: dict[str, str]) -> list[tuple[str, str]]:
    """``KEY=value ...`` or the legacy ``KEY value with spaces`` (ENV, LABEL)."""
    words = _split_words(rest)
    if not words:
        raise InvalidParameter(f"{instr} requires at least one argument")
    if "=" not in words[0]:
        parts = re.split(r"\s+", rest.strip(), maxsplit=1)
        if len(parts) < 2:
            raise InvalidParameter(f"{instr} must have two arguments")
        return [(_expand(parts[0], env), _expand(parts[1], env))]
    out = []
    for w in words:
        if "=" not in w:
            raise InvalidParameter(
                f"Syntax error - can't find = in {w!r}. Must be of the form: name=value"
            )
        key, _, value = w.partition("=")
        key = _expand(key, env)
        if not key:
            raise InvalidParameter(f"{instr} names can not be blank")
        out.append((key, _expand(value, env)))
    return out


def _env_dict(config: dict[str, Any]) -> dict[str, str]:
    out = {}
    for item in config.get("Env") or []:
        k, _, v = item.partition("=")
        out[k] = v
    return out


def _valid_signal(text: str) -> None:
    if text.isdigit():
        if int(text) > 0:
            return
    else:
        name = text.upper()
        name = name if name.startswith("SIG") else "SIG" + name
        if hasattr(signal.Signals, name) or re.fullmatch(r"SIGRTM(IN|AX)([+-]\d+)?", name):
            return
    raise InvalidParameter(f"Invalid signal: {text}")


def _expose(words: list[str]) -> list[str]:
    out = []
    for spec in words:
        port, _, proto = spec.partition("/")
        proto = (proto or "tcp").lower()
        if proto not in ("tcp", "udp", "sctp"):
            raise InvalidParameter(f"invalid proto: {proto}")
        lo, dash, hi = port.partition("-")
        try:
            start = int(lo)
            end = int(hi) if dash else start
        except ValueError:
            raise InvalidParameter(f"invalid containerPort: {port}") from None
        if not (0 < start <= end <= 65535):
            raise InvalidParameter(f"invalid containerPort: {port}")
        out.extend(f"{p}/{proto}" for p in range(start, end + 1))
    return out


def apply_changes(config: dict[str, Any], changes: Sequence[str]) -> dict[str, Any]:
    """Apply ``--change`` Dockerfile instructions to a container config (a copy is
    returned).  CMD/ENTRYPOINT take a JSON array or a shell form, which becomes
    ``["/bin/sh", "-c", ...]``; variables expand from the config's Env."""
    cfg = json.loads(json.dumps(config))
    cmd_set = False
    for raw in changes:
        for line in str(raw).splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            m = re.match(r"(\S+)\s*(.*)$", line, re.S)
            assert m is not None
            instr_word, rest = m.group(1), m.group(2)
            instr = instr_word.upper()
            if instr not in CHANGE_INSTRUCTIONS:
                raise InvalidParameter(f"{instr_word.lower()} is not a valid change command")
            env = _env_dict(cfg)
            if instr in ("CMD", "ENTRYPOINT"):
                args = _json_array(rest)
                if args is None:
                    args = ["/bin/sh", "-c", rest] if rest else []
                if instr == "CMD":
                    cfg["Cmd"] = args
                    cmd_set = True
                else:
                    cfg["Entrypoint"] = args or None
                    if not cmd_set:
                        cfg["Cmd"] = None
            elif instr == "ENV":
                pairs = _name_values(rest, "ENV", env)
                current = list(cfg.get("Env") or [])
                for key, value in pairs:
                    current = [e for e in current if e.partition("=")[0] != key]
                    current.append(f"{key}={value}")
                cfg["Env"] = current
            elif instr == "LABEL":
                labels = dict(cfg.get("Labels") or {})
                for key, value in _name_values(rest, "LABEL", env):
                    labels[key] = value
                cfg["Labels"] = labels
            elif instr == "EXPOSE":
                words = [_expand(w, env) for w in _split_words(rest)]
                if not words:
                    raise InvalidParameter("EXPOSE requires at least one argument")
                ports = dict(cfg.get("ExposedPorts") or {})
                for p in _expose(words):
                    ports[p] = {}
                cfg["ExposedPorts"] = ports
            elif instr == "VOLUME":
                vols = _json_array(rest)
                if vols is None:
                    vols = [_expand(w, env) for w in _split_words(rest)]
                if not vols:
                    raise InvalidParameter("VOLUME requires at least one argument")
                volumes = dict(cfg.get("Volumes") or {})
                for v in vols:
                    if not v.strip():
                        raise InvalidParameter("VOLUME specified can not be an empty string")
                    volumes[v.strip()] = {}
                cfg["Volumes"] = volumes
            elif instr == "WORKDIR":
                wd = _expand(rest.strip(), env)
                if not wd:
                    raise InvalidParameter("WORKDIR requires exactly one argument")
                if not wd.startswith("/"):
                    wd = posixpath.join("/", cfg.get("WorkingDir") or "", wd)
                cfg["WorkingDir"] = posixpath.normpath(wd)
            elif instr == "USER":
                user = _expand(rest.strip(), env)
                if not user:
                    raise InvalidParameter("USER requires exactly one argument")
                cfg["User"] = user
            elif instr == "STOPSIGNAL":
                sig = _expand(rest.strip(), env)
                _valid_signal(sig)
                cfg["StopSignal"] = sig
            elif instr == "ONBUILD":
                trigger = rest.strip()
                first = trigger.split(None, 1)[0].upper() if trigger else ""
                if first in ("ONBUILD", ""):
                    raise InvalidParameter("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"
                                           if first else "ONBUILD requires an instruction")
                if first in ("FROM", "MAINTAINER"):
                    raise InvalidParameter(f"{first} isn't allowed as an ONBUILD trigger")
                cfg["OnBuild"] = [*(cfg.get("OnBuild") or []), trigger]
    return cfg


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
        created = _now_rfc3339()
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
