"""The devicemapper storage driver: refused without device-mapper, conformant with it.

This machine's kernel has no device-mapper, so here only the refusal runs;
the VM rig (scripts/vmrig-tests.sh: a Debian 6.1 kernel with dm-thin) runs
the rest, with the thin pool's loop files on its /scratch disk.
"""

from __future__ import annotations

import errno
import io
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import pytest

from skiff.core.hookspecs import DriverNotSupported, StorageContext
from skiff.core.plugins import load_plugins

REPO = Path(__file__).resolve().parents[2]
MB = 1 << 20
HAVE_DM = os.path.exists("/dev/mapper/control")
needs_dm = pytest.mark.skipif(not HAVE_DM, reason="this kernel has no device-mapper; "
                              "these run in the VM rig (scripts/vmrig-tests.sh)")


def _scratch() -> str:
    """Where loop backing files go: the rig's scratch disk when there is one."""
    return "/scratch" if os.path.isdir("/scratch") and os.access("/scratch", os.W_OK) \
        else tempfile.gettempdir()


def _driver(data_root: Path, **options: str) -> Any:
    factory = load_plugins().factory("storage", "devicemapper")
    return factory(StorageContext(home=str(data_root / "devicemapper"),
                                  data_root=str(data_root), options=dict(options)))


def _dm_names(prefix: str = "skiff-") -> list[str]:
    out = subprocess.run(["dmsetup", "ls"], capture_output=True, text=True,
                         check=False).stdout
    return [line.split()[0] for line in out.splitlines()
            if line.split() and line.split()[0].startswith(prefix)]


@pytest.mark.skipif(HAVE_DM, reason="device-mapper is present")
def test_devicemapper_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    with pytest.raises(DriverNotSupported, match="device-mapper"):
        _driver(tmp_path / "data")


@needs_dm
@pytest.mark.timeout(2400)  # the rig emulates the CPU (TCG): ~14 min measured
def test_devicemapper_passes_the_conformance_suite() -> None:
    before = _dm_names()
    with tempfile.TemporaryDirectory(prefix="skiff-dm-", dir=_scratch()) as tmp:
        env = {**os.environ, "TMPDIR": tmp, "SKIFF_STORAGE_DRIVERS": "devicemapper",
               "SKIFF_STORAGE_EXAMPLES": os.environ.get("SKIFF_STORAGE_EXAMPLES", "3"),
               "PYTHONPATH": str(REPO)}
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--noconftest",
             "-q", "-rs", "tests/conformance/test_storage.py"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=2300, check=False,
        )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-8000:]
    assert "devicemapper is not supported" not in out, out[-3000:]
    assert _dm_names() == before, "thin devices or pools were left behind"


@needs_dm
@pytest.mark.timeout(900)
def test_devicemapper_size_limits_writes(tmp_path: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="skiff-dm-", dir=_scratch()) as tmp:
        driver = _driver(Path(tmp) / "data", basesize="64M", fs="ext4")
        try:
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as tf:
                info = tarfile.TarInfo("hello")
                info.size = 2
                tf.addfile(info, io.BytesIO(b"hi"))
            driver.create("base", None)
            driver.apply_diff("base", None, io.BytesIO(buf.getvalue()))
            with pytest.raises(ValueError, match="at least"):
                driver.create_rw("small", "base", {"size": "32M"})
            assert not driver.exists("small")
            driver.create_rw("rw", "base", {})
            driver.create_rw("big", "base", {"size": "256M"})
            status = dict(driver.status())
            assert status["Backing Filesystem"] == "ext4"
            (spec,) = driver.mounts("rw")
            assert spec.type == "ext4" and spec.source.startswith("/dev/mapper/")
            root = driver.get("rw")
            try:
                assert Path(root, "hello").read_bytes() == b"hi"
                err = None
                try:
                    with open(os.path.join(root, "fill"), "wb") as f:
                        for _ in range(100):
                            f.write(b"\x5a" * MB)
                        f.flush()
                        os.fsync(f.fileno())
                except OSError as exc:
                    err = exc
                assert err is not None and err.errno == errno.ENOSPC, err
            finally:
                driver.put("rw")
            root = driver.get("big")
            try:
                with open(os.path.join(root, "fill"), "wb") as f:
                    for _ in range(100):
                        f.write(b"\x5a" * MB)
            finally:
                driver.put("big")
            for layer in ("big", "rw", "base"):
                driver.remove(layer)
        finally:
            driver.cleanup()
