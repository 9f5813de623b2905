"""The build context (core/builder/context.py, statindex.py): formats, the size
limit, .dockerignore, the Dockerfile, hostile tars, digests and the stat fast path."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from skiff.core.builder.context import (
    MAX_DOCKERFILE,
    BuildContext,
    ContextError,
    receive_context,
)
from skiff.core.builder.contextstream import ContextStream, TooLarge
from skiff.core.builder.statindex import StatIndex
from skiff.core.errors import InvalidParameter

DOCKERFILE = b"FROM scratch\nCOPY . /\n"
NOT_TAR = "the build context is not a tar archive (plain, gzip, bzip2 or xz)"


@dataclass
class E:
    """One tar entry to write."""

    name: str
    data: bytes = b""
    type: bytes = tarfile.REGTYPE
    linkname: str = ""
    mode: int = 0o644
    mtime: float = 1_700_000_000
    uid: int = 1000
    gid: int = 1000


def tar(entries: list[E], compression: str = "", fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for e in entries:
            ti = tarfile.TarInfo(e.name)
            ti.type = e.type
            ti.mode = e.mode
            ti.mtime = e.mtime
            ti.uid, ti.gid = e.uid, e.gid
            ti.linkname = e.linkname
            if e.type == tarfile.REGTYPE:
                ti.size = len(e.data)
                tf.addfile(ti, io.BytesIO(e.data))
            else:
                tf.addfile(ti)
    raw = buf.getvalue()
    if compression == "gz":
        return gzip.compress(raw)
    if compression == "bz2":
        return bz2.compress(raw)
    if compression == "xz":
        return lzma.compress(raw)
    return raw


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def on_disk(root: str) -> dict[str, bytes | None]:
    """Every path under ``root``: a regular file's content, None for the rest."""
    out: dict[str, bytes | None] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            if os.path.isfile(full) and not os.path.islink(full):
                out[rel] = Path(full).read_bytes()
            else:
                out[rel] = None
    return out


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[str]:
    d = tmp_path / "spool"
    d.mkdir()
    before = open_fds()
    yield str(d)
    # whatever the test did, nothing is left open (a few fds may come and go
    # with the interpreter; the context's own must not stay)
    leaked = {fd for fd in open_fds() - before
              if os.path.exists(f"/proc/self/fd/{fd}")
              and os.readlink(f"/proc/self/fd/{fd}").startswith(str(d))}
    assert not leaked


def receive(data: bytes, spool: str, **kw: object) -> BuildContext:
    kw.setdefault("max_size", 1 << 30)
    return receive_context(io.BytesIO(data), spool_dir=spool, **kw)  # type: ignore[arg-type]


def refused(data: bytes, spool: str, **kw: object) -> str:
    with pytest.raises(ContextError) as info:
        receive(data, spool, **kw)
    assert os.listdir(spool) == []  # nothing left behind
    return info.value.message


TREE = [
    E("Dockerfile", DOCKERFILE),
    E("src", type=tarfile.DIRTYPE, mode=0o750),
    E("src/main.py", b"print('hi')\n", mode=0o755, uid=0, gid=50),
    E("src/empty", b""),
    E("src/link", type=tarfile.SYMTYPE, linkname="../outside/anywhere"),
    E("src/hard", type=tarfile.LNKTYPE, linkname="src/main.py"),
    E("suid", b"x", mode=0o4755),
]


# -- formats ---------------------------------------------------------------


@pytest.mark.parametrize("compression", ["", "gz", "bz2", "xz"])
def test_formats_unpack_and_record(spool: str, compression: str) -> None:
    data = tar(TREE, compression)
    with receive(data, spool) as ctx:
        assert ctx.dockerfile == DOCKERFILE
        assert ctx.dockerfile_name == "Dockerfile"
        assert ctx.size == len(tar(TREE))  # decompressed bytes
        assert set(ctx.files) == {"Dockerfile", "src", "src/main.py", "src/empty", "src/link",
                                  "src/hard", "suid"}
        main = ctx.files["src/main.py"]
        assert (main.kind, main.mode, main.uid, main.gid, main.size) == ("file", 0o755, 0, 50, 12)
        assert main.mtime == 1_700_000_000
        assert main.digest == sha(b"print('hi')\n") == ctx.digest_of("src/main.py")
        assert ctx.files["src/empty"].digest == sha(b"")
        assert ctx.files["src"].kind == "dir" and ctx.files["src"].mode == 0o750
        assert ctx.files["src"].digest is None and ctx.digest_of("src") is None
        link = ctx.files["src/link"]
        assert (link.kind, link.linkname, link.digest) == ("symlink", "../outside/anywhere", None)
        hard = ctx.files["src/hard"]
        assert (hard.kind, hard.linkname, hard.digest) == ("hardlink", "src/main.py", main.digest)
        assert ctx.files["suid"].mode == 0o4755
        assert ctx.digest_of("nope") is None
        disk = on_disk(ctx.root)
        assert disk["src/main.py"] == disk["src/hard"] == b"print('hi')\n"
        assert os.readlink(os.path.join(ctx.root, "src/link")) == "../outside/anywhere"
        assert os.stat(os.path.join(ctx.root, "src/hard")).st_nlink == 2
        assert os.stat(os.path.join(ctx.root, "suid")).st_mode & 0o7777 == 0o4755
        # the directory itself is private, whatever the tar says of "."
        assert os.stat(ctx.root).st_mode & 0o777 == 0o700
        assert ctx.hashed == 4 and ctx.reused == 0
        root = ctx.root
    assert not os.path.exists(root)


def test_root_fd_is_o_path_and_close_is_idempotent(spool: str) -> None:
    ctx = receive(tar(TREE), spool)
    flags = int(Path(f"/proc/self/fdinfo/{ctx.root_fd}").read_text().split("flags:")[1].split()[0],
                8)
    assert flags & os.O_PATH
    assert os.path.samefile(f"/proc/self/fd/{ctx.root_fd}", ctx.root)
    ctx.close()
    ctx.close()
    assert os.listdir(spool) == []


def test_zstd_is_refused_by_name(spool: str) -> None:
    msg = refused(b"\x28\xb5\x2f\xfd" + os.urandom(100), spool)
    assert "zstd" in msg and "gzip, bzip2 or xz" in msg


@pytest.mark.parametrize("data", [
    b"this is not a tar archive at all\n" * 40,
    b"short",
    gzip.compress(b"a gzip of plain text, not of a tar\n" * 40),
])
def test_not_a_tar(spool: str, data: bytes) -> None:
    assert refused(data, spool) == NOT_TAR


def test_corrupt_gzip(spool: str) -> None:
    data = tar(TREE, "gz")
    msg = refused(data[: len(data) // 2], spool)
    assert "gzip" in msg or "corrupt" in msg


def test_empty_body_is_an_empty_context(spool: str) -> None:
    assert refused(b"", spool) == "Cannot locate specified Dockerfile: Dockerfile"


def test_context_error_is_a_bad_parameter() -> None:
    assert issubclass(ContextError, InvalidParameter)


def test_devices_and_fifos_are_recorded_not_created(spool: str) -> None:
    entries = [E("Dockerfile", DOCKERFILE), E("dev/null", type=tarfile.CHRTYPE),
               E("dev/sda", type=tarfile.BLKTYPE), E("pipe", type=tarfile.FIFOTYPE)]
    with receive(tar(entries), spool) as ctx:
        assert {ctx.files[p].kind for p in ("dev/null", "dev/sda", "pipe")} == {"other"}
        assert not os.path.lexists(os.path.join(ctx.root, "dev/null"))
        assert not os.path.lexists(os.path.join(ctx.root, "pipe"))


def test_a_later_entry_replaces_an_earlier_one(spool: str) -> None:
    entries = [E("Dockerfile", DOCKERFILE), E("d", type=tarfile.DIRTYPE), E("d/x", b"1"),
               E("d", b"now a file"), E("f", b"old"), E("f", b"new")]
    with receive(tar(entries), spool) as ctx:
        assert "d/x" not in ctx.files
        assert ctx.files["d"].kind == "file" and ctx.files["d"].digest == sha(b"now a file")
        assert ctx.files["f"].digest == sha(b"new")
        assert on_disk(ctx.root)["d"] == b"now a file"


def test_pax_mtime_keeps_its_fraction(spool: str) -> None:
    entries = [E("Dockerfile", DOCKERFILE), E("f", b"x", mtime=1_700_000_000.25)]
    with receive(tar(entries), spool) as ctx:
        assert ctx.files["f"].mtime == 1_700_000_000.25


# -- the size limit --------------------------------------------------------


class Body(io.RawIOBase):
    """A request body that remembers how much was read from it."""

    def __init__(self, data: bytes) -> None:
        self.inner = io.BytesIO(data)
        self.reads: list[int] = []

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        self.reads.append(n)
        return self.inner.read(n)


LIMIT_MSG = ("the build context is larger than the daemon allows (1048576 bytes); exclude "
             "files with .dockerignore or set builder-max-context-size in daemon.json")


def test_size_limit_stops_reading(spool: str) -> None:
    data = tar([E("Dockerfile", DOCKERFILE), E("big", os.urandom(8 << 20))])
    body = Body(data)
    with pytest.raises(ContextError) as info:
        receive_context(body, spool_dir=spool, max_size=1 << 20)  # type: ignore[arg-type]
    assert info.value.message == LIMIT_MSG
    assert body.inner.tell() <= 3 << 20  # the rest of the body was never read
    assert all(n <= 1 << 20 for n in body.reads)  # in chunks of at most 1 MiB
    assert os.listdir(spool) == []


def test_size_limit_exactly_at_the_limit_is_fine(spool: str) -> None:
    data = tar([E("Dockerfile", DOCKERFILE)])
    with receive(data, spool, max_size=len(data)) as ctx:
        assert ctx.size == len(data)
    assert refused(data, spool, max_size=len(data) - 1) .startswith(
        "the build context is larger than the daemon allows")


@pytest.mark.parametrize("compression", ["gz", "bz2", "xz"])
def test_compression_bomb_is_refused_early(spool: str, compression: str) -> None:
    # ~100 KiB that inflate to 64 MiB: refused at 1 MiB, long before the end
    data = tar([E("Dockerfile", DOCKERFILE), E("zeros", bytes(64 << 20))], compression)
    assert len(data) < 1 << 20
    body = Body(data)
    with pytest.raises(ContextError) as info:
        receive_context(body, spool_dir=spool, max_size=1 << 20)  # type: ignore[arg-type]
    assert info.value.message == LIMIT_MSG
    assert os.listdir(spool) == []


def test_context_stream_inflates_no_more_than_the_limit() -> None:
    # a member that inflates 64 MiB, then 4 MiB more the reader must never get to
    bomb = gzip.compress(bytes(64 << 20), compresslevel=9) + gzip.compress(os.urandom(4 << 20))
    body = Body(bomb)
    stream = ContextStream(body, 1 << 20)
    assert stream.format == "gzip"
    got = 0
    with pytest.raises(TooLarge):
        while True:
            chunk = stream.read(1 << 20)
            assert chunk
            got += len(chunk)
    assert got <= 1 << 20 and stream.count == (1 << 20) + 1  # one byte past, then stop
    assert body.inner.tell() <= 2 << 20  # the rest of the body was never read


# -- .dockerignore ---------------------------------------------------------

IGNORE = b"# build output\n*.log\nbuild\n!build/keep.txt\nDockerfile\n.dockerignore\n"
IGNORED_TREE = [
    E("Dockerfile", DOCKERFILE),
    E("app.py", b"app"),
    E("debug.log", b"log"),
    E("sub", type=tarfile.DIRTYPE),
    E("sub/trace.log", b"nested logs stay: *.log is the root only"),
    E("build", type=tarfile.DIRTYPE, mode=0o700),
    E("build/out.bin", b"out"),
    E("build/deep", type=tarfile.DIRTYPE),
    E("build/deep/x", b"x"),
    E("build/keep.txt", b"keep"),
]


@pytest.mark.parametrize("where", ["first", "last", "middle"])
def test_dockerignore_in_any_position(spool: str, where: str) -> None:
    ign = E(".dockerignore", IGNORE)
    entries = {"first": [ign, *IGNORED_TREE], "last": [*IGNORED_TREE, ign],
               "middle": [*IGNORED_TREE[:5], ign, *IGNORED_TREE[5:]]}[where]
    with receive(tar(entries), spool) as ctx:
        assert ctx.dockerfile == DOCKERFILE  # read, though excluded
        assert set(ctx.files) == {"app.py", "sub", "sub/trace.log", "build", "build/keep.txt"}
        # excluded, but the parent of an exception: a plain parent, as the CLI implies it
        build = ctx.files["build"]
        assert (build.kind, build.mode, build.uid, build.gid) == ("dir", 0o755, 0, 0)
        assert on_disk(ctx.root) == {"app.py": b"app", "sub": None,
                                     "sub/trace.log": b"nested logs stay: *.log is the root only",
                                     "build": None, "build/keep.txt": b"keep"}
        assert os.stat(os.path.join(ctx.root, "build")).st_mode & 0o777 == 0o755


def test_dockerignore_keeps_dockerfile_unless_excluded(spool: str) -> None:
    entries = [E(".dockerignore", b"*.log\n"), E("Dockerfile", DOCKERFILE), E("a.log", b"")]
    with receive(tar(entries), spool) as ctx:
        assert set(ctx.files) == {".dockerignore", "Dockerfile"}


def test_dockerignore_excluding_everything_but_one(spool: str) -> None:
    entries = [E(".dockerignore", b"*\n!keep\n"), E("Dockerfile", DOCKERFILE),
               E("keep", b"k"), E("d", type=tarfile.DIRTYPE), E("d/f", b"f")]
    with receive(tar(entries), spool) as ctx:
        assert set(ctx.files) == {"keep"}
        assert ctx.dockerfile == DOCKERFILE
        assert on_disk(ctx.root) == {"keep": b"k"}


def test_dockerignore_excluded_dockerfile_in_a_subdirectory(spool: str) -> None:
    entries = [E("ci/Dockerfile", DOCKERFILE), E(".dockerignore", b"ci\n"), E("a", b"a")]
    with receive(tar(entries), spool, dockerfile="ci/Dockerfile") as ctx:
        assert ctx.dockerfile == DOCKERFILE
        assert set(ctx.files) == {".dockerignore", "a"}
        assert not os.path.lexists(os.path.join(ctx.root, "ci"))


def test_bad_dockerignore_pattern(spool: str) -> None:
    msg = refused(tar([E(".dockerignore", b"[unclosed\n"), E("Dockerfile", DOCKERFILE)]),
                  spool)
    assert msg.startswith(".dockerignore:")


def test_hard_link_whose_target_is_excluded_later_stands_alone(spool: str) -> None:
    entries = [E("Dockerfile", DOCKERFILE), E("t.log", b"data"),
               E("h", type=tarfile.LNKTYPE, linkname="t.log"), E(".dockerignore", b"*.log\n")]
    with receive(tar(entries), spool) as ctx:
        assert "t.log" not in ctx.files
        h = ctx.files["h"]
        assert (h.kind, h.linkname, h.digest) == ("file", "", sha(b"data"))
        assert on_disk(ctx.root)["h"] == b"data"


# -- the Dockerfile --------------------------------------------------------


@pytest.mark.parametrize("name", ["sub/Dockerfile.dev", "./sub//Dockerfile.dev",
                                  "/sub/Dockerfile.dev", "sub/../sub/Dockerfile.dev"])
def test_dockerfile_in_a_subdirectory(spool: str, name: str) -> None:
    entries = [E("sub/Dockerfile.dev", b"FROM busybox\n")]
    with receive(tar(entries), spool, dockerfile=name) as ctx:
        assert ctx.dockerfile == b"FROM busybox\n"
        assert ctx.dockerfile_name == "sub/Dockerfile.dev"


def test_dockerfile_missing(spool: str) -> None:
    msg = refused(tar([E("a", b"")]), spool, dockerfile="nope/Dockerfile")
    assert msg == "Cannot locate specified Dockerfile: nope/Dockerfile"


def test_lowercase_dockerfile_for_the_default_name_only(spool: str) -> None:
    data = tar([E("dockerfile", b"FROM lower\n")])
    with receive(data, spool) as ctx:
        assert ctx.dockerfile == b"FROM lower\n" and ctx.dockerfile_name == "dockerfile"
    assert refused(data, spool, dockerfile="other") == (
        "Cannot locate specified Dockerfile: other")


@pytest.mark.parametrize("name", ["../x", "../../etc/passwd", "a/../../x"])
def test_dockerfile_outside_the_context(spool: str, name: str) -> None:
    msg = refused(tar([E("Dockerfile", DOCKERFILE)]), spool, dockerfile=name)
    assert "outside the build context" in msg


def test_dockerfile_symlink_stays_in_the_context(spool: str) -> None:
    entries = [E("real", b"FROM real\n"), E("Dockerfile", type=tarfile.SYMTYPE,
                                            linkname="/real")]
    with receive(tar(entries), spool) as ctx:
        assert ctx.dockerfile == b"FROM real\n"
    escaping = [E("Dockerfile", type=tarfile.SYMTYPE, linkname="../../../../../etc/hostname")]
    assert refused(tar(escaping), spool) == "Cannot locate specified Dockerfile: Dockerfile"


def test_dockerfile_directory_or_too_large(spool: str) -> None:
    msg = refused(tar([E("Dockerfile", type=tarfile.DIRTYPE)]), spool)
    assert "not a regular file" in msg
    big = tar([E("Dockerfile", b"#" * (MAX_DOCKERFILE + 1))])
    assert str(MAX_DOCKERFILE) in refused(big, spool)


# -- hostile tars ----------------------------------------------------------


def test_climbing_names_write_nothing_outside(tmp_path: Path, spool: str) -> None:
    before = sorted(os.listdir(tmp_path))
    for name in ("../escape", "a/../../escape", "../spool/escape"):
        msg = refused(tar([E("Dockerfile", DOCKERFILE), E(name, b"evil")]), spool)
        assert msg == (f"refusing build context entry {name!r}: the path climbs out of the "
                       "build context root")
    assert sorted(os.listdir(tmp_path)) == before
    assert os.listdir(spool) == []


def test_absolute_names_land_inside(spool: str) -> None:
    with receive(tar([E("/Dockerfile", DOCKERFILE), E("/etc/x", b"in")]), spool) as ctx:
        assert ctx.files["etc/x"].digest == sha(b"in")
        assert on_disk(ctx.root)["etc/x"] == b"in"


def test_symlink_parent_trick(tmp_path: Path, spool: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    # "a" -> "/", then a name through it (aimed into tmp_path, harmless if it got there)
    through_root = "a" + str(outside / "x")
    for entries in (
        [E("a", type=tarfile.SYMTYPE, linkname="/"), E(through_root, b"evil")],
        [E("a", type=tarfile.SYMTYPE, linkname=str(outside)), E("a/x", b"evil")],
        [E("a", type=tarfile.SYMTYPE, linkname="../.."), E("a/x", b"evil")],
    ):
        msg = refused(tar([E("Dockerfile", DOCKERFILE), *entries]), spool)
        assert "symbolic link" in msg
        assert os.listdir(outside) == []


def test_hard_link_out_of_the_context(spool: str) -> None:
    msg = refused(tar([E("Dockerfile", DOCKERFILE),
                       E("h", type=tarfile.LNKTYPE, linkname="../../etc/passwd")]), spool)
    assert "climbs out" in msg
    msg = refused(tar([E("Dockerfile", DOCKERFILE),
                       E("h", type=tarfile.LNKTYPE, linkname="missing")]), spool)
    assert "does not exist" in msg


def test_too_deep_is_refused_and_cleaned_up(spool: str) -> None:
    from skiff.core.fdops import REMOVE_DEPTH

    ok = "/".join(["d"] * (REMOVE_DEPTH - 1))
    with receive(tar([E("Dockerfile", DOCKERFILE), E(ok, b"deep")]), spool) as ctx:
        assert ctx.files[ok].digest == sha(b"deep")
    msg = refused(tar([E("Dockerfile", DOCKERFILE), E(ok + "/more", b"deeper")]), spool)
    assert "nested more than" in msg


def test_whiteout_names_are_plain_files(spool: str) -> None:
    entries = [E("Dockerfile", DOCKERFILE), E("x", b"x"), E(".wh.x", b"w"),
               E(".wh..wh..opq", b"o")]
    with receive(tar(entries), spool) as ctx:
        assert on_disk(ctx.root) == {"Dockerfile": DOCKERFILE, "x": b"x", ".wh.x": b"w",
                                     ".wh..wh..opq": b"o"}


# -- the stat fast path ----------------------------------------------------

FAST_TREE = [E("Dockerfile", DOCKERFILE), E("a", b"alpha" * 1000), E("d/b", b"beta"),
             E("d/c", b"")]


def test_fast_path_reuses_every_digest(tmp_path: Path, spool: str) -> None:
    path = str(tmp_path / "index" / "stat.json")
    data = tar(FAST_TREE, "gz")
    with receive(data, spool, index=StatIndex(path)) as first:
        assert (first.hashed, first.reused) == (4, 0)
        digests = {p: f.digest for p, f in first.files.items()}
    assert os.stat(path).st_mode & 0o777 == 0o600
    with receive(data, spool, index=StatIndex(path)) as second:
        assert (second.hashed, second.reused) == (0, 4)
        assert {p: f.digest for p, f in second.files.items()} == digests
        assert digests["a"] == sha(b"alpha" * 1000)


def test_fast_path_catches_other_content_with_the_same_stat(tmp_path: Path, spool: str) -> None:
    index = StatIndex(str(tmp_path / "stat.json"))
    with receive(tar(FAST_TREE), spool, index=index):
        pass
    # another checkout: same path, size, mtime, mode and owner; other bytes
    changed = [*FAST_TREE[:2], E("d/b", b"BETA"), FAST_TREE[3]]
    with receive(tar(changed), spool, index=index) as ctx:
        assert (ctx.hashed, ctx.reused) == (1, 3)
        assert ctx.files["d/b"].digest == sha(b"BETA")
    with receive(tar(changed), spool, index=index) as again:
        assert (again.hashed, again.reused) == (0, 4)  # the new content was recorded


def test_fast_path_keys_on_stat(tmp_path: Path, spool: str) -> None:
    index = StatIndex(str(tmp_path / "stat.json"))
    with receive(tar(FAST_TREE), spool, index=index):
        pass
    touched = [*FAST_TREE[:3], E("d/c", b"", mtime=1_800_000_000)]
    with receive(tar(touched), spool, index=index) as ctx:
        assert (ctx.hashed, ctx.reused) == (1, 3)


def test_garbage_index_is_ignored_with_a_warning(tmp_path: Path, spool: str) -> None:
    path = tmp_path / "stat.json"
    for garbage in (b"\x00\xffnot json", b'{"version": 1, "entries": {"k": [1]}}', b"[]"):
        path.write_bytes(garbage)
        with capture_logs() as logs:
            index = StatIndex(str(path))
        assert [e["log_level"] for e in logs] == ["warning"]
        assert logs[0]["event"] == "builder.statindex_ignored"
        with receive(tar(FAST_TREE), spool, index=index) as ctx:
            assert (ctx.hashed, ctx.reused) == (4, 0)
        assert json.loads(path.read_bytes())["version"] == 1  # rewritten whole


def test_index_is_bounded_oldest_first(tmp_path: Path) -> None:
    path = str(tmp_path / "stat.json")
    index = StatIndex(path, max_entries=3)
    keys = [(f"f{i}", i, 0, 0o644, 0, 0) for i in range(5)]
    for k in keys:
        index.put(k, 1, sha(b""))
    assert len(index) == 3
    assert keys[0] not in index and keys[1] not in index and keys[4] in index
    assert index.get(keys[2]) == (1, sha(b""))  # a use: now the newest
    index.put(("g", 0, 0, 0, 0, 0), 1, sha(b""))
    assert keys[3] not in index and keys[2] in index
    index.save()
    reloaded = StatIndex(path, max_entries=2)
    assert len(reloaded) == 2


def test_index_save_only_when_changed(tmp_path: Path) -> None:
    path = tmp_path / "stat.json"
    index = StatIndex(str(path))
    index.save()
    assert not path.exists()
    index.put(("p", 1, 2, 3, 4, 5), 7, sha(b"x"))
    index.save()
    assert path.exists()
    mtime = path.stat().st_mtime_ns
    index.put(("p", 1, 2, 3, 4, 5), 7, sha(b"x"))
    index.save()
    assert path.stat().st_mtime_ns == mtime


# -- random trees ----------------------------------------------------------

_names = st.text(alphabet="abc.-_ é", min_size=1, max_size=4).filter(
    lambda s: s not in (".", "..") and s.strip() == s)
_paths = st.lists(_names, min_size=1, max_size=3).map("/".join)


def _consistent(tree: dict[str, bytes]) -> dict[str, bytes]:
    """Drop paths that another path needs as a directory."""
    dirs = {"/".join(p.split("/")[:i]) for p in tree for i in range(1, p.count("/") + 1)}
    return {p: d for p, d in tree.items() if p not in dirs and p != "Dockerfile"}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(tree=st.dictionaries(_paths, st.binary(max_size=3000), max_size=12),
       compression=st.sampled_from(["", "gz"]),
       fmt=st.sampled_from([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT]))
def test_random_trees_round_trip(spool: str, tree: dict[str, bytes], compression: str,
                                 fmt: int) -> None:
    tree = _consistent(tree)
    entries = [E("Dockerfile", DOCKERFILE)] + [E(p, d) for p, d in sorted(tree.items())]
    with receive(tar(entries, compression, fmt), spool) as ctx:
        disk = on_disk(ctx.root)
        for path, data in tree.items():
            assert ctx.files[path].digest == sha(data)
            assert disk[path] == data
        # every directory on disk is recorded (the tar listed none of them)
        assert set(disk) == set(ctx.files)
        assert all(ctx.files[p].kind == "dir" for p in disk if disk[p] is None)
    assert os.listdir(spool) == []


_PATTERNS = ["*.txt", "a", "!a/b*", "**/c", "b/**", "!**/keep", "a/*/x", "!a", "c/c",
             "Dockerfile"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(tree=st.dictionaries(st.lists(st.sampled_from(["a", "b", "c", "x", "keep", "n.txt"]),
                                     min_size=1, max_size=3).map("/".join),
                            st.binary(max_size=50), max_size=10),
       patterns=st.lists(st.sampled_from(_PATTERNS), max_size=5))
def test_dockerignore_order_does_not_matter(spool: str, tree: dict[str, bytes],
                                            patterns: list[str]) -> None:
    """The same context with .dockerignore first or last: the same result, and
    it is what the matcher says, with the directories the CLI would list."""
    from skiff.core.dockerfile.ignore import IgnoreMatcher

    tree = _consistent(tree)
    dirs = sorted({"/".join(p.split("/")[:i]) for p in tree for i in range(1, p.count("/") + 1)})
    body = ([E(d, type=tarfile.DIRTYPE, mode=0o700) for d in dirs]
            + [E(p, d) for p, d in sorted(tree.items())] + [E("Dockerfile", DOCKERFILE)])
    ignore = E(".dockerignore", "\n".join(patterns).encode())
    matcher = IgnoreMatcher(patterns)
    results = []
    for entries in ([ignore, *body], [*body, ignore]):
        with receive(tar(entries), spool) as ctx:
            assert ctx.dockerfile == DOCKERFILE
            files = {p: (f.kind, f.digest) for p, f in ctx.files.items()}
            assert {p for p, f in ctx.files.items() if f.kind == "file"} == {
                p for p in [*tree, "Dockerfile", ".dockerignore"] if not matcher.excluded(p)}
            for p, f in ctx.files.items():
                if f.kind == "dir" and matcher.excluded(p):
                    assert f.mode == 0o755  # only as the parent of something kept
            results.append((files, on_disk(ctx.root)))
            assert set(results[-1][1]) == set(files)
    assert results[0] == results[1]


def _unterminated(entries: list[E]) -> bytes:
    """A tar as the docker CLI's ``-f -`` rewrites it: it ends right after the
    last file's data (no padding, no end blocks)."""
    raw = tar(entries)
    last = entries[-1]
    end = raw.rindex(last.data) + len(last.data)
    return raw[:end]


def test_a_tar_without_its_end_blocks_is_taken_as_go_takes_it(spool: str) -> None:
    data = _unterminated([E("Dockerfile", DOCKERFILE), E(".dockerignore", b"x\n")])
    assert len(data) % 512 != 0
    with receive(data, spool) as ctx:
        assert ctx.files[".dockerignore"].digest == sha(b"x\n")
        assert ctx.dockerfile == DOCKERFILE


def test_a_tar_cut_inside_a_file_is_still_corrupt(spool: str) -> None:
    data = _unterminated([E("Dockerfile", DOCKERFILE), E("big", b"y" * 3000)])
    assert "cut short" in refused(data[:-1000], spool)


def test_small_plain_contexts_unpack_in_the_memory_spool(
        spool: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from skiff.core.builder import contextstream as context_module

    memory = tmp_path / "memory"
    memory.mkdir()
    small = tar([E("Dockerfile", DOCKERFILE), E("a", b"a" * 100)])
    with receive(small, spool, memory_spool=str(memory)) as ctx:
        assert ctx.root.startswith(str(memory))
        assert ctx.files["a"].digest == sha(b"a" * 100)
    with receive(tar([E("Dockerfile", DOCKERFILE)], "gz"), spool,
                 memory_spool=str(memory)) as ctx:
        assert ctx.root.startswith(spool)  # compressed: its size on disk is unknown
    monkeypatch.setattr(context_module, "MEMORY_CONTEXT_LIMIT", 2048)
    big = tar([E("Dockerfile", DOCKERFILE), E("b", bytes(range(256)) * 40)])
    with receive(big, spool, memory_spool=str(memory)) as ctx:
        assert ctx.root.startswith(spool)  # read past the limit: streamed to disk, whole
        assert ctx.files["b"].digest == sha(bytes(range(256)) * 40)
    assert os.listdir(memory) == []
