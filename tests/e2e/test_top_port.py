"""``docker top`` and ``docker port`` (issue 5, item 3)."""

from __future__ import annotations

import json
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon import Daemon, running_daemon


@pytest.fixture(scope="module")
def skiffd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    base: Path = tmp_path_factory.mktemp("skiffd-top")
    with running_daemon(base, **{"storage-driver": "overlay2"}) as d:
        d.skiff("image", "bootstrap", "busybox")
        yield d


@pytest.fixture
def running(skiffd: Daemon) -> Iterator[str]:
    name = f"top-{secrets.token_hex(4)}"
    skiffd.docker("run", "-d", "--name", name, "busybox", "sh", "-c",
                  "sleep 301 & sleep 302 & wait", check=True)
    yield name
    skiffd.docker("rm", "-f", name)


def test_top_default_lists_only_the_containers_processes(skiffd: Daemon, running: str) -> None:
    out = skiffd.docker("top", running, check=True).stdout.decode().splitlines()
    titles = out[0].split()
    assert titles[:2] == ["UID", "PID"] and titles[-1] == "CMD"
    cmds = [line.split(None, len(titles) - 1)[-1] for line in out[1:]]
    assert sorted(cmds) == sorted(["sh -c sleep 301 & sleep 302 & wait",
                                   "sleep 301", "sleep 302"]), out
    pid1 = json.loads(skiffd.docker("inspect", running, check=True).stdout)[0]["State"]["Pid"]
    pids = {int(line.split()[1]) for line in out[1:]}
    assert pid1 in pids  # host pids, as Docker shows them


def test_top_with_ps_args(skiffd: Daemon, running: str) -> None:
    out = skiffd.docker("top", running, "-o", "pid,comm", check=True).stdout.decode()
    lines = out.splitlines()
    assert lines[0].split() == ["PID", "COMMAND"]
    assert sorted(line.split()[1] for line in lines[1:]) == ["sh", "sleep", "sleep"]


def test_top_of_stopped_container_is_409(skiffd: Daemon) -> None:
    name = f"top-{secrets.token_hex(4)}"
    skiffd.docker("create", "--name", name, "busybox", "true", check=True)
    try:
        res = skiffd.docker("top", name)
        assert res.returncode != 0 and b"is not running" in res.stderr, res
    finally:
        skiffd.docker("rm", name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_port_lists_published_ports(skiffd: Daemon) -> None:
    name = f"port-{secrets.token_hex(4)}"
    fixed = _free_port()
    skiffd.docker("run", "-d", "--name", name, "-p", f"127.0.0.1:{fixed}:80",
                  "-p", "127.0.0.1::53/udp", "busybox", "sleep", "300", check=True)
    try:
        ports = json.loads(skiffd.docker("inspect", name, check=True).stdout)[0][
            "NetworkSettings"]["Ports"]
        assert ports["80/tcp"] == [{"HostIp": "127.0.0.1", "HostPort": str(fixed)}], ports
        udp = ports["53/udp"][0]
        assert udp["HostIp"] == "127.0.0.1" and int(udp["HostPort"]) > 0, ports

        out = skiffd.docker("port", name, check=True).stdout.decode().splitlines()
        assert f"80/tcp -> 127.0.0.1:{fixed}" in out, out
        assert f"53/udp -> 127.0.0.1:{udp['HostPort']}" in out, out
        one = skiffd.docker("port", name, "80/tcp", check=True).stdout.decode().split()
        assert one == [f"127.0.0.1:{fixed}"]
        res = skiffd.docker("port", name, "81/tcp")
        assert res.returncode != 0 and b"No public port" in res.stderr, res
    finally:
        skiffd.docker("rm", "-f", name)
