"""Healthcheck cost: the engine's CPU while containers are probed every second.

An extra of ``python -m benchmarks engine`` (``engine_rows``).  Per engine,
N containers (``--network none``) sleep, first without a check, then with
``--health-cmd true --health-interval 1s``; over the same window the CPU
time of the engine's processes (everything under its folder: skiffd, its
fork server and shims; dockerd, containerd and its shims), the CPU their
reaped children used included, as a share of one CPU.  The difference, per
probe, is what one probe costs the engine: comparable with a ``docker exec``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from benchmarks.engine import Context
    from benchmarks.report import Row

IMAGE = "busybox:latest"
#: containers probed, and the seconds CPU is counted over, per harness mode
CONTAINERS = {"full": 100, "quick": 100, "smoke": 2}
WINDOW = {"full": 30.0, "quick": 10.0, "smoke": 2.0}
INTERVAL = 1.0
CHECK = ("--health-cmd", "true", "--health-interval", "1s")
#: how long all the containers may take to become healthy
SETTLE = 180.0

Docker = Callable[..., Any]


def cpu_seconds(pids: Iterable[int]) -> float:
    """utime + stime + cutime + cstime of ``pids`` (gone ones count 0)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        total += sum(int(v) for v in fields[11:15])  # stat fields 14 to 17
    return total / ticks


def _healthy(docker: Docker) -> int:
    res = docker("ps", "-q", "--filter", "health=healthy", check=False)
    return len(res.stdout.decode().split())


def engine_cpu(docker: Docker, pids: Callable[[], list[int]], containers: int,
               window: float, checked: bool) -> float:
    """The engine's CPU share (1.0: one CPU) over ``window`` with ``containers``
    sleeping, each probed every second when ``checked``."""
    flags = CHECK if checked else ()
    ids: list[str] = []
    try:
        for _ in range(containers):
            res = docker("run", "-d", "--network", "none", *flags, IMAGE, "sleep", "3600")
            ids.append(res.stdout.decode().strip())
        if checked:
            deadline = time.monotonic() + SETTLE
            while _healthy(docker) < containers:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{containers} containers not healthy in {SETTLE}s")
                time.sleep(0.5)
        else:
            time.sleep(INTERVAL)  # the starts' work behind us, as with the checks
        # the tree is listed at both ends: a probe's shim may come and go between
        before, t0 = cpu_seconds(pids()), time.monotonic()
        time.sleep(window)
        after, elapsed = cpu_seconds(pids()), time.monotonic() - t0
        return max(after - before, 0.0) / elapsed
    finally:
        if ids:
            docker("rm", "-f", *ids, check=False, timeout=600)


def engine_rows(ctx: Context) -> list[Row]:
    n = CONTAINERS.get(ctx.mode, 2)
    window = WINDOW.get(ctx.mode, 2.0)
    rows: list[Row] = []
    for e in ctx.engines:
        def tree(e: Any = e) -> list[int]:
            return [p.pid for p in e.processes()]

        e.remove_all_containers()
        idle = engine_cpu(e.docker, tree, n, window, checked=False)
        probed = engine_cpu(e.docker, tree, n, window, checked=True)
        per_probe = max(probed - idle, 0.0) * INTERVAL / n
        ctx.log(f"  {e.name}: {n} containers, CPU {idle:.1%} idle, {probed:.1%} probed")
        rows += [
            {"metric": f"health: engine CPU, {n} containers, no check", "engine": e.name,
             "value": idle * 100, "unit": "% CPU"},
            {"metric": f"health: engine CPU, {n} containers probed every 1 s",
             "engine": e.name, "value": probed * 100, "unit": "% CPU"},
            {"metric": "health: engine CPU per probe", "engine": e.name,
             "value": per_probe, "unit": "s"},
        ]
    return rows
