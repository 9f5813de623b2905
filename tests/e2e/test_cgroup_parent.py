"""``docker run --cgroup-parent`` (HostConfig.CgroupParent): side by side with
dockerd for a relative and an absolute parent, and a container under its own
parent adopted by a restarted daemon with live-restore on.

Every parent is named ``skiff-test-cgp-…``; the leak check (tests/conftest.py)
sees any left at the top.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.engines import Dockerd
from tests.daemon import Daemon, running_daemon
from tests.e2e.conftest import twin_of
from tests.sidebyside import Side, SideBySide, normalised, removing, unique

NONE = ("--network", "none")
ROOT = Path("/sys/fs/cgroup")

@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_daemon(tmp_path_factory.mktemp("skiffd-cgparent")) as d:
        d.skiff("image", "bootstrap", "busybox")
        yield d


@pytest.fixture(scope="module")
def sbs(daemon: Daemon, twin_dockerd: Dockerd, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[SideBySide]:
    both = twin_of(daemon, twin_dockerd, tmp_path_factory.mktemp("cgparent-twin"))
    yield both
    both.close()


def placed(side: Side, parent: str) -> tuple[str, list[str]]:
    """HostConfig.CgroupParent as inspect shows it, and the container's own
    /proc/self/cgroup lines (host cgroup namespace) with its ID as ``<id>``."""
    n = unique("cgp")
    with removing(side, ("container", n)):
        side.out("run", "-d", "--name", n, *NONE, "--cgroupns", "host", "--cgroup-parent",
                 parent, "busybox", "cat", "/proc/self/cgroup")
        side.out("wait", n)
        shown = side.out("inspect", "-f", "{{.HostConfig.CgroupParent}}", n)
        lines = normalised(side.out("logs", n)).splitlines()
    # the controllers' hierarchies: runc also uses the named systemd one and the
    # empty hybrid one, which skiff's cgroupfs driver leaves alone
    mine = sorted(line for line in lines
                  if line.split(":")[1] and not line.split(":")[1].startswith("name="))
    assert mine, lines
    return shown, mine


@pytest.mark.parametrize("shape", ["relative", "absolute"])
def test_placed_as_dockerd(sbs: SideBySide, shape: str) -> None:
    top = f"skiff-test-cgp-{secrets.token_hex(3)}"
    parent = f"{top}/inner" if shape == "relative" else f"/{top}/inner"
    shown, lines = sbs.same(lambda side: placed(side, parent))
    assert shown == parent
    assert all(f"/{top}/inner/<id>" in line for line in lines), lines
    # dockerd (runc) leaves the levels it made; skiff removes its own
    _remove_empty(top)


def _remove_empty(top: str) -> None:
    """rmdir the empty groups dockerd's runc left under ``top``, wherever the
    twin's own group put them (at most two levels down)."""
    for found in (*ROOT.glob(f"*/{top}"), *ROOT.glob(f"*/*/{top}"), *ROOT.glob(f"*/*/*/{top}")):
        for sub in sorted(found.rglob("*"), key=lambda p: -len(p.parts)):
            if sub.is_dir():
                sub.rmdir()
        found.rmdir()


def out(d: Daemon, *args: str) -> str:
    return d.docker(*args, check=True).stdout.decode().strip()


def test_refused_as_cgroupfs_cannot_take_it(daemon: Daemon) -> None:
    res = daemon.docker("run", "--rm", *NONE, "--cgroup-parent", "system.slice:docker:x",
                        "busybox", "true")
    assert res.returncode != 0
    assert b"only for the systemd cgroup driver" in res.stderr


def test_adopted_under_its_own_parent_with_live_restore(tmp_path: Path) -> None:
    """A restarted daemon finds the group under the container's own parent: the
    container is not judged dead, and its groups go only when it is removed."""
    parent = f"/skiff-test-cgp-{secrets.token_hex(3)}/pod"
    top = Path("/sys/fs/cgroup/memory") / parent.strip("/").split("/")[0]
    with running_daemon(tmp_path / "d", **{"live-restore": True}) as d:
        d.skiff("image", "bootstrap", "busybox")
        cid = out(d, "run", "-d", *NONE, "--cgroup-parent", parent, "busybox", "sleep", "300")
        try:
            group = Path("/sys/fs/cgroup/memory") / parent.strip("/") / cid
            pid = out(d, "inspect", "-f", "{{.State.Pid}}", cid)
            assert pid in (group / "cgroup.procs").read_text().split()
            assert d.stop() == 0, d.logs()
            d.start()
            assert out(d, "inspect", "-f", "{{.State.Running}} {{.State.Pid}}", cid) \
                == f"true {pid}"
            assert group.is_dir()  # not reconciled away
            assert out(d, "top", cid).count("sleep 300") == 1  # found through its group
        finally:
            d.docker("rm", "-f", cid)
        assert not top.exists()  # skiff made every level, and removed them
