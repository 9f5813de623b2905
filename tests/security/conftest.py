"""The breakout suite: hostile images, containers and clients against a real skiffd.

Each test is one attack and names the CVE or class it stands for.  Where a
protection can be turned off (``--security-opt seccomp=unconfined``, a
capability, ``--privileged``), the test also runs the attack without it and
shows it succeeding: the test proves the protection, not a broken
environment.
"""

from __future__ import annotations

import io
import pwd
import secrets
import subprocess
import tarfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from skiff.core.userns import DEFAULT_USER
from skiff.core.userns import resolve as resolve_remap
from tests.daemon import Daemon, running_daemon


@pytest.fixture(scope="session")
def remap_user() -> Iterator[str]:
    """``skiffremap``, the user ``userns-remap: default`` maps containers to.

    skiffd makes it (and its subordinate ranges) when it is missing, as
    dockerd makes dockremap; one the session made is removed at its end,
    with its ranges (userdel drops them from /etc/subuid and /etc/subgid).
    """
    try:
        pwd.getpwnam(DEFAULT_USER)
        existed = True
    except KeyError:
        existed = False
    yield DEFAULT_USER
    if not existed:
        subprocess.run(["userdel", DEFAULT_USER], capture_output=True, check=False)


#: the two configurations the breakout suite runs against
CONFIGS = {"plain": {}, "userns-remap": {"userns-remap": "default"}}


@pytest.fixture(scope="module", params=list(CONFIGS))
def skiffd(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """skiffd with busybox:latest loaded, on its default configuration and
    again with ``userns-remap: default``: every attack must fail both ways."""
    overrides = CONFIGS[request.param]
    if overrides:
        request.getfixturevalue("remap_user")
    base: Path = tmp_path_factory.mktemp("skiffd-security")
    with running_daemon(base, **overrides) as d:
        d.skiff("image", "bootstrap", "busybox")
        yield d


def remapped(d: Daemon) -> bool:
    """Whether ``d`` runs containers in user namespaces by default."""
    return bool(d.config.get("userns-remap"))


def remap_root_ids() -> tuple[int, int]:
    """Host (uid, gid) of a ``userns-remap: default`` container's root."""
    idmap = resolve_remap("default", create=False).default
    return idmap.root_uid, idmap.root_gid


def unremapped(d: Daemon) -> list[str]:
    """``--userns=host`` on a remapping daemon: what a positive control that
    turns a protection off with ``--privileged`` or ``--pid=host`` needs
    there too (Docker's rule), else nothing."""
    return ["--userns=host"] if remapped(d) else []


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


ImageMaker = Callable[..., str]


@pytest.fixture
def hostile_image(skiffd: Daemon) -> Iterator[ImageMaker]:
    """``make(entries, changes)``: busybox plus ``entries`` (``tarfile.TarInfo`` with
    optional bytes), with Dockerfile-style ``changes`` (``VOLUME /dev``); returns
    the tag.  Images made are removed afterwards."""
    made: list[str] = []

    def make(entries: Sequence[tuple[tarfile.TarInfo, bytes | None]] = (),
             changes: Sequence[str] = ()) -> str:
        tag = unique("hostile") + ":latest"
        cid = skiffd.docker("create", "busybox", "true", check=True).stdout.decode().strip()
        try:
            exported = skiffd.docker("export", cid, check=True).stdout
        finally:
            skiffd.docker("rm", "-f", cid)
        names = {e.name.lstrip("./") for e, _ in entries}
        out = io.BytesIO()
        with tarfile.open(fileobj=io.BytesIO(exported)) as src, \
                tarfile.open(fileobj=out, mode="w") as dst:
            for member in src:
                if member.name.lstrip("./").rstrip("/") in names:
                    continue  # replaced by a hostile entry
                data = src.extractfile(member) if member.isreg() else None
                dst.addfile(member, data)
            for info, data in entries:
                dst.addfile(info, io.BytesIO(data) if data is not None else None)
        args = ["import"]
        for change in changes:
            args += ["-c", change]
        skiffd.docker(*args, "-", tag, input=out.getvalue(), check=True)
        made.append(tag)
        return tag

    yield make
    for tag in made:
        skiffd.docker("rmi", "-f", tag)


def symlink(name: str, target: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info, None


def regular(name: str, data: bytes, mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    return info, data
