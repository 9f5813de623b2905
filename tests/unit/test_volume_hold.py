"""A container's create holds its named volumes; a ``volume rm`` that slipped
in between the create finding a volume and holding it must not leave the
create mounting a volume that is gone (found by the chaos test: the create
answered 500 with the driver's KeyError)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from skiff.core.errors import Conflict
from skiff.core.volumes.store import VolumeStore
from skiff.plugins.volumes.local import LocalDriver


def _store(root: Path) -> VolumeStore:
    def factory(name: str) -> Any:
        return LocalDriver

    return VolumeStore(str(root), factory, {}, lambda *a, **k: None)


def test_hold_refuses_a_volume_removed_since_it_was_found(tmp_path: Path) -> None:
    store = _store(tmp_path)
    v, new = store.create("data", None)
    assert new
    store.remove("data")  # another client's rm, before the create holds it
    assert store.hold(v.name) is False
    assert "data" not in store._pending


def test_a_held_volume_cannot_be_removed(tmp_path: Path) -> None:
    store = _store(tmp_path)
    v, _ = store.create("data", None)
    assert store.hold(v.name) is True
    with pytest.raises(Conflict):
        store.remove("data")
    store.release_hold(v.name)
    store.remove("data")


def test_a_remove_cut_after_the_drivers_delete_is_finished_at_the_next_start(
        tmp_path: Path) -> None:
    """kill -9 between the local driver's rename and the record's unlink left a
    record without data: the next create that named it answered 500 with the
    driver's KeyError (found by the chaos test in CI, seed 2121)."""
    store = _store(tmp_path)
    store.create("data", None)
    store.create("kept", None)
    home = tmp_path / "volumes"
    (home / "data").rename(home / "_removing-data-4242")  # where the kill struck
    again = _store(tmp_path)
    again.load()
    assert sorted(again.volumes) == ["kept"]
    assert not (home / "_meta" / "data.json").exists()
    assert not (home / "_removing-data-4242").exists()
    _v, new = again.create("data", None)  # a create naming it makes it anew
    assert new and (home / "data" / "_data").is_dir()
