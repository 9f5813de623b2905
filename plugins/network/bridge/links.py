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

__all__ = ["Link", "NetlinkError", "Rtnl", "index_of"]

RTM_GETLINK = 18
RTM_NEWADDR, RTM_GETADDR = 20, 22
IFLA_MASTER, IFLA_IFALIAS = 10, 20
IFLA_LINK_NETNSID = 37
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
#: a dump's datagrams are at most a few pages; a message is never cut
RECV_SIZE = 1 << 17


@dataclass(frozen=True)
class Link:
    """What ``reconcile`` judges a link by."""

    index: int
    name: str
    alias: str | None  #: None: no alias set
    master: int | None  #: the index of the bridge it is enslaved to
    netnsid: int | None  #: set when its peer lives in another namespace


def _text(data: bytes) -> str:
    return data.split(b"\0", 1)[0].decode(errors="replace")


class Rtnl:
    """One rtnetlink socket of the calling thread's namespace (a context manager)."""

    def __init__(self) -> None:
        self._sock = open_socket()
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
        self._sock.send(header(len(payload), kind, flags, self._seq) + payload)
        return self._seq

    def request(self, kind: int, flags: int, payload: bytes, what: str) -> None:
        """One acknowledged request; ``NetlinkError`` when the kernel refuses it."""
        seq = self._send(kind, NLM_F_ACK | flags, payload)
        while True:
            for got, mtype, body in messages(self._sock.recv(RECV_SIZE)):
                if got == seq and mtype == NLMSG_ERROR:
                    err = error_of(body)
                    if err:
                        raise NetlinkError(err, f"{what}: {os.strerror(err)}")
                    return

    def dump(self, kind: int, payload: bytes, what: str) -> list[tuple[int, bytes]]:
        """(type, payload) of every message a dump request answers."""
        seq = self._send(kind, NLM_F_DUMP, payload)
        out: list[tuple[int, bytes]] = []
        while True:
            for got, mtype, body in messages(self._sock.recv(RECV_SIZE)):
                if got != seq:
                    continue
                if mtype == NLMSG_DONE:
                    return out
                if mtype == NLMSG_ERROR:
                    err = error_of(body)
                    raise NetlinkError(err or errno.EIO, f"{what}: {os.strerror(err or errno.EIO)}")
                out.append((mtype, body))

    # -- links -------------------------------------------------------------------

    def links(self) -> list[Link]:
        out = []
        for mtype, body in self.dump(RTM_GETLINK, ifinfomsg(), "listing the links"):
            if mtype != RTM_NEWLINK:
                continue
            index = struct.unpack_from("=i", body, 4)[0]
            found = attrs(body[16:])
            master = found.get(IFLA_MASTER)
            netnsid = found.get(IFLA_LINK_NETNSID)
            out.append(Link(
                index=index, name=_text(found.get(IFLA_IFNAME, b"")),
                alias=_text(found[IFLA_IFALIAS]) if IFLA_IFALIAS in found else None,
                master=struct.unpack("=I", master[:4])[0] if master else None,
                netnsid=struct.unpack("=i", netnsid[:4])[0] if netnsid else None))
        return out

    def add_bridge(self, name: str) -> None:
        self.request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL,
                     ifinfomsg() + string(IFLA_IFNAME, name)
                     + nested(IFLA_LINKINFO, string(IFLA_INFO_KIND, "bridge")),
                     f"adding bridge {name}")

    def set_up(self, index: int, alias: str | None = None) -> None:
        """Link ``index`` up, with ``alias`` as its alias when given."""
        payload = ifinfomsg(index, IFF_UP, IFF_UP)
        if alias is not None:
            payload += string(IFLA_IFALIAS, alias)
        self.request(RTM_NEWLINK, 0, payload, f"setting link {index} up")

    def delete(self, index: int) -> None:
        self.request(RTM_DELLINK, 0, ifinfomsg(index), f"deleting link {index}")

    # -- addresses -----------------------------------------------------------------

    def addresses(self, index: int, family: int) -> set[str]:
        """The addresses of link ``index`` in ``family`` (AF_INET, AF_INET6)."""
        out = set()
        for mtype, body in self.dump(RTM_GETADDR, struct.pack("=BBBBI", family, 0, 0, 0, 0),
                                     "listing the addresses"):
            fam, _, _, _, ifindex = struct.unpack_from("=BBBBI", body)
            if mtype != RTM_NEWADDR or ifindex != index or fam != family:
                continue
            found = attrs(body[8:])
            raw = found.get(IFA_ADDRESS) or found.get(IFA_LOCAL)
            if raw:
                out.add(socket.inet_ntop(family, raw))
        return out

    def add_address(self, index: int, address: str, prefixlen: int,
                    family: int = socket.AF_INET, flags: int = 0) -> None:
        raw = socket.inet_pton(family, address)
        self.request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL,
                     struct.pack("=BBBBI", family, prefixlen, flags & 0xFF, 0, index)
                     + attr(IFA_LOCAL, raw) + attr(IFA_ADDRESS, raw)
                     + attr(IFA_FLAGS, struct.pack("=I", flags)),
                     f"adding address {address}/{prefixlen}")


def index_of(name: str) -> int | None:
    """The index of link ``name`` in the calling thread's namespace, or None."""
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return None
