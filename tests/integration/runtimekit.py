"""What the runtime tests share: specs, running a container, exec, leak checks.

The runtime's methods are async; the helpers here are too, and the plain
ones (:func:`run`, :func:`start_error`) drive them with ``trio.run``.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from skiff.core.hookspecs import ContainerSpec, ExecSpec, MountSpec, StartError, Stdio
from skiff.plugins.isolation import capabilities
from skiff.plugins.isolation.runtime import (
    DEFAULT_MASKED_PATHS,
    DEFAULT_READONLY_PATHS,
    ForkServerRuntime,
)

NAMESPACES: dict[str, str | None] = {
    "pid": None,
    "mount": None,
    "uts": None,
    "ipc": None,
    "net": None,
}
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def make_spec(rootfs: Path, bundle: Path, args: list[str], **kw: Any) -> ContainerSpec:
    """Docker's defaults for ``args`` in ``rootfs``; ``kw`` overrides any field."""
    bundle.mkdir(parents=True, exist_ok=True)
    defaults: dict[str, Any] = {
        "id": bundle.name,
        "bundle": str(bundle),
        "rootfs_mounts": [MountSpec("bind", str(rootfs), "/", ["rbind"])],
        "mounts": [],
        "args": args,
        "env": [PATH_ENV],
        "hostname": "skiffbox",
        "namespaces": dict(NAMESPACES),
        "capabilities": list(capabilities.DEFAULT_CAPABILITIES),
        "masked_paths": list(DEFAULT_MASKED_PATHS),
        "readonly_paths": list(DEFAULT_READONLY_PATHS),
    }
    defaults.update(kw)
    return ContainerSpec(**defaults)


@dataclass
class Result:
    code: int
    stdout: bytes
    stderr: bytes
    pid: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def out(self) -> str:
        return self.stdout.decode()


async def drain(fd: int, into: list[bytes]) -> None:
    """Read ``fd`` to its end into ``into``; the fd is closed after."""
    async with trio.lowlevel.FdStream(fd) as stream:
        while chunk := await stream.receive_some(65536):
            into.append(chunk)


async def run_container(
    rt: ForkServerRuntime, spec: ContainerSpec, stdin: bytes | None = None
) -> Result:
    """prepare, go, wait; stdout and stderr captured through pipes."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    in_r, in_w = os.pipe()
    if stdin is not None:
        os.write(in_w, stdin)
    os.close(in_w)
    out: list[bytes] = []
    err: list[bytes] = []
    try:
        t0 = time.perf_counter()
        try:
            proc = await rt.prepare(spec, Stdio(in_r, out_w, err_w))
        finally:
            for fd in (in_r, out_w, err_w):
                os.close(fd)
        t1 = time.perf_counter()
        # go() before draining is fine: nothing runs until go, and go returns
        # right after exec, long before a pipe could fill
        await proc.go()
        t2 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain, out_r, out)
            nursery.start_soon(drain, err_r, err)
            out_r = err_r = -1  # owned by the streams now
            code = await proc.wait()
            t3 = time.perf_counter()
    finally:
        for fd in (out_r, err_r):
            if fd >= 0:
                os.close(fd)
    timings = {"prepare": t1 - t0, "go": t2 - t1, "wait": t3 - t2, "total": t3 - t0}
    return Result(code, b"".join(out), b"".join(err), proc.pid, timings)


async def run_joined(rt: ForkServerRuntime, spec: ContainerSpec,
                     join: Callable[[int], None]) -> tuple[int, str]:
    """prepare, ``join(pid)`` (as the daemon puts the init in its cgroups), go,
    wait: (exit code, stdout and stderr together).  A failed join aborts."""
    out_r, out_w = os.pipe()
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        proc = await rt.prepare(spec, Stdio(null, out_w, out_w))
    except BaseException:
        os.close(out_r)
        raise
    finally:
        os.close(out_w)
        os.close(null)
    try:
        join(proc.pid)
    except BaseException:
        await proc.abort()
        os.close(out_r)
        raise
    await proc.go()
    chunks: list[bytes] = []
    await drain(out_r, chunks)
    return await proc.wait(), b"".join(chunks).decode(errors="replace")


def run(rt: ForkServerRuntime, spec: ContainerSpec, stdin: bytes | None = None) -> Result:
    return trio.run(run_container, rt, spec, stdin)


def start_error(rt: ForkServerRuntime, spec: ContainerSpec) -> StartError:
    with pytest.raises(StartError) as info:
        run(rt, spec)
    return info.value


async def started(rt: ForkServerRuntime, spec: ContainerSpec) -> Any:
    """The container of ``spec`` prepared and gone, its stdio on /dev/null."""
    null = os.open("/dev/null", os.O_RDWR)
    try:
        container = await rt.prepare(spec, Stdio(null, null, null))
    finally:
        os.close(null)
    await container.go()
    return container


@asynccontextmanager
async def running(rt: ForkServerRuntime, spec: ContainerSpec) -> AsyncIterator[Any]:
    """:func:`started`, killed and reaped on the way out whatever happened."""
    container = await started(rt, spec)
    try:
        yield container
    finally:
        container.kill(signal.SIGKILL)
        await container.wait()


async def exec_output(rt: ForkServerRuntime, spec: ExecSpec,
                      before_go: Callable[[Any], None] | None = None) -> Result:
    """Run the exec of ``spec`` to its end, stdout captured (stdin and stderr
    on /dev/null); ``before_go`` sees the process prepared but not started."""
    out_r, out_w = os.pipe()
    null = os.open("/dev/null", os.O_RDWR)
    try:
        proc = await rt.exec(spec, Stdio(null, out_w, null))
    except BaseException:
        os.close(out_r)
        raise
    finally:
        os.close(out_w)
        os.close(null)
    if before_go is not None:
        before_go(proc)
    await proc.go()
    out: list[bytes] = []
    await drain(out_r, out)
    return Result(await proc.wait(), b"".join(out), b"", proc.pid)


def ns_paths(pid: int, *kinds: str) -> dict[str, str]:
    """The namespaces of ``pid`` an exec joins: Docker's five and ``kinds``."""
    names = {"pid": "pid", "mount": "mnt", "uts": "uts", "ipc": "ipc", "net": "net",
             "user": "user", "cgroup": "cgroup"}
    wanted = ["pid", "mount", "uts", "ipc", "net", *kinds]
    return {kind: f"/proc/{pid}/ns/{names[kind]}" for kind in wanted}


def status_field(text: str, name: str) -> str:
    for line in text.splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"{name} not in {text!r}")


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        # ESRCH: the process was reaped between open and read
        return False


@dataclass
class FakeContainer:
    """The few fields of a container record the spec hooks read."""

    host_config: dict[str, Any]
    id: str = "c1"
    name: str = "c1"
    config: dict[str, Any] = field(default_factory=dict)
    root: str = "/nonexistent"


# -- leaks --------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return []


def our_mounts(base: Path) -> list[str]:
    """Mounts of the host whose line names ``base``."""
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if str(base) in line]


def busy_shims(forkserver: int) -> list[int]:
    """Shims of the fork server other than its idle spares.

    A spare is a shim whose single child (its init) has not yet been given a
    spec: that init's cmdline is still the fork server's and it has no
    children of its own.  There is one, and a second (a remapped spare) once
    a remapped container was asked for.  Every other shim belongs to a
    container.
    """
    busy = []
    spares = 0
    for shim_pid in children(forkserver):
        inits = children(shim_pid)
        if len(inits) == 1 and not children(inits[0]) and spares < 2:
            spares += 1
            continue
        busy.append(shim_pid)
    return busy


def assert_no_busy_shims(rt: ForkServerRuntime) -> None:
    pid = rt.forkserver_pid
    assert pid is not None
    # a shim exits right after it reported the exit code; under the VM rig's
    # emulation (SKIFF_TEST_DAEMON_TIMEOUT set) "right after" took over 5 s once
    slack = 5.0 if "SKIFF_TEST_DAEMON_TIMEOUT" not in os.environ else 60.0
    deadline = time.monotonic() + slack
    while busy_shims(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert busy_shims(pid) == []
