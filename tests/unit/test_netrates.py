"""Bandwidth options: tc's units, the tc shaper's checks, and the precedence of
the four levels (endpoint > container label > network > daemon.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from skiff.cli.main import net_rate_item
from skiff.core.config import ConfigError, load
from skiff.core.containers.model import Container
from skiff.core.containers.netns import namespace_of
from skiff.core.containers.netrates import Shaping, pick, resolve
from skiff.core.errors import InvalidParameter
from skiff.core.hookspecs import NetworkNamespace, TrafficShaperContext
from skiff.core.networks import trait
from skiff.plugins.limits.tc import Tbf, TcShaper, bucket, ifb_name
from skiff.plugins.limits.tcunits import parse_rate, parse_size, parse_time
from skiff.plugins.network.bridge.driver import BridgeNetworkDriver
from skiff.plugins.network.host import HostNetworkDriver
from skiff.plugins.network.none import NoneNetworkDriver

K = "skiff.net.egress-rate"


@pytest.mark.parametrize(("text", "bits"), [
    ("10mbit", 10_000_000), ("500kbit", 500_000), ("1gbit", 10**9), ("8Mbit", 8_000_000),
    ("2mbps", 16_000_000), ("1.5mbit", 1_500_000), ("1mibit", 2**20),
])
def test_rates_in_tc_units(text: str, bits: int) -> None:
    assert parse_rate(K, text) == bits


def test_none_lifts_a_limit() -> None:
    assert parse_rate(K, "none") is None
    assert bucket({K: "none"}, "egress") is None


@pytest.mark.parametrize(("text", "words"), [
    ("fast", "expected a number and a unit"),
    ("8", "a bare number is bits per second"),
    ("8furlongs", "unknown unit 'furlongs'"),
    ("1bit", "out of range"),
    ("100gbit", "out of range"),
    ("-3mbit", "expected a number and a unit"),
])
def test_nonsense_rates_name_the_key_and_an_example(text: str, words: str) -> None:
    with pytest.raises(ValueError) as exc:
        parse_rate(K, text)
    assert words in str(exc.value)
    assert K in str(exc.value) and f"{K}=10mbit" in str(exc.value)


def test_sizes_and_times_in_tc_units() -> None:
    assert parse_size("b", "32kb") == 32768
    assert parse_size("b", "4096") == 4096
    assert parse_size("b", "1mb") == 2**20
    assert parse_time("l", "50ms") == 50_000
    assert parse_time("l", "1s") == 10**6
    with pytest.raises(ValueError, match="between 2kb"):
        parse_size("skiff.net.egress-burst", "100b")
    with pytest.raises(ValueError, match=r"skiff\.net\.ingress-latency=50ms"):
        parse_time("skiff.net.ingress-latency", "soon")


def test_buckets_take_burst_and_latency_or_defaults() -> None:
    rates = {"skiff.net.ingress-rate": "8mbit", "skiff.net.ingress-burst": "64kb",
             "skiff.net.ingress-latency": "20ms", K: "100mbit"}
    assert bucket(rates, "ingress") == Tbf(8_000_000, 65536, 20_000)
    egress = bucket(rates, "egress")
    assert egress is not None and egress.rate == 100_000_000
    assert egress.burst == 125_000  # 10 ms of traffic
    assert egress.latency == 50_000
    assert egress.kwargs() == {"rate": 12_500_000, "burst": 125_000, "latency": 50_000}
    small = bucket({K: "1mbit"}, "egress")
    assert small is not None and small.burst == 4096  # never below a few frames


def test_ifb_names_fit_the_kernel_and_differ() -> None:
    a, b = ifb_name("skfv0011aabb"), ifb_name("skfv0011aabc")
    assert a != b and len(a) <= 15 and a.startswith("skfi")


def test_precedence_endpoint_over_label_over_network_over_daemon() -> None:
    daemon = {K: "100mbit", "skiff.net.ingress-rate": "50mbit"}
    network = {K: "20mbit", "skiff.net.egress-burst": "64kb"}
    label = {K: "8mbit"}
    endpoint = {"skiff.net.ingress-rate": "1mbit"}
    assert resolve(daemon, network, label, endpoint) == {
        K: "8mbit", "skiff.net.ingress-rate": "1mbit", "skiff.net.egress-burst": "64kb"}
    assert resolve(daemon, network, {K: ""}) == {**daemon, **network}  # "" sets nothing
    assert resolve(daemon, {K: "none"})[K] == "none"


def test_pick_takes_only_the_bandwidth_keys() -> None:
    assert pick({"com.example": "x", K: "8mbit"}) == {K: "8mbit"}
    assert pick(None) == {}


#: the built-in drivers by network name, as the daemon's lookup finds them
DRIVERS: dict[str, Any] = {"bridge": BridgeNetworkDriver, "host": HostNetworkDriver,
                           "none": NoneNetworkDriver, "n1": BridgeNetworkDriver}


def _mode_of(mode: str) -> tuple[NetworkNamespace, bool]:
    """As ``NetworkAttachment.mode_traits``, from the drivers' own traits."""
    netns = namespace_of(mode, lambda name: DRIVERS[name])
    loopback = netns.kind != "join" and bool(trait(DRIVERS[mode], "loopback_only"))
    return netns, loopback


def _shaping(rates: dict[str, str] | None = None) -> Shaping:
    async def to_thread(fn: Any, *args: Any) -> Any:
        return fn(*args)
    return Shaping(TcShaper(TrafficShaperContext(exec_root="/nonexistent")), "",
                   rates or {}, to_thread, mode_of=_mode_of)


def _container(labels: dict[str, str], mode: str = "bridge") -> Container:
    return Container(id="c" * 64, name="n", created="", image_id="", config={"Labels": labels},
                     host_config={}, path="", args=[], driver="", root="", log_driver="",
                     network_mode=mode)


def test_bad_values_are_400s_naming_the_key_and_where() -> None:
    shaping = _shaping()
    with pytest.raises(InvalidParameter) as exc:
        shaping.check_container({"Labels": {K: "fast"}}, "bridge", {})
    assert K in exc.value.message and "(container label)" in exc.value.message
    with pytest.raises(InvalidParameter, match=r"unknown bandwidth option 'skiff\.net\.speed'"):
        shaping.check({"skiff.net.speed": "1mbit"})
    with pytest.raises(InvalidParameter, match="DriverOpts on network n1"):
        shaping.check_container({}, "n1", {"n1": {"DriverOpts": {K: "8"}}})
    shaping.check_container({"Labels": {K: "8mbit", "other": "x"}}, "bridge", {})


@pytest.mark.parametrize("mode", ["host", "none", "container:abc"])
def test_a_rate_without_an_interface_of_its_own_is_refused(mode: str) -> None:
    with pytest.raises(InvalidParameter) as exc:
        _shaping().check_container({"Labels": {K: "8mbit"}}, mode, {})
    assert K in exc.value.message and "interface" in exc.value.message


def test_without_a_shaper_rates_are_refused_with_the_reason() -> None:
    async def to_thread(fn: Any, *args: Any) -> Any:
        return fn(*args)
    shaping = Shaping(None, "no traffic shaper plugin is installed", {}, to_thread)
    shaping.check({})
    with pytest.raises(InvalidParameter, match="no traffic shaper plugin is installed"):
        shaping.check({K: "8mbit"})
    bad = Shaping(None, "no shaper", {K: "8mbit"}, to_thread)
    with pytest.raises(ValueError, match="default-net-rates"):
        bad.check_daemon()


def test_update_sets_and_removes_labels() -> None:
    shaping = _shaping()
    c = _container({K: "8mbit", "keep": "me"})
    assert shaping.updated_labels(c, {K: "2mbit"}) == {K: "2mbit", "keep": "me"}
    assert shaping.updated_labels(c, {K: ""}) == {"keep": "me"}
    with pytest.raises(InvalidParameter, match="SkiffNetRates"):
        shaping.updated_labels(c, {K: "2"})
    with pytest.raises(InvalidParameter, match="must map strings to strings"):
        shaping.updated_labels(c, [K])
    with pytest.raises(InvalidParameter, match="host network"):
        shaping.updated_labels(_container({}, "host"), {K: "2mbit"})


def test_cli_net_rate_names() -> None:
    assert net_rate_item("egress=2mbit") == (K, "2mbit")
    assert net_rate_item("ingress-burst=32kb") == ("skiff.net.ingress-burst", "32kb")
    assert net_rate_item(f"{K}=") == (K, "")


def test_daemon_json_default_net_rates_keys_and_types(tmp_path: Path) -> None:
    path = tmp_path / "daemon.json"
    path.write_text(json.dumps({"default-net-rates": {K: "100mbit"}}))
    config, _ = load(["--config-file", str(path)])
    assert config["default-net-rates"] == {K: "100mbit"}
    path.write_text(json.dumps({"default-net-rates": {"egress-rate": "100mbit"}}))
    with pytest.raises(ConfigError, match="invalid 'default-net-rates' key 'egress-rate'"):
        load(["--config-file", str(path)])
    path.write_text(json.dumps({"default-net-rates": {K: 100}}))
    with pytest.raises(ConfigError, match="every entry must be a string"):
        load(["--config-file", str(path)])


def test_the_refusal_follows_the_drivers_traits_not_their_names() -> None:
    """A third-party driver's network, by any name: refused by ``loopback_only``
    (and ``netns``), never because it is called none or host."""
    class LoOnly:
        netns = "new"
        loopback_only = True

    class OwnNamespace:
        netns = "host"

    DRIVERS.update({"isolated": LoOnly, "hostlike": OwnNamespace})
    try:
        with pytest.raises(InvalidParameter, match="--network isolated has only its loopback"):
            _shaping().check_container({"Labels": {K: "8mbit"}}, "isolated", {})
        with pytest.raises(InvalidParameter, match="shares the host's interfaces"):
            _shaping().check_container({"Labels": {K: "8mbit"}}, "hostlike", {})
    finally:
        del DRIVERS["isolated"], DRIVERS["hostlike"]
