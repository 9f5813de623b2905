"""How the engines' costs grow as containers pile up (issue 22's scale rows).

An extra of ``python -m benchmarks engine`` (``engine_rows``; ``--only scale``).
Per engine, in one run, the engines interleaved where a row is timed:

- ``run --rm true`` (CLI) with 0, 100, 200 and 500 idle containers running
  (``sleep``, ``--network none``): the median of several runs at each level,
  and the engine's RSS and PSS (daemon and every process it keeps per
  container) at 200 idle;
- ``docker ps -a`` (CLI) and ``GET /containers/json?all=1`` (API) with 1,000
  containers (created, not started);
- creating those 1,000 containers, then removing them, one request after the
  other on one connection: seconds for each thousand.

The idle containers are started through the API (create, start), so that
filling the engine costs minutes, not the CLI's start-up a thousand times.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from benchmarks.engine import IMAGE, RUN, _api, _memory, _UnixHTTP

if TYPE_CHECKING:
    from benchmarks.engine import Context
    from benchmarks.engines import Engine
    from benchmarks.report import Row


@dataclass(frozen=True)
class ScalePlan:
    idle: tuple[int, ...]  #: idle containers running while ``run --rm`` is timed
    runs: int  #: ``run --rm`` samples per level and engine
    memory_at: int  #: the idle level whose memory is recorded
    listed: int  #: containers for the ps and create/rm rows
    ps_runs: int


PLANS = {
    "full": ScalePlan(idle=(0, 100, 200, 500), runs=10, memory_at=200, listed=1000, ps_runs=5),
    "quick": ScalePlan(idle=(0, 100), runs=5, memory_at=100, listed=300, ps_runs=3),
    "smoke": ScalePlan(idle=(0, 2), runs=2, memory_at=2, listed=3, ps_runs=1),
}

IDLE_BODY = {"Image": IMAGE, "Cmd": ["sleep", "100000"], "HostConfig": {"NetworkMode": "none"}}
CREATED_BODY = {"Image": IMAGE, "Cmd": ["true"], "HostConfig": {"NetworkMode": "none"}}


def _start_idle(e: Engine, conn: _UnixHTTP, n: int) -> None:
    for _ in range(n):
        cid = _api(e, "POST", "/containers/create", IDLE_BODY, conn)["Id"]
        _api(e, "POST", f"/containers/{cid}/start", None, conn)


def _timed_api(e: Engine, path: str) -> float:
    conn = _UnixHTTP(e.socket)
    try:
        t0 = time.perf_counter()
        _api(e, "GET", path, None, conn)
        return time.perf_counter() - t0
    finally:
        conn.close()


def idle_levels(ctx: Context, plan: ScalePlan) -> list[Row]:
    rows: list[Row] = []
    conns = {e.name: _UnixHTTP(e.socket) for e in ctx.engines}
    running = {e.name: 0 for e in ctx.engines}
    try:
        for level in plan.idle:
            for e in ctx.engines:
                t0 = time.perf_counter()
                _start_idle(e, conns[e.name], level - running[e.name])
                ctx.log(f"  {e.name}: {level} idle ({time.perf_counter() - t0:.1f} s to add "
                        f"{level - running[e.name]})")
                running[e.name] = level
            time.sleep(2)  # the starts' after-work behind us
            samples: dict[str, list[float]] = {e.name: [] for e in ctx.engines}
            for _, e in ctx.interleaved(plan.runs):
                samples[e.name].append(e.timed(*RUN, "true"))
            for name, s in samples.items():
                rows.append({"metric": f"scale: run --rm true with {level} idle running, median",
                             "engine": name, "value": statistics.median(s), "unit": "s",
                             "samples": [round(x, 6) for x in s]})
            if level == plan.memory_at:
                for e in ctx.engines:
                    rss, pss, nproc, _ = _memory(e)
                    rows += [
                        {"metric": f"scale: engine RSS with {level} idle", "engine": e.name,
                         "value": rss, "unit": "MB", "processes": nproc},
                        {"metric": f"scale: engine PSS with {level} idle", "engine": e.name,
                         "value": pss, "unit": "MB"},
                    ]
    finally:
        for c in conns.values():
            c.close()
        for e in ctx.engines:
            e.remove_all_containers()
    return rows


def listing(ctx: Context, plan: ScalePlan) -> list[Row]:
    rows: list[Row] = []
    n = plan.listed
    made: dict[str, list[str]] = {}
    try:
        for e in ctx.engines:
            conn = _UnixHTTP(e.socket)
            t0 = time.perf_counter()
            ids = [_api(e, "POST", "/containers/create", CREATED_BODY, conn)["Id"]
                   for _ in range(n)]
            created = time.perf_counter() - t0
            conn.close()
            rows.append({"metric": f"scale: create x{n} (API, one connection)",
                         "engine": e.name, "value": created, "unit": "s"})
            made[e.name] = ids
        ps: dict[str, list[float]] = {e.name: [] for e in ctx.engines}
        api: dict[str, list[float]] = {e.name: [] for e in ctx.engines}
        for _, e in ctx.interleaved(plan.ps_runs):
            ps[e.name].append(e.timed("ps", "-a"))
            api[e.name].append(_timed_api(e, "/containers/json?all=1"))
        for e in ctx.engines:
            rows += [
                {"metric": f"scale: docker ps -a with {n} containers, median",
                 "engine": e.name, "value": statistics.median(ps[e.name]), "unit": "s"},
                {"metric": f"scale: GET /containers/json?all=1 with {n}, median",
                 "engine": e.name, "value": statistics.median(api[e.name]), "unit": "s"},
            ]
        for e in ctx.engines:
            conn = _UnixHTTP(e.socket)
            t0 = time.perf_counter()
            for cid in made[e.name]:
                _api(e, "DELETE", f"/containers/{cid}", None, conn)
            rows.append({"metric": f"scale: rm x{n} (API, one connection)", "engine": e.name,
                         "value": time.perf_counter() - t0, "unit": "s"})
            conn.close()
    finally:
        for e in ctx.engines:
            e.remove_all_containers()
    return rows


def engine_rows(ctx: Context) -> list[Row]:
    plan = PLANS.get(ctx.mode, PLANS["smoke"])
    for e in ctx.engines:
        e.remove_all_containers()
    return idle_levels(ctx, plan) + listing(ctx, plan)
