"""Lifecycle details as dockerd has them (issue 17, item 2), each side by side with
the tests' private dockerd where dockerd is the reference: ``docker kill`` returns
after the exit, restart-policy and runtime errors at create, ``--group-add``,
LogConfig as given, ``docker rm --link``, attach with ``stream=0`` and the
websocket attach endpoint.  The twin dockerd has no bridge: ``--network none``.
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker as dockerpy
import pytest
import websocket

from benchmarks.engines import Dockerd
from tests.daemon import Daemon, running_daemon
from tests.e2e.conftest import twin_of
from tests.sidebyside import Side, SideBySide, fields, normalised, removing, unique

NONE = ("--network", "none")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_daemon(tmp_path_factory.mktemp("skiffd-life")) as d:
        d.skiff("image", "bootstrap", "busybox")
        yield d


@pytest.fixture(scope="module")
def sbs(daemon: Daemon, twin_dockerd: Dockerd, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[SideBySide]:
    both = twin_of(daemon, twin_dockerd, tmp_path_factory.mktemp("life-twin"))
    yield both
    both.close()


def inspect(side: Side, ref: str) -> dict[str, Any]:
    return json.loads(side.out("inspect", ref))[0]  # type: ignore[no-any-return]


def err(side: Side, *args: str, **names: str) -> tuple[int, str]:
    res = side.docker(*args)
    return res.returncode, normalised(res.stderr.decode().strip(), **names)


# -- 1. docker kill ------------------------------------------------------------------

def test_kill_returns_after_the_exit(sbs: SideBySide) -> None:
    def run(side: Side) -> dict[str, Any]:
        n = unique("kill")
        with removing(side, ("container", n)):
            side.out("run", "-d", "--name", n, *NONE, "busybox", "sleep", "300")
            side.out("kill", "-s", "WINCH", n)  # ignored by sleep: returns at once, runs on
            running = inspect(side, n)["State"]["Running"]
            side.out("kill", n)
            return {"after_winch": running,
                    **fields(inspect(side, n), "State.Status", "State.Running",
                             "State.ExitCode", "State.Pid")}

    assert sbs.same(run) == {"after_winch": True, "State.Status": "exited",
                             "State.Running": False, "State.ExitCode": 137, "State.Pid": 0}


def test_docker_py_kill_then_reload_shows_exited(sbs: SideBySide) -> None:
    def run(side: Side) -> tuple[str, int]:
        c = side.client.containers.run("busybox", ["sleep", "300"], detach=True,
                                       network_mode="none")
        try:
            c.kill()
            c.reload()
            return c.status, c.attrs["State"]["ExitCode"]
        finally:
            c.remove(force=True)

    assert sbs.same(run) == ("exited", 137)


# -- 2. restart policies -------------------------------------------------------------

POLICIES = [
    {"Name": "always", "MaximumRetryCount": 3},
    {"Name": "unless-stopped", "MaximumRetryCount": 2},
    {"Name": "no", "MaximumRetryCount": -1},
    {"Name": "on-failure", "MaximumRetryCount": -1},
    {"Name": "sometimes"},
    {"Name": "", "MaximumRetryCount": 1},
    {"Name": "on-failure", "MaximumRetryCount": 4},
]


@pytest.mark.parametrize("policy", POLICIES,
                         ids=lambda p: f"{p['Name']}:{p.get('MaximumRetryCount')}")
def test_restart_policy_checked_at_create(sbs: SideBySide, policy: dict[str, Any]) -> None:
    def run(side: Side) -> Any:
        res = side.raw("POST", "/containers/create", json={
            "Image": "busybox", "Cmd": ["true"],
            "HostConfig": {"NetworkMode": "none", "RestartPolicy": policy}})
        if res.status_code != 201:
            return res.status_code, res.json()["message"]
        cid = res.json()["Id"]
        try:
            return inspect(side, cid)["HostConfig"]["RestartPolicy"]
        finally:
            side.docker("rm", "-f", cid)

    sbs.same(run)


def test_restart_policy_cli_message(sbs: SideBySide) -> None:
    assert "maximum retry count cannot be used with restart policy 'always'" in sbs.same(
        lambda side: err(side, "create", "--restart", "always:3", "busybox", "true"))[1]


# -- 3. runtimes -----------------------------------------------------------------------

def test_runtime_in_info_inspect_and_unknown_refused(sbs: SideBySide) -> None:
    def run(side: Side) -> dict[str, Any]:
        info = side.raw("GET", "/info").json()
        default = info["DefaultRuntime"]
        n = unique("rt")
        with removing(side, ("container", n)):
            side.out("create", "--name", n, *NONE, "--runtime", default, "busybox", "true")
            named = inspect(side, n)["HostConfig"]["Runtime"]
        res = side.raw("POST", "/containers/create", json={
            "Image": "busybox", "Cmd": ["true"], "HostConfig": {"NetworkMode": "none"}})
        cid = res.json()["Id"]
        implicit = inspect(side, cid)["HostConfig"]["Runtime"]
        side.docker("rm", cid)
        return {"listed": default in info["Runtimes"], "named": named == default,
                "implicit": implicit == default,
                "unknown": err(side, "create", *NONE, "--runtime", "nosuchrt", "busybox", "true")}

    assert sbs.same(run)["unknown"] == (
        1, "Error response from daemon: Unknown runtime specified nosuchrt")


def test_skiffd_names_its_runtime(sbs: SideBySide) -> None:
    info = sbs.skiffd.raw("GET", "/info").json()
    assert info["DefaultRuntime"] == "skiff"
    assert info["Runtimes"] == {"skiff": {"path": "skiff"}}


# -- 4. --group-add ----------------------------------------------------------------------

def test_group_add_names_and_numbers(sbs: SideBySide) -> None:
    def run(side: Side) -> dict[str, Any]:
        n = unique("ga")
        with removing(side, ("container", n)):
            side.out("run", "-d", "--name", n, *NONE, "--group-add", "10", "--group-add",
                     "daemon", "--group-add", "12345", "busybox", "sleep", "300")
            return {"GroupAdd": inspect(side, n)["HostConfig"]["GroupAdd"],
                    "run": side.out("run", "--rm", *NONE, "--group-add", "10", "--group-add",
                                    "daemon", "--group-add", "12345", "busybox", "id", "-G"),
                    "exec": side.out("exec", n, "id", "-G"),
                    "exec_nobody": side.out("exec", "-u", "nobody", n, "id", "-G")}

    assert sbs.same(run)["run"] == "0 1 10 12345"


def test_group_add_unknown_name_fails_start(sbs: SideBySide) -> None:
    want = "Unable to find group nosuchgroup: no matching entries in group file"

    def run(side: Side) -> dict[str, Any]:
        n = unique("ga")
        with removing(side, ("container", n)):
            res = side.docker("run", "--name", n, *NONE, "--group-add", "nosuchgroup",
                              "busybox", "true")
            state = inspect(side, n)["State"]
            return {"code": res.returncode, "said": want in res.stderr.decode(),
                    "running": state["Running"], "error": want in state["Error"]}

    assert sbs.same(run) == {"code": 125, "said": True, "running": False, "error": True}


# -- 5. LogConfig ------------------------------------------------------------------------

LOG_CONFIGS = [
    {"Type": "", "Config": {"max-size": "1m"}},
    {"Type": "json-file", "Config": None},
    {"Type": "json-file", "Config": {"max-size": "1m", "max-file": "2"}},
    {"Type": "none", "Config": {}},
    {"Type": "json-file", "Config": {"bogus": "1"}},
]


@pytest.mark.parametrize("log_config", LOG_CONFIGS, ids=json.dumps)
def test_log_config_kept_as_given(sbs: SideBySide, log_config: dict[str, Any]) -> None:
    def run(side: Side) -> Any:
        res = side.raw("POST", "/containers/create", json={
            "Image": "busybox", "Cmd": ["true"],
            "HostConfig": {"NetworkMode": "none", "LogConfig": log_config}})
        if res.status_code != 201:
            return res.status_code, res.json()["message"]
        cid = res.json()["Id"]
        try:
            return inspect(side, cid)["HostConfig"]["LogConfig"]
        finally:
            side.docker("rm", "-f", cid)

    sbs.same(run)


def test_log_driver_flags_and_none(sbs: SideBySide) -> None:
    def run(side: Side) -> dict[str, Any]:
        a, b = unique("log"), unique("log")
        with removing(side, ("container", a), ("container", b)):
            side.out("run", "--name", a, *NONE, "--log-driver", "json-file", "--log-opt",
                     "max-size=1m", "busybox", "echo", "hi")
            out = side.out("run", "--name", b, *NONE, "--log-driver", "none", "busybox",
                           "echo", "hi")
            return {"given": inspect(side, a)["HostConfig"]["LogConfig"],
                    "logs": side.out("logs", a),
                    "none_run": out, "none": inspect(side, b)["HostConfig"]["LogConfig"],
                    "none_logs": err(side, "logs", b)}

    got = sbs.same(run)
    assert got["given"] == {"Type": "json-file", "Config": {"max-size": "1m"}}
    assert got["none_logs"] == (
        1, "Error response from daemon: configured logging driver does not support reading")


# -- 6. docker rm --link -----------------------------------------------------------------

def test_rm_link_removes_a_legacy_link(sbs: SideBySide) -> None:
    def run(side: Side) -> dict[str, Any]:
        a, b = unique("la"), unique("lb")
        with removing(side, ("container", b), ("container", a)):
            side.out("create", "--name", a, *NONE, "busybox", "true")
            side.out("create", "--name", b, "--link", f"{a}:al", "busybox", "true")
            return {"rm": normalised(side.out("rm", "--link", f"{b}/al"), b=b),
                    "links": inspect(side, b)["HostConfig"]["Links"],
                    "both_there": bool(inspect(side, a)) and bool(inspect(side, b)),
                    "again": err(side, "rm", "--link", f"{b}/al", b=b),
                    "no_alias": err(side, "rm", "--link", b)[1],
                    "no_parent": err(side, "rm", "--link", "nosuchparent/al")}

    got = sbs.same(run)
    assert got["links"] is None
    assert got["again"] == (1, "Error response from daemon: No such container: <b>/al")


# -- 7. attach with stream=0 -------------------------------------------------------------

def frames(data: bytes) -> list[tuple[int, bytes]]:
    out = []
    while data:
        kind, size = struct.unpack(">BxxxL", data[:8])
        out.append((kind, data[8:8 + size]))
        data = data[8 + size:]
    return out


def test_attach_logs_without_stream_returns_the_log_and_ends(sbs: SideBySide) -> None:
    def run(side: Side) -> dict[str, Any]:
        n = unique("at")
        with removing(side, ("container", n)):
            side.out("run", "--name", n, *NONE, "busybox", "sh", "-c", "echo out; echo err >&2")
            seen = {}
            for key, params in (("both", {"stdout": 1, "stderr": 1}), ("out", {"stdout": 1}),
                                ("nologs", {"logs": 0, "stdout": 1, "stderr": 1})):
                res = side.raw("POST", f"/containers/{n}/attach", timeout=20,
                               params={"logs": 1, "stream": 0, **params})
                # not the Content-Type: dockerd 20.10 calls these frames a raw stream
                seen[key] = (res.status_code, sorted(frames(res.content)))
            return seen

    got = sbs.same(run)
    assert got["both"][1] == [(1, b"out\n"), (2, b"err\n")]
    assert got["nologs"] == (200, [])


def test_docker_py_attach_logs_not_streamed(daemon: Daemon) -> None:
    client = dockerpy.DockerClient(base_url=daemon.host, version="1.41", timeout=20)
    c = client.containers.run("busybox", ["sh", "-c", "echo out; echo err >&2"], detach=True,
                              network_mode="none")
    try:
        c.wait()
        got = c.attach(logs=True, stream=False)
        assert b"out\n" in got and b"err\n" in got
    finally:
        c.remove(force=True)
        client.close()


# -- 8. the websocket attach -------------------------------------------------------------

def ws_connect(side: Side, path: str) -> websocket.WebSocket:
    """A real websocket client on the engine's unix socket."""
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(20)
    sock.connect(side.host.removeprefix("unix://"))
    ws = websocket.WebSocket()
    ws.connect(f"ws://localhost/v1.41{path}", socket=sock)
    return ws


def receive(ws: websocket.WebSocket, want: int) -> list[tuple[int, bytes]]:
    got: list[tuple[int, bytes]] = []
    while sum(len(d) for _, d in got) < want:
        opcode, data = ws.recv_data()
        got.append((opcode, data))
    return got


def test_websocket_attach_feeds_cat_and_reads_back(sbs: SideBySide) -> None:
    def run(side: Side) -> list[tuple[int, bytes]]:
        n = unique("ws")
        with removing(side, ("container", n)):
            side.out("run", "-di", "--name", n, *NONE, "busybox", "cat")
            ws = ws_connect(side, f"/containers/{n}/attach/ws?stream=1&stdin=1&stdout=1&stderr=1")
            try:
                assert ws.getstatus() == 101
                ws.send("hello\n")
                got = receive(ws, 6)
                ws.send_binary(b"binary\n")
                got += receive(ws, 7)
            finally:
                ws.close()
            return got

    got = sbs.same(run)
    assert b"".join(d for _, d in got) == b"hello\nbinary\n"
    assert {op for op, _ in got} == {websocket.ABNF.OPCODE_BINARY}


def test_websocket_attach_logs_of_an_exited_container(sbs: SideBySide) -> None:
    def run(side: Side) -> dict[str, Any]:
        n = unique("ws")
        with removing(side, ("container", n)):
            side.out("run", "--name", n, *NONE, "busybox", "sh", "-c", "echo out; echo err >&2")
            ws = ws_connect(side, f"/containers/{n}/attach/ws?logs=1&stdout=1&stderr=1")
            try:
                got = receive(ws, 8)
            finally:
                ws.close()
            missing = side.raw("GET", "/containers/nosuchws/attach/ws").status_code
            # message boundaries are the engine's business: the bytes and opcodes count
            return {"log": sorted(b"".join(d for _, d in got).splitlines()),
                    "opcodes": {op for op, _ in got}, "missing": missing}

    assert sbs.same(run) == {"log": [b"err", b"out"], "opcodes": {websocket.ABNF.OPCODE_BINARY},
                             "missing": 404}


def test_daemon_log_driver_none(tmp_path: Path) -> None:
    """daemon.json ``log-driver: none``, as dockerd takes it: containers keep no log."""
    with running_daemon(tmp_path / "nolog", **{"log-driver": "none"}) as d:
        d.skiff("image", "bootstrap", "busybox")
        n = unique("nolog")
        out = d.docker("run", "--name", n, *NONE, "busybox", "echo", "hi", check=True)
        assert out.stdout == b"hi\n"
        lc = json.loads(d.docker("inspect", "--format", "{{json .HostConfig.LogConfig}}", n,
                                 check=True).stdout)
        assert lc == {"Type": "none", "Config": {}}
        res = d.docker("logs", n)
        assert res.returncode == 1
        assert b"configured logging driver does not support reading" in res.stderr
        d.docker("rm", "-f", n, check=True)


# -- host options: DNS, the OOM score, /dev/shm ----------------------------------------

@pytest.mark.parametrize("opts", [
    (),
    ("--dns", "10.9.8.7", "--dns", "10.9.8.6"),
    ("--dns-search", "a.example", "--dns-search", "b.example", "--dns-option", "ndots:2",
     "--dns-option", "timeout:3"),
    ("--dns", "10.9.8.7", "--dns-search", "."),
], ids=["host", "servers", "search-options", "no-search"])
def test_resolv_conf_with_dns_options(sbs: SideBySide, opts: tuple[str, ...]) -> None:
    """Each of --dns, --dns-search and --dns-option replaces the host's lines of its kind."""
    sbs.same(lambda side: side.out("run", "--rm", *NONE, *opts, "busybox", "cat",
                                   "/etc/resolv.conf"))


@pytest.mark.parametrize("score", ["500", "1000"])
def test_oom_score_adj_for_the_container_and_its_execs(sbs: SideBySide, score: str) -> None:
    """(A lower score needs CAP_SYS_RESOURCE, which this machine's root lacks:
    both engines refuse it here.)"""
    def run(side: Side) -> list[str]:
        n = unique("oom")
        with removing(side, ("container", n)):
            side.out("run", "-d", "--name", n, *NONE, "--oom-score-adj", score, "busybox",
                     "sh", "-c", "sleep 300 & wait")
            return [side.out("exec", n, "cat", f"/proc/{pid}/oom_score_adj").strip()
                    for pid in ("1", "self")]

    assert sbs.same(run) == [score, score]


@pytest.mark.parametrize("host_config", [{"ShmSize": -1}, {"OomScoreAdj": 1001}],
                         ids=["shm", "oom"])
def test_out_of_range_values_refused(sbs: SideBySide, host_config: dict[str, Any]) -> None:
    def run(side: Side) -> tuple[int, str]:
        res = side.raw("POST", "/containers/create", json={
            "Image": "busybox", "Cmd": ["true"],
            "HostConfig": {"NetworkMode": "none", **host_config}})
        if res.status_code == 201:
            side.docker("rm", "-f", res.json()["Id"])
        return res.status_code, res.json().get("message", "")

    assert sbs.same(run)[0] == 400


@pytest.mark.parametrize("host_config, words", [
    ({"Sysctls": {"net.ipv4.ip_forward": "1"}}, "net.ipv4.ip_forward"),
    ({"Cgroup": "container:x"}, "Cgroup"),
    ({"Dns": ["not-an-address"]}, "not-an-address is not an ip address"),
    ({"DnsSearch": ["a.example\nnameserver 10.0.0.1"]}, "DnsSearch"),
    ({"CgroupParent": "system.slice:docker:x"}, "only for the systemd cgroup driver"),
    ({"DeviceRequests": [{"Count": -1, "Capabilities": [["gpu"]]}]}, "--gpus"),
    ({"IOMaximumIOps": 5}, "does not support Maximum IO"),
], ids=["sysctls", "cgroup", "dns", "search", "cgroup-parent", "gpus", "iops"])
def test_settings_skiff_cannot_honour_are_refused(daemon: Daemon, host_config: dict[str, Any],
                                                  words: str) -> None:
    """Not dockerd's answer (it honours sysctls and joins cgroups): skiff refuses
    what it would otherwise drop, and nothing is created."""
    client = dockerpy.DockerClient(base_url=daemon.host, version="1.41", timeout=60)
    try:
        before = len(client.api.containers(all=True))
        res = client.api.request("POST", client.api._url("/containers/create"), json={
            "Image": "busybox", "Cmd": ["true"],
            "HostConfig": {"NetworkMode": "none", **host_config}})
        assert res.status_code == 400, res.text
        assert words in res.json()["message"]
        assert len(client.api.containers(all=True)) == before
    finally:
        client.close()


def test_an_exec_that_fails_at_go_leaves_no_running_record(daemon: Daemon,
                                                            tmp_path: Path) -> None:
    """A start writes its record ("running") beside go, in a worker thread;
    when the command's execve fails only then (a file the kernel cannot run),
    the record on disk says what happened, not "running"."""
    bad = tmp_path / "notelf"
    bad.write_bytes(b"\x00\x01 not a program\n")
    bad.chmod(0o755)
    name = unique("goerr")
    try:
        res = daemon.docker("run", "--name", name, "--network", "none", "-v",
                            f"{bad}:/notelf:ro", "busybox", "/notelf")
        assert res.returncode != 0 and b"exec format error" in res.stderr, res
        cid = daemon.docker("inspect", "-f", "{{.Id}}", name, check=True).stdout.decode().strip()
        record = json.loads((daemon.root_dir / "containers" / cid / "config.v2.json")
                            .read_text())
        assert record["State"]["Running"] is False, record["State"]
        assert record["State"]["Status"] == "created"
        assert "exec format error" in record["State"]["Error"], record["State"]
    finally:
        daemon.docker("rm", "-f", name)
