"""EndpointSettings as clients send them: checked, and kept as inspect shows them;
resolv.conf rewritten in place when the resolver changes; the 403 of Forbidden."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from skiff.core.api.errors import status_of
from skiff.core.containers import etcfiles
from skiff.core.containers.endpoints import (
    REQUESTED_MAC,
    checked_mac,
    link_aliases,
    requested,
    shown,
    with_short_id,
)
from skiff.core.containers.model import Container
from skiff.core.errors import Forbidden, InvalidParameter


def test_kept_as_given() -> None:
    got = requested({"Aliases": ["web"], "Links": ["db:database"],
                     "IPAMConfig": {"IPv4Address": "10.9.0.5"},
                     "DriverOpts": {"k": "v"}, "MacAddress": "02:AA:bb:cc:dd:01"},
                    subnet="10.9.0.0/24")
    assert got == {"Aliases": ["web"], "Links": ["db:database"],
                   "IPAMConfig": {"IPv4Address": "10.9.0.5"}, "DriverOpts": {"k": "v"},
                   REQUESTED_MAC: "02:aa:bb:cc:dd:01"}
    assert REQUESTED_MAC not in shown(got) and shown(got)["Aliases"] == ["web"]


def test_empty_is_nulls_as_dockerd_shows() -> None:
    assert requested(None) == {"IPAMConfig": None, "Links": None, "Aliases": None,
                               "DriverOpts": None}


def test_config_mac_applies_unless_the_endpoint_names_one() -> None:
    assert requested({}, config_mac="02:42:00:00:00:09")[REQUESTED_MAC] == "02:42:00:00:00:09"
    got = requested({"MacAddress": "02:42:00:00:00:01"}, config_mac="02:42:00:00:00:09")
    assert got[REQUESTED_MAC] == "02:42:00:00:00:01"


@pytest.mark.parametrize("cfg, words", [
    ({"MacAddress": "zz:zz"}, "address zz:zz: invalid MAC address"),
    ({"MacAddress": "01:00:5e:00:00:01"}, "multicast"),
    ({"IPAMConfig": {"IPv4Address": "10.9.1.5"}},
     "Invalid address 10.9.1.5: It does not belong to any of this network's subnets"),
    ({"IPAMConfig": {"IPv4Address": "not-an-ip"}}, "invalid IPv4 address: not-an-ip"),
    ({"Aliases": "web"}, "Aliases must be a list of strings"),
    ({"DriverOpts": {"k": 1}}, "DriverOpts"),
    ({"Links": ["db:"]}, "invalid link format"),
    ("nope", "EndpointSettings must be a JSON object"),
])
def test_refused_with_a_message(cfg: object, words: str) -> None:
    with pytest.raises(InvalidParameter) as err:
        requested(cfg, subnet="10.9.0.0/24")
    assert words in err.value.message


def test_mac_forms() -> None:
    assert checked_mac("02-42-AC-11-00-02") == "02:42:ac:11:00:02"


def test_short_id_alias_once() -> None:
    cid = "0123456789ab" + "c" * 52
    once = with_short_id(["web"], cid)
    assert once == ["web", "0123456789ab"] and with_short_id(once, cid) == once


def test_forbidden_is_403() -> None:
    assert status_of(Forbidden("bridge is a pre-defined network and cannot be removed")) == 403


def test_resolv_conf_rewritten_in_place(tmp_path: Path) -> None:
    c = Container(id="a" * 64, name="c", created="", image_id="", config={}, host_config={},
                  path="sh", args=[], driver="vfs", root=str(tmp_path), log_driver="none",
                  network_mode="bridge")
    Path(c.resolv_conf_path).write_text("old\n")
    inode = os.stat(c.resolv_conf_path).st_ino
    etcfiles.write_resolv_conf(c, True)
    assert Path(c.resolv_conf_path).read_text() == "nameserver 127.0.0.11\noptions ndots:0\n"
    etcfiles.write_resolv_conf(c, False)
    assert Path(c.resolv_conf_path).read_text() == etcfiles.resolv_conf_for("bridge")
    assert os.stat(c.resolv_conf_path).st_ino == inode  # the bind-mounted file itself


def test_resolv_conf_never_follows_a_link(tmp_path: Path) -> None:
    c = Container(id="b" * 64, name="c", created="", image_id="", config={}, host_config={},
                  path="sh", args=[], driver="vfs", root=str(tmp_path), log_driver="none",
                  network_mode="bridge")
    target = tmp_path / "elsewhere"
    target.write_text("keep\n")
    os.symlink(target, c.resolv_conf_path)
    with pytest.raises(OSError):
        etcfiles.write_resolv_conf(c, True)
    assert target.read_text() == "keep\n"


def test_link_aliases() -> None:
    assert link_aliases(["db:database", "/cache", "/web:/me/front"]) == {
        "database": "db", "cache": "cache", "front": "web"}
    assert link_aliases(None) == {}


def test_fixed_ip_and_aliases_refused_where_dockerd_refuses_them() -> None:
    ip = {"IPAMConfig": {"IPv4Address": "10.9.0.5"}}
    for kwargs, words in (({"user_subnet": False}, "networks with user configured subnets"),
                          ({"predefined": True}, "on user defined networks only")):
        with pytest.raises(InvalidParameter) as err:
            requested(ip, subnet="10.9.0.0/24", **kwargs)  # type: ignore[arg-type]
        assert err.value.message.startswith("user specified IP address")
        assert words in err.value.message
    with pytest.raises(InvalidParameter) as err:
        requested({"Aliases": ["a"]}, predefined=True)
    assert "network-scoped alias" in err.value.message
    assert requested({}, predefined=True, user_subnet=False)["IPAMConfig"] is None
