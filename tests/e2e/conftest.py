"""Fixtures: a real skiffd per storage driver, with a busybox image made by skiff."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.engines import Dockerd
from tests.daemon import Daemon, running_daemon
from tests.dockerd import own_dockerd
from tests.sidebyside import Side, SideBySide, unique


@pytest.fixture(scope="module", params=["overlay2", "vfs"])
def skiffd(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Daemon]:
    """skiffd with the storage driver of the parameter and busybox:latest loaded."""
    base: Path = tmp_path_factory.mktemp(f"skiffd-{request.param}")
    with running_daemon(base, **{"storage-driver": request.param}) as d:
        d.skiff("image", "bootstrap", "busybox")
        yield d


@pytest.fixture(scope="module")
def default_skiffd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """skiffd with no storage-driver configured: it picks the best that works."""
    base = tmp_path_factory.mktemp("skiffd-default")
    with running_daemon(base) as d:
        d.skiff("image", "bootstrap", "busybox")
        yield d


@pytest.fixture(scope="session")
def twin_dockerd() -> Iterator[Dockerd]:
    """One private dockerd for the whole session, for side-by-side tests
    (tests/sidebyside.py); each module gives it its skiffd's busybox."""
    if not Dockerd.available():
        pytest.skip("dockerd (Debian's docker.io) is not installed")
    with own_dockerd("skiff-twin") as d:
        yield d


def twin_of(daemon: Daemon, dockerd: Dockerd, tmp: Path) -> SideBySide:
    """``daemon`` and ``dockerd`` side by side, dockerd holding ``daemon``'s
    busybox:latest (the same image ID on both, so image fields compare)."""
    want = daemon.docker("image", "inspect", "--format", "{{.Id}}", "busybox:latest",
                         check=True).stdout.strip()
    have = dockerd.docker("image", "inspect", "--format", "{{.Id}}", "busybox:latest",
                          check=False).stdout.strip()
    if have != want:
        archive = tmp / "twin-busybox.tar"
        daemon.docker("save", "-o", str(archive), "busybox:latest", check=True)
        dockerd.docker("load", "-i", str(archive))
        archive.unlink()
    return SideBySide(Side("skiffd", daemon.env(), daemon.host),
                      Side("dockerd", dockerd.env(), dockerd.host))


#: lines a test leaves for the end of the run (critest's counts, tests/e2e/
#: test_cri_critest.py): printed after pytest's summary, so CI's log ends with them
END_OF_RUN: list[str] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for line in END_OF_RUN:
        terminalreporter.write_line(line)


@pytest.fixture
def veth_parent() -> Iterator[str]:
    """One end of a veth pair in the test's namespace, both ends up: a parent device
    for macvlans (this kernel has macvlan but no dummy device), on which containers
    of several daemons meet as hosts on one link."""
    name = unique("vp")[:12]
    subprocess.run(["ip", "link", "add", name, "type", "veth", "peer", "name", name + "x"],
                   check=True)
    try:
        for dev in (name, name + "x"):
            subprocess.run(["ip", "link", "set", dev, "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "link", "del", name], check=False)
