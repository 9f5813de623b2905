"""Images and layers in depth, through the stock docker CLI against a real skiffd.

export, diff, commit (with --change, -m, -a, pause, volumes and the init
layer's files), history, images filters and image prune; and hostile tar
archives sent through ``docker load`` and ``docker import``, each refused,
with a scan that shows nothing was written outside the layer root.
Every test runs once per storage driver (the ``skiffd`` fixture).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import shutil
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon import Daemon

INIT_FILES = {".dockerenv", "etc/hosts", "etc/hostname", "etc/resolv.conf"}


def out(res) -> str:  # type: ignore[no-untyped-def]
    return res.stdout.decode()


def uniq(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def inspect(d: Daemon, *args: str) -> dict:
    return json.loads(d.docker("inspect", *args, check=True).stdout)[0]


def saved_layers(d: Daemon, image: str, tmp: Path) -> list[dict[str, tarfile.TarInfo]]:
    """The members of each layer tar of ``image`` as ``docker save`` writes them, base first."""
    path = tmp / (secrets.token_hex(4) + ".tar")
    d.docker("save", "-o", str(path), image, check=True)
    layers = []
    with tarfile.open(path) as outer:
        manifest = json.load(outer.extractfile("manifest.json"))  # type: ignore[arg-type]
        for name in manifest[0]["Layers"]:
            member = outer.getmember(name)
            while member.issym() or member.islnk():
                target = member.linkname if member.islnk() else os.path.normpath(
                    os.path.join(os.path.dirname(member.name), member.linkname))
                member = outer.getmember(target)
            data = outer.extractfile(member).read()  # type: ignore[union-attr]
            with tarfile.open(fileobj=io.BytesIO(data)) as layer:
                layers.append({m.name.rstrip("/"): m for m in layer.getmembers()})
    return layers


@pytest.fixture
def container(skiffd: Daemon) -> Iterator[list[str]]:
    """Names of containers the test makes; all removed afterwards."""
    made: list[str] = []
    yield made
    if made:
        skiffd.docker("rm", "-f", *made)


@pytest.fixture
def image(skiffd: Daemon) -> Iterator[list[str]]:
    """Images the test makes; all removed afterwards."""
    made: list[str] = []
    yield made
    for ref in reversed(made):
        skiffd.docker("rmi", "-f", ref)


# ---------------------------------------------------------------------------
# diff
# ---------------------------------------------------------------------------


def test_diff_of_a_fresh_container_is_empty(skiffd: Daemon, container: list[str]) -> None:
    name = uniq("fresh")
    container.append(name)
    skiffd.docker("create", "--name", name, "busybox", "true", check=True)
    res = skiffd.docker("diff", name, check=True)
    assert out(res) == ""


def test_diff_shows_adds_changes_deletes_not_init_files(
    skiffd: Daemon, container: list[str]
) -> None:
    name = uniq("diff")
    container.append(name)
    skiffd.docker(
        "run", "--name", name, "busybox", "sh", "-c",
        "echo hi > /hello; mkdir -p /tmp/sub; echo x >> /etc/passwd; rm /bin/ls;"
        " echo 1.2.3.4 extra >> /etc/hosts; hostname >/dev/null",
        check=True,
    )
    lines = set(out(skiffd.docker("diff", name, check=True)).splitlines())
    assert {"A /hello", "A /tmp/sub", "C /etc/passwd", "D /bin/ls"} <= lines, lines
    paths = {line.split(" ", 1)[1] for line in lines}
    # the init layer and the bind-mounted /etc files are never part of a diff
    assert not paths & {"/" + f for f in INIT_FILES}, lines
    assert not any(p.startswith(("/dev", "/proc", "/sys")) for p in paths), lines


def test_diff_api_shape(skiffd: Daemon, container: list[str]) -> None:
    import docker

    name = uniq("diffapi")
    container.append(name)
    skiffd.docker("run", "--name", name, "busybox", "sh", "-c", "rm /bin/cat; touch /new",
                  check=True)
    client = docker.DockerClient(base_url=skiffd.host, version="1.41")
    try:
        changes = client.api.diff(name)
    finally:
        client.close()
    assert {"Path": "/new", "Kind": 1} in changes
    assert {"Path": "/bin/cat", "Kind": 2} in changes
    assert all(set(c) == {"Path", "Kind"} for c in changes)


# ---------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------


def test_export_is_the_whole_filesystem_and_imports_back(
    skiffd: Daemon, container: list[str], image: list[str], tmp_path: Path
) -> None:
    name = uniq("export")
    container.append(name)
    skiffd.docker("run", "--name", name, "busybox", "sh", "-c",
                  "echo exported > /marker; rm /bin/cat; chmod 4711 /marker", check=True)
    tar_path = tmp_path / "export.tar"
    skiffd.docker("export", "-o", str(tar_path), name, check=True)
    with tarfile.open(tar_path) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert tar.extractfile("marker").read() == b"exported\n"  # type: ignore[union-attr]
    assert stat.S_IMODE(members["marker"].mode) == 0o4711
    assert members["bin/busybox"].isreg() and members["bin/busybox"].size > 100_000
    assert "bin/cat" not in members  # deleted in the rw layer: gone, no whiteout
    assert not any(n.split("/")[-1].startswith(".wh.") for n in members)
    # the mount points and the init layer's placeholders, but no mounted content
    assert members["proc"].isdir() and not any(n.startswith("proc/") for n in members)
    assert members["etc/hosts"].size == 0
    # export | import gives a one-layer image that runs
    ref = uniq("exported") + ":v1"
    image.append(ref)
    skiffd.docker("import", str(tar_path), ref, check=True)
    res = skiffd.docker("run", "--rm", ref, "/bin/busybox", "cat", "/marker", check=True)
    assert out(res) == "exported\n"
    assert len(inspect(skiffd, ref)["RootFS"]["Layers"]) == 1


def test_export_of_a_running_container(skiffd: Daemon, container: list[str]) -> None:
    name = uniq("export-live")
    container.append(name)
    skiffd.docker("run", "-d", "--name", name, "busybox", "sh", "-c",
                  "echo live > /live; exec sleep 300", check=True)
    for _ in range(100):
        res = skiffd.docker("export", name, check=True)
        with tarfile.open(fileobj=io.BytesIO(res.stdout)) as tar:
            if "live" in tar.getnames():
                break
    else:
        pytest.fail("the running container's file never showed in its export")
    assert inspect(skiffd, name)["State"]["Running"] is True


def test_export_unknown_container_is_404(skiffd: Daemon) -> None:
    res = skiffd.docker("export", "no-such-container-here")
    assert res.returncode != 0
    assert "No such container" in res.stderr.decode()


# ---------------------------------------------------------------------------
# commit
# ---------------------------------------------------------------------------


def test_commit_with_changes_message_author_and_volume(
    skiffd: Daemon, container: list[str], image: list[str], tmp_path: Path
) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    name = uniq("commit")
    container.append(name)
    base = inspect(skiffd, "busybox")
    skiffd.docker(
        "run", "--name", name, "-v", f"{vol}:/data", "-e", "KEEP=1", "busybox", "sh", "-c",
        "echo content > /data/in-volume; echo hi > /hello; rm /bin/ls;"
        " echo extra >> /etc/hosts; echo resolv >> /etc/resolv.conf",
        check=True,
    )
    assert (vol / "in-volume").read_text() == "content\n"
    ref = uniq("committed") + ":v1"
    image.append(ref)
    res = skiffd.docker(
        "commit", "-m", "a message", "-a", "Jane <jane@example.com>",
        "-c", "ENV FOO=bar", "-c", 'CMD ["cat", "/hello"]', "-c", "WORKDIR /data",
        "-c", "LABEL stage=committed", name, ref, check=True,
    )
    new_id = out(res).strip()
    assert new_id.startswith("sha256:")
    info = inspect(skiffd, ref)
    assert info["Id"] == new_id
    assert info["Parent"] == base["Id"]
    assert info["Author"] == "Jane <jane@example.com>"
    assert info["Comment"] == "a message"
    assert info["Container"] == inspect(skiffd, name)["Id"]
    cfg = info["Config"]
    assert "FOO=bar" in cfg["Env"] and "KEEP=1" in cfg["Env"]
    assert cfg["Cmd"] == ["cat", "/hello"]
    assert cfg["WorkingDir"] == "/data"
    assert cfg["Labels"] == {"stage": "committed"}
    assert info["RootFS"]["Layers"][:-1] == base["RootFS"]["Layers"]
    assert len(info["RootFS"]["Layers"]) == len(base["RootFS"]["Layers"]) + 1

    # the new layer: the container's changes, the mount point, nothing else
    top = saved_layers(skiffd, ref, tmp_path)[-1]
    names = set(top)
    assert "hello" in names and "bin/.wh.ls" in names
    assert "data" in names and top["data"].isdir()
    assert "data/in-volume" not in names
    assert not names & INIT_FILES, names
    assert not any(n.startswith(("dev/", "proc/", "sys/")) for n in names), names

    res = skiffd.docker("run", "--rm", ref, check=True)
    assert out(res) == "hi\n"
    res = skiffd.docker("run", "--rm", ref, "sh", "-c",
                        "ls /data; ls /bin/ls 2>&1; echo $FOO; pwd", check=True)
    lines = out(res).splitlines()
    assert lines[0].endswith("No such file or directory"), lines  # empty /data, ls gone
    assert lines[1:] == ["bar", "/data"]

    hist = [json.loads(line) for line in out(skiffd.docker(
        "history", "--no-trunc", "--format", "{{json .}}", ref, check=True)).splitlines()]
    assert hist[0]["ID"] == new_id
    assert hist[0]["Comment"] == "a message"
    assert "echo hi > /hello" in hist[0]["CreatedBy"]
    assert hist[0]["Size"] != "0B"
    assert hist[1]["ID"] == base["Id"]


def test_commit_of_an_unchanged_container_adds_an_empty_history_entry(
    skiffd: Daemon, container: list[str], image: list[str]
) -> None:
    name = uniq("unchanged")
    container.append(name)
    skiffd.docker("create", "--name", name, "busybox", "true", check=True)
    ref = uniq("same") + ":latest"
    image.append(ref)
    skiffd.docker("commit", name, ref, check=True)
    base = inspect(skiffd, "busybox")
    info = inspect(skiffd, ref)
    assert info["RootFS"]["Layers"] == base["RootFS"]["Layers"]
    res = skiffd.docker("history", "--format", "{{.Size}}", ref, check=True)
    assert out(res).splitlines()[0] == "0B"


def test_commit_of_a_running_container_keeps_it_running(
    skiffd: Daemon, container: list[str], image: list[str]
) -> None:
    name = uniq("live")
    container.append(name)
    skiffd.docker("run", "-d", "--name", name, "busybox", "sh", "-c",
                  "echo running > /state; exec sleep 300", check=True)
    ref = uniq("live-img")
    image.append(ref)
    for _ in range(100):
        if "/state" in out(skiffd.docker("diff", name)):
            break
    skiffd.docker("commit", name, ref, check=True)
    assert inspect(skiffd, name)["State"]["Running"] is True
    res = skiffd.docker("run", "--rm", ref, "cat", "/state", check=True)
    assert out(res) == "running\n"


def test_commit_refuses_bad_change_and_unknown_container(
    skiffd: Daemon, container: list[str]
) -> None:
    name = uniq("bad")
    container.append(name)
    skiffd.docker("create", "--name", name, "busybox", "true", check=True)
    before = out(skiffd.docker("images", "-aq", "--no-trunc", check=True))
    res = skiffd.docker("commit", "-c", "RUN rm -rf /", name)
    assert res.returncode != 0
    assert "run is not a valid change command" in res.stderr.decode()
    res = skiffd.docker("commit", "no-such-container-either")
    assert res.returncode != 0 and "No such container" in res.stderr.decode()
    assert out(skiffd.docker("images", "-aq", "--no-trunc", check=True)) == before


def test_commit_api_with_a_config_body(skiffd: Daemon, container: list[str],
                                       image: list[str]) -> None:
    """docker-py sends a config in the body: what it leaves out comes from the container."""
    import docker

    name = uniq("pycommit")
    container.append(name)
    skiffd.docker("run", "--name", name, "-e", "FROM_CONTAINER=1", "-w", "/tmp", "busybox",
                  "sh", "-c", "echo body > /body", check=True)
    repo = uniq("pycommit")
    image.append(f"{repo}:t1")
    client = docker.DockerClient(base_url=skiffd.host, version="1.41")
    try:
        img = client.containers.get(name).commit(
            repository=repo, tag="t1", message="via api", author="py",
            changes=["LABEL via=api"], conf={"Cmd": ["cat", "/body"], "Env": ["X=1"]})
        attrs = client.images.get(f"{repo}:t1").attrs
        assert img.id == attrs["Id"]
        cfg = attrs["Config"]
        assert cfg["Cmd"] == ["cat", "/body"]
        assert cfg["Env"][0] == "X=1" and "FROM_CONTAINER=1" in cfg["Env"]
        assert cfg["WorkingDir"] == "/tmp"
        assert cfg["Labels"] == {"via": "api"}
        assert attrs["Author"] == "py" and attrs["Comment"] == "via api"
        out = client.containers.run(f"{repo}:t1", remove=True)
        assert out == b"body\n"
    finally:
        client.close()


# ---------------------------------------------------------------------------
# images filters, prune
# ---------------------------------------------------------------------------


def _import(d: Daemon, ref: str | None, *changes: str) -> str:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = secrets.token_bytes(64)  # unique content, unique image
        info = tarfile.TarInfo("payload")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    args = ["import"]
    for c in changes:
        args += ["-c", c]
    args += ["-"] + ([ref] if ref else [])
    return out(d.docker(*args, input=buf.getvalue(), check=True)).strip()


def test_images_filters(skiffd: Daemon, image: list[str]) -> None:
    tag = uniq("flt")
    labelled = _import(skiffd, f"{tag}/one:a", f"LABEL suite={tag}")
    image.append(labelled)
    plain = _import(skiffd, f"{tag}/two:b")
    image.append(plain)
    dangling = _import(skiffd, f"{tag}/three:c")
    image.append(dangling)
    _import_again = _import(skiffd, f"{tag}/three:c")  # takes the tag: the old one dangles
    image.append(_import_again)

    def ids(*args: str) -> set[str]:
        res = skiffd.docker("images", "-q", "--no-trunc", *args, check=True)
        return set(out(res).split())

    assert ids("--filter", f"label=suite={tag}") == {labelled}
    assert ids("--filter", f"reference={tag}/*") == {labelled, plain, _import_again}
    assert ids("--filter", f"reference={tag}/two") == {plain}
    assert dangling in ids("--filter", "dangling=true")
    assert dangling not in ids("--filter", "dangling=false")
    assert labelled not in ids("--filter", "dangling=true")
    res = skiffd.docker("images", "--filter", "bogus=1")
    assert res.returncode != 0 and "invalid filter" in res.stderr.decode()


def test_image_prune_dangling_and_all(
    skiffd: Daemon, image: list[str], container: list[str]
) -> None:
    tag = uniq("prune")
    old = _import(skiffd, f"{tag}:x", f"LABEL prune={tag}")
    image.append(old)
    new = _import(skiffd, f"{tag}:x", f"LABEL prune={tag}")  # old dangles now
    image.append(new)
    used = _import(skiffd, None, f"LABEL prune={tag}")  # dangling, but a container uses it
    image.append(used)
    name = uniq("user")
    container.append(name)
    skiffd.docker("create", "--name", name, used, "/payload", check=True)

    res = skiffd.docker("image", "prune", "-f", "--filter", f"label=prune={tag}", check=True)
    text = out(res)
    assert f"deleted: {old}" in text
    assert used not in text and new not in text
    assert "Total reclaimed space: " in text and "Total reclaimed space: 0B" not in text
    assert skiffd.docker("inspect", old).returncode != 0
    assert skiffd.docker("inspect", used).returncode == 0

    # -a: tagged but unused images go too; the used one stays
    res = skiffd.docker("image", "prune", "-a", "-f", "--filter", f"label=prune={tag}",
                        check=True)
    assert f"untagged: {tag}:x" in out(res) and f"deleted: {new}" in out(res)
    assert skiffd.docker("inspect", used).returncode == 0
    # busybox, untouched by the label filter, is still there
    assert skiffd.docker("inspect", "busybox").returncode == 0


def test_image_prune_api_shape(skiffd: Daemon) -> None:
    import docker

    client = docker.DockerClient(base_url=skiffd.host, version="1.41")
    try:
        report = client.images.prune(filters={"label": ["no-image-has-this-label"]})
        assert report == {"ImagesDeleted": None, "SpaceReclaimed": 0}
        with pytest.raises(docker.errors.APIError, match="invalid filter"):
            client.images.prune(filters={"reference": ["x"]})
    finally:
        client.close()


# ---------------------------------------------------------------------------
# hostile archives
# ---------------------------------------------------------------------------


def _tar(entries: list[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            if isinstance(e, tuple):
                info, data = e
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(e)
    return buf.getvalue()


def _file(name: str, data: bytes = b"pwned\n") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _link(name: str, target: str, hard: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    return info


def _dir(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    return info


UP = "../" * 24  # far more than the layer root is deep: would reach "/"


def hostile_layers(token: str, target: str) -> dict[str, list[bytes]]:
    """Kinds of escape, each as the layer tars of one image (base first)."""
    return {
        "dotdot": [_tar([_file(f"{UP}tmp/{token}-dotdot")])],
        "dotdot-inside-a-path": [_tar([_dir("a"), _file(f"a/../../{token}-nested")])],
        "symlink-parent-absolute": [_tar([_link("evil", target), _file("evil/pwned")])],
        "symlink-parent-relative": [_tar([_link("evil", f"{UP}{target.lstrip('/')}"),
                                          _file("evil/pwned")])],
        "symlink-parent-nested": [_tar([_dir("d"), _link("d/up", "../../../../.."),
                                        _file(f"d/up/tmp/{token}-nested-link")])],
        "hardlink-climbing-out": [_tar([_link("hl", f"{UP}etc/passwd", hard=True)])],
        "hardlink-through-symlink": [_tar([_link("s", target),
                                           _link("hl", "s/secret", hard=True)])],
        "whiteout-climbing-out": [_tar([_file(f"../.wh.{token}-victim")])],
        "symlink-parent-from-lower-layer": [
            _tar([_link("evil", target)]),
            _tar([_file("evil/pwned")]),
        ],
    }


def _docker_archive(layers: list[bytes], ref: str | None) -> bytes:
    diff_ids = ["sha256:" + hashlib.sha256(layer).hexdigest() for layer in layers]
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "config": {"Cmd": ["/pwned"]},
        "created": "2024-01-01T00:00:00Z",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": "2024-01-01T00:00:00Z"} for _ in layers],
    }).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    entries: list[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]] = [_file(config_name, config)]
    names = []
    for i, layer in enumerate(layers):
        names.append(f"layer{i}/layer.tar")
        entries += [_dir(f"layer{i}"), _file(names[-1], layer)]
    manifest = [{"Config": config_name, "RepoTags": [ref] if ref else None, "Layers": names}]
    entries.append(_file("manifest.json", json.dumps(manifest).encode()))
    return _tar(entries)


def _tree(root: Path, skip: set[str]) -> dict[str, tuple[int, int]]:
    """Every path under ``root``: (type bits, size) of each; ``skip`` names are left out."""
    found: dict[str, tuple[int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            rel = os.path.relpath(p, root)
            if rel in skip:
                continue
            st = os.lstat(p)
            size = st.st_size if stat.S_ISREG(st.st_mode) else 0
            found[rel] = (stat.S_IFMT(st.st_mode), size)
    return found


def _named(token: str, roots: list[str]) -> list[str]:
    """Paths whose name holds ``token`` directly in ``roots`` (not recursive)."""
    hits = []
    for r in roots:
        try:
            hits += [os.path.join(r, n) for n in os.listdir(r) if token in n]
        except FileNotFoundError:
            continue
    return hits


@pytest.fixture
def trap(skiffd: Daemon) -> Iterator[tuple[str, Path]]:
    """A token and a target directory outside the daemon that hostile tars aim at."""
    token = "skiff-escape-" + secrets.token_hex(4)
    target = Path("/tmp") / f"{token}-target"
    target.mkdir()
    (target / "secret").write_text("secret\n")
    # the daemon makes these lazily; made now, they are not mistaken for debris
    (skiffd.data_root / "tmp").mkdir(exist_ok=True)
    yield token, target
    shutil.rmtree(target, ignore_errors=True)


@pytest.mark.parametrize("kind", sorted(hostile_layers("t", "/t")))
@pytest.mark.parametrize("how", ["load", "import"])
def test_hostile_archive_is_refused_and_writes_nothing_outside(
    skiffd: Daemon, trap: tuple[str, Path], kind: str, how: str, tmp_path: Path
) -> None:
    token, target = trap
    layers = hostile_layers(token, str(target))[kind]
    if how == "import" and len(layers) > 1:
        pytest.skip("docker import takes one layer; the load variant covers lower layers")
    ref = uniq("hostile") + ":x"
    skip = {"skiffd.log"}
    skiffd.settled()  # the previous test's run --rm may still be freeing its layers
    before = _tree(skiffd.base, skip)
    images_before = out(skiffd.docker("images", "-aq", "--no-trunc", check=True))
    if how == "load":
        res = skiffd.docker("load", input=_docker_archive(layers, ref))
    else:
        res = skiffd.docker("import", "-", ref, input=layers[0])
    err = res.stderr.decode()
    # nothing outside: the target untouched, no file named by the token anywhere
    assert sorted(os.listdir(target)) == ["secret"]
    assert (target / "secret").read_text() == "secret\n"
    outside = ["/", "/tmp", "/etc", "/root", str(skiffd.base), str(skiffd.base.parent),
               str(skiffd.data_root)]
    assert _named(token, outside) == [str(target)]
    assert not Path("/etc/passwd").samefile(target) and os.stat("/etc/passwd").st_nlink == 1
    # overlay2 unpacks into an upper directory where a lower layer's symlink
    # is not; it consults the lower layers and refuses exactly as vfs does.
    assert res.returncode != 0, f"{kind} was accepted: {out(res)}"
    assert "refusing" in err or "climbs out" in err, err
    # and nothing left inside: no image, no tag, no layer, no debris
    assert out(skiffd.docker("images", "-aq", "--no-trunc", check=True)) == images_before
    after = _tree(skiffd.base, skip)
    assert set(after) == set(before), {
        "new": sorted(set(after) - set(before))[:20],
        "gone": sorted(set(before) - set(after))[:20],
    }
    # the daemon is fine afterwards
    assert skiffd.docker("run", "--rm", "busybox", "true").returncode == 0


def test_absolute_names_land_inside_the_root(
    skiffd: Daemon, trap: tuple[str, Path], image: list[str]
) -> None:
    """Docker's rule: ``/x`` in a layer tar means ``<root>/x``, never the host's."""
    token, target = trap
    ref = uniq("absolute") + ":x"
    image.append(ref)
    layer = _tar([_file(f"/tmp/{token}-abs", b"inside\n"), _file(f"{target}/planted")])
    skiffd.docker("import", "-", ref, input=layer, check=True)
    assert _named(token, ["/tmp"]) == [str(target)]
    assert sorted(os.listdir(target)) == ["secret"]
    res = skiffd.docker("create", ref, "x")
    cid = out(res).strip()
    try:
        exported = skiffd.docker("export", cid, check=True).stdout
    finally:
        skiffd.docker("rm", "-f", cid)
    with tarfile.open(fileobj=io.BytesIO(exported)) as tar:
        assert tar.extractfile(f"tmp/{token}-abs").read() == b"inside\n"  # type: ignore[union-attr]
        assert f"{target.relative_to('/')}/planted" in tar.getnames()


def test_diff_lists_the_parent_directory_of_a_change(
    skiffd: Daemon, container: list[str]
) -> None:
    name = uniq("parent")
    container.append(name)
    skiffd.docker("run", "--name", name, "busybox", "sh", "-c", "echo x >> /etc/passwd",
                  check=True)
    assert out(skiffd.docker("diff", name, check=True)).splitlines() == [
        "C /etc", "C /etc/passwd"]
