"""``--pid``, ``--ipc``, ``--uts`` and ``--userns``: honoured, or refused at create."""

from __future__ import annotations

import os
import socket

from tests.daemon import Daemon, poll


def _out(res) -> str:  # type: ignore[no-untyped-def]
    return res.stdout.decode()


def test_pid_host_sees_host_processes(skiffd: Daemon) -> None:
    res = skiffd.docker("run", "--rm", "--pid=host", "busybox", "sh", "-c",
                        f"test -d /proc/{os.getpid()} && echo seen", check=True)
    assert _out(res).strip() == "seen"
    # private by default: the test's own pid is not there
    res = skiffd.docker("run", "--rm", "busybox", "sh", "-c",
                        "ls /proc | grep -c '^[0-9]'", check=True)
    assert int(_out(res)) <= 3


def test_pid_host_leftovers_killed_with_the_container(skiffd: Daemon) -> None:
    # with no pid namespace of its own, a background child does not die with
    # the main process: the daemon kills it (runc's rule)
    res = skiffd.docker("run", "--rm", "--pid=host", "busybox", "sh", "-c",
                        "sleep 1000 & echo $!", check=True)
    pid = int(_out(res))

    def gone() -> bool:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split(") ")[1].startswith("Z")  # a zombie is dead
        except (FileNotFoundError, ProcessLookupError):  # ESRCH: reaped after open
            return True

    poll(gone, timeout=20, what=f"the container's child {pid} to be killed")


def test_pid_container_joins_another(skiffd: Daemon) -> None:
    cid = skiffd.docker("run", "-d", "busybox", "sleep", "1000", check=True).stdout.decode().strip()
    try:
        res = skiffd.docker("run", "--rm", f"--pid=container:{cid}", "busybox", "sh", "-c",
                            "cat /proc/1/cmdline | tr '\\0' ' '", check=True)
        assert _out(res).strip() == "sleep 1000"
    finally:
        skiffd.docker("rm", "-f", cid)
    res = skiffd.docker("create", "--pid=container:nonexistent-xyz", "busybox")
    assert res.returncode != 0


def test_uts_and_ipc_host(skiffd: Daemon) -> None:
    res = skiffd.docker("run", "--rm", "--uts=host", "busybox", "hostname", check=True)
    assert _out(res).strip() == socket.gethostname()
    ipc_ns = os.readlink("/proc/self/ns/ipc")
    res = skiffd.docker("run", "--rm", "--ipc=host", "busybox", "readlink", "/proc/self/ns/ipc",
                        check=True)
    assert _out(res).strip() == ipc_ns
    res = skiffd.docker("run", "--rm", "busybox", "readlink", "/proc/self/ns/ipc", check=True)
    assert _out(res).strip() != ipc_ns


def test_unsupported_modes_are_refused(skiffd: Daemon) -> None:
    for flags, why in ((["--ipc=none"], "not supported"), (["--ipc=bogus"], "invalid IPC mode"),
                       (["--uts=bogus"], "invalid UTS mode"),
                       (["--uts=host", "--hostname=x"], "Conflicting options"),
                       (["--userns=bogus"], "invalid USER mode"),
                       (["--cgroupns=bogus"], "cgroup")):
        res = skiffd.docker("create", *flags, "busybox")
        assert res.returncode != 0, flags
        assert why in res.stderr.decode(), (flags, res.stderr)
