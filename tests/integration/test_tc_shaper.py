"""The tc shaper on a real veth pair (the suite runs in a network namespace of
its own): the qdiscs it makes, changes and removes, and no IFB left behind."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from skiff.core.hookspecs import ShapedEndpoint, TrafficShaperContext
from skiff.plugins.limits.tc import IFB_PREFIX, TcShaper, ifb_name, tc_factory

pyroute2 = pytest.importorskip("pyroute2")

EGRESS, INGRESS = "skiff.net.egress-rate", "skiff.net.ingress-rate"


@pytest.fixture
def veth() -> Iterator[str]:
    name = "skfv" + secrets.token_hex(4)
    with pyroute2.IPRoute() as ipr:
        ipr.link("add", ifname=name, kind="veth", peer="skfp" + name[4:])
    yield name
    with pyroute2.IPRoute() as ipr:
        for index in ipr.link_lookup(ifname=name):
            ipr.link("del", index=index)


def qdiscs(name: str) -> dict[str, Any]:
    """kind -> the qdisc, of the interface ``name``."""
    with pyroute2.IPRoute() as ipr:
        index = ipr.link_lookup(ifname=name)[0]
        return {q.get_attr("TCA_KIND"): q for q in ipr.get_qdiscs(index=index)}


def ifbs() -> list[str]:
    with pyroute2.IPRoute() as ipr:
        return [n for n in (link.get_attr("IFLA_IFNAME") for link in ipr.get_links())
                if n.startswith(IFB_PREFIX)]


def tbf_rate(q: Any) -> int:
    """Bits per second of a TBF qdisc."""
    return int(q.get_attr("TCA_OPTIONS").get_attr("TCA_TBF_PARMS")["rate"]) * 8


def endpoint(veth: str, rates: dict[str, str]) -> ShapedEndpoint:
    return ShapedEndpoint("c" * 64, "n" * 64, "net", "e" * 64, veth, rates=rates)


def test_both_directions_changed_and_removed(veth: str) -> None:
    shaper = TcShaper(TrafficShaperContext(exec_root="/nonexistent"))
    shaper.joined(endpoint(veth, {EGRESS: "8mbit", INGRESS: "2mbit"}))
    host = qdiscs(veth)
    assert tbf_rate(host["tbf"]) == 2_000_000  # toward the container
    assert "ingress" in host  # what the container sends, redirected...
    assert ifbs() == [ifb_name(veth)]
    assert tbf_rate(qdiscs(ifb_name(veth))["tbf"]) == 8_000_000  # ...and paced on the IFB

    shaper.changed(endpoint(veth, {EGRESS: "4mbit"}))
    host = qdiscs(veth)
    assert "tbf" not in host and "ingress" in host
    assert tbf_rate(qdiscs(ifb_name(veth))["tbf"]) == 4_000_000

    shaper.changed(endpoint(veth, {}))
    assert "ingress" not in qdiscs(veth) and "tbf" not in qdiscs(veth)
    assert ifbs() == []


def test_left_removes_the_ifb_and_the_veth_takes_its_qdiscs(veth: str) -> None:
    shaper = TcShaper(TrafficShaperContext(exec_root="/nonexistent"))
    ep = endpoint(veth, {EGRESS: "8mbit", INGRESS: "8mbit"})
    shaper.joined(ep)
    shaper.left(ep)
    shaper.left(ep)  # idempotent
    assert "ingress" in qdiscs(veth)  # the veth's own go with it, not with left
    shaper.close()  # the IFB goes in the background: close waits for it
    assert ifbs() == []


def test_joined_twice_fast_and_changed_from_nothing(veth: str) -> None:
    shaper = TcShaper(TrafficShaperContext(exec_root="/nonexistent"))
    shaper.changed(endpoint(veth, {}))  # nothing there, nothing asked: no error
    shaper.changed(endpoint(veth, {EGRESS: "8mbit", INGRESS: "1mbit"}))
    assert tbf_rate(qdiscs(veth)["tbf"]) == 1_000_000
    assert tbf_rate(qdiscs(ifb_name(veth))["tbf"]) == 8_000_000
    shaper.changed(endpoint(veth, {EGRESS: "8mbit", INGRESS: "1mbit"}))  # the same again
    assert tbf_rate(qdiscs(veth)["tbf"]) == 1_000_000
    shaper.left(endpoint(veth, {}))
    shaper.close()
    assert ifbs() == []


def test_a_crashed_daemons_ifb_is_purged_at_start(veth: str) -> None:
    shaper = TcShaper(TrafficShaperContext(exec_root="/nonexistent"))
    shaper.joined(endpoint(veth, {EGRESS: "8mbit"}))
    tc_factory(TrafficShaperContext(exec_root="/nonexistent"))  # its veth still exists
    assert ifbs() == [ifb_name(veth)]
    with pyroute2.IPRoute() as ipr:  # the veth goes, as when a container dies unseen
        ipr.link("del", index=ipr.link_lookup(ifname=veth)[0])
    tc_factory(TrafficShaperContext(exec_root="/nonexistent"))
    assert ifbs() == []


def test_a_missing_interface_is_an_error_not_a_silent_no_op() -> None:
    shaper = TcShaper(TrafficShaperContext(exec_root="/nonexistent"))
    with pytest.raises(LookupError, match="gone"):
        shaper.joined(endpoint("skfvdeadbeef", {EGRESS: "8mbit"}))


def test_set_up_is_two_batches_on_one_socket(veth: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """What keeps a start cheap (issue 20: ~1 ms a request through pyroute2,
    6-10 ms for both directions): a fresh endpoint's queues go in at most two
    datagrams (the redirect needs the IFB's index), ingress alone in one, on
    the one socket the shaper keeps; and a batch with a refused request says so."""
    from skiff.plugins.limits import tcnetlink

    batches: list[list[int]] = []
    sockets: set[int] = set()
    real_run = tcnetlink.Rtnl.run

    def counted(self: tcnetlink.Rtnl, requests: list[tcnetlink.Request]) -> list[int]:
        batches.append([r.type for r in requests])
        sockets.add(id(self))
        return real_run(self, requests)

    monkeypatch.setattr(tcnetlink.Rtnl, "run", counted)
    shaper = TcShaper(TrafficShaperContext(exec_root="/nonexistent"))
    shaper.joined(endpoint(veth, {EGRESS: "8mbit", INGRESS: "2mbit"}))
    assert len(batches) == 2 and sum(map(len, batches)) == 5, batches
    assert tbf_rate(qdiscs(veth)["tbf"]) == 2_000_000
    assert tbf_rate(qdiscs(ifb_name(veth))["tbf"]) == 8_000_000
    shaper.changed(endpoint(veth, {}))
    batches.clear()
    other = "skfv" + secrets.token_hex(4)
    with pyroute2.IPRoute() as ipr:
        ipr.link("add", ifname=other, kind="veth", peer="skfp" + other[4:])
    try:
        shaper.joined(endpoint(other, {INGRESS: "2mbit"}))
        assert len(batches) == 1 and len(batches[0]) == 1
        assert len(sockets) == 1  # one socket for all of it
        # the same TBF again on a fresh interface: the kernel's EEXIST is an error
        with pytest.raises(tcnetlink.NetlinkError, match="File exists"):
            shaper.joined(endpoint(other, {INGRESS: "2mbit"}))
    finally:
        with pyroute2.IPRoute() as ipr:
            ipr.link("del", index=ipr.link_lookup(ifname=other)[0])
        shaper.close()
