"""``docker run --init``: skiff-init as PID 1 forwards signals, reaps zombies,
passes exit codes through (issue 5, item 3)."""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon import Daemon, running_daemon


@pytest.fixture(scope="module")
def skiffd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    # The init does not depend on the storage driver: one daemon is enough.
    base: Path = tmp_path_factory.mktemp("skiffd-init")
    with running_daemon(base, **{"storage-driver": "overlay2"}) as d:
        d.skiff("image", "bootstrap", "busybox")
        yield d


def _name() -> str:
    return f"init-{secrets.token_hex(4)}"


def _inspect(d: Daemon, name: str) -> dict:
    return json.loads(d.docker("inspect", name, check=True).stdout)[0]


def _children(pid: int) -> list[tuple[int, str, str]]:
    """(pid, state letter, comm) of the host processes whose parent is ``pid``."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        if int(fields.get("PPid", "0")) == pid:
            out.append((int(entry), fields["State"].split()[0], fields["Name"].strip()))
    return out


def _poll(check, what: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_init_is_pid1_and_command_its_child(skiffd: Daemon) -> None:
    res = skiffd.docker("run", "--rm", "--init", "busybox", "ps", "-o", "pid,ppid,comm",
                        check=True)
    rows = [line.split() for line in res.stdout.decode().splitlines()[1:]]
    by_comm = {r[2]: r for r in rows}
    assert by_comm["docker-init"][0] == "1", rows
    assert by_comm["ps"][1] == "1" and by_comm["ps"][0] != "1", rows


def test_init_inspect_and_mount_readonly(skiffd: Daemon) -> None:
    name = _name()
    res = skiffd.docker("run", "--name", name, "--init", "busybox", "sh", "-c",
                        "echo x > /sbin/docker-init; echo rc=$?", check=True)
    assert b"rc=1" in res.stdout or b"Read-only" in res.stderr, res
    info = _inspect(skiffd, name)
    assert info["HostConfig"]["Init"] is True
    assert info["Path"] == "sh"  # the user's command, not the init
    skiffd.docker("rm", name, check=True)


def test_exit_codes_pass_through(skiffd: Daemon) -> None:
    res = skiffd.docker("run", "--rm", "--init", "busybox", "sh", "-c", "exit 7")
    assert res.returncode == 7, res
    res = skiffd.docker("run", "--rm", "--init", "busybox", "sh", "-c", "kill -9 $$")
    assert res.returncode == 137, res


def test_orphan_zombies_are_reaped(skiffd: Daemon) -> None:
    # The inner sh leaves `sleep 0.1` behind: it is orphaned to PID 1 and
    # turns zombie when it ends.  `exec sleep` as PID 1 never reaps it; the
    # init does.
    script = 'sh -c "sleep 0.1 &"; exec sleep 60'
    plain, inited = _name(), _name()
    try:
        skiffd.docker("run", "-d", "--name", plain, "busybox", "sh", "-c", script, check=True)
        skiffd.docker("run", "-d", "--name", inited, "--init", "busybox", "sh", "-c", script,
                      check=True)
        pid1 = _inspect(skiffd, plain)["State"]["Pid"]
        # without an init the zombie stays: the test can see one
        _poll(lambda: [c for c in _children(pid1) if c[1] == "Z"], "a zombie under sleep")

        init_pid = _inspect(skiffd, inited)["State"]["Pid"]
        assert Path(f"/proc/{init_pid}/comm").read_text().strip() == "docker-init"
        # the orphan came to the init and went: only the command remains
        _poll(lambda: [c[2] for c in _children(init_pid)] == ["sleep"],
              "the orphan reaped by the init")
        time.sleep(0.3)  # the orphan's own 0.1 s are over: still no zombie
        assert [c for c in _children(init_pid) if c[1] == "Z"] == []
    finally:
        skiffd.docker("rm", "-f", plain, inited)


def test_stop_forwards_sigterm(skiffd: Daemon) -> None:
    # Without an init, PID 1 `sleep` has no SIGTERM handler and only SIGKILL
    # ends it (137).  With the init the forwarded SIGTERM kills sleep: 143.
    name = _name()
    try:
        skiffd.docker("run", "-d", "--name", name, "--init", "busybox", "sleep", "300",
                      check=True)
        skiffd.docker("stop", "-t", "30", name, check=True, timeout=60)
        state = _inspect(skiffd, name)["State"]
        assert state["Running"] is False
        assert state["ExitCode"] == 143, state
    finally:
        skiffd.docker("rm", "-f", name)


def test_init_default_and_init_path_from_daemon_json(tmp_path: Path) -> None:
    script = tmp_path / "my-init"
    script.write_text('#!/bin/sh\n[ "$1" = -- ] && shift\necho custom-init\nexec "$@"\n')
    script.chmod(0o755)
    cfg = {"storage-driver": "vfs", "init": True, "init-path": str(script)}
    with running_daemon(tmp_path / "d", **cfg) as d:
        d.skiff("image", "bootstrap", "busybox")
        res = d.docker("run", "--rm", "busybox", "echo", "hi", check=True)
        assert res.stdout == b"custom-init\nhi\n"
        res = d.docker("run", "--rm", "--init=false", "busybox", "echo", "hi", check=True)
        assert res.stdout == b"hi\n"


def test_init_with_a_tty(skiffd: Daemon) -> None:
    # With a terminal the command gets its own foreground process group;
    # taking the terminal must not stop it (SIGTTOU) before it runs.
    name = _name()
    try:
        skiffd.docker("run", "-d", "-t", "--name", name, "--init", "busybox", "sh", "-c",
                      "exit 4", check=True)
        res = skiffd.docker("wait", name, check=True, timeout=30)
        assert res.stdout.strip() == b"4"
    finally:
        skiffd.docker("rm", "-f", name)
