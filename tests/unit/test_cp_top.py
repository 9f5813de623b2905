"""Pieces of docker cp and docker top that need no daemon."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from skiff.core import archive, syscalls
from skiff.core.api.top import parse_ps
from skiff.core.containers import archive as cp


def _tar(*names: str) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name in names:
            tf.addfile(tarfile.TarInfo(name), io.BytesIO(b""))
    buf.seek(0)
    return buf


def test_parse_ps_keeps_the_containers_rows_and_whole_commands() -> None:
    out = ("UID PID PPID C STIME TTY TIME CMD\n"
           "root 10 1 0 04:00 ? 00:00:00 sh -c sleep 1 & wait\n"
           "root 11 10 0 04:00 ? 00:00:00 sleep 1\n"
           "root 99 1 0 04:00 ? 00:00:00 host-process\n")
    top = parse_ps(out, {10, 11})
    assert top["Titles"][-1] == "CMD"
    assert [p[-1] for p in top["Processes"]] == ["sh -c sleep 1 & wait", "sleep 1"]
    assert all(len(p) == len(top["Titles"]) for p in top["Processes"])
    with pytest.raises(ValueError, match="PID"):
        parse_ps("COMMAND\nsh\n", {1})


def test_go_mode_bits(tmp_path: Path) -> None:
    (tmp_path / "l").symlink_to("x")
    assert cp.go_mode(os.lstat(tmp_path)) & (1 << 31)
    assert cp.go_mode(os.lstat(tmp_path / "l")) & (1 << 27)
    f = tmp_path / "f"
    f.write_text("")
    f.chmod(0o4755)
    assert cp.go_mode(os.lstat(f)) == 0o755 | (1 << 23)


def test_resolve_in_root_never_leaves_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "abs").symlink_to("/")
    (root / "up").symlink_to("../../../../")
    (root / "etc/link").symlink_to("../abs/etc")
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        assert cp.resolve_in_root(fd, "/abs") == "/"
        assert cp.resolve_in_root(fd, "/up/etc") == "/etc"
        assert cp.resolve_in_root(fd, "/etc/link/missing") == "/etc/missing"
        # the kernel agrees: openat2 with RESOLVE_IN_ROOT lands in root/etc
        efd = syscalls.openat2(fd, "/up/../abs/etc", os.O_PATH | os.O_DIRECTORY, 0,
                               syscalls.RESOLVE_IN_ROOT)
        try:
            assert os.path.samestat(os.fstat(efd), os.stat(root / "etc"))
        finally:
            os.close(efd)
    finally:
        os.close(fd)


def test_check_names_refuses_climbing_entries() -> None:
    assert archive.check_names(_tar("a", "b/c", "/abs/ok")) == 3
    with pytest.raises(archive.ArchiveError):
        archive.check_names(_tar("ok", "../x"))


def test_extract_no_overwrite_dir_non_dir(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    with pytest.raises(archive.ArchiveError, match="directory"):
        archive.extract(_tar("d"), str(tmp_path), whiteouts="keep",
                        no_overwrite_dir_non_dir=True)
    assert (tmp_path / "d").is_dir()
    archive.extract(_tar("d"), str(tmp_path), whiteouts="keep")
    assert (tmp_path / "d").is_file()


def test_lookup_errors_are_the_clients() -> None:
    """A name longer than the kernel takes is bad input (the fuzz found a 500)."""
    import errno

    from skiff.core.errors import InvalidParameter, NotFound

    too_long = cp._oserror(OSError(errno.ENAMETOOLONG, "File name too long"), "/x" * 300, "c1")
    assert isinstance(too_long, InvalidParameter) and "file name too long" in str(too_long)
    assert isinstance(cp._oserror(OSError(errno.ENOENT, "x"), "/a", "c1"), NotFound)
    other = OSError(errno.EIO, "I/O error")
    assert cp._oserror(other, "/a", "c1") is other
