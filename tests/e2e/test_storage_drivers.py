"""btrfs, aufs (and overlay2's quota) under a real skiffd, driven by the stock docker CLI.

For each driver: a container runs, is committed, a file deleted in a second
commit stays deleted in the image (its whiteout survives commit and
save/load), and ``--storage-opt size=50m`` stops a 100 MB write inside the
container.  btrfs gets a loop-mounted btrfs data-root; overlay2 runs with a
daemon-wide ``overlay2.size`` default.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon import Daemon, running_daemon
from tests.loopfs import have_mkfs, loop_filesystem


@pytest.fixture(scope="module", params=["aufs", "btrfs", "overlay2"])
def driver_daemon(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[Daemon]:
    name = request.param
    base: Path = tmp_path_factory.mktemp(f"skiffd-{name}")
    with contextlib.ExitStack() as stack:
        cfg: dict[str, object] = {"storage-driver": name}
        if name == "btrfs":
            if not have_mkfs("btrfs"):
                pytest.skip("mkfs.btrfs (btrfs-progs) is not installed")
            mnt = stack.enter_context(loop_filesystem(base, "btrfs", "2G"))
            cfg["data-root"] = str(mnt / "data")
        if name == "overlay2":
            # a daemon-wide default quota: every container gets one
            cfg["storage-opts"] = ["overlay2.size=200m"]
        d = stack.enter_context(running_daemon(base / "daemon", **cfg))
        d.skiff("image", "bootstrap", "busybox")
        yield d


def test_info_names_driver_and_helper(driver_daemon: Daemon) -> None:
    info = json.loads(driver_daemon.docker("info", "--format", "{{json .}}", check=True).stdout)
    name = driver_daemon.config["storage-driver"]
    assert info["Driver"] == name
    status = dict(info["DriverStatus"])
    if name == "aufs":
        assert status["Mount Helper"] in ("aufs", "fuse-overlayfs")
    elif name == "btrfs":
        assert status["Backing Filesystem"] == "btrfs"
    assert "Quota Backend" in status


def test_whiteout_survives_commit_and_save_load(driver_daemon: Daemon, tmp_path: Path) -> None:
    d = driver_daemon
    tag = driver_daemon.config["storage-driver"]
    d.docker("run", "--name", f"wh1-{tag}", "busybox", "sh", "-c",
             "echo one > /etc/skiff-a && echo two > /etc/skiff-b", check=True)
    d.docker("commit", f"wh1-{tag}", f"wh:one-{tag}", check=True)
    d.docker("run", "--name", f"wh2-{tag}", f"wh:one-{tag}", "rm", "/etc/skiff-a", check=True)
    diff = d.docker("diff", f"wh2-{tag}", check=True).stdout.decode()
    assert "D /etc/skiff-a" in diff
    d.docker("commit", f"wh2-{tag}", f"wh:two-{tag}", check=True)
    probe = "test ! -e /etc/skiff-a && cat /etc/skiff-b"
    out = d.docker("run", "--rm", f"wh:two-{tag}", "sh", "-c", probe, check=True)
    assert out.stdout == b"two\n"
    archive = tmp_path / "wh.tar"
    d.docker("save", "-o", str(archive), f"wh:two-{tag}", check=True)
    d.docker("rm", f"wh1-{tag}", f"wh2-{tag}", check=True)
    d.docker("rmi", f"wh:two-{tag}", f"wh:one-{tag}", check=True)
    d.docker("load", "-i", str(archive), check=True)
    out = d.docker("run", "--rm", f"wh:two-{tag}", "sh", "-c", probe, check=True)
    assert out.stdout == b"two\n"
    d.docker("rmi", f"wh:two-{tag}", check=True)


def test_storage_opt_size_limits_writes_in_the_container(driver_daemon: Daemon) -> None:
    d = driver_daemon
    res = d.docker("run", "--rm", "--storage-opt", "size=50m", "busybox", "sh", "-c",
                   "dd if=/dev/zero of=/big bs=1M count=100 && sync")
    assert res.returncode != 0, res.stdout
    err = res.stderr.decode().lower()
    assert "space" in err or "quota" in err, err
    # the host and other containers are unaffected
    ok = d.docker("run", "--rm", "busybox", "sh", "-c",
                  "dd if=/dev/zero of=/big bs=1M count=60 2>/dev/null && echo ok", check=True)
    assert ok.stdout == b"ok\n"
