"""The storage drivers against each other, through the driver contract itself.

Used by ``python -m benchmarks storage`` when no ``benchmarks/storage.py`` is
there.  Every installed driver (entry points, third-party ones included) gets
a data-root of its own; one that cannot work here (``DriverNotSupported``) is
left out with its reason.  Per round and driver, A B A B: apply a 10-layer
image, then for several containers create the read-write layer and mount it,
write to a large file of the lowest layer (copy-up), list the changes
(``docker diff``), unmount and remove; at last remove the image.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import shutil
import statistics
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from skiff.core.hookspecs import DriverNotSupported, StorageContext, StorageDriver
from skiff.core.plugins import load_plugins

LAYERS = 10
BIG = 64 << 20


def _tar(files: dict[str, bytes], whiteouts: tuple[str, ...] = ()) -> bytes:
    buf = io.BytesIO()
    dirs: set[str] = set()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in [*files, *whiteouts]:
            parts = name.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    info = tarfile.TarInfo(d)
                    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1700000000
                    tar.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1700000000
            tar.addfile(info, io.BytesIO(data))
        for name in whiteouts:
            head, _, tail = name.rpartition("/")
            info = tarfile.TarInfo(f"{head}/.wh.{tail}" if head else f".wh.{tail}")
            info.mtime = 1700000000
            tar.addfile(info, io.BytesIO(b""))
    return buf.getvalue()


def image_layers(big: int = BIG) -> list[bytes]:
    """A base layer (a big file and 1,000 small ones), then 9 layers that add, change, delete."""
    rnd = os.urandom(4096)
    base = {f"usr/lib/pkg{d}/file{i}.so": rnd[: 512 + 7 * i] for d in range(20) for i in range(50)}
    base["data/big.bin"] = b"\0" * big
    layers = [_tar(base)]
    for n in range(1, LAYERS):
        files = {f"layer{n}/f{i}": rnd[: 256 + i] for i in range(100)}
        files[f"usr/lib/pkg{n}/file0.so"] = b"changed in layer %d" % n
        layers.append(_tar(files, whiteouts=(f"usr/lib/pkg{n}/file1.so",)))
    return layers


@contextlib.contextmanager
def _driver(name: str) -> Iterator[StorageDriver]:
    factory = load_plugins().factory("storage", name)
    base = Path(tempfile.mkdtemp(prefix=f"skiff-bench-storage-{name}-"))
    try:
        data_root = base / "data"
        data_root.mkdir()
        driver = factory(StorageContext(home=str(data_root / name), data_root=str(data_root),
                                        options={}))
        try:
            yield driver
        finally:
            driver.cleanup()
    finally:
        with open("/proc/self/mountinfo") as f:
            points = [ln.split()[4] for ln in f if ln.split()[4].startswith(f"{base}/")]
        for point in sorted(points, key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def _round(driver: StorageDriver, layers: list[bytes], containers: int
           ) -> dict[str, list[float]]:
    s: dict[str, list[float]] = {k: [] for k in ("apply", "create", "copyup", "changes",
                                                 "remove", "rmi")}
    ids: list[str] = []
    t0 = time.perf_counter()
    parent: str | None = None
    for data in layers:
        lid = secrets.token_hex(16)
        driver.create(lid, parent)
        driver.apply_diff(lid, parent, io.BytesIO(data))
        ids.append(lid)
        parent = lid
    s["apply"].append(time.perf_counter() - t0)
    for _ in range(containers):
        rw = secrets.token_hex(16)
        t0 = time.perf_counter()
        driver.create_rw(rw, parent, {})
        root = Path(driver.get(rw))
        s["create"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with open(root / "data/big.bin", "r+b") as f:
            f.write(b"x")
        s["copyup"].append(time.perf_counter() - t0)
        for i in range(100):
            (root / f"tmp-new-{i}").write_bytes(b"new")
        for i in range(2, 12):
            (root / f"usr/lib/pkg0/file{i}.so").unlink()
        t0 = time.perf_counter()
        found = driver.changes(rw, parent)
        s["changes"].append(time.perf_counter() - t0)
        if len(found) < 110:
            raise AssertionError(f"{driver.name}: changes found {len(found)} entries, "
                                 "expected at least 110")
        t0 = time.perf_counter()
        driver.put(rw)
        driver.remove(rw)
        s["remove"].append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    for lid in reversed(ids):
        driver.remove(lid)
    s["rmi"].append(time.perf_counter() - t0)
    return s


def run(quick: bool, out_dir: Path) -> list[dict[str, Any]]:
    """Rows {"metric", "driver", "value", "unit"} for every driver that works here."""
    rounds, containers = (1, 3) if quick else (3, 8)
    names = sorted(load_plugins().drivers.get("storage", {}))
    layers = image_layers()
    samples: dict[str, dict[str, list[float]]] = {}
    skipped: dict[str, str] = {}
    for _ in range(rounds):
        for name in names:
            if name in skipped:
                continue
            try:
                with _driver(name) as driver:
                    got = _round(driver, layers, containers)
            except DriverNotSupported as exc:
                skipped[name] = str(exc)
                print(f"storage: {name} left out: {exc}", flush=True)
                continue
            for k, v in got.items():
                samples.setdefault(name, {}).setdefault(k, []).extend(v)
            print(f"storage: {name} round done", flush=True)
    labels = {
        "apply": f"layer apply: {LAYERS} layers ({BIG >> 20} MB + 1,900 files)",
        "create": f"create rw + mount, on {LAYERS} layers: median",
        "copyup": f"first write to a {BIG >> 20} MB lower file: median",
        "changes": "changes (docker diff), 110 entries: median",
        "remove": "unmount + remove rw layer: median",
        "rmi": f"remove the {LAYERS} image layers",
    }
    rows: list[dict[str, Any]] = []
    for key, label in labels.items():
        for name, s in samples.items():
            rows.append({"metric": label, "driver": name, "value": statistics.median(s[key]),
                         "unit": "s", "samples": [round(x, 6) for x in s[key]]})
    return rows
