"""The ``skiff`` runtime with a user namespace (``ContainerSpec.uid_map``) on the real kernel.

The host ids are an arbitrary block far above any real account: the runtime
writes the mappings itself (as host root), so no /etc/subuid entry is needed
at this level.  The busybox rootfs belongs to host root, as the layers of an
unremapped image do: with ``rootfs_idmap`` the container sees it as its own.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import signal
from pathlib import Path
from typing import Any

import pytest
import trio

from skiff.core.hookspecs import ExecSpec, MountSpec
from skiff.plugins.isolation import capabilities
from skiff.plugins.isolation.runtime import ForkServerRuntime
from tests.integration.runtimekit import (
    NAMESPACES,
    PATH_ENV,
    Result,
    exec_output,
    make_spec,
    ns_paths,
    run,
    running,
    start_error,
    started,
)

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="the runtime needs root"),
              pytest.mark.usefixtures("no_leaks")]

#: host uid and gid of the container's root: a random block high above real accounts
BASE = 3_000_000_000 + secrets.randbelow(1000) * 65536
USERNS: dict[str, str | None] = {**NAMESPACES, "cgroup": None, "user": None}
NS_GET_USERNS = 0xB701  # _IO(0xb7, 0x1): the user namespace that owns a namespace


def remapped(rootfs: Path, bundle: Path, args: list[str], **kw: Any):  # type: ignore[no-untyped-def]
    defaults: dict[str, Any] = {"namespaces": dict(USERNS), "uid_map": [(0, BASE, 65536)],
                                "gid_map": [(0, BASE, 65536)], "rootfs_idmap": True}
    defaults.update(kw)
    return make_spec(rootfs, bundle, args, **defaults)


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    """A busybox rootfs of its own (the tests write to it)."""
    from tests.rootfs import make_busybox_rootfs

    return make_busybox_rootfs(tmp_path / "rootfs")


def _host_ids(pid: int) -> tuple[str, str]:
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    return fields["Uid"].split()[0], fields["Gid"].split()[0]


def test_root_is_mapped(runtime: ForkServerRuntime, rootfs: Path, tmp_path: Path) -> None:
    script = "id -u; id -g; cat /proc/self/uid_map /proc/self/gid_map; echo $$"
    r = run(runtime, remapped(rootfs, tmp_path / "b", ["sh", "-c", script]))
    assert r.code == 0, r.stderr
    lines = r.out.split("\n")
    assert lines[:2] == ["0", "0"]
    assert lines[2].split() == lines[3].split() == ["0", str(BASE), "65536"]
    assert lines[4] == "1"  # still PID 1 of its own pid namespace


def test_every_namespace_belongs_to_the_user_namespace(runtime: ForkServerRuntime,
                                                       rootfs: Path, tmp_path: Path) -> None:
    """Made inside it, not beside it: otherwise the container's root would
    lose what Docker gives it over its own network, hostname, mounts."""
    container = trio.run(started, runtime, remapped(rootfs, tmp_path / "b", ["sleep", "100"]))
    try:
        assert _host_ids(container.pid) == (str(BASE), str(BASE))
        user = os.stat(f"/proc/{container.pid}/ns/user").st_ino
        assert user != os.stat("/proc/self/ns/user").st_ino
        for kind in ("net", "uts", "ipc", "mnt", "pid", "cgroup"):
            fd = os.open(f"/proc/{container.pid}/ns/{kind}", os.O_RDONLY)
            try:
                owner = fcntl.ioctl(fd, NS_GET_USERNS)
            finally:
                os.close(fd)
            try:
                assert os.fstat(owner).st_ino == user, kind
            finally:
                os.close(owner)
    finally:
        container.kill(signal.SIGKILL)
        trio.run(container.wait)


def test_root_keeps_its_powers_over_its_own_namespaces(runtime: ForkServerRuntime,
                                                       rootfs: Path, tmp_path: Path) -> None:
    """Port 80, a raw socket (ping), NET_ADMIN on its own network."""
    script = ("nc -l -p 80 & sleep 0.2; kill $! && echo BOUND; "
              "ip link set lo up && echo NETADMIN; "
              "ping -c1 -W2 127.0.0.1 >/dev/null && echo PING")
    caps = [*capabilities.DEFAULT_CAPABILITIES, "NET_ADMIN"]
    r = run(runtime, remapped(rootfs, tmp_path / "b", ["sh", "-c", script], capabilities=caps))
    assert r.out.split() == ["BOUND", "NETADMIN", "PING"], r.stderr


def test_idmapped_rootfs_writes_land_as_container_ids(runtime: ForkServerRuntime,
                                                      rootfs: Path, tmp_path: Path) -> None:
    """Through the idmapped rootfs the image's files are the container's root's
    and what it writes is 0 (or 1000) on disk, as if unremapped."""
    script = ("stat -c %u:%g /bin/busybox; touch /made; mkdir /made-dir; "
              "touch /theirs && chown 1000:1000 /theirs; echo done")
    r = run(runtime, remapped(rootfs, tmp_path / "b", ["sh", "-c", script]))
    assert r.out.split() == ["0:0", "done"], r.stderr
    for name, owner in (("made", (0, 0)), ("made-dir", (0, 0)), ("theirs", (1000, 1000))):
        st = os.lstat(rootfs / name)
        assert (st.st_uid, st.st_gid) == owner, name


def test_without_idmap_the_layers_belong_to_nobody(runtime: ForkServerRuntime,
                                                   rootfs: Path, tmp_path: Path) -> None:
    """The control: the same rootfs without idmapped mounts shows host root's
    files as nobody's, and the container's root cannot write them (why the
    daemon idmaps, or chowns copies)."""
    r = run(runtime, remapped(rootfs, tmp_path / "b",
                              ["sh", "-c", "stat -c %u /bin/busybox; touch /made || echo refused"],
                              rootfs_idmap=False))
    assert r.out.split() == ["65534", "refused"], r.stderr
    assert not (rootfs / "made").exists()


def test_binds_from_root_only_directories(runtime: ForkServerRuntime, rootfs: Path,
                                          tmp_path: Path) -> None:
    """Bind sources are cloned by host root before the user namespace (the
    daemon's directories are 0700), attributes set; they are not idmapped:
    a host root file stays nobody's and read-only binds stay read-only."""
    hidden = tmp_path / "hidden"
    hidden.mkdir(mode=0o700)
    (hidden / "conf").write_text("from the host\n")
    (hidden / "conf").chmod(0o644)
    writable = hidden / "rw"
    writable.mkdir()
    os.chown(writable, BASE, BASE)
    mounts = [MountSpec("bind", str(hidden / "conf"), "/etc/conf", ["rbind", "ro"]),
              MountSpec("bind", str(writable), "/data", ["rbind", "rw"])]
    script = ("cat /etc/conf; stat -c %u /etc/conf; echo x > /etc/conf || echo ro; "
              "echo y > /data/f && echo rw")
    r = run(runtime, remapped(rootfs, tmp_path / "b", ["sh", "-c", script], mounts=mounts))
    assert r.out.split("\n")[:4] == ["from the host", "65534", "ro", "rw"], r.stderr
    assert os.stat(writable / "f").st_uid == BASE
    assert (hidden / "conf").read_text() == "from the host\n"


def test_a_missing_bind_source_is_reported(runtime: ForkServerRuntime, rootfs: Path,
                                           tmp_path: Path) -> None:
    mounts = [MountSpec("bind", str(tmp_path / "missing"), "/x", ["rbind"])]
    err = start_error(runtime, remapped(rootfs, tmp_path / "b", ["true"], mounts=mounts))
    assert "missing" in str(err) and err.exit_code == 125


def test_exec_joins_the_user_namespace(runtime: ForkServerRuntime, rootfs: Path,
                                       tmp_path: Path) -> None:
    async def main() -> Result:
        async with running(runtime, remapped(rootfs, tmp_path / "b", ["sleep", "100"])) as c:
            exec_spec = ExecSpec(
                id="e" * 64, container_id="c", container_pid=c.pid,
                namespaces=ns_paths(c.pid, "user"),
                args=["sh", "-c", "id -u; cat /proc/self/uid_map; touch /by-exec"],
                env=[PATH_ENV], capabilities=list(capabilities.DEFAULT_CAPABILITIES))

            def not_yet(proc: Any) -> None:
                assert _host_ids(proc.pid) == ("0", "0")  # it drops at go

            return await exec_output(runtime, exec_spec, before_go=not_yet)

    r = trio.run(main)
    assert r.code == 0
    assert r.out.split() == ["0", "0", str(BASE), "65536"]
    assert os.lstat(rootfs / "by-exec").st_uid == 0


def test_the_shim_keeps_no_mount_namespace(runtime: ForkServerRuntime, rootfs: Path,
                                           tmp_path: Path) -> None:
    """The shim builds the rootfs in a private mount namespace and leaves it:
    while the container runs, the shim is in the host's (no copy of the
    host's mounts pinned for the container's life)."""
    container = trio.run(started, runtime, remapped(rootfs, tmp_path / "b", ["sleep", "100"]))
    try:
        with open(f"/proc/{container.pid}/stat") as f:
            shim = int(f.read().rsplit(")", 1)[1].split()[1])
        assert os.readlink(f"/proc/{shim}/ns/mnt") == os.readlink("/proc/self/ns/mnt")
        assert os.readlink(f"/proc/{container.pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    finally:
        container.kill(signal.SIGKILL)
        trio.run(container.wait)


def test_probe_idmapped_rootfs(runtime: ForkServerRuntime, rootfs: Path) -> None:
    reason = trio.run(runtime.probe_idmapped_rootfs,
                      [MountSpec("bind", str(rootfs), "/", ["rbind"])],
                      [(0, BASE, 65536)], [(0, BASE, 65536)])
    assert reason is None
    st = os.lstat(rootfs / ".skiff-idmap-probe")
    assert (st.st_uid, st.st_gid) == (0, 0)
    # a filesystem that cannot be idmapped says so (/proc cannot)
    reason = trio.run(runtime.probe_idmapped_rootfs,
                      [MountSpec("bind", "/proc", "/", ["rbind"])],
                      [(0, BASE, 65536)], [(0, BASE, 65536)])
    assert reason is not None and "idmapped" in reason
