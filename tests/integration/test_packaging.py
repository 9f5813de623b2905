"""Both an editable install and a plain wheel install import every module."""

from __future__ import annotations

import site
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

IMPORT_ALL = r"""
import importlib, pkgutil, sys
import skiff, skiff.core, skiff.plugins, skiff.cli
names = ["skiff"]
for pkg in (skiff, skiff.core, skiff.plugins, skiff.cli):
    names += [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")]
for name in names:
    importlib.import_module(name)
from importlib.metadata import entry_points
groups = ["skiff.storage", "skiff.network", "skiff.logging", "skiff.isolation", "skiff.limits",
          "skiff.volume"]
# skiff's own entry points; a third-party driver of the test venv may be listed too
eps = [ep for g in groups for ep in entry_points(group=g) if ep.value.startswith("skiff.")]
for ep in eps:
    ep.load()
import skiff.core.syscalls as s
s.capget()
print(len(names), len(eps), skiff.__file__)
"""


def test_editable_install_imports_every_module() -> None:
    res = subprocess.run([sys.executable, "-c", IMPORT_ALL], capture_output=True, text=True,
                         cwd="/")
    assert res.returncode == 0, res.stderr
    modules, eps, _ = res.stdout.split()
    assert int(modules) > 30 and int(eps) >= 6


def test_wheel_install_imports_every_module(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(tmp_path / "dist"), str(ROOT)],
                   check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("skiff-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("skiff/core/_syscalls") and n.endswith(".so") for n in names)
    assert any(n.startswith("skiff/plugins/limits/_bpf") and n.endswith(".so") for n in names)
    assert any(n.startswith("skiff/plugins/logging/_localc") and n.endswith(".so")
               for n in names)
    assert any(n.startswith("skiff/plugins/isolation/seccomp/_libseccomp") and n.endswith(".so")
               for n in names)
    assert "skiff/plugins/storage/overlay2.py" in names and "skiff/cli/main.py" in names
    # the C programs, built static by setup.py, travel as package data
    assert "skiff/plugins/isolation/init/skiff-init" in names
    assert "skiff/plugins/isolation/monitor/skiff-monitor" in names
    assert not any(n.startswith(("tests/", "core/", "plugins/")) for n in names)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    target = next(venv.glob("lib/python3*/site-packages"))
    # Dependencies come from the test venv; skiff itself only from the wheel.
    deps = [p for p in site.getsitepackages() if "site-packages" in p]
    (target / "deps.pth").write_text("\n".join(deps) + "\n")
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(target)
    res = subprocess.run([str(venv / "bin" / "python"), "-c", IMPORT_ALL], capture_output=True,
                         text=True, cwd="/")
    assert res.returncode == 0, res.stderr
    assert str(target) in res.stdout.split()[2], "skiff was not imported from the wheel"
