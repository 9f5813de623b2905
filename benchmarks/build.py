"""The builder (issue 16): ``docker build`` on skiffd against dockerd, interleaved.

The stock CLI's classic builder (``DOCKER_BUILDKIT=0``) sends the same
context to each engine in turn, A B A B ...; every RUN uses ``--network
none`` on both (dockerd has no bridge here).  Each row is the median of a few
rounds of the whole ``docker build`` command, context upload included:

- ``build_cold``: FROM and three steps (RUN, COPY, RUN) with ``--no-cache``;
- ``build_warm``: the same build again, every step a cache hit (primed by one
  build that is not measured);
- ``build_parallel``: two stages that do not depend on each other (a RUN of
  ``sleep 1`` each) and a final stage copying from both, ``--no-cache``:
  dockerd builds the stages one after the other, skiff at once;
- ``build_ctx_rehash``: the warm build of a context of many small files,
  where the stat index spares re-hashing files unchanged since the last
  build (dockerd hashes every file of every build); both engines still
  unpack every file of the context to disk, which is most of the time.

Targets (issue 16): cold at most half of dockerd's time, warm at most a third.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.engines import DOCKER_CLI, Engine, EngineError

if TYPE_CHECKING:
    from benchmarks.engine import Context

ROUNDS = {"full": 7, "quick": 3, "smoke": 1}
REHASH_FILES = {"full": 2000, "quick": 2000, "smoke": 50}

THREE_STEPS = """\
FROM busybox:latest
RUN echo one > /one
COPY data.txt /data.txt
RUN cat /one /data.txt > /two
"""

PARALLEL = """\
FROM busybox:latest AS left
RUN sleep 1 && echo left > /left
FROM busybox:latest AS right
RUN sleep 1 && echo right > /right
FROM busybox:latest
COPY --from=left /left /left
COPY --from=right /right /right
"""

REHASH = """\
FROM busybox:latest
COPY . /ctx/
RUN ls /ctx | wc -l > /count
"""


def docker_build(e: Engine, context: Path, *flags: str) -> float:
    """Seconds of one ``docker build`` with the classic builder; it must succeed."""
    env = e.env()
    env["DOCKER_BUILDKIT"] = "0"
    t0 = time.perf_counter()
    res = subprocess.run([DOCKER_CLI, "build", "--network", "none", *flags, str(context)],
                         env=env, capture_output=True, timeout=600)
    took = time.perf_counter() - t0
    if res.returncode != 0:
        raise EngineError(f"{e.name}: docker build {' '.join(flags)} failed "
                          f"({res.returncode}): {res.stderr.decode(errors='replace')[-2000:]}"
                          f"{res.stdout.decode(errors='replace')[-2000:]}")
    return took


def _context(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True)
    for name, text in files.items():
        (root / name).write_text(text)
    return root


def _rows(metric: str, samples: dict[str, list[float]]) -> list[dict[str, Any]]:
    return [{"metric": f"{metric}: median", "engine": name, "value": statistics.median(s),
             "unit": "s", "samples": [round(x, 6) for x in s]}
            for name, s in samples.items() if s]


def _measure(context: Path, flags: tuple[str, ...], engines: Sequence[Engine],
             rounds: int, prime: bool) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {e.name: [] for e in engines}
    if prime:  # the cache the warm rounds hit: made, not measured
        for e in engines:
            docker_build(e, context, *flags)
    for _ in range(rounds):
        for e in engines:
            samples[e.name].append(docker_build(e, context, *flags))
    return samples


def engine_rows(ctx: Context) -> list[dict[str, Any]]:
    """The build rows; every engine's images of these builds are removed after."""
    rounds = ROUNDS[ctx.mode]
    scratch = Path(tempfile.mkdtemp(prefix="skiff-bench-build-"))
    tag = f"bench-build-{secrets.token_hex(3)}"
    rows: list[dict[str, Any]] = []
    try:
        # a token in every context: no cache from an earlier run of the harness
        tok = secrets.token_hex(4)
        three = _context(scratch / "three", {"Dockerfile": THREE_STEPS,
                                             "data.txt": f"data {tok}\n" * 100})
        parallel = _context(scratch / "parallel", {"Dockerfile": PARALLEL,
                                                   "token": tok})
        files = {"Dockerfile": REHASH}
        files.update({f"f{i:05d}.txt": f"{tok} {i}\n" * 64 for i in range(REHASH_FILES[ctx.mode])})
        rehash = _context(scratch / "rehash", files)

        cold = _measure(three, ("--no-cache", "-t", f"{tag}:cold"), ctx.engines, rounds,
                        prime=False)
        rows += _rows("build_cold: FROM + 3 steps, --no-cache", cold)
        warm = _measure(three, ("-t", f"{tag}:warm"), ctx.engines, rounds, prime=True)
        rows += _rows("build_warm: FROM + 3 steps, all cached", warm)
        par = _measure(parallel, ("--no-cache", "-t", f"{tag}:parallel"), ctx.engines,
                       rounds, prime=False)
        rows += _rows("build_parallel: 2 independent stages + final, --no-cache", par)
        re_hash = _measure(rehash, ("-t", f"{tag}:rehash"), ctx.engines, rounds, prime=True)
        rows += _rows(f"build_ctx_rehash: warm build, {REHASH_FILES[ctx.mode]}-file context",
                      re_hash)
    finally:
        for e in ctx.engines:
            with contextlib.suppress(Exception):
                for kind in ("cold", "warm", "parallel", "rehash"):
                    e.docker("rmi", "-f", f"{tag}:{kind}", check=False)
                # the untagged images of the cold rounds and the stages
                e.docker("image", "prune", "-f", check=False)
        shutil.rmtree(scratch, ignore_errors=True)
    for row in rows:
        ctx.log(f"  {row['metric']} [{row['engine']}]: {row['value']:.4g} {row['unit']}")
    return rows
