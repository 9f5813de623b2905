"""IPAM: addresses inside a subnet, subnets from the pools, and DNS packet helpers."""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from skiff.core.networks import DEFAULT_POOLS, pick_subnet
from skiff.plugins.network.bridge.dns import answer, parse_question, parse_upstreams
from skiff.plugins.network.bridge.ipam import AddressExhausted, AddressInUse, Pool, mac_for


def test_gateway_is_first_host_and_never_handed_out() -> None:
    pool = Pool("10.20.0.0/29")
    assert str(pool.gateway) == "10.20.0.1"
    got = [pool.allocate() for _ in range(5)]
    assert got == [f"10.20.0.{i}" for i in range(2, 7)]
    with pytest.raises(AddressExhausted):
        pool.allocate()


def test_release_makes_the_address_free_again() -> None:
    pool = Pool("10.20.0.0/24")
    a = pool.allocate()
    b = pool.allocate()
    pool.release(a)
    assert pool.allocate() == a
    pool.release(b)
    pool.release(b)  # idempotent
    assert pool.in_use() == {a}


def test_requested_address_and_conflicts() -> None:
    pool = Pool("10.20.0.0/24", gateway="10.20.0.254")
    assert pool.allocate("10.20.0.1") == "10.20.0.1"
    with pytest.raises(AddressInUse):
        pool.allocate("10.20.0.1")
    with pytest.raises(AddressInUse):
        pool.allocate("10.20.0.254")  # the gateway
    with pytest.raises(AddressInUse):
        pool.allocate("10.20.1.5")  # outside
    with pytest.raises(AddressInUse):
        pool.allocate("10.20.0.255")  # broadcast


def test_ip_range_limits_dynamic_addresses() -> None:
    pool = Pool("10.20.0.0/16", ip_range="10.20.5.0/30")
    assert [pool.allocate(), pool.allocate()] == ["10.20.5.1", "10.20.5.2"]
    with pytest.raises(AddressExhausted):
        pool.allocate()
    assert pool.allocate("10.20.9.9") == "10.20.9.9"  # static addresses: the whole subnet
    with pytest.raises(ValueError):
        Pool("10.20.0.0/16", ip_range="10.21.0.0/24")
    with pytest.raises(ValueError):
        Pool("10.20.0.0/16", gateway="10.21.0.1")


@given(st.lists(st.booleans(), min_size=1, max_size=60))
def test_no_address_is_handed_out_twice(ops: list[bool]) -> None:
    pool = Pool("10.30.0.0/26")
    held: list[str] = []
    for take in ops:
        if take or not held:
            try:
                ip = pool.allocate()
            except AddressExhausted:
                assert len(held) == 61
                continue
            assert ip not in held and ip != "10.30.0.1"
            assert ipaddress.IPv4Address(ip) in ipaddress.IPv4Network("10.30.0.0/26")
            held.append(ip)
        else:
            pool.release(held.pop(0))
    assert pool.in_use() == set(held)


def test_mac_is_docker_s() -> None:
    assert mac_for("172.17.0.2") == "02:42:ac:11:00:02"


def test_pick_subnet_skips_taken_and_overlapping() -> None:
    assert str(pick_subnet(DEFAULT_POOLS, [])) == "172.17.0.0/16"
    taken = [ipaddress.IPv4Network("172.17.0.0/16"), ipaddress.IPv4Network("172.18.3.0/24")]
    assert str(pick_subnet(DEFAULT_POOLS, taken)) == "172.19.0.0/16"
    assert str(pick_subnet([("10.99.0.0/16", 24)], [ipaddress.IPv4Network("10.99.0.0/23")])) \
        == "10.99.2.0/24"
    with pytest.raises(ValueError):
        pick_subnet([("10.99.0.0/24", 24)], [ipaddress.IPv4Network("10.0.0.0/8")])


def _query(name: str, qtype: int = 1) -> bytes:
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + q + struct.pack("!HH", qtype, 1)


def test_dns_answer_round_trip() -> None:
    packet = _query("web.example")
    name, qtype, end = parse_question(packet) or ("", 0, 0)
    assert (name, qtype, end) == ("web.example", 1, len(packet))
    reply = answer(packet, end, ["10.1.2.3"], qtype)
    qid, flags, qd, an = struct.unpack("!HHHH", reply[:8])
    assert (qid, qd, an) == (0x1234, 1, 1) and flags & 0x8000
    assert reply.endswith(socket.inet_aton("10.1.2.3"))
    # AAAA for a known name: an empty answer, not a forward
    aaaa = _query("web", 28)
    _, qtype, end = parse_question(aaaa) or ("", 0, 0)
    assert struct.unpack("!H", answer(aaaa, end, ["10.1.2.3"], qtype)[6:8])[0] == 0
    assert parse_question(b"\x00" * 5) is None


def test_upstreams_from_config_or_resolv_conf(tmp_path) -> None:
    assert parse_upstreams(["127.0.0.1:5353", "10.0.0.2"]) == [("127.0.0.1", 5353),
                                                               ("10.0.0.2", 53)]
    conf = tmp_path / "resolv.conf"
    conf.write_text("search x\nnameserver 192.0.2.53\nnameserver ::1\n")
    assert parse_upstreams([], str(conf)) == [("192.0.2.53", 53), ("::1", 53)]
    # IPv6 upstreams: bare, bracketed with a port, with a zone; nonsense skipped
    assert parse_upstreams(["fd00::53", "[::1]:5353", "fe80::1%eth0", "[::1]:x",
                            "nonsense", "10.0.0.1:0"]) == [
        ("fd00::53", 53), ("::1", 5353), ("fe80::1%eth0", 53)]
    conf.write_text("nameserver fd00:db8::1\nnameserver ::1\n")  # IPv6 servers only
    assert parse_upstreams([], str(conf)) == [("fd00:db8::1", 53), ("::1", 53)]
