"""Pull of a ~100 MB, 3-layer image from a local registry: skiffd against dockerd.

The image is written here as an OCI layout (gzip layers: part random bytes,
part hex text, so it compresses about as much as a typical image) and copied
into a private docker-registry on 127.0.0.1 with skopeo.  Each round removes
the image and pulls it again with the stock CLI on each engine in turn.

skiffd's time is split with its own log (``image.pulled``: ``download_s``
from the first layer request to the last byte, ``extract_s``: unpacking, where
one thread gunzips while another hashes and extracts the tar); decompression
alone is measured here by gunzipping the same blobs in this process.
Downloads and unpacking overlap (layer 1 unpacks while layer 3 downloads), and
so do gunzip and extraction, so the parts do not add up to the total.

Entry points: ``engine_rows(ctx)`` for ``python -m benchmarks engine`` and
``run(quick, out_dir)`` on its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

MB = 1_000_000
SIZE = 100 * MB
LAYERS = 3
ROUNDS = {"full": 3, "quick": 2, "smoke": 1}


def _layer_files(i: int, size: int) -> dict[str, bytes]:
    rand = int(size * 0.4)
    # one file per layer (the layout writer deals files round-robin over the layers)
    return {f"layer{i}/data.bin": os.urandom(rand) + os.urandom((size - rand) // 2).hex().encode()}


def _make_image(registry_host: str, scratch: Path, size: int) -> tuple[str, list[Path]]:
    """Push the test image; returns its name and the paths of its gzip blobs."""
    from tests.registry import skopeo_copy, write_oci_layout

    layout = scratch / "layout"
    files: dict[str, bytes] = {}
    for i in range(LAYERS):
        files.update(_layer_files(i, size // LAYERS))
    info = write_oci_layout(layout, files, "v1", layers=LAYERS, level=6)
    name = f"{registry_host}/bench/pull100:v1"
    skopeo_copy(f"oci:{layout}:v1", f"docker://{name}")
    blobs = [layout / "blobs" / "sha256" / d["digest"].split(":", 1)[1] for d in info["layers"]]
    return name, blobs


def _gunzip_seconds(blobs: list[Path]) -> float:
    t0 = time.perf_counter()
    for blob in blobs:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        with open(blob, "rb") as f:
            while chunk := f.read(1 << 20):
                d.decompress(chunk)
    return time.perf_counter() - t0


def _last_pull_event(log_path: Path) -> dict[str, Any] | None:
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if '"image.pulled"' in line:
            with contextlib.suppress(ValueError):
                return json.loads(line)
    return None


def measure(engines: list[Any], mode: str, registry_host: str, scratch: Path,
            log: Any = print) -> list[dict[str, Any]]:
    """Rows for ``engines`` (running, with a ``docker`` method and a ``name``)."""
    size = SIZE if mode != "smoke" else 6 * MB
    name, blobs = _make_image(registry_host, scratch, size)
    total_bytes = sum(b.stat().st_size for b in blobs)
    gunzip = _gunzip_seconds(blobs)
    rows: list[dict[str, Any]] = []
    samples: dict[str, list[float]] = {e.name: [] for e in engines}
    split: dict[str, list[float]] = {"download": [], "register": []}
    for _ in range(ROUNDS.get(mode, 2)):
        for e in engines:
            e.docker("rmi", "-f", name, check=False)
            t0 = time.perf_counter()
            e.docker("pull", name, timeout=600)
            samples[e.name].append(time.perf_counter() - t0)
            if e.name == "skiffd":
                ev = _last_pull_event(e.log_path)
                if ev is not None:
                    split["download"].append(float(ev.get("download_s", 0)))
                    split["register"].append(float(ev.get("extract_s", 0)))
    for e in engines:
        e.docker("rmi", "-f", name, check=False)
    label = f"pull {size // MB} MB, {LAYERS} layers"
    for engine_name, s in samples.items():
        rows.append({"metric": f"{label}: median", "engine": engine_name,
                     "value": statistics.median(s), "unit": "s",
                     "samples": [round(x, 4) for x in s]})
        rows.append({"metric": f"{label}: throughput", "engine": engine_name,
                     "value": total_bytes / MB / statistics.median(s), "unit": "MB/s"})
    if split["download"]:
        dl = statistics.median(split["download"])
        reg = statistics.median(split["register"])
        rows += [
            {"metric": "pull split: download (wall)", "engine": "skiffd", "value": dl,
             "unit": "s"},
            {"metric": "pull split: decompress (gunzip alone)", "engine": "skiffd",
             "value": gunzip, "unit": "s"},
            {"metric": "pull split: unpack (gunzip in parallel with extraction)",
             "engine": "skiffd", "value": reg, "unit": "s"},
        ]
    log(f"  pull: {total_bytes / MB:.1f} MB compressed; " + ", ".join(
        f"{k} {statistics.median(v):.2f}s" for k, v in samples.items()))
    return rows


def engine_rows(ctx: Any) -> list[dict[str, Any]]:
    """Extra rows for ``python -m benchmarks engine``."""
    from tests.registry import running_registry

    scratch = Path(tempfile.mkdtemp(prefix="skiff-bench-pull-"))
    try:
        with running_registry(scratch / "registry") as reg:
            return measure(ctx.engines, ctx.mode, reg.host, scratch, ctx.log)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run(quick: bool, out_dir: Path) -> list[dict[str, Any]]:
    """Start skiffd (and dockerd when installed), measure, stop everything."""
    from benchmarks.engines import Dockerd, Skiffd
    from tests.registry import running_registry

    out_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="skiff-bench-pull-"))
    engines: list[Any] = [Skiffd(scratch / "skiffd")]
    if Dockerd.available():
        engines.append(Dockerd(scratch / "dockerd"))
    try:
        for e in engines:
            e.start()
        with running_registry(scratch / "registry") as reg:
            rows = measure(engines, "quick" if quick else "full", reg.host, scratch)
        (out_dir / "pull.json").write_text(json.dumps(rows, indent=2))
        return rows
    finally:
        for e in engines:
            with contextlib.suppress(Exception):
                e.stop()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    import sys

    for row in run("--quick" in sys.argv, Path("bench-results")):
        print(row)
