"""Conformance suite for storage drivers, run against every registered driver.

Drivers come from the ``skiff.storage`` entry points (``load_plugins``), so a
third-party driver installed in the same environment is tested like the
built-in ones.  ``SKIFF_STORAGE_DRIVERS=name1,name2`` narrows the run.  A
driver whose factory raises ``DriverNotSupported`` here is skipped with its
reason, unless ``SKIFF_REQUIRE_DRIVERS=name1,name2`` names it: then the run
fails, so a CI that is meant to cover a driver cannot go green without it
(scripts/test.sh requires overlay2, vfs and btrfs).  btrfs needs a btrfs
data-root: when the temporary directory is not on btrfs, the run makes one
loop-mounted btrfs filesystem (tests/loopfs.py) and gives btrfs its data-roots
there.

The yardstick is a reference model (``_storage_model``): layer tars are applied
to a dict with the OCI image spec's rules, and every view a driver gives of a
layer -- ``get()`` on the host, and the mounts ``mounts()`` describes,
performed in a private mount namespace as a container init would -- must list
the same as the model: types, modes, owners, mtimes, content, link targets,
devices, xattrs and hard-link groups.  Each test runs on its own data-root and
must leave no mount under it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from skiff.core.hookspecs import DriverNotSupported, StorageContext, StorageDriver
from skiff.core.plugins import load_plugins
from tests.conformance import _storage_model as sm
from tests.conformance._storage_model import CAP_NET_BIND, Entry
from tests.loopfs import have_mkfs, loop_filesystem

MODEL_SCRIPT = Path(sm.__file__).resolve()
REPO = MODEL_SCRIPT.parents[2]


def _driver_names() -> list[str]:
    available = load_plugins().drivers.get("storage", {})
    chosen = os.environ.get("SKIFF_STORAGE_DRIVERS", "").strip()
    if not chosen:
        return sorted(available)
    names = [n.strip() for n in chosen.split(",") if n.strip()]
    missing = [n for n in names if n not in available]
    if missing:
        raise RuntimeError(
            f"SKIFF_STORAGE_DRIVERS names {missing}, not installed; installed: {sorted(available)}"
        )
    return names


def _required_names() -> frozenset[str]:
    raw = os.environ.get("SKIFF_REQUIRE_DRIVERS", "")
    required = frozenset(n.strip() for n in raw.split(",") if n.strip())
    installed = load_plugins().drivers.get("storage", {})
    missing = sorted(required - set(installed))
    if missing:
        raise RuntimeError(
            f"SKIFF_REQUIRE_DRIVERS names {missing}, not installed; installed: {sorted(installed)}"
        )
    return required


DRIVERS = _driver_names()
REQUIRED = _required_names()
#: data-roots of drivers that need a filesystem of their own kind, set up once per run
_FS_ROOTS: dict[str, Path] = {}


@pytest.fixture(scope="module", autouse=True)
def _btrfs_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One loop-mounted btrfs for the btrfs driver's data-roots (mkfs per test would cost more).

    Module-scoped: a session-wide mount would outlive this module and fail the
    runtime tests' per-test leak check."""
    if "btrfs" not in DRIVERS or not have_mkfs("btrfs") or os.geteuid() != 0:
        yield
        return
    with loop_filesystem(tmp_path_factory.mktemp("btrfs-root"), "btrfs") as point:
        _FS_ROOTS["btrfs"] = point
        try:
            yield
        finally:
            _FS_ROOTS.pop("btrfs", None)


@contextlib.contextmanager
def storage(name: str) -> Iterator[tuple[StorageDriver, Path]]:
    """A fresh driver on its own data-root; checks for leftover mounts, then deletes all."""
    factory = load_plugins().factory("storage", name)
    parent = _FS_ROOTS.get(name)
    base = Path(tempfile.mkdtemp(prefix="skiff-storage-", dir=parent))
    try:
        data_root = base / "data"
        data_root.mkdir()
        try:
            driver = factory(StorageContext(home=str(data_root / name),
                                            data_root=str(data_root), options={}))
        except DriverNotSupported as exc:
            if name in REQUIRED:
                pytest.fail(f"{name} is required (SKIFF_REQUIRE_DRIVERS) but not supported"
                            f" here: {exc}", pytrace=False)
            pytest.skip(f"{name} is not supported here: {exc}")
        try:
            yield driver, base
        finally:
            driver.cleanup()
        left = sm.mount_points_under(str(base))
        assert not left, f"{name} left mounts behind: {left}"
    finally:
        for point in reversed(sm.mount_points_under(str(base))):
            subprocess.run(["umount", "-l", point], check=False)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(params=DRIVERS)
def env(request: pytest.FixtureRequest) -> Iterator[tuple[StorageDriver, Path]]:
    with storage(request.param) as pair:
        yield pair


def view(driver: StorageDriver, layer: str) -> dict[str, Any]:
    """The layer as ``get()`` shows it on the host."""
    root = driver.get(layer)
    try:
        return sm.listing(root)
    finally:
        driver.put(layer)


def view_in_namespace(driver: StorageDriver, layer: str, base: Path,
                      actions: list[list[Any]] | None = None) -> dict[str, Any]:
    """The layer as a container sees it: ``mounts()`` performed in a private namespace."""
    target = tempfile.mkdtemp(prefix="rootfs-", dir=base)
    try:
        job = {"mounts": [m.to_json() for m in driver.mounts(layer)], "target": target,
               "actions": actions or []}
        proc = subprocess.run(
            ["unshare", "-m", "--propagation", "private", sys.executable, str(MODEL_SCRIPT)],
            input=json.dumps(job), capture_output=True, text=True, cwd=REPO, check=False,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        assert proc.returncode == 0, f"mounting {job['mounts']} failed: {proc.stderr}"
        return json.loads(proc.stdout)
    finally:
        os.rmdir(target)


def apply_layer(driver: StorageDriver, layer: str, parent: str | None,
                entries: list[Entry]) -> int:
    import io

    driver.create(layer, parent)
    return driver.apply_diff(layer, parent, io.BytesIO(sm.tar_bytes(entries)))


def changes(driver: StorageDriver, layer: str, parent: str | None) -> list[tuple[str, int]]:
    return [(c.path, c.kind) for c in driver.changes(layer, parent)]


def assert_same(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    a, e = actual["entries"], expected["entries"]
    assert sorted(a) == sorted(e), (
        f"paths differ: extra {sorted(set(a) - set(e))}, missing {sorted(set(e) - set(a))}"
    )
    wrong = {p: {"actual": a[p], "expected": e[p]} for p in e if a[p] != e[p]}
    assert not wrong, f"entries differ: {wrong}"
    assert actual["links"] == expected["links"]


# ---------------------------------------------------------------------------
# A hand-written three-layer stack that exercises every kind of entry
# ---------------------------------------------------------------------------

T0 = 1_600_000_000


def d(path: str, mode: int = 0o755, uid: int = 0, gid: int = 0, t: int = T0, **kw: Any) -> Entry:
    return Entry(path, "d", mode, uid, gid, t, **kw)


def f(path: str, data: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0, t: int = T0,
      **kw: Any) -> Entry:
    return Entry(path, "f", mode, uid, gid, t, data=data, **kw)


LAYER1 = [
    d("bin"),
    f("bin/tool", b"\x7fELF tool", 0o4755, xattrs={"security.capability": CAP_NET_BIND}),
    Entry("bin/tool-again", "h", target="bin/tool"),
    f("bin/sg", b"setgid", 0o2711, gid=50),
    Entry("bin/sh", "l", 0o777, mtime=T0 + 1, target="tool"),
    d("dev"),
    Entry("dev/null", "c", 0o666, rdev=(1, 3)),
    Entry("dev/fifo", "p", 0o600),
    d("etc", t=T0 + 2),
    f("etc/passwd", b"root:x:0:0::/root:/bin/sh\n"),
    f("etc/big", bytes(range(256)) * 300, 0o600),
    f("etc/empty", b""),
    Entry("etc/abs", "l", 0o777, target="/etc/passwd"),
    Entry("etc/dangling", "l", 0o777, target="../nowhere/at/all"),
    d("home", t=T0 + 3),
    d("home/user", 0o700, 1000, 1000, xattrs={"user.owner": b"user"}),
    f("home/user/notes", b"notes", 0o600, 1000, 1000, xattrs={"user.tag": b"\x00\xffbin"}),
    d("opt"),
    d("opt/data", 0o750, 0, 10, xattrs={"user.dir": b"1"}),
    f("opt/data/a", b"a"),
    f("opt/data/b", b"b"),
    d("opt/data/sub"),
    f("opt/data/sub/c", b"c"),
    d("tmp", 0o1777),
]

LAYER2 = [
    d("bin"),
    Entry("bin/sg", "w"),  # delete a file
    Entry("bin/sh", "f", 0o755, mtime=T0 + 20, data=b"#!now a file\n"),  # symlink -> file
    d("etc", t=T0 + 21),
    f("etc/passwd", b"root:x:0:0::/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n",
      t=T0 + 22),
    d("etc/big", 0o711, t=T0 + 23),  # file -> directory
    f("etc/big/inner", b"inner", t=T0 + 23),
    f("etc/new.conf", b"new", t=T0 + 24),
    d("home", t=T0 + 3),
    d("home/user", 0o700, 1000, 1000, xattrs={"user.owner": b"user"}),
    f("home/user/notes", b"notes", 0o640, 1001, 1001, t=T0 + 25),  # owner, mode
    d("opt"),
    d("opt/data", 0o750, 0, 10, xattrs={"user.dir": b"1"}),
    Entry("opt/data/sub", "w"),  # delete a directory
]

LAYER3 = [
    d("etc", t=T0 + 21),
    f("etc/passwd", b"root:x:0:0::/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n",
      t=T0 + 22, xattrs={"user.checked": b"yes"}),  # only an xattr changes
    d("home", t=T0 + 30),
    Entry("home/user", "w"),  # delete a directory, then make it anew
    d("home/user", 0o755, 1002, 1002, t=T0 + 31),
    f("home/user/fresh", b"fresh", t=T0 + 31),
    d("opt"),
    d("opt/data", 0o755, t=T0 + 32),
    Entry("opt/data", "o"),  # opaque: a, b gone; what this layer writes stays
    f("opt/data/new", b"new", t=T0 + 32),
    d("opt/data/sub", t=T0 + 33),
    f("opt/data/sub/z", b"z", t=T0 + 33),
    d("var", t=T0 + 34),
    f("var/one", b"linked", t=T0 + 34),
    Entry("var/two", "h", target="var/one"),
    Entry("var/void", "l", 0o777, mtime=T0 + 34, target="/dev/null"),
]

STACK = [("L1", None, LAYER1), ("L2", "L1", LAYER2), ("L3", "L2", LAYER3)]


def models() -> list[sm.Model]:
    out, m = [], sm.new_model()
    for _, _, entries in STACK:
        m = sm.apply(m, entries)
        out.append(m)
    return out


def build_stack(driver: StorageDriver, prefix: str = "") -> list[int]:
    return [apply_layer(driver, prefix + lid, prefix + p if p else None, entries)
            for lid, p, entries in STACK]


def test_create_exists_remove(env: tuple[StorageDriver, Path]) -> None:
    driver, _ = env
    assert not driver.exists("base")
    driver.create("base", None)
    assert driver.exists("base")
    driver.create("child", "base")
    driver.create_rw("rw", "child", {})
    for layer in ("base", "child", "rw"):
        assert driver.exists(layer)
        meta = driver.metadata(layer)
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    for layer in ("rw", "child", "base"):
        driver.remove(layer)
        assert not driver.exists(layer)
        driver.remove(layer)  # idempotent


def test_failed_create_leaves_nothing(env: tuple[StorageDriver, Path]) -> None:
    driver, _ = env
    with pytest.raises(Exception):  # noqa: B017 - which error is the driver's choice
        driver.create("orphan", "no-such-parent")
    assert not driver.exists("orphan")
    with pytest.raises(ValueError):
        driver.create_rw("rw", None, {"no-such-option": "1"})
    assert not driver.exists("rw")


def test_status(env: tuple[StorageDriver, Path]) -> None:
    driver, _ = env
    status = driver.status()
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in status)
    if driver.name in ("overlay2", "vfs"):
        assert "Backing Filesystem" in dict(status)


def test_empty_layers_mount(env: tuple[StorageDriver, Path]) -> None:
    driver, base = env
    driver.create("base", None)
    driver.create_rw("rw", "base", {})
    driver.create_rw("lonely", None, {})
    empty = sm.expected_listing(sm.new_model())
    for layer in ("base", "rw", "lonely"):
        assert_same(view(driver, layer), empty)
        assert_same(view_in_namespace(driver, layer, base), empty)
        assert changes(driver, layer, "base" if layer == "rw" else None) == []


def test_stack_matches_model(env: tuple[StorageDriver, Path]) -> None:
    driver, base = env
    sizes = build_stack(driver)
    expected = models()
    for (lid, _, entries), size, model in zip(STACK, sizes, expected, strict=True):
        assert size == sm.regular_size(entries), lid
        assert_same(view(driver, lid), sm.expected_listing(model))
    # what a container gets: a read-write layer over the stack, mounted as described
    driver.create_rw("rw", "L3", {})
    want = sm.expected_listing(expected[-1])
    assert_same(view_in_namespace(driver, "rw", base), want)
    assert_same(view_in_namespace(driver, "L3", base), want)
    assert_same(view_in_namespace(driver, "L1", base), sm.expected_listing(expected[0]))


def test_get_is_reference_counted(env: tuple[StorageDriver, Path]) -> None:
    driver, base = env
    build_stack(driver)
    want = sm.expected_listing(models()[-1])
    first = driver.get("L3")
    second = driver.get("L3")
    assert first == second
    driver.put("L3")
    assert_same(sm.listing(first), want)  # still there: one reference left
    driver.put("L3")
    assert not sm.mount_points_under(str(base))


def test_changes_and_sizes(env: tuple[StorageDriver, Path]) -> None:
    driver, _ = env
    build_stack(driver)
    previous: sm.Model | None = None
    for (lid, parent, entries), model in zip(STACK, models(), strict=True):
        assert changes(driver, lid, parent) == sm.model_changes(previous, model), lid
        assert driver.diff_size(lid, parent) == sm.layer_size(model, entries), lid
        previous = model


def test_diff_round_trips(env: tuple[StorageDriver, Path]) -> None:
    import io

    driver, _ = env
    build_stack(driver)
    for lid, parent, _ in STACK:
        with contextlib.closing(driver.diff(lid, parent)) as stream:
            data = stream.read()
        again = "copy-" + lid
        copy_parent = "copy-" + parent if parent else None
        driver.create(again, copy_parent)
        driver.apply_diff(again, copy_parent, io.BytesIO(data))
        assert_same(view(driver, again), view(driver, lid))
        assert changes(driver, again, copy_parent) == changes(driver, lid, parent)
        # the same tree gives the same tar: diffIDs are reproducible
        with contextlib.closing(driver.diff(again, copy_parent)) as stream:
            assert stream.read() == data


def test_read_write_layer(env: tuple[StorageDriver, Path]) -> None:
    driver, base = env
    build_stack(driver)
    driver.create_rw("rw", "L3", {})
    # written by a "container": through the described mounts, in a namespace
    actions = [
        ["write", "etc/hello", b"hello".hex()],
        ["utime", "etc/hello", T0 + 100],
        ["utime", "etc", T0 + 100],
        ["write", "etc/passwd", b"changed\n".hex()],
        ["utime", "etc/passwd", T0 + 101],
        ["unlink", "bin/tool-again"],
        ["utime", "bin", T0 + 102],
        ["rmtree", "opt/data"],
        ["mkdir", "opt/data"],
        ["write", "opt/data/again", b"again".hex()],
        ["utime", "opt/data/again", T0 + 103],
        ["utime", "opt/data", T0 + 103],
        ["utime", "opt", T0 + 103],
        ["chmod", "tmp", 0o1770],
    ]
    seen = view_in_namespace(driver, "rw", base, actions)
    assert_same(view(driver, "rw"), seen)
    assert seen["entries"]["etc/hello"][5].endswith(":5")
    assert changes(driver, "rw", "L3") == [
        ("/bin", 0),
        ("/bin/tool-again", 2),
        ("/etc", 0),
        ("/etc/hello", 1),
        ("/etc/passwd", 0),
        ("/opt", 0),
        ("/opt/data", 0),
        ("/opt/data/again", 1),
        ("/opt/data/new", 2),
        ("/opt/data/sub", 2),
        ("/tmp", 0),
    ]
    assert driver.diff_size("rw", "L3") == len(b"hello") + len(b"changed\n") + len(b"again")
    # committing the container: its diff applied on the image gives the same tree
    import io

    with contextlib.closing(driver.diff("rw", "L3")) as stream:
        data = stream.read()
    driver.create("committed", "L3")
    driver.apply_diff("committed", "L3", io.BytesIO(data))
    assert_same(view(driver, "committed"), seen)


# ---------------------------------------------------------------------------
# Scale: deep chains and wide layers
# ---------------------------------------------------------------------------

CHAIN_DEPTH = 100


def test_deep_chain_reads_back(env: tuple[StorageDriver, Path]) -> None:
    """A chain of 100 layers (Docker images reach this): every layer adds a file,
    rewrites a shared one and deletes one from further down, and each view --
    the top as a container mounts it, and layers along the way -- is exact."""
    driver, base = env
    model = sm.new_model()
    snapshots: dict[int, sm.Model] = {}
    parent: str | None = None
    for i in range(CHAIN_DEPTH):
        entries = [d("chain", t=T0 + i),
                   f(f"chain/layer{i:03d}", f"layer {i}\n".encode(), t=T0 + i),
                   f("shared", f"written by {i}\n".encode(), t=T0 + i)]
        if i >= 3 and i % 3 == 0:
            entries.append(Entry(f"chain/layer{i - 3:03d}", "w"))
        lid = f"c{i:03d}"
        assert apply_layer(driver, lid, parent, entries) == sm.regular_size(entries), lid
        model = sm.apply(model, entries)
        if i in (0, 1, CHAIN_DEPTH // 2, CHAIN_DEPTH - 1):
            snapshots[i] = model
        if i == CHAIN_DEPTH - 2:
            previous = model
        parent = lid
    assert parent is not None
    for i, want in snapshots.items():
        assert_same(view(driver, f"c{i:03d}"), sm.expected_listing(want))
    top = sm.expected_listing(model)
    assert sum(1 for p in top["entries"] if p.startswith("chain/")) == CHAIN_DEPTH - 33
    driver.create_rw("rw", parent, {})
    assert_same(view_in_namespace(driver, "rw", base), top)
    # the top layer's own changes, seen through 99 layers below it
    assert changes(driver, parent, f"c{CHAIN_DEPTH - 2:03d}") == sm.model_changes(
        previous, model) == [("/chain", 0), ("/chain/layer096", 2), ("/chain/layer099", 1),
                             ("/shared", 0)]


def test_thousand_file_layer(env: tuple[StorageDriver, Path]) -> None:
    """One layer of 1,000 files in 20 directories: applied, listed, diffed, sized."""
    import io

    driver, base = env
    entries: list[Entry] = []
    for n in range(20):
        entries.append(d(f"dir{n:02d}", t=T0 + n))
        entries.extend(f(f"dir{n:02d}/file{k:03d}", f"{n}/{k}\n".encode() * (k % 7), t=T0 + k)
                       for k in range(50))
    files = [e for e in entries if e.kind == "f"]
    assert len(files) == 1000
    size = apply_layer(driver, "wide", None, entries)
    assert size == sm.regular_size(entries)
    model = sm.apply(sm.new_model(), entries)
    want = sm.expected_listing(model)
    assert_same(view(driver, "wide"), want)
    got = changes(driver, "wide", None)
    assert got == sm.model_changes(None, model)
    assert len(got) == 1020 and all(kind == 1 for _, kind in got)
    assert driver.diff_size("wide", None) == sm.layer_size(model, entries)
    with contextlib.closing(driver.diff("wide", None)) as stream:
        data = stream.read()
    driver.create("wide-copy", None)
    driver.apply_diff("wide-copy", None, io.BytesIO(data))
    assert_same(view(driver, "wide-copy"), want)
    # and a container over it sees all of it
    driver.create_rw("rw", "wide", {})
    assert_same(view_in_namespace(driver, "rw", base), want)


# ---------------------------------------------------------------------------
# Hostile tars
# ---------------------------------------------------------------------------


def _hostile(outside: Path) -> dict[str, list[Entry]]:
    return {
        "dotdot": [f("../../../../../../../../" + str(outside).lstrip("/") + "/pwned", b"x")],
        "dotdot-inner": [d("a"), f("a/../../pwned", b"x")],
        "symlink-parent": [Entry("evil", "l", 0o777, target=str(outside)),
                           f("evil/pwned", b"x")],
        "relative-symlink-parent": [Entry("evil", "l", 0o777, target="../" * 12 + str(outside)),
                                    f("evil/pwned", b"x")],
        "hardlink-outside": [Entry("stolen", "h", target="../" * 12 + str(outside) + "/secret")],
        "hardlink-through-symlink": [Entry("evil", "l", 0o777, target=str(outside)),
                                     Entry("stolen", "h", target="evil/secret")],
    }


@pytest.mark.parametrize("case", sorted(_hostile(Path("/x"))))
def test_hostile_tar_is_refused(env: tuple[StorageDriver, Path], case: str) -> None:
    import io

    driver, base = env
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    before = sm.listing(str(outside))
    apply_layer(driver, "L1", None, LAYER1)
    parent_view = view(driver, "L1")
    driver.create("bad", "L1")
    with pytest.raises(ValueError):
        driver.apply_diff("bad", "L1", io.BytesIO(sm.tar_bytes(_hostile(outside)[case])))
    assert_same(sm.listing(str(outside)), before)
    assert not (base / "pwned").exists()
    # nothing of the refused tar is left: the layer is empty and removable
    assert changes(driver, "bad", "L1") == []
    assert_same(view(driver, "bad"), parent_view)
    driver.remove("bad")
    assert not driver.exists("bad")


def test_symlink_in_lower_layer_cannot_redirect_writes(env: tuple[StorageDriver, Path]) -> None:
    import io

    driver, base = env
    outside = base / "outside"
    outside.mkdir()
    apply_layer(driver, "L1", None, [Entry("lib", "l", 0o777, target=str(outside))])
    driver.create("L2", "L1")
    # A driver may refuse this or turn lib into a directory of its layer;
    # it must never write through the symlink.
    with contextlib.suppress(ValueError):
        driver.apply_diff("L2", "L1", io.BytesIO(sm.tar_bytes([f("lib/pwned", b"x")])))
    assert list(outside.iterdir()) == []


def test_implicit_parents_agree_with_the_layers_below(env: tuple[StorageDriver, Path]) -> None:
    """A tar that names ``a/b/new`` without entries for ``a`` and ``a/b`` (legal,
    if unusual): the built-in drivers keep the lower directory's owner and mode
    (overlay2 copies them up, as overlayfs would) and refuse to go through a
    lower layer's symlink or file, as vfs (which holds the whole tree) does."""
    import io

    driver, base = env
    if driver.name not in ("overlay2", "vfs"):
        pytest.skip("the contract leaves implicit parents to the driver")
    outside = base / "outside"
    outside.mkdir()
    apply_layer(driver, "L1", None, [
        d("a", 0o750, 7, 8), d("a/b", 0o710, 1000, 1001),
        Entry("lnk", "l", 0o777, target=str(outside)), f("file", b"f")])
    apply_layer(driver, "L2", "L1", [f("a/b/new", b"new")])
    root = driver.get("L2")
    try:
        for rel, (mode, uid, gid) in {"a": (0o750, 7, 8), "a/b": (0o710, 1000, 1001)}.items():
            st = os.stat(os.path.join(root, rel))
            assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (mode, uid, gid), rel
        assert Path(root, "a", "b", "new").read_bytes() == b"new"
    finally:
        driver.put("L2")
    for i, entries in enumerate([[f("lnk/pwned", b"x")], [f("file/x", b"x")],
                                 [Entry("lnk/.wh.secret", "w")]]):
        driver.create(f"bad{i}", "L1")
        with pytest.raises(ValueError, match=r"symbolic link|not a directory"):
            driver.apply_diff(f"bad{i}", "L1", io.BytesIO(sm.tar_bytes(entries)))
        assert changes(driver, f"bad{i}", "L1") == []
    assert list(outside.iterdir()) == []


# ---------------------------------------------------------------------------
# Differential: random stacks against the model
# ---------------------------------------------------------------------------

NAMES = st.sampled_from(["a", "b", "c", "dd"])
MODES = st.sampled_from([0o644, 0o600, 0o755, 0o4755, 0o2750, 0o1777])
OWNERS = st.sampled_from([(0, 0), (1000, 1000), (65534, 65534)])
DIR_XATTRS = st.dictionaries(st.sampled_from(["user.x", "user.y"]), st.binary(max_size=8),
                             max_size=2)
XATTRS = st.one_of(
    st.just({}),
    st.dictionaries(st.sampled_from(["user.x", "user.y"]), st.binary(max_size=8), max_size=2),
    st.just({"security.capability": CAP_NET_BIND}),
)


class LayerBuilder:
    """Builds one layer's entries from random operations on the current model."""

    def __init__(self, model: sm.Model, clock: int, *, self_loops: bool = True) -> None:
        self.self_loops = self_loops
        self.base = model
        self.model = sm.clone(model)
        self.entries: list[Entry] = []
        self.emitted: set[str] = set()
        self.clock = clock

    def tick(self) -> int:
        self.clock += 1
        return self.clock

    def add(self, e: Entry) -> None:
        # Like any real layer tar: the parents of an entry precede it, with
        # the metadata they have (as overlay's copied-up directories do).
        # (an opaque marker lives inside its directory: that one too)
        parts = e.path.split("/") if e.kind == "o" else e.path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            p = "/".join(parts[:i])
            if p not in self.emitted:
                n = self.model[p]
                self.entries.append(Entry(p, "d", n.mode, n.uid, n.gid, n.mtime,
                                          xattrs=dict(n.xattrs)))
                self.emitted.add(p)
        self.entries.append(e)
        if e.kind == "d":
            self.emitted.add(e.path)
        self.model = sm.apply(self.model, [e])

    def dirs(self) -> list[str]:
        return sorted(p for p, n in self.model.items() if n.kind == "d")

    def run(self, data: st.DataObject, ops: int) -> list[Entry]:
        for _ in range(ops):
            op = data.draw(st.sampled_from(
                ["file", "file", "dir", "delete", "opaque", "symlink", "hardlink", "chmod"]))
            parent = data.draw(st.sampled_from(self.dirs()))
            path = f"{parent}/{data.draw(NAMES)}" if parent else data.draw(NAMES)
            existing = [p for p in self.model if p]
            uid, gid = data.draw(OWNERS)
            if op == "file":
                self.add(Entry(path, "f", data.draw(MODES), uid, gid, self.tick(),
                               data=data.draw(st.binary(max_size=300)),
                               xattrs=data.draw(XATTRS)))
            elif op == "dir":
                self.add(Entry(path, "d", data.draw(MODES) | 0o700, uid, gid, self.tick(),
                               xattrs=data.draw(DIR_XATTRS)))
            elif op == "symlink":
                target = data.draw(st.sampled_from(["a", "../b", "/etc/x", "."]))
                if not self.self_loops and target == path.rsplit("/", 1)[-1]:
                    target = "../b"
                self.add(Entry(path, "l", 0o777, uid, gid, self.tick(), target=target))
            elif op == "delete" and existing:
                self.add(Entry(data.draw(st.sampled_from(sorted(existing))), "w"))
            elif op == "opaque":
                target = data.draw(st.sampled_from(self.dirs()))
                if target:  # a layer root cannot be opaque in overlayfs
                    self.add(Entry(target, "o"))
            elif op == "hardlink":
                mine = sorted(p for p in self.emitted_files()
                              if p != path and not p.startswith(path + "/"))
                if mine:
                    self.add(Entry(path, "h", target=data.draw(st.sampled_from(mine))))
            elif op == "chmod" and existing:
                p = data.draw(st.sampled_from(sorted(existing)))
                n = self.model[p]
                if n.kind in "fd" and not self._linked(p):
                    e = Entry(p, n.kind, data.draw(MODES) | (0o700 if n.kind == "d" else 0),
                              n.uid, n.gid, self.tick(), data=n.data, xattrs=dict(n.xattrs))
                    self.add(e)
        return self.entries

    def emitted_files(self) -> list[str]:
        written = {e.path for e in self.entries if e.kind in "fh"}
        return [p for p in written if p in self.model and self.model[p].kind == "f"]

    def _linked(self, path: str) -> bool:
        n = self.model[path]
        return sum(1 for m in self.model.values() if m is n) > 1


@pytest.mark.parametrize("name", DRIVERS)
@settings(max_examples=int(os.environ.get("SKIFF_STORAGE_EXAMPLES", "25")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_random_stacks_match_model(name: str, data: st.DataObject) -> None:
    import io

    n_layers = data.draw(st.integers(1, 4), label="layers")
    layers: list[tuple[str, str | None, list[Entry], sm.Model]] = []
    model = sm.new_model()
    clock = T0
    for i in range(n_layers):
        # fuse-overlayfs 1.10 (aufs's mount helper here) fails a whole directory
        # listing with ENOMEM when a lower layer holds a symlink to itself under
        # directories of higher layers (docs/storage-drivers.md); that upstream
        # bug is kept out of the random stacks, every other case stays.
        builder = LayerBuilder(model, clock, self_loops=name != "aufs")
        entries = builder.run(data, data.draw(st.integers(1, 8), label=f"ops{i}"))
        clock = builder.clock
        model = sm.apply(model, entries)
        note(f"layer L{i}: " + ", ".join(f"{e.kind}:{e.path}" + (f"->{e.target}" if e.target
                                                                  else "") for e in entries))
        layers.append((f"L{i}", f"L{i - 1}" if i else None, entries, model))
    with storage(name) as (driver, _):
        previous: sm.Model | None = None
        for lid, parent, entries, want in layers:
            size = apply_layer(driver, lid, parent, entries)
            assert size == sm.regular_size(entries)
            assert_same(view(driver, lid), sm.expected_listing(want))
            assert changes(driver, lid, parent) == sm.model_changes(previous, want)
            previous = want
        for lid, parent, _, _ in layers:
            with contextlib.closing(driver.diff(lid, parent)) as stream:
                tar = stream.read()
            copy_parent = "copy-" + parent if parent else None
            driver.create("copy-" + lid, copy_parent)
            driver.apply_diff("copy-" + lid, copy_parent, io.BytesIO(tar))
        top = layers[-1][0]
        assert_same(view(driver, "copy-" + top), sm.expected_listing(layers[-1][3]))


def _without_mtimes(listing: dict[str, Any]) -> dict[str, Any]:
    return {"entries": {p: [*row[:4], None, *row[5:]] for p, row in listing["entries"].items()},
            "links": listing["links"]}


def test_apply_files_makes_the_layer_its_tar_makes(env: tuple[StorageDriver, Path]) -> None:
    """Contract 2.17: a driver that offers ``apply_files`` (a container's init
    layer written through a descriptor) gives the same layer as ``apply_diff``
    of the same entries as a tar, seen on the host, in a container's mounts and
    by ``changes``; a write that fails leaves the layer empty."""
    import io

    from skiff.core.images import init_layer

    driver, base = env
    apply_files = getattr(driver, "apply_files", None)
    if apply_files is None:
        pytest.skip(f"{driver.name} has no apply_files (optional)")
    build_stack(driver)
    extra = {"etc/extra/file": b"x\n"}
    driver.create("by-files", "L3")
    size = apply_files("by-files", "L3", lambda fd: init_layer.write_into(fd, extra))
    assert size == 2
    driver.create("by-tar", "L3")
    driver.apply_diff("by-tar", "L3", io.BytesIO(init_layer.init_tar(extra)))
    assert_same(_without_mtimes(view(driver, "by-files")), _without_mtimes(view(driver, "by-tar")))
    driver.create_rw("rw-files", "by-files", {})
    driver.create_rw("rw-tar", "by-tar", {})
    assert_same(_without_mtimes(view_in_namespace(driver, "rw-files", base)),
                _without_mtimes(view_in_namespace(driver, "rw-tar", base)))
    assert changes(driver, "by-files", "L3") == changes(driver, "by-tar", "L3")

    def half_then_fail(fd: int) -> int:
        os.mkdir("half", dir_fd=fd)
        raise OSError("cut short")

    driver.create("broken", "L3")
    with pytest.raises(OSError, match="cut short"):
        apply_files("broken", "L3", half_then_fail)
    assert changes(driver, "broken", "L3") == []
    assert_same(view(driver, "broken"), view(driver, "L3"))


# ---------------------------------------------------------------------------
# Built-in drivers: what only they promise
# ---------------------------------------------------------------------------

needs_overlay2 = pytest.mark.skipif("overlay2" not in DRIVERS, reason="overlay2 not selected")


@needs_overlay2
def test_overlay2_layout() -> None:
    import re

    with storage("overlay2") as (driver, base):
        home = base / "data" / "overlay2"
        build_stack(driver)
        driver.create_rw("rw", "L3", {})
        short = {lid: (home / lid / "link").read_text() for lid in ("L1", "L2", "L3", "rw")}
        for lid, s in short.items():
            assert re.fullmatch(r"[A-Z2-7]{26}", s)
            assert os.readlink(home / "l" / s) == f"../{lid}/diff"
            assert (home / lid / "diff").is_dir()
        assert not (home / "L1" / "lower").exists()
        assert (home / "L3" / "lower").read_text() == f"l/{short['L2']}:l/{short['L1']}"
        assert (home / "rw" / "work").is_dir()
        (spec,) = driver.mounts("rw")
        assert spec.type == "overlay" and spec.cwd == str(home) and spec.destination == "/"
        assert f"lowerdir=l/{short['L3']}:l/{short['L2']}:l/{short['L1']}" in spec.options
        assert "upperdir=rw/diff" in spec.options and "workdir=rw/work" in spec.options
        if os.path.exists("/sys/module/overlay/parameters/index"):
            assert "index=off" in spec.options
        assert not any(o.startswith("redirect_dir=on") for o in spec.options)
        (alone,) = driver.mounts("L1")  # no parent: a bind of the diff directory
        assert alone.type == "bind" and alone.source == str(home / "L1" / "diff")
        status = dict(driver.status())
        assert status["Native Overlay Diff"] == "true" and status["Using metacopy"] == "false"
        # the probe mount is gone, and so is its directory
        assert not [n for n in os.listdir(home) if n.startswith(".tmp-")]
        # a whiteout and an opaque directory, in overlayfs's own form
        assert os.stat(home / "L2" / "diff" / "bin" / "sg", follow_symlinks=False).st_rdev == 0
        assert os.getxattr(home / "L3" / "diff" / "opt" / "data", "trusted.overlay.opaque") == b"y"
        meta = driver.metadata("rw")
        assert meta["UpperDir"] == str(home / "rw" / "diff")
        assert meta["LowerDir"].split(":")[0] == str(home / "L3" / "diff")


@needs_overlay2
def test_overlay2_deep_chain() -> None:
    from skiff.plugins.storage.overlay2 import MAX_DEPTH

    with storage("overlay2") as (driver, base):
        parent = None
        for i in range(MAX_DEPTH):
            driver.create(f"layer{i}", parent)
            parent = f"layer{i}"
        with pytest.raises(ValueError, match="limit"):
            driver.create("one-too-many", parent)
        assert not driver.exists("one-too-many")
        # 128 lowers in one page of mount data, thanks to the short links;
        # the mount uses relative paths, yet our working directory stays put
        cwd = os.getcwd()
        root = driver.get(parent)
        try:
            assert os.listdir(root) == []
            assert os.getcwd() == cwd
        finally:
            driver.put(parent)
        assert not sm.mount_points_under(str(base))


@needs_overlay2
def test_overlay2_refuses_overlay_data_root() -> None:
    from skiff.core import syscalls
    from skiff.plugins.storage.overlay2 import Overlay2Driver

    tmp = Path(tempfile.mkdtemp(prefix="skiff-storage-"))
    dirs = {n: tmp / n for n in ("lower", "upper", "work", "root")}
    for p in dirs.values():
        p.mkdir()
    syscalls.mount("overlay", str(dirs["root"]), "overlay", 0,
                   f"lowerdir={dirs['lower']},upperdir={dirs['upper']},workdir={dirs['work']}")
    try:
        data_root = dirs["root"] / "data"
        with pytest.raises(DriverNotSupported, match="overlayfs"):
            Overlay2Driver(StorageContext(home=str(data_root / "overlay2"),
                                          data_root=str(data_root), options={}))
        assert not (data_root / "overlay2").exists()
    finally:
        syscalls.umount(str(dirs["root"]), syscalls.MNT_DETACH)
        shutil.rmtree(tmp)
    # vfs works anywhere, overlayfs included
    assert "vfs" in load_plugins().drivers["storage"]


def test_unknown_daemon_option_is_an_error() -> None:
    for name in DRIVERS:
        if name not in ("overlay2", "vfs"):
            continue
        base = Path(tempfile.mkdtemp(prefix="skiff-storage-"))
        try:
            factory = load_plugins().factory("storage", name)
            with pytest.raises(ValueError):
                factory(StorageContext(home=str(base / name), data_root=str(base),
                                       options={"no-such-option": "1"}))
        finally:
            shutil.rmtree(base)
