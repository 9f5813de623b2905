"""The image and layer stores on the real vfs and overlay2 drivers.

Each test has its own data-root under ``tmp_path``; the fixture cleans the
driver up (overlay2 unmounts) and checks nothing is left mounted under it.
Archives in Docker's and the OCI formats are built by hand, byte by byte, so
``load`` is tested against the formats themselves and not only against our
own ``save``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import lzma
import os
import secrets
import stat
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skiff.core.api.errors import status_of
from skiff.core.atomic import write_atomic, write_json_atomic
from skiff.core.errors import InvalidParameter
from skiff.core.hookspecs import DriverNotSupported, StorageContext, StorageDriver
from skiff.core.images import archives
from skiff.core.images.errors import (
    ImageConflict,
    ImageNotFound,
    InvalidImage,
    InvalidReference,
    LayerDigestMismatch,
    LayerNotFound,
)
from skiff.core.images.layers import LayerStore, chain_id, chain_ids
from skiff.core.images.records import ZERO_CONTAINER_CONFIG, encode_config
from skiff.core.images.store import ImageStore
from skiff.core.plugins import load_plugins
from skiff.core.userns import IdMap

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="storage drivers need root")

MTIME = 1_700_000_000
DRIVERS = ["vfs", "overlay2"]


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def storage_factories() -> dict[str, Any]:
    return load_plugins().drivers["storage"]


@dataclass
class Env:
    """One data-root with a real driver and the two stores on it."""

    root: str
    name: str
    driver: StorageDriver
    layers: LayerStore
    images: ImageStore

    def reopen(self) -> Env:
        """New stores on the same data-root: what a daemon restart sees."""
        layers = LayerStore(self.root, self.name, self.driver)
        return Env(self.root, self.name, self.driver, layers,
                   ImageStore(self.root, self.name, layers))

    def driver_layers(self) -> set[str]:
        """Layer ids the driver keeps on disk."""
        if self.name == "vfs":
            base = os.path.join(self.root, "vfs", "dir")
        else:
            base = os.path.join(self.root, self.name)
        return {n for n in os.listdir(base) if n != "l" and not n.startswith(".")}

    def read_file(self, cache_id: str, path: str) -> bytes:
        root = self.driver.get(cache_id)
        try:
            with open(os.path.join(root, path), "rb") as f:
                return f.read()
        finally:
            self.driver.put(cache_id)

    def lexists(self, cache_id: str, path: str) -> bool:
        root = self.driver.get(cache_id)
        try:
            return os.path.lexists(os.path.join(root, path))
        finally:
            self.driver.put(cache_id)


def make_env(root: Path, name: str, factories: dict[str, Any]) -> Env:
    root.mkdir(parents=True, exist_ok=True)
    try:
        driver = factories[name](StorageContext(home=str(root / name), data_root=str(root),
                                                options={}))
    except DriverNotSupported as exc:
        pytest.skip(f"{name} does not work here: {exc}")
    layers = LayerStore(str(root), name, driver)
    return Env(str(root), name, driver, layers, ImageStore(str(root), name, layers))


def _mounts_under(path: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p == path or p.startswith(path + "/")]


@pytest.fixture(params=DRIVERS)
def env(request: pytest.FixtureRequest, tmp_path: Path,
        storage_factories: dict[str, Any]) -> Iterator[Env]:
    e = make_env(tmp_path / "data", request.param, storage_factories)
    try:
        yield e
    finally:
        e.driver.cleanup()
        assert _mounts_under(str(tmp_path)) == []


@pytest.fixture
def vfs_env(tmp_path: Path, storage_factories: dict[str, Any]) -> Iterator[Env]:
    e = make_env(tmp_path / "data", "vfs", storage_factories)
    yield e
    e.driver.cleanup()


# ---------------------------------------------------------------------------
# Building tars and archives by hand
# ---------------------------------------------------------------------------


def make_tar(entries: Sequence[tuple[Any, ...]], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """A layer tar from ("file", name, data[, mode]), ("dir", name),
    ("symlink", name, target), ("hardlink", name, target), ("whiteout", name),
    ("opaque", dir), ("fifo", name) entries."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for kind, name, *rest in entries:
            if kind == "whiteout":
                head, tail = os.path.split(name)
                info = tarfile.TarInfo(os.path.join(head, ".wh." + tail))
            elif kind == "opaque":
                info = tarfile.TarInfo(os.path.join(name, ".wh..wh..opq"))
            else:
                info = tarfile.TarInfo(name)
            info.mtime = MTIME
            data = b""
            if kind == "file":
                data = rest[0]
                info.size = len(data)
                info.mode = rest[1] if len(rest) > 1 else 0o644
            elif kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, rest[0]
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, rest[0]
            elif kind == "fifo":
                info.type, info.mode = tarfile.FIFOTYPE, 0o600
            tar.addfile(info, io.BytesIO(data) if data else None)
    return buf.getvalue()


def image_config(diff_ids: Sequence[str], cmd: list[str] | None = None,
                 **extra: Any) -> bytes:
    cfg: dict[str, Any] = {
        "architecture": archives.host_architecture(),
        "config": {"Cmd": cmd or ["sh"], "Env": ["PATH=/bin"]},
        "created": "2024-01-02T03:04:05.123456789Z",
        "history": [{"created": "2024-01-02T03:04:05Z", "created_by": f"layer {i}"}
                    for i in range(len(diff_ids))],
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
    }
    cfg.update(extra)
    return json.dumps(cfg, indent=2).encode()  # not our encoding: IDs hash the bytes as given


def tar_archive(members: Sequence[tuple[str, bytes | str]], gz: bool = False) -> bytes:
    """An outer archive; a str value makes a symlink to it."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.mtime = MTIME
            if isinstance(data, str):
                info.type, info.linkname = tarfile.SYMTYPE, data
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    return gzip.compress(raw) if gz else raw


def docker_save_archive(images: Sequence[tuple[bytes, list[bytes], list[str]]],
                        gz: bool = False) -> bytes:
    """Exactly what ``docker save`` (before Docker 25) writes: per layer a
    ``<v1 id>/{VERSION,json,layer.tar}``, ``<config hex>.json``, then
    ``manifest.json`` and ``repositories`` (written last here, as a stream
    may well have them)."""
    members: list[tuple[str, bytes | str]] = []
    manifest = []
    repositories: dict[str, dict[str, str]] = {}
    seen: set[str] = set()
    for config, layer_tars, tags in images:
        layer_paths = []
        parent = ""
        for tar_bytes in layer_tars:
            v1 = hashlib.sha256((parent + sha(tar_bytes)).encode()).hexdigest()
            if v1 not in seen:
                seen.add(v1)
                v1_json = {"id": v1, "created": "0001-01-01T00:00:00Z",
                           "container_config": ZERO_CONTAINER_CONFIG}
                if parent:
                    v1_json["parent"] = parent
                members += [
                    (f"{v1}/VERSION", b"1.0"),
                    (f"{v1}/json", json.dumps(v1_json).encode()),
                    (f"{v1}/layer.tar", tar_bytes),
                ]
            layer_paths.append(f"{v1}/layer.tar")
            parent = v1
        config_name = hashlib.sha256(config).hexdigest() + ".json"
        members.append((config_name, config))
        manifest.append({"Config": config_name, "RepoTags": tags or None,
                         "Layers": layer_paths})
        for t in tags:
            repo, _, tag = t.rpartition(":")
            repositories.setdefault(repo, {})[tag] = parent
    members.append(("manifest.json", json.dumps(manifest).encode()))
    members.append(("repositories", json.dumps(repositories).encode()))
    return tar_archive(members, gz)


BASE = make_tar([
    ("dir", "bin"), ("file", "bin/tool", b"#!/bin/sh\necho tool\n", 0o755),
    ("dir", "etc"), ("file", "etc/os-release", b"NAME=base\n"),
    ("file", "etc/remove-me", b"gone soon\n"),
    ("dir", "data"), ("file", "data/a", b"a"), ("file", "data/b", b"b"),
    ("symlink", "bin/link", "tool"), ("hardlink", "bin/hard", "bin/tool"),
])
TOP = make_tar([
    ("dir", "etc"), ("file", "etc/os-release", b"NAME=top\n"),
    ("whiteout", "etc/remove-me"),
    ("dir", "data"), ("opaque", "data"), ("file", "data/c", b"c"),
    ("file", "x" * 60 + "/" + "y" * 90, b"long name"),
    ("file", "big", os.urandom(70_000)),
])


def register_stack(env: Env, tars: Sequence[bytes]) -> list[str]:
    """Register tars as a stack; returns chain IDs (each holding one caller ref)."""
    parent = None
    out = []
    for t in tars:
        layer = env.layers.register(io.BytesIO(t), parent)
        out.append(layer.chain_id)
        parent = layer.chain_id
    return out


def create_image(env: Env, tars: Sequence[bytes], tag: str | None = None, **extra: Any) -> str:
    chains = register_stack(env, tars)
    image_id = env.images.create(image_config([sha(t) for t in tars], **extra))
    for c in reversed(chains):
        env.layers.release(c)
    if tag:
        env.images.tag(image_id, tag)
    return image_id


def assert_empty(env: Env) -> None:
    """Nothing of any image or layer is left, not even temporary files."""
    assert env.layers.layers() == []
    assert env.images.count() == 0
    assert env.driver_layers() == set()
    image_root = os.path.join(env.root, "image", env.name)
    assert os.listdir(os.path.join(image_root, "layerdb", "sha256")) == []
    assert os.listdir(os.path.join(image_root, "layerdb", "tmp")) == []
    assert os.listdir(os.path.join(image_root, "imagedb", "content", "sha256")) == []
    tmp = os.path.join(env.root, "tmp")
    assert not os.path.exists(tmp) or os.listdir(tmp) == []


@pytest.fixture(scope="module")
def busybox_tar(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A busybox root filesystem as a tar (tests/rootfs.py builds the tree)."""
    try:
        from tests.rootfs import make_busybox_rootfs
    except ImportError:  # pragma: no cover - the helper is another module's job
        make_busybox_rootfs = None
    base = tmp_path_factory.mktemp("busybox")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        if make_busybox_rootfs is not None:
            tar.add(str(make_busybox_rootfs(base / "rootfs")), arcname=".")
        else:  # pragma: no cover
            tar.add("/bin/busybox", arcname="bin/busybox")
    return buf.getvalue()


# ---------------------------------------------------------------------------
# import, inspect, list, history
# ---------------------------------------------------------------------------


def test_import_busybox_inspect_list_history(env: Env, busybox_tar: bytes) -> None:
    image_id = archives.import_tarball(io.BytesIO(busybox_tar), env.layers, env.images,
                                       "busybox", ['CMD ["sh"]'], "")
    raw = env.images.config_bytes(image_id)
    assert image_id == sha(raw)
    content = Path(env.root, "image", env.name, "imagedb", "content", "sha256", image_id[7:])
    assert content.read_bytes() == raw
    assert raw == encode_config(json.loads(raw))  # compact and stable

    diff_id = sha(busybox_tar)
    layer_dir = Path(env.root, "image", env.name, "layerdb", "sha256", diff_id[7:])
    assert (layer_dir / "diff").read_text() == diff_id
    assert not (layer_dir / "parent").exists()
    cache_id = (layer_dir / "cache-id").read_text()
    assert len(cache_id) == 64 and env.driver.exists(cache_id)
    size = int((layer_dir / "size").read_text())
    assert size > 500_000
    assert (layer_dir / "tar-split.json.gz").exists()
    assert env.read_file(cache_id, "bin/busybox") == Path("/bin/busybox").read_bytes()

    info = env.images.inspect("busybox")
    assert set(info) == {
        "Id", "RepoTags", "RepoDigests", "Parent", "Comment", "Created", "Container",
        "ContainerConfig", "DockerVersion", "Author", "Config", "Architecture", "Os",
        "Size", "VirtualSize", "GraphDriver", "RootFS", "Metadata",
    }
    assert info["Id"] == image_id
    assert info["RepoTags"] == ["busybox:latest"]
    assert info["RepoDigests"] == []
    assert info["Parent"] == ""
    assert info["Comment"] == "Imported from -"
    assert info["Config"]["Cmd"] == ["sh"]
    assert info["Config"]["Entrypoint"] is None
    assert info["ContainerConfig"] == ZERO_CONTAINER_CONFIG
    assert info["Architecture"] == archives.host_architecture()
    assert info["Os"] == "linux"
    assert info["Size"] == info["VirtualSize"] == size
    assert info["RootFS"] == {"Type": "layers", "Layers": [diff_id]}
    assert info["GraphDriver"]["Name"] == env.name
    assert isinstance(info["GraphDriver"]["Data"], dict)
    assert info["Created"].endswith("Z") and info["Created"].startswith("20")
    assert info["Metadata"]["LastTagTime"] != "0001-01-01T00:00:00Z"

    (summary,) = env.images.list()
    assert summary == {
        "Containers": -1, "Created": summary["Created"], "Id": image_id, "Labels": None,
        "ParentId": "", "RepoDigests": [], "RepoTags": ["busybox:latest"],
        "SharedSize": -1, "Size": size, "VirtualSize": size,
    }
    assert isinstance(summary["Created"], int) and summary["Created"] > 1_600_000_000

    (item,) = env.images.history("busybox")
    assert item == {"Comment": "Imported from -", "Created": summary["Created"],
                    "CreatedBy": "", "Id": image_id, "Size": size,
                    "Tags": ["busybox:latest"]}

    repos = json.loads(Path(env.root, "image", env.name, "repositories.json").read_text())
    assert repos == {"Repositories": {"busybox": {"busybox:latest": image_id}}}


def test_import_compressed_and_message(vfs_env: Env) -> None:
    env = vfs_env
    plain = make_tar([("file", "hello", b"hi\n")])
    gz_id = archives.import_tarball(io.BytesIO(gzip.compress(plain)), env.layers, env.images,
                                    "gz:1", [], "from gzip")
    xz_id = archives.import_tarball(io.BytesIO(lzma.compress(plain)), env.layers, env.images,
                                    None, [], "")
    # the diffID hashes the uncompressed tar, so both share one layer
    assert env.images.get(gz_id).diff_ids == [sha(plain)] == env.images.get(xz_id).diff_ids
    assert len(env.layers.layers()) == 1
    assert env.layers.refcount(sha(plain)) == 2
    assert env.images.inspect("gz:1")["Comment"] == "from gzip"
    assert env.images.inspect(xz_id)["RepoTags"] == []
    assert env.images.history(xz_id)[0]["Tags"] is None


def test_import_refuses_bad_input_and_leaves_nothing(env: Env) -> None:
    with pytest.raises(InvalidParameter, match="run is not a valid change command"):
        archives.import_tarball(io.BytesIO(make_tar([("file", "a", b"a")])), env.layers,
                                env.images, "x", ["RUN echo"], "")
    with pytest.raises(InvalidReference, match="must be lowercase"):
        archives.import_tarball(io.BytesIO(b""), env.layers, env.images, "Bad", [], "")
    with pytest.raises(InvalidImage):
        archives.import_tarball(io.BytesIO(b"this is not a tar archive\n" * 100),
                                env.layers, env.images, "x", [], "")
    with pytest.raises(InvalidImage):  # a gzip stream cut short
        archives.import_tarball(io.BytesIO(gzip.compress(BASE)[:300]), env.layers,
                                env.images, "x", [], "")
    assert_empty(env)


def test_write_atomic(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    write_json_atomic(target, {"b": 1, "a": [1, 2]}, 0o600)
    assert target.read_text() == '{"b":1,"a":[1,2]}'
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    write_atomic(target, "replaced")
    assert target.read_text() == "replaced"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644

    class Boom:
        def __len__(self) -> int:
            raise RuntimeError("boom")

    with pytest.raises(TypeError):
        write_atomic(target, Boom())  # type: ignore[arg-type]
    assert target.read_text() == "replaced"  # the old content stays
    assert os.listdir(tmp_path) == ["state.json"]  # and no temporary file


# ---------------------------------------------------------------------------
# lookup, tags
# ---------------------------------------------------------------------------


def test_lookup_rules(vfs_env: Env) -> None:
    env = vfs_env
    a = create_image(env, [BASE], "base:1")
    b = create_image(env, [BASE, TOP], "top")
    hexa = a[7:]
    for name in (a, hexa, "sha256:" + hexa[:10], hexa[:12], "base:1",
                 "docker.io/library/base:1", "index.docker.io/library/base:1"):
        assert env.images.get(name).id == a, name
    for name in ("top", "top:latest", "library/top"):
        assert env.images.resolve(name) == b
    common = ""
    while a[7 + len(common)] == b[7 + len(common)]:
        common += a[7 + len(common)]
    if common:  # an ambiguous prefix designates nothing
        with pytest.raises(ImageNotFound):
            env.images.get(common)

    with pytest.raises(ImageNotFound) as info:
        env.images.get("base")  # :latest is implied and does not exist
    assert str(info.value) == "No such image: base:latest"
    assert status_of(info.value) == 404
    with pytest.raises(ImageNotFound, match="No such image: sha256:" + "0" * 64):
        env.images.get("0" * 64)
    with pytest.raises(ImageNotFound, match="No such image: nope@sha256:"):
        env.images.get("nope@" + sha(b"x"))
    with pytest.raises(InvalidReference, match="repository name must be lowercase"):
        env.images.get("Base:1")
    image = env.images.get("top")
    assert image.top_layer == chain_ids([sha(BASE), sha(TOP)])[-1]
    assert image.config["config"]["Cmd"] == ["sh"]


def test_tag_untag_and_last_tag_time(vfs_env: Env) -> None:
    env = vfs_env
    a = create_image(env, [BASE])
    b = create_image(env, [BASE, TOP])
    assert env.images.inspect(a)["Metadata"]["LastTagTime"] == "0001-01-01T00:00:00Z"
    ref = env.images.tag(a, "example/app:v1")
    assert ref.familiar == "example/app:v1"
    env.images.tag(a[7:19], "localhost:5000/app")
    info = env.images.inspect(a)
    assert info["RepoTags"] == ["example/app:v1", "localhost:5000/app:latest"]
    assert info["Metadata"]["LastTagTime"] != "0001-01-01T00:00:00Z"
    # a tag moves when it is given to another image
    env.images.tag(b, "example/app:v1")
    assert env.images.inspect(a)["RepoTags"] == ["localhost:5000/app:latest"]
    assert env.images.resolve("example/app:v1") == b

    with pytest.raises(InvalidReference, match="refusing to create a tag with a digest"):
        env.images.tag(a, "app@" + sha(b"1"))
    with pytest.raises(InvalidReference, match="ambiguous tag using digest algorithm"):
        env.images.tag(a, "sha256:abc")
    with pytest.raises(InvalidReference, match="invalid reference format"):
        env.images.tag(a, "app:bad tag")
    with pytest.raises(ImageNotFound, match="No such image: ghost:latest"):
        env.images.tag("ghost", "app:1")

    assert env.images.untag("localhost:5000/app") == a
    with pytest.raises(ImageNotFound):
        env.images.untag("localhost:5000/app")
    digest_ref = env.images.add_digest(b, "example/app@" + sha(b"manifest"))
    assert env.images.inspect(b)["RepoDigests"] == [digest_ref.familiar]
    assert env.images.get("example/app@" + sha(b"manifest")).id == b

    # names survive a restart
    again = env.reopen()
    assert again.images.inspect(b)["RepoTags"] == ["example/app:v1"]
    assert again.images.inspect(b)["RepoDigests"] == [digest_ref.familiar]
    assert again.images.inspect(a)["RepoTags"] == []


def test_list_filters_and_dangling(vfs_env: Env) -> None:
    env = vfs_env
    old = create_image(env, [BASE], "old:1", created="2020-01-01T00:00:00Z",
                       config={"Labels": {"tier": "base"}})
    mid = create_image(env, [BASE, TOP], "mid:1", created="2022-01-01T00:00:00Z",
                       config={"Labels": {"tier": "app", "team": "x"}})
    new = create_image(env, [TOP], None, created="2024-01-01T00:00:00+02:00")
    ids = [s["Id"] for s in env.images.list()]
    assert ids == [new, mid, old]  # newest first
    dangling = env.images.list(filters={"dangling": ["true"]})
    assert [s["Id"] for s in dangling] == [new]
    assert dangling[0]["RepoTags"] == ["<none>:<none>"]
    assert dangling[0]["RepoDigests"] == ["<none>@<none>"]
    assert [s["Id"] for s in env.images.list(filters={"dangling": ["false"]})] == [mid, old]
    assert [s["Id"] for s in env.images.list(filters={"label": ["tier"]})] == [mid, old]
    assert [s["Id"] for s in env.images.list(filters={"label": ["tier=app", "team"]})] == [mid]
    assert [s["Id"] for s in env.images.list(filters={"before": ["mid:1"]})] == [old]
    assert [s["Id"] for s in env.images.list(filters={"since": ["mid:1"]})] == [new]
    assert [s["Id"] for s in env.images.list(filters={"reference": ["mi*"]})] == [mid]
    assert env.images.list(filters={"reference": {"old:*": True}})[0]["RepoTags"] == ["old:1"]
    assert env.images.list(filters={"label": ["tier=app"]})[0]["Labels"] == {
        "tier": "app", "team": "x"}
    with pytest.raises(InvalidParameter, match="invalid filter 'bogus'"):
        env.images.list(filters={"bogus": ["1"]})
    with pytest.raises(InvalidParameter, match="Invalid filter 'dangling=maybe'"):
        env.images.list(filters={"dangling": ["maybe"]})
    # an untagged parent with a child is hidden unless all=True
    env.images.set_parent(mid, new)
    assert new not in [s["Id"] for s in env.images.list()]
    assert new in [s["Id"] for s in env.images.list(all=True)]
    assert env.images.inspect(mid)["Parent"] == new
    assert env.images.list(filters={"reference": ["mid"]})[0]["ParentId"] == new


# ---------------------------------------------------------------------------
# delete
# ---------------------------------------------------------------------------


def test_delete_rules(env: Env) -> None:
    image_id = create_image(env, [BASE], "a:1")
    env.images.tag(image_id, "a:2")
    chain = sha(BASE)
    cache_id = env.layers.get(chain).cache_id
    # several tags: removing by name only untags
    assert env.images.delete("a:1") == [{"Untagged": "a:1"}]
    assert env.images.resolve("a:2") == image_id
    # the last tag by ID: untag, delete the image and its layer
    assert env.images.delete(image_id[7:19]) == [
        {"Untagged": "a:2"}, {"Deleted": image_id}, {"Deleted": chain}]
    assert not env.driver.exists(cache_id)
    assert_empty(env)
    with pytest.raises(ImageNotFound, match="No such image: a:2"):
        env.images.delete("a:2")

    # names in two repositories: the ID needs force
    image_id = create_image(env, [BASE], "one:1")
    env.images.tag(image_id, "two:1")
    with pytest.raises(ImageConflict) as info:
        env.images.delete(image_id)
    assert str(info.value) == (f"conflict: unable to delete {image_id[7:19]} (must be forced)"
                               " - image is referenced in multiple repositories")
    assert status_of(info.value) == 409
    assert env.images.delete(image_id, force=True) == [
        {"Untagged": "one:1"}, {"Untagged": "two:1"}, {"Deleted": image_id},
        {"Deleted": chain}]
    assert_empty(env)


def test_delete_with_containers(env: Env) -> None:
    image_id = create_image(env, [BASE], "c:1")
    short = image_id[7:19]
    chain = sha(BASE)
    cid = secrets.token_hex(32)
    env.layers.create_rw(cid, chain, {})

    def stopped(iid: str) -> str | None:
        return cid if iid == image_id else None

    def running(iid: str) -> tuple[str, bool] | None:
        return (cid, True) if iid == image_id else None

    with pytest.raises(ImageConflict) as info:
        env.images.delete("c:1", in_use=stopped)
    assert str(info.value) == (f'conflict: unable to remove repository reference "c:1" '
                               f"(must force) - container {cid[:12]} is using its "
                               f"referenced image {short}")
    with pytest.raises(ImageConflict, match=r"\(must be forced\) - image is being used by "
                       f"stopped container {cid[:12]}"):
        env.images.delete(image_id, in_use=stopped)
    with pytest.raises(ImageConflict, match=r"\(cannot be forced\) - image is being used by "
                       f"running container {cid[:12]}"):
        env.images.delete(image_id, force=True, in_use=running)
    # forced untag of a running container's image keeps the image, dangling
    assert env.images.delete("c:1", force=True, in_use=running) == [{"Untagged": "c:1"}]
    assert env.images.exists(image_id)
    env.images.tag(image_id, "c:1")
    # forced delete with a stopped container: the image goes, its layer stays for the container
    assert env.images.delete("c:1", force=True, in_use=stopped) == [
        {"Untagged": "c:1"}, {"Deleted": image_id}]
    assert env.layers.exists(chain) and env.layers.refcount(chain) == 1
    env.layers.remove_rw(cid)
    assert_empty(env)


def test_delete_parent_child_and_prune(vfs_env: Env) -> None:
    env = vfs_env
    parent = create_image(env, [BASE])
    child = create_image(env, [BASE, TOP], "child:1")
    env.images.set_parent(child, parent)
    with pytest.raises(ImageConflict, match=r"\(cannot be forced\) - image has dependent "
                       "child images"):
        env.images.delete(parent, force=True)
    assert env.images.children(parent) == [child]
    top_chain = chain_id(sha(BASE), sha(TOP))
    records = env.images.delete("child:1")
    assert records == [{"Untagged": "child:1"}, {"Deleted": child}, {"Deleted": top_chain},
                       {"Deleted": parent}, {"Deleted": sha(BASE)}]
    assert_empty(env)

    parent = create_image(env, [BASE], "keep:1")
    child = create_image(env, [BASE, TOP], "child:1")
    env.images.set_parent(child, parent)
    # a tagged parent is not pruned; noprune keeps an untagged one too
    assert env.images.delete("child:1") == [
        {"Untagged": "child:1"}, {"Deleted": child}, {"Deleted": top_chain}]
    env.images.untag("keep:1")
    child = create_image(env, [BASE, TOP], "child:2")
    env.images.set_parent(child, parent)
    assert env.images.delete("child:2", prune=False)[-1] == {"Deleted": top_chain}
    assert env.images.exists(parent)


# ---------------------------------------------------------------------------
# layers: sharing, refcounts, restarts, debris
# ---------------------------------------------------------------------------


def test_shared_layers_are_refcounted(env: Env) -> None:
    base_only = create_image(env, [BASE], "base:1")
    with_top = create_image(env, [BASE, TOP], "top:1")
    c0, c1 = chain_ids([sha(BASE), sha(TOP)])
    assert c1 == "sha256:" + hashlib.sha256(f"{c0} {sha(TOP)}".encode()).hexdigest()
    assert len(env.layers.layers()) == 2  # the base is stored once
    assert len(env.driver_layers()) == 2
    assert env.layers.refcount(c0) == 2  # image base:1 + the child layer
    assert env.layers.refcount(c1) == 1
    assert Path(env.root, "image", env.name, "layerdb", "sha256", c1[7:], "parent"
                ).read_text() == c0

    # registering the same content again reuses the layer and discards the copy
    again = env.layers.register(io.BytesIO(BASE))
    assert again.chain_id == c0 and env.layers.refcount(c0) == 3
    assert len(env.driver_layers()) == 2
    env.layers.release(c0)

    # a restart derives the same counts
    env2 = env.reopen()
    assert env2.layers.refcount(c0) == 2 and env2.layers.refcount(c1) == 1

    assert env2.images.delete("top:1") == [
        {"Untagged": "top:1"}, {"Deleted": with_top}, {"Deleted": c1}]
    assert env2.layers.refcount(c0) == 1
    assert env2.images.inspect("base:1")["Id"] == base_only
    top = env2.layers.get(c0)
    assert env2.read_file(top.cache_id, "bin/tool") == b"#!/bin/sh\necho tool\n"
    assert env2.images.delete("base:1")[-1] == {"Deleted": c0}
    assert_empty(env2)


def test_register_parent_and_errors(env: Env) -> None:
    with pytest.raises(LayerNotFound):
        env.layers.register(io.BytesIO(TOP), "sha256:" + "1" * 64)
    (c0,) = register_stack(env, [BASE])
    with pytest.raises(LayerDigestMismatch):
        env.layers.register(io.BytesIO(TOP), c0, expected_diff_id=sha(b"other"))
    assert env.layers.refcount(c0) == 1  # the failed child gave its parent ref back
    top = env.layers.register(io.BytesIO(TOP), c0, expected_diff_id=sha(TOP))
    assert top.parent == c0 and top.diff_id == sha(TOP)
    # with the expected diffID, a known layer is reused without reading the stream
    twin = env.layers.register(io.BytesIO(b"unread"), c0, expected_diff_id=sha(TOP))
    assert twin == top and env.layers.refcount(top.chain_id) == 2
    assert env.read_file(top.cache_id, "etc/os-release") == b"NAME=top\n"
    assert not env.lexists(top.cache_id, "etc/remove-me")
    assert not env.lexists(top.cache_id, "data/a")  # hidden by the opaque whiteout
    assert env.read_file(top.cache_id, "data/c") == b"c"
    env.layers.release(top.chain_id)
    assert env.layers.release(top.chain_id) == [top.chain_id]
    assert env.layers.release(c0) == [c0]
    assert_empty(env)


def test_restart_cleans_crash_debris(vfs_env: Env) -> None:
    env = vfs_env
    image_id = create_image(env, [BASE], "kept:1")
    tmp = Path(env.root, "image", "vfs", "layerdb", "tmp")
    # a layer whose unpacking was cut short by a crash
    orphan = secrets.token_hex(32)
    env.driver.create(orphan, None)
    (tmp / "write-dead").mkdir()
    (tmp / "write-dead" / "cache-id").write_text(orphan)
    # a layer registered for an image that was never created
    stray = env.layers.register(io.BytesIO(TOP))
    stray_cache = stray.cache_id
    # and an image config whose content does not match its name
    bogus = Path(env.root, "image", "vfs", "imagedb", "content", "sha256", "0" * 64)
    bogus.write_bytes(image_config([sha(BASE)]))
    env2 = env.reopen()
    assert not env.driver.exists(orphan)
    assert os.listdir(tmp) == []
    assert env2.images.ids() == [image_id]
    assert env2.images.resolve("kept:1") == image_id
    assert env2.layers.refcount(sha(BASE)) == 1
    assert not env2.layers.exists(stray.chain_id)
    assert not env.driver.exists(stray_cache)
    assert [la.chain_id for la in env2.layers.layers()] == [sha(BASE)]


# ---------------------------------------------------------------------------
# container layers
# ---------------------------------------------------------------------------


def test_container_rw_layers(env: Env) -> None:
    create_image(env, [BASE, TOP], "app:1")
    top = env.images.get("app:1").top_layer
    assert top is not None
    before = env.driver_layers()
    cid = secrets.token_hex(32)
    init_id, mount_id = env.layers.create_rw(cid, top, {}, {"etc/extra/file": b"x\n"})
    assert init_id == mount_id + "-init"
    assert env.driver.exists(init_id) and env.driver.exists(mount_id)
    mounts = Path(env.root, "image", env.name, "layerdb", "mounts", cid)
    assert (mounts / "init-id").read_text() == init_id
    assert (mounts / "mount-id").read_text() == mount_id
    assert (mounts / "parent").read_text() == top
    assert env.layers.refcount(top) == 2
    root = env.driver.get(mount_id)
    try:
        for f in ("etc/hosts", "etc/hostname", "etc/resolv.conf", ".dockerenv"):
            assert os.path.getsize(os.path.join(root, f)) == 0, f
        for d in ("proc", "sys", "dev/pts", "dev/shm"):
            assert os.path.isdir(os.path.join(root, d)), d
        assert os.readlink(os.path.join(root, "etc/mtab")) == "/proc/mounts"
        assert Path(root, "etc/extra/file").read_bytes() == b"x\n"
        assert Path(root, "etc/os-release").read_bytes() == b"NAME=top\n"
        Path(root, "written-by-container").write_text("rw")
    finally:
        env.driver.put(mount_id)
    assert env.layers.rw_layer(cid).mount_id == mount_id
    with pytest.raises(ImageConflict):
        env.layers.create_rw(cid, top, {})
    # the record survives a restart and keeps its layer referenced
    env2 = env.reopen()
    assert env2.layers.rw_layer(cid).init_id == init_id
    assert env2.layers.refcount(top) == 2
    env2.layers.remove_rw(cid)
    assert not env.driver.exists(mount_id) and not env.driver.exists(init_id)
    assert not mounts.exists()
    assert env2.layers.refcount(top) == 1
    assert env.driver_layers() == before
    with pytest.raises(LayerNotFound):
        env2.layers.remove_rw(cid)


def test_a_remapped_containers_init_layer_is_its_roots(env: Env) -> None:
    """On chowned copies (userns without idmapped mounts) every entry of the init
    layer belongs to the container's root on the host, written directly
    (overlay2) or through the shifted tar (vfs) alike."""
    create_image(env, [BASE], "app:1")
    top = env.images.get("app:1").top_layer
    assert top is not None
    idmap = IdMap(uids=((0, 231072, 65536),), gids=((0, 231072, 65536),))
    cid = secrets.token_hex(32)
    _, mount_id = env.layers.create_rw(cid, top, {}, None, idmap)
    root = env.driver.get(mount_id)
    try:
        for path in ("etc", "etc/hostname", "etc/hosts", "etc/resolv.conf", "etc/mtab", "dev",
                     "dev/pts", "dev/shm", "dev/console", "proc", "sys", ".dockerenv"):
            st = os.lstat(os.path.join(root, path))
            assert (st.st_uid, st.st_gid) == (231072, 231072), path
    finally:
        env.driver.put(mount_id)
    env.layers.remove_rw(cid)


def test_deferred_rw_removal_answers_first_and_leaves_nothing(env: Env) -> None:
    """``remove_rw(defer=True)`` (docker rm): the container's layers are gone for
    every caller at once, the driver's files once the trash is drained; an rmi
    right after waits for them (children before parents) and leaves the
    driver as it was before the image."""
    before_image = env.driver_layers()
    create_image(env, [BASE, TOP], "app:1")
    top = env.images.get("app:1").top_layer
    assert top is not None
    with_image = env.driver_layers()
    tmp = Path(env.root, "image", env.name, "layerdb", "tmp")
    cids = [secrets.token_hex(32) for _ in range(3)]
    ids = [env.layers.create_rw(cid, top, {}) for cid in cids]
    for cid in cids:
        env.layers.remove_rw(cid, defer=True)
        with pytest.raises(LayerNotFound):
            env.layers.rw_layer(cid)
    assert env.layers.refcount(top) == 1  # released at once: rmi sees no holder
    assert env.layers.trash.drain(30)
    for init_id, mount_id in ids:
        assert not env.driver.exists(init_id) and not env.driver.exists(mount_id)
    assert env.driver_layers() == with_image and os.listdir(tmp) == []
    cid = secrets.token_hex(32)
    env.layers.create_rw(cid, top, {})
    env.layers.remove_rw(cid, defer=True)
    env.images.delete("app:1", force=False, prune=True)
    assert env.layers.trash.pending() == 0  # the release drained it first
    assert env.driver_layers() == before_image and os.listdir(tmp) == []


def test_deferred_rw_removal_cut_by_a_crash_is_finished_at_start(env: Env) -> None:
    """A daemon that dies with removals queued leaves retired metadata under
    layerdb/tmp naming the driver layers; the next store's start-up frees them."""
    create_image(env, [BASE], "app:1")
    top = env.images.get("app:1").top_layer
    assert top is not None
    before = env.driver_layers()
    cid = secrets.token_hex(32)
    init_id, mount_id = env.layers.create_rw(cid, top, {})
    queued: list[str] = []
    env.layers.trash.put = queued.append  # type: ignore[method-assign]  # the worker never ran
    env.layers.remove_rw(cid, defer=True)
    assert len(queued) == 1 and env.driver.exists(mount_id) and env.driver.exists(init_id)
    env2 = env.reopen()
    assert not env.driver.exists(mount_id) and not env.driver.exists(init_id)
    assert not os.path.exists(queued[0])
    assert env.driver_layers() == before
    assert env2.layers.refcount(top) == 1


def test_container_rw_layer_failure_leaves_nothing(env: Env) -> None:
    create_image(env, [BASE], "app:1")
    top = env.images.get("app:1").top_layer
    assert top is not None
    before = env.driver_layers()
    cid = secrets.token_hex(32)
    with pytest.raises(ValueError, match="storage-opt"):
        env.layers.create_rw(cid, top, {"no-such-option": "1"})
    assert env.driver_layers() == before
    assert env.layers.refcount(top) == 1
    assert os.listdir(Path(env.root, "image", env.name, "layerdb", "mounts")) == []
    assert os.listdir(Path(env.root, "image", env.name, "layerdb", "tmp")) == []
    with pytest.raises(LayerNotFound):
        env.layers.rw_layer(cid)


# ---------------------------------------------------------------------------
# save and load
# ---------------------------------------------------------------------------


def read_archive(data: bytes) -> tuple[dict[str, bytes], dict[str, str]]:
    files: dict[str, bytes] = {}
    links: dict[str, str] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar:
            if m.isreg():
                f = tar.extractfile(m)
                assert f is not None
                files[m.name] = f.read()
            elif m.issym():
                links[m.name] = m.linkname
    return files, links


def test_save_load_round_trip(env: Env, tmp_path: Path,
                              storage_factories: dict[str, Any]) -> None:
    image_id = create_image(env, [BASE, TOP], "app:1")
    env.images.tag(image_id, "example.com/team/app:2")
    data = archives.save(["app:1", "example.com/team/app:2"], env.layers, env.images)
    assert data is not None
    raw = data.read()
    data.close()
    out = io.BytesIO()
    assert archives.save(["app:1", "example.com/team/app:2"], env.layers, env.images,
                         out) is None
    assert out.getvalue() == raw  # deterministic

    files, links = read_archive(raw)
    for name, content in files.items():
        if name.startswith("blobs/sha256/"):
            assert sha(content) == "sha256:" + name.rsplit("/", 1)[1], name
    # the layers are the very tars that were registered
    assert files[f"blobs/sha256/{sha(BASE)[7:]}"] == BASE
    assert files[f"blobs/sha256/{sha(TOP)[7:]}"] == TOP
    (manifest,) = json.loads(files["manifest.json"])
    assert manifest == {
        "Config": f"blobs/sha256/{image_id[7:]}",
        "RepoTags": ["app:1", "example.com/team/app:2"],
        "Layers": [f"blobs/sha256/{sha(BASE)[7:]}", f"blobs/sha256/{sha(TOP)[7:]}"],
    }
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads(files["index.json"])
    assert [d["annotations"] for d in index["manifests"]] == [
        {"io.containerd.image.name": "docker.io/library/app:1",
         "org.opencontainers.image.ref.name": "1"},
        {"io.containerd.image.name": "example.com/team/app:2",
         "org.opencontainers.image.ref.name": "2"},
    ]
    oci_manifest = json.loads(files["blobs/sha256/" + index["manifests"][0]["digest"][7:]])
    assert oci_manifest["config"]["digest"] == image_id
    assert [x["digest"] for x in oci_manifest["layers"]] == [sha(BASE), sha(TOP)]
    assert [x["size"] for x in oci_manifest["layers"]] == [len(BASE), len(TOP)]
    repositories = json.loads(files["repositories"])
    assert set(repositories) == {"app", "example.com/team/app"}
    top_v1 = repositories["app"]["1"]
    assert links[f"{top_v1}/layer.tar"] == f"../blobs/sha256/{sha(TOP)[7:]}"
    assert files[f"{top_v1}/VERSION"] == b"1.0"
    assert len([n for n in files if n.endswith("/json")]) == 2

    # into a fresh daemon: same image ID, same names, same content
    other = make_env(tmp_path / "other", env.name, storage_factories)
    try:
        messages = archives.load(io.BytesIO(raw), other.layers, other.images)
        assert messages == ["Loaded image: app:1", "Loaded image: example.com/team/app:2"]
        loaded = other.images.inspect("app:1")
        assert loaded["Id"] == image_id
        assert loaded["RepoTags"] == ["app:1", "example.com/team/app:2"]
        assert loaded["RootFS"]["Layers"] == [sha(BASE), sha(TOP)]
        top = other.layers.get(other.images.get("app:1").top_layer or "")
        assert other.read_file(top.cache_id, "x" * 60 + "/" + "y" * 90) == b"long name"
        # and saving it there gives the same archive again
        again = archives.save(["app:1", "example.com/team/app:2"], other.layers,
                              other.images)
        assert again is not None and again.read() == raw
        again.close()
    finally:
        other.driver.cleanup()

    # loading what is already there changes nothing
    before = env.driver_layers()
    assert archives.load(io.BytesIO(raw), env.layers, env.images) == [
        "Loaded image: app:1", "Loaded image: example.com/team/app:2"]
    assert env.driver_layers() == before
    assert env.layers.refcount(sha(BASE)) == 1


def test_save_by_id_and_unknown_names(vfs_env: Env, tmp_path: Path,
                                      storage_factories: dict[str, Any]) -> None:
    env = vfs_env
    image_id = create_image(env, [BASE], "repo:a")
    env.images.tag(image_id, "repo:b")
    with pytest.raises(ImageNotFound, match="No such image: ghost:latest"):
        archives.save(["repo:a", "ghost"], env.layers, env.images)
    # a bare repository name saves every tag of it
    stream = archives.save(["repo"], env.layers, env.images)
    assert stream is not None
    files, _ = read_archive(stream.read())
    stream.close()
    assert json.loads(files["manifest.json"])[0]["RepoTags"] == ["repo:a", "repo:b"]
    stream = archives.save([image_id[7:19]], env.layers, env.images)
    assert stream is not None
    raw = stream.read()
    stream.close()
    files, _ = read_archive(raw)
    assert json.loads(files["manifest.json"])[0]["RepoTags"] is None
    assert "annotations" not in json.loads(files["index.json"])["manifests"][0]
    other = make_env(tmp_path / "other", "vfs", storage_factories)
    assert archives.load(io.BytesIO(raw), other.layers, other.images) == [
        f"Loaded image ID: {image_id}"]


def test_load_handmade_docker_save(env: Env) -> None:
    config_a = image_config([sha(BASE)], cmd=["/bin/tool"])
    config_b = image_config([sha(BASE), sha(TOP)])
    archive = docker_save_archive([
        (config_a, [BASE], ["handmade/base:1.0"]),
        (config_b, [BASE, TOP], ["handmade/app:latest", "registry.local:5000/app:v2"]),
    ], gz=True)
    messages = archives.load(io.BytesIO(archive), env.layers, env.images)
    assert messages == ["Loaded image: handmade/base:1.0", "Loaded image: handmade/app:latest",
                        "Loaded image: registry.local:5000/app:v2"]
    a = env.images.get("handmade/base:1.0")
    b = env.images.get("handmade/app")
    assert a.id == sha(config_a) and b.id == sha(config_b)
    assert env.images.config_bytes(b.id) == config_b  # stored byte for byte
    assert env.images.inspect(a.id)["Config"]["Cmd"] == ["/bin/tool"]
    assert [h["CreatedBy"] for h in env.images.history(b.id)] == ["layer 1", "layer 0"]
    assert [h["Size"] for h in env.images.history(b.id)] == [
        env.layers.get(b.chain[1]).size, env.layers.get(b.chain[0]).size]
    assert env.images.inspect(b.id)["Created"] == "2024-01-02T03:04:05.123456789Z"
    assert len(env.layers.layers()) == 2
    assert env.layers.refcount(b.chain[0]) == 2
    top = env.layers.get(b.chain[1])
    assert env.read_file(top.cache_id, "bin/tool") == b"#!/bin/sh\necho tool\n"
    assert env.read_file(top.cache_id, "etc/os-release") == b"NAME=top\n"
    assert not env.lexists(top.cache_id, "etc/remove-me")
    assert not env.lexists(top.cache_id, "data/b")
    root = env.driver.get(top.cache_id)
    try:
        st_tool = os.stat(os.path.join(root, "bin/tool"))
        assert stat.S_IMODE(st_tool.st_mode) == 0o755
        assert os.stat(os.path.join(root, "bin/hard")).st_ino == st_tool.st_ino
        assert os.readlink(os.path.join(root, "bin/link")) == "tool"
    finally:
        env.driver.put(top.cache_id)
    # a second load of a newer image under an existing tag moves it, as Docker says
    config_c = image_config([sha(BASE)], cmd=["other"])
    msgs = archives.load(io.BytesIO(docker_save_archive([(config_c, [BASE],
                                                          ["handmade/base:1.0"])])),
                         env.layers, env.images)
    assert msgs == [
        f"The image handmade/base:1.0 already exists, renaming the old one with ID {a.id} "
        "to empty string",
        "Loaded image: handmade/base:1.0",
    ]


def test_load_oci_layout(env: Env) -> None:
    layer_gz = gzip.compress(BASE)
    config = image_config([sha(BASE)], cmd=["oci"])
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": sha(layer_gz), "size": len(layer_gz)}],
    }).encode()
    # a second, other-architecture image behind a multi-platform index
    foreign_config = image_config([sha(TOP)], architecture="s390x-not-this-host")
    foreign = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha(foreign_config), "size": len(foreign_config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": sha(TOP), "size": len(TOP)}],
    }).encode()
    nested = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json",
             "digest": sha(foreign), "size": len(foreign),
             "platform": {"os": "linux", "architecture": "s390x-not-this-host"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json",
             "digest": sha(manifest), "size": len(manifest),
             "platform": {"os": "linux", "architecture": archives.host_architecture()}},
        ],
    }).encode()
    index = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json",
             "digest": sha(manifest), "size": len(manifest),
             "annotations": {"io.containerd.image.name": "docker.io/library/oci:latest",
                             "org.opencontainers.image.ref.name": "latest"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json",
             "digest": sha(manifest), "size": len(manifest),
             "annotations": {"org.opencontainers.image.ref.name": "quay.io/x/oci:2"}},
            {"mediaType": "application/vnd.oci.image.index.v1+json",
             "digest": sha(nested), "size": len(nested),
             "annotations": {"io.containerd.image.name": "multi:1"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json",
             "digest": sha(manifest), "size": len(manifest),
             "annotations": {"org.opencontainers.image.ref.name": "just-a-tag"}},
        ],
    }).encode()
    blobs = [layer_gz, config, manifest, nested, foreign, foreign_config, TOP]
    archive = tar_archive(
        [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')]
        + [(f"blobs/sha256/{sha(b)[7:]}", b) for b in blobs]
        + [("index.json", index)]
    )
    messages = archives.load(io.BytesIO(archive), env.layers, env.images)
    assert messages == ["Loaded image: oci:latest", "Loaded image: quay.io/x/oci:2",
                        "Loaded image: multi:1"]
    image = env.images.get("oci")
    assert image.id == sha(config)
    assert env.images.resolve("multi:1") == image.id  # this host's platform was picked
    assert env.images.resolve("quay.io/x/oci:2") == image.id
    assert image.diff_ids == [sha(BASE)]  # the uncompressed digest
    layer = env.layers.get(sha(BASE))
    assert env.read_file(layer.cache_id, "etc/remove-me") == b"gone soon\n"
    assert env.images.count() == 1 and len(env.layers.layers()) == 1
    # and what we save from it is the plain tar, not the gzip blob
    stream = archives.save(["oci"], env.layers, env.images)
    assert stream is not None
    files, _ = read_archive(stream.read())
    stream.close()
    assert files[f"blobs/sha256/{sha(BASE)[7:]}"] == BASE


def test_load_refuses_a_layer_that_does_not_match(env: Env) -> None:
    good = image_config([sha(BASE)], cmd=["good"])
    bad = image_config([sha(BASE), sha(b"something else")])
    archive = docker_save_archive([(good, [BASE], ["good:1"]),
                                   (bad, [BASE, TOP], ["bad:1"])])
    with pytest.raises(LayerDigestMismatch) as info:
        archives.load(io.BytesIO(archive), env.layers, env.images)
    message = str(info.value)
    assert "digest mismatch" in message and sha(b"something else") in message
    assert sha(TOP) in message and "/layer.tar" in message
    assert status_of(info.value) == 400
    # neither image, no layer, no tag, no temporary file
    assert_empty(env)
    repos = Path(env.root, "image", env.name, "repositories.json")
    assert not repos.exists() or json.loads(repos.read_text())["Repositories"] == {}


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([("hello.txt", b"hi")], "neither manifest.json"),
        ([("manifest.json", b"{not json")], "manifest.json is not valid JSON"),
        ([("manifest.json", b'[{"Config": "missing.json", "Layers": []}]')],
         "image config missing.json is missing"),
        ([("c.json", image_config([sha(BASE)])),
          ("manifest.json", b'[{"Config": "c.json", "Layers": []}]')],
         "layers length mismatch: expected 1, got 0"),
        ([("c.json", image_config([sha(BASE)])),
          ("manifest.json", b'[{"Config": "c.json", "Layers": ["nope/layer.tar"]}]')],
         "layer nope/layer.tar is missing"),
        ([("c.json", image_config([])),
          ("manifest.json", b'[{"Config": "c.json", "Layers": [], "RepoTags": ["x"]}]')],
         'invalid tag "x"'),
        ([("c.json", b'{"rootfs": 1}'),
          ("manifest.json", b'[{"Config": "c.json", "Layers": []}]')],
         "no RootFS key"),
    ],
)
def test_load_refuses_broken_archives(vfs_env: Env, members: list[tuple[str, bytes]],
                                      message: str) -> None:
    with pytest.raises(InvalidImage, match=message):
        archives.load(io.BytesIO(tar_archive(members)), vfs_env.layers, vfs_env.images)
    assert_empty(vfs_env)


def test_load_not_a_tar(vfs_env: Env) -> None:
    with pytest.raises(InvalidImage, match=r"^Error processing tar file\(exit status 1\): "
                       r"archive/tar: invalid tar header$"):
        archives.load(io.BytesIO(b"\x00garbage" * 200), vfs_env.layers, vfs_env.images)
    assert_empty(vfs_env)


def test_load_old_save_with_symlinked_layer_dirs(vfs_env: Env) -> None:
    """Older ``docker save`` links a repeated layer's file to the first copy."""
    env = vfs_env
    empty = make_tar([])
    config = image_config([sha(BASE), sha(empty), sha(empty)])
    archive = tar_archive([
        ("aaa/layer.tar", BASE),
        ("bbb/layer.tar", empty),
        ("ccc/layer.tar", "../bbb/layer.tar"),
        ("cfg.json", config),
        ("manifest.json", json.dumps([{"Config": "cfg.json", "RepoTags": ["links:1"],
                                       "Layers": ["aaa/layer.tar", "bbb/layer.tar",
                                                  "ccc/layer.tar"]}]).encode()),
    ])
    assert archives.load(io.BytesIO(archive), env.layers, env.images) == [
        "Loaded image: links:1"]
    assert len(env.images.get("links:1").chain) == 3
    assert len(env.layers.layers()) == 3


# ---------------------------------------------------------------------------
# layer tars come back byte for byte
# ---------------------------------------------------------------------------

_names = st.from_regex(r"[a-z0-9_.-]{1,12}", fullmatch=True).filter(
    lambda n: n not in (".", "..") and not n.startswith(".wh."))


@st.composite
def layer_tars(draw: st.DrawFn) -> bytes:
    fmt = draw(st.sampled_from([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT]))
    entries: list[tuple[Any, ...]] = []
    dirs = draw(st.lists(_names, max_size=3, unique=True))
    for d in dirs:
        entries.append(("dir", d))
    used: set[str] = set(dirs)
    for _ in range(draw(st.integers(0, 6))):
        parent = draw(st.sampled_from(["", *dirs]))
        name = draw(_names)
        long_dir = draw(st.booleans()) and fmt != tarfile.USTAR_FORMAT
        if long_dir:
            name = "n" * 110 + "-" + name  # needs a PAX path or a GNU long name
        path = f"{parent}/{name}" if parent else name
        if path in used:
            continue
        used.add(path)
        kind = draw(st.sampled_from(["file", "file", "symlink", "fifo", "whiteout"]))
        if kind == "file":
            size = draw(st.sampled_from([0, 1, 511, 512, 513, 4096, 70_000]))
            entries.append(("file", path, draw(st.binary(min_size=size, max_size=size))
                            if size < 600 else os.urandom(size)))
        elif kind == "symlink":
            entries.append(("symlink", path, draw(_names)))
        else:
            entries.append((kind, path))
    files = [e for e in entries if e[0] == "file"]
    if files and draw(st.booleans()):
        entries.append(("hardlink", "hl-" + draw(_names), files[0][1]))
    return make_tar(entries, fmt)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tar_bytes=layer_tars(), gz=st.booleans(), trailing=st.sampled_from([0, 512, 4096]))
def test_layer_tar_is_reproduced_exactly(vfs_env: Env, tar_bytes: bytes, gz: bool,
                                         trailing: int) -> None:
    original = tar_bytes + bytes(trailing)  # extra zero blocks count in the digest
    src = gzip.compress(original) if gz else original
    (c0,) = register_stack(vfs_env, [BASE])
    layer = vfs_env.layers.register(io.BytesIO(src), c0)
    try:
        assert layer.diff_id == sha(original)
        with vfs_env.layers.tar_stream(layer.chain_id) as stream:
            assert stream.length == len(original)
            assert stream.read() == original
    finally:
        vfs_env.layers.release(layer.chain_id)
        vfs_env.layers.release(c0)
    assert vfs_env.layers.layers() == []


def test_layer_tar_reproduced_on_every_driver(env: Env) -> None:
    chains = register_stack(env, [BASE, TOP])
    for chain, original in zip(chains, [BASE, TOP], strict=True):
        with env.layers.tar_stream(chain) as stream:
            assert stream.read() == original
    assert _mounts_under(env.root) == []  # get/put balanced
    for c in reversed(chains):
        env.layers.release(c)
    assert_empty(env)
