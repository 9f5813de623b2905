"""The start path's millisecond budget (issue 22): where ``run --rm true`` spends its time.

``python -m benchmarks engine --only budget`` starts a skiffd of its own whose
functions on the start path are wrapped with timestamps (``python -m
``benchmarks.budget._daemon``: the wrapping happens in that process, before
the daemon runs; skiff's code is not changed).  Every span is written
as one line (label, start, end: ``time.perf_counter``, which is
CLOCK_MONOTONIC, the same clock in every process of the machine) to a trace
file.  The client side is timed with the same clock, so the gaps between the
client's request and the daemon's span (HTTP, parsing, routing) show too.

Then, one at a time:

- the API phases as the CLI does them (create; wait ``condition=removed`` on
  a second connection; start; the wait's answer), ``runs`` times;
- ``docker run --rm true`` through the CLI, ``runs`` times: the daemon's
  request spans inside the CLI's wall time give the CLI's own part (start-up,
  the gaps between its requests).

The rows are the median duration of each span per phase ("budget: ..."), and
``budget.md`` in the output folder is the table (phase, span, ms, where).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from benchmarks.engine import Context
    from benchmarks.report import Row

#: what is wrapped in the traced daemon: "module:Class.method" or "module:function",
#: with the label it is shown under; one that does not exist is skipped (an
#: older checkout), so the list may name functions a later change adds
TARGETS: dict[str, str] = {
    "skiff.core.containers.manager:ContainerManager.create": "create",
    "skiff.core.images.layers:LayerStore.create_rw": "create: init + rw layers",
    "skiff.core.containers.mounts:realize": "create: volumes (mounts.realize)",
    "skiff.core.containers.etcfiles:write_at_create": "create: hostname, hosts, resolv.conf",
    "skiff.core.containers.model:Container.save": "Container.save",
    "skiff.core.containers.model:Container.save_new": "Container.save_new (create's record)",
    "skiff.core.containers.manager:ContainerManager.start": "start",
    "skiff.core.containers.manager:ContainerManager.start_run": "start: start_run",
    "skiff.core.containers.runspec:SpecBuilder.build": "start: spec (SpecBuilder.build)",
    "skiff.plugins.limits.cgroupfs_v2:CgroupfsV2.create": "start: cgroup create",
    "skiff.plugins.limits.cgroupfs_v1:CgroupfsV1.create": "start: cgroup create",
    "skiff.core.containers.manager:open_log": "start: log driver opened",
    "skiff.core.containers.logdelivery:deliver": "start: log delivery wrapped",
    "skiff.plugins.isolation.runtime:ForkServerRuntime.prepare":
        "start: runtime.prepare (fork server, shim, init builds the rootfs)",
    "skiff.plugins.isolation.runtime:ForkServerRuntime._compile_seccomp":
        "start: seccomp program (cached)",
    "skiff.plugins.isolation.runtime:ForkServerRuntime._prepare":
        "start: spec sent until the init is ready",
    "skiff.core.containers.manager:ContainerManager._prestart": "start: prestart",
    "skiff.plugins.limits.cgroupfs_v2:CgroupfsV2.add_process": "start: cgroup add_process",
    "skiff.plugins.limits.cgroupfs_v1:CgroupfsV1.add_process": "start: cgroup add_process",
    "skiff.core.containers.networking:NetworkAttachment.attach_all": "start: networks attached",
    "skiff.plugins.isolation.shimclient:ForkServerProcess.go":
        "start: go until exec (rlimits, seccomp, caps, execve)",
    "skiff.plugins.isolation.shimclient:ForkServerProcess.wait": "run: process.wait",
    "skiff.core.containers.manager:ContainerManager._monitor": "run: monitor task",
    "skiff.core.containers.teardown:RunTeardown.oom_killed": "exit: oom_killed",
    "skiff.core.containers.teardown:RunTeardown.release": "exit: release (net, volumes, cgroup)",
    "skiff.plugins.limits.cgroupfs_v2:CgroupfsV2.destroy": "exit: cgroup destroy",
    "skiff.plugins.limits.cgroupfs_v1:CgroupfsV1.destroy": "exit: cgroup destroy",
    "skiff.core.containers.manager:ContainerManager.remove": "rm",
    "skiff.core.containers.manager:ContainerManager._remove_stopped": "rm: remove_stopped",
    "skiff.core.images.layers:LayerStore.remove_rw": "rm: init + rw layers removed",
    "skiff.core.containers.mounts:on_remove": "rm: volumes (mounts.on_remove)",
    "skiff.core.api.connection:HttpConnection._handle": "http",
}

#: finer spans, for a closer look (``--only budget`` with SKIFF_BUDGET_DETAIL=1)
DETAIL: dict[str, str] = {
    "skiff.plugins.storage.overlay2:Overlay2Driver.create": "  overlay2.create",
    "skiff.plugins.storage.overlay2:Overlay2Driver.apply_diff": "  overlay2.apply_diff",
    "skiff.plugins.storage.overlay2:Overlay2Driver.apply_files": "  overlay2.apply_files",
    "skiff.plugins.storage.overlay2:Overlay2Driver.create_rw": "  overlay2.create_rw",
    "skiff.plugins.storage.overlay2:Overlay2Driver.remove": "  overlay2.remove",
    "skiff.plugins.storage._quota:LoopQuota.destroy": "  LoopQuota.destroy",
    "skiff.core.images.container_layers:write_synced": "  write_synced",
    "skiff.core.images.container_layers:fsync_dir": "  fsync_dir (layers)",
    "skiff.core.images.metafiles:fsync_dir": "  fsync_dir (metafiles)",
    "skiff.core.images.metafiles:MetaDirs.discard": "  MetaDirs.discard",
    "skiff.core.images.metafiles:MetaDirs.retire": "  MetaDirs.retire",
    "skiff.core.atomic:fsync_dir": "  fsync_dir (atomic)",
    "skiff.core.containers.model:write_json_atomic": "  Container.save: config.v2.json",
    "skiff.core.containers.model:write_atomic": "  Container.save: hostconfig.json",
    "shutil:rmtree": "  shutil.rmtree",
    "skiff.plugins.isolation.shimclient:ShimChannel.receive": "  shim channel receive",
}


#: in the fork server's children (shim and init): what the runtime's prepare
#: and go are made of; the fork server runs under ``_forkserver``
INIT_TARGETS: dict[str, str] = {
    "skiff.plugins.isolation.shim:serve": "  shim: spec received until the init exits",
    "skiff.plugins.isolation.containerinit:join_cgroups": "  init: join cgroups",
    "skiff.plugins.isolation.shim:move_into_cgroups": "  shim: init moved into its cgroups",
    "skiff.plugins.isolation.containerinit:_adopt_stdio": "  init: stdio as 0-2, others closed",
    "skiff.plugins.isolation.containerinit:build": "  init: build (mount ns, rootfs, user)",
    "skiff.plugins.isolation.containerinit:_enter_namespaces": "  init: enter namespaces",
    "skiff.plugins.isolation.containerfs:build": "  init: rootfs mounts, /proc, /sys, /dev",
    "skiff.plugins.isolation.containerfs:pivot": "  init: pivot_root",
    "skiff.plugins.isolation.containerfs:mask": "  init: masked paths",
    "skiff.plugins.isolation.containerfs:make_readonly": "  init: read-only paths",
    "skiff.plugins.isolation.initprocess:prepare_process":
        "  init: user, groups, command lookup",
}

TRACE_ENV = "SKIFF_BUDGET_TRACE"
#: spans an init could not write (its root is the container's by then): they
#: ride on its "ready" message to the shim, which writes them
_PENDING: list[str] = []


# -- in the traced daemon ---------------------------------------------------------


class _Trace:
    def __init__(self, path: str, by_path: bool = False) -> None:
        self.path = path
        #: in the fork server's children: opened per span, since the init closes
        #: every descriptor it did not expect
        self.by_path = by_path
        self.fd = -1 if by_path else os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                                             0o600)
        self.lock = threading.Lock()

    def write(self, line: str) -> None:
        if not self.by_path:
            with self.lock:
                os.write(self.fd, line.encode())
            return
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        except OSError:
            _PENDING.append(line)
            return
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def span(self, label: str, t0: float, t1: float) -> None:
        self.write(f"{label}\t{t0:.7f}\t{t1:.7f}\n")


def _http_label(args: tuple[Any, ...]) -> str:
    event = args[1] if len(args) > 1 else None
    method = getattr(event, "method", b"?").decode("ascii", "replace")
    target = getattr(event, "target", b"?").decode("latin-1").split("?", 1)[0]
    parts = [p for p in target.split("/") if p]
    if parts and parts[0].startswith("v1."):
        parts = parts[1:]
    # /containers/<id>/start -> /containers/{id}/start
    shape = "/".join("{id}" if len(p) >= 12 and all(c in "0123456789abcdef" for c in p)
                     else p for p in parts)
    return f"http {method} /{shape}"


def _wrap(trace: _Trace, fn: Callable[..., Any], label: str) -> Callable[..., Any]:
    name = (lambda args: _http_label(args)) if label == "http" else (lambda args: label)
    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def traced_async(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                trace.span(name(args), t0, time.perf_counter())
        return traced_async

    @functools.wraps(fn)
    def traced(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            trace.span(name(args), t0, time.perf_counter())
    return traced


def install(path: str, targets: dict[str, str], by_path: bool = False) -> list[str]:
    """Wrap every target that exists; the labels wrapped."""
    trace = _Trace(path, by_path)
    done = []
    for target, label in targets.items():
        module_name, _, qual = target.partition(":")
        try:
            owner: Any = importlib.import_module(module_name)
        except ImportError:
            continue
        *outer, attr = qual.split(".")
        for part in outer:
            owner = getattr(owner, part, None)
        fn = getattr(owner, attr, None) if owner is not None else None
        if fn is None:
            continue
        wrapped = _wrap(trace, fn, label)
        # a static method must stay one, or the class would pass itself in
        if isinstance(inspect.getattr_static(owner, attr), staticmethod):
            wrapped = staticmethod(wrapped)
        setattr(owner, attr, wrapped)
        done.append(label)
    return done


def _carry_pending(trace: _Trace) -> None:
    """The init's late spans ride on its ready message; the shim writes them."""
    from skiff.plugins.isolation.channel import LineChannel

    send, receive = LineChannel.send, LineChannel.receive

    def traced_send(self: Any, message: dict[str, Any], fds: list[int] | None = None) -> bool:
        if _PENDING and isinstance(message, dict) and message.get("ready"):
            message = {**message, "_budget": list(_PENDING)}
            _PENDING.clear()
        return send(self, message, fds)

    def traced_receive(self: Any, want_fds: int = 0) -> dict[str, Any] | None:
        got = receive(self, want_fds)
        if isinstance(got, dict) and "_budget" in got:
            for line in got.pop("_budget"):
                trace.write(line)
        return got

    LineChannel.send = traced_send  # type: ignore[method-assign]
    LineChannel.receive = traced_receive  # type: ignore[method-assign]


def _forkserver() -> None:
    """The fork server, its shims and inits traced (``INIT_TARGETS``)."""
    import runpy

    install(os.environ[TRACE_ENV], INIT_TARGETS, by_path=True)
    _carry_pending(_Trace(os.environ[TRACE_ENV], by_path=True))
    runpy.run_module("skiff.plugins.isolation.forkserver", run_name="__main__",
                     alter_sys=True)


def _daemon(argv: list[str]) -> None:
    """``argv``: the trace file, then skiffd's own arguments."""
    targets = {**TARGETS, **(DETAIL if os.environ.get("SKIFF_BUDGET_DETAIL") else {})}
    install(argv[0], targets)
    # the fork server too: started by the runtime as ``python -m <module>``
    from skiff.plugins.isolation import runtime

    os.environ[TRACE_ENV] = argv[0]
    repo = str(Path(__file__).resolve().parents[1])
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (os.environ.get("PYTHONPATH"), repo) if p)
    runtime.FORKSERVER_MODULE = "benchmarks.budget"  # type: ignore[misc]
    argv = argv[1:]
    from skiff.core import daemon

    sys.exit(daemon.main(argv))


# -- in the harness ---------------------------------------------------------------

Span = tuple[str, float, float]


def read_trace(path: Path) -> list[Span]:
    spans = []
    for line in path.read_text().splitlines():
        label, t0, t1 = line.split("\t")
        spans.append((label, float(t0), float(t1)))
    spans.sort(key=lambda s: s[1])
    return spans


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


class Budget:
    """Spans grouped by the client's phases, per iteration, then their medians."""

    def __init__(self) -> None:
        # phase -> label -> durations; phase -> label -> offsets from the phase's start
        self.durations: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        self.offsets: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        self.order: dict[str, list[str]] = defaultdict(list)

    def add(self, phase: str, label: str, offset: float, duration: float) -> None:
        if label not in self.durations[phase]:
            self.order[phase].append(label)
        self.durations[phase][label].append(duration)
        self.offsets[phase][label].append(offset)

    def take(self, phase: str, t0: float, t1: float, spans: list[Span]) -> None:
        """Every span that began inside [t0, t1]: counted under ``phase``; several
        spans of one label in the window are summed (Container.save twice...)."""
        within: dict[str, tuple[float, float]] = {}
        for label, s0, s1 in spans:
            if t0 <= s0 <= t1:
                off, dur = within.get(label, (s0 - t0, 0.0))
                within[label] = (off, dur + (s1 - s0))
        self.add(phase, "(client: whole phase)", 0.0, t1 - t0)
        for label, (off, dur) in sorted(within.items(), key=lambda kv: kv[1][0]):
            self.add(phase, label, off, dur)

    def rows(self) -> list[Row]:
        out: list[Row] = []
        for phase, labels in self.order.items():
            for label in labels:
                d = self.durations[phase][label]
                out.append({"metric": f"budget: {phase}: {label}", "engine": "skiffd",
                            "value": statistics.median(d), "unit": "s",
                            "at_ms": _ms(statistics.median(self.offsets[phase][label])),
                            "count": len(d), "chart": False})
        return out

    def table(self) -> str:
        lines = ["| phase | span | at (ms) | ms (median) | where |", "|---|---|---|---|---|"]
        where = {label: target
                 for target, label in {**TARGETS, **DETAIL, **INIT_TARGETS}.items()}
        for phase, labels in self.order.items():
            for label in labels:
                d = statistics.median(self.durations[phase][label])
                at = statistics.median(self.offsets[phase][label])
                loc = where.get(label, "core/api/connection.py:HttpConnection._handle"
                                if label.startswith("http ") else "")
                loc = loc.replace("skiff.", "").replace(".", "/", loc.count(".") - 1
                                                         if ":" not in loc else loc.index(":"))
                lines.append(f"| {phase} | {label} | {_ms(at)} | {_ms(d)} | {loc} |")
        return "\n".join(lines)


def _api_phases(e: Any, runs: int, trace: Path, budget: Budget) -> None:
    from benchmarks.engine import IMAGE, _api, _UnixHTTP

    body = {"Image": IMAGE, "Cmd": ["true"],
            "HostConfig": {"NetworkMode": "none", "AutoRemove": True}}
    windows = []
    for _ in range(runs):
        t0 = time.perf_counter()
        cid = _api(e, "POST", "/containers/create", body)["Id"]
        t1 = time.perf_counter()
        waiter = _UnixHTTP(e.socket)
        waiter.request("POST", f"/v1.41/containers/{cid}/wait?condition=removed",
                       headers={"Content-Length": "0"})
        t2 = time.perf_counter()
        _api(e, "POST", f"/containers/{cid}/start")
        t3 = time.perf_counter()
        waiter.getresponse().read()
        t4 = time.perf_counter()
        waiter.close()
        windows.append((t0, t1, t2, t3, t4))
        time.sleep(0.05)  # the auto-remove's last writes behind us
    spans = read_trace(trace)
    for t0, t1, t2, t3, t4 in windows:
        budget.take("API create", t0, t1, spans)
        budget.take("API start", t2, t3, spans)
        budget.take("API exit+rm", t3, t4, spans)


def _cli_runs(e: Any, runs: int, trace: Path, budget: Budget) -> None:
    from benchmarks.engine import RUN

    windows = []
    for _ in range(runs):
        t0 = time.perf_counter()
        e.docker(*RUN, "true")
        windows.append((t0, time.perf_counter()))
        time.sleep(0.05)
    spans = read_trace(trace)
    for t0, t1 in windows:
        budget.take("CLI run --rm", t0, t1, spans)
        # the CLI's own part: before its first request, and after the last answer
        https = [s for s in spans if t0 <= s[1] <= t1 and s[0].startswith("http ")]
        if https:
            budget.add("CLI run --rm", "(CLI: exec until its first request)", 0.0,
                       https[0][1] - t0)
            budget.add("CLI run --rm", "(CLI: last answer until it exited)",
                       max(s[2] for s in https) - t0, t1 - max(s[2] for s in https))


def traced_skiffd(base: Path, trace: Path) -> Any:
    """A Skiffd whose daemon wraps the targets first (``_daemon``)."""
    from benchmarks.engines import Skiffd

    repo = str(Path(__file__).resolve().parents[1])

    class _Traced(Skiffd):
        def command(self) -> list[str]:
            cmd = super().command()
            # the daemon runs in its own folder: the harness's package is put
            # last on the path, so the venv's skiff stays the one imported
            code = (f"import sys; sys.path.append({repo!r}); "
                    "from benchmarks.budget import _daemon; _daemon(sys.argv[1:])")
            return [cmd[0], "-c", code, str(trace), *cmd[3:]]

    return _Traced(base, name="skiffd")


def engine_rows(ctx: Context) -> list[Row]:
    """A traced skiffd of its own (the others keep running, idle)."""
    scratch = Path(tempfile.mkdtemp(prefix="skiff-budget-"))
    trace = scratch / "trace.tsv"
    e = traced_skiffd(scratch / "traced", trace)
    budget = Budget()
    try:
        e.start()
        e.bootstrap_busybox()
        from benchmarks.engine import RUN

        for _ in range(3):  # page cache, spare shims, seccomp compile: not measured
            e.docker(*RUN, "true")
        _api_phases(e, ctx.plan.runs, trace, budget)
        _cli_runs(e, ctx.plan.runs, trace, budget)
    finally:
        with contextlib.suppress(Exception):
            e.stop()
        with contextlib.suppress(Exception):
            shutil.copy(trace, ctx.out_dir / "budget-trace.tsv")
        shutil.rmtree(scratch, ignore_errors=True)
    table = budget.table()
    (ctx.out_dir / "budget.md").write_text(table + "\n")
    ctx.log(table)
    return budget.rows()


if __name__ == "__main__" and os.environ.get(TRACE_ENV):
    _forkserver()
