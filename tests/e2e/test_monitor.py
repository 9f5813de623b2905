"""What skiff keeps per running container, through the stock CLI (issue 22):
skiff-monitor, the C program each shim becomes once the command runs.

Exit codes, deaths by signal, exec's codes and a container that exits while
no daemon is running all reach ``docker`` through it.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from skiff.plugins.isolation import monitor
from tests.daemon import Daemon, poll, running_daemon

pytestmark = pytest.mark.skipif(not monitor.available(), reason="skiff-monitor is not built")

#: issue 22's target for what skiff keeps per idle container
MAX_RSS_KB = 2048


@pytest.fixture(scope="module")
def skiffd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    base: Path = tmp_path_factory.mktemp("skiffd-monitor")
    with running_daemon(base, **{"storage-driver": "overlay2"}) as d:
        d.skiff("image", "bootstrap", "busybox")
        yield d


def _name() -> str:
    return f"monitor-{secrets.token_hex(4)}"


def _state(d: Daemon, name: str) -> dict:
    return json.loads(d.docker("inspect", "-f", "{{json .State}}", name, check=True).stdout)


def _watcher(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def _is_the_monitor(pid: int) -> bool:
    try:
        return os.path.realpath(f"/proc/{pid}/exe") == os.path.realpath(monitor.MONITOR_PATH)
    except OSError:
        return False


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Rss:"))


def test_a_running_container_is_watched_by_the_c_monitor(skiffd: Daemon) -> None:
    name = _name()
    skiffd.docker("run", "-d", "--name", name, "busybox", "sleep", "1000", check=True)
    try:
        pid = _state(skiffd, name)["Pid"]
        watcher = poll(lambda: _watcher(pid) if _is_the_monitor(_watcher(pid)) else None,
                       10, "the shim to become skiff-monitor")
        assert _rss_kb(watcher) < MAX_RSS_KB
        assert Path(f"/proc/{watcher}/comm").read_text().strip() == "skiff-monitor"
        # docker kill: SIGKILL, 128+9 through the monitor
        skiffd.docker("kill", name, check=True)
        assert skiffd.docker("wait", name, check=True).stdout.strip() == b"137"
        assert _state(skiffd, name)["ExitCode"] == 137
    finally:
        skiffd.docker("rm", "-f", name)


def test_exit_codes_of_run_and_exec(skiffd: Daemon) -> None:
    name = _name()
    assert skiffd.docker("run", "--rm", "busybox", "sh", "-c", "exit 3").returncode == 3
    skiffd.docker("run", "-d", "--name", name, "busybox", "sleep", "1000", check=True)
    try:
        assert skiffd.docker("exec", name, "sh", "-c", "exit 5").returncode == 5
        # an exec's process is not a PID 1: SIGTERM kills it
        assert skiffd.docker("exec", name, "sh", "-c", "kill -TERM $$").returncode == 143
        assert skiffd.docker("exec", name, "echo", "ok", check=True).stdout == b"ok\n"
    finally:
        skiffd.docker("rm", "-f", name)


def test_an_exit_while_no_daemon_runs_keeps_its_code(skiffd: Daemon) -> None:
    """skiffd killed; the container ends on its own meanwhile with 4: its monitor
    recorded 4, and the restarted daemon reports 4, not 137."""
    name = _name()
    cid = skiffd.docker("run", "-d", "--name", name, "busybox", "sh", "-c",
                        "sleep 1; exit 4", check=True).stdout.decode().strip()
    try:
        assert skiffd.proc is not None
        skiffd.proc.kill()
        skiffd.proc.wait()
        skiffd.proc = None
        exitcode = Path(skiffd.config["exec-root"]) / "containers" / cid / "exitcode"
        poll(exitcode.exists, 10, "the monitor to record the exit")
        assert exitcode.read_text() == "4\n"
        skiffd.start()
        state = _state(skiffd, name)
        assert state["Status"] == "exited" and state["ExitCode"] == 4, state
    finally:
        if skiffd.proc is None:
            skiffd.start()
        skiffd.docker("rm", "-f", name)
