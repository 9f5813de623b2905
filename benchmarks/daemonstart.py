"""The daemon's own start: exec of the engine to its first answered ``/_ping``.

An extra of ``python -m benchmarks engine`` (``--only daemonstart``).  Each
round stops every engine with SIGTERM (its state kept, as after a reboot or an
upgrade) and times the next start to the first ``/_ping``, interleaved A B A B.
Every test that starts a skiffd pays this, and the chaos test pays it per kill
point (tests/e2e/test_chaos.py).

For skiffd the median is split: the interpreter's own start (``python -c
pass``), the imports the start needs, loading the plugins (entry points and
their modules), and the rest (configuration, the engine's start: stores,
reconciliation, the fork server, network restore; the socket), each measured
by a separate process from the same venv.
"""

from __future__ import annotations

import signal
import statistics
import subprocess
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from benchmarks.engine import Context
    from benchmarks.report import Row

ROUNDS = {"full": 10, "quick": 5, "smoke": 1}
#: what skiffd's start imports before it serves (core/daemon.py ``serve``)
IMPORTS = ("import skiff.core.daemon; from skiff.core.api.app import build_router; "
           "from skiff.core.api.http import serve_unix; "
           "from skiff.core.api.metricsserver import describe_engine; "
           "from skiff.core.engine import Engine")
PLUGINS = ("; import time; from skiff.core.plugins import load_plugins; "
           "t = time.perf_counter(); load_plugins(); print(time.perf_counter() - t)")


def _restart(e: object) -> float:
    """Seconds from exec to the first answered ``/_ping`` after a SIGTERM stop."""
    proc = e.proc  # type: ignore[attr-defined]
    if proc is not None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    t0 = time.perf_counter()
    e.start()  # type: ignore[attr-defined]
    return time.perf_counter() - t0


def _seconds(python: str, code: str, rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        subprocess.run([python, "-c", code], check=True, capture_output=True)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def _plugin_seconds(python: str, rounds: int) -> float:
    return statistics.median(
        float(subprocess.run([python, "-c", IMPORTS + PLUGINS], check=True,
                             capture_output=True, text=True).stdout)
        for _ in range(rounds))


def engine_rows(ctx: Context) -> list[Row]:
    rounds = ROUNDS.get(ctx.mode, 1)
    samples: dict[str, list[float]] = {e.name: [] for e in ctx.engines}
    for _, e in ctx.interleaved(rounds):
        samples[e.name].append(_restart(e))
    rows: list[Row] = []
    for name, got in samples.items():
        rows.append({"metric": "skiffd start to first /_ping (dockerd: its own start)",
                     "engine": name, "value": statistics.median(got), "unit": "s",
                     "samples": [round(s, 3) for s in got]})
        ctx.log(f"  {name}: start to first /_ping, median {statistics.median(got):.2f} s")
    python = next((getattr(e, "python", "") for e in ctx.engines if e.name == "skiffd"),
                  "") or sys.executable
    interpreter = _seconds(python, "pass", rounds)
    imports = _seconds(python, IMPORTS, rounds) - interpreter
    plugins = _plugin_seconds(python, rounds)
    total = statistics.median(samples.get("skiffd", [0.0]))
    for part, value in (("interpreter", interpreter), ("imports", imports),
                        ("plugin loading", plugins),
                        ("config, engine start, socket (the rest)",
                         max(total - interpreter - imports - plugins, 0.0))):
        rows.append({"metric": f"skiffd start: {part}", "engine": "skiffd", "value": value,
                     "unit": "s"})
    return rows
