"""Package mapping and the cffi extension; everything else is in pyproject.toml.

The repository keeps core/, plugins/ and cli/ at its top (see DESIGN.md) while
they import as skiff.core, skiff.plugins and skiff.cli.  setuptools cannot
express that mapping for nested packages in pyproject.toml alone, and cffi's
out-of-line build hooks in through the ``cffi_modules`` keyword, so both live
here.
"""

from pathlib import Path

from setuptools import setup

ROOTS = {"skiff": "skiff", "skiff.core": "core", "skiff.plugins": "plugins", "skiff.cli": "cli"}


def _packages() -> tuple[list[str], dict[str, str]]:
    here = Path(__file__).parent
    packages: list[str] = []
    dirs: dict[str, str] = {}
    for name, root in ROOTS.items():
        for init in sorted((here / root).rglob("__init__.py")):
            rel = init.parent.relative_to(here)
            sub = rel.relative_to(root).parts
            pkg = ".".join((name, *sub))
            packages.append(pkg)
            dirs[pkg] = str(rel)
    return packages, dirs


packages, package_dir = _packages()

setup(
    packages=packages,
    package_dir=package_dir,
    cffi_modules=["core/syscalls_build.py:ffibuilder"],
)
