"""``docker push``: layers (skipped, mounted or uploaded), config, manifest.

Each layer is tried in this order, as dockerd does:

1. a blob recorded for it in this very repository: ``HEAD`` says it is there
   ("Layer already exists");
2. a blob recorded in another repository of the same registry: a
   cross-repository mount ("Mounted from other/repo");
3. otherwise the layer tar is rebuilt byte-exact from the layer store,
   gzip-compressed into a temp file (its digest known only then), checked
   with ``HEAD`` and uploaded ("Pushed").

The manifest is Docker schema 2 (OCI when a layer is only expressible in OCI,
e.g. zstd); its digest is what the CLI prints (``latest: digest: sha256:...
size: N``) and is recorded locally as the image's repo digest.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import secrets
import shutil
from typing import TYPE_CHECKING, Any

import structlog
import trio

from skiff.core import metrics
from skiff.core.images.distribution import manifest as mf
from skiff.core.images.distribution.auth import AuthConfig
from skiff.core.images.distribution.client import RepositoryClient
from skiff.core.images.distribution.endpoints import RegistryConfig
from skiff.core.images.distribution.metadata import BlobRecord, DistributionMetadata
from skiff.core.images.distribution.progress import Emit, Progress, first_error, short
from skiff.core.images.errors import ImageNotFound
from skiff.core.images.reference import Reference, familiar_name, parse

if TYPE_CHECKING:
    from skiff.core.images.distribution.context import DistributionContext

log = structlog.get_logger("skiff.images.push")

__all__ = ["compress_layer", "push"]

_CHUNK = 1 << 20


def compress_layer(layers: Any, chain_id: str, dest: str,
                   progress: Any = None) -> tuple[str, int]:
    """Write the gzip of layer ``chain_id``'s exact tar to ``dest``; ``(digest, size)``."""
    sha = hashlib.sha256()

    class _Sink:
        def __init__(self, f: Any) -> None:
            self.f = f
            self.n = 0

        def write(self, b: Any) -> int:
            sha.update(b)
            self.n += len(b)
            return int(self.f.write(b))

        def flush(self) -> None:
            self.f.flush()

    with open(dest, "wb") as raw:
        sink = _Sink(raw)
        # mtime=0 and no file name: the same layer always compresses to the same blob
        with gzip.GzipFile(filename="", mode="wb", fileobj=sink, compresslevel=6,
                           mtime=0) as gz:
            tar = layers.tar_stream(chain_id)
            try:
                done = 0
                while True:
                    data = tar.read(_CHUNK)
                    if not data:
                        break
                    gz.write(data)
                    done += len(data)
                    if progress is not None:
                        progress(done)
            finally:
                tar.close()
    return "sha256:" + sha.hexdigest(), sink.n


@metrics.timed(metrics.image_actions, "push")
async def push(ctx: DistributionContext, name: str, tag: str, auth: AuthConfig | None,
               emit: Emit) -> list[dict[str, Any]]:
    """Push ``name:tag`` (every tag of ``name`` when ``tag`` is empty).

    Returns one ``{"Tag", "Digest", "Size"}`` per pushed tag.
    """
    ref = parse(name, default_tag=False)
    if tag:
        ref = ref.with_tag(tag)
    images = ctx.images
    if ref.tag is not None:
        image_id = images.lookup_ref(ref)
        if image_id is None:
            raise ImageNotFound(familiar_name(ref),
                                f"An image does not exist locally with the tag: "
                                f"{familiar_name(ref)}")
        targets = [(ref, image_id)]
    else:
        targets = [(r, i) for r, i in images.references_by_name(ref) if r.tag is not None]
        if not targets:
            raise ImageNotFound(familiar_name(ref),
                                f"An image does not exist locally with the tag: "
                                f"{familiar_name(ref)}")
    cfg = ctx.registry_config()
    endpoint = cfg.endpoints(ref.domain, push=True)[-1]
    meta = DistributionMetadata(ctx.layers.image_root)
    emit({"status": f"The push refers to repository [{ref.name}]"})
    results = []
    tmp = os.path.join(ctx.layers.image_root, "distribution", "tmp",
                       "push-" + secrets.token_hex(6))
    os.makedirs(tmp, mode=0o700)
    try:
        for target, image_id in targets:
            results.append(await _push_one(ctx, endpoint, cfg, auth, meta, target,
                                           image_id, tmp, emit))
    finally:
        await ctx.to_thread(shutil.rmtree, tmp, True)
    return results


async def _push_one(ctx: DistributionContext, endpoint: Any, cfg: RegistryConfig,
                    auth: AuthConfig | None, meta: DistributionMetadata, ref: Reference,
                    image_id: str, tmp: str, emit: Emit) -> dict[str, Any]:
    images = ctx.images
    image = await ctx.to_thread(images.get, image_id)
    config_bytes = await ctx.to_thread(images.config_bytes, image_id)
    diff_ids = list(image.diff_ids)
    chain = list(image.chain)
    # the mount scopes: every other repository of this registry the layers came from
    sources = sorted({r.path for d in diff_ids for r in meta.records(d)
                      if r.domain == ref.domain and r.path != ref.path})
    client = RepositoryClient(endpoint, ref.path, auth, cfg, "pull,push",
                              [f"repository:{s}:pull" for s in sources])
    token = trio.lowlevel.current_trio_token()

    def emit_from_thread(msg: dict[str, Any]) -> None:
        token.run_sync_soon(emit, msg)

    for d in reversed(diff_ids):  # dockerd lists the top layer first
        emit({"status": "Preparing", "id": short(d)})
    descriptors: list[mf.Descriptor | None] = [None] * len(diff_ids)
    sem = trio.Semaphore(max(1, cfg.max_uploads))

    async def one(i: int) -> None:
        diff_id = diff_ids[i]
        ident = short(diff_id)
        if sem.value == 0:
            emit({"status": "Waiting", "id": ident})
        async with sem:
            descriptors[i] = await _push_layer(ctx, client, meta, ref, chain[i], diff_id,
                                               ident, tmp, emit, emit_from_thread)

    try:
        async with trio.open_nursery() as nursery:
            for i in range(len(diff_ids)):
                nursery.start_soon(one, i)
    except BaseExceptionGroup as group:
        raise first_error(group) from None
    config_digest = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
    if not await ctx.to_thread(client.blob_exists, config_digest):
        await ctx.to_thread(client.upload_bytes, config_digest, config_bytes)
    body, media = mf.build(mf.Descriptor(mf.DOCKER_CONFIG, config_digest, len(config_bytes)),
                           [d for d in descriptors if d is not None])
    digest = await ctx.to_thread(client.put_manifest, ref.tag or "latest", body, media)
    await ctx.to_thread(images.add_digest, image_id,
                           Reference(ref.domain, ref.path, None, digest))
    emit({"status": f"{ref.tag}: digest: {digest} size: {len(body)}"})
    aux = {"Tag": ref.tag, "Digest": digest, "Size": len(body)}
    emit({"progressDetail": {}, "aux": aux})
    log.info("image.pushed", ref=str(ref), id=image_id, digest=digest)
    return aux


async def _push_layer(ctx: DistributionContext, client: RepositoryClient,
                      meta: DistributionMetadata, ref: Reference, chain_id: str,
                      diff_id: str, ident: str, tmp: str, emit: Emit,
                      emit_from_thread: Emit) -> mf.Descriptor:
    records = await ctx.to_thread(meta.records, diff_id)
    same_registry = [r for r in records if r.domain == ref.domain]
    for r in same_registry:
        if r.path == ref.path and await ctx.to_thread(client.blob_exists, r.digest):
            emit({"status": "Layer already exists", "id": ident})
            return await _described(ctx, client, r)
    for r in same_registry:
        if r.path != ref.path and await ctx.to_thread(client.mount_blob, r.digest, r.path):
            emit({"status": f"Mounted from {familiar_name(Reference(r.domain, r.path))}",
                  "id": ident})
            await ctx.to_thread(meta.add, diff_id,
                                   BlobRecord(r.digest, ref.name, r.media_type))
            return await _described(ctx, client, r)
    # compress (the digest is only known afterwards), then ask, then upload
    path = os.path.join(tmp, diff_id.split(":", 1)[1])
    digest, size = await ctx.to_thread(compress_layer, ctx.layers, chain_id, path, None)
    record = BlobRecord(digest, ref.name, mf.DOCKER_LAYER)
    if await ctx.to_thread(client.blob_exists, digest):
        emit({"status": "Layer already exists", "id": ident})
    else:
        prog = Progress(emit_from_thread, ident, "Pushing", size)
        await ctx.transfer_thread(client.upload_blob, digest, path, prog.update)
        emit({"status": "Pushed", "id": ident})
    os.unlink(path)
    await ctx.to_thread(meta.add, diff_id, record)
    return mf.Descriptor(mf.DOCKER_LAYER, digest, size)


async def _described(ctx: DistributionContext, client: RepositoryClient,
                     r: BlobRecord) -> mf.Descriptor:
    """The descriptor of a blob already in the registry: its size from ``HEAD``."""
    size = await ctx.to_thread(_blob_size, client, r.digest)
    return mf.Descriptor(r.media_type or mf.DOCKER_LAYER, r.digest, size)


def _blob_size(client: RepositoryClient, digest: str) -> int:
    resp = client.request("HEAD", f"/v2/{client.path}/blobs/{digest}")
    try:
        resp.read()
        return int(resp.getheader("Content-Length") or 0)
    finally:
        resp.close()
