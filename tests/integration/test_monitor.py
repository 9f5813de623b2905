"""skiff-monitor: what watches a running container once its shim is done (issue 22).

The shim execve()s the C monitor after the command started; these tests look
at the process that is left (its binary, its memory, its record in the
bundle) and prove that exit codes and deaths by signal still reach the
daemon's side through it, and that the Python fallback still works.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import trio

from skiff.core.containers import pidproof
from skiff.core.hookspecs import ExecSpec, RuntimeContext, Stdio
from skiff.plugins.isolation import monitor
from skiff.plugins.isolation.runtime import ForkServerRuntime
from tests.integration.runtimekit import (
    PATH_ENV,
    make_spec,
    ns_paths,
    pid_alive,
    running,
)

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="the runtime needs root"),
              pytest.mark.skipif(not monitor.available(), reason="skiff-monitor is not built"),
              pytest.mark.usefixtures("no_leaks")]

#: the targets of issue 22 for what skiff keeps per idle container
MAX_RSS_KB = 2048
MAX_PSS_KB = 1024


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def _memory_kb(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return {line.split(":")[0]: int(line.split()[1]) for line in f
                if line.split(":")[0] in ("Rss", "Pss")}


def _assert_c_monitor(pid: int) -> int:
    """The watcher of ``pid`` is skiff-monitor, small; its pid."""
    watcher = _parent(pid)
    assert os.path.realpath(f"/proc/{watcher}/exe") == os.path.realpath(monitor.MONITOR_PATH)
    assert Path(f"/proc/{watcher}/comm").read_text().strip() == monitor.MONITOR_NAME
    memory = _memory_kb(watcher)
    assert memory["Rss"] < MAX_RSS_KB, memory
    assert memory["Pss"] < MAX_PSS_KB, memory
    return watcher


async def _wait_for_monitor(pid: int, bundle: Path | None = None) -> int:
    """The shim becomes the monitor just after it reported the start (and the
    monitor writes its record first thing)."""
    with trio.fail_after(5):
        while os.path.basename(os.readlink(f"/proc/{_parent(pid)}/exe")) != monitor.MONITOR_NAME \
                or (bundle is not None and not (bundle / monitor.MONITOR_RECORD).exists()):
            await trio.sleep(0.005)
    return _parent(pid)


def test_an_idle_container_is_watched_by_the_c_monitor(
    runtime: ForkServerRuntime, image: Path, tmp_path: Path
) -> None:
    bundle = tmp_path / "b"

    async def main() -> tuple[int, int, int]:
        async with running(runtime, make_spec(image, bundle, ["sleep", "1000"])) as c:
            watcher = await _wait_for_monitor(c.pid, bundle)
            assert _assert_c_monitor(c.pid) == watcher
            record = json.loads((bundle / monitor.MONITOR_RECORD).read_text())
            assert record == {"monitor": "skiff-monitor", "protocol": monitor.PROTOCOL,
                              "pid": watcher, "start": pidproof.start_time(watcher),
                              "init": c.pid}
            c.kill(signal.SIGKILL)
            return await c.wait(), watcher, c.pid

    code, watcher, pid = trio.run(main)
    assert code == 137  # SIGKILL, through the monitor
    assert (bundle / "exitcode").read_text() == "137\n"
    assert not pid_alive(pid)
    deadline = time.monotonic() + 5
    while pid_alive(watcher) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert not pid_alive(watcher)  # it exits once it reported
    assert sorted(p.name for p in bundle.iterdir() if p.name.startswith(".")) == []


def test_an_exit_code_comes_through_the_monitor(
    runtime: ForkServerRuntime, image: Path, tmp_path: Path
) -> None:
    bundle = tmp_path / "b"

    async def main() -> int:
        r, w = os.pipe()
        null = os.open("/dev/null", os.O_RDWR)
        try:
            proc = await runtime.prepare(make_spec(image, bundle, ["sh", "-c", "read x; exit 7"]),
                                         Stdio(r, null, null))
        finally:
            os.close(null)
            os.close(r)
        await proc.go()
        await _wait_for_monitor(proc.pid)
        _assert_c_monitor(proc.pid)
        os.write(w, b"now\n")
        os.close(w)
        return await proc.wait()

    assert trio.run(main) == 7
    assert (bundle / "exitcode").read_text() == "7\n"


def test_a_death_by_signal_of_an_exec_comes_through_the_monitor(
    runtime: ForkServerRuntime, image: Path, tmp_path: Path
) -> None:
    # an exec's process is not a PID 1: SIGTERM kills it, 128+15
    spec = make_spec(image, tmp_path / "b", ["sleep", "1000"])

    async def main() -> int:
        async with running(runtime, spec) as container:
            null = os.open("/dev/null", os.O_RDWR)
            try:
                proc = await runtime.exec(ExecSpec(
                    id="e" * 64, container_id=spec.id, container_pid=container.pid,
                    namespaces=ns_paths(container.pid), args=["sleep", "1000"],
                    env=[PATH_ENV]), Stdio(null, null, null))
            finally:
                os.close(null)
            await proc.go()
            await _wait_for_monitor(proc.pid)
            _assert_c_monitor(proc.pid)
            proc.kill(signal.SIGTERM)
            return await proc.wait()

    assert trio.run(main) == 143


def test_without_the_monitor_the_python_shim_waits(
    image: Path, tmp_path: Path
) -> None:
    # exec-opt skiff.monitor=false: the fallback used when the binary is missing
    rt = ForkServerRuntime(RuntimeContext(exec_root=str(tmp_path / "exec"),
                                          options={"skiff.monitor": "false"}))
    bundle = tmp_path / "b"

    async def main() -> tuple[str, int]:
        await rt.start()
        try:
            async with running(rt, make_spec(image, bundle, ["sleep", "1000"])) as c:
                await trio.sleep(0.1)  # time enough to have become the monitor
                watcher = _parent(c.pid)
                comm = Path(f"/proc/{watcher}/comm").read_text().strip()
                record = json.loads((bundle / monitor.MONITOR_RECORD).read_text())
                assert record == {"monitor": "skiff-shim", "protocol": monitor.PROTOCOL,
                                  "pid": watcher, "start": pidproof.start_time(watcher),
                                  "init": c.pid}
                c.kill(signal.SIGKILL)
                return comm, await c.wait()
        finally:
            await rt.stop()

    assert trio.run(main) == ("skiff-shim", 137)
    assert (bundle / "exitcode").read_text() == "137\n"
