"""skiffd against dockerd: the same workloads through the stock docker CLI, interleaved.

Every workload runs on each engine in turn, A B A B ..., so drift on the
machine (another job, a warm page cache) hits both alike.  Both engines run
the containers with ``--network none``: network set-up is a benchmark of its
own, and skiffd without a bridge driver would otherwise be compared with
dockerd doing less work.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib
import json
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.engines import Dockerd, Engine, EngineError, Skiffd, mounts_under
from benchmarks.report import Row

IMAGE = "busybox:latest"
RUN = ["run", "--rm", "--network", "none", IMAGE]
FLOOR = ["unshare", "--fork", "--pid", "--mount", "--uts", "--ipc", "--net", "--mount-proc",
         "true"]
# Modules that later issues add (network set-up, pull, build); each may
# define ``engine_rows(ctx: Context) -> list[Row]`` and is skipped when absent.
EXTRAS = ("benchmarks.network", "benchmarks.pull", "benchmarks.health", "benchmarks.scale",
          "benchmarks.tc", "benchmarks.overlay", "benchmarks.cri", "benchmarks.budget",
          "benchmarks.daemonstart")
WORKLOADS = ("api", "run", "phases", "seccomp", "exec", "lifecycle", "concurrency", "logs",
             "memory", "userns", "build")
UNCONFINED = ["--security-opt", "seccomp=unconfined"]
#: named sets of workloads for ``--only``: ``speed`` is every row issue 22 asks
#: for (run latency, API phases, lifecycle by CLI and API, 20 at once, idle
#: memory, the scale rows, the start path's budget)
SETS: dict[str, tuple[str, ...]] = {
    "speed": ("api", "run", "phases", "lifecycle", "concurrency", "memory", "scale", "budget"),
}


@dataclass(frozen=True)
class Plan:
    """How much of each workload to run."""

    runs: int
    lifecycle: int
    lifecycle_rounds: int
    concurrency: int
    concurrency_rounds: int
    log_lines: int
    log_rounds: int
    idle: tuple[int, ...]


PLANS = {
    "full": Plan(runs=30, lifecycle=50, lifecycle_rounds=2, concurrency=20,
                 concurrency_rounds=3, log_lines=1_000_000, log_rounds=1, idle=(0, 10, 50)),
    "quick": Plan(runs=20, lifecycle=20, lifecycle_rounds=1, concurrency=20,
                  concurrency_rounds=1, log_lines=200_000, log_rounds=1, idle=(0, 10)),
    # a structure check for the test suite, not a measurement
    "smoke": Plan(runs=3, lifecycle=3, lifecycle_rounds=1, concurrency=3,
                  concurrency_rounds=1, log_lines=2000, log_rounds=1, idle=(0, 2)),
}


@dataclass
class Context:
    """What a workload (built-in or extra) gets: the engines, the plan, the output folder."""

    engines: list[Engine]
    plan: Plan
    mode: str
    out_dir: Path
    rows: list[Row] = field(default_factory=list)
    log: Callable[[str], None] = print

    def add(self, metric: str, engine: str, value: float, unit: str, **extra: Any) -> None:
        self.rows.append({"metric": metric, "engine": engine, "value": value, "unit": unit,
                          **extra})

    def interleaved(self, rounds: int) -> list[tuple[int, Engine]]:
        """(round, engine) in the order A B A B ..."""
        return [(i, e) for i in range(rounds) for e in self.engines]


def _summary(ctx: Context, metric: str, engine: str, samples: list[float], unit: str) -> None:
    ctx.add(f"{metric}: median", engine, statistics.median(samples), unit,
            samples=[round(s, 6) for s in samples])
    ctx.add(f"{metric}: min", engine, min(samples), unit)
    ctx.add(f"{metric}: max", engine, max(samples), unit)


def api_round_trip(ctx: Context) -> None:
    """``docker version``: the CLI's own start-up plus one API call, the floor of every row."""
    samples: dict[str, list[float]] = {e.name: [] for e in ctx.engines}
    for _, e in ctx.interleaved(10):
        samples[e.name].append(e.timed("version"))
    for name, s in samples.items():
        ctx.add("docker version (CLI + 1 API call): median", name, statistics.median(s), "s")


class _UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=120)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(120)
        sock.connect(self._path)
        self.sock = sock


def _api(e: Engine, method: str, path: str, body: dict[str, Any] | None = None,
         conn: _UnixHTTP | None = None) -> Any:
    c = conn or _UnixHTTP(e.socket)
    data = json.dumps(body).encode() if body is not None else b""
    c.request(method, "/v1.41" + path, body=data,
              headers={"Content-Type": "application/json", "Content-Length": str(len(data))})
    resp = c.getresponse()
    raw = resp.read()
    if resp.status >= 300:
        raise EngineError(f"{e.name}: {method} {path}: {resp.status} {raw[:300]!r}")
    return json.loads(raw) if raw.strip() else None


def run_phases(ctx: Context) -> None:
    """Where ``run --rm`` spends its time, by API call, without the CLI in the way.

    The CLI's order: create; wait (condition=removed) on a second connection;
    start; the wait returns once the container has exited and is removed.
    """
    phases: dict[str, dict[str, list[float]]] = {e.name: {"create": [], "start": [],
                                                          "exit+rm": []}
                                                 for e in ctx.engines}
    body = {"Image": IMAGE, "Cmd": ["true"],
            "HostConfig": {"NetworkMode": "none", "AutoRemove": True}}
    for _, e in ctx.interleaved(ctx.plan.runs):
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
        p = phases[e.name]
        p["create"].append(t1 - t0)
        p["start"].append(t3 - t2)
        p["exit+rm"].append(t4 - t3)
    for name, p in phases.items():
        for phase, s in p.items():
            ctx.add(f"run phases (API): {phase}, median", name, statistics.median(s), "s")


def run_latency(ctx: Context) -> None:
    """``docker run --rm busybox true`` one at a time, and the kernel's floor for the same."""
    samples: dict[str, list[float]] = {e.name: [] for e in ctx.engines}
    floor: list[float] = []
    for _ in range(ctx.plan.runs):
        for e in ctx.engines:
            samples[e.name].append(e.timed(*RUN, "true"))
        t0 = time.perf_counter()
        subprocess.run(FLOOR, check=True)
        floor.append(time.perf_counter() - t0)
    for name, s in samples.items():
        _summary(ctx, "run --rm true", name, s, "s")
    _summary(ctx, "run --rm true", "kernel", floor, "s")


def _api_run_rm(e: Engine, security_opt: list[str]) -> float:
    """Seconds of ``run --rm true`` through the API alone, in the CLI's order
    (create, wait?condition=removed, start, the wait's answer)."""
    body = {"Image": IMAGE, "Cmd": ["true"],
            "HostConfig": {"NetworkMode": "none", "AutoRemove": True,
                           "SecurityOpt": security_opt}}
    t0 = time.perf_counter()
    cid = _api(e, "POST", "/containers/create", body)["Id"]
    waiter = _UnixHTTP(e.socket)
    waiter.request("POST", f"/v1.41/containers/{cid}/wait?condition=removed",
                   headers={"Content-Length": "0"})
    _api(e, "POST", f"/containers/{cid}/start")
    waiter.getresponse().read()
    waiter.close()
    return time.perf_counter() - t0


def seccomp_cost(ctx: Context) -> None:
    """``run --rm true`` under the default seccomp filter and unconfined, in
    alternating pairs, through the CLI and through the API alone: what the
    filter costs a start (its compile is cached, so this is installing it and
    running ``true`` under it).  The paired differences are the number to
    read: a millisecond is well inside the spread of single runs."""
    runs = 2 * ctx.plan.runs
    ways: dict[str, Callable[[Engine, list[str]], float]] = {
        "CLI": lambda e, opts: e.timed("run", "--rm", "--network", "none", *opts, IMAGE,
                                       "true"),
        "API": lambda e, opts: _api_run_rm(e, [o for o in opts if o.startswith("seccomp")]),
    }
    for way, timed in ways.items():
        filtered: dict[str, list[float]] = {e.name: [] for e in ctx.engines}
        unconfined: dict[str, list[float]] = {e.name: [] for e in ctx.engines}
        for i, e in ctx.interleaved(runs):
            order = [(filtered, []), (unconfined, UNCONFINED)]
            for into, opts in order if i % 2 else reversed(order):
                into[e.name].append(timed(e, opts))
        for name in filtered:
            ctx.add(f"seccomp ({way}): run --rm true, default filter: median", name,
                    statistics.median(filtered[name]), "s",
                    samples=[round(x, 6) for x in filtered[name]])
            ctx.add(f"seccomp ({way}): run --rm true, unconfined: median", name,
                    statistics.median(unconfined[name]), "s",
                    samples=[round(x, 6) for x in unconfined[name]])
            pairs = [f - u for f, u in zip(filtered[name], unconfined[name], strict=True)]
            ctx.add(f"seccomp ({way}): filter cost, median of paired differences", name,
                    statistics.median(pairs), "s")


def exec_latency(ctx: Context) -> None:
    """``docker exec c true`` into a running container, one at a time, interleaved;
    then the same exec through the API alone (create, start attached, inspect)."""
    boxes = {e.name: e.docker("run", "-d", "--network", "none", IMAGE, "sleep", "100000")
             .stdout.decode().strip() for e in ctx.engines}
    try:
        for e in ctx.engines:  # first exec pays for lazy set-up: not measured
            e.docker("exec", boxes[e.name], "true")
        cli: dict[str, list[float]] = {e.name: [] for e in ctx.engines}
        for _, e in ctx.interleaved(ctx.plan.runs):
            cli[e.name].append(e.timed("exec", boxes[e.name], "true"))
        api: dict[str, list[float]] = {e.name: [] for e in ctx.engines}
        body = {"Cmd": ["true"], "AttachStdout": True, "AttachStderr": True}
        for _, e in ctx.interleaved(ctx.plan.runs):
            t0 = time.perf_counter()
            exec_id = _api(e, "POST", f"/containers/{boxes[e.name]}/exec", body)["Id"]
            # without Upgrade both engines answer 200 and stream until the process ends
            conn = _UnixHTTP(e.socket)
            data = json.dumps({"Detach": False, "Tty": False}).encode()
            conn.request("POST", f"/v1.41/exec/{exec_id}/start", body=data,
                         headers={"Content-Type": "application/json",
                                  "Content-Length": str(len(data))})
            conn.getresponse().read()
            conn.close()
            code = _api(e, "GET", f"/exec/{exec_id}/json")["ExitCode"]
            api[e.name].append(time.perf_counter() - t0)
            if code != 0:
                raise EngineError(f"{e.name}: exec true exited with {code}")
    finally:
        for e in ctx.engines:
            e.docker("rm", "-f", boxes[e.name], check=False)
    for name, s in cli.items():
        _summary(ctx, "exec true (docker exec)", name, s, "s")
    for name, s in api.items():
        ctx.add("exec true (API: create+start+inspect): median", name, statistics.median(s),
                "s")


def lifecycle(ctx: Context) -> None:
    """create+start+wait+rm one by one; then run -d sleep many, stop -t 0 and rm them all."""
    n = ctx.plan.lifecycle
    one: dict[str, list[float]] = {e.name: [] for e in ctx.engines}
    many: dict[str, list[float]] = {e.name: [] for e in ctx.engines}
    for _, e in ctx.interleaved(ctx.plan.lifecycle_rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            cid = e.docker("create", "--network", "none", IMAGE, "true").stdout.decode().strip()
            e.docker("start", cid)
            e.docker("wait", cid)
            e.docker("rm", cid)
        one[e.name].append(n / (time.perf_counter() - t0))
    for _, e in ctx.interleaved(ctx.plan.lifecycle_rounds):
        t0 = time.perf_counter()
        ids = [e.docker("run", "-d", "--network", "none", IMAGE, "sleep", "3600")
               .stdout.decode().strip() for _ in range(n)]
        e.docker("stop", "-t", "0", *ids)
        e.docker("rm", *ids)
        many[e.name].append(n / (time.perf_counter() - t0))
    api: dict[str, list[float]] = {e.name: [] for e in ctx.engines}
    body = {"Image": IMAGE, "Cmd": ["true"], "HostConfig": {"NetworkMode": "none"}}
    for _, e in ctx.interleaved(ctx.plan.lifecycle_rounds):
        # the same four calls without the CLI's start-up, one connection as docker-py keeps
        conn = _UnixHTTP(e.socket)
        t0 = time.perf_counter()
        for _ in range(n):
            cid = _api(e, "POST", "/containers/create", body, conn)["Id"]
            _api(e, "POST", f"/containers/{cid}/start", None, conn)
            _api(e, "POST", f"/containers/{cid}/wait", None, conn)
            _api(e, "DELETE", f"/containers/{cid}", None, conn)
        api[e.name].append(n / (time.perf_counter() - t0))
        conn.close()
    for name in one:
        ctx.add(f"lifecycle: create+start+wait+rm x{n}", name, statistics.median(one[name]),
                "containers/s")
        ctx.add(f"lifecycle (API): create+start+wait+rm x{n}", name,
                statistics.median(api[name]), "containers/s")
        ctx.add(f"lifecycle: run -d x{n}, stop -t 0, rm", name,
                statistics.median(many[name]), "containers/s")


def concurrency(ctx: Context) -> None:
    """N ``docker run --rm`` started at once: wall time until the last one is done."""
    n = ctx.plan.concurrency
    walls: dict[str, list[float]] = {e.name: [] for e in ctx.engines}
    for _, e in ctx.interleaved(ctx.plan.concurrency_rounds):
        t0 = time.perf_counter()
        procs = [subprocess.Popen(["/usr/local/bin/docker", *RUN, "true"], env=e.env(),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                 for _ in range(n)]
        errors = [p.communicate(timeout=600)[1] for p in procs if p.wait(timeout=600) != 0]
        walls[e.name].append(time.perf_counter() - t0)
        if errors:
            raise EngineError(f"{e.name}: {len(errors)} of {n} concurrent runs failed: "
                              f"{errors[0].decode(errors='replace')}")
    for name, s in walls.items():
        ctx.add(f"concurrency: {n} x run --rm at once, wall", name, statistics.median(s), "s")


def _memory(e: Engine) -> tuple[float, float, int, dict[str, int]]:
    procs = e.processes()
    rss = sum(p.rss_kb for p in procs) / 1024
    pss = sum(p.pss_kb for p in procs) / 1024
    return rss, pss, len(procs), dict(Counter(p.comm for p in procs))


def memory(ctx: Context) -> None:
    """RSS and PSS of the daemon and every process it keeps per container, at rest.

    PSS shares each page among the processes that map it: it is the fair
    measure for forked processes (skiff's shims share the fork server's
    pages), RSS counts shared pages once per process.
    """
    counts = sorted(ctx.plan.idle)
    for e in ctx.engines:
        e.remove_all_containers()
        base: tuple[float, float, int, dict[str, int]] | None = None
        running = 0
        for n in counts:
            while running < n:
                e.docker("run", "-d", "--network", "none", IMAGE, "sleep", "100000")
                running += 1
            time.sleep(2)  # let spare processes refill and start-up garbage go
            rss, pss, nproc, comms = _memory(e)
            ctx.log(f"  {e.name} with {n} idle: rss {rss:.1f} MB, pss {pss:.1f} MB, "
                    f"{nproc} processes {comms}")
            if n == 0 or base is None:
                base = (rss, pss, nproc, comms)
                ctx.add(f"idle: engine RSS, {n} containers", e.name, rss, "MB", processes=comms)
                ctx.add(f"idle: engine PSS, {n} containers", e.name, pss, "MB")
                continue
            ctx.add(f"idle: total RSS, {n} containers", e.name, rss, "MB", processes=comms)
            ctx.add(f"idle: RSS per container ({n})", e.name, (rss - base[0]) / n, "MB")
            ctx.add(f"idle: PSS per container ({n})", e.name, (pss - base[1]) / n, "MB")
            ctx.add(f"idle: processes per container ({n})", e.name, (nproc - base[2]) / n,
                    "processes")
        e.remove_all_containers()


def userns(ctx: Context) -> None:
    """userns-remap with idmapped mounts and with chowned copies against none,
    on a 10-layer image (benchmarks/userns.py; daemons of its own, skiffd only)."""
    from benchmarks import userns as workload

    ctx.rows.extend(workload.engine_rows(ctx))  # type: ignore[arg-type]


def build(ctx: Context) -> None:
    """``docker build`` cold, warm, with independent stages, and (skiffd only) a
    large warm context (benchmarks/build.py)."""
    from benchmarks import build as workload

    try:
        ctx.rows.extend(workload.engine_rows(ctx))
    except EngineError as exc:  # a failed build must not void the other workloads' numbers
        ctx.log(f"  build failed: {exc}")


def logs_workload(ctx: Context) -> None:
    """``docker logs`` of N lines, ``--tail 10`` of a big log, write throughput, per log
    driver (benchmarks/logs.py)."""
    from benchmarks import logs as workload

    workload.logs(ctx)


BUILTIN: dict[str, Callable[[Context], None]] = {
    "api": api_round_trip, "run": run_latency, "phases": run_phases, "seccomp": seccomp_cost,
    "exec": exec_latency,
    "lifecycle": lifecycle,
    "concurrency": concurrency, "logs": logs_workload, "memory": memory, "userns": userns,
    "build": build,
}


#: an extra can also be asked for alone: ``--only health``
EXTRA_NAMES = {name.rsplit(".", 1)[1]: name for name in EXTRAS}


def _extra(ctx: Context, name: str) -> None:
    try:
        mod = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        return
    fn = getattr(mod, "engine_rows", None)
    if fn is not None:
        ctx.log(f"- {name}")
        t0 = time.perf_counter()
        try:
            ctx.rows.extend(fn(ctx))
        except Exception as exc:  # one broken extra must not void the others' numbers
            ctx.log(f"  {name} failed: {type(exc).__name__}: {exc}")
        ctx.log(f"  ({time.perf_counter() - t0:.1f}s)")


def _extras(ctx: Context) -> None:
    for name in EXTRAS:
        _extra(ctx, name)


def _load_busybox(engines: list[Engine], scratch: Path) -> None:
    """Make busybox with skiff, then give dockerd the very same image through save/load."""
    skiffd = next(e for e in engines if isinstance(e, Skiffd))
    skiffd.bootstrap_busybox()
    tar = scratch / "busybox.tar"
    skiffd.docker("save", "-o", str(tar), IMAGE)
    for e in engines:
        if e is not skiffd:
            e.docker("load", "-i", str(tar))
    tar.unlink()


def profile_run(skiffd: Engine, out_dir: Path, runs: int, log: Callable[[str], None]) -> None:
    """py-spy on skiffd and its children during ``runs`` run --rm: where the latency goes."""
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(pyspy).exists() or skiffd.proc is None:
        log("py-spy not found: no profile (pip install py-spy)")
        return
    raw = out_dir / "skiffd-run.folded"
    # the daemon alone, waiting included (fsync, thread hand-offs are latency too)
    spy = subprocess.Popen([pyspy, "record", "--pid", str(skiffd.proc.pid),
                            "--idle", "--rate", "250", "--format", "raw", "-o", str(raw)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.5)
    for _ in range(runs):
        skiffd.timed(*RUN, "true")
    spy.send_signal(signal.SIGINT)
    try:
        spy.wait(30)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait()
    if raw.exists():
        log(f"profile: {raw} (flame graph: py-spy's raw format, e.g. speedscope.app)")
        log(summarize_profile(raw))


# Leaves where a thread waits for work, not for an answer: left out of the summary.
IDLE = ("EpollIOManager.get_events", "_thread_cache.py:211)", "_thread_cache.py:208)")


def summarize_profile(raw: Path, top: int = 15) -> str:
    """The functions with the most busy samples in a py-spy raw (folded) profile."""
    incl: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if f and not f.startswith("process ")
                  and not f.startswith("thread ")]
        if frames and any(mark in frames[-1] for mark in IDLE):
            continue
        total += n
        if frames:
            leaf[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    ours = Counter({f: c for f, c in incl.items() if "(core/" in f or "(plugins/" in f})
    lines = [f"{total} busy samples; most inclusive (skiff's own code):"]
    lines += [f"  {100 * c / max(total, 1):5.1f}%  {f}" for f, c in ours.most_common(top)]
    lines.append("most self:")
    lines += [f"  {100 * c / max(total, 1):5.1f}%  {f}" for f, c in leaf.most_common(top)]
    return "\n".join(lines)


def run(mode: str, out_dir: Path, with_docker: bool = True,
        only: tuple[str, ...] = WORKLOADS, profile: bool = False, extras: bool = True,
        log: Callable[[str], None] = print, baseline: str | None = None) -> list[Row]:
    """Start the engines, run the workloads, stop everything; return the rows.

    ``baseline``: the Python of another skiff checkout, run as a second skiffd
    (column ``baseline``), so a change is measured before and after in one run."""
    plan = PLANS[mode]
    scratch = Path(tempfile.mkdtemp(prefix="skiff-bench-"))
    engines: list[Engine] = [Skiffd(scratch / "skiffd")]
    if baseline:
        # a bridge and subnet of its own: two daemons on one bridge would hand out
        # the same addresses and remove each other's rules
        engines.append(Skiffd(scratch / "baseline", name="baseline", python=baseline,
                              config={"bridge": "skiffbase0", "bip": "172.31.254.1/24"}))
    if with_docker:
        if Dockerd.available():
            engines.append(Dockerd(scratch / "dockerd"))
        else:
            log("dockerd not installed (apt-get install docker.io): skiffd only")
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = Context(engines, plan, mode, out_dir, log=log)
    try:
        for e in engines:
            log(f"starting {e.name} in {e.base}")
            e.start()
        _load_busybox(engines, scratch)
        for e in engines:  # first run pays for page cache and lazy set-up: not measured
            e.docker(*RUN, "true")
        for name in only:
            if name in EXTRA_NAMES:
                _extra(ctx, EXTRA_NAMES[name])
                continue
            log(f"- {name}")
            t0 = time.perf_counter()
            BUILTIN[name](ctx)
            log(f"  ({time.perf_counter() - t0:.1f}s)")
        if extras and set(only) == set(WORKLOADS):
            _extras(ctx)
        if profile:
            profile_run(engines[0], out_dir, plan.runs, log)
    finally:
        for e in engines:
            with contextlib.suppress(Exception):
                e.stop()
        if mounts_under(scratch):
            log(f"mounts are left under {scratch}: not removing it")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    return ctx.rows
