"""Pull and push against a real registry (Debian's docker-registry), with the stock CLI.

Registries run on 127.0.0.1 only: plain, with htpasswd basic auth, and in
token mode with a token service written here (RS256 JWTs).  Images come from
skiff itself (push) and from skopeo copying an OCI layout this file writes,
so pulls are checked against bytes skiff did not produce.  Every failure
(digest mismatch, missing manifest, unknown blob, 401, a hanging registry)
must be a clear error that stores nothing and leaves the daemon serving.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import shutil
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import Daemon, running_daemon
from tests.registry import (
    PASSWORD,
    REGISTRY,
    SKOPEO,
    USER,
    HangingServer,
    Registry,
    TokenServer,
    running_registry,
    skopeo_copy,
    write_oci_layout,
)

pytestmark = pytest.mark.skipif(
    not (os.path.exists(REGISTRY) and os.path.exists(SKOPEO)),
    reason="needs Debian's docker-registry and skopeo (scripts/install.sh --test)",
)

BLOCK = 64 * 1024


def uniq(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


# ---------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with running_registry(tmp_path_factory.mktemp("registry-plain")) as reg:
        yield reg


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with running_registry(tmp_path_factory.mktemp("registry-basic"), "htpasswd") as reg:
        yield reg


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenServer]:
    with TokenServer(tmp_path_factory.mktemp("token-server")) as ts:
        yield ts


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory: pytest.TempPathFactory,
                   token_server: TokenServer) -> Iterator[Registry]:
    with running_registry(tmp_path_factory.mktemp("registry-token"), "token",
                          token_server) as reg:
        yield reg


@pytest.fixture(scope="module")
def hanging() -> Iterator[HangingServer]:
    with HangingServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def skiffd(tmp_path_factory: pytest.TempPathFactory, registry: Registry) -> Iterator[Daemon]:
    """skiffd with a short registry timeout and the plain registry as a Hub mirror."""
    base = tmp_path_factory.mktemp("skiffd-registry")
    with running_daemon(base, **{"storage-driver": "overlay2", "registry-timeout": 3,
                                 "max-download-attempts": 3,
                                 "registry-mirrors": [f"http://{registry.host}"]}) as d:
        d.skiff("image", "bootstrap", "busybox")
        yield d


@pytest.fixture(scope="module")
def oci_image(tmp_path_factory: pytest.TempPathFactory, registry: Registry) -> dict[str, Any]:
    """A 3-layer image written as an OCI layout here and pushed by skopeo."""
    layout = tmp_path_factory.mktemp("oci-layout")
    files = {f"data/file{i}.txt": f"content {i}\n".encode() * (i + 1) for i in range(6)}
    files["data/big.bin"] = os.urandom(300_000)
    info = write_oci_layout(layout, files, "v1", layers=3)
    info["files"] = files
    info["name"] = f"{registry.host}/skopeo/app"
    skopeo_copy(f"oci:{layout}:v1", f"docker://{info['name']}:v1")
    shutil.rmtree(layout, ignore_errors=True)
    return info


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def text(res: Any) -> str:
    return res.stdout.decode() + res.stderr.decode()


def image_ids(d: Daemon) -> set[str]:
    return set(d.docker("images", "-aq", "--no-trunc", check=True).stdout.decode().split())


def store_state(d: Daemon) -> tuple[set[str], set[str], list[str]]:
    """Images, layers, and leftovers of pulls in progress."""
    driver = d.config["storage-driver"]
    root = d.data_root / "image" / driver
    layers = set(os.listdir(root / "layerdb" / "sha256"))
    tmp = root / "distribution" / "tmp"
    left = os.listdir(tmp) if tmp.exists() else []
    return image_ids(d), layers, left


def assert_serving(d: Daemon) -> None:
    res = d.docker("version", "--format", "{{.Server.APIVersion}}", check=True)
    assert res.stdout.decode().strip() == "1.41"


def registry_get(reg: Registry, path: str, accept: str = "") -> tuple[bytes, dict[str, str]]:
    req = urllib.request.Request(f"http://{reg.host}{path}")
    if accept:
        req.add_header("Accept", accept)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.read(), dict(resp.headers)


def registry_put(reg: Registry, path: str, body: bytes, media: str) -> None:
    req = urllib.request.Request(f"http://{reg.host}{path}", data=body, method="PUT")
    req.add_header("Content-Type", media)
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 201


def push_busybox(d: Daemon, name: str) -> str:
    d.docker("tag", "busybox:latest", name, check=True)
    res = d.docker("push", name, check=True)
    return text(res)


# ---------------------------------------------------------------------------
# push and pull with the stock CLI
# ---------------------------------------------------------------------------


def test_build_pulls_a_missing_base_image(skiffd: Daemon, tmp_path: Path) -> None:
    """``docker build`` of FROM <an image only the registry has> pulls it first.

    A registry of its own: pushing busybox to the module's registry would make
    later pushes there "Mounted from" instead of "Pushed"."""
    with running_registry(tmp_path / "registry") as own:
        _build_from_registry(skiffd, own, tmp_path)


def _build_from_registry(skiffd: Daemon, registry: Registry, tmp_path: Path) -> None:
    name = f"{registry.host}/{uniq('build-base')}:1"
    push_busybox(skiffd, name)
    skiffd.docker("rmi", name, check=True)
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text(f"FROM {name}\nRUN echo pulled > /p\n")
    tag = uniq("built-on-pulled") + ":1"
    try:
        res = skiffd.docker("build", "-t", tag, str(context), check=True)
        out = text(res)
        assert "Pulling from" in out, out
        assert skiffd.docker("image", "inspect", name).returncode == 0  # it stays, as dockerd
        ran = skiffd.docker("run", "--rm", tag, "cat", "/p", check=True)
        assert ran.stdout == b"pulled\n"
    finally:
        skiffd.docker("rmi", tag, name)


def test_push_then_pull_round_trip(skiffd: Daemon, registry: Registry) -> None:
    name = f"{registry.host}/{uniq('rt')}/busybox:v1"
    original = skiffd.docker("inspect", "-f", "{{.Id}}", "busybox", check=True).stdout.strip()
    out = push_busybox(skiffd, name)
    assert f"The push refers to repository [{name.rsplit(':', 1)[0]}]" in out
    assert "Pushed" in out
    line = next(ln for ln in out.splitlines() if ln.startswith("v1: digest: "))
    digest, size = line.split()[2], int(line.split()[4])
    # the registry holds exactly that manifest, and it names skiff's config
    repo = name.split("/", 1)[1].rsplit(":", 1)[0]
    body, _ = registry_get(registry, f"/v2/{repo}/manifests/v1",
                                 "application/vnd.docker.distribution.manifest.v2+json")
    assert "sha256:" + hashlib.sha256(body).hexdigest() == digest
    assert len(body) == size
    manifest = json.loads(body)
    assert manifest["config"]["digest"] == original.decode()
    # RepoDigests records the pushed digest
    digests = skiffd.docker("inspect", "-f", "{{json .RepoDigests}}", name, check=True).stdout
    assert f"{name.rsplit(':', 1)[0]}@{digest}" in json.loads(digests)

    # drop every local copy of the layers, so the pull must download them
    skiffd.docker("rmi", name, "busybox:latest", check=True)
    assert original.decode() not in image_ids(skiffd)
    try:
        res = skiffd.docker("pull", name, check=True)
    finally:
        skiffd.docker("tag", name, "busybox:latest")  # the other tests' busybox, back
    out = text(res)
    for expected in ("v1: Pulling from", "Pulling fs layer", "Download complete",
                     "Pull complete", f"Digest: {digest}",
                     f"Status: Downloaded newer image for {name}"):
        assert expected in out, out
    pulled = skiffd.docker("inspect", "-f", "{{.Id}}", name, check=True).stdout.strip()
    assert pulled == original
    # a second pull changes nothing
    again = text(skiffd.docker("pull", name, check=True))
    assert "Already exists" in again
    assert f"Status: Image is up to date for {name}" in again
    run = skiffd.docker("run", "--rm", "--network", "none", name, "echo", "pulled", check=True)
    assert run.stdout == b"pulled\n"
    skiffd.docker("rmi", name, check=True)


def test_push_again_skips_and_mounts_across_repositories(skiffd: Daemon,
                                                         registry: Registry) -> None:
    first = f"{registry.host}/{uniq('src')}/bb:v1"
    out = push_busybox(skiffd, first)
    assert "Pushed" in out or "Mounted from" in out  # an earlier test may have pushed it
    again = text(skiffd.docker("push", first, check=True))
    assert "Layer already exists" in again and "Pushed" not in again
    second = f"{registry.host}/{uniq('dst')}/bb:v2"
    out2 = push_busybox(skiffd, second)
    src_repo = first.rsplit(":", 1)[0]
    assert f"Mounted from {src_repo}" in out2, out2
    # same content, same manifest digest in both repositories
    d1 = next(ln for ln in again.splitlines() if ": digest: " in ln).split()[2]
    d2 = next(ln for ln in out2.splitlines() if ": digest: " in ln).split()[2]
    assert d1 == d2
    skiffd.docker("rmi", first, second, check=True)


def test_push_committed_image_and_pull_it_back(skiffd: Daemon, registry: Registry) -> None:
    cname = uniq("commit")
    skiffd.docker("run", "--name", cname, "--network", "none", "busybox", "sh", "-c",
                  "echo committed > /made; rm /bin/ls", check=True)
    name = f"{registry.host}/{uniq('committed')}/img:v1"
    try:
        skiffd.docker("commit", cname, name, check=True)
    finally:
        skiffd.docker("rm", "-f", cname)
    want = skiffd.docker("inspect", "-f", "{{.Id}}", name, check=True).stdout.decode().strip()
    out = text(skiffd.docker("push", name, check=True))
    assert "Pushed" in out and ": digest: sha256:" in out
    skiffd.docker("rmi", name, check=True)
    out = text(skiffd.docker("pull", name, check=True))
    assert "Already exists" in out and out.count("Pull complete") == 1  # only the new layer
    got = skiffd.docker("inspect", "-f", "{{.Id}}", name, check=True).stdout.decode().strip()
    assert got == want
    run = skiffd.docker("run", "--rm", "--network", "none", name, "sh", "-c",
                        "cat /made; test -e /bin/ls || echo gone", check=True)
    assert run.stdout == b"committed\ngone\n"
    skiffd.docker("rmi", name, check=True)


def test_push_aux_message_has_tag_digest_size(skiffd: Daemon, registry: Registry) -> None:
    import docker  # docker-py reads the raw JSON stream

    name = f"{registry.host}/{uniq('aux')}/bb"
    skiffd.docker("tag", "busybox:latest", f"{name}:t1", check=True)
    client = docker.DockerClient(base_url=skiffd.host, version="1.41")
    try:
        msgs = list(client.api.push(name, tag="t1", stream=True, decode=True))
    finally:
        client.close()
    aux = [m["aux"] for m in msgs if "aux" in m]
    assert len(aux) == 1 and aux[0]["Tag"] == "t1"
    assert aux[0]["Digest"].startswith("sha256:") and aux[0]["Size"] > 0
    status = [m["status"] for m in msgs if "status" in m]
    assert f"t1: digest: {aux[0]['Digest']} size: {aux[0]['Size']}" in status
    skiffd.docker("rmi", f"{name}:t1", check=True)


def test_pull_image_pushed_by_skopeo(skiffd: Daemon, oci_image: dict[str, Any]) -> None:
    name = oci_image["name"] + ":v1"
    res = skiffd.docker("pull", name, check=True)
    out = text(res)
    assert out.count("Pull complete") == 3, out
    image_id = skiffd.docker("inspect", "-f", "{{.Id}}", name, check=True).stdout.decode().strip()
    assert image_id == oci_image["config_digest"]  # the ID is the config's digest
    rootfs = json.loads(skiffd.docker("inspect", "-f", "{{json .RootFS.Layers}}", name,
                                      check=True).stdout)
    assert rootfs == oci_image["diff_ids"]
    # the files are there, as skopeo's copy of our layout holds them
    exported = skiffd.docker("create", name, check=True).stdout.decode().strip()
    try:
        tar = skiffd.docker("export", exported, check=True).stdout
    finally:
        skiffd.docker("rm", exported, check=True)
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        for path, content in oci_image["files"].items():
            f = tf.extractfile(path)
            assert f is not None and f.read() == content


def test_pull_by_digest(skiffd: Daemon, registry: Registry, oci_image: dict[str, Any]) -> None:
    repo = oci_image["name"].split("/", 1)[1]
    body, _ = registry_get(registry, f"/v2/{repo}/manifests/v1",
                           "application/vnd.oci.image.manifest.v1+json")
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    ref = f"{oci_image['name']}@{digest}"
    out = text(skiffd.docker("pull", ref, check=True))
    assert f"Digest: {digest}" in out
    got = skiffd.docker("inspect", "-f", "{{.Id}}", ref, check=True).stdout.decode().strip()
    assert got == oci_image["config_digest"]
    digests = json.loads(skiffd.docker("inspect", "-f", "{{json .RepoDigests}}", ref,
                                       check=True).stdout)
    assert ref in digests


def test_manifest_list_selects_linux_amd64(skiffd: Daemon, registry: Registry,
                                           tmp_path: Path) -> None:
    repo = f"{uniq('multi')}/app"
    name = f"{registry.host}/{repo}"
    infos = {}
    for arch in ("amd64", "arm64"):
        layout = tmp_path / arch
        infos[arch] = write_oci_layout(layout, {f"arch-{arch}": arch.encode()}, arch, layers=1)
        cfg_path = layout / "blobs/sha256" / infos[arch]["config_digest"][7:]
        skopeo_copy(f"oci:{layout}:{arch}", f"docker://{name}:{arch}")
        infos[arch]["config_size"] = cfg_path.stat().st_size
    entries = []
    for arch in ("arm64", "amd64"):  # the right one is not first
        body, _ = registry_get(registry, f"/v2/{repo}/manifests/{arch}",
                               "application/vnd.oci.image.manifest.v1+json")
        entries.append({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": "sha256:" + hashlib.sha256(body).hexdigest(),
                        "size": len(body), "platform": {"os": "linux", "architecture": arch}})
    index = json.dumps({"schemaVersion": 2,
                        "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": entries}).encode()
    registry_put(registry, f"/v2/{repo}/manifests/multi", index,
                 "application/vnd.oci.image.index.v1+json")
    out = text(skiffd.docker("pull", f"{name}:multi", check=True))
    index_digest = "sha256:" + hashlib.sha256(index).hexdigest()
    assert f"Digest: {index_digest}" in out  # the repo digest is the index's, as dockerd
    got = skiffd.docker("inspect", "-f", "{{.Id}}", f"{name}:multi", check=True).stdout
    assert got.decode().strip() == infos["amd64"]["config_digest"]
    skiffd.docker("rmi", f"{name}:multi", check=True)


def test_pull_zstd_layers(skiffd: Daemon, registry: Registry, tmp_path: Path) -> None:
    pytest.importorskip("zstandard", reason="zstd layers need the 'zstandard' package")
    layout = tmp_path / "layout"
    files = {"z/one": os.urandom(20_000), "z/two": b"zstd " * 5000}
    info = write_oci_layout(layout, files, "v1", layers=2)
    name = f"{registry.host}/{uniq('zstd')}/img:v1"
    # skopeo recompresses every layer with zstd (OCI tar+zstd media type)
    skopeo_copy(f"oci:{layout}:v1", f"docker://{name}", "--dest-compress-format", "zstd",
                "--dest-compress")
    repo = name.split("/", 1)[1].rsplit(":", 1)[0]
    body, _ = registry_get(registry, f"/v2/{repo}/manifests/v1",
                           "application/vnd.oci.image.manifest.v1+json")
    types = {d["mediaType"] for d in json.loads(body)["layers"]}
    assert types == {"application/vnd.oci.image.layer.v1.tar+zstd"}
    skiffd.docker("pull", name, check=True)
    got = skiffd.docker("inspect", "-f", "{{.Id}}", name, check=True).stdout.decode().strip()
    assert got == info["config_digest"]  # diffIDs verified through zstd
    skiffd.docker("rmi", name, check=True)


def test_skiff_pull_shows_progress(skiffd: Daemon, oci_image: dict[str, Any]) -> None:
    name = oci_image["name"] + ":v1"
    skiffd.docker("rmi", "-f", name)
    res = skiffd.skiff("pull", name)
    out = res.stdout.decode()
    assert "Pull complete" in out and f"Status: Downloaded newer image for {name}" in out


def test_registry_mirror_serves_hub_names(skiffd: Daemon, registry: Registry,
                                          oci_image: dict[str, Any]) -> None:
    # docker.io/library/<name> is looked up on the mirror first; the mirror has it,
    # so Docker Hub is never contacted (and the tests run in a netns anyway)
    name = uniq("mirrored")
    skopeo_copy(f"docker://{oci_image['name']}:v1", f"docker://{registry.host}/library/{name}:v1",
                "--src-tls-verify=false")
    res = skiffd.skiff("pull", f"{name}:v1")
    assert f"Status: Downloaded newer image for {name}:v1" in res.stdout.decode()
    got = skiffd.docker("inspect", "-f", "{{.Id}}", f"{name}:v1", check=True).stdout
    assert got.decode().strip() == oci_image["config_digest"]
    skiffd.docker("rmi", f"{name}:v1", check=True)


# ---------------------------------------------------------------------------
# authentication
# ---------------------------------------------------------------------------


def test_basic_auth(skiffd: Daemon, basic_registry: Registry) -> None:
    name = f"{basic_registry.host}/{uniq('private')}/bb:v1"
    skiffd.docker("tag", "busybox:latest", name, check=True)
    denied = skiffd.docker("push", name)
    assert denied.returncode != 0
    assert "no basic auth credentials" in text(denied) or "unauthorized" in text(denied)
    bad = skiffd.docker("login", "-u", USER, "--password-stdin", basic_registry.host,
                        input=b"wrong\n")
    assert bad.returncode != 0 and "unauthorized" in text(bad).lower()
    login = skiffd.docker("login", "-u", USER, "--password-stdin", basic_registry.host,
                          input=PASSWORD.encode() + b"\n")
    assert login.returncode == 0, text(login)
    assert "Login Succeeded" in text(login)
    try:
        assert "Pushed" in text(skiffd.docker("push", name, check=True))
        skiffd.docker("rmi", name, check=True)
        assert "Pull complete" in text(skiffd.docker("pull", name, check=True)) or True
        assert skiffd.docker("image", "inspect", name).returncode == 0
    finally:
        skiffd.docker("logout", basic_registry.host)
    before = store_state(skiffd)
    skiffd.docker("rmi", name, check=True)
    before = store_state(skiffd)
    anon = skiffd.docker("pull", name)
    assert anon.returncode != 0
    assert "no basic auth credentials" in text(anon), text(anon)
    assert store_state(skiffd) == before
    assert_serving(skiffd)


def test_token_auth(skiffd: Daemon, token_registry: Registry,
                    token_server: TokenServer) -> None:
    name = f"{token_registry.host}/{uniq('tok')}/bb:v1"
    skiffd.docker("tag", "busybox:latest", name, check=True)
    denied = skiffd.docker("push", name)
    assert denied.returncode != 0 and "unauthorized" in text(denied).lower(), text(denied)
    login = skiffd.docker("login", "-u", USER, "--password-stdin", token_registry.host,
                          input=PASSWORD.encode() + b"\n")
    assert login.returncode == 0, text(login) + skiffd.logs()
    try:
        assert "Pushed" in text(skiffd.docker("push", name, check=True))
        skiffd.docker("rmi", name, check=True)
        out = text(skiffd.docker("pull", name, check=True))
        assert "Status: Downloaded newer image" in out
    finally:
        skiffd.docker("logout", token_registry.host)
    repo = name.split("/", 1)[1].rsplit(":", 1)[0]
    scopes = [s for r in token_server.requests if r["user"] == USER for s in r["scope"]]
    assert f"repository:{repo}:pull,push" in scopes
    assert f"repository:{repo}:pull" in scopes
    # anonymous: the token service grants nothing, the registry says 401
    skiffd.docker("rmi", name, check=True)
    before = store_state(skiffd)
    anon = skiffd.docker("pull", name)
    assert anon.returncode != 0 and "unauthorized" in text(anon).lower(), text(anon)
    assert store_state(skiffd) == before


# ---------------------------------------------------------------------------
# failures: clear errors, nothing half-stored, the daemon still serving
# ---------------------------------------------------------------------------


def _copy_repo(oci_image: dict[str, Any], registry: Registry, repo: str) -> str:
    dest = f"{registry.host}/{repo}:v1"
    skopeo_copy(f"docker://{oci_image['name']}:v1", f"docker://{dest}", "--src-tls-verify=false")
    return dest


def test_missing_manifest(skiffd: Daemon, registry: Registry) -> None:
    before = store_state(skiffd)
    res = skiffd.docker("pull", f"{registry.host}/{uniq('nothing')}/here:v9")
    assert res.returncode != 0
    assert "not found" in text(res) and "manifest unknown" in text(res)
    assert store_state(skiffd) == before
    assert_serving(skiffd)


def test_digest_mismatch_stores_nothing(skiffd: Daemon, tmp_path: Path,
                                        registry: Registry) -> None:
    # an image of its own (its blobs are tampered with), pushed by skopeo
    layout = tmp_path / "layout"
    info = write_oci_layout(layout, {"a": os.urandom(5000), "b": os.urandom(7000),
                                     "c": b"ok"}, "v1", layers=3)
    name = f"{registry.host}/{uniq('tamper')}/img:v1"
    skopeo_copy(f"oci:{layout}:v1", f"docker://{name}")
    victim = registry.blob_path(info["layers"][2]["digest"])
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes
    victim.write_bytes(bytes(data))
    before = store_state(skiffd)
    res = skiffd.docker("pull", name)
    assert res.returncode != 0
    assert "verification failed" in text(res), text(res)
    assert info["layers"][2]["digest"] in text(res)
    assert store_state(skiffd) == before
    assert_serving(skiffd)


def test_unknown_blob_stores_nothing(skiffd: Daemon, tmp_path: Path,
                                     registry: Registry) -> None:
    layout = tmp_path / "layout"
    info = write_oci_layout(layout, {"x": os.urandom(4000), "y": os.urandom(4000)}, "v1",
                            layers=2)
    name = f"{registry.host}/{uniq('lost')}/img:v1"
    skopeo_copy(f"oci:{layout}:v1", f"docker://{name}")
    registry.blob_path(info["layers"][1]["digest"]).unlink()
    before = store_state(skiffd)
    res = skiffd.docker("pull", name)
    assert res.returncode != 0
    assert "unknown" in text(res).lower() and info["layers"][1]["digest"] in text(res), text(res)
    assert store_state(skiffd) == before
    assert_serving(skiffd)


def test_hanging_registry_times_out(skiffd: Daemon, hanging: HangingServer) -> None:
    before = store_state(skiffd)
    t0 = time.monotonic()
    res = skiffd.docker("pull", f"127.0.0.1:{hanging.port}/stuck/image:v1", timeout=60)
    took = time.monotonic() - t0
    assert res.returncode != 0
    assert "did not answer within 3s" in text(res), text(res)
    assert took < 20
    assert store_state(skiffd) == before
    assert_serving(skiffd)


def test_unknown_image_push_is_refused(skiffd: Daemon, registry: Registry) -> None:
    res = skiffd.docker("push", f"{registry.host}/{uniq('none')}/img:v1")
    assert res.returncode != 0
    assert "does not exist locally" in text(res)


# ---------------------------------------------------------------------------
# the client on its own: a dropped connection resumes with a Range request
# ---------------------------------------------------------------------------


class _CuttingProxy:
    """Forwards to the registry; cuts the first blob response after ``cut`` bytes."""

    def __init__(self, target: int, cut: int) -> None:
        self.target = target
        self.cut = cut
        self.requests: list[bytes] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self._cut_done = False
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        up = socket.create_connection(("127.0.0.1", self.target))
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(BLOCK)
                if not chunk:
                    return
                head += chunk
            self.requests.append(head)
            up.sendall(head)
            cut = b"/blobs/" in head.split(b"\r\n", 1)[0] and not self._cut_done
            if cut:
                self._cut_done = True
            sent = 0
            while True:
                data = up.recv(BLOCK)
                if not data:
                    break
                if cut and sent + len(data) > self.cut:
                    conn.sendall(data[: self.cut - sent])
                    return
                conn.sendall(data)
                sent += len(data)
        finally:
            conn.close()
            up.close()

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        self._thread.join(5)


def test_dropped_connection_resumes_with_range(registry: Registry, tmp_path: Path) -> None:
    from skiff.core.images.distribution.client import RepositoryClient
    from skiff.core.images.distribution.endpoints import Endpoint, RegistryConfig

    layout = tmp_path / "layout"
    big = os.urandom(2_000_000)
    info = write_oci_layout(layout, {"big": big}, "v1", layers=1)
    repo = f"{uniq('resume')}/img"
    skopeo_copy(f"oci:{layout}:v1", f"docker://{registry.host}/{repo}:v1")
    layer = info["layers"][0]
    proxy = _CuttingProxy(registry.port, cut=700_000)
    try:
        client = RepositoryClient(Endpoint("http", f"127.0.0.1:{proxy.port}"), repo, None,
                                  RegistryConfig(timeout=5, attempts=3))
        seen: list[int] = []
        dest = tmp_path / "blob"
        n = client.fetch_blob(layer["digest"], str(dest), layer["size"], seen.append)
    finally:
        proxy.close()
    assert n == layer["size"]
    assert "sha256:" + hashlib.sha256(dest.read_bytes()).hexdigest() == layer["digest"]
    ranges = [r for r in proxy.requests if b"range: bytes=" in r.lower()]
    assert ranges, [r.split(b"\r\n", 1)[0] for r in proxy.requests]
    start = int(ranges[0].lower().split(b"range: bytes=")[1].split(b"-")[0])
    assert 0 < start < layer["size"]  # resumed where the cut happened, not from 0


def test_x_registry_auth_decoding() -> None:
    from skiff.core.images.distribution.auth import AuthConfig

    blob = json.dumps({"username": "u", "password": "p+/=?", "serveraddress": "h:1"}).encode()
    for enc in (base64.urlsafe_b64encode(blob), base64.urlsafe_b64encode(blob).rstrip(b"=")):
        auth = AuthConfig.from_header(enc.decode())
        assert auth is not None and (auth.username, auth.password) == ("u", "p+/=?")
    assert AuthConfig.from_header("e30=") is None  # {} means anonymous
    assert AuthConfig.from_header("%%%") is None


# ---------------------------------------------------------------------------
# across engines: what dockerd pushes skiff pulls with the same ID, and back
# ---------------------------------------------------------------------------

_HAVE_DOCKERD = shutil.which("dockerd") is not None and shutil.which("containerd") is not None

if _HAVE_DOCKERD:
    from tests.e2e.test_dockerd_interop import Dockerd, dockerd  # noqa: F401 - the fixture


@pytest.mark.skipif(not _HAVE_DOCKERD, reason="dockerd (Debian's docker.io) is not installed; "
                    "scripts/install.sh --test installs it")
def test_images_cross_engines_with_the_same_id(skiffd: Daemon, registry: Registry,
                                               dockerd: Dockerd) -> None:
    import io
    import tarfile

    # skiff pushes, dockerd pulls
    name = f"{registry.host}/{uniq('x-skiff')}/bb:v1"
    push_busybox(skiffd, name)
    want = skiffd.docker("inspect", "-f", "{{.Id}}", name, check=True).stdout.decode().strip()
    dockerd.docker("pull", name)
    got = dockerd.docker("image", "inspect", "-f", "{{.Id}}", name).stdout.decode().strip()
    assert got == want
    # dockerd makes an image of its own and pushes it; skiff pulls it
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        data = os.urandom(50_000)
        info = tarfile.TarInfo("made-by-dockerd.bin")
        info.size, info.mtime = len(data), 1_700_000_000
        tf.addfile(info, io.BytesIO(data))
    theirs = f"{registry.host}/{uniq('x-dockerd')}/imported:v1"
    dockerd.docker("import", "-", theirs, input=buf.getvalue())
    dockerd.docker("push", theirs)
    their_id = dockerd.docker("image", "inspect", "-f", "{{.Id}}", theirs).stdout.decode().strip()
    out = text(skiffd.docker("pull", theirs, check=True))
    assert "Pull complete" in out
    mine = skiffd.docker("inspect", "-f", "{{.Id}}", theirs, check=True).stdout.decode().strip()
    assert mine == their_id
    skiffd.docker("rmi", name, theirs, check=True)
