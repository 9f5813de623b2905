"""Breakouts through the container's filesystem: masks, system paths, mounts.

Each test names the class it stands for.  Where the protection can be
turned off (``systempaths=unconfined``, ``--privileged``, ``--pid=host``), the
same probe is run with it off and shown to reach what it must not reach by
default.  A probe that writes a kernel setting writes back the value it just
read, so even with the protection off nothing changes.  (busybox's
``test -w`` says yes to root for any file, read-only mount or not, so the
probes really write.)
"""

from __future__ import annotations

import os
import secrets
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.daemon import Daemon
from tests.security.conftest import ImageMaker, regular, symlink, unique, unremapped

CORE_PATTERN = "/proc/sys/kernel/core_pattern"


def _run(d: Daemon, *args: str) -> subprocess.CompletedProcess[bytes]:
    return d.docker("run", "--rm", *args, timeout=60)


def _out(res: subprocess.CompletedProcess[bytes]) -> str:
    return res.stdout.decode()


def _err(res: subprocess.CompletedProcess[bytes]) -> str:
    return res.stderr.decode()


# -- CVE-2025-31133 class: masks redirected through a planted /dev/null -------


def test_volume_dev_with_planted_null_is_refused(skiffd: Daemon,
                                                  hostile_image: ImageMaker) -> None:
    """CVE-2025-31133 class: an image holds ``dev/null -> /proc/sys/kernel/core_pattern``
    and declares ``VOLUME /dev``; the volume's copy keeps the link, so a mask
    bound "from /dev/null" by path would show (and let root write) the host's
    core_pattern.  A mount onto /dev itself is refused, by VOLUME and by -v."""
    image = hostile_image([symlink("dev/null", CORE_PATTERN)], ["VOLUME /dev"])
    volumes_before = set(_out(skiffd.docker("volume", "ls", "-q")).split())
    res = _run(skiffd, image, "sh", "-c", f"cat /proc/timer_list; test -w {CORE_PATTERN}")
    assert res.returncode != 0
    assert "cannot mount onto /dev" in _err(res), _err(res)
    # the refused create left no anonymous volume behind
    assert set(_out(skiffd.docker("volume", "ls", "-q")).split()) == volumes_before

    vol = unique("devvol")
    try:
        for flags in (["-v", f"{vol}:/dev"], ["--mount", f"type=volume,src={vol},dst=/dev"],
                      ["--tmpfs", "/dev"], ["-v", "/dev:/dev"], ["-v", "/tmp:/proc"],
                      ["-v", "/tmp:/sys"], ["-v", "/tmp:/proc/sys/kernel"]):
            res = _run(skiffd, *flags, "busybox", "true")
            assert res.returncode != 0, flags
            assert "cannot mount onto" in _err(res), (flags, _err(res))
    finally:
        skiffd.docker("volume", "rm", "-f", vol)


@pytest.mark.parametrize("target", ["/proc", "/dev", "/sys"])
def test_destination_resolving_onto_system_paths_is_refused(
        skiffd: Daemon, hostile_image: ImageMaker, target: str) -> None:
    """CVE-2025-31133 class, second door: the image makes ``/data`` a symlink to
    ``/proc`` (or /dev, /sys) and declares ``VOLUME /data``; the destination's
    name passes the daemon's check, so the runtime checks what it resolves to."""
    image = hostile_image([symlink("data", target)], ["VOLUME /data"])
    res = _run(skiffd, image, "true")
    assert res.returncode != 0
    assert f"it is the container's {target}" in _err(res), _err(res)


def test_masked_paths_are_the_null_device(skiffd: Daemon) -> None:
    """Masked /proc files are the real 1:3 device, and /proc/sys is read-only;
    with ``systempaths=unconfined`` (the protection off) the same probe reads
    the kernel's data and finds core_pattern writable."""
    masked = [p for p in ("/proc/timer_list", "/proc/keys", "/proc/kcore", "/proc/sched_debug")
              if os.path.exists(p)]
    assert masked, "this kernel has none of the masked files"
    probe = "; ".join([f"stat -c '%F %t:%T' {p}" for p in masked]
                      + [f"wc -c < {masked[0]}", _write_back(CORE_PATTERN)])
    res = _run(skiffd, "busybox", "sh", "-c", probe)
    lines = _out(res).splitlines()
    assert lines[:len(masked)] == ["character special file 1:3"] * len(masked), _out(res)
    assert lines[len(masked):] == ["0", "refused"], _out(res)

    res = _run(skiffd, *unremapped(skiffd), "--security-opt", "systempaths=unconfined",
               "busybox", "sh", "-c", probe)
    lines = _out(res).splitlines()
    assert "character special file 1:3" not in lines[:len(masked)], _out(res)
    assert lines[-1] == "WROTE", _out(res)


def test_binding_by_path_follows_a_planted_link(tmp_path: Path) -> None:
    """What the masks must never do (the class's mechanism, on the host, in a
    throw-away mount namespace): bind "/dev/null" by *path* where it is a
    planted symlink, and the target shows what the link points at."""
    canary = tmp_path / "canary"
    canary.write_text("host secret\n")
    planted = tmp_path / "dev"
    planted.mkdir()
    (planted / "null").symlink_to(canary)
    target = tmp_path / "masked"
    target.write_text("")
    res = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         f"mount --bind {planted}/null {target} && cat {target}"],
        capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "host secret\n"


# -- writable kernel interfaces -----------------------------------------------------


WRITE_PROBES = (
    CORE_PATTERN,  # a host-wide helper run as root on every crash
    "/proc/sysrq-trigger",
    "/sys/kernel/rcu_expedited",
    "/sys/kernel/uevent_helper",  # run as root on every hotplug event
)


def _write_back(path: str) -> str:
    """A shell probe: write ``path``'s own value back; prints WROTE or refused."""
    if path == "/proc/sysrq-trigger":
        return f"echo h 2>/dev/null > {path} && echo WROTE || echo refused"  # h: help, harmless
    return f"v=$(cat {path}); echo \"$v\" 2>/dev/null > {path} && echo WROTE || echo refused"


@pytest.mark.parametrize("path", WRITE_PROBES)
def test_kernel_interfaces_are_not_writable(skiffd: Daemon, path: str) -> None:
    """Writing /proc/sys/kernel/*, /proc/sysrq-trigger, /sys/kernel/*: the
    classic ways from container root to host root (core_pattern and
    uevent_helper run a program of the writer's choice as host root).  The
    write fails by default; ``--privileged`` (the protection off) would
    allows it."""
    if not os.path.exists(path):
        pytest.skip(f"{path} does not exist on this kernel")
    res = _run(skiffd, "busybox", "sh", "-c", _write_back(path))
    assert _out(res).strip() == "refused", (_out(res), _err(res))
    res = _run(skiffd, *unremapped(skiffd), "--privileged", "busybox", "sh", "-c",
               _write_back(path))
    assert _out(res).strip() == "WROTE", _err(res)


# -- what lies beyond the container -------------------------------------------------


def test_daemon_socket_is_not_reachable(skiffd: Daemon) -> None:
    """The daemon's socket is host root by another name: nothing of the host's
    filesystem, the socket included, is visible in a container unless bound in."""
    sock = skiffd.socket
    probe = f"test -e {sock} && echo visible; ls /proc/1/root{sock} 2>/dev/null; echo done"
    res = _run(skiffd, "busybox", "sh", "-c", probe)
    assert _out(res).strip() == "done", _out(res)
    # the probe is sound: bound in, the socket is there and is a socket
    res = _run(skiffd, "-v", f"{sock}:/run/skiff.sock", "busybox", "sh", "-c",
               "test -S /run/skiff.sock && echo reachable")
    assert _out(res).strip() == "reachable", _err(res)


def test_other_containers_files_are_not_reachable(skiffd: Daemon) -> None:
    """Reading another container's files through /proc/<pid>/root: its
    processes are in another pid namespace, so there is no path to them; with
    ``--pid=host`` (the protection off) the same read works."""
    secret = f"secret-{secrets.token_hex(8)}"
    cid = _out(skiffd.docker("run", "-d", "busybox", "sh", "-c",
                             f"echo {secret} > /secret; exec sleep 1000", check=True)).strip()
    try:
        pid = _out(skiffd.docker("inspect", "-f", "{{.State.Pid}}", cid, check=True)).strip()
        probe = (f"cat /proc/{pid}/root/secret 2>/dev/null; "
                 "cat /proc/[0-9]*/root/secret 2>/dev/null; echo done")
        res = _run(skiffd, "busybox", "sh", "-c", probe)
        assert secret not in _out(res), _out(res)
        assert _out(res).strip() == "done"
        res = _run(skiffd, *unremapped(skiffd), "--pid=host", "busybox", "sh", "-c",
                   f"cat /proc/{pid}/root/secret")
        assert _out(res).strip() == secret, _err(res)
    finally:
        skiffd.docker("rm", "-f", cid)


# -- the image's account files ------------------------------------------------------


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("planted", ["symlink", "fifo"])
def test_passwd_that_never_ends_fails_fast(skiffd: Daemon, hostile_image: ImageMaker,
                                           planted: str) -> None:
    """Denial of service through the image's /etc/passwd: a link to /dev/zero
    (endless) or a FIFO (blocks for ever) read while resolving ``-u nobody``
    would exhaust the reader's memory or hang the start.  Only a bounded
    regular file is read; the start fails at once and the daemon's memory
    stays flat."""
    if planted == "symlink":
        entry = symlink("etc/passwd", "/dev/zero")
    else:
        info = tarfile.TarInfo("etc/passwd")
        info.type = tarfile.FIFOTYPE
        info.mode = 0o644
        entry = (info, None)
    image = hostile_image([entry])
    assert skiffd.proc is not None
    before = _rss_kb(skiffd.proc.pid)
    res = _run(skiffd, "-m", "32m", "-u", "nobody", image, "true")
    assert res.returncode != 0
    assert "/etc/passwd is not a regular file" in _err(res), _err(res)
    assert _rss_kb(skiffd.proc.pid) - before < 16 * 1024
    # the daemon goes on serving
    assert _run(skiffd, "busybox", "true").returncode == 0


def test_broken_ids_in_passwd_never_mean_root(skiffd: Daemon,
                                              hostile_image: ImageMaker) -> None:
    """A passwd entry with a non-numeric or negative uid: runc's parser reads
    it as 0, so ``-u svc`` would run as root; skiff refuses the entry."""
    passwd = (b"root:x:0:0:root:/root:/bin/sh\nsvc:x:svc:svc::/:/bin/sh\n"
              b"neg:x:-1:-1::/:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n")
    image = hostile_image([regular("etc/passwd", passwd)])
    for user in ("svc", "neg"):
        res = _run(skiffd, "-u", user, image, "id", "-u")
        assert res.returncode != 0, _out(res)
        assert f"invalid passwd entry for '{user}'" in _err(res), _err(res)
    assert _out(_run(skiffd, "-u", "nobody", image, "id", "-u")).strip() == "65534"
