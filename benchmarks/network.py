"""Network set-up cost: ``run --rm`` with the bridge against ``--network none``.

An extra of ``python -m benchmarks engine`` (``engine_rows``).  Rows per
engine: ``run --rm true`` on the default bridge, with ``-p 80`` (a published
port: firewall rules too) and with ``--network none``; the difference is what
the network costs a container start.  The harness's dockerd runs with
``--bridge=none``, so this module starts a second dockerd with a bridge of
its own (a 10.x/24 inside the harness's private network namespace) and gives
it skiffd's busybox through save/load.
"""

from __future__ import annotations

import contextlib
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.engines import Dockerd, Engine, Skiffd

if TYPE_CHECKING:
    from benchmarks.engine import Context
    from benchmarks.report import Row

IMAGE = "busybox:latest"
CASES = (
    ("none", ["--network", "none"]),
    ("bridge", []),
    ("bridge -p 80", ["-p", "80"]),
)


class BridgedDockerd(Dockerd):
    """dockerd with its default bridge and iptables, on a bridge name of its own."""

    def command(self) -> list[str]:
        drop = {"--bridge=none", "--iptables=false", "--ip-masq=false", "--ip-forward=false"}
        return [a for a in super().command() if a not in drop] + ["--bip", "10.231.7.1/24"]


def _measure(e: Engine, runs: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {label: [] for label, _ in CASES}
    for _ in range(runs):
        for label, args in CASES:
            samples[label].append(e.timed("run", "--rm", *args, IMAGE, "true"))
    return samples


def engine_rows(ctx: Context) -> list[Row]:
    rows: list[Row] = []
    runs = max(3, ctx.plan.runs // 2)
    engines: list[Engine] = []
    scratch = Path(tempfile.mkdtemp(prefix="skiff-bench-net-"))
    extra: Engine | None = None
    try:
        for e in ctx.engines:
            if isinstance(e, Dockerd):
                extra = BridgedDockerd(scratch / "dockerd")
                extra.start()
                skiffd = next(x for x in ctx.engines if isinstance(x, Skiffd))
                tar = scratch / "busybox.tar"
                skiffd.docker("save", "-o", str(tar), IMAGE)
                extra.docker("load", "-i", str(tar))
                engines.append(extra)
            else:
                engines.append(e)
        for e in engines:
            samples = _measure(e, runs)
            for label, s in samples.items():
                rows.append({"metric": f"network: run --rm true, {label}: median",
                             "engine": e.name, "value": statistics.median(s), "unit": "s",
                             "samples": [round(x, 6) for x in s]})
            cost = statistics.median(samples["bridge"]) - statistics.median(samples["none"])
            rows.append({"metric": "network: bridge set-up cost (bridge - none)",
                         "engine": e.name, "value": cost, "unit": "s"})
    finally:
        if extra is not None:
            with contextlib.suppress(Exception):
                extra.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    return rows
