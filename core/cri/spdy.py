"""SPDY/3.1 framing, the transport of Kubernetes' streaming (exec, attach,
port-forward) that kubelet, crictl and critest speak.

No maintained Python library speaks SPDY any more, so this is the small part
of it the streaming server needs, written from the protocol's specification
(draft-mbelshe-httpbis-spdy-00, "SPDY Protocol - Draft 3.1"): the frame
layouts, the zlib-compressed header blocks with the specification's
dictionary, and a parser that takes bytes as they come off the socket.  It does
no I/O; ``spdysession.py`` runs it on a trio stream.

A frame is 8 bytes of header and up to 2**24-1 bytes of payload:

- control: ``1 | version:15 | type:16 | flags:8 | length:24``
- data:    ``0 | stream-id:31 | flags:8 | length:24``
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

VERSION = 3

SYN_STREAM = 1
SYN_REPLY = 2
RST_STREAM = 3
SETTINGS = 4
PING = 6
GOAWAY = 7
HEADERS = 8
WINDOW_UPDATE = 9

FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02

#: RST_STREAM status codes (the specification's)
PROTOCOL_ERROR = 1
INVALID_STREAM = 2
REFUSED_STREAM = 3
CANCEL = 5
INTERNAL_ERROR = 6

#: a frame longer than this is refused: the length field allows 16 MiB, the
#: streaming clients send at most 32 KiB at once, and a parser must not be made
#: to hold 16 MiB for one frame of a peer it cannot trust
MAX_FRAME = 1 << 20
#: header pairs and their sizes a peer may send in one block
MAX_HEADERS = 256
MAX_HEADER_BLOCK = 64 << 10

_WORDS = (
    "options", "head", "post", "put", "delete", "trace", "accept", "accept-charset",
    "accept-encoding", "accept-language", "accept-ranges", "age", "allow", "authorization",
    "cache-control", "connection", "content-base", "content-encoding", "content-language",
    "content-length", "content-location", "content-md5", "content-range", "content-type",
    "date", "etag", "expect", "expires", "from", "host", "if-match", "if-modified-since",
    "if-none-match", "if-range", "if-unmodified-since", "last-modified", "location",
    "max-forwards", "pragma", "proxy-authenticate", "proxy-authorization", "range", "referer",
    "retry-after", "server", "te", "trailer", "transfer-encoding", "upgrade", "user-agent",
    "vary", "via", "warning", "www-authenticate", "method", "get", "status", "200 OK",
    "version", "HTTP/1.1", "url", "public", "set-cookie", "keep-alive", "origin",
)
_TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417"
    "502504505203 Non-Authoritative Information204 No Content301 Moved Permanently"
    "400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error"
    "501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct "
    "Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,"
    "image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,text/javascript,"
    "publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)
#: the specification's zlib dictionary for header blocks (its section 2.6.10.1):
#: each word with its 32-bit length, then the tail as it is
DICTIONARY = b"".join(struct.pack(">I", len(w)) + w.encode()
                     for w in _WORDS) + _TAIL.encode()


class ProtocolError(Exception):
    """The peer broke SPDY: the session must end (GOAWAY PROTOCOL_ERROR)."""


@dataclass
class Frame:
    """One parsed frame; ``kind`` is 0 for data, else the control type."""

    kind: int
    flags: int
    stream_id: int = 0
    data: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    #: RST_STREAM/GOAWAY status, PING id, WINDOW_UPDATE delta
    value: int = 0

    @property
    def fin(self) -> bool:
        return bool(self.flags & FLAG_FIN)


class HeaderCodec:
    """One side's header compression: SPDY keeps one zlib stream per direction
    for the whole session, so both objects live as long as the connection."""

    def __init__(self) -> None:
        self._out = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, 15,
                                     zdict=DICTIONARY)
        self._in = zlib.decompressobj(15, zdict=DICTIONARY)

    def encode(self, headers: dict[str, str]) -> bytes:
        raw = [struct.pack(">I", len(headers))]
        for name, value in headers.items():
            n, v = name.lower().encode(), value.encode()
            raw += [struct.pack(">I", len(n)), n, struct.pack(">I", len(v)), v]
        # a sync flush ends each block on a byte boundary the peer can inflate
        return self._out.compress(b"".join(raw)) + self._out.flush(zlib.Z_SYNC_FLUSH)

    def decode(self, block: bytes) -> dict[str, str]:
        try:
            raw = self._in.decompress(block, MAX_HEADER_BLOCK + 1)
        except zlib.error as exc:
            raise ProtocolError(f"bad header block: {exc}") from exc
        if len(raw) > MAX_HEADER_BLOCK or self._in.unconsumed_tail:
            raise ProtocolError("header block too large")
        return parse_header_block(raw)


def parse_header_block(raw: bytes) -> dict[str, str]:
    """An inflated header block: a count, then length-prefixed names and values
    (several values of one name joined by NUL, kept as the first one)."""
    def take(at: int) -> tuple[bytes, int]:
        if at + 4 > len(raw):
            raise ProtocolError("truncated header block")
        (n,) = struct.unpack_from(">I", raw, at)
        if at + 4 + n > len(raw):
            raise ProtocolError("truncated header block")
        return raw[at + 4:at + 4 + n], at + 4 + n

    if len(raw) < 4:
        raise ProtocolError("truncated header block")
    (count,) = struct.unpack_from(">I", raw, 0)
    if count > MAX_HEADERS:
        raise ProtocolError(f"{count} headers in one block")
    at, out = 4, {}
    for _ in range(count):
        name, at = take(at)
        value, at = take(at)
        if not name:
            raise ProtocolError("empty header name")
        out[name.decode("latin-1").lower()] = value.split(b"\0")[0].decode("latin-1")
    if at != len(raw):
        raise ProtocolError("trailing bytes after the header block")
    return out


def _control(kind: int, flags: int, payload: bytes) -> bytes:
    return struct.pack(">HHI", 0x8000 | VERSION, kind, (flags << 24) | len(payload)) + payload


def data_frame(stream_id: int, data: bytes, fin: bool = False) -> bytes:
    return struct.pack(">II", stream_id & 0x7FFFFFFF,
                       ((FLAG_FIN if fin else 0) << 24) | len(data)) + data


def syn_reply(codec: HeaderCodec, stream_id: int, headers: dict[str, str],
              fin: bool = False) -> bytes:
    return _control(SYN_REPLY, FLAG_FIN if fin else 0,
                    struct.pack(">I", stream_id) + codec.encode(headers))


def syn_stream(codec: HeaderCodec, stream_id: int, headers: dict[str, str],
               fin: bool = False) -> bytes:
    """What a client sends (the server never opens streams): for the tests."""
    return _control(SYN_STREAM, FLAG_FIN if fin else 0,
                    struct.pack(">IIBB", stream_id, 0, 0, 0) + codec.encode(headers))


def rst_stream(stream_id: int, status: int) -> bytes:
    return _control(RST_STREAM, 0, struct.pack(">II", stream_id, status))


def ping(ping_id: int) -> bytes:
    return _control(PING, 0, struct.pack(">I", ping_id))


def goaway(last_stream_id: int, status: int = 0) -> bytes:
    return _control(GOAWAY, 0, struct.pack(">II", last_stream_id, status))


def window_update(stream_id: int, delta: int) -> bytes:
    return _control(WINDOW_UPDATE, 0, struct.pack(">II", stream_id, delta))


class Parser:
    """Frames out of a byte stream fed in pieces of any size."""

    def __init__(self, codec: HeaderCodec) -> None:
        self.codec = codec
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames = []
        while len(self._buf) >= 8:
            word, flags_len = struct.unpack_from(">II", self._buf, 0)
            flags, length = flags_len >> 24, flags_len & 0xFFFFFF
            if length > MAX_FRAME:
                raise ProtocolError(f"a frame of {length} bytes")
            if len(self._buf) < 8 + length:
                break
            payload = bytes(self._buf[8:8 + length])
            del self._buf[:8 + length]
            if word & 0x80000000:
                frame = self._control(word, flags, payload)
                if frame is not None:
                    frames.append(frame)
            else:
                frames.append(Frame(0, flags, word & 0x7FFFFFFF, payload))
        return frames

    def _control(self, word: int, flags: int, payload: bytes) -> Frame | None:
        version, kind = (word >> 16) & 0x7FFF, word & 0xFFFF
        if version != VERSION:
            raise ProtocolError(f"SPDY version {version}, not {VERSION}")

        def need(n: int) -> None:
            if len(payload) < n:
                raise ProtocolError(f"control frame {kind} of {len(payload)} bytes")

        if kind == SYN_STREAM:
            need(10)
            (sid,) = struct.unpack_from(">I", payload, 0)
            return Frame(kind, flags, sid & 0x7FFFFFFF,
                         headers=self.codec.decode(payload[10:]))
        if kind in (SYN_REPLY, HEADERS):
            need(4)
            (sid,) = struct.unpack_from(">I", payload, 0)
            return Frame(kind, flags, sid & 0x7FFFFFFF, headers=self.codec.decode(payload[4:]))
        if kind in (RST_STREAM, GOAWAY, WINDOW_UPDATE):
            need(8)
            sid, value = struct.unpack_from(">II", payload, 0)
            return Frame(kind, flags, sid & 0x7FFFFFFF, value=value & 0x7FFFFFFF
                         if kind == WINDOW_UPDATE else value)
        if kind == PING:
            need(4)
            return Frame(kind, flags, value=struct.unpack_from(">I", payload, 0)[0])
        if kind == SETTINGS:
            need(4)
            (count,) = struct.unpack_from(">I", payload, 0)
            if len(payload) != 4 + 8 * count:
                raise ProtocolError("a SETTINGS frame of the wrong size")
            return Frame(kind, flags)
        return None  # unknown control frames are ignored, as the specification says
