"""The few rtnetlink requests the tc shaper makes, packed by hand and sent in
batches on one socket the shaper keeps.

Why not pyroute2's tc API, as before: profiled (issue 20), a ``run --rm``
with both directions limited spent ~6 ms in it, about 1 ms a request, nearly
all of it Python: each call of pyroute2 0.9's synchronous API runs an asyncio
loop, builds the message through its generic encoder and, for a TBF, computes
a 256-entry rate table the kernel does not need when the rate says its link
layer (``TC_LINKLAYER_ETHERNET``); and each ``IPRoute()`` opened a socket.
Here a request is a ``struct.pack`` of a few dozen bytes, several go in one
``send`` (the kernel handles the messages of a datagram in order and acks
each), and the socket lives as long as the shaper.

Only what the shaper sends is here: a TBF as a root qdisc, an ``ingress``
qdisc, a u32 match-all filter whose ``mirred`` action redirects to a device,
an IFB device, and the deletions.  Reading (``qdisc_kinds``) is a dump.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading
from dataclasses import dataclass

from skiff.plugins._rtnetlink import (
    IFF_UP,
    IFLA_IFNAME,
    IFLA_INFO_KIND,
    IFLA_LINKINFO,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLMSG_DONE,
    NLMSG_ERROR,
    RTM_DELLINK,
    RTM_NEWLINK,
    NetlinkError,
    attr,
    attrs,
    error_of,
    header,
    ifinfomsg,
    messages,
    nested,
    open_socket,
    string,
)

__all__ = ["NetlinkError", "Request", "Rtnl", "add_ifb", "add_ingress", "add_redirect",
           "add_tbf", "del_ingress", "del_link", "del_root"]

RTM_NEWQDISC, RTM_DELQDISC, RTM_GETQDISC = 36, 37, 38
RTM_NEWTFILTER = 44
TCA_KIND, TCA_OPTIONS = 1, 2
TCA_TBF_PARMS, TCA_TBF_RATE64, TCA_TBF_BURST = 1, 4, 6
TCA_U32_CLASSID, TCA_U32_SEL, TCA_U32_ACT = 1, 5, 7
TCA_ACT_KIND, TCA_ACT_OPTIONS = 1, 2
TCA_MIRRED_PARMS = 2
TC_LINKLAYER_ETHERNET = 1
TC_U32_TERMINAL = 1
TC_ACT_STOLEN = 4
TCA_EGRESS_REDIR = 1
TC_H_ROOT = 0xFFFFFFFF
TC_H_INGRESS = 0xFFFFFFF1
INGRESS_HANDLE = 0xFFFF0000
ETH_P_ALL = 0x0003
#: one page more than a dump of a few qdiscs needs
RECV_SIZE = 65536


@dataclass(frozen=True)
class Request:
    """One message to send: its type, flags and payload (after the header)."""

    type: int
    flags: int
    payload: bytes


def _tcmsg(index: int, handle: int, parent: int, info: int = 0) -> bytes:
    return struct.pack("=BxxxiIII", socket.AF_UNSPEC, index, handle, parent, info)


def _ratespec(bytes_per_second: int) -> bytes:
    # cell_log, linklayer, overhead, cell_align, mpu, rate: a rate that names its
    # link layer needs no rate table (the kernel computes from the rate alone)
    return struct.pack("=BBHhHI", 0, TC_LINKLAYER_ETHERNET, 0, 0, 0,
                       min(bytes_per_second, 0xFFFFFFFF))


def add_tbf(index: int, rate: int, burst: int, latency: int) -> Request:
    """A TBF as ``index``'s root qdisc: ``rate`` bytes per second, a bucket of
    ``burst`` bytes, a queue of ``latency`` microseconds of traffic (tc's ``limit``)."""
    rate_bps = rate
    limit = int(rate_bps * latency / 1_000_000) + burst
    # rate, peakrate, limit, buffer (ticks; TCA_TBF_BURST gives it in bytes), mtu
    qopt = _ratespec(rate_bps) + struct.pack("=12x") + struct.pack("=III", limit, 0, 0)
    attrs = [attr(TCA_TBF_PARMS, qopt), attr(TCA_TBF_BURST, struct.pack("=I", burst))]
    if rate_bps > 0xFFFFFFFF:
        attrs.append(attr(TCA_TBF_RATE64, struct.pack("=Q", rate_bps)))
    return Request(RTM_NEWQDISC, NLM_F_CREATE | NLM_F_EXCL,
                   _tcmsg(index, 0, TC_H_ROOT) + string(TCA_KIND, "tbf")
                   + nested(TCA_OPTIONS, *attrs))


def del_root(index: int) -> Request:
    return Request(RTM_DELQDISC, 0, _tcmsg(index, 0, TC_H_ROOT))


def add_ingress(index: int) -> Request:
    return Request(RTM_NEWQDISC, NLM_F_CREATE | NLM_F_EXCL,
                   _tcmsg(index, INGRESS_HANDLE, TC_H_INGRESS) + string(TCA_KIND, "ingress"))


def del_ingress(index: int) -> Request:
    return Request(RTM_DELQDISC, 0, _tcmsg(index, INGRESS_HANDLE, TC_H_INGRESS))


def add_redirect(index: int, to_index: int) -> Request:
    """On ``index``'s ingress qdisc: every frame (u32, one key matching all,
    any protocol) redirected to the egress of ``to_index``."""
    # flags, offshift, nkeys, offmask, off, offoff, hoff, hmask; then the key:
    # mask, value, off, offmask (all zero: matches every packet)
    sel = struct.pack("=BBBxHHhhI", TC_U32_TERMINAL, 0, 1, 0, 0, 0, 0, 0)
    sel += struct.pack("=IIii", 0, 0, 0, 0)
    # tc_gen (index, capab, action, refcnt, bindcnt), eaction, ifindex
    mirred = struct.pack("=IIiiiiI", 0, 0, TC_ACT_STOLEN, 0, 0, TCA_EGRESS_REDIR, to_index)
    action = nested(1, string(TCA_ACT_KIND, "mirred"),
                     nested(TCA_ACT_OPTIONS, attr(TCA_MIRRED_PARMS, mirred)))
    options = nested(TCA_OPTIONS, attr(TCA_U32_CLASSID, struct.pack("=I", 0x10000)),
                      attr(TCA_U32_SEL, sel), nested(TCA_U32_ACT, action))
    info = (1 << 16) | socket.htons(ETH_P_ALL)  # priority 1, protocol
    return Request(RTM_NEWTFILTER, NLM_F_CREATE | NLM_F_EXCL,
                   _tcmsg(index, 0, INGRESS_HANDLE, info) + string(TCA_KIND, "u32") + options)


def add_ifb(name: str) -> Request:
    """An IFB device named ``name``, up."""
    return Request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL,
                   ifinfomsg(flags=IFF_UP, change=IFF_UP) + string(IFLA_IFNAME, name)
                   + nested(IFLA_LINKINFO, string(IFLA_INFO_KIND, "ifb")))


def del_link(name: str) -> Request:
    return Request(RTM_DELLINK, 0, ifinfomsg() + string(IFLA_IFNAME, name))


class Rtnl:
    """One rtnetlink socket; ``run`` sends a batch and returns each request's
    error (0 for none).  Thread-safe: a lock serialises the batches."""

    def __init__(self) -> None:
        self._sock = open_socket()
        self._seq = 0
        self._lock = threading.Lock()

    def close(self) -> None:
        self._sock.close()

    def run(self, requests: list[Request]) -> list[int]:
        """Send ``requests`` in one datagram; the errno of each (0: done)."""
        if not requests:
            return []
        with self._lock:
            first = self._seq + 1
            self._seq += len(requests)
            data = b"".join(
                header(len(r.payload), r.type, NLM_F_ACK | r.flags, first + i) + r.payload
                for i, r in enumerate(requests))
            self._sock.send(data)
            errors: dict[int, int] = {}
            while len(errors) < len(requests):
                for seq, kind, body in messages(self._sock.recv(RECV_SIZE)):
                    if kind == NLMSG_ERROR and first <= seq < first + len(requests):
                        errors[seq] = error_of(body)
            return [errors[first + i] for i in range(len(requests))]

    def check(self, requests: list[Request], what: str) -> None:
        """``run``, raising ``NetlinkError`` on the first error."""
        for err in self.run(requests):
            if err:
                raise NetlinkError(err, f"{what}: {os.strerror(err)}")

    def qdisc_kinds(self, index: int) -> dict[int, str]:
        """parent -> kind of the qdiscs of ``index`` (a dump, filtered here)."""
        with self._lock:
            self._seq += 1
            seq = self._seq
            self._sock.send(header(20, RTM_GETQDISC, NLM_F_DUMP, seq) + _tcmsg(index, 0, 0))
            out: dict[int, str] = {}
            while True:
                for got, kind, body in messages(self._sock.recv(RECV_SIZE)):
                    if got != seq:
                        continue
                    if kind == NLMSG_DONE:
                        return out
                    if kind == NLMSG_ERROR:
                        err = error_of(body)
                        raise NetlinkError(err, f"qdisc dump: {os.strerror(err or errno.EIO)}")
                    if kind == RTM_NEWQDISC:
                        _, ifindex, _, parent, _ = struct.unpack_from("=BxxxiIII", body)
                        if ifindex == index:
                            out[parent] = attrs(body[20:]).get(TCA_KIND, b"").rstrip(b"\0").decode()
