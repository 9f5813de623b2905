"""daemon.json's cluster keys, read as dockerd 20.10 spells them (core/cluster/settings.py)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from skiff.core.cluster.etcd import prefix_end
from skiff.core.cluster.settings import DEFAULT_HEARTBEAT, DEFAULT_TTL, parse, resolve_advertise


def test_no_store_is_none() -> None:
    assert parse({}) is None
    assert parse({"cluster-store": "", "cluster-advertise": "", "cluster-store-opts": {}}) is None


def test_members_and_defaults() -> None:
    s = parse({"cluster-store": "etcd://10.0.0.1:2379,[fd00::1]:2379/",
               "cluster-advertise": "eth0:2376"})
    assert s is not None
    assert s.endpoints == ("http://10.0.0.1:2379", "http://[fd00::1]:2379")
    assert (s.ttl, s.heartbeat, s.tls) == (DEFAULT_TTL, DEFAULT_HEARTBEAT, False)


def test_tls_files_make_it_https(tmp_path: Path) -> None:
    for name in ("ca", "cert", "key"):
        (tmp_path / name).write_text("x")
    s = parse({"cluster-store": "etcd://h:2379", "cluster-advertise": "1.2.3.4:1",
               "cluster-store-opts": {"kv.cacertfile": str(tmp_path / "ca"),
                                      "kv.certfile": str(tmp_path / "cert"),
                                      "kv.keyfile": str(tmp_path / "key")}})
    assert s is not None and s.tls and s.endpoints == ("https://h:2379",)


@pytest.mark.parametrize(("opts", "message"), [
    ({"discovery.ttl": "5", "discovery.heartbeat": "5"}, "must be shorter"),
    ({"discovery.ttl": "0"}, "whole number of seconds"),
    ({"discovery.heartbeat": "soon"}, "whole number of seconds"),
    ({"kv.certfile": "/etc/hostname"}, "go together"),
    ({"kv.cacertfile": "/nonexistent/ca.pem"}, "is not a file"),
    ({"kv.path": "/docker"}, "not supported: kv.path"),
])
def test_bad_options_name_the_key(opts: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse({"cluster-store": "etcd://h:2379", "cluster-advertise": "1.2.3.4:1",
               "cluster-store-opts": opts})


@pytest.mark.parametrize(("store", "message"), [
    ("consul://h:8500", "skiff's cluster store is etcd"),
    ("etcd://", "no etcd member"),
    ("etcd://h", "expected host:port"),
    ("etcd://h:99999", "expected host:port"),
])
def test_bad_stores(store: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse({"cluster-store": store, "cluster-advertise": "1.2.3.4:1"})


def test_advertise_by_address_or_interface() -> None:
    assert resolve_advertise("10.1.2.3:2376") == "10.1.2.3:2376"
    assert resolve_advertise("[fd00::5]:2376") == "[fd00::5]:2376"
    assert resolve_advertise("lo:2376") == "127.0.0.1:2376"
    with pytest.raises(ValueError, match="neither an IP address nor a network interface"):
        resolve_advertise("nosuchif9:2376")


def test_prefix_end_is_the_next_key() -> None:
    assert base64.b64decode(prefix_end("/skiff/v1/nodes/")) == b"/skiff/v1/nodes0"
