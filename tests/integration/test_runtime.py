"""The ``skiff`` runtime (fork server, shim, Python init) on the real kernel.

Runs as root.  Every container gets a busybox root filesystem from
tests/rootfs.py and fresh pid, mount, uts, ipc and net namespaces.  The
runtime's methods are async; each test drives them with ``trio.run``.
"""

from __future__ import annotations

import fcntl
import os
import signal
import statistics
import struct
import termios
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from skiff.core.hookspecs import (
    ContainerSpec,
    ExecSpec,
    MountSpec,
    RuntimeContext,
    StartError,
    Stdio,
)
from skiff.plugins.isolation import capabilities, mounts, users
from skiff.plugins.isolation.runtime import (
    DEFAULT_MASKED_PATHS,
    DEFAULT_READONLY_PATHS,
    ForkServerRuntime,
    skiff_container_spec,
    skiff_container_validate,
)
from tests.integration.runtimekit import (
    NAMESPACES,
    PATH_ENV,
    FakeContainer,
    Result,
    children,
    drain,
    exec_output,
    make_spec,
    ns_paths,
    our_mounts,
    pid_alive,
    run,
    run_container,
    running,
    start_error,
    started,
    status_field,
)
from tests.rootfs import make_busybox_rootfs

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="the runtime needs root"),
              pytest.mark.usefixtures("no_leaks")]

DOCKER_DEFAULT_CAPS = "00000000a80425fb"


# ---------------------------------------------------------------------------
# Running commands
# ---------------------------------------------------------------------------


def test_echo_hello(runtime: ForkServerRuntime, image: Path, tmp_path: Path) -> None:
    r = run(runtime, make_spec(image, tmp_path / "b", ["echo", "hello"]))
    assert (r.code, r.stdout, r.stderr) == (0, b"hello\n", b"")
    assert (tmp_path / "b" / "exitcode").read_text() == "0\n"


def test_exit_code(runtime: ForkServerRuntime, image: Path, tmp_path: Path) -> None:
    r = run(runtime, make_spec(image, tmp_path / "b", ["sh", "-c", "exit 3"]))
    assert r.code == 3


def test_stderr_and_stdin(runtime: ForkServerRuntime, image: Path, tmp_path: Path) -> None:
    spec = make_spec(image, tmp_path / "b", ["sh", "-c", "cat; echo oops >&2"], open_stdin=True)
    r = run(runtime, spec, stdin=b"from stdin\n")
    assert (r.code, r.stdout, r.stderr) == (0, b"from stdin\n", b"oops\n")


def test_command_is_pid_1(runtime: ForkServerRuntime, image: Path, tmp_path: Path) -> None:
    r = run(runtime, make_spec(image, tmp_path / "b", ["cat", "/proc/1/cmdline"]))
    assert r.stdout == b"cat\0/proc/1/cmdline\0"
    # and nothing else lives in its pid namespace
    r = run(runtime, make_spec(image, tmp_path / "c", ["ls", "/proc"]))
    pids = sorted(int(x) for x in r.out.split() if x.isdigit())
    assert pids == [1]


def test_only_loopback(runtime: ForkServerRuntime, image: Path, tmp_path: Path) -> None:
    r = run(runtime, make_spec(image, tmp_path / "b", ["ip", "-o", "link"]))
    names = [line.split(":")[1].strip() for line in r.out.splitlines()]
    assert names == ["lo"]


def test_hostname(runtime: ForkServerRuntime, image: Path, tmp_path: Path) -> None:
    host_before = os.uname().nodename
    r = run(runtime, make_spec(image, tmp_path / "b", ["hostname"], hostname="c0ffee"))
    assert r.stdout == b"c0ffee\n"
    assert os.uname().nodename == host_before


def test_environment_and_home(runtime: ForkServerRuntime, image: Path, tmp_path: Path) -> None:
    spec = make_spec(image, tmp_path / "b", ["env"], env=[PATH_ENV, "FOO=bar=baz"])
    env = dict(line.split("=", 1) for line in run(runtime, spec).out.splitlines())
    assert env["FOO"] == "bar=baz"
    assert env["HOME"] == "/root"
    spec = make_spec(image, tmp_path / "c", ["env"], env=[PATH_ENV, "HOME=/elsewhere"])
    assert "HOME=/elsewhere\n" in run(runtime, spec).out


def test_devices(runtime: ForkServerRuntime, image: Path, tmp_path: Path) -> None:
    script = (
        "for d in null zero full random urandom tty; do stat -c '%n %t,%T %a' /dev/$d; done;"
        " readlink /dev/fd; readlink /dev/ptmx; head -c 4 /dev/zero | wc -c; echo x > /dev/null"
    )
    r = run(runtime, make_spec(image, tmp_path / "b", ["sh", "-c", script], user="nobody"))
    assert r.code == 0, r.stderr
    lines = r.out.splitlines()
    assert lines[:6] == [
        "/dev/null 1,3 666",
        "/dev/zero 1,5 666",
        "/dev/full 1,7 666",
        "/dev/random 1,8 666",
        "/dev/urandom 1,9 666",
        "/dev/tty 5,0 666",
    ]
    assert lines[6:] == ["/proc/self/fd", "pts/ptmx", "4"]


# ---------------------------------------------------------------------------
# Users and privileges
# ---------------------------------------------------------------------------


def test_user_nobody(runtime: ForkServerRuntime, image: Path, tmp_path: Path) -> None:
    spec = make_spec(image, tmp_path / "b", ["sh", "-c", "id -u; id -g; echo $HOME"], user="nobody")
    assert run(runtime, spec).out == "65534\n65534\n/nonexistent\n"


def test_numeric_user_without_passwd_entry(
    runtime: ForkServerRuntime, image: Path, tmp_path: Path
) -> None:
    spec = make_spec(image, tmp_path / "b", ["sh", "-c", "id -u; id -g"], user="1234:65534")
    assert run(runtime, spec).out == "1234\n65534\n"


def test_unknown_user(runtime: ForkServerRuntime, image: Path, tmp_path: Path) -> None:
    err = start_error(runtime, make_spec(image, tmp_path / "b", ["true"], user="alice"))
    assert str(err) == "unable to find user alice: no matching entries in passwd file"
    assert err.exit_code == 125


def test_root_capabilities(runtime: ForkServerRuntime, image: Path, tmp_path: Path) -> None:
    r = run(runtime, make_spec(image, tmp_path / "b", ["cat", "/proc/self/status"]))
    assert status_field(r.out, "CapEff") == DOCKER_DEFAULT_CAPS
    assert status_field(r.out, "CapPrm") == DOCKER_DEFAULT_CAPS
    assert status_field(r.out, "CapBnd") == DOCKER_DEFAULT_CAPS
    assert status_field(r.out, "CapAmb") == "0000000000000000"
    # the spec's default, as Docker's: setuid programs keep working
    assert status_field(r.out, "NoNewPrivs") == "0"


def test_nobody_capabilities(runtime: ForkServerRuntime, image: Path, tmp_path: Path) -> None:
    spec = make_spec(image, tmp_path / "b", ["cat", "/proc/self/status"], user="nobody")
    r = run(runtime, spec)
    assert status_field(r.out, "CapEff") == "0000000000000000"
    assert status_field(r.out, "CapPrm") == "0000000000000000"
    assert status_field(r.out, "CapBnd") == DOCKER_DEFAULT_CAPS
    assert status_field(r.out, "Uid").split() == ["65534"] * 4
    assert status_field(r.out, "Gid").split() == ["65534"] * 4
    assert status_field(r.out, "Groups") == ""


def test_cap_add_and_new_privileges_on(
    runtime: ForkServerRuntime, image: Path, tmp_path: Path
) -> None:
    caps = [*capabilities.DEFAULT_CAPABILITIES, "NET_ADMIN"]
    caps.remove("CHOWN")
    spec = make_spec(
        image,
        tmp_path / "b",
        ["cat", "/proc/self/status"],
        capabilities=caps,
        no_new_privileges=True,
    )
    r = run(runtime, spec)
    want = f"{(0xA80425FB | 1 << 12) & ~1:016x}"
    assert status_field(r.out, "CapEff") == want
    assert status_field(r.out, "NoNewPrivs") == "1"
    # and the capability is real: NET_ADMIN may bring lo up
    spec = make_spec(image, tmp_path / "c", ["ip", "link", "set", "lo", "up"], capabilities=caps)
    assert run(runtime, spec).code == 0
    spec = make_spec(image, tmp_path / "d", ["ip", "link", "set", "lo", "up"])
    assert run(runtime, spec).code != 0


def test_rlimits(runtime: ForkServerRuntime, image: Path, tmp_path: Path) -> None:
    spec = make_spec(
        image, tmp_path / "b", ["sh", "-c", "ulimit -n; ulimit -Hn"], rlimits=[("nofile", 100, 200)]
    )
    assert run(runtime, spec).out == "100\n200\n"


# ---------------------------------------------------------------------------
# Filesystem
# ---------------------------------------------------------------------------


def test_masked_paths(runtime: ForkServerRuntime, image: Path, tmp_path: Path) -> None:
    # which masked paths exist depends on the kernel: check those the host has
    files = [p for p in DEFAULT_MASKED_PATHS if os.path.isfile(p)]
    dirs = [p for p in DEFAULT_MASKED_PATHS if os.path.isdir(p)]
    assert files and dirs
    script = "".join(f"wc -c < {p};" for p in files) + "".join(f"ls -A {p} | wc -l;" for p in dirs)
    r = run(runtime, make_spec(image, tmp_path / "b", ["sh", "-c", script]))
    assert r.code == 0, r.stderr
    assert r.out.split() == ["0"] * (len(files) + len(dirs))
    if os.path.exists("/proc/kcore"):
        r = run(runtime, make_spec(image, tmp_path / "c", ["wc", "-c", "/proc/kcore"]))
        assert r.out.split()[0] == "0"


def test_proc_sys_read_only(runtime: ForkServerRuntime, image: Path, tmp_path: Path) -> None:
    script = "echo other > /proc/sys/kernel/hostname; echo rc=$?; hostname"
    r = run(runtime, make_spec(image, tmp_path / "b", ["sh", "-c", script]))
    assert "Read-only file system" in r.stderr.decode()
    assert r.out == "rc=1\nskiffbox\n"
    r = run(runtime, make_spec(image, tmp_path / "c", ["cat", "/proc/self/mountinfo"]))
    options = {line.split()[4]: line.split()[5] for line in r.out.splitlines()}
    for path in ("/proc/sys", "/proc/bus", "/proc/fs", "/proc/irq", "/sys"):
        if path in options:
            assert options[path].split(",")[0] == "ro", path
    assert options["/proc"].startswith("rw")


def test_privileged_spec_unmasks(runtime: ForkServerRuntime, image: Path, tmp_path: Path) -> None:
    files = [p for p in ("/proc/timer_list", "/proc/kcore") if os.path.exists(p)]
    script = "".join(f"head -c 1 {p} | wc -c;" for p in files) + "cat /proc/self/mountinfo"
    spec = make_spec(
        image, tmp_path / "b", ["sh", "-c", script], masked_paths=[], readonly_paths=[]
    )
    r = run(runtime, spec)
    lines = r.out.splitlines()
    assert lines[: len(files)] == ["1"] * len(files)
    assert not [line for line in lines[len(files) :] if " /proc/" in line]


def test_no_host_mounts(runtime: ForkServerRuntime, image: Path, tmp_path: Path) -> None:
    async def main() -> None:
        spec = make_spec(image, tmp_path / "b", ["sleep", "100"])
        null = os.open("/dev/null", os.O_RDWR)
        try:
            proc = await runtime.prepare(spec, Stdio(null, null, null))
        finally:
            os.close(null)
        # the container's mounts live in its own namespace only, even now
        assert our_mounts(image) == []
        assert our_mounts(tmp_path) == []
        await proc.go()
        assert our_mounts(tmp_path) == []
        proc.kill(signal.SIGKILL)
        assert await proc.wait() == 137

    trio.run(main)


def test_bind_mounts_and_tmpfs(runtime: ForkServerRuntime, tmp_path: Path) -> None:
    rootfs = make_busybox_rootfs(tmp_path / "rootfs")
    host_file = tmp_path / "hostname"
    host_file.write_text("from-host\n")
    host_dir = tmp_path / "vol"
    host_dir.mkdir()
    (host_dir / "data").write_text("vol-data\n")
    spec = make_spec(
        rootfs,
        tmp_path / "b",
        [
            "sh",
            "-c",
            "cat /etc/hostname /mnt/vol/data; echo w > /mnt/vol/new; "
            "echo w > /ro/x; echo rc=$?; grep -c ' /scratch ' /proc/mounts",
        ],
        mounts=[
            MountSpec("bind", str(host_file), "/etc/hostname", ["rbind", "ro"]),
            MountSpec("bind", str(host_dir), "/mnt/vol", ["rbind", "rprivate"]),
            MountSpec("bind", str(host_dir), "/ro", ["bind", "ro"]),
            MountSpec("tmpfs", "tmpfs", "/scratch", ["nosuid", "size=1m"]),
        ],
    )
    r = run(runtime, spec)
    assert r.out == "from-host\nvol-data\nrc=1\n1\n", r.stderr
    assert (host_dir / "new").read_text() == "w\n"
    # destinations were created inside the rootfs, matching the source type
    assert (rootfs / "etc" / "hostname").is_file()
    assert (rootfs / "mnt" / "vol").is_dir()


def test_symlinked_destination_stays_inside(runtime: ForkServerRuntime, tmp_path: Path) -> None:
    rootfs = make_busybox_rootfs(tmp_path / "rootfs")
    outside = tmp_path / "outside"
    outside.mkdir()
    # an image may hold links that point anywhere; they resolve inside the rootfs
    (rootfs / "abs").symlink_to(str(outside))
    (rootfs / "rel").symlink_to("../../../../../../../../" + str(outside))
    spec = make_spec(
        rootfs,
        tmp_path / "b",
        ["sh", "-c", "ls -d /abs/sub /rel/sub2"],
        mounts=[
            MountSpec("tmpfs", "tmpfs", "/abs/sub", []),
            MountSpec("tmpfs", "tmpfs", "/rel/sub2", []),
        ],
    )
    r = run(runtime, spec)
    assert r.code == 0, r.stderr
    assert list(outside.iterdir()) == []
    inside = rootfs / str(outside).lstrip("/")
    assert sorted(p.name for p in inside.iterdir()) == ["sub", "sub2"]


@pytest.mark.parametrize("dest", ["/dev", "/proc", "/sys", "/proc/sys", "/viaproc/sys",
                                  "/viadev"])
def test_runtime_refuses_mounts_onto_system_paths(
    runtime: ForkServerRuntime, tmp_path: Path, dest: str
) -> None:
    """The runtime's own check (the daemon refuses these at create already), made
    on what the destination resolves to: a planted ``/dev/null`` symlink in a
    directory mounted over /dev would redirect the masks (CVE-2025-31133)."""
    rootfs = make_busybox_rootfs(tmp_path / "rootfs")
    (rootfs / "viaproc").symlink_to("/proc")
    (rootfs / "viadev").symlink_to("../dev")
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "null").symlink_to("/proc/sys/kernel/core_pattern")
    spec = make_spec(rootfs, tmp_path / "b", ["cat", "/proc/timer_list"],
                     mounts=[MountSpec("bind", str(evil), dest, ["rbind"])])
    err = start_error(runtime, spec)
    assert f"cannot mount on {dest}" in str(err)


def test_masks_come_from_the_null_device(
    runtime: ForkServerRuntime, image: Path, tmp_path: Path
) -> None:
    spec = make_spec(image, tmp_path / "b",
                     ["sh", "-c", "stat -c '%F %t:%T' /proc/keys; ls /proc/fs | wc -l; "
                      "touch /proc/fs/x 2>/dev/null || echo ro"],
                     masked_paths=["/proc/keys", "/proc/fs", "/proc/does-not-exist"])
    r = run(runtime, spec)
    # a file: the null device; a directory: an empty read-only tmpfs
    assert r.out.splitlines() == ["character special file 1:3", "0", "ro"], r.stderr


def test_readonly_rootfs(runtime: ForkServerRuntime, image: Path, tmp_path: Path) -> None:
    script = "touch /newfile; echo rc=$?; touch /tmp/x; echo rc=$?"
    spec = make_spec(
        image,
        tmp_path / "b",
        ["sh", "-c", script],
        readonly_rootfs=True,
        mounts=[MountSpec("tmpfs", "tmpfs", "/tmp", [])],
    )
    r = run(runtime, spec)
    assert r.out == "rc=1\nrc=0\n"
    assert "Read-only file system" in r.stderr.decode()
    assert not (image / "newfile").exists()


def test_working_directory_created(runtime: ForkServerRuntime, tmp_path: Path) -> None:
    rootfs = make_busybox_rootfs(tmp_path / "rootfs")
    spec = make_spec(rootfs, tmp_path / "b", ["pwd"], cwd="/work/a/b", user="nobody")
    assert run(runtime, spec).out == "/work/a/b\n"
    st = (rootfs / "work" / "a" / "b").stat()
    assert (st.st_uid, st.st_mode & 0o7777) == (0, 0o755)


def test_overlay_rootfs_with_relative_paths(runtime: ForkServerRuntime, tmp_path: Path) -> None:
    # overlay2 passes lowerdir relative to its home and sets cwd; do the same
    home = tmp_path / "overlay2"
    make_busybox_rootfs(home / "lower")
    (home / "upper").mkdir()
    (home / "work").mkdir()
    spec = make_spec(
        home / "unused",
        tmp_path / "b",
        ["sh", "-c", "echo hi > /written; cat /etc/group | head -1"],
        rootfs_mounts=[
            MountSpec(
                "overlay",
                "overlay",
                "/",
                ["lowerdir=lower", "upperdir=upper", "workdir=work"],
                cwd=str(home),
            )
        ],
    )
    r = run(runtime, spec)
    assert (r.code, r.out) == (0, "root:x:0:\n"), r.stderr
    assert (home / "upper" / "written").read_text() == "hi\n"
    assert not (home / "lower" / "written").exists()


def test_bad_mount_is_a_start_error(
    runtime: ForkServerRuntime, image: Path, tmp_path: Path
) -> None:
    spec = make_spec(
        image,
        tmp_path / "b",
        ["true"],
        mounts=[MountSpec("bind", str(tmp_path / "missing"), "/x", ["rbind"])],
    )
    err = start_error(runtime, spec)
    assert "missing" in str(err) and err.exit_code == 125


# ---------------------------------------------------------------------------
# Start errors, signals, lifecycle
# ---------------------------------------------------------------------------


def test_missing_command(runtime: ForkServerRuntime, image: Path, tmp_path: Path) -> None:
    err = start_error(runtime, make_spec(image, tmp_path / "b", ["nosuchcmd", "x"]))
    assert str(err) == 'exec: "nosuchcmd": executable file not found in $PATH'
    assert err.exit_code == 127
    err = start_error(runtime, make_spec(image, tmp_path / "c", ["/no/such"]))
    assert "/no/such" in str(err) and "no such file" in str(err)
    assert err.exit_code == 127


def test_not_executable(runtime: ForkServerRuntime, image: Path, tmp_path: Path) -> None:
    err = start_error(runtime, make_spec(image, tmp_path / "b", ["/etc/passwd"]))
    assert err.exit_code == 126
    assert str(err) == 'exec: "/etc/passwd": permission denied'


def test_exec_failure_after_go(runtime: ForkServerRuntime, tmp_path: Path) -> None:
    # executable bit but no valid format: only execve itself can tell
    rootfs = make_busybox_rootfs(tmp_path / "rootfs")
    junk = rootfs / "bin" / "junk"
    junk.write_bytes(b"\x00\x01\x02\x03")
    junk.chmod(0o755)
    err = start_error(runtime, make_spec(rootfs, tmp_path / "b", ["junk"]))
    assert err.exit_code == 126
    assert "exec format error" in str(err)
    assert (tmp_path / "b" / "exitcode").read_text() == "126\n"


def test_kill(runtime: ForkServerRuntime, image: Path, tmp_path: Path) -> None:
    async def main() -> None:
        spec = make_spec(image, tmp_path / "b", ["sleep", "1000"])
        null = os.open("/dev/null", os.O_RDWR)
        try:
            proc = await runtime.prepare(spec, Stdio(null, null, null))
        finally:
            os.close(null)
        await proc.go()
        assert pid_alive(proc.pid)
        # PID 1 ignores SIGTERM without a handler, as in Docker
        proc.kill(signal.SIGTERM)
        with trio.move_on_after(0.2) as scope:
            await proc.wait()
        assert scope.cancelled_caught
        proc.kill(signal.SIGKILL)
        assert await proc.wait() == 137
        assert not pid_alive(proc.pid)
        proc.kill(signal.SIGKILL)  # gone: no error

    trio.run(main)


def test_signal_with_handler(runtime: ForkServerRuntime, image: Path, tmp_path: Path) -> None:
    async def main() -> None:
        script = "trap 'exit 42' TERM; echo ready; while :; do sleep 0.05; done"
        spec = make_spec(image, tmp_path / "b", ["sh", "-c", script])
        r, w = os.pipe()
        null = os.open("/dev/null", os.O_RDWR)
        try:
            proc = await runtime.prepare(spec, Stdio(null, w, null))
        finally:
            os.close(null)
            os.close(w)
        await proc.go()
        async with trio.lowlevel.FdStream(r) as stream:
            assert await stream.receive_some(100) == b"ready\n"
            proc.kill(signal.SIGTERM)
            assert await proc.wait() == 42

    trio.run(main)


def test_abort_before_go(runtime: ForkServerRuntime, image: Path, tmp_path: Path) -> None:
    async def main() -> None:
        spec = make_spec(image, tmp_path / "b", ["sleep", "1000"])
        null = os.open("/dev/null", os.O_RDWR)
        try:
            proc = await runtime.prepare(spec, Stdio(null, null, null))
        finally:
            os.close(null)
        assert pid_alive(proc.pid)
        await proc.abort()
        assert not pid_alive(proc.pid)
        assert await proc.wait() == 137

    trio.run(main)


def test_cancelled_prepare_leaves_nothing(
    runtime: ForkServerRuntime, image: Path, tmp_path: Path
) -> None:
    async def main(inside_trio: bool) -> int:
        spec = make_spec(image, tmp_path / f"b{inside_trio}", ["sleep", "1000"])
        null = os.open("/dev/null", os.O_RDWR)
        with trio.CancelScope() as scope:
            try:
                proc = await runtime.prepare(spec, Stdio(null, null, null))
            finally:
                os.close(null)
            scope.cancel()
            await proc.go()  # cancelled before it sends anything
        if inside_trio:
            proc.close()  # the daemon drops a prepared container: the shim kills it
        else:
            dropped.append(proc)
        return proc.pid

    dropped: list[Any] = []
    pids = [trio.run(main, True), trio.run(main, False)]
    dropped[0].close()  # a sync caller may drop it too
    dropped[0].close()  # and twice
    deadline = time.monotonic() + 5
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(pid_alive(p) for p in pids)


def test_shim_outlives_daemon_connection(
    runtime: ForkServerRuntime, image: Path, tmp_path: Path
) -> None:
    bundle = tmp_path / "b"

    async def main() -> int:
        spec = make_spec(image, bundle, ["sh", "-c", "read x; exit 7"])
        r, w = os.pipe()
        null = os.open("/dev/null", os.O_RDWR)
        try:
            proc = await runtime.prepare(spec, Stdio(r, null, null))
        finally:
            os.close(null)
            os.close(r)
        await proc.go()
        proc.close()  # as if the daemon died
        os.write(w, b"go on\n")
        os.close(w)
        return proc.pid

    pid = trio.run(main)
    deadline = time.monotonic() + 5
    while not (bundle / "exitcode").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (bundle / "exitcode").read_text() == "7\n"
    assert not pid_alive(pid)


def test_forkserver_lifecycle(image: Path, tmp_path: Path) -> None:
    exec_root = tmp_path / "exec"
    rt = ForkServerRuntime(RuntimeContext(exec_root=str(exec_root), options={}))

    async def main() -> tuple[int, int]:
        await rt.start()
        fs_pid = rt.forkserver_pid
        assert fs_pid is not None and pid_alive(fs_pid)
        assert (exec_root / "forkserver.sock").exists()
        # a container started before stop() keeps running after it
        spec = make_spec(image, tmp_path / "b", ["sleep", "1000"])
        null = os.open("/dev/null", os.O_RDWR)
        try:
            proc = await rt.prepare(spec, Stdio(null, null, null))
        finally:
            os.close(null)
        await proc.go()
        await rt.stop()
        assert not pid_alive(fs_pid)
        assert not (exec_root / "forkserver.sock").exists()
        assert pid_alive(proc.pid)
        proc.kill(signal.SIGKILL)
        return fs_pid, await proc.wait()

    _, code = trio.run(main)
    assert code == 137
    assert rt.forkserver_pid is None


def test_spare_is_cleaned_up_on_stop(image: Path, tmp_path: Path) -> None:
    rt = ForkServerRuntime(RuntimeContext(exec_root=str(tmp_path / "exec"), options={}))

    async def main() -> list[int]:
        await rt.start()
        fs_pid = rt.forkserver_pid
        assert fs_pid is not None
        # the spare shim and its waiting init appear shortly after start
        with trio.fail_after(5):
            while not (children(fs_pid) and children(children(fs_pid)[0])):
                await trio.sleep(0.01)
        shim_pid = children(fs_pid)[0]
        spare = [shim_pid, *children(shim_pid)]
        await rt.stop()
        return spare

    spare = trio.run(main)
    deadline = time.monotonic() + 5
    while any(pid_alive(p) for p in spare) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(pid_alive(p) for p in spare)


@pytest.mark.parametrize("spare", ["true", "false"])
def test_with_and_without_spares(image: Path, tmp_path: Path, spare: str) -> None:
    rt = ForkServerRuntime(
        RuntimeContext(exec_root=str(tmp_path / "exec"), options={"skiff.spare": spare})
    )

    async def main() -> list[Result]:
        await rt.start()
        try:
            results = []
            for i in range(3):  # back to back: the spare is used and replaced
                spec = make_spec(image, tmp_path / f"b{i}", ["sh", "-c", "hostname; ip -o link"])
                results.append(await run_container(rt, spec))
            return results
        finally:
            await rt.stop()

    for r in trio.run(main):
        assert r.code == 0
        assert r.out.splitlines()[0] == "skiffbox"
        assert len(r.out.splitlines()) == 2  # lo only: a fresh net namespace each time


def test_host_network_namespace(runtime: ForkServerRuntime, image: Path, tmp_path: Path) -> None:
    # no "net" entry: the container shares the host's network stack
    namespaces = {k: v for k, v in NAMESPACES.items() if k != "net"}
    spec = make_spec(
        image, tmp_path / "b", ["readlink", "/proc/self/ns/net"], namespaces=namespaces
    )
    assert run(runtime, spec).out.strip() == os.readlink("/proc/self/ns/net")


def test_join_namespace_by_path(runtime: ForkServerRuntime, image: Path, tmp_path: Path) -> None:
    async def main() -> tuple[str, str]:
        spec = make_spec(image, tmp_path / "a", ["sleep", "1000"])
        null = os.open("/dev/null", os.O_RDWR)
        try:
            first = await runtime.prepare(spec, Stdio(null, null, null))
        finally:
            os.close(null)
        await first.go()
        try:
            own = os.readlink(f"/proc/{first.pid}/ns/net")
            namespaces = dict(
                NAMESPACES, net=f"/proc/{first.pid}/ns/net", ipc=f"/proc/{first.pid}/ns/ipc"
            )
            spec = make_spec(
                image, tmp_path / "b", ["readlink", "/proc/self/ns/net"], namespaces=namespaces
            )
            second = await run_container(runtime, spec)
            return own, second.out.strip()
        finally:
            first.kill(signal.SIGKILL)
            await first.wait()

    own, joined = trio.run(main)
    assert own == joined
    assert own != os.readlink("/proc/self/ns/net")


PIDS_CGROUP = Path("/sys/fs/cgroup/pids")


@pytest.mark.skipif(not PIDS_CGROUP.is_dir(), reason="no cgroup v1 pids hierarchy")
def test_cgroup_namespace_is_rooted_after_prestart(
    runtime: ForkServerRuntime, image: Path, tmp_path: Path
) -> None:
    # the daemon moves the process into its cgroup between prepare and go;
    # the cgroup namespace must be rooted there, not where the init was born
    group = PIDS_CGROUP / f"skiff-test-{os.getpid()}-{tmp_path.name}"
    group.mkdir()
    try:

        async def main() -> Result:
            spec = make_spec(
                image,
                tmp_path / "b",
                ["cat", "/proc/self/cgroup"],
                namespaces=dict(NAMESPACES, cgroup=None),
            )
            out_r, out_w = os.pipe()
            null = os.open("/dev/null", os.O_RDWR)
            try:
                proc = await runtime.prepare(spec, Stdio(null, out_w, null))
            finally:
                os.close(null)
                os.close(out_w)
            (group / "cgroup.procs").write_text(str(proc.pid))
            await proc.go()
            out: list[bytes] = []
            await drain(out_r, out)
            return Result(await proc.wait(), b"".join(out), b"")

        r = trio.run(main)
        assert r.code == 0
        pids_line = [line for line in r.out.splitlines() if ":pids:" in line]
        assert pids_line and pids_line[0].endswith(":pids:/")
    finally:
        group.rmdir()


@pytest.mark.skipif(not PIDS_CGROUP.is_dir(), reason="no cgroup v1 pids hierarchy")
@pytest.mark.parametrize("spares", [True, False], ids=["spare", "fresh"])
def test_init_is_in_its_cgroups_before_its_command(image: Path, tmp_path: Path,
                                                  spares: bool) -> None:
    # spec.cgroup_procs alone, no add_process: the shim moves the init while it
    # builds the container (issue 22), and the command runs only once it is there
    group = PIDS_CGROUP / f"skiff-test-{os.getpid()}-{tmp_path.name}"
    group.mkdir()
    rt = ForkServerRuntime(RuntimeContext(exec_root=str(tmp_path / "exec"),
                                          options={} if spares else {"skiff.spare": "false"}))
    try:

        async def main() -> Result:
            await rt.start()
            try:
                spec = make_spec(image, tmp_path / "b", ["cat", "/proc/self/cgroup"])
                spec.cgroup_procs = [str(group / "cgroup.procs")]
                out_r, out_w = os.pipe()
                null = os.open("/dev/null", os.O_RDWR)
                try:
                    proc = await rt.prepare(spec, Stdio(null, out_w, null))
                finally:
                    os.close(null)
                    os.close(out_w)
                assert str(proc.pid) in (group / "cgroup.procs").read_text().split()
                await proc.go()
                out: list[bytes] = []
                await drain(out_r, out)
                return Result(await proc.wait(), b"".join(out), b"")
            finally:
                await rt.stop()

        r = trio.run(main)
        assert r.code == 0, r
        pids_line = [line for line in r.out.splitlines() if ":pids:" in line]
        assert pids_line and pids_line[0].endswith(f":pids:/{group.name}"), r.out
    finally:
        group.rmdir()


def test_forkserver_restarts_after_crash(image: Path, tmp_path: Path) -> None:
    rt = ForkServerRuntime(RuntimeContext(exec_root=str(tmp_path / "exec"), options={}))

    async def main() -> Result:
        await rt.start()
        old = rt.forkserver_pid
        assert old is not None
        os.kill(old, signal.SIGKILL)
        with trio.fail_after(5):
            while pid_alive(old):
                await trio.sleep(0.01)
        try:
            result = await run_container(rt, make_spec(image, tmp_path / "b", ["echo", "ok"]))
            assert rt.forkserver_pid not in (None, old)
            return result
        finally:
            await rt.stop()

    assert trio.run(main).stdout == b"ok\n"


def _read_all(fd: int) -> bytes:
    # a pty master reads EIO once the last slave is closed: that is its EOF
    out = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    return out


def _run_on_terminal(start: Any, rows: int = 0, cols: int = 0) -> tuple[int, bytes]:
    """Start a TTY process (``start(stdio)`` is prepare or exec) and read its
    terminal, which the runtime allocated in the container, to the end."""

    async def main() -> tuple[int, bytes]:
        null = os.open("/dev/null", os.O_RDWR)
        try:
            proc = await start(Stdio(null, null, null))  # ignored with a TTY
        finally:
            os.close(null)
        master = proc.terminal
        assert master >= 0
        try:
            if rows:
                fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
            await proc.go()
            out = await trio.to_thread.run_sync(_read_all, master)
            code = await proc.wait()
        finally:
            os.close(master)  # ours: the runtime never closes it
        return code, out

    return trio.run(main)


def test_tty_is_the_controlling_terminal(
    runtime: ForkServerRuntime, image: Path, tmp_path: Path
) -> None:
    # sh reads its own /proc/self/stat: session (6th field) and tty_nr (7th)
    script = (
        "read pid comm state ppid pgrp sid tty rest < /proc/self/stat; echo $sid $tty; "
        "tty; [ -t 0 ] && [ -t 1 ] && [ -t 2 ] && echo all-ttys; stty size; "
        "stat -c '%u:%g %a %t,%T' /dev/pts/0 /dev/console; ls /dev/pts"
    )
    spec = make_spec(image, tmp_path / "b", ["sh", "-c", script], tty=True, user="nobody")
    code, out = _run_on_terminal(lambda stdio: runtime.prepare(spec, stdio), 33, 101)
    assert code == 0, out
    lines = out.decode().split("\r\n")
    sid, tty = lines[0].split()
    assert sid == "1"  # the command (PID 1) leads its own session ...
    assert os.major(int(tty)) == 136 and os.minor(int(tty)) == 0  # ... on /dev/pts/0
    # a terminal of the container's own devpts: the name resolves inside it
    assert lines[1] == "/dev/pts/0"
    assert lines[2] == "all-ttys"
    assert lines[3] == "33 101"  # the size the daemon set before go
    # owned by the process's user (nobody), group tty, mode 0620; /dev/console is it
    assert lines[4] == "65534:5 620 88,0"
    assert lines[5] == "65534:5 620 88,0"
    assert lines[6].split() == ["0", "ptmx"]


def test_exec_gets_a_terminal_in_the_container(
    runtime: ForkServerRuntime, image: Path, tmp_path: Path
) -> None:
    spec = make_spec(image, tmp_path / "b", ["sleep", "100"])

    container = trio.run(started, runtime, spec)
    try:
        exec_spec = ExecSpec(
            id="e" * 64, container_id=spec.id, container_pid=container.pid,
            namespaces=ns_paths(container.pid),
            args=["sh", "-c", "t=$(tty); echo $t; ls $t && [ -t 0 ] && echo ok"],
            env=[PATH_ENV], tty=True, capabilities=list(capabilities.DEFAULT_CAPABILITIES),
        )
        code, out = _run_on_terminal(lambda stdio: runtime.exec(exec_spec, stdio))
    finally:
        container.kill(signal.SIGKILL)
        trio.run(container.wait)
    assert code == 0, out
    name, listed, ok = out.decode().split("\r\n")[:3]
    assert name.startswith("/dev/pts/") and listed == name and ok == "ok"


def test_exec_joins_the_container(runtime: ForkServerRuntime, image: Path, tmp_path: Path) -> None:
    spec = make_spec(image, tmp_path / "b", ["sleep", "100"])
    script = "hostname; cat /proc/1/cmdline; echo; id -u; pwd; echo $FOO"

    async def main() -> Result:
        async with running(runtime, spec) as container:
            exec_spec = ExecSpec(
                id="e" * 64, container_id=spec.id, container_pid=container.pid,
                namespaces=ns_paths(container.pid), args=["sh", "-c", script],
                env=[PATH_ENV, "FOO=bar"], cwd="/tmp", user="nobody",
                capabilities=list(capabilities.DEFAULT_CAPABILITIES),
            )
            first = await exec_output(runtime, exec_spec)
            bad = ExecSpec(
                id="f" * 64, container_id=spec.id, container_pid=container.pid,
                namespaces=ns_paths(container.pid), args=["nosuchcommand"], env=[PATH_ENV],
            )
            with pytest.raises(StartError) as info:
                await exec_output(runtime, bad)
            assert info.value.exit_code == 127
            return first

    r = trio.run(main)
    assert r.code == 0, r
    assert r.out.splitlines() == ["skiffbox", "sleep\x00100\x00", "65534", "/tmp", "bar"]


def test_concurrent_containers(runtime: ForkServerRuntime, image: Path, tmp_path: Path) -> None:
    # one spare, many callers at once: the rest get fresh shims, all must work
    results: dict[int, Result] = {}

    async def one(i: int) -> None:
        spec = make_spec(
            image, tmp_path / f"b{i}", ["sh", "-c", f"echo {i}; exit {i}"], hostname=f"h{i}"
        )
        results[i] = await run_container(runtime, spec)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for i in range(12):
                nursery.start_soon(one, i)

    trio.run(main)
    assert {i: (r.code, r.stdout) for i, r in results.items()} == {
        i: (i, f"{i}\n".encode()) for i in range(12)
    }
    assert len({r.pid for r in results.values()}) == 12


def test_start_latency(runtime: ForkServerRuntime, image: Path, tmp_path: Path) -> None:
    """prepare + go + wait of `true`, 20 runs; printed, not asserted."""
    totals = []
    parts: dict[str, list[float]] = {"prepare": [], "go": [], "wait": []}
    for i in range(20):
        r = run(runtime, make_spec(image, tmp_path / f"b{i}", ["true"]))
        assert r.code == 0
        totals.append(r.timings["total"])
        for k in parts:
            parts[k].append(r.timings[k])
    detail = " ".join(f"{k}={statistics.median(v) * 1000:.1f}ms" for k, v in parts.items())
    median = statistics.median(totals) * 1000
    print(
        f"\nstart latency of `true` over 20 runs: median {median:.1f} ms"
        f" (min {min(totals) * 1000:.1f}, max {max(totals) * 1000:.1f}; {detail})"
    )


# ---------------------------------------------------------------------------
# The spec hook and pure helpers
# ---------------------------------------------------------------------------


def _hooked(host_config: dict[str, Any], daemon: dict[str, Any] | None = None) -> ContainerSpec:
    spec = ContainerSpec(id="c1", bundle="/x", rootfs_mounts=[], mounts=[], args=["true"], env=[])
    skiff_container_spec(FakeContainer(host_config), spec, daemon or {})
    return spec


def test_spec_hook_defaults() -> None:
    spec = _hooked({})
    assert capabilities.to_mask(spec.capabilities) == 0xA80425FB
    assert spec.masked_paths == list(DEFAULT_MASKED_PATHS)
    assert spec.readonly_paths == list(DEFAULT_READONLY_PATHS)
    # Docker's default: setuid programs work, so no no_new_privs unless asked
    assert spec.no_new_privileges is False
    assert spec.readonly_sysfs is True
    assert _hooked({}, {"no-new-privileges": True}).no_new_privileges is True


def test_spec_hook_adjustments() -> None:
    spec = _hooked({"CapAdd": ["NET_ADMIN", "cap_sys_time"], "CapDrop": ["CHOWN", "CAP_KILL"]})
    assert set(spec.capabilities) == (
        set(capabilities.DEFAULT_CAPABILITIES) | {"NET_ADMIN", "SYS_TIME"}
    ) - {"CHOWN", "KILL"}
    assert _hooked({"CapDrop": ["ALL"], "CapAdd": ["CHOWN"]}).capabilities == ["CHOWN"]
    all_but = _hooked({"CapAdd": ["ALL"], "CapDrop": ["SYS_ADMIN"]}).capabilities
    assert set(all_but) == set(capabilities.CAPABILITIES) - {"SYS_ADMIN"}
    priv = _hooked({"Privileged": True, "CapDrop": ["ALL"]})
    assert set(priv.capabilities) == set(capabilities.CAPABILITIES)
    assert priv.masked_paths == [] and priv.readonly_paths == []
    assert priv.readonly_sysfs is False and priv.seccomp is None
    unconfined = _hooked({"SecurityOpt": ["systempaths=unconfined"]})
    assert unconfined.masked_paths == [] and unconfined.readonly_paths == []
    assert unconfined.readonly_sysfs is True
    assert _hooked({"SecurityOpt": ["no-new-privileges:false"]}).no_new_privileges is False
    assert _hooked({"SecurityOpt": ["no-new-privileges=false"]}).no_new_privileges is False
    assert _hooked({"SecurityOpt": ["no-new-privileges"]}).no_new_privileges is True
    assert _hooked({"MaskedPaths": [], "ReadonlyPaths": ["/x"]}).masked_paths == []
    assert _hooked({"ReadonlyRootfs": True}).readonly_rootfs is True
    with pytest.raises(ValueError, match='unknown capability: "CAP_BOGUS"'):
        _hooked({"CapAdd": ["BOGUS"]})
    # the daemon's default loses to the container's own word
    assert _hooked({"SecurityOpt": ["no-new-privileges=false"]},
                   {"no-new-privileges": True}).no_new_privileges is False
    with pytest.raises(ValueError, match="no-new-privileges"):
        skiff_container_validate({"SecurityOpt": ["no-new-privileges:maybe"]}, {})
    for refused, why in (("apparmor=unconfined", "AppArmor"), ("label=disable", "SELinux"),
                         ("garbage", "key=value"), ("bogus=1", "unknown option 'bogus'"),
                         ("systempaths=confined", "only value systempaths takes")):
        with pytest.raises(ValueError, match=why):
            skiff_container_validate({"SecurityOpt": [refused]}, {})


PASSWD = "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n"
GROUP = "root:x:0:\nusers:x:100:alice,bob\nalice:x:1000:\nwheel:x:10:alice\n"


@pytest.mark.parametrize(
    ("spec", "uid", "gid", "sgids", "home"),
    [
        ("", 0, 0, [], "/root"),
        ("root", 0, 0, [], "/root"),
        ("alice", 1000, 1000, [100, 10], "/home/alice"),
        ("1000", 1000, 1000, [100, 10], "/home/alice"),
        ("alice:wheel", 1000, 10, [], "/home/alice"),
        ("alice:4242", 1000, 4242, [], "/home/alice"),
        ("4242", 4242, 0, [], "/"),
        ("4242:100", 4242, 100, [], "/"),
    ],
)
def test_resolve_user(spec: str, uid: int, gid: int, sgids: list[int], home: str) -> None:
    user = users.resolve_user(spec, PASSWD, GROUP)
    assert (user.uid, user.gid, user.sgids, user.home) == (uid, gid, sgids, home)


def test_resolve_user_errors() -> None:
    with pytest.raises(users.UserError, match="unable to find user bob: no matching entries"):
        users.resolve_user("bob", PASSWD, GROUP)
    with pytest.raises(users.UserError, match="unable to find group nope: no matching entries"):
        users.resolve_user("alice:nope", PASSWD, GROUP)
    assert users.resolve_user("0", None, None).uid == 0


def test_parse_options() -> None:
    from skiff.core import syscalls as sc

    flags, prop, data = mounts.parse_options(
        ["rbind", "ro", "nosuid", "rprivate", "lowerdir=a:b", "upperdir=u"]
    )
    assert flags == sc.MS_BIND | sc.MS_REC | sc.MS_RDONLY | sc.MS_NOSUID
    assert prop == sc.MS_PRIVATE | sc.MS_REC
    assert data == "lowerdir=a:b,upperdir=u"
    assert mounts.parse_options(["ro", "rw"])[0] == 0
