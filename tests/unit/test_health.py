"""Healthchecks: config, Docker's state machine, and the probe task on a fake clock
(core/containers/health.py, healthprobe.py)."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import trio
import trio.testing

from skiff.core.containers import health
from skiff.core.containers.config import effective_config
from skiff.core.containers.health import (
    Check,
    HealthMonitor,
    InvalidHealthcheck,
    ProbeResult,
    record,
)
from skiff.core.containers.healthprobe import ExecProbe, OutputCapture
from skiff.core.containers.model import Container, State
from skiff.core.containers.registry import ContainerRegistry
from skiff.core.timefmt import format_go_duration, now_rfc3339, parse_rfc3339

MS = 1_000_000
S = 1_000_000_000


# -- config ------------------------------------------------------------------------

@pytest.mark.parametrize(("hc", "message"), [
    ({"Interval": 1}, "Interval in Healthcheck cannot be less than 1ms"),
    ({"Timeout": MS - 1}, "Timeout in Healthcheck cannot be less than 1ms"),
    ({"StartPeriod": -5}, "StartPeriod in Healthcheck cannot be less than 1ms"),
    ({"Retries": -1}, "Retries in Healthcheck cannot be negative"),
    ({"Test": "CMD true"}, "Healthcheck.Test must be a list of strings"),
    ({"Interval": "1s"}, "Healthcheck.Interval must be an integer"),
])
def test_create_refuses_what_dockerd_refuses(hc: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidHealthcheck) as exc:
        health.check_config(hc)
    assert str(exc.value) == message


def test_zero_means_default_and_is_accepted() -> None:
    health.check_config({"Test": ["CMD", "true"], "Interval": 0, "Timeout": 0,
                         "StartPeriod": 0, "Retries": 0})
    health.check_config({"Interval": MS, "Retries": 0})
    health.check_config(None)


def test_defaults_are_dockerds() -> None:
    check = Check.of({"Healthcheck": {"Test": ["CMD", "true"]}})
    assert check is not None
    assert (check.interval, check.timeout, check.start_period, check.retries) == (30, 30, 0, 3)
    assert check.timeout_message() == "Health check exceeded timeout (30s)"


def test_probe_argv_of_each_kind() -> None:
    cmd = Check.of({"Healthcheck": {"Test": ["CMD", "cat", "/x"], "Timeout": 200 * MS}})
    assert cmd is not None and cmd.argv == ("cat", "/x")
    assert cmd.timeout_message() == "Health check exceeded timeout (200ms)"
    shell = Check.of({"Healthcheck": {"Test": ["CMD-SHELL", "test -e /x"]}})
    assert shell is not None and shell.argv == ("/bin/sh", "-c", "test -e /x")
    own = Check.of({"Shell": ["/bin/ash", "-c"], "Healthcheck": {"Test": ["CMD-SHELL", "x"]}})
    assert own is not None and own.argv == ("/bin/ash", "-c", "x")
    nones: list[dict[str, Any] | None] = [
        {"Test": ["NONE"]}, {"Test": []}, {"Test": ["WHAT", "x"]}, None]
    for none in nones:
        assert Check.of({"Healthcheck": none}) is None
    assert Check.of({}) is None


def test_request_fields_win_and_the_image_fills_the_rest() -> None:
    image = {"Cmd": ["sh"], "Healthcheck": {"Test": ["CMD-SHELL", "img"], "Interval": 5 * S,
                                            "Retries": 7}}
    cfg = effective_config({"Healthcheck": {"Interval": S}}, image)
    assert cfg["Healthcheck"] == {"Test": ["CMD-SHELL", "img"], "Interval": S, "Retries": 7}
    alone = effective_config({"Healthcheck": {"Test": ["CMD", "x"], "Timeout": 0,
                                              "StartInterval": S}}, {"Cmd": ["sh"]})
    assert alone["Healthcheck"] == {"Test": ["CMD", "x"]}  # dockerd's JSON omits the rest
    assert effective_config({"Healthcheck": {}}, {"Cmd": ["sh"]})["Healthcheck"] == {}
    off = effective_config({"Healthcheck": {"Test": ["NONE"]}}, image)
    assert off["Healthcheck"]["Test"] == ["NONE"]
    assert "Healthcheck" not in effective_config({}, {"Cmd": ["sh"]})
    assert effective_config({}, image)["Healthcheck"]["Test"] == ["CMD-SHELL", "img"]


def test_create_checks_the_request_not_the_merged_config() -> None:
    with pytest.raises(ValueError, match="Interval in Healthcheck cannot be less than 1ms"):
        effective_config({"Healthcheck": {"Interval": 10}}, {"Cmd": ["sh"]})


def test_go_duration_text() -> None:
    assert format_go_duration(MS) == "1ms"
    assert format_go_duration(1500 * MS) == "1.5s"
    assert format_go_duration(90 * S) == "1m30s"


# -- the state machine -------------------------------------------------------------

def check(retries: int = 3, start_period: float = 0.0) -> Check:
    return Check(argv=("true",), interval=1.0, timeout=1.0, start_period=start_period,
                 retries=retries, timeout_ns=S)


def result(at: float, code: int, output: str = "") -> ProbeResult:
    return ProbeResult(start=at, end=at + 0.1, exit_code=code, output=output)


def test_a_success_makes_it_healthy_and_resets_the_streak() -> None:
    h = health.initial(None)
    assert record(h, result(1, 1), started_at=0, check=check()) is False
    assert h["FailingStreak"] == 1 and h["Status"] == "starting"
    assert record(h, result(2, 0, "ok\n"), started_at=0, check=check()) is True
    assert h["Status"] == "healthy" and h["FailingStreak"] == 0
    assert h["Log"][-1]["ExitCode"] == 0 and h["Log"][-1]["Output"] == "ok\n"
    assert record(h, result(3, 0), started_at=0, check=check()) is False


def test_retries_failures_in_a_row_make_it_unhealthy() -> None:
    h = health.initial(None)
    record(h, result(1, 0), started_at=0, check=check())
    changes = [record(h, result(t, 1), started_at=0, check=check()) for t in (2, 3, 4)]
    assert changes == [False, False, True]
    assert h["Status"] == "unhealthy" and h["FailingStreak"] == 3
    assert record(h, result(5, 2), started_at=0, check=check()) is False  # any non-zero fails
    assert h["FailingStreak"] == 4
    assert record(h, result(6, 0), started_at=0, check=check()) is True
    assert h["Status"] == "healthy"


def test_failures_in_the_start_period_do_not_count_until_the_first_success() -> None:
    c = check(retries=1, start_period=10.0)
    h = health.initial(None)
    for t in (1, 5, 9.9):
        assert record(h, result(100 + t, 1), started_at=100, check=c) is False
    assert h["Status"] == "starting" and h["FailingStreak"] == 0 and len(h["Log"]) == 3
    assert record(h, result(111, 1), started_at=100, check=c) is True
    assert h["Status"] == "unhealthy"
    # once healthy, the start period no longer shields a failure
    h = health.initial(None)
    record(h, result(101, 0), started_at=100, check=c)
    assert record(h, result(102, 1), started_at=100, check=c) is True
    assert h["Status"] == "unhealthy"


def test_timeout_is_a_failure_like_any_other() -> None:
    h = health.initial(None)
    msg = check().timeout_message()
    for t in (1, 2, 3):
        record(h, ProbeResult(t, t + 1, -1, msg), started_at=0, check=check())
    assert h["Status"] == "unhealthy"
    assert h["Log"][-1]["ExitCode"] == -1 and h["Log"][-1]["Output"] == msg


def test_the_log_keeps_the_last_five() -> None:
    h = health.initial(None)
    for t in range(8):
        record(h, result(t, 0, f"run {t}"), started_at=0, check=check())
    assert [e["Output"] for e in h["Log"]] == [f"run {t}" for t in range(3, 8)]
    start, end = h["Log"][0]["Start"], h["Log"][0]["End"]
    assert start.endswith("Z") and parse_rfc3339(start) < parse_rfc3339(end)


def test_a_new_run_starts_over_and_keeps_the_log() -> None:
    h = health.initial(None)
    record(h, result(1, 0, "x"), started_at=0, check=check())
    again = health.initial(h)
    assert again["Status"] == "starting" and again["FailingStreak"] == 0
    assert [e["Output"] for e in again["Log"]] == ["x"]


def test_ps_shows_and_filters_health() -> None:
    assert health.ps_suffix(None) == ""
    assert health.ps_suffix({"Status": "starting"}) == " (health: starting)"
    assert health.ps_suffix({"Status": "healthy"}) == " (healthy)"
    assert health.status_of(None) == "none"
    assert health.status_of({"Status": "unhealthy"}) == "unhealthy"


def test_inspect_has_health_only_with_a_check() -> None:
    assert "Health" not in State().api()
    assert State(Health=health.initial(None)).api()["Health"]["Status"] == "starting"


def test_probe_output_is_capped() -> None:
    cap = OutputCapture()

    async def main() -> None:
        await cap.send_all(b"a" * 4000)
        await cap.send_all(b"b" * 200)
        await cap.send_all(b"c")

    trio.run(main)
    assert len(cap.data) == 4096 and cap.text().endswith("b" * 96 + "...")
    whole = OutputCapture()
    trio.run(whole.send_all, b"x" * 4096)
    assert whole.text() == "x" * 4096  # exactly full: nothing was lost


# -- the task, on a fake clock and a fake probe -----------------------------------

def make_container(tmp_path: Path, test: list[str], **timing: int) -> Container:
    root = tmp_path / "c1"
    root.mkdir()
    cfg = {"Image": "busybox", "Healthcheck": {"Test": test, **timing}}
    return Container(id="c1" * 32, name="c1", created=now_rfc3339(), image_id="sha256:x",
                     config=cfg, host_config={}, path="sh", args=[], driver="vfs",
                     root=str(root))


def test_the_task_follows_start_and_die(tmp_path: Path) -> None:
    events: list[str] = []
    registry = ContainerRegistry(lambda _t, action, _id, _a: events.append(action))
    c = make_container(tmp_path, ["CMD", "probe"], Interval=200 * MS, Retries=2)
    registry.index(c)
    codes = iter([0, 1, 1, 1, 1, 1, 1, 1])
    probes: list[list[str]] = []

    async def probe(_c: Container, argv: list[str], _check: Check) -> ProbeResult:
        probes.append(argv)
        await trio.sleep(0.01)
        now = time.time()  # the wall clock: the start period is measured on it
        return ProbeResult(now, now, next(codes), "")

    async def main() -> None:
        async with trio.open_nursery() as n:
            monitor = HealthMonitor(registry, probe, n.start_soon)
            c.state = State(Status="running", Running=True, StartedAt=now_rfc3339())
            registry.event(c, "start")
            assert c.state.Health is not None and c.state.Health["Status"] == "starting"
            await trio.sleep(0.25)
            assert c.state.Health["Status"] == "healthy"
            await trio.sleep(0.4)
            assert c.state.Health["Status"] == "unhealthy"
            c.state = State(Status="exited", Health=c.state.Health)
            registry.event(c, "die")
            done = len(probes)
            await trio.sleep(5)
            assert len(probes) == done  # no probe after the run ended
            assert monitor._scopes == {}

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert probes[0] == ["probe"]
    assert [e for e in events if e.startswith("health_status")] == [
        "health_status: healthy", "health_status: unhealthy"]
    saved = Container.load(c.root)
    assert saved.state.Health is not None and saved.state.Health["Status"] == "unhealthy"


def test_no_task_without_a_check(tmp_path: Path) -> None:
    registry = ContainerRegistry(lambda *_a: None)
    c = make_container(tmp_path, ["NONE"])
    registry.index(c)
    spawned: list[Any] = []

    async def never(*_a: Any) -> ProbeResult:
        raise AssertionError("no probe without a check")

    HealthMonitor(registry, never, lambda *a: spawned.append(a))
    c.state = State(Status="running", Running=True, StartedAt=now_rfc3339())
    registry.event(c, "start")
    assert spawned == [] and c.state.Health is None


# -- the probe as an exec, over a fake exec manager ---------------------------------

class FakeProcess:
    def __init__(self, ex: Any) -> None:
        self.ex = ex
        self.signals: list[int] = []

    def kill(self, signum: int) -> None:
        self.signals.append(signum)
        self.ex.exit_code = 137
        self.ex.ended.set()


class FakeExecs:
    """ExecManager's create and start as the probe uses them."""

    def __init__(self, hang: bool = False, refuse: str = "") -> None:
        self.hang = hang
        self.refuse = refuse
        self.by_id: dict[str, Any] = {}
        self.processes: list[FakeProcess] = []

    def create(self, ref: str, body: dict[str, Any]) -> str:
        from skiff.core.errors import Conflict

        if self.refuse:
            raise Conflict(self.refuse)
        assert body["AttachStdout"] and body["AttachStderr"] and "AttachStdin" not in body
        ex = SimpleNamespace(id="e1", container=SimpleNamespace(id=ref), exit_code=None,
                             process=None, ended=trio.Event(), cmd=body["Cmd"])
        self.by_id[ex.id] = ex
        return ex.id

    async def start(self, exec_id: str, stream: Any, *, framed: bool) -> None:
        ex = self.by_id[exec_id]
        assert not framed
        ex.process = FakeProcess(ex)
        self.processes.append(ex.process)
        await stream.send_all(" ".join(ex.cmd).encode())
        if self.hang:
            await trio.sleep_forever()
        ex.exit_code = 3
        ex.ended.set()


def run_probe(execs: FakeExecs, timeout_ms: int = 300) -> ProbeResult:
    c = cast(Container, SimpleNamespace(id="c1"))
    probe_check = Check.of({"Healthcheck": {"Test": ["CMD", "x", "y"],
                                            "Timeout": timeout_ms * MS}})
    assert probe_check is not None
    probe = ExecProbe(cast(Any, execs))

    async def main() -> ProbeResult:
        return await probe(c, list(probe_check.argv), probe_check)

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_probe_reports_the_execs_exit_and_output_and_forgets_it() -> None:
    execs = FakeExecs()
    res = run_probe(execs)
    assert (res.exit_code, res.output) == (3, "x y")
    assert res.start <= res.end
    assert execs.by_id == {}


def test_a_probe_over_its_timeout_is_killed() -> None:
    execs = FakeExecs(hang=True)
    res = run_probe(execs, timeout_ms=250)
    assert res.exit_code == -1
    assert res.output == "Health check exceeded timeout (250ms)"
    assert execs.processes[0].signals == [signal.SIGKILL]
    assert execs.by_id == {}


def test_a_probe_that_cannot_exec_fails_with_the_reason() -> None:
    res = run_probe(FakeExecs(refuse="Container c1 is not running"))
    assert (res.exit_code, res.output) == (-1, "Container c1 is not running")
