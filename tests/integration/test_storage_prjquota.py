"""overlay2's project-quota backend (XFS and ext4 ``prjquota``): a container's
writes stop at its ``size``, other containers are unaffected.

This machine's kernel has neither CONFIG_QUOTA nor XFS quota, so a ``prjquota``
mount fails here and these tests skip (the loop backend is what overlay2 uses
here, tested in tests/e2e/test_storage_drivers.py); the VM rig
(scripts/vmrig-tests.sh, Debian's 6.1 kernel) runs them.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from skiff.core.hookspecs import MountSpec, RuntimeContext, StorageContext
from skiff.core.plugins import load_plugins
from skiff.plugins.isolation.runtime import ForkServerRuntime
from skiff.plugins.storage._quota import ProjectQuota, project_id
from tests.integration.runtimekit import make_spec, run_container
from tests.rootfs import make_busybox_rootfs

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (loop mounts)")

MKFS = {
    "xfs": ["mkfs.xfs", "-q", "-f"],
    "ext4": ["mkfs.ext4", "-q", "-F", "-O", "quota,project"],
}


def _scratch() -> str:
    """Where loop backing files go: the rig's scratch disk when there is one."""
    return "/scratch" if os.path.isdir("/scratch") and os.access("/scratch", os.W_OK) \
        else tempfile.gettempdir()


@contextlib.contextmanager
def prjquota_fs(fstype: str) -> Iterator[Path]:
    """A loop-backed ``fstype`` mounted with ``prjquota``; skips where the kernel
    cannot mount one."""
    if shutil.which(MKFS[fstype][0]) is None:
        pytest.skip(f"{MKFS[fstype][0]} is not installed")
    base = Path(tempfile.mkdtemp(prefix="skiff-prjq-", dir=_scratch()))
    image, point = base / "fs.img", base / "mnt"
    point.mkdir()
    loop = ""
    mounted = False
    try:
        subprocess.run(["truncate", "-s", "600M", str(image)], check=True)
        subprocess.run([*MKFS[fstype], str(image)], check=True, capture_output=True)
        loop = subprocess.run(["losetup", "--find", "--show", str(image)], check=True,
                              capture_output=True, text=True).stdout.strip()
        res = subprocess.run(["mount", "-t", fstype, "-o", "prjquota", loop, str(point)],
                             capture_output=True, text=True, check=False)
        if res.returncode != 0:
            pytest.skip(f"this kernel cannot mount {fstype} with prjquota "
                        f"({res.stderr.strip()}); runs in the VM rig")
        mounted = True
        yield point
    finally:
        if mounted:
            subprocess.run(["umount", str(point)], check=False, capture_output=True)
            if os.path.ismount(point):
                subprocess.run(["umount", "-l", str(point)], check=False, capture_output=True)
        if loop:
            subprocess.run(["losetup", "-d", loop], check=False, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def _busybox_tar(tmp: Path) -> bytes:
    root = make_busybox_rootfs(tmp / "rootfs")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for entry in sorted(os.listdir(root)):
            tar.add(root / entry, arcname=entry)
    return buf.getvalue()


def _run(rt: ForkServerRuntime, mounts: list[MountSpec], bundle: Path, script: str) -> str:
    spec = make_spec(Path("/nonexistent"), bundle, ["sh", "-c", script],
                     id=secrets.token_hex(32), rootfs_mounts=mounts)
    res = trio.run(run_container, rt, spec, None)
    return res.out + res.stderr.decode(errors="replace")


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForkServerRuntime]:
    rt = ForkServerRuntime(
        RuntimeContext(exec_root=str(tmp_path_factory.mktemp("exec")), options={}))
    trio.run(rt.start)
    yield rt
    trio.run(rt.stop)


@pytest.mark.timeout(900)  # the rig emulates the CPU (TCG)
@pytest.mark.parametrize("fstype", ["xfs", "ext4"])
def test_project_quota_limits_a_container(fstype: str, tmp_path: Path,
                                          runtime: ForkServerRuntime) -> None:
    with prjquota_fs(fstype) as mnt:
        data = mnt / "data"
        factory = load_plugins().factory("storage", "overlay2")
        driver: Any = factory(StorageContext(home=str(data / "overlay2"),
                                             data_root=str(data), options={}))
        backend = f"{fstype} project quota"
        try:
            assert dict(driver.status())["Quota Backend"] == backend
            driver.create("base", None)
            driver.apply_diff("base", None, io.BytesIO(_busybox_tar(tmp_path)))
            full, other, free = (secrets.token_hex(32) for _ in range(3))
            driver.create_rw(full, "base", {"size": "50m"})
            driver.create_rw(other, "base", {"size": "50m"})
            driver.create_rw(free, "base", {})
            assert driver.metadata(full)["QuotaBackend"] == backend
            assert "QuotaBackend" not in driver.metadata(free)
            upper = Path(driver.metadata(full)["UpperDir"])
            assert project_id(str(upper)) > 0
            assert project_id(str(upper)) != project_id(driver.metadata(other)["UpperDir"])

            out = _run(runtime, driver.mounts(full), tmp_path / "b1",
                       "dd if=/dev/zero of=/big bs=1M count=100 2>&1; echo rc=$?")
            assert "rc=1" in out, out
            # XFS reports an exceeded project quota as ENOSPC on purpose; ext4 as EDQUOT
            expected = {"xfs": "No space left on device", "ext4": "Disk quota exceeded"}
            assert expected[fstype] in out, out
            # the other container, limited the same way, is not charged for it
            out = _run(runtime, driver.mounts(other), tmp_path / "b2",
                       "dd if=/dev/zero of=/some bs=1M count=30 2>&1 && echo ok")
            assert out.rstrip().endswith("ok"), out
            # and an unlimited one writes past 50 MB
            out = _run(runtime, driver.mounts(free), tmp_path / "b3",
                       "dd if=/dev/zero of=/big bs=1M count=100 2>&1 && echo ok")
            assert out.rstrip().endswith("ok"), out
            # the same driver started again keeps allotting fresh project IDs
            again: Any = factory(StorageContext(home=str(data / "overlay2"),
                                                data_root=str(data), options={}))
            later = secrets.token_hex(32)
            again.create_rw(later, "base", {"size": "20m"})
            ids = {project_id(driver.metadata(x)["UpperDir"]) for x in (full, other, later)}
            assert len(ids) == 3
            for layer in (later, free, other, full, "base"):
                driver.remove(layer)
        finally:
            driver.cleanup()


def test_no_project_quota_without_prjquota(tmp_path: Path) -> None:
    """A filesystem not mounted with prjquota (here: wherever the temp dir is)
    has no project quota; overlay2 falls back to the loop backend."""
    assert ProjectQuota.probe(str(tmp_path)) is None
    factory = load_plugins().factory("storage", "overlay2")
    driver: Any = factory(StorageContext(home=str(tmp_path / "overlay2"),
                                         data_root=str(tmp_path), options={}))
    try:
        assert dict(driver.status())["Quota Backend"] == "loop"
    finally:
        driver.cleanup()
