"""``docker exec`` against a real skiffd: namespaces, cgroups, privileges, I/O, API.

One long-running container per module; every exec runs in it.  Host-side
facts (namespace inodes, cgroup membership) are read from /proc on the host
and compared with what the exec'd process sees.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import docker
import pytest

from tests.daemon import Daemon, poll
from tests.e2e.test_interactive import PROMPT, Term

DOCKER_DEFAULT_CAPS = "00000000a80425fb"


@pytest.fixture(scope="module")
def box(default_skiffd: Daemon) -> Iterator[str]:
    """A running container: its name."""
    n = f"exec-box-{os.getpid()}"
    default_skiffd.docker("run", "-d", "--name", n, "-e", "FROMIMAGE=1", "busybox",
                          "sleep", "100000", check=True)
    yield n
    default_skiffd.docker("rm", "-f", n)


@pytest.fixture(scope="module")
def api(default_skiffd: Daemon) -> Iterator[docker.APIClient]:
    c = docker.APIClient(base_url=default_skiffd.host, version="1.41", timeout=60)
    yield c
    c.close()


def ex(d: Daemon, *args: str) -> tuple[int, str, str]:
    res = d.docker("exec", *args)
    return res.returncode, res.stdout.decode(), res.stderr.decode()


def init_pid(d: Daemon, name: str) -> int:
    return int(d.docker("inspect", "-f", "{{.State.Pid}}", name, check=True).stdout)


def test_joins_the_container_namespaces(default_skiffd: Daemon, box: str) -> None:
    d = default_skiffd
    pid = init_pid(d, box)
    cid = d.docker("inspect", "-f", "{{.Id}}", box, check=True).stdout.decode().strip()
    assert ex(d, box, "hostname") == (0, cid[:12] + "\n", "")
    code, out, _ = ex(d, box, "cat", "/proc/1/cmdline")
    assert out == "sleep\x00100000\x00"  # the container's PID 1, in its pid namespace
    for ns in ("net", "mnt", "uts", "ipc", "pid", "cgroup"):
        code, out, _ = ex(d, box, "readlink", f"/proc/self/ns/{ns}")
        assert code == 0
        assert out.strip() == os.readlink(f"/proc/{pid}/ns/{ns}"), ns
    # its root is the container's root filesystem
    assert ex(d, box, "sh", "-c", "ls /proc/1/root/bin/busybox && echo $FROMIMAGE")[1] \
        == "/proc/1/root/bin/busybox\n1\n"


def test_joins_the_container_cgroups(default_skiffd: Daemon, box: str,
                                     api: docker.APIClient) -> None:
    d = default_skiffd
    code, inside, _ = ex(d, box, "cat", "/proc/self/cgroup")
    assert code == 0
    assert inside == ex(d, box, "cat", "/proc/1/cgroup")[1]
    # host side: a detached exec's pid (ExecInspect) sits in the init's groups
    exec_id = api.exec_create(box, ["sleep", "300"])["Id"]
    api.exec_start(exec_id, detach=True)
    info = api.exec_inspect(exec_id)
    assert info["Running"] is True and info["Pid"] > 0
    with open(f"/proc/{info['Pid']}/cgroup") as f:
        mine = f.read()
    with open(f"/proc/{init_pid(d, box)}/cgroup") as f:
        assert mine == f.read()
    os.kill(info["Pid"], signal.SIGKILL)
    poll(lambda: api.exec_inspect(exec_id)["Running"] is False, what="the exec to end")
    assert api.exec_inspect(exec_id)["ExitCode"] == 137


def test_capabilities(default_skiffd: Daemon, box: str) -> None:
    d = default_skiffd
    code, out, _ = ex(d, box, "grep", "^Cap", "/proc/self/status")
    assert code == 0
    caps = dict(line.split(":\t") for line in out.splitlines())
    assert caps["CapEff"] == DOCKER_DEFAULT_CAPS
    assert caps["CapBnd"] == DOCKER_DEFAULT_CAPS
    # an exec inherits the container's no_new_privs: off, Docker's default
    _, out, _ = ex(d, box, "grep", "NoNewPrivs", "/proc/self/status")
    assert out.split() == ["NoNewPrivs:", "0"]
    # a user other than root has no effective capabilities, as in Docker
    _, out, _ = ex(d, "-u", "nobody", box, "grep", "CapEff", "/proc/self/status")
    assert out.split() == ["CapEff:", "0000000000000000"]


def test_user_workdir_env(default_skiffd: Daemon, box: str) -> None:
    d = default_skiffd
    code, out, _ = ex(d, "-u", "nobody", box, "id")
    assert code == 0 and out.startswith("uid=65534(nobody) gid=65534(nobody)")
    # resolved exactly as for a container's own process
    assert out == d.docker("run", "--rm", "-u", "nobody", "busybox", "id").stdout.decode()
    assert ex(d, "-u", "1234:55", box, "id", "-u")[1] == "1234\n"
    assert ex(d, "-w", "/tmp", box, "pwd")[1] == "/tmp\n"
    assert ex(d, box, "pwd")[1] == "/\n"
    _, out, _ = ex(d, "-e", "FOO=bar", "-e", "FROMIMAGE=2", box, "sh", "-c",
                      "echo $FOO $FROMIMAGE $HOME")
    assert out == "bar 2 /root\n"
    assert ex(d, "-u", "nosuchuser", box, "true")[0] != 0


def test_exit_codes(default_skiffd: Daemon, box: str) -> None:
    d = default_skiffd
    assert ex(d, box, "sh", "-c", "exit 3")[0] == 3
    assert ex(d, box, "true")[0] == 0
    code, out, err = ex(d, box, "nosuchcommand")
    assert code == 127
    assert "executable file not found" in out + err
    assert ex(d, "-w", "/nonexistent", box, "true")[0] == 126
    assert ex(d, box, "sh", "-c", "kill -9 $$")[0] == 137


def test_stdin_and_streams(default_skiffd: Daemon, box: str) -> None:
    d = default_skiffd
    res = d.docker("exec", "-i", box, "sh", "-c", "cat; echo err >&2", input=b"piped\n")
    assert (res.returncode, res.stdout, res.stderr) == (0, b"piped\n", b"err\n")
    # without -i the process's stdin is empty
    res = d.docker("exec", box, "cat", input=b"ignored\n")
    assert (res.returncode, res.stdout) == (0, b"")


def test_tty(default_skiffd: Daemon, box: str) -> None:
    d = default_skiffd
    res = d.docker("exec", "-t", box, "sh", "-c", "[ -t 0 ] && [ -t 1 ] && echo on-a-tty")
    assert res.returncode == 0
    assert res.stdout == b"on-a-tty\r\n"  # the terminal's line discipline: \r\n, one stream
    res = d.docker("exec", box, "sh", "-c", "[ -t 1 ] || echo no-tty")
    assert res.stdout == b"no-tty\n"


def test_interactive_exec(default_skiffd: Daemon, box: str) -> None:
    d = default_skiffd
    from tests.daemon import DOCKER

    t = Term([DOCKER, "exec", "-it", box, "sh"], d.env())
    try:
        t.expect(PROMPT)
        t.send(b"echo $((6*7)) $TERM\r")
        t.expect(b"\r\n42 xterm\r\n")
        t.send(b"exit 5\r")
        assert t.wait() == 5
    finally:
        t.close()


def test_exec_terminal_is_in_the_container(default_skiffd: Daemon, box: str,
                                           api: docker.APIClient) -> None:
    d = default_skiffd
    # a pty of the container's own devpts: its name resolves inside the container
    res = d.docker("exec", "-t", box, "sh", "-c", "t=$(tty) && ls $t && [ -t 0 ] && echo ok")
    assert res.returncode == 0, res
    name, ok = res.stdout.decode().split("\r\n")[:2]
    assert name.startswith("/dev/pts/") and ok == "ok", res.stdout
    # the exec's user owns its terminal (runc's rule), group tty, mode 0620
    res = d.docker("exec", "-t", "-u", "nobody", box, "sh", "-c", "stat -c '%u:%g %a' $(tty)")
    assert res.stdout == b"65534:5 620\r\n", res
    # and resize reaches it (POST /exec/{id}/resize on the container's pty)
    created = api.exec_create(box, ["sh", "-c", "read x; stty size"], tty=True, stdin=True)
    sock = api.exec_start(created["Id"], tty=True, socket=True)
    try:
        raw = getattr(sock, "_sock", sock)
        raw.settimeout(20)
        poll(lambda: api.exec_inspect(created["Id"])["Running"], what="the exec to run")
        api.exec_resize(created["Id"], height=31, width=97)
        raw.sendall(b"go\r")
        got = b""
        while chunk := raw.recv(4096):
            got += chunk
    finally:
        sock.close()
    assert got.split()[-2:] == [b"31", b"97"], got
    # a detached exec with -t gets a terminal too, as with Docker
    res = d.docker("exec", "-dt", box, "sh", "-c", "tty > /tmp/dt-tty")
    assert res.returncode == 0, res
    poll(lambda: ex(d, box, "cat", "/tmp/dt-tty")[1].startswith("/dev/pts/"),
             what="the detached exec's tty")


def test_detached(default_skiffd: Daemon, box: str) -> None:
    d = default_skiffd
    res = d.docker("exec", "-d", box, "sh", "-c", "sleep 0.2; echo done > /tmp/flag")
    assert (res.returncode, res.stdout) == (0, b"")
    poll(lambda: ex(d, box, "cat", "/tmp/flag")[1] == "done\n", what="the detached exec")


def test_exec_inspect(default_skiffd: Daemon, box: str, api: docker.APIClient) -> None:
    created = api.exec_create(box, ["sh", "-c", "echo hi; exit 4"], user="nobody")
    exec_id = created["Id"]
    before = api.exec_inspect(exec_id)
    assert before["Running"] is False and before["ExitCode"] is None
    assert api.exec_start(exec_id) == b"hi\n"
    info = api.exec_inspect(exec_id)
    assert info["ExitCode"] == 4
    assert info["Running"] is False
    assert info["ProcessConfig"] == {"tty": False, "entrypoint": "sh",
                                     "arguments": ["-c", "echo hi; exit 4"],
                                     "privileged": False, "user": "nobody"}
    assert info["ContainerID"] == api.inspect_container(box)["Id"]
    assert exec_id in api.inspect_container(box)["ExecIDs"]
    # an exec runs once
    with pytest.raises(docker.errors.APIError) as err:
        api.exec_start(exec_id)
    assert err.value.status_code == 409
    with pytest.raises(docker.errors.NotFound):
        api.exec_inspect("0" * 64)


def test_exec_into_stopped_container_is_409(default_skiffd: Daemon,
                                            api: docker.APIClient) -> None:
    d = default_skiffd
    n = f"exec-stopped-{os.getpid()}"
    d.docker("create", "--name", n, "busybox", "true", check=True)
    try:
        res = d.docker("exec", n, "true")
        assert res.returncode != 0
        assert b"is not running" in res.stderr
        with pytest.raises(docker.errors.APIError) as err:
            api.exec_create(n, ["true"])
        assert err.value.status_code == 409
    finally:
        d.docker("rm", "-f", n)


def test_exec_into_paused_container_is_409(default_skiffd: Daemon, box: str,
                                           api: docker.APIClient) -> None:
    d = default_skiffd
    if d.docker("pause", box).returncode != 0:
        pytest.skip("pause is not available on this daemon")
    try:
        with pytest.raises(docker.errors.APIError) as err:
            api.exec_create(box, ["true"])
        assert err.value.status_code == 409
        assert "paused" in str(err.value)
    finally:
        d.docker("unpause", box, check=True)


def test_events(default_skiffd: Daemon, box: str) -> None:
    d = default_skiffd
    since = str(int(time.time()) - 1)
    assert ex(d, box, "sh", "-c", "exit 3")[0] == 3
    until = str(int(time.time()) + 1)
    poll(lambda: time.time() > int(until), what="the until time")
    res = d.docker("events", "--since", since, "--until", until, "--filter",
                   f"container={box}", "--format", "{{.Action}}|{{.Actor.Attributes.exitCode}}",
                   check=True)
    actions = res.stdout.decode().splitlines()
    assert "exec_create: sh -c exit 3|<no value>" in actions
    assert "exec_start: sh -c exit 3|<no value>" in actions
    assert "exec_die|3" in actions
