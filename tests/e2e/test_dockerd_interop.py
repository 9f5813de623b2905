"""Image archives travel between skiffd and a real dockerd with their IDs intact.

An image saved by skiff loads into dockerd (Debian's docker.io) with the same
image ID, and one saved by dockerd loads into skiff with the same ID: both
sides check every layer against the config's diff_ids, so this also proves
that skiff reproduces layer tars byte for byte (whiteouts included).

The test runs a private dockerd: its own data-root, exec-root, pidfile, socket
and config file, no bridge, no iptables, the vfs storage driver (so it mounts
nothing), and it is stopped at the end together with the containerd it
spawned.  Skipped where dockerd is not installed (``scripts/install.sh
--test`` installs it).
"""

from __future__ import annotations

import io
import json
import secrets
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.engines import Dockerd
from tests.daemon import Daemon
from tests.dockerd import own_dockerd

pytestmark = pytest.mark.skipif(
    not Dockerd.available(),
    reason="dockerd (Debian's docker.io) is not installed; scripts/install.sh --test installs it",
)


@pytest.fixture(scope="module")
def dockerd() -> Iterator[Dockerd]:
    with own_dockerd("skiff-dk") as d:
        yield d


def _image_id(run, ref: str) -> str:  # type: ignore[no-untyped-def]
    return run("image", "inspect", "--format", "{{.Id}}", ref).stdout.decode().strip()


def _rootfs_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o755
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_skiff_saves_dockerd_loads_same_ids(skiffd: Daemon, dockerd: Dockerd,
                                            tmp_path: Path) -> None:
    tag = secrets.token_hex(3)
    name = f"interop-{tag}"
    # a second layer with an addition, a change, a deletion (whiteout) and an xattr-free dir
    skiffd.docker("run", "--name", name, "busybox", "sh", "-c",
                  "echo made by skiff > /made; echo more >> /etc/group; rm /bin/ls;"
                  " mkdir -p /opt/x && chmod 700 /opt/x", check=True)
    try:
        skiffd.docker("commit", "-m", "interop", "-c", "ENV ORIGIN=skiff", name,
                      f"skiff-made:{tag}", check=True)
    finally:
        skiffd.docker("rm", "-f", name)
    refs = ["busybox:latest", f"skiff-made:{tag}"]
    ids = {r: _image_id(skiffd.docker, r) for r in refs}
    archive = tmp_path / "from-skiff.tar"
    skiffd.docker("save", "-o", str(archive), *refs, check=True)
    try:
        res = dockerd.docker("load", "-i", str(archive))
        assert "Loaded image: skiff-made:" + tag in res.stdout.decode()
        for r in refs:
            assert _image_id(dockerd.docker, r) == ids[r], r
        # dockerd runs nothing here, but it did unpack and verify every layer
        history = dockerd.docker("history", "--format", "{{.Comment}}", refs[1]).stdout
        assert history.decode().splitlines()[0] == "interop"

        # ... and back: what dockerd saves of skiff's image loads into skiff unchanged
        back = tmp_path / "from-dockerd.tar"
        dockerd.docker("save", "-o", str(back), refs[1])
        skiffd.docker("rmi", refs[1], check=True)
        assert skiffd.docker("image", "inspect", refs[1]).returncode != 0
        skiffd.docker("load", "-i", str(back), check=True)
        assert _image_id(skiffd.docker, refs[1]) == ids[refs[1]]
        res = skiffd.docker("run", "--rm", refs[1], "sh", "-c",
                            "cat /made; echo $ORIGIN; ls /bin/ls 2>/dev/null || echo gone",
                            check=True)
        assert res.stdout.decode() == "made by skiff\nskiff\ngone\n"
    finally:
        skiffd.docker("rmi", "-f", refs[1])
        dockerd.docker("rmi", "-f", *refs, check=False)


def test_dockerd_saves_skiff_loads_same_ids(skiffd: Daemon, dockerd: Dockerd,
                                            tmp_path: Path) -> None:
    tag = secrets.token_hex(3)
    ref = f"docker-made:{tag}"
    busybox = Path("/bin/busybox").read_bytes()
    layer = _rootfs_tar({"bin/busybox": busybox, "etc/made-by": b"dockerd\n"})
    dockerd.docker("import", "-c", 'CMD ["/bin/busybox", "cat", "/etc/made-by"]',
                   "-c", "ENV ORIGIN=dockerd", "-m", "from dockerd", "-", ref, input=layer)
    try:
        want = _image_id(dockerd.docker, ref)
        archive = tmp_path / "from-dockerd.tar"
        dockerd.docker("save", "-o", str(archive), ref)
        res = skiffd.docker("load", "-i", str(archive), check=True)
        assert f"Loaded image: {ref}" in res.stdout.decode()
        assert _image_id(skiffd.docker, ref) == want
        info = json.loads(skiffd.docker("image", "inspect", ref, check=True).stdout)[0]
        assert info["Comment"] == "from dockerd"
        assert "ORIGIN=dockerd" in info["Config"]["Env"]
        assert skiffd.docker("run", "--rm", ref, check=True).stdout == b"dockerd\n"
        # skiff saves it again; dockerd, after forgetting it, takes it back as the same image
        again = tmp_path / "again.tar"
        skiffd.docker("save", "-o", str(again), ref, check=True)
        dockerd.docker("rmi", ref)
        dockerd.docker("load", "-i", str(again))
        assert _image_id(dockerd.docker, ref) == want
    finally:
        skiffd.docker("rmi", "-f", ref)
        dockerd.docker("rmi", "-f", ref, check=False)
