"""skiff's default seccomp filter against dockerd 20.10.24's, syscall for syscall.

A static probe (probes/errnotable.c) calls every syscall number of the three
x86 ABIs (x86_64, x32, i386 through int 0x80) with arguments that are
invalid for all of them, then the calls whose rules look at arguments
(personality values, clone's namespace flags, socket families), and prints
what each answered.  It runs as the command of a default container under a
private dockerd (Debian's docker.io 20.10.24, containerd, runc 1.1) and under
skiffd, with the same capabilities on both sides, so that the only thing
that can differ is the filter: allowed or refused, EPERM or ENOSYS, argument
filters, the capability-dependent additions, the 32-bit entry.

The tables must be equal but for skiff's one deliberate difference,
io_uring (refused, as by Docker 25; see default_profile.py).

Skipped where dockerd is not installed (``scripts/install.sh --test``
installs it) or the machine is not x86_64.
"""

from __future__ import annotations

import io
import platform
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.engines import Dockerd
from skiff.plugins.isolation import capabilities
from tests.daemon import Daemon
from tests.dockerd import own_dockerd
from tests.security.conftest import unique, unremapped

PROBES = Path(__file__).parent / "probes"

pytestmark = [
    pytest.mark.skipif(not Dockerd.available(),
                       reason="dockerd (Debian's docker.io) is not installed; "
                              "scripts/install.sh --test installs it"),
    pytest.mark.skipif(platform.machine() != "x86_64", reason="the probe is x86 assembly"),
    pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc builds the probe"),
]

#: io_uring_setup, io_uring_enter, io_uring_register: the same numbers on all
#: three ABIs; refused by skiff, allowed by Docker 20.10
IO_URING = {f"{abi} {nr}" for abi in ("x86_64", "x32", "i386") for nr in (425, 426, 427)}


def _every_capability() -> tuple[str, ...]:
    """``--cap-add`` for every capability up to AUDIT_READ (what Docker 20.10
    knows) that this host's bounding set has: runc refuses to start a
    container with one the host lacks, and ``ALL`` would name those too."""
    with open("/proc/self/status") as f:
        bounding = next(int(line.split()[1], 16) for line in f if line.startswith("CapBnd:"))
    opts: list[str] = []
    for name, bit in capabilities.CAPABILITIES.items():
        if bit <= capabilities.CAPABILITIES["AUDIT_READ"] and bounding >> bit & 1:
            opts += ["--cap-add", name]
    return tuple(opts)


#: capability sets to compare under (added to Docker's default set)
CAPABILITY_SETS = {
    "default": (),
    "SYS_ADMIN": ("--cap-add", "SYS_ADMIN"),
    "ptrace+dac_read_search": ("--cap-add", "SYS_PTRACE", "--cap-add", "DAC_READ_SEARCH"),
    "ALL": _every_capability(),
}


@pytest.fixture(scope="module")
def dockerd() -> Iterator[Dockerd]:
    with own_dockerd("skiff-sc") as d:
        yield d


@pytest.fixture(scope="module")
def probe_tar(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A root filesystem of one file: the static probe."""
    out = tmp_path_factory.mktemp("errnotable") / "errnotable"
    subprocess.run(["gcc", "-static", "-O2", "-o", str(out), str(PROBES / "errnotable.c")],
                   check=True, capture_output=True)
    data = out.read_bytes()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("errnotable")
        info.size = len(data)
        info.mode = 0o755
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def table(run, tag: str, opts: tuple[str, ...]) -> dict[str, str]:  # type: ignore[no-untyped-def]
    res = run("run", "--rm", "--network", "none", *opts, tag, "/errnotable", timeout=300)
    assert res.returncode == 0, res.stderr
    rows = {}
    for line in res.stdout.decode().splitlines():
        abi, what, outcome = line.split(" ")
        rows[f"{abi} {what}"] = outcome
    assert len(rows) > 1500, rows
    return rows


def test_same_answers_as_dockerd(skiffd: Daemon, dockerd: Dockerd, probe_tar: bytes) -> None:
    """The class: a container engine whose filter lets through a syscall the
    reference refuses (or refuses differently, breaking programs) is not the
    confinement it claims; every syscall, every ABI, every capability set."""
    tag = unique("errnotable") + ":latest"
    # dockerd runs its containers in the host's user namespace: so do these
    # (the filter depends on the capabilities, not on the user namespace),
    # or the kernel's own answers, not the filters, would differ
    host = tuple(unremapped(skiffd))
    skiffd.docker("import", "-", tag, input=probe_tar, check=True)
    dockerd.docker("import", "-", tag, input=probe_tar)
    try:
        # the comparison can fail: without skiff's filter the tables part ways
        unconfined = table(skiffd.docker, tag, (*host, "--security-opt", "seccomp=unconfined"))
        reference = table(dockerd.docker, tag, ())
        apart = {k for k in reference if unconfined[k] != reference[k]}
        assert {"x86_64 272", "i386 310", "x86_64 450", "x86_64 clone(0x10000011)"} <= apart
        for name, opts in CAPABILITY_SETS.items():
            ours = table(skiffd.docker, tag, (*host, *opts))
            theirs = table(dockerd.docker, tag, opts)
            assert ours.keys() == theirs.keys()
            differ = {k: (ours[k], theirs[k]) for k in ours if ours[k] != theirs[k]}
            unexpected = {k: v for k, v in differ.items() if k not in IO_URING}
            assert not unexpected, f"{name}: skiff vs dockerd differ on {unexpected}"
            # the one intended difference: io_uring refused here, reached there
            for key in ("x86_64 425", "i386 425"):
                assert ours[key] == "E1", (name, key, ours[key])
                assert theirs[key] not in ("E1", "E38"), (name, key, theirs[key])
            # and the table means something: refusals, ENOSYS, argument filters
            admin = name in ("SYS_ADMIN", "ALL")
            assert ours["x86_64 272"] == ("E22" if admin else "E1")  # unshare
            assert ours["i386 310"] == ours["x86_64 272"]  # unshare through int 0x80
            # clone3: ENOSYS without CAP_SYS_ADMIN, the kernel's E2BIG (size -1) with
            assert ours["x86_64 435"] == ("E7" if admin else "E38")
            assert ours["x86_64 450"] == "E38"  # above the newest syscall the profile names
            assert ours["x86_64 personality(0x40000)"] == "E1"
            assert ours["x86_64 personality(0x20008)"] == "ok"
            assert ours["x86_64 clone(0x10000011)"] == ("ok" if admin else "E1")
    finally:
        skiffd.docker("rmi", "-f", tag)
        dockerd.docker("rmi", "-f", tag, check=False)
