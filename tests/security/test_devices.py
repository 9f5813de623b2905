"""Devices: the cgroup device filter, --device, --device-cgroup-rule, --privileged.

CAP_MKNOD is one of Docker's default capabilities, so a container's root can
always *make* a node for any device; only the devices cgroup (v1
``devices.allow``, v2 an eBPF program on the group) stops it from *opening*
it.  The attack of this file: mknod the host's disk (a loop device the test
writes a marker on) and read it.  It must fail by default and succeed once
the protection is lifted (``--device-cgroup-rule``, ``--privileged``).

Two levels, the same attack:

* ``test_cli_*``: the docker CLI against a real skiffd on this host's
  cgroups (v1 here);
* ``test_runtime_*``: the skiff runtime and the cgroupfs driver without the
  daemon (quick enough for the VM rig's pure cgroup v2 under TCG, see
  scripts/vmrig-tests.sh).  On a hybrid host (v1 with an empty cgroup2
  mount, as here) they also run under the v2 driver on that mount, where
  only the eBPF filter guards devices.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import docker
import pytest
import trio

from skiff.core.containers.limits import resources_from
from skiff.core.hookspecs import CgroupContext, ContainerSpec
from skiff.plugins.isolation.runtime import (
    ForkServerRuntime,
    skiff_container_spec,
    skiff_container_validate,
)
from skiff.plugins.limits import cgroupfs, cgroupfs_base, device_filter
from skiff.plugins.limits._bpf import lib  # type: ignore[import-not-found]
from skiff.plugins.limits.cgroupfs_v1 import CgroupfsV1
from skiff.plugins.limits.cgroupfs_v2 import CgroupfsV2
from tests.daemon import Daemon
from tests.integration.conftest import runtime  # noqa: F401  (a fixture)
from tests.integration.runtimekit import NAMESPACES, FakeContainer, make_spec, run_joined
from tests.loopfs import attached_loop
from tests.rootfs import make_busybox_rootfs
from tests.security.conftest import remapped, unremapped

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

MARKER = b"skiff-host-disk-" + secrets.token_hex(4).encode()


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[tuple[str, int, int]]:
    """A host block device (a loop device) starting with MARKER: (path, major, minor)."""
    with attached_loop(tmp_path) as (dev, majmin):
        fd = os.open(dev, os.O_WRONLY)
        try:
            os.write(fd, MARKER)
            os.fsync(fd)
        finally:
            os.close(fd)
        major, minor = (int(x) for x in majmin.split(":"))
        yield dev, major, minor


def attack(major: int, minor: int) -> str:
    """mknod the disk inside the container and read its first bytes."""
    return (f"rm -f /tmp/disk; mknod /tmp/disk b {major} {minor} && echo made && "
            f"head -c {len(MARKER)} /tmp/disk; echo; rm -f /tmp/disk")


# ---------------------------------------------------------------------------
# The docker CLI against skiffd
# ---------------------------------------------------------------------------


def run(skiffd: Daemon, *args: str) -> subprocess.CompletedProcess[bytes]:
    return skiffd.docker("run", "--rm", *args, timeout=120)


def test_cli_mknod_host_disk_cannot_be_opened(skiffd: Daemon,
                                              disk: tuple[str, int, int]) -> None:
    """GHSA-g54h-m393-cpwq class (a device list that is not deny-by-default):
    CAP_MKNOD makes a node of the host's disk; opening it must fail (EPERM).
    With ``--device-cgroup-rule 'b MAJ:MIN r'`` the same read gets the data,
    so it is the device filter that stops it."""
    _, major, minor = disk
    res = run(skiffd, "busybox", "sh", "-c", attack(major, minor))
    out = res.stdout.decode() + res.stderr.decode()
    # mknod itself is allowed, as in Docker; in a user namespace (remapped)
    # it is not, a second wall in front of the filter
    assert ("made" in out) != remapped(skiffd), out
    assert "Operation not permitted" in out, out
    assert MARKER.decode() not in out

    res = run(skiffd, *unremapped(skiffd), "--device-cgroup-rule", f"b {major}:{minor} r",
              "busybox", "sh", "-c", attack(major, minor))
    assert MARKER.decode() in res.stdout.decode(), res.stdout + res.stderr


def test_cli_privileged_gets_host_devices_unfiltered(skiffd: Daemon,
                                                     disk: tuple[str, int, int]) -> None:
    """--privileged: every host device node is in /dev (not the host's console)
    and no filter stands in the way: the disk reads directly and by mknod."""
    dev, major, minor = disk
    script = (f"head -c {len(MARKER)} {dev}; echo; ls /dev; echo ==; "
              + attack(major, minor))
    res = run(skiffd, *unremapped(skiffd), "--privileged", "busybox", "sh", "-c", script)
    out = res.stdout.decode()
    direct, _, rest = out.partition("\n")
    assert direct == MARKER.decode(), out + res.stderr.decode()
    listing = rest.split("==")[0].split()
    assert os.path.basename(dev) in listing and "loop-control" in listing, listing
    if os.path.exists("/dev/net/tun"):
        assert "net" in listing
    assert out.count(MARKER.decode()) == 2, out


def test_cli_device_flag_maps_one_device(skiffd: Daemon, disk: tuple[str, int, int]) -> None:
    """--device HOST:CONTAINER:PERMS: the node appears with the host's numbers and
    only the permissions asked for; other devices stay closed."""
    dev, major, minor = disk
    if remapped(skiffd):
        # refused rather than accepted and not honoured: no mknod in a user
        # namespace, and no bind of the host's node yet
        res = run(skiffd, "--device", f"{dev}:/dev/xvdz", "busybox", "true")
        assert res.returncode != 0
        assert "--device is not supported yet for containers in a user namespace" in \
            res.stderr.decode(), res.stderr
    host = unremapped(skiffd)
    res = run(skiffd, *host, "--device", f"{dev}:/dev/xvdz", "busybox", "sh", "-c",
              f"stat -c '%t:%T' /dev/xvdz; head -c {len(MARKER)} /dev/xvdz; echo; "
              "echo overwrite | dd of=/dev/xvdz bs=512 count=1 conv=notrunc 2>&1; "
              "ls /dev/loop-control 2>&1")
    lines = res.stdout.decode().splitlines()
    assert lines[0] == f"{major:x}:{minor:x}", lines
    assert lines[1] == MARKER.decode(), lines
    assert "records out" in res.stdout.decode(), lines
    assert "No such file" in lines[-1], lines
    with open(dev, "rb") as f:
        assert f.read(9) == b"overwrite"

    # read-only: the write is refused by the filter, the read still works
    res = run(skiffd, *host, "--device", f"{dev}:/dev/xvdz:r", "busybox", "sh", "-c",
              "head -c 9 /dev/xvdz; echo; echo again | dd of=/dev/xvdz bs=512 count=1 2>&1")
    out = res.stdout.decode()
    assert out.startswith("overwrite\n"), out
    assert "Operation not permitted" in out, out


def test_cli_fuse_only_when_asked(skiffd: Daemon) -> None:
    """Docker's list denies /dev/fuse (10:229) by default; --device /dev/fuse opens it."""
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse on this host")
    script = ("test -e /dev/fuse && echo present; mknod /tmp/fuse c 10 229 && "
              "(exec 3<>/tmp/fuse) 2>&1 && echo opened")
    res = run(skiffd, "busybox", "sh", "-c", script)
    out = res.stdout.decode() + res.stderr.decode()
    assert "present" not in out and "opened" not in out, out
    assert "Operation not permitted" in out, out
    res = run(skiffd, *unremapped(skiffd), "--device", "/dev/fuse", "busybox", "sh", "-c",
              "(exec 3<>/dev/fuse) && echo opened")
    assert res.stdout.decode().strip() == "opened", res.stderr


def test_cli_bad_devices_are_400_at_create(skiffd: Daemon, tmp_path: Path) -> None:
    """Bad --device / --device-cgroup-rule input: a 400 at create, nothing made."""
    client = docker.APIClient(base_url=skiffd.host, version="1.41", timeout=60)
    before = client.containers(all=True)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"Devices": [{"PathOnHost": "/dev/skiff-nonexistent", "PathInContainer": "/dev/x",
                       "CgroupPermissions": "rwm"}]}, "No such file or directory"),
        ({"Devices": [{"PathOnHost": "/etc/hostname", "PathInContainer": "/dev/x",
                       "CgroupPermissions": "rwm"}]}, "not a device node"),
        ({"Devices": [{"PathOnHost": "/dev/null", "PathInContainer": "/dev/x",
                       "CgroupPermissions": "rwx"}]}, "bad mode specified: rwx"),
        ({"Devices": [{"PathOnHost": "/dev/null", "PathInContainer": "dev/x",
                       "CgroupPermissions": "rw"}]}, "bad format for path"),
        ({"DeviceCgroupRules": ["c 1:3 rwx"]}, "invalid device cgroup rule format"),
        ({"DeviceCgroupRules": ["b 99999:1 r"]}, "major numbers go up to 4095"),
    ]
    for host_config, message in cases:
        with pytest.raises(docker.errors.APIError) as info:
            client.create_container("busybox", "true", host_config=host_config)
        assert info.value.status_code == 400, (host_config, info.value)
        assert message in str(info.value.explanation), (host_config, info.value.explanation)
    assert client.containers(all=True) == before
    assert client.ping()


def test_cli_update_keeps_the_filter(skiffd: Daemon, disk: tuple[str, int, int]) -> None:
    """docker update rewrites limits, never the device rules: still no disk."""
    _, major, minor = disk
    name = "devices-update-" + secrets.token_hex(4)
    skiffd.docker("run", "-d", "--name", name, "busybox", "sleep", "300", check=True)
    try:
        skiffd.docker("update", "--memory", "64m", "--memory-swap", "128m", "--pids-limit",
                      "50", name, check=True)
        res = skiffd.docker("exec", name, "sh", "-c", attack(major, minor))
        out = res.stdout.decode() + res.stderr.decode()
        assert ("made" in out) != remapped(skiffd), out  # no mknod in a user namespace
        assert "Operation not permitted" in out, out
        assert MARKER.decode() not in out
    finally:
        skiffd.docker("rm", "-f", name)


# ---------------------------------------------------------------------------
# The runtime and the cgroupfs driver, without the daemon (v1 here, v2 in the rig)
# ---------------------------------------------------------------------------


def _v2_mount() -> str | None:
    """A cgroup2 mount this host's processes live in (also on a hybrid host)."""
    root = cgroupfs_base.CGROUP_ROOT
    for candidate in (root, os.path.join(root, "unified")):
        if os.path.exists(os.path.join(candidate, "cgroup.controllers")):
            return candidate
    return None


def _drivers() -> list[str]:
    kinds = ["host"]
    if cgroupfs_base.cgroup_version() == 1 and _v2_mount():
        kinds.append("v2-on-hybrid")
    return kinds


@pytest.fixture(params=_drivers())
def driver(request: pytest.FixtureRequest) -> Iterator[CgroupfsV1 | CgroupfsV2]:
    """The host's driver; on a hybrid host also the v2 driver on its cgroup2 mount."""
    parent = "skiff-test-" + secrets.token_hex(6)
    if request.param == "host":
        drv: CgroupfsV1 | CgroupfsV2 = cgroupfs.cgroupfs_factory(
            CgroupContext(parent))
    else:
        drv = CgroupfsV2(parent, root=_v2_mount() or "")
    yield drv
    left = [str(p) for p in [Path("/sys/fs/cgroup", parent),
                            *Path("/sys/fs/cgroup").glob(f"*/{parent}")] if p.exists()]
    assert not left, f"cgroups left behind: {left}"


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    """A busybox root of the test's own: the containers write nodes into it."""
    return make_busybox_rootfs(tmp_path / "rootfs")


def hooked_spec(image: Path, bundle: Path, script: str, host_config: dict[str, Any],
                cid: str) -> ContainerSpec:
    """The spec skiffd would start: the isolation plugin's defaults for ``host_config``."""
    skiff_container_validate(host_config, {})
    spec = make_spec(image, bundle, ["sh", "-c", script], id=cid)
    skiff_container_spec(FakeContainer(host_config, id=cid), spec, {})
    spec.namespaces = dict(NAMESPACES)
    return spec


def run_confined(rt: ForkServerRuntime, drv: CgroupfsV1 | CgroupfsV2, image: Path,
                 bundle: Path, script: str, host_config: dict[str, Any],
                 after_create: Any = None) -> str:
    """What skiffd's start does, minus the daemon: groups (with the device
    filter), the spec hook, prepare, join the groups, go.  Returns the output."""
    cid = secrets.token_hex(32)
    drv.create(cid, resources_from(host_config))
    try:
        if after_create is not None:
            after_create(cid)
        spec = hooked_spec(image, bundle, script, host_config, cid)
        spec.mounts = [*spec.mounts, *drv.mounts(cid)]

        _, out = trio.run(run_joined, rt, spec, partial(drv.add_process, cid))
        return out
    finally:
        drv.destroy(cid)


def test_runtime_mknod_host_disk_cannot_be_opened(
        runtime: ForkServerRuntime, driver: CgroupfsV1 | CgroupfsV2,  # noqa: F811
        rootfs: Path, tmp_path: Path, disk: tuple[str, int, int]) -> None:
    """GHSA-g54h-m393-cpwq class, on v1 (devices.allow) and v2 (eBPF): the
    host disk's node can be made but not opened; ``DeviceCgroupRules`` 'b
    MAJ:MIN r' and ``Privileged`` (no filter at all) let the same read through."""
    _, major, minor = disk
    out = run_confined(runtime, driver, rootfs, tmp_path / "b1", attack(major, minor), {})
    assert "made" in out and "Operation not permitted" in out, out
    assert MARKER.decode() not in out

    out = run_confined(runtime, driver, rootfs, tmp_path / "b2", attack(major, minor),
                       {"DeviceCgroupRules": [f"b {major}:{minor} r"]})
    assert MARKER.decode() in out, out

    dev = disk[0]
    out = run_confined(runtime, driver, rootfs, tmp_path / "b3",
                       f"head -c {len(MARKER)} {dev}; echo; " + attack(major, minor),
                       {"Privileged": True})
    assert out.count(MARKER.decode()) == 2, out


def test_runtime_update_keeps_the_filter(
        runtime: ForkServerRuntime, driver: CgroupfsV1 | CgroupfsV2,  # noqa: F811
        rootfs: Path, tmp_path: Path, disk: tuple[str, int, int]) -> None:
    """``update`` (docker update) between create and start leaves the device
    rules as they were: the attack still fails."""
    _, major, minor = disk
    programs: list[list[int]] = []

    def update(cid: str) -> None:
        before = device_filter.installed(driver.path(cid)) \
            if isinstance(driver, CgroupfsV2) else []
        v2_without_pids = isinstance(driver, CgroupfsV2) and not os.path.exists(
            os.path.join(driver.path(cid), "pids.max"))  # the empty cgroup2 of a hybrid host
        driver.update(cid, resources_from({} if v2_without_pids else {"PidsLimit": 50}))
        after = device_filter.installed(driver.path(cid)) \
            if isinstance(driver, CgroupfsV2) else []
        programs.append(before)
        programs.append(after)

    out = run_confined(runtime, driver, rootfs, tmp_path / "b", attack(major, minor), {},
                       after_create=update)
    assert "made" in out and "Operation not permitted" in out, out
    if isinstance(driver, CgroupfsV2):
        assert programs[0] and programs[0] == programs[1], programs


def test_runtime_device_maps_node(runtime: ForkServerRuntime,  # noqa: F811
                                  driver: CgroupfsV1 | CgroupfsV2, rootfs: Path,
                                  tmp_path: Path, disk: tuple[str, int, int]) -> None:
    """``Devices`` makes the node (host numbers, mode, owner) at the container path,
    also outside /dev and below directories that do not exist, and opens it."""
    dev, major, minor = disk
    st = os.stat(dev)
    hc = {"Devices": [{"PathOnHost": dev, "PathInContainer": "/mnt/new/dir/disk",
                       "CgroupPermissions": "rw"}]}
    out = run_confined(runtime, driver, rootfs, tmp_path / "b",
                       "stat -c '%F %t:%T %a %u:%g' /mnt/new/dir/disk; "
                       f"head -c {len(MARKER)} /mnt/new/dir/disk; echo", hc)
    lines = out.splitlines()
    mode = f"{st.st_mode & 0o7777:o}"
    assert lines[0] == f"block special file {major:x}:{minor:x} {mode} {st.st_uid}:{st.st_gid}", \
        lines
    assert lines[1] == MARKER.decode(), lines


def test_runtime_device_path_cannot_escape_through_image_symlink(
        runtime: ForkServerRuntime, driver: CgroupfsV1 | CgroupfsV2,  # noqa: F811
        rootfs: Path, tmp_path: Path) -> None:
    """Symlink-escape class (CVE-2021-30465 for mounts): an image symlink on
    PathInContainer's way (``/evil -> <a host directory>``) is resolved inside
    the container's root, so the node lands in the container, never on the
    host: a link that dangles inside the root is followed inside it, as the
    container itself would follow it."""
    host_dir = tmp_path / "host-dir"
    host_dir.mkdir()
    os.symlink(str(host_dir), rootfs / "evil")
    hc = {"Devices": [{"PathOnHost": "/dev/null", "PathInContainer": "/evil/null",
                       "CgroupPermissions": "rw"}]}
    inside = rootfs / str(host_dir).lstrip("/")
    for bundle in ("b1", "b2"):  # the link dangling inside the root, then not
        out = run_confined(runtime, driver, rootfs, tmp_path / bundle,
                           "echo x > /evil/null && echo written", hc)
        assert "written" in out, out
        assert not (host_dir / "null").exists()
        assert (inside / "null").is_char_device()


def test_runtime_refused_when_the_filter_cannot_be_attached() -> None:
    """No start without the filter: an ancestor group holding an exclusive
    device program (attached without BPF_F_ALLOW_MULTI) makes the kernel
    refuse ours; create fails naming the cause and leaves no group.  Once
    the ancestor's program is gone, the same create works (with a filter)."""
    root = _v2_mount()
    if root is None:
        pytest.skip("no cgroup2 mount")
    parent = "skiff-test-" + secrets.token_hex(6)
    drv = CgroupfsV2(parent, root=root)
    top = os.path.join(root, parent)
    keep = os.path.join(top, "keep")  # so the failed create cannot remove the parent
    os.makedirs(keep)
    try:
        fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
        try:
            prog = device_filter.load(device_filter.assemble(True, []))
            try:
                assert lib.skiff_bpf_prog_attach(fd, prog, device_filter.BPF_CGROUP_DEVICE,
                                                 0) == 0
            finally:
                os.close(prog)
        finally:
            os.close(fd)
        cid = secrets.token_hex(32)
        with pytest.raises(device_filter.DeviceFilterError, match="BPF_F_ALLOW_MULTI"):
            drv.create(cid, resources_from({}))
        groups = [e for e in os.listdir(top) if os.path.isdir(os.path.join(top, e))]
        assert groups == ["keep"], "the refused container's group was left"
        device_filter.install(top, None)  # the exclusive program goes
        drv.create(cid, resources_from({}))
        assert len(device_filter.installed(drv.path(cid))) == 1
        drv.destroy(cid)
    finally:
        if os.path.isdir(top):
            for entry in os.scandir(top):
                if entry.is_dir(follow_symlinks=False):
                    os.rmdir(entry.path)
            os.rmdir(top)
