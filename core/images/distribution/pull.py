"""``docker pull``: manifest, config, layers (parallel, verified, deduplicated), image.

Order of work, as dockerd does it:

1. the manifest (a list or index picks linux/amd64), then the image config;
2. layers whose chain is already stored are skipped ("Already exists");
3. the others download in parallel (``max-concurrent-downloads``), each into
   a temp file and verified against its digest;
4. they are registered base first as soon as each one and its parent are
   ready (decompression and unpacking in a worker thread);
5. the image is created and tagged only when every layer is in place.

If anything fails, the layers this pull registered are released (so removed
unless something else holds them), temp files are deleted, and no image or
tag is written: nothing half-stored.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

import structlog
import trio

from skiff.core import metrics
from skiff.core.errors import InvalidParameter
from skiff.core.images.distribution import manifest as mf
from skiff.core.images.distribution.auth import AuthConfig
from skiff.core.images.distribution.client import RepositoryClient
from skiff.core.images.distribution.endpoints import Endpoint, RegistryConfig
from skiff.core.images.distribution.errors import RegistryError
from skiff.core.images.distribution.metadata import BlobRecord, DistributionMetadata
from skiff.core.images.distribution.progress import Emit, Progress, first_error, short
from skiff.core.images.errors import InvalidImage
from skiff.core.images.layers import chain_ids
from skiff.core.images.records import parse_config
from skiff.core.images.reference import Reference, familiar_string, parse, parse_digest

if TYPE_CHECKING:
    from skiff.core.images.distribution.context import DistributionContext, ToThread

log = structlog.get_logger("skiff.images.pull")

__all__ = ["PullStats", "pull", "pull_reference"]

_F_SETPIPE_SZ = 1031
_PIPE_SIZE = 1 << 20
_INFLATE_CHUNK = 1 << 20


@dataclass
class PullStats:
    """Where the time of a pull went (the benchmark reads these from the log)."""

    manifest_s: float = 0.0
    download_s: float = 0.0  #: wall time from the first layer request to the last byte
    extract_s: float = 0.0  #: time in ``LayerStore.register`` (decompress + unpack)
    bytes: int = 0
    layers: int = 0
    skipped: int = 0
    per_layer: list[dict[str, Any]] = field(default_factory=list)


def pull_reference(image: str, tag: str) -> Reference:
    """The reference ``POST /images/create?fromImage=&tag=`` asks for.

    ``tag`` may be a tag or a digest (the CLI splits ``name@sha256:...`` that way).
    """
    if not image:
        raise InvalidParameter("fromImage is empty: name the image to pull")
    ref = parse(image, default_tag=False)
    if tag:
        if tag.startswith("sha256:") or ":" in tag:
            ref = ref.with_digest(parse_digest(tag))
        else:
            ref = ref.with_tag(tag)
    if ref.tag is None and ref.digest is None:
        raise InvalidParameter(
            "pulling every tag of a repository (docker pull -a) is not supported; name a tag"
        )
    return ref


class _Counted:
    """Reads a file and reports how far (the Extracting progress)."""

    def __init__(self, f: IO[bytes], progress: Progress) -> None:
        self._f = f
        self._progress = progress
        self.done = 0

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.done += len(data)
        self._progress.update(self.done)
        return data


@metrics.timed(metrics.image_actions, "pull")
async def pull(ctx: DistributionContext, ref: Reference, auth: AuthConfig | None, emit: Emit,
               stats: PullStats | None = None) -> str:
    """Pull ``ref`` into the image and layer stores; returns the image ID.

    ``emit`` gets each progress message (called on the trio thread).
    """
    stats = stats if stats is not None else PullStats()
    cfg = ctx.registry_config()
    endpoints = cfg.endpoints(ref.domain)
    want = ref.digest or ref.tag or "latest"
    t0 = time.monotonic()
    last: Exception | None = None
    for ep in endpoints:
        client = RepositoryClient(ep, ref.path, auth, cfg, "pull")
        try:
            body, digest, media = await ctx.to_thread(client.get_manifest, want, mf.ACCEPT)
            break
        except RegistryError as exc:
            if not ep.mirror:
                raise
            log.warning("pull.mirror_failed", mirror=ep.base, error=str(exc))
            last = exc
    else:  # pragma: no cover - the last endpoint is never a mirror
        raise last or RegistryError("no registry endpoint")
    kind = mf.kind(body, media)
    if kind == mf.DOCKER_SCHEMA1:
        raise InvalidImage(
            f"{familiar_string(ref)} has a schema 1 manifest, which is deprecated and not "
            "supported; push the image again with a current client"
        )
    emit({"status": f"Pulling from {ref.path}", "id": ref.tag or ref.digest})
    manifest_digest = digest
    if kind in (mf.DOCKER_LIST, mf.OCI_INDEX):
        entry = mf.select_platform(body)
        body, _, media = await ctx.to_thread(client.get_manifest, entry.digest, mf.ACCEPT)
        kind = mf.kind(body, media)
        if kind not in (mf.DOCKER_MANIFEST, mf.OCI_MANIFEST):
            raise InvalidImage(f"the linux/amd64 entry of {familiar_string(ref)} is a {kind}, "
                               "not an image manifest")
    image_manifest = mf.parse_image_manifest(body, kind)
    config_bytes = await ctx.to_thread(client.get_blob_bytes, image_manifest.config.digest)
    stats.manifest_s = time.monotonic() - t0
    _, diff_ids = parse_config(config_bytes)
    if len(diff_ids) != len(image_manifest.layers):
        raise InvalidImage(
            f"the manifest lists {len(image_manifest.layers)} layers but the image config "
            f"{len(diff_ids)} diffIDs"
        )
    previous = ctx.images.lookup_ref(ref) if ref.tag else None
    image_id = await _fetch_layers(ctx, client, cfg, ref, image_manifest, diff_ids,
                                   config_bytes, emit, stats)
    if ref.tag is not None:
        await ctx.to_thread(ctx.images.tag, image_id, ref)
    await ctx.to_thread(ctx.images.add_digest, image_id,
                           Reference(ref.domain, ref.path, None, manifest_digest))
    emit({"status": f"Digest: {manifest_digest}"})
    shown = familiar_string(ref)
    if previous == image_id:
        emit({"status": f"Status: Image is up to date for {shown}"})
    else:
        emit({"status": f"Status: Downloaded newer image for {shown}"})
    log.info("image.pulled", ref=str(ref), id=image_id, digest=manifest_digest,
             manifest_s=round(stats.manifest_s, 4), download_s=round(stats.download_s, 4),
             extract_s=round(stats.extract_s, 4), bytes=stats.bytes, layers=stats.layers,
             skipped=stats.skipped, total_s=round(time.monotonic() - t0, 4))
    return image_id


async def _fetch_layers(ctx: DistributionContext, client: RepositoryClient, cfg: RegistryConfig,
                        ref: Reference, image_manifest: mf.ImageManifest,
                        diff_ids: list[str], config_bytes: bytes, emit: Emit,
                        stats: PullStats) -> str:
    layers = ctx.layers
    chain = chain_ids(diff_ids)
    n = len(chain)
    # dedup by diffID before fetching anything: the stored prefix of the chain is skipped
    have = 0
    held: str | None = None
    while have < n:
        if not layers.exists(chain[have]):
            break
        have += 1
    if have:
        try:
            layers.acquire(chain[have - 1])  # keep it while we stack on top of it
            held = chain[have - 1]
        except Exception:
            have = 0
    stats.layers = n
    stats.skipped = have
    for i in range(have):
        emit({"status": "Already exists", "id": short(image_manifest.layers[i].digest)})
    for i in range(have, n):
        emit({"status": "Pulling fs layer", "id": short(image_manifest.layers[i].digest)})

    meta = DistributionMetadata(layers.image_root)
    tmp = os.path.join(layers.image_root, "distribution", "tmp", "pull-" + secrets.token_hex(6))
    os.makedirs(tmp, mode=0o700)
    registered: list[str] = []
    done: dict[str, trio.Event] = {}
    files: dict[str, str] = {}
    sem = trio.Semaphore(max(1, cfg.max_downloads))
    token = trio.lowlevel.current_trio_token()

    def emit_from_thread(msg: dict[str, Any]) -> None:
        token.run_sync_soon(emit, msg)

    span = [0.0, 0.0]

    async def download(desc: mf.Descriptor) -> None:
        ident = short(desc.digest)
        if sem.value == 0:
            emit({"status": "Waiting", "id": ident})
        async with sem:
            path = os.path.join(tmp, desc.digest.split(":", 1)[1])
            prog = Progress(emit_from_thread, ident, "Downloading", desc.size)
            start = time.monotonic()
            if not span[0]:
                span[0] = start
            got = await ctx.transfer_thread(client.fetch_blob, desc.digest, path, desc.size,
                                         prog.update)
            span[1] = max(span[1], time.monotonic())
            stats.bytes += got
            stats.per_layer.append({"digest": desc.digest, "bytes": got,
                                    "download_s": time.monotonic() - start})
            emit({"status": "Verifying Checksum", "id": ident})
            emit({"status": "Download complete", "id": ident})
            files[desc.digest] = path
            done[desc.digest].set()

    def register(src: IO[bytes], parent: str | None, diff_id: str) -> None:
        layer = layers.register(src, parent, diff_id)
        # recorded here, in the thread, so a cancelled pull still releases it
        registered.append(layer.chain_id)

    async def extract(path: str, parent: str | None, diff_id: str, prog: Progress) -> None:
        t = time.monotonic()
        with open(path, "rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"
        if not gzipped:  # bzip2, xz, zstd, plain: the layer store decompresses inline
            with open(path, "rb") as f:
                await ctx.to_thread(register, _Counted(f, prog), parent, diff_id)
        else:
            await _pipelined(ctx.to_thread, path, prog, lambda src: register(src, parent, diff_id))
        stats.extract_s += time.monotonic() - t

    try:
        async with trio.open_nursery() as nursery:
            for i in range(have, n):
                d = image_manifest.layers[i]
                if d.digest not in done:  # the same blob twice in one image: fetch once
                    done[d.digest] = trio.Event()
                    nursery.start_soon(download, d)
            parent = chain[have - 1] if have else None
            for i in range(have, n):
                d = image_manifest.layers[i]
                await done[d.digest].wait()
                ident = short(d.digest)
                prog = Progress(emit_from_thread, ident, "Extracting", d.size)
                await extract(files[d.digest], parent, diff_ids[i], prog)
                parent = chain[i]
                if sum(1 for x in image_manifest.layers[i + 1:] if x.digest == d.digest) == 0:
                    _remove(files[d.digest])
                emit({"status": "Pull complete", "id": ident})
        stats.download_s = max(0.0, span[1] - span[0])
        image_id = await ctx.to_thread(ctx.images.create, config_bytes)
        for i, d in enumerate(image_manifest.layers):
            await ctx.to_thread(meta.add, diff_ids[i],
                                   BlobRecord(d.digest, ref.name, d.media_type or mf.DOCKER_LAYER))
        return image_id
    except BaseExceptionGroup as group:
        raise first_error(group) from None
    finally:
        with trio.CancelScope(shield=True):
            await ctx.to_thread(_release, layers, registered, held)
            await ctx.to_thread(shutil.rmtree, tmp, True)


async def _pipelined(to_thread: ToThread, path: str, prog: Progress,
                     consume: Callable[[IO[bytes]], None]) -> None:
    """Gunzip ``path`` in one worker thread while ``consume`` reads the tar in another.

    zlib releases the GIL, so decompression overlaps the hashing, tar-split
    recording and unpacking of the layer store (dockerd pipes through a
    decompressor goroutine the same way); it roughly halves the time of a layer.
    """
    r, w = os.pipe2(os.O_CLOEXEC)
    with contextlib.suppress(OSError):
        fcntl.fcntl(w, _F_SETPIPE_SZ, _PIPE_SIZE)
    failed: list[BaseException] = []

    def inflate() -> None:
        try:
            with open(path, "rb") as f, os.fdopen(w, "wb", buffering=_INFLATE_CHUNK) as out:
                d = zlib.decompressobj(16 + zlib.MAX_WBITS)
                done = 0
                while True:
                    chunk = f.read(_INFLATE_CHUNK)
                    if not chunk:
                        break
                    done += len(chunk)
                    while chunk:
                        out.write(d.decompress(chunk))
                        # a multi-member gzip: the next member starts in unused_data
                        chunk = d.unused_data if d.eof else b""
                        if d.eof:
                            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
                    prog.update(done)
                out.write(d.flush())
        except BrokenPipeError:
            pass  # the consumer stopped (and says why)
        except BaseException as exc:
            failed.append(exc)

    def run_consumer() -> None:
        with os.fdopen(r, "rb", buffering=_INFLATE_CHUNK) as src:
            consume(src)

    try:
        # Shielded: once the pipe exists, each end must be served by its thread.
        # A cancel that lands before one of the two threads starts would leave
        # the other blocked for ever (a reader with no writer, or a writer with
        # no reader), and trio waits for a running thread without end: the pull
        # and then the daemon's shutdown hung that way when another layer's
        # download failed.  The work is bounded by the local file, so a
        # cancelled pull waits for this one layer at most.
        with trio.CancelScope(shield=True):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(to_thread, inflate)
                await to_thread(run_consumer)
    except BaseExceptionGroup as group:
        if failed:
            raise _bad_gzip(failed[0]) from None
        raise first_error(group) from None
    except Exception:
        if failed:
            raise _bad_gzip(failed[0]) from None
        raise
    if failed:
        raise _bad_gzip(failed[0])


def _bad_gzip(exc: BaseException) -> BaseException:
    if isinstance(exc, zlib.error):
        return InvalidImage(f"the layer is not a valid gzip stream: {exc}")
    return exc


def _release(layers: Any, registered: list[str], held: str | None) -> None:
    # top first; at zero a layer is removed (the image, if created, holds its own reference)
    for chain_id in reversed(registered):
        layers.release(chain_id)
    if held is not None:
        layers.release(held)


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def endpoint_for(ref: Reference, config: dict[str, Any]) -> Endpoint:
    """The endpoint pushes and logins use for ``ref``'s registry."""
    return RegistryConfig.from_daemon_config(config).endpoints(ref.domain, push=True)[-1]
