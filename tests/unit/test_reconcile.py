"""Which mounts start-up reconciliation detaches (core/reconcile.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from skiff.core import reconcile
from skiff.core.containers.model import Container


def test_stray_mounts_are_below_the_roots_deepest_first_and_spare_the_storage_home() -> None:
    mounts = ["/", "/var/lib/skiff", "/var/lib/skiff/overlay2",
              "/var/lib/skiff/overlay2/abc", "/var/lib/skiff/overlay2/abc/merged",
              "/var/lib/skiff/tmp/cp-1", "/var/lib/skiff/volumes/v/_data",
              "/var/lib/skiff/volumes/v/_data/sub", "/run/skiff/containers/c/rootfs",
              "/var/lib/skiffother/x", "/run/skiff"]
    found = reconcile.stray_mounts(mounts, ["/var/lib/skiff", "/run/skiff"],
                                   keep=["/var/lib/skiff/overlay2"])
    # the driver's home (and what is below it: the driver's business) and the
    # roots themselves stay; a sibling with the same prefix is not below a root
    assert found == ["/var/lib/skiff/volumes/v/_data/sub", "/var/lib/skiff/volumes/v/_data",
                     "/run/skiff/containers/c/rootfs", "/var/lib/skiff/tmp/cp-1"]


def test_interrupted_creates_are_directories_without_a_record(tmp_path: Path) -> None:
    for cid, files in (("a" * 64, ["config.v2.json"]), ("b" * 64, ["hostconfig.json"]),
                       ("c" * 64, []), ("d" * 64, [])):
        (tmp_path / cid).mkdir()
        for name in files:
            (tmp_path / cid / name).write_text("{}")
    gone = reconcile.interrupted_creates(str(tmp_path), known={"d" * 64})
    assert sorted(gone) == ["b" * 64, "c" * 64]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a" * 64, "d" * 64]


def test_clear_dir_keeps_what_it_is_told(tmp_path: Path) -> None:
    (tmp_path / "keep").mkdir()
    (tmp_path / "pull-1").mkdir()
    (tmp_path / "pull-1" / "blob").write_bytes(b"x")
    (tmp_path / "spool").write_bytes(b"y")
    gone = reconcile.clear_dir(str(tmp_path), keep=lambda n: n == "keep")
    assert sorted(Path(p).name for p in gone) == ["pull-1", "spool"]
    assert [p.name for p in tmp_path.iterdir()] == ["keep"]
    assert reconcile.clear_dir(str(tmp_path / "absent")) == []


def _new_container(root: Path) -> Container:
    root.mkdir()
    return Container(id=root.name, name="c", created="2026-12-07T00:00:00Z",
                     image_id="sha256:" + "0" * 64, config={"Hostname": "h"},
                     host_config={"NetworkMode": "none"}, path="true", args=[],
                     driver="overlay2", root=str(root))


def test_a_create_cut_before_its_record_is_absent_after_reconciliation(tmp_path: Path) -> None:
    # the host config cannot be written (a directory in its place): the create
    # stops there, and the record, written last, is not there to keep it
    c = _new_container(tmp_path / ("e" * 64))
    (tmp_path / c.id / "hostconfig.json" / "x").mkdir(parents=True)
    with pytest.raises(OSError):
        c.save_new()
    assert not (tmp_path / c.id / "config.v2.json").exists()
    assert reconcile.interrupted_creates(str(tmp_path), known=set()) == [c.id]
    ok = _new_container(tmp_path / ("f" * 64))
    ok.save_new()
    assert Container.load(ok.root).host_config == {"NetworkMode": "none"}
    assert reconcile.interrupted_creates(str(tmp_path), known=set()) == []
