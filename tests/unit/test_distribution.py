"""The distribution client's pure parts: manifests, platforms, auth, config, progress."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from skiff.core.images.distribution import manifest as mf
from skiff.core.images.distribution.auth import AuthConfig, parse_challenge
from skiff.core.images.distribution.endpoints import RegistryConfig
from skiff.core.images.distribution.progress import bar, human_size
from skiff.core.images.distribution.pull import pull_reference
from skiff.core.images.errors import InvalidImage

D1 = "sha256:" + "a" * 64
D2 = "sha256:" + "b" * 64


def _index(*plats: tuple[str, str, str]) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": mf.OCI_INDEX, "manifests": [
        {"mediaType": mf.OCI_MANIFEST, "digest": d, "size": 10,
         "platform": {"os": o, "architecture": a}} for o, a, d in plats]}).encode()


def test_platform_selection_picks_linux_amd64() -> None:
    body = _index(("linux", "arm64", D1), ("linux", "amd64", D2))
    assert mf.select_platform(body).digest == D2
    with pytest.raises(InvalidImage, match=r"no matching manifest for linux/amd64.*linux/arm64"):
        mf.select_platform(_index(("linux", "arm64", D1)))


def test_manifest_kinds() -> None:
    assert mf.kind(_index(), "") == mf.OCI_INDEX
    assert mf.kind(b'{"schemaVersion": 1, "name": "x"}', "") == mf.DOCKER_SCHEMA1
    shape = json.dumps({"schemaVersion": 2, "config": {}, "layers": []}).encode()
    assert mf.kind(shape, "") == mf.OCI_MANIFEST  # OCI makes mediaType optional
    assert mf.kind(shape, mf.DOCKER_MANIFEST) == mf.DOCKER_MANIFEST
    with pytest.raises(InvalidImage, match="not JSON"):
        mf.kind(b"<html>", "text/html")


def test_image_manifest_refuses_foreign_and_bad_descriptors() -> None:
    good = {"mediaType": mf.DOCKER_LAYER, "digest": D1, "size": 5}
    body = {"schemaVersion": 2, "config": {"mediaType": mf.DOCKER_CONFIG, "digest": D2,
                                           "size": 3}, "layers": [good]}
    m = mf.parse_image_manifest(json.dumps(body).encode(), mf.DOCKER_MANIFEST)
    assert m.layers[0].digest == D1 and m.config.size == 3
    body["layers"] = [dict(good, urls=["https://example.invalid/x"])]
    with pytest.raises(InvalidImage, match="foreign layer"):
        mf.parse_image_manifest(json.dumps(body).encode(), mf.DOCKER_MANIFEST)
    body["layers"] = [dict(good, digest="sha256:short")]
    with pytest.raises(InvalidImage, match="invalid digest"):
        mf.parse_image_manifest(json.dumps(body).encode(), mf.DOCKER_MANIFEST)


def test_build_schema2_and_oci() -> None:
    cfg = mf.Descriptor(mf.DOCKER_CONFIG, D1, 100)
    body, media = mf.build(cfg, [mf.Descriptor(mf.DOCKER_LAYER, D2, 7)])
    doc = json.loads(body)
    assert media == doc["mediaType"] == mf.DOCKER_MANIFEST
    assert doc["config"] == {"mediaType": mf.DOCKER_CONFIG, "size": 100, "digest": D1}
    body, media = mf.build(cfg, [mf.Descriptor(mf.DOCKER_LAYER, D2, 7),
                                 mf.Descriptor(mf.OCI_LAYER_ZSTD, D1, 8)])
    doc = json.loads(body)
    assert media == mf.OCI_MANIFEST and doc["config"]["mediaType"] == mf.OCI_CONFIG
    assert [d["mediaType"] for d in doc["layers"]] == [mf.OCI_LAYER_GZIP, mf.OCI_LAYER_ZSTD]


def test_challenge_parsing() -> None:
    scheme, params = parse_challenge(
        'Bearer realm="http://127.0.0.1:5001/token",service="reg",'
        'scope="repository:a/b:pull,push"')
    assert scheme == "bearer"
    assert params == {"realm": "http://127.0.0.1:5001/token", "service": "reg",
                      "scope": "repository:a/b:pull,push"}
    assert parse_challenge('Basic realm="basic-realm"') == ("basic", {"realm": "basic-realm"})


def test_x_registry_auth_header() -> None:
    blob = json.dumps({"username": "u", "password": "p?>", "serveraddress": "r:5000"})
    header = base64.urlsafe_b64encode(blob.encode()).decode().rstrip("=")
    auth = AuthConfig.from_header(header)
    assert auth == AuthConfig("u", "p?>", "", "", "r:5000")
    assert AuthConfig.from_header(None) is None
    assert AuthConfig.from_header("bm90IGpzb24") is None  # "not json"


def test_insecure_registries_and_mirrors() -> None:
    cfg = RegistryConfig(insecure=["10.1.0.0/16", "reg.example:5000"],
                         mirrors=["http://127.0.0.1:5000"])
    assert cfg.is_insecure("127.0.0.1:5000") and cfg.is_insecure("127.9.9.9")
    assert cfg.is_insecure("10.1.2.3:443") and cfg.is_insecure("reg.example:5000")
    assert not cfg.is_insecure("10.2.0.1:5000")
    assert [e.base for e in cfg.endpoints("127.0.0.1:5000")] == ["http://127.0.0.1:5000"]
    assert [e.base for e in cfg.endpoints("10.2.0.1:5000")] == ["https://10.2.0.1:5000"]
    hub = cfg.endpoints("docker.io")
    assert [e.base for e in hub] == ["http://127.0.0.1:5000", "https://registry-1.docker.io"]
    assert hub[0].mirror and not hub[1].mirror
    assert [e.base for e in cfg.endpoints("docker.io", push=True)] == [
        "https://registry-1.docker.io"]  # mirrors are for pulls only


def test_pull_reference_from_query() -> None:
    assert str(pull_reference("127.0.0.1:5000/a/b", "v1")) == "127.0.0.1:5000/a/b:v1"
    by_digest = pull_reference("127.0.0.1:5000/a/b", D1)
    assert by_digest.digest == D1 and by_digest.tag is None
    assert str(pull_reference("busybox", "latest")) == "docker.io/library/busybox:latest"
    with pytest.raises(ValueError, match="every tag"):
        pull_reference("busybox", "")


def test_progress_strings() -> None:
    assert human_size(2_220_000) == "2.22MB" and human_size(999) == "999B"
    assert bar(50, 100).startswith("[" + "=" * 25 + ">")
    assert bar(100, 100).endswith("100B/100B")


def test_pipelined_gunzip(tmp_path: Path) -> None:
    """Multi-member gzip streams through; corrupt gzip and a failing consumer are errors."""
    import gzip
    import os

    import trio

    from skiff.core.images.distribution.progress import Progress
    from skiff.core.images.distribution.pull import _pipelined

    class _Engine:
        limiter = trio.CapacityLimiter(4)

        async def to_thread(self, fn: Any, *args: Any) -> Any:
            return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    data = os.urandom(3_000_000)
    good = gzip.compress(data[:1_000_000]) + gzip.compress(data[1_000_000:])
    path = tmp_path / "blob"
    prog = Progress(lambda m: None, "x", "Extracting", len(good))

    async def main() -> None:
        path.write_bytes(good)
        got: list[bytes] = []
        await _pipelined(_Engine().to_thread, str(path), prog, lambda src: got.append(src.read()))
        assert got == [data]
        bad = bytearray(good)
        bad[len(bad) // 3] ^= 0xFF
        bad[len(bad) // 3 + 1] ^= 0xFF
        path.write_bytes(bytes(bad))
        with pytest.raises(InvalidImage, match="not a valid gzip stream"):
            await _pipelined(_Engine().to_thread, str(path), prog, lambda src: src.read() and None)
        path.write_bytes(gzip.compress(os.urandom(8_000_000), 1))

        def refuse(src: Any) -> None:
            src.read(10)
            raise ValueError("consumer refused")

        with pytest.raises(ValueError, match="consumer refused"):
            await _pipelined(_Engine().to_thread, str(path), prog, refuse)

    trio.run(main)


def test_skiff_pull_renderer_draws_bars_in_place() -> None:
    import io

    from skiff.cli.main import PullRenderer

    out = io.StringIO()
    r = PullRenderer(out, tty=True)
    r.feed({"status": "Pulling from app", "id": "v1"})
    r.feed({"status": "Pulling fs layer", "id": "aaa"})
    r.feed({"status": "Pulling fs layer", "id": "bbb"})
    r.feed({"status": "Downloading", "id": "aaa",
            "progressDetail": {"current": 500_000, "total": 1_000_000}})
    r.feed({"status": "Pull complete", "id": "bbb"})
    text = out.getvalue()
    assert "v1: Pulling from app\n" in text
    assert "\x1b[2A" in text  # moved up over the two layer lines to redraw them
    assert "aaa: Downloading [" + "=" * 15 + ">" in text and "500kB/1MB" in text
    assert text.endswith("bbb: Pull complete\n")
    plain = io.StringIO()
    r = PullRenderer(plain, tty=False)
    for cur in (1, 2, 3):
        r.feed({"status": "Downloading", "id": "aaa",
                "progressDetail": {"current": cur, "total": 3}})
    r.feed({"status": "Download complete", "id": "aaa"})
    assert plain.getvalue() == "aaa: Downloading\naaa: Download complete\n"
