"""daemon.json ``cri``: off by default, a socket path (or kubelet's unix:// form)
when on, refused when relative or when it is a Docker API socket; and the
generated CRI code matches the api.proto committed beside it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from skiff.core.config import ConfigError, cri_socket, load


def config_with(tmp_path: Path, **keys: object) -> dict[str, object]:
    p = tmp_path / "daemon.json"
    p.write_text(json.dumps(keys))
    config, _ = load(["--config-file", str(p)])
    return config


def test_off_by_default(tmp_path: Path) -> None:
    config = config_with(tmp_path)
    assert config["cri"] == ""
    assert cri_socket(config) == ""


@pytest.mark.parametrize("value", ["/run/skiff-cri.sock", "unix:///run/skiff-cri.sock"])
def test_a_socket_path(tmp_path: Path, value: str) -> None:
    assert cri_socket(config_with(tmp_path, cri=value)) == "/run/skiff-cri.sock"


def test_the_flag(tmp_path: Path) -> None:
    config, _ = load(["--cri", "/run/x-cri.sock", "--config-file", _empty(tmp_path)])
    assert cri_socket(config) == "/run/x-cri.sock"


def _empty(tmp_path: Path) -> str:
    p = tmp_path / "empty.json"
    p.write_text("{}")
    return str(p)


@pytest.mark.parametrize("value,words", [
    ("run/cri.sock", "absolute path"),
    ("tcp://127.0.0.1:1234", "absolute path"),
    ("/run/skiff.sock", "a socket the Docker API is served on"),
])
def test_refused(tmp_path: Path, value: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        config_with(tmp_path, cri=value)


def test_wrong_type(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid value for 'cri': expected a string"):
        config_with(tmp_path, cri=True)


def test_generated_code_is_of_the_committed_proto() -> None:
    """Every RPC of the proto is in the generated services (nothing hand-edited
    away), under the package kubelet dials: runtime.v1."""
    from skiff.core.cri.runtime_v1 import api_pb2 as pb

    proto = (Path(pb.__file__).with_name("api.proto")).read_text()
    rpcs = {line.split()[1].split("(")[0] for line in proto.splitlines()
            if line.strip().startswith("rpc ")}
    services = pb.DESCRIPTOR.services_by_name
    generated = {m.name for s in services.values() for m in s.methods}
    assert rpcs == generated
    assert {s.full_name for s in services.values()} == {"runtime.v1.RuntimeService",
                                                         "runtime.v1.ImageService"}
    assert "Copyright 2020 The Kubernetes Authors" in proto  # its header kept


# -- registry-domain-mirrors: the suite's test images from a local registry ---------------


def test_domain_mirrors_come_first_for_pulls_only() -> None:
    from skiff.core.images.distribution.endpoints import RegistryConfig

    cfg = RegistryConfig.from_daemon_config({
        "registry-domain-mirrors": {"gcr.io": ["http://127.0.0.1:5000", "mirror.example"]},
        "registry-mirrors": ["http://127.0.0.1:6000"]})
    gcr = cfg.endpoints("gcr.io")
    assert [e.base for e in gcr] == ["http://127.0.0.1:5000", "https://mirror.example",
                                     "https://gcr.io"]
    assert [e.mirror for e in gcr] == [True, True, False]
    assert [e.base for e in cfg.endpoints("gcr.io", push=True)] == ["https://gcr.io"]
    # another domain, and Docker Hub, are not touched by gcr.io's mirrors
    assert [e.base for e in cfg.endpoints("registry.k8s.io")] == ["https://registry.k8s.io"]
    assert [e.base for e in cfg.endpoints("docker.io")] == [
        "http://127.0.0.1:6000", "https://registry-1.docker.io"]


@pytest.mark.parametrize("value,words", [
    ({"docker.io": ["http://127.0.0.1:5000"]}, "its mirrors are 'registry-mirrors'"),
    ({"https://gcr.io": ["http://127.0.0.1:5000"]}, "use a registry's domain"),
    ({"gcr.io": ["ftp://127.0.0.1:5000"]}, "use a URL"),
    ({"gcr.io": [5000]}, "use a URL"),
    ({"gcr.io": "http://127.0.0.1:5000"}, "every entry must be a array"),
])
def test_domain_mirrors_refused(tmp_path: Path, value: object, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        config_with(tmp_path, **{"registry-domain-mirrors": value})


def test_stream_address(tmp_path: Path) -> None:
    """daemon.json ``cri-stream-address``: loopback and a port the kernel picks by
    default; HOST:PORT when set; anything else refuses the start, naming it."""
    assert config_with(tmp_path)["cri-stream-address"] == "127.0.0.1:0"
    assert config_with(tmp_path, **{"cri-stream-address": "[::1]:10010"})[
        "cri-stream-address"] == "[::1]:10010"
    for bad in ("127.0.0.1", "localhost:http", ":10010", "127.0.0.1:99999"):
        with pytest.raises(ConfigError, match="cri-stream-address"):
            config_with(tmp_path, **{"cri-stream-address": bad})
