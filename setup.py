"""Package mapping and the cffi extension; everything else is in pyproject.toml.

The repository keeps core/, plugins/ and cli/ at its top (docs/design.md)
while they import as skiff.core, skiff.plugins and skiff.cli: skiff/core,
skiff/plugins and skiff/cli are symlinks to them.  The symlinks, not a
package_dir mapping, make skiff.core.x live at skiff/core/x.py on disk, which
type checkers, import-graph tools and IDEs follow without knowing setuptools;
one path per module also means nothing can import a module twice under two
names.  setuptools finds the packages through the symlinks, and copies real
files into a wheel or sdist.  cffi's out-of-line build hooks in through the
``cffi_modules`` keyword
(skiff.core._syscalls, and skiff.plugins.isolation.seccomp._libseccomp, the
daemon's binding of libseccomp), so both live here.  So do the C
programs skiff ships, the ``--init`` binary (plugins/isolation/init/skiff-init.c)
and the per-container monitor (plugins/isolation/monitor/skiff-monitor.c):
build_py compiles them statically and each travels as package data of its
package.
"""

import os
import shutil
import subprocess
import warnings
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

INIT_PACKAGE = "skiff.plugins.isolation.init"
INIT_SOURCE = Path("skiff/plugins/isolation/init/skiff-init.c")
INIT_BINARY = "skiff-init"
MONITOR_PACKAGE = "skiff.plugins.isolation.monitor"
MONITOR_SOURCE = Path("skiff/plugins/isolation/monitor/skiff-monitor.c")
MONITOR_BINARY = "skiff-monitor"

#: the C programs skiff ships: (package, source, binary, what breaks without it)
C_PROGRAMS = (
    (INIT_PACKAGE, INIT_SOURCE, INIT_BINARY, "--init will not work"),
    (MONITOR_PACKAGE, MONITOR_SOURCE, MONITOR_BINARY,
     "each running container keeps a Python shim (about 12 MB) instead"),
)


def _compile(here: Path, source: Path, binary: str, without: str) -> Path | None:
    """Build a C program next to its source; static, so it runs in any image.

    Without a C compiler or a static libc (libc6-dev) skiff still installs;
    what needs the program then fails with an error naming the missing
    binary, or falls back (``without`` says which).
    """
    src = here / source
    out = src.with_name(binary)
    if out.exists() and out.stat().st_mtime >= src.stat().st_mtime:
        return out
    cc = os.environ.get("CC", "gcc")
    tmp = out.with_name(binary + ".tmp")
    try:
        subprocess.run(
            [cc, "-static", "-Os", "-s", "-Wall", "-o", str(tmp), str(src)], check=True
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        warnings.warn(f"{binary} not built ({exc}): {without}", stacklevel=1)
        return None
    os.replace(tmp, out)  # never a half-written binary under the final name
    return out


class BuildPyWithInit(build_py):
    """build_py that first compiles the C programs (skiff-init, skiff-monitor).

    Each binary lands in the source tree (an editable install uses it there)
    and, for a wheel, is copied into the build tree as package data.
    """

    def run(self) -> None:
        here = Path(__file__).parent.resolve()
        built = [(package, _compile(here, source, binary, without))
                 for package, source, binary, without in C_PROGRAMS]
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for package, binary in built:
            if binary is not None:
                dest = Path(self.build_lib, *package.split("."), binary.name)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(binary, dest)


setup(
    packages=find_packages(include=["skiff", "skiff.*"]),
    package_data={INIT_PACKAGE: ["skiff-init.c"], MONITOR_PACKAGE: ["skiff-monitor.c"]},
    cmdclass={"build_py": BuildPyWithInit},
    # skiff.core._syscalls (the start path's system calls),
    # skiff.plugins.limits._bpf (bpf(2) for the cgroup v2 device filter),
    # skiff.plugins.logging._localc (the local log format: writes framed, docker logs) and
    # skiff.plugins.isolation.seccomp._libseccomp (seccomp filters' compiler)
    cffi_modules=[
        "skiff/core/syscalls_build.py:ffibuilder",
        "skiff/plugins/limits/_bpf_build.py:ffibuilder",
        "skiff/plugins/logging/_localc_build.py:ffibuilder",
        "skiff/plugins/isolation/seccomp/_libseccomp_build.py:ffibuilder",
    ],
)
