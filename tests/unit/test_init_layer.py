"""The init layer written directly (``write_into``, overlay2's ``apply_files``)
is the init layer the tar made: the same entries, types, modes and content."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest

from skiff.core import archive
from skiff.core.images import init_layer


def _tree(root: Path) -> dict[str, tuple[str, int, bytes | str]]:
    out: dict[str, tuple[str, int, bytes | str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            full = Path(dirpath, name)
            st = full.lstat()
            rel = str(full.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", 0, os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), b"")
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), full.read_bytes())
    return out


def _written(root: Path, extra: dict[str, bytes] | None) -> int:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return init_layer.write_into(fd, extra)
    finally:
        os.close(fd)


@pytest.mark.parametrize("extra", [None, {"etc/extra/deep/file": b"x\n", "/run/y": b"yy"}])
def test_written_directly_as_the_tar_unpacks(tmp_path: Path, extra: dict[str, bytes] | None
                                             ) -> None:
    from_tar, direct = tmp_path / "tar", tmp_path / "direct"
    from_tar.mkdir()
    direct.mkdir()
    archive.extract(io.BytesIO(init_layer.init_tar(extra)), str(from_tar), whiteouts="overlay",
                    chown=False)
    old = os.umask(0o077)  # the modes are exact whatever the umask
    try:
        size = _written(direct, extra)
    finally:
        os.umask(old)
    assert _tree(direct) == _tree(from_tar)
    assert size == sum(len(v) for v in (extra or {}).values())
    assert _tree(direct)["etc/mtab"] == ("link", 0, "/proc/mounts")
    assert _tree(direct)["dev/pts"][:2] == ("dir", 0o755)


def test_nothing_already_there_is_written_through(tmp_path: Path) -> None:
    """Every entry is new: a directory that is not empty (a symlink where a
    parent goes) is refused, never followed."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    root = tmp_path / "layer"
    root.mkdir()
    (root / "etc").symlink_to(elsewhere)
    with pytest.raises(FileExistsError):
        _written(root, None)
    assert list(elsewhere.iterdir()) == []
