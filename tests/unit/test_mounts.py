"""Mount specs: Binds, Mounts, Tmpfs and image volumes into mount points; the
copy-up; the local volume driver's option mounts."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from skiff.core.containers import copyup, mounts
from skiff.core.containers.config import InvalidConfig
from skiff.core.hookspecs import VolumeContext, VolumeDriver
from skiff.core.volumes.store import _labels_match
from skiff.plugins.volumes.local import LocalDriver


def test_bind_with_modes() -> None:
    mp = mounts.parse_bind("/srv/data/:/data:ro,rslave")
    assert mp["Type"] == "bind" and mp["Source"] == "/srv/data"
    assert mp["Destination"] == "/data" and mp["RW"] is False
    assert mp["Propagation"] == "rslave" and mp["Mode"] == "ro,rslave" and mp["_create"]
    mp = mounts.parse_bind("/a:/b/../c/")
    assert mp["Destination"] == "/c" and mp["RW"] and mp["Propagation"] == "rprivate"


def test_named_and_nocopy_volume_binds() -> None:
    mp = mounts.parse_bind("cache:/var/cache")
    assert (mp["Type"], mp["Name"], mp["Mode"], mp["_named"], mp["_copy"]) == (
        "volume", "cache", "z", True, True)
    mp = mounts.parse_bind("cache:/var/cache:ro,nocopy")
    assert mp["RW"] is False and mp["_copy"] is False


@pytest.mark.parametrize("spec, message", [
    ("/only", "invalid volume specification"),
    ("/a:/b:ro:extra", "invalid volume specification"),
    ("/a:rel", "mount path must be absolute"),
    ("/a:/", "destination can't be '/'"),
    ("/a:/b:ro,rw", "invalid mode"),
    ("/a:/b:nocopy", "nocopy is for volumes"),
    ("vol:/b:rshared", "propagation is for bind mounts"),
    ("/a:/b:sideways", "invalid mode: sideways"),
])
def test_bad_binds(spec: str, message: str) -> None:
    with pytest.raises(InvalidConfig, match=message):
        mounts.parse_bind(spec)


def test_mount_entries(tmp_path: Path) -> None:
    mp = mounts.parse_mount({"Type": "bind", "Source": str(tmp_path), "Target": "/t",
                             "ReadOnly": True, "BindOptions": {"Propagation": "rshared"}})
    assert (mp["RW"], mp["Propagation"], mp["_create"]) == (False, "rshared", False)
    mp = mounts.parse_mount({"Type": "volume", "Target": "/v", "VolumeOptions": {
        "NoCopy": True, "Labels": {"a": "b"},
        "DriverConfig": {"Name": "local", "Options": {"type": "tmpfs"}}}})
    assert mp["Name"] == "" and mp["_named"] is False and mp["_copy"] is False
    assert mp["_labels"] == {"a": "b"} and mp["_driver_opts"] == {"type": "tmpfs"}
    assert mp["Driver"] == "local"
    # the CLI sends tmpfs-mode=1777 as the integer 0o1777
    mp = mounts.parse_mount({"Type": "tmpfs", "Target": "/tmp",
                             "TmpfsOptions": {"SizeBytes": 1 << 20, "Mode": 0o1777}})
    assert mp["_options"] == ["size=1048576", "mode=1777"]
    # Go's os.ModeSticky spelled out is understood too
    mp = mounts.parse_mount({"Type": "tmpfs", "Target": "/tmp",
                             "TmpfsOptions": {"Mode": (1 << 20) | 0o777}})
    assert mp["_options"] == ["mode=1777"]


@pytest.mark.parametrize("m, message", [
    ({"Type": "bind", "Source": "/no/such/path/zz", "Target": "/t"},
     "bind source path does not exist: /no/such/path/zz"),
    ({"Type": "bind", "Target": "/t"}, "field Source must not be empty"),
    ({"Type": "tmpfs", "Source": "x", "Target": "/t"}, "field Source must not be specified"),
    ({"Type": "volume", "Target": "/t", "BindOptions": {"Propagation": "rshared"}},
     "BindOptions must not be specified"),
    ({"Type": "npipe", "Target": "/t"}, "mount type unknown"),
    ({"Type": "volume", "Source": "v"}, "field Target must not be empty"),
    ({"Type": "bind", "Source": "/", "Target": "/t", "BindOptions": {"Propagation": "x"}},
     "invalid propagation mode"),
])
def test_bad_mounts(m: dict, message: str) -> None:
    with pytest.raises(InvalidConfig, match=message):
        mounts.parse_mount(m)


def test_tmpfs_options() -> None:
    mp = mounts.parse_tmpfs("/run", "size=64m,mode=1777,noexec")
    assert mp["_options"] == ["size=64m", "mode=1777", "noexec"] and mp["_hidden"]
    assert mounts.parse_tmpfs("/run/", "")["Destination"] == "/run"
    with pytest.raises(InvalidConfig, match="invalid tmpfs option"):
        mounts.parse_tmpfs("/run", "exec=yes")


def test_plan_precedence_and_duplicates(tmp_path: Path) -> None:
    cfg = {"Volumes": {"/data": {}, "/logs": {}}}
    hc = {"Binds": ["/srv:/data"],
          "Mounts": [{"Type": "volume", "Source": "logs", "Target": "/logs"}],
          "Tmpfs": {"/logs": "size=1m"}}
    by_dest = {mp["Destination"]: mp for mp in mounts.plan(cfg, hc)}
    assert by_dest["/data"]["Type"] == "bind"  # a bind wins over the image's VOLUME
    assert by_dest["/logs"]["Type"] == "tmpfs"  # a tmpfs wins over everything
    with pytest.raises(InvalidConfig, match="Duplicate mount point: /x"):
        mounts.plan({}, {"Binds": ["/a:/x", "/b:/x/"]})
    with pytest.raises(InvalidConfig, match="Duplicate mount point: /x"):
        mounts.plan({}, {"Binds": ["/a:/x"],
                         "Mounts": [{"Type": "volume", "Target": "/x"}]})
    with pytest.raises(InvalidConfig, match="invalid mode: sideways"):
        mounts.plan({}, {"VolumesFrom": ["other:sideways"]})
    anon = mounts.plan({"Volumes": {"/v": {}}}, {})[0]
    assert anon["Type"] == "volume" and anon["Name"] == "" and not anon["_named"]


def test_api_shape_hides_private_keys_and_tmpfs_map() -> None:
    points = mounts.plan({}, {"Binds": ["/srv:/data:ro", "vol:/v"], "Tmpfs": {"/run": ""}})
    shown = mounts.api(points)
    assert shown == [
        {"Type": "bind", "Source": "/srv", "Destination": "/data", "Mode": "ro", "RW": False,
         "Propagation": "rprivate"},
        {"Type": "volume", "Name": "vol", "Source": "", "Destination": "/v", "Driver": "",
         "Mode": "z", "RW": True, "Propagation": ""},
    ]


def test_copy_tree_keeps_owners_modes_links_and_does_not_follow(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "d").mkdir(parents=True)
    dst.mkdir()
    (src / "f").write_text("data")
    os.chown(src / "f", 1000, 2000)
    os.chmod(src / "f", 0o4750)
    os.chmod(src / "d", 0o711)
    os.link(src / "f", src / "d" / "hard")
    os.symlink("/etc/shadow", src / "link")
    os.mkfifo(src / "fifo", 0o640)
    os.chown(src / "fifo", 7, 8)
    os.mknod(src / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    os.chmod(src / "null", 0o666)
    os.chown(src / "link", 5, 6, follow_symlinks=False)
    os.utime(src / "d", ns=(1_000_000_000, 2_000_000_123))
    os.utime(src / "link", ns=(3_000_000_000, 4_000_000_000), follow_symlinks=False)
    sfd, dfd = os.open(src, os.O_RDONLY | os.O_DIRECTORY), os.open(dst, os.O_RDONLY)
    try:
        copyup.copy_tree(sfd, dfd)
    finally:
        os.close(sfd)
        os.close(dfd)
    st = os.lstat(dst / "f")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 2000, 0o4750)
    assert (dst / "f").read_text() == "data"
    assert os.lstat(dst / "d" / "hard").st_ino == st.st_ino
    assert stat.S_IMODE(os.lstat(dst / "d").st_mode) == 0o711
    assert os.readlink(dst / "link") == "/etc/shadow"
    st = os.lstat(dst / "fifo")
    assert stat.S_ISFIFO(st.st_mode)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (7, 8, 0o640)
    st = os.lstat(dst / "null")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    assert stat.S_IMODE(st.st_mode) == 0o666
    assert os.lstat(dst / "d").st_mtime_ns == 2_000_000_123
    st = os.lstat(dst / "link")
    assert (st.st_uid, st.st_gid, st.st_mtime_ns) == (5, 6, 4_000_000_000)


def test_label_filters() -> None:
    labels = {"a": "1", "b": ""}
    assert _labels_match(labels, {"label": ["a", "a=1", "b"]})
    assert not _labels_match(labels, {"label": ["a=2"]})
    assert not _labels_match(labels, {"label!": ["a"]})
    assert _labels_match(labels, {"label!": ["c", "a=2"]})


def test_local_driver_plain_and_tmpfs_volumes(tmp_path: Path) -> None:
    drv = LocalDriver(VolumeContext(home=str(tmp_path / "volumes"), data_root=str(tmp_path)))
    assert isinstance(drv, VolumeDriver)
    drv.create("plain", {})
    path = drv.mount("plain", "c1")
    assert path == str(tmp_path / "volumes" / "plain" / "_data") and os.path.isdir(path)
    assert not os.path.ismount(path)
    with pytest.raises(ValueError, match="invalid option key"):
        drv.create("bad", {"colour": "blue"})
    with pytest.raises(ValueError, match="invalid characters"):
        drv.create("../escape", {})
    drv.create("mem", {"type": "tmpfs", "device": "tmpfs", "o": "size=1m,mode=700"})
    data = drv.mount("mem", "c1")
    try:
        drv.mount("mem", "c2")
        assert os.path.ismount(data)
        assert stat.S_IMODE(os.stat(data).st_mode) == 0o700
        drv.unmount("mem", "c1")
        assert os.path.ismount(data)  # c2 still uses it
    finally:
        drv.unmount("mem", "c2")
        drv.unmount("mem", "c2")  # idempotent
    assert not os.path.ismount(data)
    assert sorted(v.name for v in drv.list()) == ["mem", "plain"]
    drv.remove("mem")
    drv.remove("plain")
    assert drv.list() == []
    with pytest.raises(KeyError):
        drv.get("plain")
