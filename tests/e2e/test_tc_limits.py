"""Bandwidth limits with tc, through the stock docker CLI and skiff's own.

Two busybox containers on a user bridge: one sends zeros through ``nc`` to
the other, and the receiver's interface counter (``/proc/<pid>/net/dev``,
read from the host, frames as tc counts them) is sampled over a few
seconds.  "egress" is what leaves a container, "ingress" what arrives.  The
suite runs in a network namespace of its own; nothing leaves the bridge.
"""

from __future__ import annotations

import json
import secrets
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker as dockerpy
import pytest

from skiff.plugins.limits.tc import IFB_PREFIX, ifb_name
from tests.daemon import Daemon, poll, running_daemon

pyroute2 = pytest.importorskip("pyroute2")

EGRESS, INGRESS = "skiff.net.egress-rate", "skiff.net.ingress-rate"
PORT = 5001
#: seconds of steady traffic each measurement counts; the issue's band is 15 %
WINDOW = 5.0
BAND = 0.15


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_daemon(tmp_path_factory.mktemp("skiffd-tc")) as daemon:
        daemon.skiff("image", "bootstrap", "busybox")
        yield daemon


@pytest.fixture
def net(d: Daemon) -> Iterator[str]:
    name = f"tcnet-{secrets.token_hex(3)}"
    d.docker("network", "create", name, check=True)
    yield name
    for c in d.docker("ps", "-aq", "--filter", f"network={name}").stdout.decode().split():
        d.docker("rm", "-f", c)
    d.docker("network", "rm", name)


def inspect(d: Daemon, ref: str) -> dict[str, Any]:
    return json.loads(d.docker("inspect", ref, check=True).stdout)[0]


def receiver(d: Daemon, net: str, *args: str) -> str:
    name = f"rcv-{secrets.token_hex(3)}"
    d.docker("run", "-d", "--name", name, "--network", net, *args, "busybox", "sh", "-c",
             # busybox's small nc ends at the end of its stdin: give it one that never ends
             f"sleep 100000 | nc -l -p {PORT} > /dev/null", check=True)
    return name


def sender(d: Daemon, net: str, to: str, *args: str) -> str:
    name = f"snd-{secrets.token_hex(3)}"
    d.docker("run", "-d", "--name", name, "--network", net, *args, "busybox", "sh", "-c",
             f"until cat /dev/zero | nc {to} {PORT}; do sleep 0.1; done", check=True)
    return name


def rx_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/net/dev") as f:
        for line in f.read().splitlines()[2:]:
            name, _, rest = line.partition(":")
            if name.strip() == "eth0":
                return int(rest.split()[0])
    raise AssertionError(f"no eth0 in the namespace of {pid}")


def measure(d: Daemon, rcv: str, seconds: float = WINDOW) -> float:
    """Bits per second arriving at ``rcv``'s eth0, once the stream is steady: the
    median of three thirds of ``seconds``, so a stall of the loaded machine in one
    of them (the shaper's timer fires late, the sender is not scheduled) is not
    taken for the rate; a rate that is wrong is wrong in all three."""
    pid = inspect(d, rcv)["State"]["Pid"]
    poll(lambda: rx_bytes(pid) > 0, what="the first bytes")
    time.sleep(0.5)  # past slow start and the bucket's first burst
    rates = []
    for _ in range(3):
        b0, t0 = rx_bytes(pid), time.monotonic()
        time.sleep(seconds / 3)
        b1, t1 = rx_bytes(pid), time.monotonic()
        rates.append((b1 - b0) * 8 / (t1 - t0))
    return statistics.median(rates)


def assert_near(measured: float, bits: float) -> None:
    assert abs(measured - bits) <= BAND * bits, (
        f"measured {measured / 1e6:.2f} Mbit/s, expected {bits / 1e6:.2f} +- {BAND:.0%}")


def host_side(d: Daemon, ref: str) -> tuple[int, str]:
    """The index and name of the host end of ``ref``'s eth0."""
    index = int(d.docker("exec", ref, "cat", "/sys/class/net/eth0/iflink",
                         check=True).stdout)
    with pyroute2.IPRoute() as ipr:
        return index, ipr.get_links(index)[0].get_attr("IFLA_IFNAME")


def tbf_rate(index: int) -> int | None:
    """Bits per second of the root TBF of interface ``index``, or None."""
    with pyroute2.IPRoute() as ipr:
        for q in ipr.get_qdiscs(index=index):
            if q.get_attr("TCA_KIND") == "tbf" and q["parent"] == 0xFFFFFFFF:
                return int(q.get_attr("TCA_OPTIONS").get_attr("TCA_TBF_PARMS")["rate"]) * 8
    return None


def ifb_rate(veth: str) -> int | None:
    with pyroute2.IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifb_name(veth))
    return tbf_rate(found[0]) if found else None


def leftovers() -> list[str]:
    with pyroute2.IPRoute() as ipr:
        return [n for n in (link.get_attr("IFLA_IFNAME") for link in ipr.get_links())
                if n.startswith(IFB_PREFIX)]


# -- the rates, measured --------------------------------------------------------------


def test_egress_rate_holds_the_sender_near_8mbit(d: Daemon, net: str) -> None:
    rcv = receiver(d, net)
    snd = sender(d, net, rcv)
    free = measure(d, rcv, 1.0)
    assert free > 5 * 8e6, f"without a limit only {free / 1e6:.1f} Mbit/s: the bridge itself?"
    # both go: a sender left retrying could reach the next receiver (its address
    # may be the same) before the limited one does, and be measured instead
    d.docker("rm", "-f", rcv, snd)

    rcv = receiver(d, net)
    sender(d, net, rcv, "--label", f"{EGRESS}=8mbit")
    assert_near(measure(d, rcv), 8e6)


def test_ingress_rate_holds_the_receiver_near_8mbit(d: Daemon, net: str) -> None:
    rcv = receiver(d, net, "--label", f"{INGRESS}=8mbit")
    sender(d, net, rcv)
    assert_near(measure(d, rcv), 8e6)


def test_changing_the_limit_of_a_running_container(d: Daemon, net: str) -> None:
    rcv = receiver(d, net)
    snd = sender(d, net, rcv, "--label", f"{EGRESS}=8mbit")
    assert_near(measure(d, rcv), 8e6)
    d.skiff("update", "--net-rate", "egress=2mbit", snd)
    assert inspect(d, snd)["Config"]["Labels"][EGRESS] == "2mbit"
    assert_near(measure(d, rcv), 2e6)
    # lifted through the API extension: the rate is far above again
    api = dockerpy.APIClient(base_url=d.host, version="1.41", timeout=30)
    api._post_json(api._url("/containers/{0}/update", snd), data={"SkiffNetRates": {EGRESS: ""}}
                   ).raise_for_status()
    assert EGRESS not in (inspect(d, snd)["Config"]["Labels"] or {})
    # within a few windows: the packets the deleted queue held are lost, and
    # the sender waits out its retransmission timeout first (seen: a whole
    # second at 2 Mbit/s right after the lift when the update answered fast)
    poll(lambda: measure(d, rcv, 1.0) > 5 * 8e6, 15, "the rate far above the lifted limit")


def test_a_network_limit_overridden_per_container(d: Daemon) -> None:
    name = f"tcnet-{secrets.token_hex(3)}"
    d.docker("network", "create", "-o", f"{INGRESS}=4mbit", name, check=True)
    try:
        rcv = receiver(d, name)
        snd = sender(d, name, rcv)
        assert_near(measure(d, rcv), 4e6)
        d.docker("rm", "-f", rcv, snd, check=True)
        rcv = receiver(d, name, "--label", f"{INGRESS}=8mbit")
        sender(d, name, rcv)
        assert_near(measure(d, rcv), 8e6)
    finally:
        for c in d.docker("ps", "-aq", "--filter", f"network={name}").stdout.decode().split():
            d.docker("rm", "-f", c)
        d.docker("network", "rm", name)


# -- where the options come from, seen in the kernel's qdiscs --------------------------


def test_endpoint_driver_opts_win_over_labels(d: Daemon, net: str) -> None:
    name = f"ep-{secrets.token_hex(3)}"
    d.docker("run", "-d", "--name", name, "--label", f"{INGRESS}=8mbit",
             "--network", f"name={net},driver-opt={INGRESS}=2mbit",
             "busybox", "sleep", "60", check=True)
    index, _ = host_side(d, name)
    assert tbf_rate(index) == 2_000_000
    other = f"tcnet-{secrets.token_hex(3)}"
    d.docker("network", "create", other, check=True)
    try:
        d.docker("network", "connect", "--driver-opt", f"{EGRESS}=3mbit", other, name,
                 check=True)
        settings = inspect(d, name)["NetworkSettings"]["Networks"][other]
        assert settings["DriverOpts"] == {EGRESS: "3mbit"}
        iflink = d.docker("exec", name, "cat", "/sys/class/net/eth1/iflink", check=True)
        with pyroute2.IPRoute() as ipr:
            veth = ipr.get_links(int(iflink.stdout))[0].get_attr("IFLA_IFNAME")
        assert ifb_rate(veth) == 3_000_000
        assert tbf_rate(int(iflink.stdout)) == 8_000_000  # the label, on this network
        d.docker("network", "disconnect", other, name, check=True)
        poll(lambda: ifb_name(veth) not in leftovers(), timeout=5, what="the IFB deleted")
    finally:
        d.docker("rm", "-f", name)
        d.docker("network", "rm", other)


def test_info_lists_the_shaper(d: Daemon) -> None:
    # skiff's own key of Plugins, which the docker CLI does not show
    info = dockerpy.APIClient(base_url=d.host, version="1.41", timeout=30).info()
    assert info["Plugins"]["Limits"] == ["cgroupfs", "tc"]


def test_qdiscs_and_ifb_are_gone_after_stop(d: Daemon, net: str) -> None:
    name = f"gone-{secrets.token_hex(3)}"
    d.docker("run", "-d", "--name", name, "--network", net, "--label", f"{EGRESS}=8mbit",
             "--label", f"{INGRESS}=8mbit", "busybox", "sleep", "60", check=True)
    index, veth = host_side(d, name)
    assert tbf_rate(index) == 8_000_000 and ifb_rate(veth) == 8_000_000
    d.docker("stop", "-t", "0", name, check=True)
    with pyroute2.IPRoute() as ipr:
        assert not ipr.link_lookup(ifname=veth)
    # the IFB goes right after the stop (deleting a device takes ~20 ms, which
    # the stop does not wait for)
    poll(lambda: leftovers() == [], timeout=5, what="no IFB left")
    d.docker("start", name, check=True)  # the limits come back with the next run
    index, veth = host_side(d, name)
    assert tbf_rate(index) == 8_000_000 and ifb_rate(veth) == 8_000_000
    d.docker("rm", "-f", name, check=True)
    poll(lambda: leftovers() == [], timeout=5, what="no IFB left")


# -- refusals ------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "words"), [
    (["--label", f"{EGRESS}=fast"], f"{EGRESS}=10mbit"),
    (["--label", f"{INGRESS}=8"], "a bare number is bits per second"),
    (["--label", "skiff.net.egress-burst=1"], "skiff.net.egress-burst=32kb"),
    (["--label", "skiff.net.speed=1mbit"], "unknown bandwidth option"),
    (["--network", "none", "--label", f"{EGRESS}=8mbit"], "only its loopback"),
    (["--network", "host", "--label", f"{EGRESS}=8mbit"], "shares the host's interfaces"),
])
def test_bad_values_are_400s_naming_the_key(d: Daemon, args: list[str], words: str) -> None:
    api = dockerpy.APIClient(base_url=d.host, version="1.41", timeout=30)
    labels = dict(a.split("=", 1) for a in args[1::2] if "=" in a)
    mode = args[1] if args[0] == "--network" else "default"
    with pytest.raises(dockerpy.errors.APIError) as exc:
        api.create_container("busybox", "true", labels=labels,
                             host_config=api.create_host_config(network_mode=mode))
    assert exc.value.status_code == 400
    assert words in str(exc.value.explanation)
    res = d.docker("create", *args, "busybox", "true")
    assert res.returncode != 0 and words in res.stderr.decode()


def test_bad_network_option_and_update_are_400s(d: Daemon, net: str) -> None:
    res = d.docker("network", "create", "-o", f"{EGRESS}=lots", f"bad-{secrets.token_hex(3)}")
    assert res.returncode != 0 and f"{EGRESS}=10mbit" in res.stderr.decode()
    name = f"upd-{secrets.token_hex(3)}"
    d.docker("create", "--name", name, "--network", net, "busybox", "true", check=True)
    res = d.skiff("update", "--net-rate", "egress=quick", name, check=False)
    assert res.returncode == 1 and f"{EGRESS}=10mbit" in res.stderr.decode()
    res = d.docker("network", "connect", "--driver-opt", f"{EGRESS}=1", "bridge", name)
    assert res.returncode != 0 and "bits per second" in res.stderr.decode()
    d.docker("rm", name, check=True)
    host = f"hst-{secrets.token_hex(3)}"
    d.docker("create", "--name", host, "--network", "host", "busybox", "true", check=True)
    res = d.skiff("update", "--net-rate", "egress=2mbit", host, check=False)
    assert res.returncode == 1 and "shares the host's interfaces" in res.stderr.decode()
    d.docker("rm", host, check=True)


def test_daemon_default_applies_and_bad_default_refuses_start(tmp_path: Path) -> None:
    with running_daemon(tmp_path / "ok", **{"default-net-rates": {INGRESS: "6mbit"}}) as dd:
        dd.skiff("image", "bootstrap", "busybox")
        name = f"dflt-{secrets.token_hex(3)}"
        dd.docker("run", "-d", "--name", name, "busybox", "sleep", "60", check=True)
        index, _ = host_side(dd, name)
        assert tbf_rate(index) == 6_000_000
        dd.docker("rm", "-f", name, check=True)
        # the default is for containers with an interface of their own: none and
        # host still run
        for mode in ("none", "host"):
            res = dd.docker("run", "--rm", "--network", mode, "busybox", "true")
            assert res.returncode == 0, res.stderr.decode()
    from tests.daemon import Daemon as _Daemon
    from tests.daemon import daemon_config

    base = tmp_path / "bad"
    base.mkdir()
    bad = _Daemon(base, daemon_config(base, **{"default-net-rates": {EGRESS: "fast"}}))
    with pytest.raises(RuntimeError, match=r"default-net-rates"):
        bad.start(timeout=10)
    assert bad.proc is not None and bad.proc.poll() is not None
