"""COPY and ADD (core/builder/copying.py): dockerd 20.10's rules, on tmp_path trees.

Both roots are plain directories: the source tree (a context) and the
destination (an image's rootfs).  ADD's archives and URLs are in
test_builder_copy_add.py, which shares the fixtures and helpers here.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skiff.core.builder import copying
from skiff.core.builder.copying import CopyPlan, apply_copy, plan_copy
from skiff.core.builder.sources import go_match
from skiff.core.containers import passwd
from skiff.core.errors import InvalidParameter


class Tree:
    """A SourceTree over a directory; ``digests`` is what the context would know."""

    def __init__(self, path: Path, digests: dict[str, str] | None = None) -> None:
        self.root_fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self.digests = digests or {}
        self.asked: list[str] = []

    def digest_of(self, path: str) -> str | None:
        self.asked.append(path)
        return self.digests.get(path)

    def close(self) -> None:
        os.close(self.root_fd)


@pytest.fixture
def ctx(tmp_path: Path) -> Path:
    d = tmp_path / "ctx"
    d.mkdir()
    return d


@pytest.fixture
def img(tmp_path: Path) -> Path:
    d = tmp_path / "img"
    d.mkdir()
    return d


Copy = Callable[..., CopyPlan]


@pytest.fixture
def copy(ctx: Path, img: Path) -> Iterator[Copy]:
    """plan_copy + apply_copy from ``ctx`` into ``img``."""
    opened: list[int] = []

    def run(srcs: list[str], dest: str, *, workdir: str = "/", keyword: str = "COPY",
            chown: str | None = None, chmod: str | None = None, decompress: bool = False,
            **kw: object) -> CopyPlan:
        tree = Tree(ctx)
        root = os.open(img, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        opened.extend((tree.root_fd, root))
        plan = plan_copy(tree, srcs, dest, workdir=workdir, keyword=keyword, **kw)  # type: ignore[arg-type]  # test passthrough
        apply_copy(plan, tree, root, chown=chown, chmod=chmod, decompress=decompress)
        return plan

    yield run
    for fd in opened:
        os.close(fd)


def plan_only(ctx: Path, srcs: list[str], dest: str = "/d/", **kw: object) -> CopyPlan:
    tree = Tree(ctx)
    try:
        return plan_copy(tree, srcs, dest, workdir="/", **kw)  # type: ignore[arg-type]  # test passthrough
    finally:
        tree.close()


def write(path: Path, data: str | bytes = "x", mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    path.chmod(mode)
    return path


def owner(path: Path) -> tuple[int, int]:
    s = os.lstat(path)
    return s.st_uid, s.st_gid


# ---------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------


def test_source_spellings_are_the_same_file(ctx: Path, copy: Copy, img: Path) -> None:
    write(ctx / "a.txt", "A")
    ids = {copy([src], f"/out{i}/").cache_id for i, src in enumerate(["/a.txt", "./a.txt",
                                                                        "a.txt"])}
    assert len(ids) == 1
    assert all((img / f"out{i}" / "a.txt").read_text() == "A" for i in range(3))


def test_dotdot_cannot_leave_the_tree(tmp_path: Path, ctx: Path, copy: Copy, img: Path) -> None:
    write(tmp_path / "secret", "host")
    write(ctx / "secret", "in-tree")
    copy(["../secret"], "/got")
    assert (img / "got").read_text() == "in-tree"
    (ctx / "secret").unlink()
    with pytest.raises(InvalidParameter):
        copy(["../../secret"], "/got2")
    assert not (img / "got2").exists()


@pytest.mark.parametrize("keyword", ["COPY", "ADD"])
def test_missing_source(ctx: Path, keyword: str) -> None:
    with pytest.raises(InvalidParameter) as err:
        plan_only(ctx, ["/nope/x.txt"], keyword=keyword)
    assert err.value.message == (
        f"{keyword} failed: file not found in build context or excluded by .dockerignore: "
        "stat nope/x.txt: file does not exist")


def test_wildcards(ctx: Path, copy: Copy, img: Path) -> None:
    for name in ("a.txt", "b.txt", "c.md", "sub/d.txt", "sub/deeper/e.txt", "*.txt"):
        write(ctx / name, name)
    copy(["*.txt"], "/w1/")
    assert sorted(os.listdir(img / "w1")) == ["*.txt", "a.txt", "b.txt"]
    copy(["sub/*.txt", "[c]*"], "/w2/")
    assert sorted(os.listdir(img / "w2")) == ["c.md", "d.txt"]
    copy(["[*].txt"], "/w3/")
    copy(["\\*.t?t"], "/w3/")
    assert os.listdir(img / "w3") == ["*.txt"]
    with pytest.raises(InvalidParameter, match=r"stat \\\*\.txt: file does not exist"):
        copy(["\\*.txt"], "/w3/")  # escapes alone make no pattern: a literal name (dockerd)
    plan = copy(["./*/deeper"], "/w4/")  # a directory matched: its content
    assert os.listdir(img / "w4") == ["e.txt"]
    assert plan.cache_id.startswith("dir:")


@pytest.mark.parametrize("keyword", ["COPY", "ADD"])
def test_wildcard_without_match(ctx: Path, keyword: str) -> None:
    write(ctx / "a.txt")
    with pytest.raises(InvalidParameter) as err:
        plan_only(ctx, ["*.nothing"], keyword=keyword)
    assert err.value.message == f"{keyword} failed: no source files were specified"


@pytest.mark.parametrize(("pattern", "name", "matched"), [
    ("*", "abc", True), ("*", "a/b", False), ("a?c", "abc", True), ("a?c", "a/c", False),
    ("a[/]c", "a/c", True), ("[^a]bc", "xbc", True), ("[^a]bc", "abc", False),
    ("[a-c]x", "bx", True), ("[c-a]x", "bx", False), ("\\*", "*", True), ("\\*", "a", False),
    ("[", "[", False), ("a\\", "a", False), ("[]a]", "]", False), ("[\\]]", "]", True),
    ("*/*.go", "pkg/x.go", True), ("*.go", "pkg/x.go", False), ("[!a]", "!", True),
])
def test_go_match(pattern: str, name: str, matched: bool) -> None:
    assert go_match(pattern, name) is matched


# ---------------------------------------------------------------------------
# Links
# ---------------------------------------------------------------------------


def test_top_level_link_is_followed_inside_the_tree(ctx: Path, copy: Copy, img: Path) -> None:
    write(ctx / "real" / "file", "in-tree")
    (ctx / "abs").symlink_to("/real/file")  # absolute: the tree's /real, never the host's
    (ctx / "dirlink").symlink_to("real")
    plan = copy(["abs"], "/out/")
    assert (img / "out" / "abs").read_text() == "in-tree"
    assert not (img / "out" / "abs").is_symlink()
    assert plan.cache_id.startswith("file:")
    copy(["dirlink"], "/out2")
    assert (img / "out2" / "file").read_text() == "in-tree"


def test_links_inside_a_directory_are_kept(ctx: Path, copy: Copy, img: Path) -> None:
    write(ctx / "d" / "f", "data")
    (ctx / "d" / "sym").symlink_to("/etc/passwd")
    os.link(ctx / "d" / "f", ctx / "d" / "hard")
    copy(["d"], "/out")
    assert os.readlink(img / "out" / "sym") == "/etc/passwd"
    assert os.stat(img / "out" / "f").st_ino == os.stat(img / "out" / "hard").st_ino


# ---------------------------------------------------------------------------
# Destinations
# ---------------------------------------------------------------------------


def test_directory_content_is_copied_into_dest(ctx: Path, copy: Copy, img: Path) -> None:
    write(ctx / "d" / "x" / "y", "Y")
    write(ctx / "d" / "z", "Z")
    plan = copy(["d"], "/new/place")
    assert plan.dest_is_dir
    assert sorted(os.listdir(img / "new" / "place")) == ["x", "z"]
    assert (img / "new" / "place" / "x" / "y").read_text() == "Y"


def test_relative_dest_joins_workdir(ctx: Path, copy: Copy, img: Path) -> None:
    write(ctx / "a", "A")
    (img / "app").mkdir()
    plan = copy(["a"], ".", workdir="/app")
    assert plan.dest == "/app"
    assert (img / "app" / "a").read_text() == "A"
    assert plan.history_text() == f"COPY {plan.cache_id} in . "
    plan = copy(["a"], "sub/b", workdir="/app")
    assert plan.dest == "/app/sub/b"
    assert (img / "app" / "sub" / "b").read_text() == "A"


@pytest.mark.parametrize("keyword", ["COPY", "ADD"])
def test_several_sources_need_a_slash(ctx: Path, keyword: str) -> None:
    write(ctx / "a.txt")
    write(ctx / "b.txt")
    for srcs in (["a.txt", "b.txt"], ["*.txt"]):
        with pytest.raises(InvalidParameter) as err:
            plan_only(ctx, srcs, "/dest", keyword=keyword)
        assert err.value.message == (
            f"When using {keyword} with more than one source file, the destination must be "
            "a directory and end with a /")
    assert plan_only(ctx, ["*.txt"], "/dest/").cache_id.startswith("multi:")


def test_file_naming(ctx: Path, copy: Copy, img: Path) -> None:
    write(ctx / "a.txt", "A")
    copy(["a.txt"], "/slash/")
    assert (img / "slash" / "a.txt").read_text() == "A"
    (img / "existing").mkdir()
    plan = copy(["a.txt"], "/existing")
    assert not plan.dest_is_dir
    assert (img / "existing" / "a.txt").read_text() == "A"
    copy(["a.txt"], "/renamed")
    assert (img / "renamed").read_text() == "A"
    # an existing directory reached through a link of the image
    (img / "usr" / "bin").mkdir(parents=True)
    (img / "bin").symlink_to("usr/bin")
    copy(["a.txt"], "/bin")
    assert (img / "usr" / "bin" / "a.txt").read_text() == "A"
    copy(["a.txt"], "/bin/x")
    assert (img / "usr" / "bin" / "x").read_text() == "A"
    assert (img / "bin").is_symlink()


def test_parents_made_0755_for_the_owner(ctx: Path, copy: Copy, img: Path) -> None:
    write(ctx / "a", "A")
    (img / "keep").mkdir(mode=0o700)
    os.chown(img / "keep", 7, 7)
    copy(["a"], "/keep/new/deep/file", chown="42:43")
    for made in (img / "keep" / "new", img / "keep" / "new" / "deep"):
        assert stat.S_IMODE(os.stat(made).st_mode) == 0o755
        assert owner(made) == (42, 43)
    assert stat.S_IMODE(os.stat(img / "keep").st_mode) == 0o700
    assert owner(img / "keep") == (7, 7)
    copy(["a"], "/rootowned/file")
    assert owner(img / "rootowned") == (0, 0)


def test_not_a_directory_in_the_image(ctx: Path, copy: Copy, img: Path) -> None:
    write(ctx / "a", "A")
    write(img / "file", "F")
    with pytest.raises(InvalidParameter, match="/file is not a directory in the image"):
        copy(["a"], "/file/sub/")


# ---------------------------------------------------------------------------
# Ownership, modes, times
# ---------------------------------------------------------------------------


def test_copied_files_are_root_owned_and_keep_mode_and_mtime(
        ctx: Path, copy: Copy, img: Path) -> None:
    f = write(ctx / "d" / "tool", "#!")
    os.chown(f, 1000, 1000)
    os.chmod(f, 0o4751)  # after the chown, which clears it
    os.chown(ctx / "d", 1000, 1000)
    os.chmod(ctx / "d", 0o750)
    os.utime(f, (1_000_000_000, 1_000_000_000))
    os.mkdir(ctx / "d" / "sub", 0o711)
    os.utime(ctx / "d" / "sub", (1_200_000_000, 1_200_000_000))
    copy(["d"], "/out")
    out = img / "out" / "tool"
    assert owner(out) == (0, 0)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o4751
    assert os.stat(out).st_mtime == 1_000_000_000
    assert stat.S_IMODE(os.stat(img / "out" / "sub").st_mode) == 0o711
    assert os.stat(img / "out" / "sub").st_mtime == 1_200_000_000
    assert owner(img / "out" / "sub") == (0, 0)


def make_accounts(img: Path) -> None:
    write(img / "etc" / "passwd", "root:x:0:0:root:/root:/bin/sh\n"
          "app:x:1001:1002:App:/home/app:/bin/sh\nbroken:x:zz:1:::\n")
    write(img / "etc" / "group", "root:x:0:\nstaff:x:50:app\napp:x:1003:\n")


def test_chown_by_name(ctx: Path, copy: Copy, img: Path) -> None:
    make_accounts(img)
    write(ctx / "d" / "f")
    (ctx / "d" / "l").symlink_to("f")
    copy(["d"], "/o1", chown="app:staff")
    assert owner(img / "o1" / "f") == (1001, 50)
    assert owner(img / "o1" / "l") == (1001, 50)
    assert owner(img / "o1") == (1001, 50)
    copy(["d/f"], "/o2", chown="app")  # a lone name is the group's too (dockerd)
    assert owner(img / "o2") == (1001, 1003)
    copy(["d/f"], "/o3", chown="5:staff")
    assert owner(img / "o3") == (5, 50)
    copy(["d/f"], "/o4", chown="77")
    assert owner(img / "o4") == (77, 77)


def test_chown_errors(ctx: Path, copy: Copy, img: Path) -> None:
    make_accounts(img)
    write(ctx / "f")
    with pytest.raises(InvalidParameter) as err:
        copy(["f"], "/o", chown="ghost")
    assert err.value.message == (
        "unable to convert uid/gid chown string to host mapping: can't find uid for user "
        "ghost: no such user: ghost")
    with pytest.raises(InvalidParameter) as err:
        copy(["f"], "/o", chown="app:ghosts")
    assert err.value.message == (
        "unable to convert uid/gid chown string to host mapping: can't find gid for group "
        "ghosts: no such group: ghosts")
    with pytest.raises(InvalidParameter, match="broken"):
        copy(["f"], "/o", chown="broken:0")  # a row with a bad uid is no entry
    with pytest.raises(InvalidParameter, match="invalid chown string format"):
        copy(["f"], "/o", chown="a:b:c")
    assert not (img / "o").exists()


def test_passwd_of_the_image_must_be_a_regular_file(img: Path) -> None:
    (img / "etc").mkdir()
    os.mkfifo(img / "etc" / "passwd")  # an open would hang
    (img / "etc" / "group").symlink_to("/etc/group")  # resolves inside img: missing
    root = os.open(img, os.O_PATH | os.O_DIRECTORY)
    try:
        assert passwd.read_table(root, passwd.PASSWD) is None
        assert passwd.read_table(root, passwd.GROUP) is None
        with pytest.raises(InvalidParameter, match="can't find uid for user app"):
            copying.resolve_chown(root, "app")
    finally:
        os.close(root)


def test_chmod(ctx: Path, copy: Copy, img: Path) -> None:
    write(ctx / "d" / "f", mode=0o600)
    os.mkdir(ctx / "d" / "sub", 0o700)
    copy(["d"], "/o", chmod="0750")
    assert stat.S_IMODE(os.stat(img / "o" / "f").st_mode) == 0o750
    assert stat.S_IMODE(os.stat(img / "o" / "sub").st_mode) == 0o750
    copy(["d/f"], "/p", chmod="4755")
    assert stat.S_IMODE(os.stat(img / "p").st_mode) == 0o4755
    for bad in ("rwx", "0855", "77777", "-1", "0o755"):
        with pytest.raises(InvalidParameter, match=f"invalid --chmod value '{bad}'"):
            copy(["d/f"], "/q", chmod=bad)
    assert not (img / "q").exists()


# ---------------------------------------------------------------------------
# Cache ids
# ---------------------------------------------------------------------------


def test_cache_ids_and_history(ctx: Path) -> None:
    write(ctx / "a", "A")
    write(ctx / "d" / "b", "B")
    one = plan_only(ctx, ["a"], "/x")
    assert one.cache_id.startswith("file:") and len(one.cache_id) == 5 + 64
    assert plan_only(ctx, ["d"], "/x").cache_id.startswith("dir:")
    multi = plan_only(ctx, ["a", "d"], "/x/")
    assert multi.cache_id.startswith("multi:")
    assert multi.history_text() == f"COPY {multi.cache_id} in /x/ "
    assert multi.history_text("1:2") == f"COPY --chown=1:2{multi.cache_id} in /x/ "
    assert plan_only(ctx, ["d", "a"], "/x/").cache_id != multi.cache_id


def test_known_digests_are_used(ctx: Path) -> None:
    write(ctx / "d" / "f", "real")
    (ctx / "link").symlink_to("d/f")
    fake = "sha256:" + "0" * 64
    plain = Tree(ctx)
    told = Tree(ctx, {"d/f": fake})
    try:
        p1 = plan_copy(plain, ["d"], "/x", workdir="/")
        p2 = plan_copy(told, ["d"], "/x", workdir="/")
        assert told.asked == ["d/f"]
        assert p1.cache_id != p2.cache_id  # the context's digest stands for the content
        # through a link the path is not the file's name in the context: hashed here
        told.asked.clear()
        p3 = plan_copy(told, ["link"], "/x", workdir="/")
        assert told.asked == []
        assert p3.cache_id == plan_copy(plain, ["link"], "/x", workdir="/").cache_id
        # a true digest gives the id hashing gives
        real = Tree(ctx, {"d/f": "sha256:" + hashlib.sha256(b"real").hexdigest()})
        assert plan_copy(real, ["d"], "/x", workdir="/").cache_id == p1.cache_id
        real.close()
    finally:
        plain.close()
        told.close()


#: a small tree: relative path -> (content, mode), or a link target
Entry = tuple[bytes, int] | str
names = st.sampled_from(["a", "b", "c", "d.txt", "ü"])
paths = st.lists(names, min_size=1, max_size=3).map("/".join)
entries: st.SearchStrategy[Entry] = st.one_of(
    st.tuples(st.binary(max_size=20), st.sampled_from([0o644, 0o755, 0o600])),
    st.sampled_from(["a", "../b", "/x"]))


def build(root: Path, tree: dict[str, Entry]) -> None:
    for rel, what in sorted(tree.items()):
        p = root / rel
        if any(parent.is_file() or parent.is_symlink() for parent in p.parents
               if root in parent.parents):
            continue
        if p.exists() or p.is_symlink():
            continue
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(what, str):
            p.symlink_to(what)
        else:
            write(p, what[0], what[1])


def dir_id(root: Path) -> str:
    return plan_only(root, ["."], "/x").cache_id


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(paths, entries, min_size=1, max_size=6), st.data())
def test_cache_id_properties(tree: dict[str, Entry], data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build(root, tree)
        files = sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())
        first = dir_id(root)
        for p in root.rglob("*"):
            os.utime(p, (12345, 12345), follow_symlinks=False)
        assert dir_id(root) == first, "mtimes are not part of the id"
        if not files:
            return
        victim = data.draw(st.sampled_from(files))
        mode = stat.S_IMODE(victim.stat().st_mode)
        victim.chmod(mode ^ 0o001)
        assert dir_id(root) != first, "a mode is part of the id"
        victim.chmod(mode)
        assert dir_id(root) == first
        old = victim.read_bytes()
        victim.write_bytes(old + b"!")
        assert dir_id(root) != first, "the content is part of the id"
        victim.write_bytes(old)
        assert dir_id(root) == first
        victim.rename(victim.with_name(victim.name + "~"))
        assert dir_id(root) != first, "a name is part of the id"


def test_link_target_is_part_of_the_id(ctx: Path) -> None:
    (ctx / "l").symlink_to("a")
    first = dir_id(ctx)
    (ctx / "l").unlink()
    (ctx / "l").symlink_to("b")
    assert dir_id(ctx) != first


# ---------------------------------------------------------------------------
# A hostile destination
# ---------------------------------------------------------------------------


def test_hostile_destination_root(tmp_path: Path, ctx: Path, copy: Copy, img: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    marker = f"skiff-copy-test-{uuid.uuid4().hex}"
    write(ctx / "d" / marker / marker, "payload")
    write(ctx / marker, "payload")
    (img / "toroot").symlink_to("/")
    (img / "up").symlink_to("../../../../../..")
    (img / "out").symlink_to("../outside")
    (img / "loop").symlink_to("loop")
    (img / "victim").mkdir()
    (img / "victim" / marker).symlink_to("/tmp")  # replaced, never written through
    copy([marker], "/toroot/")
    copy([marker], "/up/tmp/")
    copy([marker], "/out/")
    copy([marker], f"/up/{marker}")
    copy(["d"], "/toroot/")
    copy(["d"], "/victim")
    copy(["d"], "/out/sub/")
    with pytest.raises(InvalidParameter):
        copy([marker], "/loop/x")
    assert os.listdir(outside) == []
    assert not os.path.exists(f"/{marker}")
    assert not os.path.exists(f"/tmp/{marker}")
    assert (img / "tmp" / marker).read_text() == "payload"
    assert (img / "outside" / marker).read_text() == "payload"
    assert (img / "outside" / "sub" / marker / marker).read_text() == "payload"
    assert (img / marker / marker).read_text() == "payload"  # "d" into /toroot/
    assert (img / "victim" / marker / marker).read_text() == "payload"
    assert not (img / "victim" / marker).is_symlink()


def test_no_descriptor_leaks(ctx: Path, copy: Copy) -> None:
    write(ctx / "d" / "e" / "f")
    copy(["d"], "/warm")
    before = len(os.listdir("/proc/self/fd"))
    for i in range(5):
        copy(["d", "d/e/f"], f"/o{i}/")
    with pytest.raises(InvalidParameter):
        copy(["nope"], "/x")
    assert len(os.listdir("/proc/self/fd")) == before + 2 * 6  # the fixture's own fds
