"""The metrics registry, its text format (read back with prometheus_client's own
parser), metrics-addr's checks and the /metrics server on a real TCP socket."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from skiff.core import metrics
from skiff.core.api.connection import serve_connection
from skiff.core.api.metricsserver import metrics_router, open_metrics_listeners, serve_metrics
from skiff.core.api.router import Request, Response, Router
from skiff.core.builder.executor import failure_reason
from skiff.core.config import ConfigError, load, metrics_address, metrics_on_loopback
from skiff.core.dockerfile.errors import DockerfileError
from skiff.core.dockerfile.parser import parse_dockerfile


def families(text: bytes) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text.decode())}


def value(text: bytes, sample: str, **labels: str) -> float:
    for fam in text_string_to_metric_families(text.decode()):
        for s in fam.samples:
            if s.name == sample and s.labels == labels:
                return float(s.value)
    raise AssertionError(f"no sample {sample}{labels} in:\n{text.decode()}")


# -- the registry and its format ---------------------------------------------------

def test_counter_histogram_and_callback_read_back_by_prometheus_parser() -> None:
    reg = metrics.Registry()
    c = reg.add(metrics.Counter("t_requests_total", "Requests.", ("op", "status")))
    h = reg.add(metrics.Histogram("t_action_seconds", "Durations.", ("action",),
                                  buckets=(0.1, 1.0)))
    plain = reg.add(metrics.Counter("t_plain_total", "No labels."))
    reg.replace(metrics._Callback("t_states", "States.", "gauge",
                                  lambda: [(("running",), 2), (("paused",), 0)], ("state",)))
    c.inc("GET /x", "200")
    c.inc("GET /x", "200")
    c.inc("GET /x", "404")
    h.observe(0.05, "create")
    h.observe(0.5, "create")
    h.observe(3, "create")
    plain.inc(amount=2.5)
    text = reg.render()
    fams = families(text)
    assert fams["t_requests"].type == "counter"
    assert fams["t_action_seconds"].type == "histogram"
    assert fams["t_states"].type == "gauge"
    assert value(text, "t_requests_total", op="GET /x", status="200") == 2
    assert value(text, "t_requests_total", op="GET /x", status="404") == 1
    assert value(text, "t_plain_total") == 2.5
    assert value(text, "t_action_seconds_bucket", action="create", le="0.1") == 1
    assert value(text, "t_action_seconds_bucket", action="create", le="1") == 2
    assert value(text, "t_action_seconds_bucket", action="create", le="+Inf") == 3
    assert value(text, "t_action_seconds_count", action="create") == 3
    assert value(text, "t_action_seconds_sum", action="create") == pytest.approx(3.55)
    assert value(text, "t_states", state="running") == 2
    # Prometheus writes whole numbers without a point, as dockerd's Go client does
    assert b't_action_seconds_bucket{action="create",le="1"} 2\n' in text


def test_bucket_bound_is_inclusive() -> None:
    h = metrics.Histogram("t_seconds", "x", buckets=(0.1, 1.0))
    h.observe(0.1)
    text = "".join(h.lines())
    assert 't_seconds_bucket{le="0.1"} 1' in text


def test_label_values_and_help_are_escaped() -> None:
    reg = metrics.Registry()
    c = reg.add(metrics.Counter("t_total", 'Help with \\ and\nnewline.', ("v",)))
    odd = 'a"b\\c\nd'
    c.inc(odd)
    text = reg.render()
    assert value(text, "t_total", v=odd) == 1
    assert families(text)["t"].documentation == "Help with \\ and\nnewline."


def test_initial_series_show_zero_before_the_first_action() -> None:
    text = metrics.REGISTRY.render()
    for action in ("create", "start", "stop", "delete", "commit", "changes"):
        value(text, "engine_daemon_container_actions_seconds_count", action=action)
    for action in ("pull", "delete", "tag", "push", "history"):
        value(text, "engine_daemon_image_actions_seconds_count", action=action)
    value(text, "builder_builds_failed_total", reason="dockerfile_syntax_error")


def test_wrong_number_of_labels_is_refused() -> None:
    c = metrics.Counter("t_total", "x", ("a", "b"))
    with pytest.raises(ValueError, match="takes labels"):
        c.inc("only-one")


def test_a_failing_scrape_function_costs_only_its_own_family() -> None:
    reg = metrics.Registry()
    reg.add(metrics.Counter("t_ok_total", "x")).inc()

    def broken() -> float:
        raise RuntimeError("gone")

    reg.replace(metrics._Callback("t_broken", "x", "gauge", broken))
    text = reg.render()
    assert value(text, "t_ok_total") == 1
    assert b"t_broken: not read: gone" in text
    assert "t_broken" not in families(text)


def test_on_scrape_replaces_and_reads_at_each_scrape() -> None:
    n = [3]
    metrics.on_scrape("t_unit_gauge", "x", lambda: n[0])
    try:
        assert value(metrics.REGISTRY.render(), "t_unit_gauge") == 3
        n[0] = 5
        assert value(metrics.REGISTRY.render(), "t_unit_gauge") == 5
        metrics.on_scrape("t_unit_gauge", "x", lambda: 7)
        assert value(metrics.REGISTRY.render(), "t_unit_gauge") == 7
    finally:
        metrics.REGISTRY.remove("t_unit_gauge")
    with pytest.raises(ValueError, match="kind"):
        metrics.on_scrape("t_x", "x", lambda: 1, kind="summary")


def test_dropped_log_entries_are_read_from_the_registered_function() -> None:
    dropped = [0]
    metrics.count_dropped_log_entries(lambda: dropped[0])
    try:
        dropped[0] = 41
        text = metrics.REGISTRY.render()
        assert value(text, "logger_log_entries_dropped_total") == 41
        assert families(text)["logger_log_entries_dropped"].type == "counter"
    finally:
        metrics.REGISTRY.remove("logger_log_entries_dropped_total")


def test_timed_observes_success_only_sync_and_async() -> None:
    h = metrics.Histogram("t_seconds", "x", ("action",))

    @metrics.timed(h, "sync")
    def work(fail: bool) -> int:
        if fail:
            raise ValueError("no")
        return 1

    @metrics.timed(h, "async")
    async def awork(fail: bool) -> int:
        await trio.sleep(0)
        if fail:
            raise ValueError("no")
        return 2

    assert work(False) == 1
    with pytest.raises(ValueError):
        work(True)
    assert trio.run(awork, False) == 2
    with pytest.raises(ValueError):
        trio.run(awork, True)
    assert h.count("sync") == 1
    assert h.count("async") == 1
    with h.time("block"):
        pass
    with pytest.raises(KeyError), h.time("block"):
        raise KeyError("x")
    assert h.count("block") == 1


def test_build_failure_reasons_are_dockerds() -> None:
    def reason_of(dockerfile: str) -> str:
        try:
            parse_dockerfile(dockerfile.encode())
        except DockerfileError as exc:
            return failure_reason(exc)
        raise AssertionError("parsed")

    assert reason_of("FROM busybox\nFOO bar\n") == "unknown_instruction_error"
    assert reason_of("# only a comment\n") == "dockerfile_empty_error"
    assert reason_of("FROM busybox\nCOPY --nope=1 a b\n") == "dockerfile_syntax_error"
    assert failure_reason(DockerfileError('target stage "x" could not be found')) == \
        "build_target_not_reachable_error"
    assert failure_reason(RuntimeError("RUN failed")) == "error_processing_commands_error"


# -- metrics-addr -------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:9323", ("127.0.0.1", 9323)),
    ("[::1]:9323", ("::1", 9323)),
    ("localhost:1", ("localhost", 1)),
    ("0.0.0.0:65535", ("0.0.0.0", 65535)),
])
def test_metrics_address_accepted(text: str, expected: tuple[str, int]) -> None:
    assert metrics_address(text) == expected


@pytest.mark.parametrize(("text", "why"), [
    ("9323", "expected host:port"),
    (":9323", "expected host:port"),
    ("127.0.0.1", "expected host:port"),
    ("127.0.0.1:0", "1 to 65535"),
    ("127.0.0.1:70000", "1 to 65535"),
    ("127.0.0.1:http", "1 to 65535"),
    ("::1:9323", "takes brackets"),
    ("[127.0.0.1]:9323", "brackets are for IPv6"),
    ("metrics.example.com:9323", "IP address or localhost"),
])
def test_metrics_address_refused(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        metrics_address(text)


def test_loopback() -> None:
    assert metrics_on_loopback("127.0.0.1")
    assert metrics_on_loopback("127.1.2.3")
    assert metrics_on_loopback("::1")
    assert metrics_on_loopback("localhost")
    assert not metrics_on_loopback("0.0.0.0")
    assert not metrics_on_loopback("10.1.2.3")


def test_config_key_and_flag(tmp_path: Path) -> None:
    f = tmp_path / "daemon.json"
    f.write_text("{}")
    config, _ = load(["--config-file", str(f)])
    assert config["metrics-addr"] == ""  # off by default
    config, _ = load(["--config-file", str(f), "--metrics-addr", "127.0.0.1:9323"])
    assert config["metrics-addr"] == "127.0.0.1:9323"
    f.write_text('{"metrics-addr": "127.0.0.1:9324"}')
    config, _ = load(["--config-file", str(f)])
    assert config["metrics-addr"] == "127.0.0.1:9324"
    f.write_text('{"metrics-addr": "example.org:80"}')
    with pytest.raises(ConfigError, match=r"invalid value for 'metrics-addr': 'example.org:80'"
                                          r": the host must be an IP address"):
        load(["--config-file", str(f)])
    f.write_text('{"metrics-addr": 9323}')
    with pytest.raises(ConfigError, match="expected a string"):
        load(["--config-file", str(f)])


# -- the server ----------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: never through a proxy the environment may name
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with _OPENER.open(url, timeout=10) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def serving(body: Callable[[int], Awaitable[None]]) -> None:
    async def main() -> None:
        port = free_port()
        listeners = await open_metrics_listeners(f"127.0.0.1:{port}")
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                await nursery.start(serve_metrics, listeners)
                await body(port)
                nursery.cancel_scope.cancel()
    trio.run(main)


def test_metrics_served_over_tcp() -> None:
    async def body(port: int) -> None:
        metrics.health_checks.inc()
        status, ctype, text = await trio.to_thread.run_sync(
            get, f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        assert ctype == metrics.CONTENT_TYPE
        assert value(text, "engine_daemon_health_checks_total") == \
            metrics.health_checks.value()
        status, _, text = await trio.to_thread.run_sync(get, f"http://127.0.0.1:{port}/info")
        assert status == 404  # nothing of the Docker API here
    serving(body)


def test_port_in_use_refuses_with_the_reason() -> None:
    async def main() -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            with pytest.raises(ConfigError, match=rf"metrics-addr 127.0.0.1:{port}: cannot "
                                                  r"listen: .*another process listens there"):
                await open_metrics_listeners(f"127.0.0.1:{port}")
    trio.run(main)


def test_address_not_on_this_host_refuses() -> None:
    async def main() -> None:
        # TEST-NET-1 (RFC 5737) is never a local address
        with pytest.raises(ConfigError, match=r"metrics-addr 192\.0\.2\.1:9323: cannot listen"):
            await open_metrics_listeners("192.0.2.1:9323")
    trio.run(main)


def test_api_requests_counted_by_route_and_status_not_path() -> None:
    seen: list[tuple[str, str, float]] = []
    router = Router()

    @router.route("GET", "/things/{id}/json")
    async def thing(req: Request, id: str) -> Response:
        if id == "missing":
            from skiff.core.errors import NotFound
            raise NotFound(f"No such thing: {id}")
        return Response(200, b"ok")

    router.observe = lambda op, status, s: seen.append((op, status, s))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            port = listeners[0].socket.getsockname()[1]

            async def handle(stream: trio.SocketStream) -> None:
                await serve_connection(stream, router)

            await nursery.start(trio.serve_listeners, handle, listeners)
            for path in ("/v1.41/things/abc/json", "/things/missing/json", "/nowhere"):
                await trio.to_thread.run_sync(get, f"http://127.0.0.1:{port}{path}")
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert [(op, st) for op, st, _ in seen] == [
        ("GET /things/{id}/json", "200"), ("GET /things/{id}/json", "404"),
        ("unmatched", "404")]
    assert all(s > 0 for _, _, s in seen)


def test_scrapes_are_not_api_requests() -> None:
    assert metrics_router().observe is None


def test_observe_request_feeds_both_instruments() -> None:
    before = metrics.api_requests.value("GET /unit-test", "200")
    metrics.observe_request("GET /unit-test", "200", 0.002)
    assert metrics.api_requests.value("GET /unit-test", "200") == before + 1
    assert metrics.api_request_seconds.count("GET /unit-test") >= 1
