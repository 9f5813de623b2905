"""Session-wide guards shared by every test folder.

The leak check snapshots what a test run could leave on the host (mounts,
network namespaces, links, cgroups, skiff processes) before the session and
fails the run if anything new is still there after it.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# The daemons, fork servers and CLIs the tests start are Python processes
# that import most of skiff: without bytecode each would compile it again
# (about 2 s a skiffd start here).  Kept outside the tree, as scripts/test.sh.
if os.environ.pop("PYTHONDONTWRITEBYTECODE", None) is not None:
    os.environ.setdefault("PYTHONPYCACHEPREFIX", "/var/tmp/skiff-pycache")


def _mounts() -> set[str]:
    with open("/proc/self/mountinfo") as f:
        return {line.split()[4] for line in f}


def _netns() -> set[str]:
    try:
        return set(os.listdir("/run/netns"))
    except FileNotFoundError:
        return set()


def _links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line}


def _cgroups() -> set[str]:
    found = set()
    base = Path("/sys/fs/cgroup")
    for top in base.iterdir() if base.exists() else []:
        for p in [top, *(top.iterdir() if top.is_dir() else [])]:
            if p.is_dir() and "skiff" in p.name:
                found.add(str(p))
    return found


_OURS = re.compile(r"skiffd|skiff\.plugins\.isolation|skiff-shim|skiff-init|skiff-monitor")


def _processes() -> set[str]:
    found = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if _OURS.search(cmd) and "pytest" not in cmd:
            found.add(f"{pid} {cmd.strip()}")
    return found


def _firewall() -> set[str]:
    """skiff's iptables chains and rules (``SKIFF*``, ``skiff:<bridge>`` comments)."""
    try:
        res = subprocess.run(["iptables-save"], capture_output=True, text=True)
    except FileNotFoundError:
        return set()
    return {line for line in res.stdout.splitlines()
            if "SKIFF" in line or "skiff:" in line}


def snapshot() -> dict[str, set[str]]:
    return {"mounts": _mounts(), "netns": _netns(), "links": _links(),
            "cgroups": _cgroups(), "processes": _processes(), "firewall": _firewall()}


@pytest.fixture(scope="session", autouse=True)
def leak_check() -> object:
    """Fail the session when tests leave mounts, namespaces, links, cgroups or processes."""
    before = snapshot()
    yield
    after = snapshot()
    leaks = {kind: sorted(after[kind] - before[kind]) for kind in after}
    leaks = {k: v for k, v in leaks.items() if v}
    if leaks:
        pytest.fail(f"the test session left these behind: {leaks}", pytrace=False)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="needs root: real mounts, namespaces and cgroups")
        for item in items:
            if "unit" not in item.nodeid.split(os.sep)[1:2]:
                item.add_marker(skip)


_FILE_SECONDS: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # setup and teardown count too: that is where module-scoped daemons start and stop
    path = report.nodeid.split("::", 1)[0]
    _FILE_SECONDS[path] = _FILE_SECONDS.get(path, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The files that cost the most wall time, so CI's length can be worked on."""
    if len(_FILE_SECONDS) < 20:
        return  # a targeted run: the per-test --durations are enough
    total = sum(_FILE_SECONDS.values())
    terminalreporter.section("slowest test files (setup + call + teardown)")
    for path, secs in sorted(_FILE_SECONDS.items(), key=lambda kv: -kv[1])[:25]:
        terminalreporter.write_line(f"{secs:8.1f}s {100 * secs / total:5.1f}%  {path}")
    terminalreporter.write_line(f"{total:8.1f}s in all, {len(_FILE_SECONDS)} files")
