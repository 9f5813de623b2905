"""The project's rules, enforced by tools: import contracts and static types.

.ci/run runs lint-imports and mypy too; these tests let a developer see a
broken rule locally, and prove that a planted violation is caught (a tool
that passes everything would pass the real run as well).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    exe = BIN / name
    if not exe.exists():
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'")
    return str(exe)


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    # PYTHONPATH first, so grimp finds the copy's skiff and not the installed one
    return subprocess.run(
        [_tool("lint-imports"), "--no-cache"], cwd=root, capture_output=True, text=True,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, timeout=300,
    )


def _mypy(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_tool("mypy"), "--no-incremental", "--cache-dir", "/dev/null"], cwd=root,
        capture_output=True, text=True, timeout=600,
    )


def _copy_tree(tmp_path: Path) -> Path:
    """The repository's sources and configuration, without venv, caches or builds."""
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("core", "plugins", "cli"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns(
            "__pycache__", "*.so", "skiff-init", "skiff-monitor"))
    shutil.copytree(REPO / "skiff", root / "skiff", symlinks=True)
    shutil.copy2(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


def test_import_contracts_hold() -> None:
    res = _lint_imports(REPO)
    assert res.returncode == 0, res.stdout + res.stderr


def test_types_check() -> None:
    res = _mypy(REPO)
    assert res.returncode == 0, res.stdout + res.stderr


def test_a_core_module_importing_plugins_is_caught(tmp_path: Path) -> None:
    root = _copy_tree(tmp_path)
    target = root / "core" / "timefmt.py"
    target.write_text(target.read_text() + "\nimport skiff.plugins  # planted\n")
    res = _lint_imports(root)
    assert res.returncode != 0
    assert "core never imports the plugins BROKEN" in res.stdout
    assert "skiff.core.timefmt -> skiff.plugins" in res.stdout


def test_the_cli_importing_core_is_caught(tmp_path: Path) -> None:
    root = _copy_tree(tmp_path)
    target = root / "cli" / "main.py"
    target.write_text(target.read_text() + "\nfrom skiff.core import config  # planted\n")
    res = _lint_imports(root)
    assert res.returncode != 0
    assert "the CLI speaks only the API BROKEN" in res.stdout
    assert "skiff.cli.main -> skiff.core.config" in res.stdout


def test_a_type_error_is_caught(tmp_path: Path) -> None:
    root = _copy_tree(tmp_path)
    target = root / "core" / "timefmt.py"
    target.write_text(target.read_text() + "\n\ndef _planted() -> int:\n    return 'x'\n")
    res = _mypy(root)
    assert res.returncode != 0
    assert "skiff/core/timefmt.py" in res.stdout
    assert "Incompatible return value type" in res.stdout


ONE_NAME_EACH = r"""
import importlib, os, pkgutil, sys
import skiff
for m in pkgutil.walk_packages(skiff.__path__, "skiff."):
    importlib.import_module(m.name)
seen = {}
for name, mod in list(sys.modules.items()):
    path = getattr(mod, "__file__", None)
    if path and os.path.realpath(path).startswith(sys.argv[1] + os.sep):
        seen.setdefault(os.path.realpath(path), []).append(name)
twice = {p: n for p, n in seen.items() if len(n) > 1}
assert not twice, twice
assert not [n for n in sys.modules if n.split(".")[0] in ("core", "plugins", "cli")]
print(len(seen))
"""


def test_every_module_imports_under_one_name() -> None:
    # skiff/core is a symlink to core/: a module reached both as skiff.core.x and
    # as core.x would run twice, with two copies of its state
    res = subprocess.run([sys.executable, "-c", ONE_NAME_EACH, str(REPO)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert int(res.stdout) > 100
