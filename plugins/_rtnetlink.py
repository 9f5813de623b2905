"""rtnetlink messages packed by hand: what the drivers that talk to the kernel's
routing socket directly share (the bridge's start, plugins/network/bridge/links.py;
the tc shaper, plugins/limits/tcnetlink.py).

Why by hand and not through pyroute2: importing it costs ~0.2 s of CPU and each
call of its synchronous API runs an asyncio loop; the few requests these
drivers make are a ``struct.pack`` of a few dozen bytes each.  Each driver keeps
its own requests and its own socket discipline (one request at a time, or
batches); the framing, the attributes and the errors are here.
"""

from __future__ import annotations

import socket
import struct

__all__ = [
    "IFF_UP", "IFLA_IFNAME", "IFLA_INFO_KIND", "IFLA_LINKINFO", "NLA_F_NESTED", "NLMSG_DONE",
    "NLMSG_ERROR", "NLM_F_ACK", "NLM_F_CREATE", "NLM_F_DUMP", "NLM_F_EXCL", "NLM_F_REQUEST",
    "REPLY_TIMEOUT", "RTM_DELLINK", "RTM_NEWLINK", "NetlinkError", "attr", "attrs",
    "error_of", "header", "ifinfomsg", "messages", "nested", "open_socket", "string",
]

NETLINK_ROUTE = 0
RTM_NEWLINK, RTM_DELLINK = 16, 17
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLM_F_EXCL, NLM_F_CREATE = 0x200, 0x400
NLA_F_NESTED = 0x8000
IFF_UP = 0x1
IFLA_IFNAME, IFLA_LINKINFO, IFLA_INFO_KIND = 3, 18, 1
#: seconds to wait for the kernel's answer; a longer wait is a bug, not a load:
#: raise (socket.timeout) rather than hold a worker thread for good
REPLY_TIMEOUT = 10.0


class NetlinkError(OSError):
    """The kernel refused a request (``errno`` is its error)."""


def open_socket() -> socket.socket:
    """A routing socket of the calling thread's network namespace."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
    sock.bind((0, 0))
    sock.settimeout(REPLY_TIMEOUT)
    return sock


def header(length: int, kind: int, flags: int, seq: int) -> bytes:
    """A message's header; ``length`` is the payload's."""
    return struct.pack("=IHHII", 16 + length, kind, NLM_F_REQUEST | flags, seq, 0)


def attr(kind: int, data: bytes) -> bytes:
    length = 4 + len(data)
    return struct.pack("=HH", length, kind) + data + b"\0" * (-length % 4)


def nested(kind: int, *parts: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, b"".join(parts))


def string(kind: int, text: str) -> bytes:
    return attr(kind, text.encode() + b"\0")


def ifinfomsg(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    return struct.pack("=BxHiII", socket.AF_UNSPEC, 0, index, flags, change)


def attrs(data: bytes) -> dict[int, bytes]:
    """Each attribute's payload by its type (the nested flag cleared)."""
    out: dict[int, bytes] = {}
    offset = 0
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        out[kind & ~NLA_F_NESTED] = data[offset + 4:offset + length]
        offset += (length + 3) & ~3
    return out


def messages(data: bytes) -> list[tuple[int, int, bytes]]:
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


def error_of(body: bytes) -> int:
    """The errno an ``NLMSG_ERROR`` carries (0: an ack)."""
    return -struct.unpack_from("=i", body)[0]
