"""A storage driver from another package (tests/thirdparty/skiff-testfs), chosen by daemon.json;
and the plugin contract version such a package declares, checked as the daemon starts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from skiff.core.hookspecs import CONTRACT_VERSION
from skiff.core.plugins import load_plugins
from tests.daemon import Daemon, daemon_config, running_daemon


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
        d.settled()  # rm answers before the container's layers are freed
        assert len(list(trees.iterdir())) == 1  # only the image layer; the container is gone


def _install_plugin(site: Path, monkeypatch: pytest.MonkeyPatch, contract: str | None) -> None:
    """Install, as pip would (a module and its dist-info with an entry point),
    a package ``skiff-nextfs`` whose storage driver ``nextfs`` declares ``contract``
    (None: declares nothing); the daemon finds it through ``PYTHONPATH``."""
    site.mkdir(parents=True)
    (site / "skiff_nextfs.py").write_text(
        '"""copyfs under another name, from a package that declares its contract."""\n'
        "from skiff.core.hookspecs import hookimpl\n"
        "from skiff_testfs import CopyFs\n"
        + (f"SKIFF_CONTRACT = {contract!r}\n" if contract else "")
        + "class NextFs(CopyFs):\n"
        "    name = 'nextfs'\n"
        "@hookimpl\n"
        "def skiff_storage_drivers():\n"
        "    return {'nextfs': NextFs}\n"
    )
    dist = site / "skiff_nextfs-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: skiff-nextfs\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text("[skiff.storage]\nnextfs = skiff_nextfs\n")
    path = [str(site), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(path))


def _next_major() -> str:
    return f"{int(CONTRACT_VERSION.split('.')[0]) + 1}.0"


def _newer_minor() -> str:
    major, minor = CONTRACT_VERSION.split(".")
    return f"{major}.{int(minor) + 1}"


def _refused_at_start(tmp_path: Path) -> str:
    base = tmp_path / "d"
    base.mkdir()
    d = Daemon(base, daemon_config(base))
    try:
        with pytest.raises(RuntimeError, match="skiffd exited with 1"):
            d.start()
    finally:
        d.stop()
    return d.logs()


def test_a_plugin_for_another_major_contract_stops_the_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _install_plugin(tmp_path / "site", monkeypatch, _next_major())
    logs = _refused_at_start(tmp_path)
    assert "skiffd: plugin skiff.storage entry point 'nextfs' (skiff_nextfs)" in logs
    assert f"written for skiff plugin contract {_next_major()}" in logs
    assert f"speaks contract {CONTRACT_VERSION}" in logs
    assert "pip uninstall skiff-nextfs" in logs


def test_a_plugin_for_a_newer_minor_contract_is_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _install_plugin(tmp_path / "site", monkeypatch, _newer_minor())
    with running_daemon(tmp_path / "d", **{"storage-driver": "nextfs"}) as d:
        info = json.loads(d.docker("info", "--format", "{{json .}}", check=True).stdout)
        assert info["Driver"] == "nextfs"
        raw = json.loads(d.skiff("info", "--format", "json").stdout)
        assert "nextfs" in raw["Plugins"]["Storage"]


def test_a_plugin_that_declares_no_contract_stops_the_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _install_plugin(tmp_path / "site", monkeypatch, None)
    logs = _refused_at_start(tmp_path)
    assert "skiffd: plugin skiff.storage entry point 'nextfs' (skiff_nextfs)" in logs
    assert "declares no SKIFF_CONTRACT" in logs
    assert f'SKIFF_CONTRACT = "{CONTRACT_VERSION}"' in logs
    assert "pip uninstall skiff-nextfs" in logs
