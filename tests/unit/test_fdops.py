"""core/fdops: the descriptor-held file primitives the daemon uses on trees a
container can change (the races themselves are in tests/security/test_fd_races.py)."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from skiff.core import fdops


def _dirfd(p: Path) -> int:
    return os.open(p, os.O_RDONLY | os.O_DIRECTORY)


def test_remove_at_removes_a_tree_without_following_or_opening(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("host")
    tree = tmp_path / "root" / "t"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "f").write_text("x")
    os.symlink(outside, tree / "a" / "out")  # a link to a directory: unlinked, not entered
    os.mkfifo(tree / "a" / "fifo")  # opened, it would block
    os.mknod(tree / "zero", stat.S_IFCHR | 0o600, os.makedev(1, 5))
    fd = _dirfd(tmp_path / "root")
    done = threading.Event()

    def remove() -> None:
        fdops.remove_at(fd, "t")
        fdops.remove_at(fd, "missing")  # already gone: fine
        done.set()

    worker = threading.Thread(target=remove, daemon=True)
    worker.start()
    worker.join(10)
    os.close(fd)
    assert done.is_set(), "remove_at blocked (it opened the FIFO)"
    assert not tree.exists()
    assert (outside / "keep").read_text() == "host"


def test_remove_at_unlinks_a_link_or_fifo_named_for_removal(tmp_path: Path) -> None:
    (tmp_path / "target").mkdir()
    os.symlink(tmp_path / "target", tmp_path / "link")
    os.mkfifo(tmp_path / "fifo")
    fd = _dirfd(tmp_path)
    try:
        fdops.remove_at(fd, "link")
        fdops.remove_at(fd, "fifo")
    finally:
        os.close(fd)
    assert sorted(os.listdir(tmp_path)) == ["target"]


def test_remove_at_refuses_a_tree_deeper_than_it_holds_descriptors_for(tmp_path: Path) -> None:
    fd = _dirfd(tmp_path)
    cur = os.dup(fd)
    for _ in range(fdops.REMOVE_DEPTH + 2):  # deeper than PATH_MAX lets a path name
        os.mkdir("d", dir_fd=cur)
        nxt = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=cur)
        os.close(cur)
        cur = nxt
    os.close(cur)
    try:
        with pytest.raises(fdops.TooDeep):
            fdops.remove_at(fd, "d")
        assert os.path.isdir(tmp_path / "d")
    finally:
        os.close(fd)


def test_open_node_at_checks_the_kind_without_opening(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    os.symlink("fifo", tmp_path / "link")
    fd = _dirfd(tmp_path)
    try:
        node = fdops.open_node_at(fd, "fifo", stat.S_IFIFO)
        fdops.set_node_meta(node, 3, 4, 0o4640, (10**9, 2 * 10**9))
        os.close(node)
        with pytest.raises(fdops.Replaced):
            fdops.open_node_at(fd, "link", stat.S_IFIFO)  # the link itself, not followed
        with pytest.raises(ValueError):
            fdops.open_node_at(fd, "a/b", stat.S_IFIFO)
    finally:
        os.close(fd)
    st = os.lstat(tmp_path / "fifo")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (
        3, 4, 0o4640, 2 * 10**9)
