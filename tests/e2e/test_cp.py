"""``docker cp`` both ways, through the archive API (issue 5, item 3).

What is checked on the container side is read from the host through
``/proc/<pid>/root``, independently of the code under test.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import stat
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.daemon import Daemon

SETUP = (
    "mkdir -p /data/sub && echo hi > /data/sub/f && chown 7:8 /data/sub/f"
    " && chmod 604 /data/sub/f && ln -s sub/f /data/link"
    " && ln -s / /escape && ln -s ../../../../../../ /tmp/up && touch /ready"
    " && exec sleep 300"
)


def _pid(d: Daemon, name: str) -> int:
    return json.loads(d.docker("inspect", name, check=True).stdout)[0]["State"]["Pid"]


@pytest.fixture
def ctr(skiffd: Daemon) -> Iterator[tuple[str, Path]]:
    """A running container with /data prepared; (name, its root seen from the host)."""
    name = f"cp-{secrets.token_hex(4)}"
    skiffd.docker("run", "-d", "--name", name, "busybox", "sh", "-c", SETUP, check=True)
    root = Path(f"/proc/{_pid(skiffd, name)}/root")
    deadline = time.monotonic() + 10
    while not (root / "ready").exists():
        assert time.monotonic() < deadline, "container setup did not finish"
        time.sleep(0.05)
    yield name, root
    skiffd.docker("rm", "-f", name)


def _owner_mode(p: Path) -> tuple[int, int, int]:
    st = p.lstat()
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def test_cp_file_and_dir_into_running_container(skiffd: Daemon, ctr: tuple[str, Path],
                                                tmp_path: Path) -> None:
    name, root = ctr
    f = tmp_path / "file.txt"
    f.write_text("payload\n")
    os.chown(f, 1234, 2345)
    f.chmod(0o640)
    skiffd.docker("cp", str(f), f"{name}:/tmp/", check=True)
    assert (root / "tmp/file.txt").read_text() == "payload\n"
    assert _owner_mode(root / "tmp/file.txt") == (1234, 2345, 0o640)

    d = tmp_path / "tree"
    (d / "a/b").mkdir(parents=True)
    (d / "a/b/x").write_text("x")
    (d / "a/rel").symlink_to("b/x")
    (d / "a").chmod(0o711)
    skiffd.docker("cp", str(d), f"{name}:/tmp/", check=True)
    assert (root / "tmp/tree/a/b/x").read_text() == "x"
    assert os.readlink(root / "tmp/tree/a/rel") == "b/x"
    assert _owner_mode(root / "tmp/tree/a")[2] == 0o711
    # a destination that does not exist yet: the directory is renamed
    skiffd.docker("cp", str(d), f"{name}:/tmp/renamed", check=True)
    assert (root / "tmp/renamed/a/b/x").read_text() == "x"
    # content only, with a trailing /.
    skiffd.docker("cp", f"{d}/.", f"{name}:/data/", check=True)
    assert (root / "data/a/b/x").read_text() == "x"


def test_cp_out_of_running_container(skiffd: Daemon, ctr: tuple[str, Path],
                                     tmp_path: Path) -> None:
    name, _ = ctr
    skiffd.docker("cp", f"{name}:/data", str(tmp_path), check=True)
    f = tmp_path / "data/sub/f"
    assert f.read_text() == "hi\n"
    # the CLI unpacks as the invoking user (Docker's NoLchown): modes are kept
    assert _owner_mode(f)[2] == 0o604
    # ... and the tar the daemon sends carries the container's ownership
    client = docker.APIClient(base_url=skiffd.host, version="1.41", timeout=60)
    try:
        chunks, st = client.get_archive(name, "/data")
        with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tf:
            m = tf.getmember("data/sub/f")
            assert (m.uid, m.gid, m.mode) == (7, 8, 0o604)
            assert tf.getmember("data/link").linkname == "sub/f"
        assert st["name"] == "data" and st["mode"] & (1 << 31)  # os.ModeDir
    finally:
        client.close()
    assert os.readlink(tmp_path / "data/link") == "sub/f"

    skiffd.docker("cp", f"{name}:/data/sub/f", str(tmp_path / "single"), check=True)
    assert (tmp_path / "single").read_text() == "hi\n"
    # a symbolic link is copied as a link; -L follows it (inside the container)
    skiffd.docker("cp", f"{name}:/data/link", str(tmp_path / "l1"), check=True)
    assert os.readlink(tmp_path / "l1") == "sub/f"
    skiffd.docker("cp", "-L", f"{name}:/data/link", str(tmp_path / "l2"), check=True)
    assert not (tmp_path / "l2").is_symlink() and (tmp_path / "l2").read_text() == "hi\n"
    # a missing path is a clear error
    res = skiffd.docker("cp", f"{name}:/nope", str(tmp_path / "x"))
    assert res.returncode != 0 and b"Could not find the file /nope" in res.stderr, res


def test_symlinks_cannot_reach_the_host(skiffd: Daemon, ctr: tuple[str, Path],
                                        tmp_path: Path) -> None:
    name, root = ctr
    secret = tmp_path / "host-secret"
    secret.write_text("host only\n")
    target_dir = tmp_path / "host-dir"
    target_dir.mkdir()
    payload = tmp_path / "payload"
    payload.write_text("evil\n")

    # reading: /escape -> "/" is the container's root, not the host's
    out = tmp_path / "out"
    out.mkdir()
    res = skiffd.docker("cp", f"{name}:/escape{secret}", str(out / "a"))
    assert res.returncode != 0 and not (out / "a").exists()
    res = skiffd.docker("cp", f"{name}:/tmp/up{secret}", str(out / "b"))
    assert res.returncode != 0 and not (out / "b").exists()
    skiffd.docker("cp", f"{name}:/escape/etc/hostname", str(out / "hn"), check=True)
    assert (out / "hn").read_text() == (root / "etc/hostname").read_text()
    assert "host only" not in "".join(p.read_text() for p in out.iterdir() if p.is_file())

    # writing through the same links lands inside the container or nowhere
    for link in ("/escape", "/tmp/up"):
        skiffd.docker("cp", str(payload), f"{name}:{link}{target_dir}/")
        skiffd.docker("cp", str(payload), f"{name}:{link}/tmp/")
    assert list(target_dir.iterdir()) == []
    assert secret.read_text() == "host only\n"
    assert not Path("/tmp/payload").exists() or Path("/tmp/payload").read_text() != "evil\n"
    assert (root / "tmp/payload").read_text() == "evil\n"  # the container's /tmp
    # a link planted as the destination itself
    skiffd.docker("cp", str(payload), f"{name}:/escape")
    assert not Path("/payload").exists()


def test_cp_into_stopped_container(skiffd: Daemon, tmp_path: Path) -> None:
    name = f"cp-{secrets.token_hex(4)}"
    skiffd.docker("create", "--name", name, "busybox", "cat", "/tmp/in.txt", check=True)
    try:
        f = tmp_path / "in.txt"
        f.write_text("before start\n")
        skiffd.docker("cp", str(f), f"{name}:/tmp/", check=True)
        # and out of it again while it is stopped
        skiffd.docker("cp", f"{name}:/tmp/in.txt", str(tmp_path / "back"), check=True)
        assert (tmp_path / "back").read_text() == "before start\n"
        res = skiffd.docker("start", "-a", name, check=True)
        assert res.stdout == b"before start\n"
        # a symlink planted in the (now stopped) container still resolves inside it
        skiffd.docker("cp", f"{name}:/etc/passwd", str(tmp_path / "pw"), check=True)
        assert b"root:x:0:0" in (tmp_path / "pw").read_bytes()
    finally:
        skiffd.docker("rm", "-f", name)


def _tar(*entries: tuple[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for entry, data in entries:
            ti = tarfile.TarInfo(entry)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def test_put_archive_with_dotdot_is_refused_and_leaves_nothing(
        skiffd: Daemon, ctr: tuple[str, Path]) -> None:
    name, root = ctr
    client = docker.APIClient(base_url=skiffd.host, version="1.41", timeout=60)
    try:
        data = _tar(("ok-first.txt", b"ok"), ("../../evil.txt", b"evil"))
        with pytest.raises(docker.errors.APIError) as err:
            client.put_archive(name, "/tmp", data)
        assert err.value.response.status_code == 400
        assert not (root / "tmp/ok-first.txt").exists()
        assert not (root / "evil.txt").exists()
        # PUT into something that is not a directory
        with pytest.raises(docker.errors.APIError) as err:
            client.put_archive(name, "/data/sub/f", _tar(("x", b"x")))
        assert err.value.response.status_code == 400
        # noOverwriteDirNonDir (the CLI always sets it): a file may not replace a dir
        res = client.put(client._url("/containers/{0}/archive", name),
                         params={"path": "/data", "noOverwriteDirNonDir": "true"},
                         data=_tar(("sub", b"not a dir")))
        assert res.status_code == 400, res.text
        assert (root / "data/sub").is_dir()
        # without it, Docker's rule is to replace
        client.put_archive(name, "/data", _tar(("sub", b"now a file")))
        assert (root / "data/sub").read_bytes() == b"now a file"
        # the stat header of HEAD
        st = client.get_archive(name, "/data/link")[1]
        assert st["name"] == "link" and st["linkTarget"] == "/data/sub/f"
        assert st["mode"] & (1 << 27)  # Go's os.ModeSymlink
    finally:
        client.close()


def test_cp_sees_bind_mounts_as_the_container_does(skiffd: Daemon, tmp_path: Path) -> None:
    bind = tmp_path / "bind"
    bind.mkdir()
    (bind / "from-host").write_text("mounted\n")
    name = f"cp-{secrets.token_hex(4)}"
    skiffd.docker("run", "-d", "--name", name, "-v", f"{bind}:/mnt", "busybox",
                  "sleep", "300", check=True)
    try:
        f = tmp_path / "in"
        f.write_text("through the mount\n")
        skiffd.docker("cp", str(f), f"{name}:/mnt/", check=True)
        assert (bind / "in").read_text() == "through the mount\n"
        skiffd.docker("cp", f"{name}:/mnt/from-host", str(tmp_path / "out"), check=True)
        assert (tmp_path / "out").read_text() == "mounted\n"
    finally:
        skiffd.docker("rm", "-f", name)


def test_cp_archive_mode_takes_the_containers_user(skiffd: Daemon, tmp_path: Path) -> None:
    name = f"cp-{secrets.token_hex(4)}"
    skiffd.docker("create", "--name", name, "--user", "nobody", "busybox", "true", check=True)
    client = docker.APIClient(base_url=skiffd.host, version="1.41", timeout=60)
    try:
        f = tmp_path / "owned"
        f.write_text("x")
        os.chown(f, 1234, 2345)
        skiffd.docker("cp", "-a", str(f), f"{name}:/tmp/", check=True)
        skiffd.docker("cp", str(f), f"{name}:/tmp/plain", check=True)
        for path, ids in (("/tmp/owned", (65534, 65534)), ("/tmp/plain", (1234, 2345))):
            chunks, _ = client.get_archive(name, path)
            with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tf:
                m = tf.getmembers()[0]
                assert (m.uid, m.gid) == ids, path
    finally:
        client.close()
        skiffd.docker("rm", "-f", name)


def test_cp_sees_volumes_and_binds_of_a_stopped_container(skiffd: Daemon,
                                                          tmp_path: Path) -> None:
    tag = secrets.token_hex(4)
    name, vol, rovol = f"cp-{tag}", f"cpvol-{tag}", f"cpro-{tag}"
    bind = tmp_path / "bind"
    bind.mkdir()
    (bind / "from-host").write_text("bound\n")
    (tmp_path / "host-secret").write_text("secret\n")
    client = docker.APIClient(base_url=skiffd.host, version="1.41", timeout=60)
    try:
        for v in (vol, rovol):
            skiffd.docker("volume", "create", v, check=True)
        data = Path(client.inspect_volume(vol)["Mountpoint"])
        (data / "file").write_text("in the volume\n")
        (data / "rel").symlink_to("file")
        (Path(client.inspect_volume(rovol)["Mountpoint"]) / "ro-file").write_text("ro\n")
        skiffd.docker("create", "--name", name, "-v", f"{vol}:/data", "-v", f"{bind}:/bind",
                      "-v", f"{rovol}:/ro:ro", "busybox", "true", check=True)

        # out of the volume, the bind mount and the read-only volume
        skiffd.docker("cp", f"{name}:/data/file", str(tmp_path / "out"), check=True)
        assert (tmp_path / "out").read_text() == "in the volume\n"
        skiffd.docker("cp", f"{name}:/data", str(tmp_path / "whole"), check=True)
        assert (tmp_path / "whole/file").read_text() == "in the volume\n"
        skiffd.docker("cp", f"{name}:/bind/from-host", str(tmp_path / "b"), check=True)
        assert (tmp_path / "b").read_text() == "bound\n"
        skiffd.docker("cp", f"{name}:/ro/ro-file", str(tmp_path / "r"), check=True)
        assert (tmp_path / "r").read_text() == "ro\n"
        st = client.get_archive(name, "/data/rel")[1]
        assert st["linkTarget"] == "/data/file"

        # into them: the files land in the volume and the host directory
        f = tmp_path / f"new-{tag}"
        f.write_text("copied in\n")
        skiffd.docker("cp", str(f), f"{name}:/data/", check=True)
        assert (data / f.name).read_text() == "copied in\n"
        skiffd.docker("cp", str(f), f"{name}:/bind/", check=True)
        assert (bind / f.name).read_text() == "copied in\n"
        res = skiffd.docker("run", "--rm", "-v", f"{vol}:/v", "busybox", "cat", f"/v/{f.name}",
                            check=True)
        assert res.stdout == b"copied in\n"
        # ... but not into the read-only volume
        res = skiffd.docker("cp", str(f), f"{name}:/ro/")
        assert res.returncode != 0
        assert b"read-only" in res.stderr
        assert not (Path(client.inspect_volume(rovol)["Mountpoint"]) / f.name).exists()

        # symbolic links in the volume stay inside it
        (data / "abs").symlink_to("/")
        (data / "up").symlink_to("../../../../../../../../")
        for via in ("/data/abs", "/data/up"):
            res = skiffd.docker("cp", f"{name}:{via}{tmp_path}/host-secret",
                                str(tmp_path / "leak"))
            assert res.returncode != 0, via
            assert not (tmp_path / "leak").exists()
        skiffd.docker("cp", str(f), f"{name}:/data/up/", check=True)
        assert (data / f.name).exists()
        assert not Path("/", f.name).exists()
    finally:
        client.close()
        skiffd.docker("rm", "-f", name)
        skiffd.docker("volume", "rm", vol, rovol)
