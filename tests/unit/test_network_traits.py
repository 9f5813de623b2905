"""Contract 2.7: what a network driver says about itself, and the daemon
asking that instead of its name; where a container's network stack comes
from (``NetworkNamespace``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pytest

from skiff.core.api.networks import _matches
from skiff.core.containers.netns import namespace_of
from skiff.core.errors import InvalidParameter
from skiff.core.hookspecs import (
    NETWORK_DRIVER_TRAITS,
    Endpoint,
    NetworkContext,
    NetworkNamespace,
    NetworkOptions,
)
from skiff.core.networks import NetworkStore, trait
from skiff.plugins.network.bridge.driver import BridgeNetworkDriver
from skiff.plugins.network.host import HostNetworkDriver
from skiff.plugins.network.none import NoneNetworkDriver

CTX = NetworkContext(data_root="/nonexistent", exec_root="/nonexistent", config={})


class Plain:
    """A driver that says nothing about itself: the contract's defaults."""

    name = "plain"
    netns: Literal["new", "host"] = "new"

    def __init__(self) -> None:
        self.created: dict[str, NetworkOptions] = {}

    def create_network(self, network_id: str, options: NetworkOptions) -> None:
        if options.options.get("bad"):
            raise ValueError(f"the {self.name} driver refuses bad={options.options['bad']}")
        self.created[network_id] = options

    def delete_network(self, network_id: str) -> None:
        self.created.pop(network_id, None)

    def create_endpoint(self, network_id: str, endpoint: Endpoint) -> Endpoint:
        return endpoint

    def join(self, endpoint: Endpoint, pid: int) -> None:
        pass

    def leave(self, endpoint: Endpoint) -> None:
        pass

    def delete_endpoint(self, endpoint: Endpoint) -> None:
        pass


class Global(Plain):
    name = "global"
    scope = "global"
    ipam = "driver"
    ipv6 = False


class Sole(Plain):
    name = "sole"
    singleton = True


def _store(tmp_path: Path, *, cluster: bool = True) -> tuple[NetworkStore, dict[str, Any]]:
    drivers: dict[str, Any] = {"plain": Plain(), "global": Global(), "sole": Sole()}
    store = NetworkStore(str(tmp_path), {}, drivers.__getitem__, drivers.__contains__, {})
    if cluster:  # a cluster store that can be reached (core/cluster: tested with etcd)
        store.require_store = lambda what: None
    store.load()
    return store, drivers


def test_global_scope_needs_a_cluster_store(tmp_path: Path) -> None:
    store, _ = _store(tmp_path, cluster=False)
    with pytest.raises(InvalidParameter, match="no cluster store; set cluster-store"):
        store.create({"Name": "g", "Driver": "global"})
    assert store.find("g") is None
    store.create({"Name": "p", "Driver": "plain"})  # local scope needs none


def test_defaults_and_the_built_in_drivers() -> None:
    assert NETWORK_DRIVER_TRAITS == {"scope": "local", "ipam": "engine", "ipv6": True,
                                     "nameserver": "", "singleton": False,
                                     "loopback_only": False}
    assert {k: trait(Plain(), k) for k in NETWORK_DRIVER_TRAITS} == NETWORK_DRIVER_TRAITS
    bridge = BridgeNetworkDriver(CTX)
    assert (trait(bridge, "nameserver"), trait(bridge, "ipv6"), trait(bridge, "singleton"),
            trait(bridge, "scope")) == ("127.0.0.11", True, False, "local")
    for sole in (HostNetworkDriver(CTX), NoneNetworkDriver(CTX)):
        assert trait(sole, "singleton") is True and trait(sole, "nameserver") == ""
    # none's containers have only lo: a bandwidth limit is refused by this trait
    assert (trait(NoneNetworkDriver(CTX), "loopback_only"), trait(bridge, "loopback_only"),
            trait(HostNetworkDriver(CTX), "loopback_only")) == (True, False, False)


def test_the_store_asks_the_driver(tmp_path: Path) -> None:
    store, drivers = _store(tmp_path)
    plain, _ = store.create({"Name": "p", "Driver": "plain"})
    assert plain.subnet and not plain.user_subnet  # the engine's IPAM chose one
    assert store.inspect(plain)["Scope"] == "local"
    glob, _ = store.create({"Name": "g", "Driver": "global"})
    # its own IPAM: the daemon picks no subnet for it
    assert (glob.subnet, drivers["global"].created[glob.id].subnet) == ("", "")
    assert store.inspect(glob)["Scope"] == "global"
    again, _ = _store(tmp_path)
    assert again.inspect(again.get("g"))["Scope"] == "global"  # kept in the record
    with pytest.raises(InvalidParameter, match='only one instance of "sole" network'):
        store.create({"Name": "sole-net", "Driver": "sole"})
    with pytest.raises(InvalidParameter, match="IPv6 is not supported by the global driver"):
        store.create({"Name": "v6-net", "Driver": "global", "EnableIPv6": True,
                      "IPAM": {"Config": [{"Subnet": "fd00:9::/64"}]}})
    with pytest.raises(InvalidParameter, match="the plain driver refuses bad=yes"):
        store.create({"Name": "bad-net", "Driver": "plain", "Options": {"bad": "yes"}})
    # none of them was made (names that are no ID's prefix: find takes those too)
    assert [store.find(n) for n in ("bad-net", "sole-net", "v6-net")] == [None, None, None]


def test_ls_filters_on_the_drivers_scope(tmp_path: Path) -> None:
    store, _ = _store(tmp_path)
    store.create({"Name": "p", "Driver": "plain"})
    store.create({"Name": "g", "Driver": "global"})

    def names(scope: str) -> list[str]:
        return sorted(n.name for n in store.by_id.values()
                      if _matches(n, {"scope": [scope]}))

    assert names("global") == ["g"] and "p" in names("local") and "g" not in names("local")


def test_namespace_of() -> None:
    drivers: dict[str, Any] = {"host": HostNetworkDriver(CTX), "none": NoneNetworkDriver(CTX)}
    assert namespace_of("host", drivers.__getitem__) == NetworkNamespace("host")
    assert namespace_of("none", drivers.__getitem__) == NetworkNamespace("new")
    joined = namespace_of("container:web", drivers.__getitem__, lambda ref: 4242)
    assert joined == NetworkNamespace("join", "/proc/4242/ns/net", "web")
    # without the owner's process: which container, not yet where
    assert namespace_of("container:web", drivers.__getitem__) == NetworkNamespace(
        "join", "", "web")
