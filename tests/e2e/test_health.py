"""Healthchecks against a real skiffd: the stock CLI's ``--health-*`` flags, ``docker
ps``'s health column and filter, inspect's State.Health, ``health_status`` events,
an image's HEALTHCHECK, docker-py's ``healthcheck=``, and the checks of a container
a daemon restart brought back.

Intervals are short (200 ms) and every wait polls for the state; nothing asserts
how long a transition took.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker as dockerpy
import pytest

from benchmarks.engines import Dockerd, processes_of
from benchmarks.health import cpu_seconds, engine_cpu
from tests.builds import build, write_tree
from tests.daemon import Daemon, poll, running_daemon
from tests.e2e.conftest import twin_of

MS = 1_000_000
#: the flags of a quick check: probe every 200 ms, unhealthy after two failures
QUICK = ("--health-interval", "200ms", "--health-timeout", "2s", "--health-retries", "2")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    base: Path = tmp_path_factory.mktemp("skiffd-health")
    with running_daemon(base) as d:
        d.skiff("image", "bootstrap", "busybox")
        yield d


@pytest.fixture
def client(daemon: Daemon) -> Iterator[dockerpy.DockerClient]:
    c = dockerpy.DockerClient(base_url=daemon.host, version="auto", timeout=60)
    yield c
    c.close()


def ok(d: Daemon, *args: str) -> str:
    return d.docker(*args, check=True).stdout.decode().strip()


def name() -> str:
    return f"hc-{secrets.token_hex(4)}"


def health(d: Daemon, ref: str) -> dict[str, Any] | None:
    data = json.loads(ok(d, "inspect", "--format", "{{json .State.Health}}", ref))
    return data if isinstance(data, dict) else None


def wait_status(d: Daemon, ref: str, status: str, timeout: float = 30) -> dict[str, Any]:
    return poll(lambda: (h := health(d, ref)) and h["Status"] == status and h,
                timeout=timeout, what=f"{ref} to be {status}")


def ps(d: Daemon, *filters: str) -> dict[str, str]:
    """``docker ps`` names -> Status, with the filters given."""
    args = ["ps", "--format", "{{.Names}}\t{{.Status}}"]
    for f in filters:
        args += ["--filter", f]
    rows = [line.split("\t", 1) for line in ok(d, *args).splitlines() if line]
    return {n: s for n, s in rows}


def health_events(d: Daemon, since: float, ref: str) -> list[str]:
    out = ok(d, "events", "--since", f"{since:.3f}", "--until", f"{time.time():.3f}",
             "--filter", f"container={ref}", "--filter", "event=health_status",
             "--format", "{{.Action}}")
    return out.splitlines()


def test_cli_flags_healthy_then_unhealthy_with_ps_inspect_and_events(daemon: Daemon) -> None:
    n = name()
    since = time.time() - 0.01
    ok(daemon, "run", "-d", "--name", n, "--network", "none", "--health-cmd",
       "cat /tmp/ok", *QUICK, "--health-start-period", "0s", "busybox", "sh", "-c",
       "echo fine > /tmp/ok; exec sleep 300")
    try:
        h = wait_status(daemon, n, "healthy")
        assert h["FailingStreak"] == 0
        assert h["Log"][-1]["ExitCode"] == 0 and h["Log"][-1]["Output"] == "fine\n"
        assert ps(daemon, f"name={n}")[n].endswith("(healthy)")
        assert n in ps(daemon, "health=healthy")
        assert n not in ps(daemon, "health=unhealthy")
        cfg = json.loads(ok(daemon, "inspect", "--format", "{{json .Config.Healthcheck}}", n))
        assert cfg == {"Test": ["CMD-SHELL", "cat /tmp/ok"], "Interval": 200 * MS,
                       "Timeout": 2000 * MS, "Retries": 2}

        ok(daemon, "exec", n, "rm", "/tmp/ok")
        h = wait_status(daemon, n, "unhealthy")
        assert h["FailingStreak"] >= 2
        assert h["Log"][-1]["ExitCode"] == 1 and "No such file" in h["Log"][-1]["Output"]
        assert 1 <= len(h["Log"]) <= 5
        assert ps(daemon, f"name={n}")[n].endswith("(unhealthy)")
        assert n in ps(daemon, "health=unhealthy")
        assert n not in ps(daemon, "health=healthy")
        actions = poll(lambda: (evs := health_events(daemon, since, n))
                       and "health_status: unhealthy" in evs and evs,
                       what="the unhealthy event")
        assert actions[:2] == ["health_status: healthy", "health_status: unhealthy"]

        ok(daemon, "exec", n, "sh", "-c", "echo back > /tmp/ok")
        wait_status(daemon, n, "healthy")
        ok(daemon, "stop", "-t", "1", n)
        # as dockerd: the last health is still shown once the container stopped
        stopped = health(daemon, n)
        assert stopped is not None and stopped["Status"] in ("healthy", "unhealthy")
    finally:
        daemon.docker("rm", "-f", n)


def test_starting_none_and_the_filter_values(daemon: Daemon) -> None:
    slow, plain = name(), name()
    ok(daemon, "run", "-d", "--name", slow, "--network", "none", "--health-cmd", "true",
       "--health-interval", "1h", "busybox", "sleep", "300")
    ok(daemon, "run", "-d", "--name", plain, "--network", "none", "busybox", "sleep", "300")
    try:
        assert health(daemon, slow) == {"Status": "starting", "FailingStreak": 0, "Log": []}
        assert health(daemon, plain) is None
        assert ps(daemon, f"name={slow}")[slow].endswith("(health: starting)")
        assert ps(daemon, f"name={plain}")[plain].startswith("Up ")
        assert "(" not in ps(daemon, f"name={plain}")[plain]
        starting, none = ps(daemon, "health=starting"), ps(daemon, "health=none")
        assert slow in starting and plain not in starting
        assert plain in none and slow not in none
        res = daemon.docker("ps", "--filter", "health=sick")
        assert res.returncode != 0
        assert "Unrecognised filter value for health: sick" in res.stderr.decode()
    finally:
        daemon.docker("rm", "-f", slow, plain)


def test_a_probe_over_its_timeout_is_killed_and_fails(daemon: Daemon) -> None:
    n = name()
    # the exec form: the probe's process is sleep itself, so killing it ends it
    client = dockerpy.DockerClient(base_url=daemon.host, version="auto", timeout=60)
    c = client.containers.run(
        "busybox", "sleep 300", name=n, detach=True, network_mode="none",
        healthcheck={"test": ["CMD", "sleep", "30"], "interval": 200 * MS,
                     "timeout": 300 * MS, "retries": 1})
    try:
        h = wait_status(daemon, n, "unhealthy")
        entry = h["Log"][-1]
        assert entry["ExitCode"] == -1
        assert entry["Output"] == "Health check exceeded timeout (300ms)"
        # three probes timed out: had they not been killed, three would be sleeping
        poll(lambda: len((health(daemon, n) or {}).get("Log") or []) >= 3,
             what="three timed-out probes")
        sleeping = ok(daemon, "exec", n, "ps", "-o", "args").splitlines()
        assert sleeping.count("sleep 30") <= 1, sleeping
    finally:
        c.remove(force=True)
        client.close()


def test_the_images_healthcheck_and_no_healthcheck(daemon: Daemon, tmp_path: Path) -> None:
    tag = f"hc-img-{secrets.token_hex(3)}"
    context = write_tree(tmp_path / "ctx", {"Dockerfile": (
        "FROM busybox\n"
        "HEALTHCHECK --interval=200ms --timeout=2s --retries=2 CMD test -d /etc\n"
        'CMD ["sleep", "300"]\n')})
    res = build(daemon, context, "-t", tag)
    assert res.returncode == 0, res.stderr
    on, off, tuned = name(), name(), name()
    try:
        ok(daemon, "run", "-d", "--name", on, "--network", "none", tag)
        ok(daemon, "run", "-d", "--name", off, "--network", "none", "--no-healthcheck", tag)
        # a flag replaces one field; the image gives the rest
        ok(daemon, "run", "-d", "--name", tuned, "--network", "none",
           "--health-cmd", "false", tag)
        wait_status(daemon, on, "healthy")
        wait_status(daemon, tuned, "unhealthy")
        assert health(daemon, off) is None
        assert json.loads(ok(daemon, "inspect", "--format", "{{json .Config.Healthcheck}}",
                             off))["Test"] == ["NONE"]
        assert off in ps(daemon, "health=none")
        tuned_cfg = json.loads(ok(daemon, "inspect", "--format",
                                  "{{json .Config.Healthcheck}}", tuned))
        assert tuned_cfg["Test"] == ["CMD-SHELL", "false"]
        assert tuned_cfg["Interval"] == 200 * MS and tuned_cfg["Retries"] == 2
    finally:
        daemon.docker("rm", "-f", on, off, tuned)
        daemon.docker("rmi", tag)


def test_docker_py_healthy_and_always_failing(client: dockerpy.DockerClient) -> None:
    good = client.containers.run(
        "busybox", "sleep 300", detach=True, network_mode="none",
        healthcheck={"test": ["CMD", "true"], "interval": 200 * MS, "timeout": 2000 * MS,
                     "retries": 2})
    bad = client.containers.run(
        "busybox", "sleep 300", detach=True, network_mode="none",
        healthcheck={"test": "exit 1", "interval": 200 * MS, "retries": 2})
    try:
        def status(c: Any) -> str:
            c.reload()
            return str(c.attrs["State"]["Health"]["Status"])

        poll(lambda: status(good) == "healthy", what="the good container healthy")
        poll(lambda: status(bad) == "unhealthy", what="the failing container unhealthy")
        assert bad.attrs["State"]["Health"]["Log"][-1]["ExitCode"] == 1
        assert bad.attrs["Config"]["Healthcheck"]["Test"] == ["CMD-SHELL", "exit 1"]
        ids = {c.id for c in client.containers.list(filters={"health": "unhealthy"})}
        assert bad.id in ids and good.id not in ids
    finally:
        good.remove(force=True)
        bad.remove(force=True)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("interval", 10, "Interval in Healthcheck cannot be less than 1ms"),
    ("timeout", 999, "Timeout in Healthcheck cannot be less than 1ms"),
    ("start_period", 1, "StartPeriod in Healthcheck cannot be less than 1ms"),
    ("retries", -1, "Retries in Healthcheck cannot be negative"),
])
def test_create_refuses_bad_values_with_dockerds_messages(
        client: dockerpy.DockerClient, field: str, value: int, message: str) -> None:
    with pytest.raises(dockerpy.errors.APIError) as exc:
        client.api.create_container("busybox", "true",
                                    healthcheck={"test": ["CMD", "true"], field: value})
    assert exc.value.status_code == 400
    assert message in str(exc.value.explanation)


def test_checks_resume_after_a_daemon_restart(tmp_path: Path) -> None:
    with running_daemon(tmp_path / "restart") as d:
        d.skiff("image", "bootstrap", "busybox")
        n = name()
        ok(d, "run", "-d", "--name", n, "--network", "none", "--restart", "always",
           "--health-cmd", "true", *QUICK, "busybox", "sleep", "300")
        wait_status(d, n, "healthy")
        assert d.stop() == 0
        since = time.time()
        d.start()
        poll(lambda: ok(d, "inspect", "--format", "{{.State.Running}}", n) == "true",
             what="the restart policy to start it again")
        wait_status(d, n, "healthy")
        poll(lambda: "health_status: healthy" in health_events(d, since, n),
             what="a health_status event from the new daemon")
        assert n in ps(d, "health=healthy")


# -- side by side with the tests' private dockerd ----------------------------------

@pytest.fixture(scope="module")
def dockerd(daemon: Daemon, twin_dockerd: Dockerd, tmp_path_factory: pytest.TempPathFactory
            ) -> Dockerd:
    """The session's dockerd, holding this daemon's busybox."""
    twin_of(daemon, twin_dockerd, tmp_path_factory.mktemp("hc-twin")).close()
    return twin_dockerd


def test_side_by_side_with_dockerd(daemon: Daemon, dockerd: Dockerd) -> None:
    """The same CLI calls against both: what clients read must match."""
    runs: dict[str, Callable[..., subprocess.CompletedProcess[bytes]]] = {
        "skiffd": lambda *a: daemon.docker(*a),
        "dockerd": lambda *a: dockerd.docker(*a, check=False)}
    seen: dict[str, dict[str, Any]] = {}
    for engine, run in runs.items():
        n = name()
        res = run("run", "-d", "--name", n, "--network", "none", "--health-cmd",
                  "echo probing; exit 3", "--health-interval", "200ms", "--health-retries", "2",
                  "busybox", "sleep", "300")
        assert res.returncode == 0, (engine, res.stderr)
        try:
            def inspect(fmt: str, _run: Any = run, _n: str = n) -> Any:
                return json.loads(_run("inspect", "--format", fmt, _n).stdout)

            poll(lambda: (inspect("{{json .State.Health}}") or {}).get("Status") == "unhealthy",
                 what=f"{engine}: unhealthy")
            h = inspect("{{json .State.Health}}")
            status = run("ps", "--filter", f"name={n}", "--format", "{{.Status}}").stdout
            seen[engine] = {
                "config": inspect("{{json .Config.Healthcheck}}"),
                "health_keys": sorted(h), "log_keys": sorted(h["Log"][-1]),
                "last": (h["Log"][-1]["ExitCode"], h["Log"][-1]["Output"]),
                "ps": status.decode().strip().rsplit(" ", 1)[-1],
                "filter": n in run("ps", "--filter", "health=unhealthy", "--format",
                                   "{{.Names}}").stdout.decode().split(),
                "bad_filter": run("ps", "--filter", "health=sick").stderr.decode().strip(),
                "bad_interval": run("create", "--health-interval", "100us", "busybox",
                                    "true").stderr.decode().strip(),
            }
        finally:
            run("rm", "-f", n)
    assert seen["skiffd"] == seen["dockerd"]


def test_side_by_side_starting_timeout_and_events(daemon: Daemon, dockerd: Dockerd) -> None:
    runs: dict[str, Callable[..., subprocess.CompletedProcess[bytes]]] = {
        "skiffd": lambda *a: daemon.docker(*a),
        "dockerd": lambda *a: dockerd.docker(*a, check=False)}
    seen: dict[str, dict[str, Any]] = {}
    for engine, run in runs.items():
        slow, late = name(), name()
        since = time.time() - 0.01
        for n, flags in ((slow, ("--health-cmd", "true", "--health-interval", "1h")),
                         (late, ("--health-cmd", "sleep 5", "--health-interval", "200ms",
                                 "--health-timeout", "300ms", "--health-retries", "1"))):
            res = run("run", "-d", "--name", n, "--network", "none", *flags,
                      "busybox", "sleep", "300")
            assert res.returncode == 0, (engine, res.stderr)
        try:
            def health_of(n: str, _run: Any = run) -> Any:
                return json.loads(_run("inspect", "--format", "{{json .State.Health}}", n).stdout)

            def timed_out(_n: str = late) -> bool:
                return bool((health_of(_n) or {}).get("Status") == "unhealthy")

            starting = health_of(slow)
            poll(timed_out, what=f"{engine}: unhealthy by timeout")
            last = health_of(late)["Log"][0]
            evs = run("events", "--since", f"{since:.3f}", "--until", f"{time.time():.3f}",
                      "--filter", f"container={late}", "--filter", "event=health_status",
                      "--format", "{{.Action}} {{.Actor.Attributes.name}}").stdout
            seen[engine] = {
                "starting": starting, "ps": run("ps", "--filter", f"name={slow}", "--format",
                                                "{{.Status}}").stdout.decode().split("(")[-1],
                "timeout": (last["ExitCode"], last["Output"]),
                "events": evs.decode().replace(late, "NAME").splitlines()[:1],
            }
        finally:
            run("rm", "-f", slow, late)
    assert seen["skiffd"] == seen["dockerd"]
    assert seen["skiffd"]["events"] == ["health_status: unhealthy NAME"]


def test_the_benchmarks_measure_runs(daemon: Daemon) -> None:
    """benchmarks/health.py on two containers: it runs and counts; no speed asserted."""
    def tree() -> list[int]:
        return [p.pid for p in processes_of(str(daemon.base))]

    assert cpu_seconds(tree()) > 0
    for checked in (False, True):
        share = engine_cpu(daemon.docker, tree, 2, 1.0, checked=checked)
        assert 0.0 <= share < 64
    assert ok(daemon, "ps", "-aq") == ""
