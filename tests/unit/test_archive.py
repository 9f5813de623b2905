"""skiff.core.archive: safe extraction, tar streams and diffs, on real files.

Hostile tars must be refused with ``ArchiveError`` and write nothing outside
the root; honest tars must round-trip everything a layer can hold.  Runs as
root (ownership, devices, trusted.* and security.* xattrs).
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from skiff.core import archive
from skiff.core.archive import ArchiveError
from skiff.core.hookspecs import Change
from tests.conformance._storage_model import CAP_NET_BIND, Entry, listing, tar_bytes

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, mknod, xattrs)")

T0 = 1_600_000_000


@pytest.fixture(autouse=True)
def _remove_tmp(tmp_path: Path) -> Iterator[None]:
    """Trees with devices and root-owned files: remove them, do not leave them to pytest."""
    yield
    shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.fixture
def dirs(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(root, outside): an extraction root and a sibling that must stay untouched."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    yield root, outside


def snapshot(path: Path) -> dict:
    return listing(str(path))


def extract(data: bytes, root: Path, **kw: object) -> int:
    return archive.extract(io.BytesIO(data), str(root), **kw)  # type: ignore[arg-type]


def f(path: str, data: bytes = b"x", **kw: object) -> Entry:
    return Entry(path, "f", data=data, **kw)  # type: ignore[arg-type]


def tar_members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return {m.name: m for m in tf}


def raw_tar(*infos: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for ti, body in infos:
            tf.addfile(ti, io.BytesIO(body) if body is not None else None)
    return buf.getvalue()


# ---------------------------------------------------------------------------
# Hostile tars
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../pwned", "a/../../pwned", "./../pwned", "../outside/pwned"])
def test_dotdot_escape_is_refused(dirs: tuple[Path, Path], name: str) -> None:
    root, outside = dirs
    before = snapshot(outside)
    with pytest.raises(ArchiveError) as err:
        extract(tar_bytes([f(name)]), root)
    assert name in str(err.value) and "climbs out" in str(err.value)
    assert snapshot(outside) == before
    assert not (root.parent / "pwned").exists()


def test_absolute_path_is_taken_relative_to_root(dirs: tuple[Path, Path]) -> None:
    # Docker's rule: "/x" means <root>/x, and ".." cannot climb above "/".
    root, outside = dirs
    before = snapshot(outside)
    extract(tar_bytes([f(f"{outside}/pwned", b"abs"), f("/../../../etc/evil", b"up")]), root)
    assert snapshot(outside) == before
    assert (root / str(outside).lstrip("/") / "pwned").read_bytes() == b"abs"
    assert (root / "etc" / "evil").read_bytes() == b"up"


@pytest.mark.parametrize("relative", [False, True])
def test_symlink_parent_in_tar_is_refused(dirs: tuple[Path, Path], relative: bool) -> None:
    root, outside = dirs
    target = os.path.relpath(outside, root) if relative else str(outside)
    before = snapshot(outside)
    with pytest.raises(ArchiveError, match="symbolic link"):
        extract(tar_bytes([Entry("evil", "l", 0o777, target=target),
                           f("evil/pwned")]), root)
    assert snapshot(outside) == before


def test_symlink_in_lower_layer_is_not_followed(dirs: tuple[Path, Path]) -> None:
    # vfs unpacks on top of a copy of the parent: a symlink already in the
    # root (from a lower layer) must not redirect a write either.
    root, outside = dirs
    (root / "usr").mkdir()
    os.symlink(outside, root / "usr" / "lib")
    before = snapshot(outside)
    with pytest.raises(ArchiveError, match="'usr/lib' is a symbolic link"):
        extract(tar_bytes([f("usr/lib/pwned")]), root)
    with pytest.raises(ArchiveError):
        extract(tar_bytes([Entry("usr/lib/sub", "d", 0o755)]), root)
    assert snapshot(outside) == before


@pytest.mark.parametrize("whiteout", ["lnk/.wh.secret", "lnk/.wh..wh..opq"])
@pytest.mark.parametrize("mode", ["delete", "overlay"])
def test_whiteout_through_symlink_is_refused(dirs: tuple[Path, Path], whiteout: str,
                                             mode: str) -> None:
    root, outside = dirs
    os.symlink(outside, root / "lnk")
    before = snapshot(outside)
    ti = tarfile.TarInfo(whiteout)
    with pytest.raises(ArchiveError):
        extract(raw_tar((ti, b"")), root, whiteouts=mode)
    assert snapshot(outside) == before


@pytest.mark.parametrize("link", ["../outside/secret", "a/../../outside/secret"])
def test_hardlink_outside_is_refused(dirs: tuple[Path, Path], link: str) -> None:
    root, outside = dirs
    with pytest.raises(ArchiveError):
        extract(tar_bytes([Entry("stolen", "h", target=link)]), root)
    assert not (root / "stolen").exists()
    assert os.stat(outside / "secret").st_nlink == 1


def test_hardlink_through_symlink_is_refused(dirs: tuple[Path, Path]) -> None:
    root, outside = dirs
    with pytest.raises(ArchiveError, match="symbolic link"):
        extract(tar_bytes([Entry("evil", "l", 0o777, target=str(outside)),
                           Entry("stolen", "h", target="evil/secret")]), root)
    assert os.stat(outside / "secret").st_nlink == 1


def test_hardlink_absolute_target_stays_inside(dirs: tuple[Path, Path]) -> None:
    root, outside = dirs
    # "/<outside>/secret" means <root>/<outside>/secret, which does not exist
    with pytest.raises(ArchiveError, match="does not exist"):
        extract(tar_bytes([Entry("stolen", "h", target=f"{outside}/secret")]), root)
    assert os.stat(outside / "secret").st_nlink == 1


def test_hardlink_to_directory_is_refused(dirs: tuple[Path, Path]) -> None:
    root, _ = dirs
    with pytest.raises(ArchiveError, match="directory"):
        extract(tar_bytes([Entry("d", "d", 0o755), Entry("h", "h", target="d")]), root)


def test_existing_symlink_is_replaced_not_followed(dirs: tuple[Path, Path]) -> None:
    root, outside = dirs
    os.symlink(outside / "secret", root / "file")
    os.symlink(outside, root / "dir")
    extract(tar_bytes([f("file", b"mine"), Entry("dir", "d", 0o700)]), root)
    assert (outside / "secret").read_bytes() == b"secret"
    assert os.listdir(outside) == ["secret"]
    assert not (root / "file").is_symlink() and (root / "file").read_bytes() == b"mine"
    assert not (root / "dir").is_symlink() and (root / "dir").is_dir()


def test_devices_can_be_refused(dirs: tuple[Path, Path]) -> None:
    root, _ = dirs
    data = tar_bytes([Entry("dev/sda", "b", 0o600, rdev=(8, 0))])
    with pytest.raises(ArchiveError, match="device"):
        extract(data, root, allow_devices=False)
    extract(data, root)
    assert stat.S_ISBLK(os.lstat(root / "dev" / "sda").st_mode)


def test_overlay_private_xattrs_are_not_taken_from_a_tar(dirs: tuple[Path, Path]) -> None:
    root, _ = dirs
    data = tar_bytes([Entry("d", "d", 0o755, xattrs={"trusted.overlay.redirect": b"/etc",
                                                     "trusted.overlay.opaque": b"y",
                                                     "user.ok": b"1"})])
    extract(data, root, whiteouts="overlay")
    assert os.listxattr(root / "d") == ["user.ok"]


@pytest.mark.parametrize("name", [".wh..", ".wh...", "d/.wh."])
def test_malformed_whiteout_is_refused(dirs: tuple[Path, Path], name: str) -> None:
    root, _ = dirs
    with pytest.raises(ArchiveError, match="whiteout"):
        extract(raw_tar((tarfile.TarInfo(name), b"")), root)


def test_corrupt_streams_are_refused(dirs: tuple[Path, Path]) -> None:
    root, _ = dirs
    assert extract(b"", root) == 0  # an empty layer
    with pytest.raises(ArchiveError):
        extract(b"this is not a tar stream at all" * 40, root)
    whole = tar_bytes([f("big", os.urandom(5000))])
    with pytest.raises(ArchiveError, match="big"):
        extract(whole[:2048], root)  # cut inside the file's data
    with pytest.raises(ArchiveError, match="zstd"):
        extract(b"\x28\xb5\x2f\xfd" + bytes(100), root)
    err = ArchiveError("x", "why")
    assert isinstance(err, ValueError) and "discarded" in str(err)


# ---------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------


def make_tree(root: Path) -> None:
    """Every kind of thing a layer holds, with awkward metadata."""
    (root / "bin").mkdir()
    tool = root / "bin" / "tool"
    tool.write_bytes(b"\x7fELF" + os.urandom(3000))
    os.chown(tool, 0, 0)
    os.chmod(tool, 0o4755)
    os.setxattr(tool, "security.capability", CAP_NET_BIND)
    os.link(tool, root / "bin" / "tool-link")
    sg = root / "bin" / "sg"
    sg.write_bytes(b"setgid")
    os.chown(sg, 0, 42)
    os.chmod(sg, 0o2711)
    os.symlink("tool", root / "bin" / "sh")
    os.utime(root / "bin" / "sh", (T0 + 5, T0 + 5), follow_symlinks=False)
    home = root / "home" / "user"
    home.mkdir(parents=True)
    os.chown(home, 1000, 1000)
    os.chmod(home, 0o700)
    os.setxattr(home, "user.owner", b"\x00\xff binary")
    notes = home / "notes"
    notes.write_bytes(b"notes")
    os.chown(notes, 1000, 1000)
    os.setxattr(notes, "user.tag", b"t")
    (root / "tmp").mkdir()
    os.chmod(root / "tmp", 0o1777)
    (root / "dev").mkdir()
    os.mknod(root / "dev" / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mkfifo(root / "dev" / "fifo", 0o600)
    (root / "empty").write_bytes(b"")
    (root / "ünïcode name").write_bytes(b"u")
    (root / "dev" / "null").chmod(0o666)
    for path in [tool, sg, notes, root / "empty", root / "ünïcode name"]:
        os.utime(path, (T0 + 1, T0 + 1))
    for d in [root / "bin", home, root / "home", root / "tmp", root / "dev"]:
        os.utime(d, (T0 + 2, T0 + 2))  # set last: writing children moves it


def test_round_trip_preserves_everything(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    make_tree(src)
    with archive.tar_directory(str(src)) as stream:
        data = stream.read()
    size = extract(data, dst)
    assert size == archive.directory_size(str(src))
    assert listing(str(dst)) == listing(str(src))
    assert os.stat(dst / "bin" / "tool").st_mode & 0o7777 == 0o4755
    assert os.getxattr(dst / "bin" / "tool", "security.capability") == CAP_NET_BIND
    assert os.stat(dst / "bin" / "tool").st_ino == os.stat(dst / "bin" / "tool-link").st_ino
    assert os.stat(dst / "home").st_mtime == T0 + 2
    assert archive.changes_between(str(src), str(dst)) == []


def test_tar_stream_is_deterministic_and_sorted(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    first = archive.tar_directory(str(src)).read()
    second = archive.tar_directory(str(src)).read()
    assert first == second
    members = tar_members(first)
    names = list(members)
    assert names[:4] == ["bin", "bin/sg", "bin/sh", "bin/tool"]
    assert names.index("home") < names.index("home/user") < names.index("home/user/notes")
    assert members["bin/tool-link"].islnk() and members["bin/tool-link"].linkname == "bin/tool"
    assert all(isinstance(m.mtime, int) for m in members.values())
    assert members["bin/tool"].pax_headers["SCHILY.xattr.security.capability"].encode(
        "utf-8", "surrogateescape") == CAP_NET_BIND
    assert set(members) >= {"dev/null", "dev/fifo", "tmp"}


def test_gzip_layers_are_accepted(dirs: tuple[Path, Path]) -> None:
    root, _ = dirs
    extract(gzip.compress(tar_bytes([f("a/b", b"zipped")])), root)
    assert (root / "a" / "b").read_bytes() == b"zipped"


def _sparse(path: Path) -> None:
    with open(path, "wb") as fh:
        fh.write(b"head")
        fh.seek(8 << 20)
        fh.write(b"middle")
        fh.seek(16 << 20)
        fh.write(b"tail")
        fh.truncate(24 << 20)  # and a trailing hole


def test_sparse_file_round_trip(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    _sparse(src / "sparse")
    data = archive.tar_directory(str(src)).read()
    extract(data, dst)
    out = dst / "sparse"
    assert out.read_bytes() == (src / "sparse").read_bytes()
    st = os.stat(out)
    assert st.st_size == 24 << 20
    assert st.st_blocks * 512 < 1 << 20, "holes were written out"


@pytest.mark.parametrize("fmt", ["gnu", "posix"])
def test_sparse_members_from_gnu_tar(tmp_path: Path, fmt: str) -> None:
    if shutil.which("tar") is None:
        pytest.skip("GNU tar is not installed")
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    _sparse(src / "sparse")
    data = subprocess.run(["tar", "-C", str(src), f"--format={fmt}", "--sparse", "-cf", "-",
                           "sparse"], check=True, capture_output=True).stdout
    assert len(data) < 1 << 20  # the archive itself is sparse
    extract(data, dst)
    assert (dst / "sparse").read_bytes() == (src / "sparse").read_bytes()
    assert os.stat(dst / "sparse").st_blocks * 512 < 1 << 20


# ---------------------------------------------------------------------------
# Whiteouts
# ---------------------------------------------------------------------------


def lower_tree(root: Path) -> None:
    extract(tar_bytes([
        Entry("d", "d", 0o755, mtime=T0), f("d/keep", mtime=T0), f("d/gone", mtime=T0),
        Entry("d/sub", "d", 0o755, mtime=T0), f("d/sub/deep", mtime=T0),
        Entry("o", "d", 0o755, mtime=T0), f("o/old", mtime=T0), f("top", mtime=T0),
    ]), root)


LAYER = [
    Entry("d", "d", 0o755, mtime=T0), Entry("d/gone", "w"), Entry("top", "w"),
    Entry("o", "d", 0o755, mtime=T0 + 1), f("o/before", mtime=T0), Entry("o", "o"),
    f("o/after", mtime=T0),
]


def test_whiteouts_delete_mode(tmp_path: Path) -> None:
    lower_tree(tmp_path)
    extract(tar_bytes(LAYER), tmp_path, whiteouts="delete")
    assert sorted(os.listdir(tmp_path)) == ["d", "o"]
    assert sorted(os.listdir(tmp_path / "d")) == ["keep", "sub"]
    # opaque: what lay below is gone, what this tar wrote (before or after) stays
    assert sorted(os.listdir(tmp_path / "o")) == ["after", "before"]
    assert os.stat(tmp_path / "o").st_mtime == T0 + 1
    assert os.stat(tmp_path / "d").st_mtime == T0


def test_whiteouts_overlay_mode(tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    lower.mkdir()
    upper.mkdir()
    lower_tree(lower)
    data = tar_bytes([*LAYER, Entry("new", "d", 0o755), f("new/x"), Entry("new/x", "w")])
    extract(data, upper, whiteouts="overlay", lower_exists=archive.lower_lookup([str(lower)]))
    assert archive.is_overlay_whiteout(os.lstat(upper / "d" / "gone"))
    assert archive.is_overlay_whiteout(os.lstat(upper / "top"))
    assert os.getxattr(upper / "o", archive.OPAQUE_XATTR) == b"y"
    assert sorted(os.listdir(upper / "o")) == ["after", "before"]
    # nothing below "new/x": no whiteout, which overlayfs would list as an entry
    assert os.listdir(upper / "new") == []
    # and back to OCI form
    with archive.tar_directory(str(upper), whiteouts="overlay") as stream:
        members = list(tar_members(stream.read()))
    assert "d/.wh.gone" in members and ".wh.top" in members
    assert members.index("o") + 1 == members.index("o/.wh..wh..opq")
    # the same as the overlay kernel shows, against a plain diff of merged trees
    merged = tmp_path / "merged"
    shutil.copytree(lower, merged, symlinks=True)
    extract(data, merged, whiteouts="delete")
    assert archive.overlay_changes(str(upper), [str(lower)]) == archive.changes_between(
        str(lower), str(merged))


def test_an_overlay_whiteout_keeps_its_entrys_time(tmp_path: Path) -> None:
    """Diffed again, the layer gives the same tar: the whiteout's time is its entry's,
    not the moment it was extracted (a diffID would change with the second)."""
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    lower.mkdir()
    upper.mkdir()
    lower_tree(lower)
    data = tar_bytes([Entry("d", "d", 0o755, mtime=T0), Entry("d/gone", "w", mtime=T0 + 5)])
    extract(data, upper, whiteouts="overlay", lower_exists=archive.lower_lookup([str(lower)]))
    assert os.lstat(upper / "d" / "gone").st_mtime == T0 + 5
    with archive.tar_directory(str(upper), whiteouts="overlay") as stream:
        assert tar_members(stream.read())["d/.wh.gone"].mtime == T0 + 5


def test_directory_over_whiteout_becomes_opaque(tmp_path: Path) -> None:
    extract(tar_bytes([Entry("d", "w"), Entry("d", "d", 0o755), f("d/new")]), tmp_path,
            whiteouts="overlay")
    assert os.getxattr(tmp_path / "d", archive.OPAQUE_XATTR) == b"y"


@pytest.mark.parametrize("entries", [[f("lib/pwned")], [Entry("lib/.wh.x", "f")]],
                         ids=["file", "whiteout"])
def test_overlay_upper_refuses_a_lower_symlinked_parent(dirs: tuple[Path, Path],
                                                        entries: list[Entry]) -> None:
    # overlay2 decides as vfs: a parent that a lower layer holds as a symlink
    # is refused, not silently shadowed by a directory of the upper
    upper, outside = dirs
    lower = upper.parent / "lower"
    lower.mkdir()
    os.symlink(outside, lower / "lib")
    with pytest.raises(ArchiveError, match="'lib' is a symbolic link"):
        extract(tar_bytes(entries), upper, whiteouts="overlay",
                lower_exists=archive.lower_lookup([str(lower)]))
    assert not (upper / "lib").exists()
    (lower / "file").write_bytes(b"f")
    with pytest.raises(ArchiveError, match="'file' is not a directory"):
        extract(tar_bytes([f("file/x")]), upper, whiteouts="overlay",
                lower_exists=archive.lower_lookup([str(lower)]))


def test_overlay_upper_copies_an_implicit_parent_from_below(tmp_path: Path) -> None:
    upper, lower = tmp_path / "upper", tmp_path / "lower"
    upper.mkdir()
    (lower / "home" / "user").mkdir(parents=True)
    os.chown(lower / "home" / "user", 1000, 1001)
    os.chmod(lower / "home" / "user", 0o710)
    os.symlink("/nowhere", lower / "home" / "user" / "lnk")
    extract(tar_bytes([f("home/user/new"), Entry("gone", "w"), f("gone/again")]), upper,
            whiteouts="overlay", lower_exists=archive.lower_lookup([str(lower)]))
    st = os.stat(upper / "home" / "user")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1001, 0o710)
    # below an opaque directory the lower layers do not count
    extract(tar_bytes([Entry("home", "o"), f("home/user/lnk/x")]), upper,
            whiteouts="overlay", lower_exists=archive.lower_lookup([str(lower)]))
    assert (upper / "home" / "user" / "lnk" / "x").is_file()


def test_overlay_whiteout_in_the_way_becomes_an_opaque_directory(tmp_path: Path) -> None:
    upper, lower = tmp_path / "upper", tmp_path / "lower"
    upper.mkdir()
    (lower / "d").mkdir(parents=True)
    (lower / "d" / "old").write_bytes(b"old")
    extract(tar_bytes([Entry("d", "w"), f("d/new")]), upper, whiteouts="overlay",
            lower_exists=archive.lower_lookup([str(lower)]))
    assert os.getxattr(upper / "d", archive.OPAQUE_XATTR) == b"y"
    assert os.listdir(upper / "d") == ["new"]


def test_whiteouts_keep_mode(tmp_path: Path) -> None:
    extract(tar_bytes(LAYER), tmp_path, whiteouts="keep")
    assert (tmp_path / "d" / ".wh.gone").is_file()
    assert (tmp_path / "o" / ".wh..wh..opq").is_file()


def test_directory_entry_replaces_stale_xattrs(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    os.setxattr(tmp_path / "d", "user.stale", b"1")
    extract(tar_bytes([Entry("d", "d", 0o700, xattrs={"user.new": b"2"})]), tmp_path)
    assert os.listxattr(tmp_path / "d") == ["user.new"]
    assert os.stat(tmp_path / "d").st_mode & 0o777 == 0o700


# ---------------------------------------------------------------------------
# Diffs
# ---------------------------------------------------------------------------


def test_changes_between_and_tar_changes_round_trip(tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    lower.mkdir()
    make_tree(lower)
    subprocess.run(["cp", "-a", str(lower), str(upper)], check=True)
    (upper / "bin" / "sg").unlink()
    (upper / "home" / "user" / "notes").write_bytes(b"changed")
    (upper / "newdir" / "sub").mkdir(parents=True)
    (upper / "newdir" / "sub" / "file").write_bytes(b"f")
    os.chmod(upper / "tmp", 0o1770)
    shutil.rmtree(upper / "dev")
    got = archive.changes_between(str(lower), str(upper))
    # the root's own mtime moved too (newdir, dev): Docker does not report "/";
    # /home and /home/user hold a change, so Docker reports them modified
    assert [(c.path, c.kind) for c in got] == [
        ("/bin", 0), ("/bin/sg", 2), ("/dev", 2), ("/home", 0), ("/home/user", 0),
        ("/home/user/notes", 0),
        ("/newdir", 1), ("/newdir/sub", 1), ("/newdir/sub/file", 1), ("/tmp", 0),
    ]
    assert all(isinstance(c, Change) for c in got)
    assert archive.changes_size(str(upper), got) == len(b"changed") + 1
    again = tmp_path / "again"
    subprocess.run(["cp", "-a", str(lower), str(again)], check=True)
    extract(archive.tar_changes(str(upper), got).read(), again)
    assert listing(str(again)) == listing(str(upper))
    assert archive.changes_between(str(upper), str(again)) == []

