"""User namespaces on the start path (issue 14): what ``userns-remap`` costs.

Three skiffd side by side, interleaved A B C A B C: no remapping;
``userns-remap: default`` with idmapped mounts (the layers shared as they
are); and the same with the fallback forced (``exec-opts:
["skiff.userns-storage=chown"]``: chowned copies of the layers per
mapping).  All three get the same 10-layer image (busybox and nine layers of
200 small files each, committed on the first and moved with save/load).

Rows: ``run --rm true`` and ``create`` (API) on that image, for the daemon's
shared mapping; then ``create`` with ``--userns=auto`` (a new mapping every
time: for the fallback, ten layers copied and chowned per container, the
worst case; for idmapped mounts, an allocation on disk).  The slowdown rows
divide by the unremapped daemon's median of the same round set.
"""

from __future__ import annotations

import contextlib
import pwd
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.engines import Engine, Skiffd

if TYPE_CHECKING:
    from benchmarks.engine import Context

IMAGE = "layered:10"
LAYERS = 10
FILES_PER_LAYER = 200
PLAIN, IDMAP, CHOWN = "skiffd", "skiffd userns (idmap)", "skiffd userns (chown)"
REMAP_USER = "skiffremap"


def _api_create(e: Engine, host_config: dict[str, object]) -> float:
    from benchmarks.engine import _api

    t0 = time.perf_counter()
    cid = _api(e, "POST", "/containers/create",
               {"Image": IMAGE, "Cmd": ["true"], "HostConfig": host_config})["Id"]
    took = time.perf_counter() - t0
    _api(e, "DELETE", f"/containers/{cid}?force=1")
    return took


def _build_image(e: Engine) -> None:
    """busybox plus nine committed layers of small files."""
    e.docker("tag", "busybox:latest", "layered:1")
    for n in range(2, LAYERS + 1):
        cid = e.docker("create", "--network", "none", f"layered:{n - 1}", "sh", "-c",
                       f"mkdir /l{n} && cd /l{n} && for i in $(seq {FILES_PER_LAYER}); "
                       "do echo $i > f$i; done").stdout.decode().strip()
        e.docker("start", "-a", cid)
        e.docker("commit", cid, f"layered:{n}")
        e.docker("rm", cid)
    layers = e.docker("inspect", "-f", "{{len .RootFS.Layers}}", IMAGE).stdout.decode().strip()
    if layers != str(LAYERS):
        raise RuntimeError(f"the benchmark image has {layers} layers, not {LAYERS}")


def engine_rows(ctx: Context) -> list[dict[str, object]]:
    """The userns workload (``--only userns``); its own three daemons."""
    runs = ctx.plan.runs
    cold = max(3, runs // 4)
    try:
        pwd.getpwnam(REMAP_USER)
        made_user = False
    except KeyError:
        made_user = True  # skiffd makes it; the benchmark removes it again
    scratch = Path(tempfile.mkdtemp(prefix="skiff-bench-userns-"))
    remap = {"userns-remap": "default"}
    engines = [Skiffd(scratch / "plain", name=PLAIN),
               Skiffd(scratch / "idmap", config=remap, name=IDMAP),
               Skiffd(scratch / "chown", config={**remap,
                                                 "exec-opts": ["skiff.userns-storage=chown"]},
                      name=CHOWN)]
    rows: list[dict[str, object]] = []
    try:
        for e in engines:
            e.start()
        plain = engines[0]
        plain.bootstrap_busybox()  # type: ignore[attr-defined]
        _build_image(plain)
        tar = scratch / "layered.tar"
        plain.docker("save", "-o", str(tar), IMAGE)
        for e in engines[1:]:
            e.docker("load", "-i", str(tar))
        tar.unlink()
        status = engines[1].docker("info", "--format", "{{json .DriverStatus}}").stdout.decode()
        if "idmapped mounts" not in status:
            ctx.log(f"  idmapped mounts are not in use here: {status}")
        # the first of each pays for page cache (and, chown: the copies): not measured
        first: dict[str, float] = {}
        for e in engines:
            first[e.name] = e.timed("run", "--rm", "--network", "none", IMAGE, "true")
        run: dict[str, list[float]] = {e.name: [] for e in engines}
        create: dict[str, list[float]] = {e.name: [] for e in engines}
        auto: dict[str, list[float]] = {e.name: [] for e in engines[1:]}
        for _ in range(runs):
            for e in engines:
                run[e.name].append(e.timed("run", "--rm", "--network", "none", IMAGE, "true"))
                create[e.name].append(_api_create(e, {"NetworkMode": "none"}))
        for _ in range(cold):
            for e in engines[1:]:
                auto[e.name].append(_api_create(e, {"NetworkMode": "none",
                                                    "UsernsMode": "auto"}))
        for name, value in first.items():
            rows.append(_row("userns: first run --rm on a fresh daemon, 10 layers", name,
                             value, "s"))
        for label, data in (("run --rm true", run), ("create (API)", create),
                            ("create --userns=auto (API)", auto)):
            for name, samples in data.items():
                rows.append(_row(f"userns: {label}, 10 layers: median", name,
                                 statistics.median(samples), "s",
                                 samples=[round(s, 6) for s in samples]))
        for label, data in (("run --rm true", run), ("create (API)", create)):
            base = statistics.median(data[PLAIN])
            for name in (IDMAP, CHOWN):
                rows.append(_row(f"userns: {label}, 10 layers: slowdown vs no remapping", name,
                                 statistics.median(data[name]) / base, "x"))
        base = statistics.median(create[PLAIN])
        for name, samples in auto.items():
            rows.append(_row("userns: create --userns=auto, 10 layers: slowdown vs no remapping",
                             name, statistics.median(samples) / base, "x"))
    finally:
        for e in engines:
            with contextlib.suppress(Exception):
                e.stop()
        shutil.rmtree(scratch, ignore_errors=True)
        if made_user:
            subprocess.run(["userdel", REMAP_USER], capture_output=True, check=False)
    for row in rows:
        ctx.log(f"  {row['metric']} [{row['engine']}]: {row['value']:.4g} {row['unit']}")
    return rows


def _row(metric: str, engine: str, value: float, unit: str, **extra: object
         ) -> dict[str, object]:
    return {"metric": metric, "engine": engine, "value": value, "unit": unit, **extra}
