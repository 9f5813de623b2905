"""The few rtnetlink requests a daemon's start makes for its bridges, packed
by hand on one socket per call site.

Why not pyroute2 here: importing it costs ~0.16-0.2 s of CPU (its package
imports every family it has, asyncio and multiprocessing with them), which was
the largest single step between skiffd's exec and its first answer; and each
call of 0.9's synchronous API runs an asyncio loop.  The start needs only
this: list the links (``reconcile``), add a bridge, read and add its
addresses, set it up with its alias, delete a link.  A container's ``join``
(a veth whose peer goes into another namespace, configured from inside it)
still goes through pyroute2, imported by the first container that needs it.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass
from types import TracebackType

NETLINK_ROUTE = 0
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_GETADDR = 20, 22
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLM_F_EXCL, NLM_F_CREATE = 0x200, 0x400
NLA_F_NESTED = 0x8000
IFF_UP = 0x1
IFLA_IFNAME, IFLA_MASTER, IFLA_LINKINFO, IFLA_IFALIAS = 3, 10, 18, 20
IFLA_LINK_NETNSID = 37
IFLA_INFO_KIND = 1
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
#: a dump's datagrams are at most a few pages; a message is never cut
RECV_SIZE = 1 << 17
#: seconds to wait for the kernel's answer; a longer wait is a bug, not a load
REPLY_TIMEOUT = 10.0


class NetlinkError(OSError):
    """The kernel refused a request (``errno`` is its error)."""


@dataclass(frozen=True)
class Link:
    """What ``reconcile`` judges a link by."""

    index: int
    name: str
    alias: str | None  #: None: no alias set
    master: int | None  #: the index of the bridge it is enslaved to
    netnsid: int | None  #: set when its peer lives in another namespace


def _attr(kind: int, data: bytes) -> bytes:
    length = 4 + len(data)
    return struct.pack("=HH", length, kind) + data + b"\0" * (-length % 4)


def _string(kind: int, text: str) -> bytes:
    return _attr(kind, text.encode() + b"\0")


def _ifinfomsg(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    return struct.pack("=BxHiII", socket.AF_UNSPEC, 0, index, flags, change)


def _attrs(data: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    offset = 0
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        out[kind & ~NLA_F_NESTED] = data[offset + 4:offset + length]
        offset += (length + 3) & ~3
    return out


def _text(data: bytes) -> str:
    return data.split(b"\0", 1)[0].decode(errors="replace")


def _messages(data: bytes) -> list[tuple[int, int, bytes]]:
    """(seq, type, payload) of each message of a datagram."""
    out = []
    offset = 0
    while offset + 16 <= len(data):
        length, kind, _flags, seq, _pid = struct.unpack_from("=IHHII", data, offset)
        if length < 16:
            break
        out.append((seq, kind, data[offset + 16:offset + length]))
        offset += (length + 3) & ~3
    return out


class Rtnl:
    """One rtnetlink socket of the calling thread's namespace (a context manager)."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                   NETLINK_ROUTE)
        self._sock.bind((0, 0))
        self._sock.settimeout(REPLY_TIMEOUT)
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _send(self, kind: int, flags: int, payload: bytes) -> int:
        self._seq += 1
        self._sock.send(struct.pack("=IHHII", 16 + len(payload), kind,
                                    NLM_F_REQUEST | flags, self._seq, 0) + payload)
        return self._seq

    def request(self, kind: int, flags: int, payload: bytes, what: str) -> None:
        """One acknowledged request; ``NetlinkError`` when the kernel refuses it."""
        seq = self._send(kind, NLM_F_ACK | flags, payload)
        while True:
            for got, mtype, body in _messages(self._sock.recv(RECV_SIZE)):
                if got == seq and mtype == NLMSG_ERROR:
                    err = -struct.unpack_from("=i", body)[0]
                    if err:
                        raise NetlinkError(err, f"{what}: {os.strerror(err)}")
                    return

    def dump(self, kind: int, payload: bytes, what: str) -> list[tuple[int, bytes]]:
        """(type, payload) of every message a dump request answers."""
        seq = self._send(kind, NLM_F_DUMP, payload)
        out: list[tuple[int, bytes]] = []
        while True:
            for got, mtype, body in _messages(self._sock.recv(RECV_SIZE)):
                if got != seq:
                    continue
                if mtype == NLMSG_DONE:
                    return out
                if mtype == NLMSG_ERROR:
                    err = -struct.unpack_from("=i", body)[0]
                    raise NetlinkError(err or errno.EIO, f"{what}: {os.strerror(err or errno.EIO)}")
                out.append((mtype, body))

    # -- links -------------------------------------------------------------------

    def links(self) -> list[Link]:
        out = []
        for mtype, body in self.dump(RTM_GETLINK, _ifinfomsg(), "listing the links"):
            if mtype != RTM_NEWLINK:
                continue
            index = struct.unpack_from("=i", body, 4)[0]
            attrs = _attrs(body[16:])
            master = attrs.get(IFLA_MASTER)
            netnsid = attrs.get(IFLA_LINK_NETNSID)
            out.append(Link(
                index=index, name=_text(attrs.get(IFLA_IFNAME, b"")),
                alias=_text(attrs[IFLA_IFALIAS]) if IFLA_IFALIAS in attrs else None,
                master=struct.unpack("=I", master[:4])[0] if master else None,
                netnsid=struct.unpack("=i", netnsid[:4])[0] if netnsid else None))
        return out

    def add_bridge(self, name: str) -> None:
        self.request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL,
                     _ifinfomsg() + _string(IFLA_IFNAME, name)
                     + _attr(IFLA_LINKINFO | NLA_F_NESTED, _string(IFLA_INFO_KIND, "bridge")),
                     f"adding bridge {name}")

    def set_up(self, index: int, alias: str | None = None) -> None:
        """Link ``index`` up, with ``alias`` as its alias when given."""
        payload = _ifinfomsg(index, IFF_UP, IFF_UP)
        if alias is not None:
            payload += _string(IFLA_IFALIAS, alias)
        self.request(RTM_NEWLINK, 0, payload, f"setting link {index} up")

    def delete(self, index: int) -> None:
        self.request(RTM_DELLINK, 0, _ifinfomsg(index), f"deleting link {index}")

    # -- addresses -----------------------------------------------------------------

    def addresses(self, index: int, family: int) -> set[str]:
        """The addresses of link ``index`` in ``family`` (AF_INET, AF_INET6)."""
        out = set()
        for mtype, body in self.dump(RTM_GETADDR, struct.pack("=BBBBI", family, 0, 0, 0, 0),
                                     "listing the addresses"):
            fam, _, _, _, ifindex = struct.unpack_from("=BBBBI", body)
            if mtype != RTM_NEWADDR or ifindex != index or fam != family:
                continue
            attrs = _attrs(body[8:])
            raw = attrs.get(IFA_ADDRESS) or attrs.get(IFA_LOCAL)
            if raw:
                out.add(socket.inet_ntop(family, raw))
        return out

    def add_address(self, index: int, address: str, prefixlen: int,
                    family: int = socket.AF_INET, flags: int = 0) -> None:
        raw = socket.inet_pton(family, address)
        self.request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL,
                     struct.pack("=BBBBI", family, prefixlen, flags & 0xFF, 0, index)
                     + _attr(IFA_LOCAL, raw) + _attr(IFA_ADDRESS, raw)
                     + _attr(IFA_FLAGS, struct.pack("=I", flags)),
                     f"adding address {address}/{prefixlen}")


def index_of(name: str) -> int | None:
    """The index of link ``name`` in the calling thread's namespace, or None."""
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return None
