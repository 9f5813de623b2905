"""The plugin contract version: declared by each plugin module, checked by the loader."""

from __future__ import annotations

import types
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from skiff.core import hookspecs
from skiff.core.plugins import PluginLoadError, check_contract, load_plugins


def _plugin(**attrs: object) -> types.ModuleType:
    module = types.ModuleType("someone_elses_driver")
    module.__dict__.update(attrs)
    return module


def test_every_installed_plugin_declares_the_contract_it_speaks() -> None:
    major = hookspecs.CONTRACT_VERSION.split(".")[0]
    for group in hookspecs.ENTRY_POINT_GROUPS.values():
        for ep in entry_points(group=group):
            declared = getattr(ep.load(), hookspecs.CONTRACT_ATTRIBUTE, None)
            assert declared is not None, f"{ep.value} declares no SKIFF_CONTRACT"
            assert declared.split(".")[0] == major, f"{ep.value} declares {declared}"


def test_the_same_major_is_accepted_whatever_the_minor() -> None:
    major = hookspecs.CONTRACT_VERSION.split(".")[0]
    for minor in ("0", "7"):
        check_contract(_plugin(SKIFF_CONTRACT=f"{major}.{minor}"), "x", "remove it")


def test_another_major_is_refused_with_what_and_what_to_do() -> None:
    other = f"{int(hookspecs.CONTRACT_VERSION.split('.')[0]) + 1}.0"
    with pytest.raises(PluginLoadError) as err:
        check_contract(_plugin(SKIFF_CONTRACT=other), "skiff.storage entry point 'zfs' (zfsx)",
                       "uninstall it (pip uninstall skiff-zfs)")
    msg = str(err.value)
    assert "skiff.storage entry point 'zfs' (zfsx)" in msg
    assert f"written for skiff plugin contract {other}" in msg
    assert f"speaks contract {hookspecs.CONTRACT_VERSION}" in msg
    assert "pip uninstall skiff-zfs" in msg


@pytest.mark.parametrize("bad", ["1", "one.zero", 1.0, "1.0.0"])
def test_a_malformed_declaration_is_refused(bad: object) -> None:
    with pytest.raises(PluginLoadError, match="not a contract version"):
        check_contract(_plugin(SKIFF_CONTRACT=bad), "x", "remove it")


def test_an_undeclared_plugin_predates_versions_and_is_refused_with_the_fix() -> None:
    with pytest.raises(PluginLoadError) as err:
        check_contract(_plugin(), "old-driver", "remove it")
    msg = str(err.value)
    assert "old-driver declares no SKIFF_CONTRACT" in msg
    assert f'SKIFF_CONTRACT = "{hookspecs.CONTRACT_VERSION}"' in msg
    assert msg.endswith("or remove it")


def test_in_process_plugins_are_checked_too() -> None:
    with pytest.raises(PluginLoadError, match="someone_elses_driver"):
        load_plugins(extra_modules=[_plugin(SKIFF_CONTRACT="1.0")])


def test_the_bundled_runtime_satisfies_the_runtime_protocol(tmp_path: Path) -> None:
    factory = load_plugins().factory("isolation", "skiff")
    runtime = factory(hookspecs.RuntimeContext(exec_root=str(tmp_path), options={}))
    assert isinstance(runtime, hookspecs.Runtime)
    assert not isinstance(object(), hookspecs.Runtime)
