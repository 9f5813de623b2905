"""Manifests: media types, parsing, platform selection, and building one for push."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from skiff.core.images.errors import InvalidImage

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"

#: what a pull accepts, best first
ACCEPT = (OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST)
_LAYER_TYPES = {DOCKER_LAYER, OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD,
                "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                DOCKER_FOREIGN}

#: the platform skiff runs (and so pulls)
PLATFORM = ("linux", "amd64")


@dataclass(frozen=True)
class Descriptor:
    """A content descriptor: what a manifest says about one blob."""

    media_type: str
    digest: str
    size: int
    urls: tuple[str, ...] = ()

    @classmethod
    def parse(cls, data: Any, what: str) -> Descriptor:
        if not isinstance(data, dict):
            raise InvalidImage(f"manifest: {what} is not an object")
        digest = data.get("digest")
        size = data.get("size")
        if not isinstance(digest, str) or not digest.startswith("sha256:") or len(digest) != 71:
            raise InvalidImage(f"manifest: {what} has an invalid digest {digest!r}")
        if not isinstance(size, int) or size < 0:
            raise InvalidImage(f"manifest: {what} has an invalid size {size!r}")
        return cls(str(data.get("mediaType") or ""), digest, size,
                   tuple(data.get("urls") or ()))

    def to_json(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "size": self.size, "digest": self.digest}


@dataclass(frozen=True)
class ImageManifest:
    """A single-platform manifest (Docker schema 2 or OCI)."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]


def _load(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise InvalidImage(f"the registry sent a manifest that is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidImage("the registry sent a manifest that is not a JSON object")
    return data


def kind(body: bytes, content_type: str) -> str:
    """The manifest's media type: its own ``mediaType``, else the HTTP Content-Type,
    else guessed from its shape (OCI makes ``mediaType`` optional)."""
    data = _load(body)
    media = data.get("mediaType") or content_type
    if media in (DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED) or data.get("schemaVersion") == 1:
        return DOCKER_SCHEMA1
    if media in (DOCKER_LIST, OCI_INDEX, DOCKER_MANIFEST, OCI_MANIFEST):
        return str(media)
    if "manifests" in data:
        return OCI_INDEX
    if "config" in data and "layers" in data:
        return OCI_MANIFEST
    raise InvalidImage(f"unsupported manifest media type {media!r}")


def select_platform(body: bytes, os_: str = PLATFORM[0], arch: str = PLATFORM[1]) -> Descriptor:
    """The entry of a manifest list / OCI index for ``os_/arch``."""
    data = _load(body)
    entries = data.get("manifests")
    if not isinstance(entries, list):
        raise InvalidImage("manifest list without manifests")
    for i, entry in enumerate(entries):
        plat = entry.get("platform") or {} if isinstance(entry, dict) else {}
        if plat.get("os") == os_ and plat.get("architecture") == arch:
            return Descriptor.parse(entry, f"manifests[{i}]")
    found = sorted({f"{(e.get('platform') or {}).get('os')}/"
                    f"{(e.get('platform') or {}).get('architecture')}"
                    for e in entries if isinstance(e, dict)})
    raise InvalidImage(
        f"no matching manifest for {os_}/{arch} in the manifest list entries "
        f"(it has: {', '.join(found) or 'none'})"
    )


def parse_image_manifest(body: bytes, media: str) -> ImageManifest:
    data = _load(body)
    if data.get("schemaVersion") != 2:
        raise InvalidImage(f"unsupported manifest schemaVersion {data.get('schemaVersion')!r}")
    config = Descriptor.parse(data.get("config"), "config")
    raw_layers = data.get("layers")
    if not isinstance(raw_layers, list):
        raise InvalidImage("manifest: layers is not a list")
    layers = tuple(Descriptor.parse(d, f"layers[{i}]") for i, d in enumerate(raw_layers))
    for d in layers:
        if d.media_type and d.media_type not in _LAYER_TYPES:
            raise InvalidImage(f"manifest: unsupported layer media type {d.media_type!r}")
        if d.urls:
            raise InvalidImage(
                f"manifest: layer {d.digest} is a foreign layer (served from {d.urls[0]}); "
                "skiff only pulls layers from the registry itself"
            )
    return ImageManifest(media, config, layers)


def build(config: Descriptor, layers: list[Descriptor]) -> tuple[bytes, str]:
    """A manifest for push: Docker schema 2, or OCI when a layer is OCI-only (zstd).

    Serialised as dockerd does (3-space indent), so the digest is stable.
    """
    oci = any(d.media_type.startswith("application/vnd.oci.") for d in layers)
    if oci:
        conv = {DOCKER_LAYER: OCI_LAYER_GZIP}
        media = OCI_MANIFEST
        cfg = Descriptor(OCI_CONFIG, config.digest, config.size)
        lays = [Descriptor(conv.get(d.media_type, d.media_type), d.digest, d.size)
                for d in layers]
    else:
        media = DOCKER_MANIFEST
        cfg = Descriptor(DOCKER_CONFIG, config.digest, config.size)
        lays = layers
    doc = {"schemaVersion": 2, "mediaType": media, "config": cfg.to_json(),
           "layers": [d.to_json() for d in lays]}
    return json.dumps(doc, indent=3).encode(), media
