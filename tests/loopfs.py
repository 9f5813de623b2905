"""A loop-backed filesystem for tests that need one (btrfs data-roots, quotas).

``loop_filesystem(base, "btrfs")`` makes a sparse file under ``base``, formats
it, attaches it to a loop device, mounts it under ``base`` and yields the
mount point; on the way out, even after a failure, it unmounts everything
under the mount point, detaches the loop device and deletes the file.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

MKFS = {
    "btrfs": ["mkfs.btrfs", "-q", "-f"],
    "ext4": ["mkfs.ext4", "-q", "-F"],
    "xfs": ["mkfs.xfs", "-q", "-f"],
}


def have_mkfs(fstype: str) -> bool:
    return shutil.which(MKFS[fstype][0]) is not None


def _mounts_under(path: str) -> list[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p == path or p.startswith(path + "/")]


@contextlib.contextmanager
def loop_filesystem(base: Path, fstype: str, size: str = "1G",
                    options: str = "") -> Iterator[Path]:
    image = base / f"{fstype}.img"
    point = base / f"{fstype}-mnt"
    point.mkdir(parents=True)
    loop = ""
    try:
        subprocess.run(["truncate", "-s", size, str(image)], check=True)
        subprocess.run([*MKFS[fstype], str(image)], check=True, capture_output=True)
        loop = subprocess.run(["losetup", "--find", "--show", str(image)], check=True,
                              capture_output=True, text=True).stdout.strip()
        cmd = ["mount", "-t", fstype, *(["-o", options] if options else []), loop, str(point)]
        subprocess.run(cmd, check=True, capture_output=True)
        yield point
    finally:
        for p in reversed(_mounts_under(str(point))):
            subprocess.run(["umount", "-l", p], check=False, capture_output=True)
        if loop:
            subprocess.run(["losetup", "-d", loop], check=False, capture_output=True)
        shutil.rmtree(point, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            image.unlink()


@contextlib.contextmanager
def attached_loop(base: Path, size: int = 16 * 1024 * 1024) -> Iterator[tuple[str, str]]:
    """(``/dev/loopN``, ``"MAJ:MIN"``) of a loop device over a sparse file under
    ``base``; detached on the way out.  Skips the test when none can be attached."""
    import os

    import pytest

    backing = base / "loop-disk.img"
    with open(backing, "wb") as f:
        f.truncate(size)
    res = subprocess.run(["losetup", "--find", "--show", str(backing)],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        pytest.skip(f"cannot attach a loop device: {res.stderr.strip()}")
    dev = res.stdout.strip()
    try:
        rdev = os.stat(dev).st_rdev
        yield dev, f"{os.major(rdev)}:{os.minor(rdev)}"
    finally:
        subprocess.run(["losetup", "--detach", dev], check=False)
