"""Storage drivers against each other: layer apply throughput and container create time.

``python -m benchmarks storage`` calls :func:`run`.  Every installed storage
driver (entry points, third-party ones included) gets a data-root of its own
under a temp folder; one that cannot work here (``DriverNotSupported``) is
left out with its reason.  Measured through skiff's own layer store, i.e.
what ``docker load`` and ``docker create`` cost on that driver:

- *layer apply*: ``LayerStore.register`` of one ~100 MB, 5,000-file layer
  (safe unpacking, sha256 of the stream, the tar-split record), in MB/s and
  files/s; and the driver's bare ``apply_diff`` of the same tar, to show what
  the layer store adds on top;
- *container create*: ``LayerStore.create_rw`` (init layer + read-write layer)
  on a 10-layer image, median per container, and the matching ``remove_rw``.

The per-driver rounds alternate (A B A B) so a slow spell of the machine does
not land on one driver only.  The other storage rows of
``benchmarks/_storage_fallback.py`` (copy-up, changes, removal through the
bare driver contract) are added too.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import secrets
import shutil
import statistics
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import structlog

from skiff.core.hookspecs import DriverNotSupported, StorageContext
from skiff.core.images.layers import LayerStore
from skiff.core.plugins import load_plugins

#: the apply workload: FILES files in DIRS directories, about TOTAL bytes
FILES = 5_000
DIRS = 50
TOTAL = 100 << 20
#: the create workload: an image of IMAGE_LAYERS layers of 200 files each
IMAGE_LAYERS = 10
MTIME = 1_700_000_000


def _dir_info(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, MTIME
    return info


def big_layer(path: Path) -> tuple[int, int]:
    """Write the apply workload's tar to ``path``; returns (content bytes, entries)."""
    # sizes vary (1 KiB .. ~39 KiB) around TOTAL / FILES; content is random so
    # nothing (a reflink, a compressing filesystem) can cheat
    base = TOTAL // FILES
    pool = os.urandom(2 * base + 4096)
    content = 0
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for d in range(DIRS):
            tar.addfile(_dir_info(f"usr/share/d{d:02d}"))
        tar.addfile(_dir_info("usr"))
        tar.addfile(_dir_info("usr/share"))
        for i in range(FILES):
            size = 1024 + (i * 7919) % (2 * base - 2048)
            start = (i * 131) % 4096
            info = tarfile.TarInfo(f"usr/share/d{i % DIRS:02d}/f{i:05d}.bin")
            info.size, info.mode, info.mtime = size, 0o644, MTIME
            tar.addfile(info, io.BytesIO(pool[start : start + size]))
            content += size
    return content, FILES + DIRS + 2


def image_layers() -> list[bytes]:
    """The create workload's image: 10 small layers that add, change and delete."""
    pool = os.urandom(16 << 10)
    layers = []
    for n in range(IMAGE_LAYERS):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            tar.addfile(_dir_info(f"layer{n}"))
            for i in range(200):
                info = tarfile.TarInfo(f"layer{n}/f{i}")
                data = pool[i : i + 1024 + 37 * i]
                info.size, info.mode, info.mtime = len(data), 0o644, MTIME
                tar.addfile(info, io.BytesIO(data))
            if n:
                wo = tarfile.TarInfo(f"layer{n - 1}/.wh.f0")
                wo.mtime = MTIME
                tar.addfile(wo)
        layers.append(buf.getvalue())
    return layers


@contextlib.contextmanager
def _store(name: str, scratch: Path) -> Iterator[LayerStore]:
    """A layer store on a fresh data-root for driver ``name``; everything goes afterwards."""
    factory = load_plugins().factory("storage", name)
    base = Path(tempfile.mkdtemp(prefix=f"storage-{name}-", dir=scratch))
    try:
        data_root = base / "data"
        data_root.mkdir()
        driver = factory(StorageContext(home=str(data_root / name), data_root=str(data_root),
                                        options={}))
        try:
            yield LayerStore(str(data_root), name, driver)
        finally:
            driver.cleanup()
    finally:
        with open("/proc/self/mountinfo") as f:
            points = [ln.split()[4] for ln in f if ln.split()[4].startswith(f"{base}/")]
        for point in sorted(points, key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def _apply_round(name: str, scratch: Path, tar_path: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    with _store(name, scratch) as store:
        with open(tar_path, "rb") as f:
            t0 = time.perf_counter()
            layer = store.register(f, None)
            out["register"] = time.perf_counter() - t0
        store.release(layer.chain_id)
        # the bare driver: no hashing, no tar-split, no metadata
        lid = secrets.token_hex(16)
        store.driver.create(lid, None)
        with open(tar_path, "rb") as f:
            t0 = time.perf_counter()
            store.driver.apply_diff(lid, None, f)
            out["apply_diff"] = time.perf_counter() - t0
        store.driver.remove(lid)
    return out


def _create_round(name: str, scratch: Path, layers: list[bytes], containers: int
                  ) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"create": [], "remove": []}
    with _store(name, scratch) as store:
        top: str | None = None
        held = []
        for data in layers:
            layer = store.register(io.BytesIO(data), top)
            held.append(layer.chain_id)
            top = layer.chain_id
        for _ in range(containers):
            cid = secrets.token_hex(32)
            t0 = time.perf_counter()
            store.create_rw(cid, top)
            out["create"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            store.remove_rw(cid)
            out["remove"].append(time.perf_counter() - t0)
        assert top is not None
        store.release(top)
    return out


def run(quick: bool, out_dir: Path, drivers: Sequence[str] | None = None,
        with_fallback: bool = True) -> list[dict[str, Any]]:
    """Rows {"metric", "driver", "value", "unit"} for every storage driver that works here.

    ``drivers`` limits the run to those names; ``with_fallback=False`` leaves
    out the rows of ``benchmarks/_storage_fallback.py``.
    """
    rounds, containers = (1, 5) if quick else (3, 20)
    # the layer store logs every layer at info level: noise between the progress lines
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    names = sorted(load_plugins().drivers.get("storage", {}))
    if drivers is not None:
        names = [n for n in names if n in drivers]
    scratch = Path(tempfile.mkdtemp(prefix="skiff-bench-layers-"))
    skipped: dict[str, str] = {}
    applies: dict[str, dict[str, list[float]]] = {}
    creates: dict[str, dict[str, list[float]]] = {}
    try:
        tar_path = scratch / "layer.tar"
        content, entries = big_layer(tar_path)
        tar_bytes = tar_path.stat().st_size
        print(f"storage: apply workload {tar_bytes / 1e6:.0f} MB tar, {FILES} files, "
              f"{content / 1e6:.0f} MB of content", flush=True)
        layers = image_layers()
        for r in range(rounds):
            for name in names:
                if name in skipped:
                    continue
                try:
                    got = _apply_round(name, scratch, tar_path)
                    made = _create_round(name, scratch, layers, containers)
                except DriverNotSupported as exc:
                    skipped[name] = str(exc)
                    print(f"storage: {name} left out: {exc}", flush=True)
                    continue
                for k, v in got.items():
                    applies.setdefault(name, {}).setdefault(k, []).append(v)
                for k, vs in made.items():
                    creates.setdefault(name, {}).setdefault(k, []).extend(vs)
                print(f"storage: {name} round {r + 1}/{rounds}: register "
                      f"{content / 1e6 / got['register']:.0f} MB/s, create "
                      f"{statistics.median(made['create']) * 1000:.1f} ms", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    rows: list[dict[str, Any]] = []
    size = f"{content / 1e6:.0f} MB, {FILES:,} files"
    for name, s in applies.items():
        reg = statistics.median(s["register"])
        bare = statistics.median(s["apply_diff"])
        samples = [round(x, 4) for x in s["register"]]
        rows += [
            {"metric": f"layer apply ({size}): throughput", "driver": name,
             "value": round(content / 1e6 / reg, 1), "unit": "MB/s", "samples": samples},
            {"metric": f"layer apply ({size}): files", "driver": name,
             "value": round(entries / reg), "unit": "files/s", "samples": samples},
            {"metric": f"layer apply ({size}): seconds", "driver": name,
             "value": round(reg, 3), "unit": "s", "samples": samples},
            {"metric": f"bare driver apply_diff ({size}): throughput", "driver": name,
             "value": round(content / 1e6 / bare, 1), "unit": "MB/s",
             "samples": [round(x, 4) for x in s["apply_diff"]]},
        ]
    for name, s in creates.items():
        rows += [
            {"metric": f"container create (init + rw layer) on a {IMAGE_LAYERS}-layer image",
             "driver": name, "value": round(statistics.median(s["create"]) * 1000, 2),
             "unit": "ms", "samples": [round(x * 1000, 2) for x in s["create"]]},
            {"metric": "container layer remove", "driver": name,
             "value": round(statistics.median(s["remove"]) * 1000, 2), "unit": "ms",
             "samples": [round(x * 1000, 2) for x in s["remove"]]},
        ]
    for name, why in skipped.items():
        print(f"storage: {name} not measured: {why}", flush=True)
    if not with_fallback:
        return rows
    try:
        from benchmarks import _storage_fallback
    except ModuleNotFoundError:
        return rows
    return rows + _storage_fallback.run(quick, out_dir)
