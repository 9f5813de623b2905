"""What skiffd's start imports (issue 21: start-up time).  Each module named
here cost tens of milliseconds of every start (and of every chaos kill point)
until it was left to the first request that needs it; a change that brings one
back onto the start's path fails here, naming who imported it."""

from __future__ import annotations

import os
import subprocess
import sys

from benchmarks.daemonstart import IMPORTS

#: imported by the first use, never by the start
NOT_AT_START = (
    "rich",  # structlog's console tracebacks (core/__init__.py)
    "asyncio",  # structlog's a* methods; pyroute2 (the first container's join)
    "pyroute2",  # the bridge's start goes through links.py
    "httpx",  # the cluster store's client
    "grpc",  # the CRI, when daemon.json asks for it
    "wsproto",  # the websocket attach
    "skiff.core.dockerfile.instructions",  # the builder
    "skiff.core.builder.executor",
)

_SCRIPT = IMPORTS + r"""
import sys
from skiff.core.plugins import load_plugins
load_plugins()
print("\n".join(sorted(sys.modules)))
"""


def test_the_start_leaves_the_heavy_imports_to_their_first_use() -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    res = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True,
                         timeout=120, env=env)
    assert res.returncode == 0, res.stderr
    loaded = set(res.stdout.split())
    assert "skiff.core.engine" in loaded and "structlog" in loaded
    early = [m for m in NOT_AT_START if m in loaded]
    assert not early, f"imported by skiffd's start: {early}"


def test_structlog_still_works_with_what_it_was_not_given() -> None:
    """The stand-in asyncio hands over to the real one (structlog's ``a*``
    methods), and rich, hidden from structlog, is importable afterwards."""
    code = r"""
import sys
import skiff.core, structlog
assert "asyncio" not in sys.modules and "rich" not in sys.modules
import asyncio
structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stdout))
async def main():
    await structlog.get_logger().ainfo("handed over")
asyncio.run(main())
import rich
print(rich.__name__)
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    assert "handed over" in res.stdout and res.stdout.split()[-1] == "rich"


def test_the_fork_server_imports_no_logging() -> None:
    """The lean structlog import is a hook, not an import: the fork server
    (its own interpreter, started with every daemon) never loads structlog."""
    code = ("import sys, skiff.plugins.isolation.forkserver; "
            "print(sorted(m for m in ('structlog', 'trio', 'importlib.resources') "
            "if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"
