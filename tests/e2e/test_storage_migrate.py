"""Switching storage drivers: the data-root's driver is remembered, foreign layers
are refused, and ``skiff storage migrate`` moves images (same IDs) and stopped
containers' changes to another driver.

Each test drives a real skiffd (tests.daemon) with the stock docker CLI and runs
the migration as an operator would: skiffd stopped, ``skiff storage migrate``
pointed at its daemon.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon import SKIFF, SKIFFD, Daemon, daemon_config, running_daemon
from tests.loopfs import have_mkfs, loop_filesystem

PROBE = "test ! -e /etc/skiff-a && cat /etc/skiff-b"


def _migrate(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    cfg = d.base / "daemon.json"
    cfg.write_text(json.dumps(d.config, indent=2))
    return subprocess.run([*SKIFF, "storage", "migrate", "--config", str(cfg), *args],
                          capture_output=True, text=True, timeout=300, env=d.env())


def _start_fails(base: Path, config: dict[str, object]) -> str:
    """Start skiffd with ``config``; it must refuse. Returns what it printed."""
    cfg = base / "refused.json"
    cfg.write_text(json.dumps(config))
    res = subprocess.run([*SKIFFD, "--config-file", str(cfg)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 1, res.stdout + res.stderr
    return res.stderr


def _image_ids(d: Daemon) -> dict[str, str]:
    out = d.docker("images", "--no-trunc", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}",
                   check=True).stdout.decode()
    return dict(line.split() for line in out.splitlines())


def _populate(d: Daemon) -> dict[str, str]:
    """busybox, a two-step committed image (a whiteout in the second) and a
    stopped container with changes of its own; returns the image IDs."""
    d.docker("run", "--name", "mig1", "busybox", "sh", "-c",
             "echo one > /etc/skiff-a && echo two > /etc/skiff-b", check=True)
    d.docker("commit", "mig1", "wh:one", check=True)
    d.docker("run", "--name", "mig2", "wh:one", "rm", "/etc/skiff-a", check=True)
    d.docker("commit", "mig2", "wh:two", check=True)
    d.docker("rm", "mig1", "mig2", check=True)
    d.docker("run", "--name", "kept", "wh:one", "sh", "-c",
             "rm -f /etc/skiff-b; mkdir -p /root && echo kept >> /root/kept && cat /root/kept",
             check=True)
    ids = _image_ids(d)
    assert {"busybox:latest", "wh:one", "wh:two"} <= set(ids)
    return ids


def _check_moved(d: Daemon, ids: dict[str, str], driver: str) -> None:
    info = json.loads(d.docker("info", "--format", "{{json .}}", check=True).stdout)
    assert info["Driver"] == driver
    assert _image_ids(d) == ids
    out = d.docker("run", "--rm", "wh:two", "sh", "-c", PROBE, check=True)
    assert out.stdout == b"two\n"
    # the stopped container kept its own changes, deletion included
    diff = d.docker("diff", "kept", check=True).stdout.decode().split("\n")
    assert "A /root/kept" in diff and "D /etc/skiff-b" in diff
    out = d.docker("start", "-a", "kept", check=True)
    assert out.stdout == b"kept\nkept\n"  # the file written before the migration is there
    inspect = json.loads(d.docker("inspect", "kept", check=True).stdout)[0]
    assert inspect["GraphDriver"]["Name"] == driver
    out = d.docker("run", "--rm", "busybox", "echo", "fine", check=True)
    assert out.stdout == b"fine\n"


@pytest.fixture
def overlay_daemon(tmp_path: Path) -> Iterator[Daemon]:
    with running_daemon(tmp_path / "d", **{"storage-driver": "overlay2"}) as d:
        d.skiff("image", "bootstrap", "busybox")
        yield d


def test_migrate_overlay2_to_vfs_keeps_image_ids(overlay_daemon: Daemon) -> None:
    d = overlay_daemon
    ids = _populate(d)
    data = d.data_root
    assert (data / "storage-driver").read_text().strip() == "overlay2"

    # refused while the daemon runs
    res = _migrate(d, "--to", "vfs")
    assert res.returncode == 1
    assert "skiffd is running" in res.stderr

    d.stop()
    # no storage-driver in daemon.json: the remembered choice must follow the migration
    d.config.pop("storage-driver")
    res = _migrate(d, "--to", "vfs")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "from overlay2 to vfs" in res.stdout
    assert (data / "storage-driver").read_text().strip() == "vfs"
    assert not (data / "overlay2").exists() and not (data / "image" / "overlay2").exists()
    assert not (data / "storage-migration.json").exists()

    # daemon.json naming the old driver is refused: naming both, pointing to migrate
    refused = _start_fails(d.base, {**d.config, "storage-driver": "overlay2"})
    assert "'overlay2'" in refused and "vfs" in refused
    assert "skiff storage migrate --to overlay2" in refused

    d.start()
    _check_moved(d, ids, "vfs")


def test_prior_driver_is_used_and_several_are_refused(tmp_path: Path) -> None:
    base = tmp_path / "d"
    with running_daemon(base, **{"storage-driver": "vfs"}) as d:
        d.skiff("image", "bootstrap", "busybox")
        image = _image_ids(d)["busybox:latest"]
        d.stop()
        # no storage-driver and no remembered choice: the layers decide
        (d.data_root / "storage-driver").unlink()
        d.config.pop("storage-driver")
        d.start()
        info = json.loads(d.docker("info", "--format", "{{json .}}", check=True).stdout)
        assert info["Driver"] == "vfs"
        assert _image_ids(d)["busybox:latest"] == image
        assert "storage.prior_driver" in d.logs()
        d.stop()
        # layers of a second driver: which one is meant is not guessed
        (d.data_root / "storage-driver").unlink()
        stray = d.data_root / "image" / "overlay2" / "layerdb" / "sha256" / ("0" * 64)
        stray.mkdir(parents=True)
        refused = _start_fails(d.base, d.config)
        assert "several storage drivers" in refused
        assert "overlay2, vfs" in refused and "storage-driver" in refused
        # naming one of them is enough
        d.config["storage-driver"] = "vfs"
        stray.rmdir()
        d.start()


def test_migrate_refuses_without_layers_and_with_a_bad_target(tmp_path: Path) -> None:
    base = tmp_path / "x"
    base.mkdir()
    cfg = daemon_config(base)
    os.makedirs(cfg["data-root"])
    path = base / "daemon.json"
    path.write_text(json.dumps(cfg))
    res = subprocess.run([*SKIFF, "storage", "migrate", "--to", "vfs", "--config", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "holds no layers" in res.stderr
    res = subprocess.run([*SKIFF, "storage", "migrate", "--to", "nosuch", "--config",
                          str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "'nosuch' is not installed" in res.stderr


def test_migrate_overlay2_to_btrfs(tmp_path: Path) -> None:
    if not have_mkfs("btrfs"):
        pytest.skip("mkfs.btrfs (btrfs-progs) is not installed")
    with contextlib.ExitStack() as stack:
        mnt = stack.enter_context(loop_filesystem(tmp_path, "btrfs", "2G"))
        d = stack.enter_context(running_daemon(
            tmp_path / "d", **{"storage-driver": "overlay2", "data-root": str(mnt / "data")}))
        d.skiff("image", "bootstrap", "busybox")
        ids = _populate(d)
        d.stop()
        d.config["storage-driver"] = "btrfs"
        res = _migrate(d, "--to", "btrfs", "--keep-old")
        assert res.returncode == 0, res.stdout + res.stderr
        assert "kept" in res.stdout
        assert (d.data_root / "image" / "overlay2" / "layerdb").is_dir()  # --keep-old
        d.start()
        _check_moved(d, ids, "btrfs")


def test_failed_and_interrupted_migrations_leave_the_old_driver(overlay_daemon: Daemon) -> None:
    d = overlay_daemon
    ids = _image_ids(d)
    # vfs has no quota: a container with a size limit cannot move there
    d.docker("create", "--name", "quota", "--storage-opt", "size=50m", "busybox", "true",
             check=True)
    d.stop()
    res = _migrate(d, "--to", "vfs")
    assert res.returncode == 1
    assert "refuses its storage options" in res.stderr
    data = d.data_root
    assert not (data / "storage-migration.json").exists()
    assert not (data / "image" / "vfs").exists() and not (data / "vfs").exists()
    d.start()
    assert _image_ids(d) == ids
    d.docker("rm", "quota", check=True)
    d.stop()

    # a migration killed half-way: its marker and part of the new driver's data
    (data / "storage-migration.json").write_text('{"from": "overlay2", "to": "vfs"}')
    half = data / "image" / "vfs" / "layerdb" / "sha256" / ("1" * 64)
    half.mkdir(parents=True)
    (half / "cache-id").write_text("2" * 64)
    (data / "vfs" / "dir" / ("2" * 64)).mkdir(parents=True)
    refused = _start_fails(d.base, {**d.config, "storage-driver": "vfs"})
    assert "interrupted" in refused and "skiff storage migrate --to vfs" in refused
    d.config.pop("storage-driver")
    d.start()  # the remembered overlay2 is still whole
    assert _image_ids(d) == ids
    assert "storage.migration_unfinished" in d.logs()
    d.stop()
    res = _migrate(d, "--to", "vfs")  # again: redone from scratch
    assert res.returncode == 0, res.stdout + res.stderr
    assert not (data / "vfs" / "dir" / ("2" * 64)).exists()
    d.start()
    info = json.loads(d.docker("info", "--format", "{{json .}}", check=True).stdout)
    assert info["Driver"] == "vfs"
    assert _image_ids(d) == ids
