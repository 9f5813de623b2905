"""daemon.json ``metrics-addr`` against a real skiffd: ``GET /metrics`` read over TCP
from the test's network namespace, as Prometheus (or curl) would, and parsed with
prometheus_client's own parser.

The container-state gauge follows containers as they start, pause, stop and go;
container, image, health and builder counters grow with the actions; API requests
are counted by route and status; a bad ``metrics-addr`` refuses the start with the
reason; and without ``metrics-addr`` skiffd listens on no TCP port at all.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.builds import build, write_tree
from tests.daemon import DOCKER, Daemon, daemon_config, poll, running_daemon

#: never through a proxy the environment may name
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Metrics:
    def __init__(self, url: str) -> None:
        self.url = url

    def text(self) -> str:
        with _OPENER.open(self.url, timeout=10) as r:
            assert r.status == 200
            assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
            return str(r.read().decode())

    def scrape(self) -> Samples:
        out: Samples = {}
        for fam in text_string_to_metric_families(self.text()):
            for s in fam.samples:
                out[(s.name, frozenset(s.labels.items()))] = float(s.value)
        return out

    def get(self, name: str, **labels: str) -> float:
        return self.scrape().get((name, frozenset(labels.items())), 0.0)


@pytest.fixture(scope="module")
def port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, port: int) -> Iterator[Daemon]:
    base: Path = tmp_path_factory.mktemp("skiffd-metrics")
    with running_daemon(base, **{"metrics-addr": f"127.0.0.1:{port}"}) as d:
        d.skiff("image", "bootstrap", "busybox")
        yield d


@pytest.fixture
def m(daemon: Daemon, port: int) -> Metrics:
    return Metrics(f"http://127.0.0.1:{port}/metrics")


def ok(d: Daemon, *args: str) -> str:
    return d.docker(*args, check=True).stdout.decode().strip()


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


STATES = "engine_daemon_container_states_containers"
ACTIONS = "engine_daemon_container_actions_seconds_count"


def states(m: Metrics) -> dict[str, float]:
    got = m.scrape()
    return {s: got[(STATES, frozenset({("state", s)}))] for s in ("running", "paused", "stopped")}


def test_container_state_gauge_follows_the_containers(daemon: Daemon, m: Metrics) -> None:
    before = states(m)
    name = unique("metrics-state")
    ok(daemon, "run", "-d", "--name", name, "busybox", "sleep", "300")
    try:
        assert states(m) == {**before, "running": before["running"] + 1}
        ok(daemon, "pause", name)
        assert states(m) == {**before, "paused": before["paused"] + 1}
        ok(daemon, "unpause", name)
        ok(daemon, "stop", "-t", "1", name)
        assert states(m) == {**before, "stopped": before["stopped"] + 1}
    finally:
        ok(daemon, "rm", "-f", name)
    assert states(m) == before


def test_container_actions_timed(daemon: Daemon, m: Metrics) -> None:
    before = m.scrape()

    def grew(action: str) -> float:
        key = (ACTIONS, frozenset({("action", action)}))
        return m.scrape()[key] - before[key]

    name = unique("metrics-actions")
    ok(daemon, "create", "--name", name, "busybox", "sleep", "300")
    ok(daemon, "start", name)
    ok(daemon, "stop", "-t", "1", name)
    ok(daemon, "rm", name)
    for action in ("create", "start", "stop", "delete"):
        assert grew(action) == 1, action
    after = m.scrape()
    # the time spent is there too: a histogram, with a sum that grew
    key = frozenset({("action", "create")})
    assert after[("engine_daemon_container_actions_seconds_sum", key)] > \
        before.get(("engine_daemon_container_actions_seconds_sum", key), 0)
    assert after[("engine_daemon_container_actions_seconds_bucket",
                  key | {("le", "+Inf")})] == after[(ACTIONS, key)]


def test_image_actions_timed(daemon: Daemon, m: Metrics) -> None:
    count = "engine_daemon_image_actions_seconds_count"
    before = {a: m.get(count, action=a) for a in ("tag", "delete", "history")}
    ref = unique("metrics-tag")
    ok(daemon, "tag", "busybox", ref)
    ok(daemon, "history", ref)
    ok(daemon, "rmi", ref)
    assert {a: m.get(count, action=a) - before[a] for a in before} == \
        {"tag": 1, "delete": 1, "history": 1}


def test_api_requests_counted_by_route_and_status(daemon: Daemon, m: Metrics) -> None:
    total = "skiff_api_requests_total"
    op = "GET /containers/{id}/json"
    before_404 = m.get(total, operation=op, status="404")
    before_200 = m.get(total, operation=op, status="200")
    missing = unique("metrics-none")
    res = daemon.docker("inspect", "--type", "container", missing)
    assert res.returncode != 0
    name = unique("metrics-api")
    ok(daemon, "create", "--name", name, "busybox", "true")
    try:
        ok(daemon, "inspect", "--type", "container", name)
    finally:
        ok(daemon, "rm", name)
    assert m.get(total, operation=op, status="404") == before_404 + 1
    assert m.get(total, operation=op, status="200") >= before_200 + 1
    got = m.scrape()
    # the route, never the path: no container name or ID in a label
    assert not [k for k in got if any(missing in v or name in v for _, v in k[1])]
    assert got[("skiff_api_request_duration_seconds_count",
                frozenset({("operation", op)}))] >= 2
    # the scrapes themselves are not API requests
    assert not [k for k in got if ("operation", "GET /metrics") in k[1]]


def test_health_checks_counted(daemon: Daemon, m: Metrics) -> None:
    checks = "engine_daemon_health_checks_total"
    failed = "engine_daemon_health_checks_failed_total"
    before, before_failed = m.get(checks), m.get(failed)
    name = unique("metrics-health")
    ok(daemon, "run", "-d", "--name", name, "--health-cmd", "true",
       "--health-interval", "200ms", "busybox", "sleep", "300")
    try:
        poll(lambda: m.get(checks) >= before + 2, timeout=20, what="two health checks")
        assert m.get(failed) == before_failed  # exit 0: checks that worked
    finally:
        ok(daemon, "rm", "-f", name)
    # dockerd's "failed": a probe that did not run to an end (here: timed out)
    slow = unique("metrics-health-slow")
    ok(daemon, "run", "-d", "--name", slow, "--health-cmd", "sleep 5",
       "--health-interval", "200ms", "--health-timeout", "300ms", "busybox", "sleep", "300")
    try:
        poll(lambda: m.get(failed) >= before_failed + 1, timeout=20,
             what="a failed (timed out) health check")
    finally:
        ok(daemon, "rm", "-f", slow)


def test_builds_triggered_and_failed(daemon: Daemon, m: Metrics, tmp_path: Path) -> None:
    triggered = "builder_builds_triggered_total"
    failed = "builder_builds_failed_total"
    before = m.get(triggered)
    before_unknown = m.get(failed, reason="unknown_instruction_error")
    before_step = m.get(failed, reason="error_processing_commands_error")
    good = write_tree(tmp_path / "good", {"Dockerfile": "FROM busybox\nRUN true\n"})
    tag = unique("metrics-build")
    build(daemon, good, "-t", tag).ok()
    ok(daemon, "rmi", tag)
    bad = write_tree(tmp_path / "bad", {"Dockerfile": "FROM busybox\nFROB x\n"})
    assert build(daemon, bad).returncode != 0
    failing = write_tree(tmp_path / "failing", {"Dockerfile": "FROM busybox\nRUN exit 3\n"})
    assert build(daemon, failing).returncode != 0
    assert m.get(triggered) == before + 3
    assert m.get(failed, reason="unknown_instruction_error") == before_unknown + 1
    assert m.get(failed, reason="error_processing_commands_error") == before_step + 1


# -- start-up: refused addresses, nothing served when unset ---------------------------

def refused_start(tmp_path: Path, addr: str) -> str:
    d = Daemon(tmp_path, daemon_config(tmp_path, **{"metrics-addr": addr}))
    with pytest.raises(RuntimeError, match="skiffd exited with 1") as info:
        d.start()
    return str(info.value)


def test_malformed_metrics_addr_refused_at_start(tmp_path: Path) -> None:
    out = refused_start(tmp_path, "9323")
    assert "invalid value for 'metrics-addr': '9323': expected host:port" in out
    assert not (tmp_path / "skiff.sock").exists()


def test_metrics_addr_in_use_refused_at_start(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = refused_start(tmp_path, f"127.0.0.1:{port}")
    assert f"metrics-addr 127.0.0.1:{port}: cannot listen: Address already in use" in out


def tcp_listening_ports(pid: int) -> set[int]:
    """The TCP ports process ``pid`` listens on (its sockets in /proc/net/tcp{,6})."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_listens_only_where_configured(daemon: Daemon, port: int) -> None:
    assert daemon.proc is not None
    assert tcp_listening_ports(daemon.proc.pid) == {port}


def test_nothing_listens_when_unset(tmp_path: Path) -> None:
    with running_daemon(tmp_path / "d") as d:
        assert d.proc is not None
        assert tcp_listening_ports(d.proc.pid) == set()
        assert "metrics.listening" not in d.logs()


def test_non_loopback_address_served_with_a_warning(tmp_path: Path) -> None:
    port = free_port()
    with running_daemon(tmp_path / "d", **{"metrics-addr": f"0.0.0.0:{port}"}) as d:
        assert "metrics.exposed" in d.logs()
        assert Metrics(f"http://127.0.0.1:{port}/metrics").get(
            "engine_daemon_container_states_containers", state="running") == 0


def test_engine_facts(daemon: Daemon, m: Metrics) -> None:
    got = m.scrape()
    assert m.get("engine_daemon_engine_cpus_cpus") == os.cpu_count()
    assert m.get("engine_daemon_engine_memory_bytes") > 0
    info = [dict(labels) for name, labels in got if name == "engine_daemon_engine_info"]
    assert len(info) == 1
    assert info[0]["os_type"] == "linux"
    assert info[0]["graphdriver"] == ok(daemon, "info", "--format", "{{.Driver}}")
    assert info[0]["daemon_id"] == ok(daemon, "info", "--format", "{{.ID}}")


def test_events_counted_and_subscribers_gauged(daemon: Daemon, m: Metrics) -> None:
    subscribers = "engine_daemon_events_subscribers_total"
    before_subs = m.get(subscribers)
    before_events = m.get("engine_daemon_events_total")
    watcher = subprocess.Popen([DOCKER, "events"], env=daemon.env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        poll(lambda: m.get(subscribers) == before_subs + 1, what="an events subscriber")
        name = unique("metrics-events")
        ok(daemon, "create", "--name", name, "busybox", "true")
        ok(daemon, "rm", name)
        assert m.get("engine_daemon_events_total") >= before_events + 2  # create, destroy
    finally:
        watcher.terminate()
        watcher.wait(10)
    poll(lambda: m.get(subscribers) == before_subs, what="the subscriber gone")
