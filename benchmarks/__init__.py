"""Benchmarks: skiffd against dockerd, and the storage drivers against each other.

Run ``python -m benchmarks engine [--quick] [--out DIR]`` or
``python -m benchmarks storage [--quick] [--out DIR]`` as root from the repo.

Contract for contributed modules:

- ``benchmarks/storage.py``: ``run(quick: bool, out_dir: Path) -> list[dict]``,
  rows ``{"metric", "driver", "value", "unit"}``.
- engine extras (``benchmarks/{exec,network,pull,build}.py``): an optional
  ``engine_rows(ctx: benchmarks.engine.Context) -> list[dict]``, rows
  ``{"metric", "engine", "value", "unit"}``; ``ctx.engines`` are running
  engines with busybox:latest loaded (``e.name``, ``e.docker(...)``,
  ``e.timed(...)``), ``ctx.interleaved(rounds)`` gives the A B A B order and
  ``ctx.mode`` is ``full``, ``quick`` or ``smoke``.

Units that end in ``/s`` are better higher; all others lower.
"""

import os

# The engines measured start Python processes (skiffd, its fork server, the
# CLI): without bytecode each compiles skiff again, which would be measured
# as their start.  Cached outside the tree, as the tests do (tests/conftest.py).
if os.environ.pop("PYTHONDONTWRITEBYTECODE", None) is not None:
    os.environ.setdefault("PYTHONPYCACHEPREFIX", "/var/tmp/skiff-pycache")

