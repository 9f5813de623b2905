"""The btrfs and aufs storage drivers and the disk quota, on the real kernel.

The conformance suite (tests/conformance/test_storage.py) runs aufs directly;
btrfs needs a btrfs data-root, so here it runs that suite again in a child
pytest whose temporary directory is a loop-mounted btrfs (without tests/conftest.py:
this session's own leak check covers the child).
"""

from __future__ import annotations

import errno
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from skiff.core.hookspecs import DriverNotSupported, StorageContext
from skiff.core.plugins import load_plugins
from tests.conformance import _storage_model as sm
from tests.loopfs import have_mkfs, loop_filesystem

REPO = Path(__file__).resolve().parents[2]
MB = 1 << 20

needs_btrfs = pytest.mark.skipif(not have_mkfs("btrfs"), reason="mkfs.btrfs (btrfs-progs) "
                                 "is not installed; scripts/install.sh --with-test installs it")


def _driver(name: str, data_root: Path, **options: str) -> Any:
    factory = load_plugins().factory("storage", name)
    return factory(StorageContext(home=str(data_root / name), data_root=str(data_root),
                                  options=dict(options)))


def _tar(*members: tuple[str, bytes | None]) -> io.BytesIO:
    """A layer tar: (name, data) files, (name, None) directories."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.mtime = 1_600_000_000
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tf.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


def _fill(path: str, total: int) -> OSError | None:
    """Write ``total`` bytes to ``path``; the error that stopped it, if any."""
    chunk = b"\xa5" * MB
    try:
        with open(path, "wb") as f:
            for _ in range(total // MB):
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        return exc
    return None


# ---------------------------------------------------------------------------
# btrfs
# ---------------------------------------------------------------------------


@needs_btrfs
def test_btrfs_passes_the_conformance_suite(tmp_path: Path) -> None:
    with loop_filesystem(tmp_path, "btrfs", "2G") as mnt:
        tmp = mnt / "tmp"
        tmp.mkdir()
        env = {**os.environ, "TMPDIR": str(tmp), "SKIFF_STORAGE_DRIVERS": "btrfs",
               "PYTHONPATH": str(REPO)}
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--noconftest", "-q", "-rs",
             "tests/conformance/test_storage.py"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False,
        )
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-6000:]
        assert "btrfs is not supported" not in out, out[-3000:]
        assert " passed" in out


def test_btrfs_refuses_a_data_root_that_is_not_btrfs(tmp_path: Path) -> None:
    from skiff.plugins.storage._common import backing_fs

    if backing_fs(str(tmp_path)) == "btrfs":
        pytest.skip("the temporary directory is on btrfs")
    with pytest.raises(DriverNotSupported, match="not btrfs"):
        _driver("btrfs", tmp_path / "data")
    assert not (tmp_path / "data" / "btrfs").exists()


@needs_btrfs
def test_btrfs_layers_are_subvolumes_and_quota_limits_writes(tmp_path: Path) -> None:
    with loop_filesystem(tmp_path, "btrfs", "1G") as mnt:
        driver = _driver("btrfs", mnt / "data")
        home = mnt / "data" / "btrfs" / "subvolumes"
        driver.create("base", None)
        driver.apply_diff("base", None, _tar(("etc", None), ("etc/motd", b"hi\n")))
        driver.create_rw("rw", "base", {"size": "50M"})
        for layer in ("base", "rw"):
            assert os.stat(home / layer).st_ino == 256  # a subvolume's root
        root = driver.get("rw")
        assert Path(root, "etc/motd").read_bytes() == b"hi\n"
        err = _fill(os.path.join(root, "big"), 100 * MB)
        assert err is not None and err.errno in (errno.EDQUOT, errno.ENOSPC), err
        # the limit is the container's only: another layer writes freely
        driver.create_rw("free", "base", {})
        assert _fill(os.path.join(driver.get("free"), "big"), 100 * MB) is None
        assert dict(driver.status())["Quota Backend"] == "btrfs qgroups"
        with pytest.raises(ValueError, match="invalid size"):
            driver.create_rw("bad", "base", {"size": "lots"})
        assert not driver.exists("bad")
        for layer in ("free", "rw", "base"):
            driver.remove(layer)
        assert os.listdir(home) == []
        driver.cleanup()


# ---------------------------------------------------------------------------
# aufs (fuse-overlayfs here)
# ---------------------------------------------------------------------------


def _aufs(tmp_path: Path, **options: str) -> Any:
    try:
        return _driver("aufs", tmp_path / "data", **options)
    except DriverNotSupported as exc:
        pytest.skip(f"aufs is not supported here: {exc}")


def test_aufs_layout_keeps_docker_s_whiteout_files(tmp_path: Path) -> None:
    driver = _aufs(tmp_path)
    home = tmp_path / "data" / "aufs"
    try:
        driver.create("L1", None)
        driver.apply_diff("L1", None, _tar(("etc", None), ("etc/a", b"a"), ("opt", None),
                                           ("opt/x", b"x")))
        driver.create("L2", "L1")
        driver.apply_diff("L2", "L1", _tar(("etc", None), ("etc/.wh.a", b""), ("opt", None),
                                           ("opt/.wh..wh..opq", b""), ("opt/y", b"y")))
        driver.create_rw("rw", "L2", {})
        assert (home / "layers" / "L1").read_text() == ""
        assert (home / "layers" / "L2").read_text() == "L1\n"
        assert (home / "layers" / "rw").read_text() == "L2\nL1\n"
        assert (home / "diff" / "L2" / "etc" / ".wh.a").is_file()
        assert (home / "diff" / "L2" / "opt" / ".wh..wh..opq").is_file()
        status = dict(driver.status())
        if status["Mount Helper"] != "fuse-overlayfs":
            pytest.skip("the kernel has aufs; the rest checks the fuse-overlayfs path")
        (spec,) = driver.mounts("rw")
        assert spec.type == "bind" and spec.source == str(home / "mnt" / "rw")
        # a host mount while the container runs ...
        assert sm.mount_points_under(str(home / "mnt")) == [str(home / "mnt" / "rw")]
        listing = sm.listing(spec.source)["entries"]
        assert sorted(listing) == ["", "etc", "opt", "opt/y"]
        driver.mounts("rw")  # a restart of the same container takes no second reference
        # ... released when the container stops (its poststop hook)
        driver.release_container("rw")
        assert sm.mount_points_under(str(home)) == []
        assert driver.metadata("rw")["MountHelper"] == "fuse-overlayfs"
    finally:
        driver.cleanup()
    assert sm.mount_points_under(str(tmp_path)) == []


def test_aufs_loop_quota_limits_writes(tmp_path: Path) -> None:
    driver = _aufs(tmp_path)
    home = tmp_path / "data" / "aufs"
    try:
        driver.create("L1", None)
        driver.apply_diff("L1", None, _tar(("etc", None), ("etc/a", b"a")))
        driver.create_rw("rw", "L1", {"size": "50M"})
        meta = driver.metadata("rw")
        assert meta["QuotaBackend"] == "loop"
        root = driver.get("rw")
        assert Path(root, "etc/a").read_bytes() == b"a"
        err = _fill(os.path.join(root, "big"), 100 * MB)
        assert err is not None and err.errno in (errno.ENOSPC, errno.EDQUOT), err
        # the host's filesystem and other layers are unaffected
        driver.create_rw("free", "L1", {})
        free = driver.get("free")
        assert _fill(os.path.join(free, "ok"), 60 * MB) is None
        driver.put("free")
        driver.put("rw")
        # the daemon's shutdown unmounts the quota filesystem; it comes back on use
        driver.cleanup()
        assert sm.mount_points_under(str(home)) == []
        root = driver.get("rw")
        assert os.path.getsize(os.path.join(root, "big")) > 40 * MB
        driver.put("rw")
        driver.remove("rw")
        assert not (home / "quota" / "rw.img").exists()
        with pytest.raises(ValueError, match="at least"):
            driver.create_rw("tiny", "L1", {"size": "1M"})
        assert not driver.exists("tiny")
    finally:
        driver.cleanup()
    assert sm.mount_points_under(str(tmp_path)) == []


# ---------------------------------------------------------------------------
# overlay2's loop quota
# ---------------------------------------------------------------------------


def test_overlay2_loop_quota_limits_writes(tmp_path: Path) -> None:
    try:
        driver = _driver("overlay2", tmp_path / "data")
    except DriverNotSupported as exc:
        pytest.skip(f"overlay2 is not supported here: {exc}")
    home = tmp_path / "data" / "overlay2"
    try:
        driver.create("L1", None)
        driver.apply_diff("L1", None, _tar(("etc", None), ("etc/a", b"a")))
        driver.create_rw("rw", "L1", {"size": "50M"})
        assert driver.metadata("rw")["QuotaBackend"] == "loop"
        assert os.path.ismount(home / "rw")
        root = driver.get("rw")
        assert Path(root, "etc/a").read_bytes() == b"a"
        err = _fill(os.path.join(root, "big"), 100 * MB)
        assert err is not None and err.errno in (errno.ENOSPC, errno.EDQUOT), err
        driver.put("rw")
        # a restart: shutdown unmounts it, the next driver mounts it again
        driver.cleanup()
        assert sm.mount_points_under(str(home)) == []
        driver = _driver("overlay2", tmp_path / "data")
        root = driver.get("rw")
        assert os.path.getsize(os.path.join(root, "big")) > 40 * MB
        assert Path(root, "etc/a").read_bytes() == b"a"
        driver.put("rw")
        driver.remove("rw")
        assert not (home / ".quota" / "rw.img").exists() and not (home / "rw").exists()
        with pytest.raises(ValueError, match="invalid size"):
            driver.create_rw("bad", "L1", {"size": "huge"})
        assert not driver.exists("bad")
    finally:
        driver.cleanup()
    assert sm.mount_points_under(str(tmp_path)) == []
