"""Log workloads of ``python -m benchmarks engine`` (``--only logs``), per log driver.

For each driver in :data:`DRIVERS` and each engine, in one run:

- a container prints N lines (``seq 1 N``): until it exits, then until
  ``docker logs`` has read them all (the client's time included, output
  counted as it streams);
- ``docker logs --tail 10`` of a big log (1 GB in the full plan): constant
  time if the reader starts from the end;
- write throughput: ``yes | head -c SIZE`` (500 MB in the full plan) into
  the log, run until exit, as MB/s of container output.

The driver is a parameter (``--log-driver`` and its options per row): once a
driver is installed on both engines (``local``, say), adding it to
:data:`DRIVERS` adds its rows.  json-file's rows keep their historic names.
"""

from __future__ import annotations

import statistics
import subprocess
import time
from typing import TYPE_CHECKING

from benchmarks.engines import DOCKER_CLI, Engine, EngineError

if TYPE_CHECKING:
    from benchmarks.engine import Context

IMAGE = "busybox:latest"

#: driver -> the ``--log-opt``s its rows use on every engine
DRIVERS: dict[str, tuple[str, ...]] = {
    "json-file": (),
    "local": (),
}
#: bytes of the big log read with --tail, per harness mode
BIG_LOG = {"full": 1_000_000_000, "quick": 200_000_000, "smoke": 2_000_000}
#: bytes written by ``yes`` for the throughput row, per harness mode
WRITE = {"full": 500_000_000, "quick": 20_000_000, "smoke": 2_000_000}
TAIL_ROUNDS = 5


def _opts(driver: str, extra: tuple[str, ...] = ()) -> list[str]:
    opts = ["--log-driver", driver]
    for opt in DRIVERS[driver] + extra:
        opts += ["--log-opt", opt]
    return opts


def _label(driver: str, metric: str) -> str:
    return f"logs: {metric}" if driver == "json-file" else f"logs ({driver}): {metric}"


def _one_file(driver: str) -> tuple[str, ...]:
    """Options that keep every line on every engine (skiff's json-file is bounded by
    default, dockerd 20.10 refuses max-size=-1): one file bigger than any row writes."""
    return ("max-size=4g",) if driver == "json-file" else ()


def _count_lines(e: Engine, *args: str) -> int:
    proc = subprocess.Popen([DOCKER_CLI, "logs", *args], env=e.env(),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    count = 0
    while chunk := proc.stdout.read(1 << 20):
        count += chunk.count(b"\n")
    if proc.wait() != 0:
        raise EngineError(f"{e.name}: docker logs {' '.join(args)} failed")
    return count


def _run_until_exit(e: Engine, *args: str) -> tuple[str, float]:
    t0 = time.perf_counter()
    cid = e.docker("run", "-d", "--network", "none", *args).stdout.decode().strip()
    e.docker("wait", cid, timeout=3600)
    return cid, time.perf_counter() - t0


def lines_rows(ctx: Context, driver: str) -> None:
    """``seq 1 N``: the run until exit, then ``docker logs`` reading every line."""
    n = ctx.plan.log_lines
    write: dict[str, list[float]] = {e.name: [] for e in ctx.engines}
    read: dict[str, list[float]] = {e.name: [] for e in ctx.engines}
    for _, e in ctx.interleaved(ctx.plan.log_rounds):
        cid, wrote = _run_until_exit(e, *_opts(driver, _one_file(driver)), IMAGE, "seq", "1",
                                     str(n))
        t1 = time.perf_counter()
        got = _count_lines(e, cid)
        t2 = time.perf_counter()
        e.docker("rm", cid)
        if got != n:
            raise EngineError(f"{e.name}: docker logs returned {got} lines, not {n}")
        write[e.name].append(wrote)
        read[e.name].append(t2 - t1)
    label = f"{n:,}".replace(",", "_")
    for name in write:
        w, r = statistics.median(write[name]), statistics.median(read[name])
        ctx.add(_label(driver, f"{label} lines, run -d until exit"), name, w, "s")
        ctx.add(_label(driver, f"{label} lines, docker logs reads all"), name, r, "s")
        ctx.add(_label(driver, f"{label} lines, total"), name,
                statistics.median([a + b for a, b in zip(write[name], read[name],
                                                         strict=True)]), "s")


def tail_rows(ctx: Context, driver: str) -> None:
    """``docker logs --tail 10`` of a log of ``BIG_LOG`` bytes of 100-byte lines."""
    size = BIG_LOG.get(ctx.mode, BIG_LOG["smoke"])
    lines = size // 100
    script = f'BEGIN {{ s = sprintf("%93s", ""); for (i = 0; i < {lines}; i++) ' \
             f'printf "%06d%s\\n", i % 1000000, s }}'
    for e in ctx.engines:
        cid, _ = _run_until_exit(e, *_opts(driver, _one_file(driver)), IMAGE, "awk", script)
        try:
            samples = []
            for _ in range(TAIL_ROUNDS):
                t0 = time.perf_counter()
                got = _count_lines(e, "--tail", "10", cid)
                samples.append(time.perf_counter() - t0)
                if got != 10:
                    raise EngineError(f"{e.name}: --tail 10 gave {got} lines")
        finally:
            e.docker("rm", "-f", cid, check=False)
        ctx.add(_label(driver, f"docker logs --tail 10 of a {size / 1e6:,.0f} MB log"),
                e.name, statistics.median(samples), "s")


def write_rows(ctx: Context, driver: str) -> None:
    """``yes | head -c SIZE``: what a container can write to its log, in MB/s."""
    size = WRITE.get(ctx.mode, WRITE["smoke"])
    # the same rotation on both engines: the disk stays bounded, the work the same
    extra = ("max-size=10m", "max-file=5") if driver == "json-file" else ()
    for e in ctx.engines:
        cid, took = _run_until_exit(e, *_opts(driver, extra), IMAGE, "sh", "-c",
                                    f"yes | head -c {size}")
        e.docker("rm", "-f", cid, check=False)
        # (no "|" in a metric: it is a Markdown table cell)
        ctx.add(_label(driver, f"write throughput, yes into head -c {size / 1e6:,.0f}M"),
                e.name, size / 1e6 / took, "MB/s")


def logs(ctx: Context) -> None:
    for driver in DRIVERS:
        for rows in (lines_rows, tail_rows, write_rows):
            try:
                rows(ctx, driver)
            except EngineError as exc:  # one failing row must not void the others
                ctx.log(f"  {rows.__name__} ({driver}) failed: {exc}")
