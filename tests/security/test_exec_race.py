"""The exec race: a container catching ``docker exec``'s process before it is
inside the container (the class of CVE-2016-9962 and CVE-2019-5736).

A container with CAP_SYS_PTRACE polls ``/proc/*/root`` for a file that exists
only on the host.  Every process that appears in its pid namespace while its
root is still the host's would show that file.  skiff's exec shim joins every
namespace of the container, the mount namespace included, before it forks
the process into the pid namespace, and stays non-dumpable until ``execve``.
"""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path

from tests.daemon import Daemon, poll
from tests.security.conftest import unremapped

WATCH = ("while true; do for d in /proc/[0-9]*; do "
         "cat $d/root/tmp/{name} 2>/dev/null && echo FOUND; "
         "ls $d/fd/ >/dev/null 2>&1; done; done")


def _watcher(d: Daemon, name: str, *flags: str) -> tuple[str, int]:
    cid = d.docker("run", "-d", *flags, "--cap-add", "SYS_PTRACE", "busybox", "sh", "-c",
                   WATCH.format(name=name), check=True).stdout.decode().strip()
    pid = int(d.docker("inspect", "-f", "{{.State.Pid}}", cid, check=True).stdout)
    return cid, pid


def test_exec_is_never_seen_with_the_hosts_root(skiffd: Daemon, tmp_path: Path) -> None:
    name = f"skiff-marker-{secrets.token_hex(6)}"
    marker = Path("/tmp") / name
    marker.write_text("HOST\n")
    cid, _ = _watcher(skiffd, name)
    try:
        for _ in range(40):
            skiffd.docker("exec", cid, "true", check=True)
            skiffd.docker("exec", "-u", "nobody", cid, "sleep", "0.05", check=True)
        logs = skiffd.docker("logs", cid, check=True).stdout.decode()
        assert "FOUND" not in logs and "HOST" not in logs, logs
    finally:
        skiffd.docker("rm", "-f", cid)
        marker.unlink()


def test_a_process_joining_only_the_pid_namespace_is_caught(skiffd: Daemon) -> None:
    """The positive control: the same watcher does see the host's root through a
    process that joined the container's pid namespace but not its mount
    namespace (what an exec that joins the mount namespace after the fork is,
    for an instant).  With userns-remap the watcher runs unremapped here: in a
    user namespace its SYS_PTRACE would not reach a process of the host's
    (see test_userns.py)."""
    name = f"skiff-marker-{secrets.token_hex(6)}"
    marker = Path("/tmp") / name
    marker.write_text("HOST\n")
    cid, pid = _watcher(skiffd, name, *unremapped(skiffd))
    intruder = subprocess.Popen(["nsenter", "-t", str(pid), "--pid", "--", "sleep", "30"])
    try:
        poll(lambda: "FOUND" in skiffd.docker("logs", cid).stdout.decode(), timeout=30,
             what="the watcher to find the host's file")
    finally:
        intruder.kill()
        intruder.wait()
        skiffd.docker("rm", "-f", cid)
        marker.unlink()
