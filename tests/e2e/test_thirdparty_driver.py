"""A storage driver from another package (tests/thirdparty/skiff-testfs), chosen by daemon.json."""

from __future__ import annotations

import json
from pathlib import Path

from skiff.core.plugins import load_plugins
from tests.daemon import running_daemon


def test_copyfs_is_found_through_its_entry_point() -> None:
    plugins = load_plugins()
    assert "copyfs" in plugins.drivers["storage"]
    assert any(m.startswith("copyfs=") for m in plugins.modules["storage"])


def test_container_runs_on_a_third_party_driver(tmp_path: Path) -> None:
    with running_daemon(tmp_path / "d", **{"storage-driver": "copyfs"}) as d:
        d.skiff("image", "bootstrap", "busybox")
        info = json.loads(d.docker("info", "--format", "{{json .}}", check=True).stdout)
        assert info["Driver"] == "copyfs"
        raw = json.loads(d.skiff("info", "--format", "json").stdout)  # the API's own view
        assert "copyfs" in raw["Plugins"]["Storage"]
        res = d.docker("run", "--rm", "busybox", "sh", "-c", "echo third > /f; cat /f",
                       check=True)
        assert res.stdout == b"third\n"
        trees = d.data_root / "copyfs" / "trees"
        assert len(list(trees.iterdir())) == 1  # only the image layer; the container is gone
