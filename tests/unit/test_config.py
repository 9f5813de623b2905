"""daemon.json: Docker's keys, refusals that name the file and the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from skiff.core.config import ConfigError, load, socket_paths, storage_options


def write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "daemon.json"
    p.write_text(text)
    return str(p)


def test_no_file_means_defaults(tmp_path: Path) -> None:
    config, _ = load(["--config-file", write(tmp_path, "")])
    assert config["data-root"] == "/var/lib/skiff"
    assert config["exec-root"] == "/run/skiff"
    assert config["storage-driver"] == ""
    assert config["log-driver"] == "json-file"
    assert config["cgroup-parent"] == "skiff"
    assert socket_paths(config) == ["/run/skiff.sock"]


def test_default_file_may_be_absent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("skiff.core.config.DEFAULT_CONFIG_FILE", str(tmp_path / "none.json"))
    config, _ = load([])
    assert config["iptables"] is True


def test_explicit_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load(["--config-file", str(tmp_path / "missing.json")])


def test_docker_keys_accepted(tmp_path: Path) -> None:
    cfg = {
        "data-root": "/srv/skiff", "exec-root": "/run/sk", "storage-driver": "vfs",
        "storage-opts": ["overlay2.size=1G", "vfs.x=1"], "log-driver": "json-file",
        "log-opts": {"max-size": "10m"}, "bridge": "skiffbr0", "bip": "10.99.0.1/24",
        "iptables": False, "ip-forward": True, "ip-forward-no-drop": True, "icc": False,
        "userns-remap": "",
        "default-ulimits": {"nofile": {"Name": "nofile", "Soft": 1024, "Hard": 2048}},
        "live-restore": False, "debug": True, "hosts": ["unix:///tmp/x.sock"],
        "cgroup-parent": "mine", "exec-opts": ["native.cgroupdriver=cgroupfs"],
        "default-address-pools": [{"base": "10.200.0.0/16", "size": 24}],
    }
    config, _ = load(["--config-file", write(tmp_path, json.dumps(cfg))])
    for key, value in cfg.items():
        assert config[key] == value
    assert storage_options(config, "vfs") == {"x": "1"}
    assert storage_options(config, "overlay2") == {"size": "1G"}


def test_unknown_key_named(tmp_path: Path) -> None:
    path = write(tmp_path, '{"storage-drivr": "vfs"}')
    with pytest.raises(ConfigError) as exc:
        load(["--config-file", path])
    assert "storage-drivr" in str(exc.value) and path in str(exc.value)


@pytest.mark.parametrize("key,value", [
    ("debug", '"yes"'), ("iptables", "1"), ("storage-opts", '"a=b"'), ("hosts", "[1]"),
    ("log-opts", '{"max-size": 10}'), ("data-root", "5"),
])
def test_wrong_type_named(tmp_path: Path, key: str, value: str) -> None:
    path = write(tmp_path, f'{{"{key}": {value}}}')
    with pytest.raises(ConfigError) as exc:
        load(["--config-file", path])
    assert repr(key) in str(exc.value) and path in str(exc.value)


def test_malformed_json_named(tmp_path: Path) -> None:
    path = write(tmp_path, '{"debug": true,,}')
    with pytest.raises(ConfigError) as exc:
        load(["--config-file", path])
    assert "malformed JSON" in str(exc.value) and path in str(exc.value)
    assert "line 1" in str(exc.value)


def test_flag_and_file_conflict(tmp_path: Path) -> None:
    path = write(tmp_path, '{"data-root": "/a"}')
    with pytest.raises(ConfigError) as exc:
        load(["--config-file", path, "--data-root", "/b"])
    msg = str(exc.value)
    assert "both as a flag and in the configuration file" in msg and "data-root" in msg


def test_flags_alone(tmp_path: Path) -> None:
    config, _ = load(["--config-file", write(tmp_path, "{}"), "-s", "vfs", "--iptables=false",
                      "--log-opt", "max-size=1m", "-H", "unix:///tmp/a.sock"])
    assert config["storage-driver"] == "vfs"
    assert config["iptables"] is False
    assert config["log-opts"] == {"max-size": "1m"}
    assert config["hosts"] == ["unix:///tmp/a.sock"]


def test_bad_values_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'data-root' must be an absolute path"):
        load(["--config-file", write(tmp_path, '{"data-root": "rel"}')])
    with pytest.raises(ConfigError, match="'hosts'"):
        load(["--config-file", write(tmp_path, '{"hosts": ["tcp://0.0.0.0:2375"]}')])


def test_labels_are_key_value_and_one_value_a_key(tmp_path: Path) -> None:
    config, _ = load(["--config-file", write(tmp_path, '{"labels": ["a=1", "a=1", "b="]}')])
    assert config["labels"] == ["a=1", "a=1", "b="]
    with pytest.raises(ConfigError, match="bad attribute format"):
        load(["--config-file", write(tmp_path, '{"labels": ["nokey"]}')])
    with pytest.raises(ConfigError, match="conflict labels for a=1 and a=2"):
        load(["--config-file", write(tmp_path, '{"labels": ["a=1", "a=2"]}')])


def test_a_reload_applies_reloadable_keys_and_refuses_the_others(tmp_path: Path) -> None:
    from skiff.core import reload

    argv = ["--config-file", write(tmp_path, '{"labels": ["a=1"]}')]
    current, _ = load(argv)
    write(tmp_path, '{"labels": ["a=2"], "live-restore": true, "debug": true}')
    changes = reload.reread(argv, current)
    assert changes == {"labels": ["a=2"], "live-restore": True, "debug": True}
    # a key that takes a restart refuses the whole reload, naming the key
    write(tmp_path, '{"labels": ["a=3"], "data-root": "/elsewhere", "bip": "10.9.0.1/24"}')
    with pytest.raises(ConfigError, match=r"bip, data-root cannot be changed by a reload"):
        reload.reread(argv, current)
    write(tmp_path, '{"labels": [')
    with pytest.raises(ConfigError, match="malformed JSON"):
        reload.reread(argv, current)
    reload.apply({"labels": ["a=2", "a=2"]}, current)
    assert reload.event_attributes(current, "host")["labels"] == '["a=2"]'
