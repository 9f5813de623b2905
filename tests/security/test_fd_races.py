"""The daemon's file work on trees a container can change under it (issue 13, item 6).

Each test is a real race: a running container swaps a name in its root
filesystem or in a volume for a symbolic link to a host-only *canary*
directory, with ``renameat2(RENAME_EXCHANGE)`` in a tight loop (swapper.c),
while the test drives the daemon's operation (copy-up, ``docker cp`` in and
out) again and again for a fixed time.  The daemon resolves an absolute link
against the host's root, so an operation that names a path twice would land
in the canary.  The outcome is deterministic: the canary is compared with a
snapshot after every attempt and must never change.

The positive control runs, under the same race and the same time budget,
the naive by-name way of doing the same thing (the old ``copy_tree``,
``tarfile.extractall``, plain ``os`` calls through ``/proc/<pid>/root``) and
shows it reaching the canary: the swapper exchanges about a million times a
second, so a path resolved twice is redirected within a few attempts, and
the protected run proves the protection, not a race that never happened.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest

from skiff.core import idshift
from tests.daemon import Daemon, poll
from tests.security.conftest import ImageMaker, remap_root_ids, remapped, unique

#: how long the protected operation is repeated under the race
PROTECTED_SECONDS = 6.0
#: the naive operation gets the same budget, and must be redirected within it
NAIVE_SECONDS = PROTECTED_SECONDS
#: the swapper's own bound, should a test die without removing it
SWAPPER_SECONDS = 120
FILES = 64
HOST_SECRET = b"host-only canary secret"


# -- the hostile side ---------------------------------------------------------------


@pytest.fixture(scope="module")
def swapper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """swapper.c built static: it runs in the busybox image."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the swapper")
    out = tmp_path_factory.mktemp("swapper") / "swapper"
    src = Path(__file__).with_name("swapper.c")
    subprocess.run(["gcc", "-static", "-O2", "-o", str(out), str(src)], check=True,
                   capture_output=True)
    return out


@dataclass
class Racer:
    """A running container whose PID 1 is the swapper."""

    d: Daemon
    name: str
    pid: int

    @property
    def root(self) -> Path:
        return Path(f"/proc/{self.pid}/root")

    def exchanges(self) -> int:
        lines = self.d.docker("logs", self.name).stdout.decode().split()
        counts = [int(x.partition("=")[2]) for x in lines if x.startswith("exchanges=")]
        return max(counts, default=0)


@contextmanager
def racing(d: Daemon, swapper: Path, args: str, *, volumes: tuple[str, ...] = (),
           setup: str = "true") -> Iterator[Racer]:
    """A container running ``setup`` and then ``/swapper args``."""
    name = unique("racer")
    cmd = ["run", "-d", "--name", name, "-v", f"{swapper}:/swapper:ro"]
    for v in volumes:
        cmd += ["-v", v]
    cmd += ["busybox", "sh", "-c", f"{setup} && exec /swapper {args} {SWAPPER_SECONDS}"]
    d.docker(*cmd, check=True)
    try:
        info = json.loads(d.docker("inspect", name, check=True).stdout)[0]
        assert info["State"]["Running"], f"the swapper did not start: {d.docker('logs', name)}"
        pid = info["State"]["Pid"]
        # ``setup`` done and the swapper at work: PID 1 has exec'd it
        poll(lambda: Path(f"/proc/{pid}/comm").read_text().strip() == "swapper",
             timeout=10, what="the swapper to start")
        yield Racer(d, name, pid)
    finally:
        d.docker("rm", "-f", name)


# -- the canary ---------------------------------------------------------------------


class Canary:
    """A host directory no container can see, with known content, owners, modes and times."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir()
        # the names the tar and the image use: a create redirected here fails
        # (O_EXCL), a chown or chmod redirected here shows
        for name in [f"f{i:03d}" for i in range(FILES)] + ["victim", "secret"]:
            p = path / name
            p.write_bytes(HOST_SECRET if name == "secret" else f"canary {name}\n".encode())
            os.chmod(p, 0o600)
            os.utime(p, ns=(1_000_000_000, 1_000_000_000))
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))
        self.before = self.snapshot()

    def snapshot(self) -> dict[str, tuple]:
        st = os.lstat(self.path)
        out: dict[str, tuple] = {".": (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns)}
        for name in sorted(os.listdir(self.path)):
            st = os.lstat(self.path / name)
            data = (self.path / name).read_bytes() if stat.S_ISREG(st.st_mode) else None
            out[name] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, data)
        return out

    def changes(self) -> list[str]:
        now = self.snapshot()
        return [f"{k}: {self.before.get(k)} -> {now.get(k)}"
                for k in sorted(set(now) | set(self.before)) if now.get(k) != self.before.get(k)]


# -- helpers ------------------------------------------------------------------------


def tree_tar(top: str = "d", files: int = FILES) -> bytes:
    """A tar of directory ``top`` with ``files`` files named like the canary's,
    setuid and owned by 1234: a redirected write, chmod or chown shows."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tf:
        info = tarfile.TarInfo(top)
        info.type, info.mode = tarfile.DIRTYPE, 0o777
        tf.addfile(info)
        for i in range(files):
            data = f"from the tar {i}\n".encode()
            info = tarfile.TarInfo(f"{top}/f{i:03d}")
            info.size, info.mode, info.uid, info.gid = len(data), 0o4777, 1234, 1234
            info.mtime = 2_000_000
            tf.addfile(info, io.BytesIO(data))
    return out.getvalue()


def tree_entries(top: str, files: int = FILES) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    out: list[tuple[tarfile.TarInfo, bytes | None]] = []
    with tarfile.open(fileobj=io.BytesIO(tree_tar(top, files))) as tf:
        for m in tf:
            f = tf.extractfile(m) if m.isreg() else None
            out.append((m, f.read() if f is not None else None))
    return out


def naive_extract(data: bytes, dest: str) -> None:
    """What a by-name extractor does: Python's tarfile, paths joined and opened."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        if hasattr(tarfile, "fully_trusted_filter"):
            tf.extraction_filter = tarfile.fully_trusted_filter
        tf.extractall(dest)


def naive_copy_tree(src: str, dst: str) -> None:
    """skiff's copy-up before issue 13, kept as the positive control: directories
    and files are created fresh, but joined by name, so a directory swapped for
    a link after its mkdir redirects everything below it."""
    for entry in os.scandir(src):
        s, d = entry.path, os.path.join(dst, entry.name)
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            os.mkdir(d, 0o700)
            naive_copy_tree(s, d)
        else:
            fd_in = os.open(s, os.O_RDONLY | os.O_NOFOLLOW)
            fd_out = os.open(d, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd_out, os.read(fd_in, 1 << 20))
            finally:
                os.close(fd_in)
                os.close(fd_out)
        os.chown(d, st.st_uid, st.st_gid, follow_symlinks=False)
        os.chmod(d, stat.S_IMODE(st.st_mode))
        os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def empty(path: str, first: str) -> None:
    """Empty a directory the swapper works in: ``first`` (its A) goes first, so the
    swapper stops recreating its link; then the rest."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    deadline = time.monotonic() + 10
    try:
        while time.monotonic() < deadline:
            names = os.listdir(fd)
            if not names:
                time.sleep(0.02)
                if not os.listdir(fd):
                    return
                continue
            for name in sorted(names, key=lambda n: n != first):
                try:
                    if stat.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                        shutil.rmtree(name, dir_fd=fd)
                    else:
                        os.unlink(name, dir_fd=fd)
                except OSError:
                    pass  # it moved under us: the next round
        raise AssertionError(f"could not empty {path}: {os.listdir(fd)}")
    finally:
        os.close(fd)


@dataclass
class Outcome:
    attempts: int = 0
    refused: int = 0  #: refused with the race's clear error (the race was on)
    landed: int = 0  #: the most files seen where the operation writes, after any attempt


#: an attempt's result: "" done, "refused" (the race's clear error), else what went wrong
Attempt = Callable[[], str]


def protected(canary: Canary, attempt: Attempt,
              landed: Callable[[], int] | None = None) -> Outcome:
    """Repeat ``attempt`` for the budget, checking the canary after each (first:
    an escape matters more than how the attempt ended).

    ``landed()``, asked after each attempt too, counts what the operation put
    where it should.  It is asked along the way, not once at the end: a
    later attempt may rightly remove what an earlier one wrote (an archive's
    directory replaces the link it meets, and when the swapper has put the
    real directory back under that name by then, the tree that goes is the
    real one, files and all), so the end can be empty by chance.
    """
    out = Outcome()
    deadline = time.monotonic() + PROTECTED_SECONDS
    while time.monotonic() < deadline:
        result = attempt()
        out.attempts += 1
        changed = canary.changes()
        assert not changed, f"attempt {out.attempts} reached the host: {changed}"
        assert result in ("", "refused"), f"attempt {out.attempts}: {result}"
        out.refused += result == "refused"
        if landed is not None:
            out.landed = max(out.landed, landed())
    return out


def naive(escaped: Callable[[], bool], attempt: Callable[[], None]) -> int:
    """Repeat the naive ``attempt`` until ``escaped()``; the attempts it took."""
    deadline = time.monotonic() + NAIVE_SECONDS
    n = 0
    while time.monotonic() < deadline:
        n += 1
        try:
            attempt()
        except OSError:
            pass  # redirected into something that exists: still racing
        except tarfile.TarError:
            pass
        if escaped():
            return n
    raise AssertionError(f"the naive operation was never redirected in {n} attempts: "
                         "the race did not happen, so the protected run proves nothing")


def volume_path(d: Daemon, name: str) -> str:
    return d.docker("volume", "inspect", "-f", "{{.Mountpoint}}", name,
                    check=True).stdout.decode().strip()


def cp_in(d: Daemon, data: bytes, dest: str) -> str:
    """``docker cp - dest`` as an :data:`Attempt`."""
    res = d.docker("cp", "-", dest, input=data)
    if res.returncode == 0:
        return ""
    err = res.stderr.decode()
    # the clear refusals of a destination changing under the copy; anything
    # else (a bare errno, a traceback's text) is a failure
    if any(w in err for w in ("is a symbolic link", "was replaced", "changed while",
                              "would replace the existing")):
        return "refused"
    return err


def count_files(path: str, walks: int = 5) -> int:
    """Regular files under ``path``, walked without following links; the best of
    a few walks, because the swapper is still moving the directory under them."""
    return max(_count_files(path) for _ in range(walks))


def _count_files(path: str) -> int:
    total = 0
    stack = [os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)]
    while stack:
        fd = stack.pop()
        try:
            for name in os.listdir(fd):
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    if stat.S_ISREG(st.st_mode):
                        total += 1
                    elif stat.S_ISDIR(st.st_mode):
                        stack.append(os.open(name, os.O_RDONLY | os.O_DIRECTORY
                                             | os.O_NOFOLLOW, dir_fd=fd))
                except OSError:
                    continue
        finally:
            os.close(fd)
    return total


# -- copy-up ------------------------------------------------------------------------


def test_copy_up_into_a_volume_another_container_swaps(
        skiffd: Daemon, hostile_image: ImageMaker, swapper: Path, tmp_path: Path) -> None:
    """CVE-2018-15664 class (a symlink-exchange TOCTOU against the daemon), on
    copy-up: the volume is mounted by a running container that swaps each
    directory the copy makes for a link to a host directory."""
    entries = tree_entries("data/d")
    image = hostile_image(entries, ["VOLUME /data"])
    vol = unique("race-vol")
    skiffd.docker("volume", "create", vol, check=True)
    try:
        path = volume_path(skiffd, vol)
        canary = Canary(tmp_path / "canary")
        with racing(skiffd, swapper, f"/v/d /v/l {canary.path}",
                    volumes=(f"{vol}:/v",)) as racer:
            engaged = 0

            def copy_up() -> str:
                nonlocal engaged
                empty(path, "d")
                res = skiffd.docker("create", "-v", f"{vol}:/data", image, "true")
                engaged += os.path.lexists(os.path.join(path, "l"))
                if res.returncode == 0:
                    skiffd.docker("rm", res.stdout.decode().strip(), check=True)
                    return ""
                err = res.stderr.decode()
                return "refused" if "changed while the image's content" in err else err

            out = protected(canary, copy_up)
            assert engaged >= 3 and racer.exchanges() > 0, (out, engaged)

        # the same race against the old copy_tree, from the same content
        src = tmp_path / "src"
        src.mkdir()
        with tarfile.open(fileobj=io.BytesIO(tree_tar("d"))) as tf:
            tf.extractall(src)
        canary2 = Canary(tmp_path / "canary2")
        with racing(skiffd, swapper, f"/v/d /v/l {canary2.path}", volumes=(f"{vol}:/v",)):
            def old_copy() -> None:
                empty(path, "d")
                naive_copy_tree(str(src), path)

            naive(lambda: bool(canary2.changes()), old_copy)
            empty(path, "d")
    finally:
        skiffd.docker("volume", "rm", "-f", vol)


# -- docker cp into a container -----------------------------------------------------


def test_cp_into_a_running_container_that_swaps_the_destination(
        skiffd: Daemon, swapper: Path, tmp_path: Path) -> None:
    """CVE-2018-15664: ``docker cp`` into a container that exchanges a directory
    of the destination with a symbolic link to a host directory while the
    archive is unpacked."""
    data = tree_tar("d")
    canary = Canary(tmp_path / "canary")
    with racing(skiffd, swapper, f"-c /w/d /w/l {canary.path}", setup="mkdir -p /w") as racer:
        out = protected(canary, lambda: cp_in(skiffd, data, f"{racer.name}:/w"),
                        lambda: count_files(f"{racer.root}/w"))
        # the race was met (refusals) and the copy wrote where it should meanwhile
        assert out.refused >= 1 and out.landed, out
        assert racer.exchanges() > 0

    canary2 = Canary(tmp_path / "canary2")
    with racing(skiffd, swapper, f"-c /w/d /w/l {canary2.path}", setup="mkdir -p /w") as racer:
        naive(lambda: bool(canary2.changes()), lambda: naive_extract(data, f"{racer.root}/w"))


def test_cp_of_a_fifo_swapped_for_a_link_before_its_chmod(
        skiffd: Daemon, swapper: Path, tmp_path: Path) -> None:
    """CVE-2018-15664 class, on the metadata step: ``fchmodat`` follows links, so
    a FIFO (or device node) the archive makes and the container swaps for a
    link to a host file at once must not get the host file chmodded."""
    out_tar = io.BytesIO()
    with tarfile.open(fileobj=out_tar, mode="w") as tf:
        for _ in range(400):  # the same name again and again: made afresh each time
            info = tarfile.TarInfo("p")
            info.type, info.mode = tarfile.FIFOTYPE, 0o777
            tf.addfile(info)
    data = out_tar.getvalue()
    canary = Canary(tmp_path / "canary")
    victim = canary.path / "victim"
    with racing(skiffd, swapper, f"/w/p /w/pl {victim}", setup="mkdir -p /w") as racer:
        out = protected(canary, lambda: cp_in(skiffd, data, f"{racer.name}:/w"))
        assert out.refused >= 1 and racer.exchanges() > 0, out

    canary2 = Canary(tmp_path / "canary2")
    victim2 = canary2.path / "victim"
    with racing(skiffd, swapper, f"/w/p /w/pl {victim2}", setup="mkdir -p /w") as racer:
        node = f"{racer.root}/w/p"

        def writer() -> AbstractContextManager[None]:
            # host root writes through a remapped container's idmapped root as
            # that container's root (it is outside the mapping), as skiff's cp
            # does; a fresh one per attempt (a generator's context is single-use)
            return (idshift.filesystem_ids(*remap_root_ids()) if remapped(skiffd)
                    else nullcontext())

        def mknod_then_chmod() -> None:
            with writer():
                for _ in range(50):
                    with suppress(FileNotFoundError):
                        os.unlink(node)
                    os.mknod(node, stat.S_IFIFO | 0o600)
                    os.chmod(node, 0o777)

        naive(lambda: bool(canary2.changes()), mknod_then_chmod)
    assert stat.S_IMODE(victim2.stat().st_mode) == 0o777


def test_cp_into_a_stopped_containers_volume_another_container_swaps(
        skiffd: Daemon, swapper: Path, tmp_path: Path) -> None:
    """CVE-2018-15664 class: ``docker cp`` into a stopped container's volume, which
    a running container has mounted and swaps a directory of for a link."""
    vol = unique("race-cp-vol")
    stopped = unique("stopped")
    skiffd.docker("volume", "create", vol, check=True)
    data = tree_tar("d")
    try:
        skiffd.docker("create", "--name", stopped, "-v", f"{vol}:/data", "busybox", "true",
                      check=True)
        path = volume_path(skiffd, vol)
        canary = Canary(tmp_path / "canary")
        with racing(skiffd, swapper, f"-c /v/d /v/l {canary.path}",
                    volumes=(f"{vol}:/v",)) as racer:
            out = protected(canary, lambda: cp_in(skiffd, data, f"{stopped}:/data"),
                            lambda: count_files(path))
            assert out.refused >= 1 and out.landed, out
            assert racer.exchanges() > 0

        empty(path, "d")  # the first swapper's link leads to the first canary
        canary2 = Canary(tmp_path / "canary2")
        with racing(skiffd, swapper, f"-c /v/d /v/l {canary2.path}", volumes=(f"{vol}:/v",)):
            naive(lambda: bool(canary2.changes()), lambda: naive_extract(data, path))
    finally:
        skiffd.docker("rm", "-f", stopped)
        skiffd.docker("volume", "rm", "-f", vol)


# -- docker cp out of a container ---------------------------------------------------


def test_cp_out_of_a_container_that_swaps_a_directory_for_a_link(
        skiffd: Daemon, swapper: Path, tmp_path: Path) -> None:
    """CVE-2018-15664, reading: ``docker cp`` out of a container that exchanges the
    directory being archived with a link to a host directory must never put
    a host file in the archive."""
    canary = Canary(tmp_path / "canary")
    setup = "mkdir -p /w/d && echo inside > /w/d/secret"
    with racing(skiffd, swapper, f"/w/d /w/l {canary.path}", setup=setup) as racer:
        def read_out() -> str:
            whole = skiffd.docker("cp", f"{racer.name}:/w", "-")
            one = skiffd.docker("cp", f"{racer.name}:/w/d/secret", "-")
            for res in (whole, one):
                assert HOST_SECRET not in res.stdout, "a host file was archived"
            if whole.returncode != 0:
                return whole.stderr.decode()
            if one.returncode != 0 and b"Could not find" not in one.stderr:
                return one.stderr.decode()
            # the link was met: the file missing from the tree, or not found
            return "" if b"inside" in whole.stdout and one.returncode == 0 else "refused"

        out = protected(canary, read_out)
        # the link was met (a read refused or without the file) and read through (with it)
        assert out.refused >= 1 and out.attempts > out.refused, out
        assert racer.exchanges() > 0

        leaked: list[bytes] = []

        def read_by_name() -> None:
            leaked.append((racer.root / "w" / "d" / "secret").read_bytes())

        naive(lambda: HOST_SECRET in leaked, read_by_name)


# -- the same swaps, at a fixed point ------------------------------------------------
#
# The races above are won by chance, many times a second.  These put the swap
# exactly between the two steps a by-name implementation separates (made,
# then used), through a hook on the system call that makes the entry, so the
# protection and the naive control are each shown once, deterministically.


def _swap_after(made: str, target: Path, real_call: Callable[..., None]) -> Callable[..., None]:
    """``real_call`` (``os.mkdir``/``os.mknod``), then the new entry ``made`` is
    renamed aside and replaced by a link to ``target``, as the swapper would."""
    def hooked(path: str, *args: object, dir_fd: int | None = None, **kw: object) -> None:
        real_call(path, *args, dir_fd=dir_fd, **kw)
        if os.path.basename(path) != made:
            return
        parent = dir_fd if dir_fd is not None else os.open(os.path.dirname(path) or ".",
                                                           os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.rename(made, made + ".real", src_dir_fd=parent, dst_dir_fd=parent)
            os.symlink(str(target), made, dir_fd=parent)
        finally:
            if dir_fd is None:
                os.close(parent)
    return hooked


def test_copy_tree_refuses_a_directory_swapped_right_after_its_mkdir(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CVE-2018-15664 class, copy-up at the fixed point: the directory the copy just
    made is a link to a host directory when the copy goes into it."""
    from skiff.core.containers import copyup

    src, vol = tmp_path / "src", tmp_path / "vol"
    vol.mkdir()
    (src / "d").mkdir(parents=True)
    (src / "d" / "planted").write_text("from the image\n")  # a name the canary lacks
    canary = Canary(tmp_path / "canary")
    monkeypatch.setattr(os, "mkdir", _swap_after("d", canary.path, os.mkdir))
    sfd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    dfd = os.open(vol, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError) as refused:
            copyup.copy_tree(sfd, dfd)
    finally:
        os.close(sfd)
        os.close(dfd)
    assert refused.value.errno in (errno.ELOOP, errno.ENOTDIR)
    assert not canary.changes()

    # the old copy_tree, same swap at the same point: writes on the host
    vol2 = tmp_path / "vol2"
    vol2.mkdir()
    naive_copy_tree(str(src), str(vol2))
    assert (canary.path / "planted").read_text() == "from the image\n"


def test_extract_refuses_a_fifo_swapped_right_after_its_mknod(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The FIFO chmod race of ``docker cp`` at the fixed point: the node just made is
    a link to a host file when its mode is set."""
    from skiff.core import archive

    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tf:
        info = tarfile.TarInfo("p")
        info.type, info.mode = tarfile.FIFOTYPE, 0o777
        tf.addfile(info)
    canary = Canary(tmp_path / "canary")
    victim = canary.path / "victim"
    dest = tmp_path / "dest"
    dest.mkdir()
    monkeypatch.setattr(os, "mknod", _swap_after("p", victim, os.mknod))
    with pytest.raises(archive.ArchiveError, match="was replaced"):
        archive.extract(io.BytesIO(out.getvalue()), str(dest), whiteouts="keep")
    assert not canary.changes()

    # what extraction did before: mknodat, then fchmodat by name (which follows)
    dfd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.unlink("p", dir_fd=dfd)
        os.mknod("p", stat.S_IFIFO | 0o600, dir_fd=dfd)
        os.chmod("p", 0o777, dir_fd=dfd)
    finally:
        os.close(dfd)
    assert stat.S_IMODE(victim.stat().st_mode) == 0o777


def test_read_out_never_opens_a_fifo_or_device_swapped_in_for_a_file(tmp_path: Path) -> None:
    """A FIFO (the open would hang the daemon) or a device node (the open acts on
    the host's device) in place of a listed regular file is left out of the tar,
    never opened."""
    from skiff.core import fdops

    os.mkfifo(tmp_path / "fifo")
    os.mknod(tmp_path / "zero", stat.S_IFCHR | 0o600, os.makedev(1, 5))
    (tmp_path / "file").write_bytes(b"x")
    os.symlink("file", tmp_path / "link")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in ("fifo", "zero", "link"):
            with pytest.raises(fdops.Replaced):
                fdops.open_regular_at(fd, name)  # returns at once: nothing opened
        rfd = fdops.open_regular_at(fd, "file")
        assert os.read(rfd, 10) == b"x"
        os.close(rfd)
    finally:
        os.close(fd)
