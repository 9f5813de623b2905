"""The ``syslog`` log driver: each message to a syslog server, as dockerd 20.10
sends it (its ``syslog`` driver over the srslog library).

Options (``--log-opt``), with dockerd's names, meanings and refusals:

``syslog-address``
    ``udp://host[:port]``, ``tcp://host[:port]`` (port 514 when absent),
    ``tcp+tls://host[:port]``, ``unix:///path`` (a stream socket),
    ``unixgram:///path`` (a datagram socket).  Without it, the local syslog:
    the first of ``/dev/log``, ``/var/run/syslog``, ``/var/run/log`` that
    takes a datagram connection, else a stream one.  A unix path must exist
    at create.
``syslog-facility``
    a name (``daemon``, the default, ``user``, ``local0`` ... ``local7`` ...)
    or a number 0-23.
``syslog-format``
    unset: ``<PRI>Mmm dd hh:mm:ss TAG[PID]: MSG`` (no host name, as dockerd);
    ``rfc3164``: ``<PRI>Mmm dd hh:mm:ss HOST TAG[PID]: MSG``;
    ``rfc5424``: ``<PRI>1 TIMESTAMP HOST TAG PID TAG - MSG`` (the tag is both
    APP-NAME and MSGID, as dockerd: rsyslog's ``%syslogtag%`` reads it);
    ``rfc5424micro``: the same with microseconds in the timestamp.
``syslog-tls-ca-cert``, ``syslog-tls-cert``, ``syslog-tls-key``, ``syslog-tls-skip-verify``
    for ``tcp+tls``: the CA to trust (the system's when unset), a client
    certificate and key, and no verification of the server at all when the
    key ``syslog-tls-skip-verify`` is present, whatever its value (dockerd
    reads only its presence).  Files that cannot be loaded are refused at
    create (dockerd finds out at start).
``tag``
    a template (``{{.Name}}``, ``{{.ID}}`` ...; ``plugins/logging/common.py``),
    the short container ID by default.
``labels``, ``labels-regex``, ``env``, ``env-regex``
    accepted and unused, as dockerd (syslog messages carry no attributes).

What goes out, byte for byte as dockerd: PRI is facility*8 + 6 (info) for
stdout, + 3 (err) for stderr; HOST is the daemon's host name; PID is
skiffd's; the times are local (``Z`` or ``+hh:mm`` in RFC 5424).  The line
goes without its newline and every message ends in one newline; an empty
line is not sent.  Framing: one datagram per message on udp and unixgram;
on stream sockets the newline ends the message (non-transparent framing),
except ``tcp+tls`` with an RFC 5424 format, where the message is prefixed
with its length and a space (octet counting, RFC 5425).  One difference: the
timestamp is the time the container wrote the line (dockerd's is the time of
sending, which non-blocking mode delays).

Connections: made when the container starts (an unreachable server fails the
start, "failed to initialize logging driver: ...", as dockerd).  Stream sockets
are checked for a hang-up before each message, so a server that went away is
noticed before a message is lost into a dead connection.  When a send fails,
the driver reconnects once and resends (as dockerd); when that fails, the
message is lost (the delivery layer counts it) and no new connection is tried
for ``RETRY_INTERVAL`` seconds, so a dead server costs each message no more
than a failed ``write``; the first message after that reconnects.  Sends and
connects time out after ``TIMEOUT`` seconds (dockerd has no limit), so a
stalled server holds a blocking-mode container at most that long per message.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import select
import socket
import ssl
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from skiff.core.errors import SkiffError
from skiff.core.hookspecs import (
    LogContext,
    LogMessage,
    ReadConfig,
    hookimpl,
)
from skiff.plugins.logging.common import (
    check_attribute_options,
    check_tag,
    driver_options,
    render_tag,
)

NAME = "syslog"

_KNOWN_OPTS = frozenset({
    "env", "env-regex", "labels", "labels-regex", "tag",
    "syslog-address", "syslog-facility", "syslog-format",
    "syslog-tls-ca-cert", "syslog-tls-cert", "syslog-tls-key", "syslog-tls-skip-verify",
})
_PROTOCOLS = ("tcp", "tcp+tls", "udp", "unix", "unixgram")
FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6,
    "news": 7, "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11,
    **{f"local{i}": 16 + i for i in range(8)},
}
FORMATS = ("", "rfc3164", "rfc5424", "rfc5424micro")
#: where the local syslog listens, in the order dockerd (srslog) tries them
LOCAL_PATHS = ("/dev/log", "/var/run/syslog", "/var/run/log")
SEVERITY = {"stdout": 6, "stderr": 3}  # LOG_INFO, LOG_ERR
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun",
           "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
#: seconds a connect or a send may take before it counts as failed
TIMEOUT = 10.0
#: after a failed reconnect, seconds during which messages fail without dialing
RETRY_INTERVAL = 1.0


@dataclass(frozen=True)
class Address:
    proto: str  #: "" (the local syslog), or one of _PROTOCOLS
    host: str = ""  #: tcp/udp: the host; unix/unixgram: the path
    port: int = 0

    def __str__(self) -> str:
        if self.proto in ("unix", "unixgram"):
            return self.host
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _go_error(exc: OSError) -> str:
    """An OS error as Go words it: the lower-case C text, no errno number."""
    text = os.strerror(exc.errno) if exc.errno else str(exc)
    return text[:1].lower() + text[1:]


def parse_address(text: str) -> Address:
    """``syslog-address`` read as dockerd reads it; ``ValueError`` in its words."""
    if not text:
        return Address("")
    scheme, sep, _ = text.partition("://")
    if not sep or scheme not in _PROTOCOLS:
        raise ValueError(f"syslog-address should be in form proto://address, got {text}")
    url = urlsplit(text)
    if scheme in ("unix", "unixgram"):
        try:
            os.stat(url.path)
        except OSError as exc:
            raise ValueError(f"stat {url.path}: {_go_error(exc)}") from None
        return Address(scheme, url.path)
    try:
        host, port = url.hostname or "", url.port
    except ValueError:
        raise ValueError(f"address {url.netloc}: invalid port") from None
    if not host:
        raise ValueError(f"address {url.netloc}: missing host in address")
    return Address(scheme, host, 514 if port is None else port)


def parse_facility(text: str) -> int:
    """The facility's number (3, daemon, when unset); ``ValueError`` as dockerd's."""
    if not text:
        return FACILITIES["daemon"]
    if text in FACILITIES:
        return FACILITIES[text]
    if re.fullmatch(r"[+-]?\d+", text) and 0 <= int(text) <= 23:
        return int(text)
    raise ValueError("invalid syslog facility")


def parse_format(text: str) -> str:
    if text not in FORMATS:
        raise ValueError("Invalid syslog format")
    return text


def tls_context(options: Mapping[str, str]) -> ssl.SSLContext:
    """The client TLS settings of ``tcp+tls`` (dockerd's ``tlsconfig.Client``:
    TLS 1.2 at least; the system's CAs unless a CA file is given)."""
    ca = options.get("syslog-tls-ca-cert") or None
    cert, key = options.get("syslog-tls-cert"), options.get("syslog-tls-key")
    try:
        ctx = ssl.create_default_context(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"syslog-tls-ca-cert {ca}: {exc}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert or key:
        if not (cert and key):
            raise ValueError("syslog-tls-cert and syslog-tls-key must be given together")
        try:
            ctx.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"could not load X509 key pair ({cert}, {key}): {exc}") from None
    if "syslog-tls-skip-verify" in options:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def parse_options(options: Mapping[str, str]) -> tuple[Address, int, str]:
    """Validate ``log-opts`` for syslog: ``(address, facility, format)``.
    ``ValueError`` naming the option, in dockerd's words where it has them."""
    for key in options:
        if key not in _KNOWN_OPTS:
            raise ValueError(f"unknown log opt '{key}' for {NAME} log driver")
    address = parse_address(options.get("syslog-address", ""))
    facility = parse_facility(options.get("syslog-facility", ""))
    fmt = parse_format(options.get("syslog-format", ""))
    if options.get("tag"):
        check_tag(options["tag"])
    check_attribute_options(dict(options))
    if address.proto == "tcp+tls":
        tls_context(options)
    return address, facility, fmt


# -- the message -----------------------------------------------------------------


def _stamp(tm: time.struct_time) -> str:
    # Go's time.Stamp: "Jan _2 15:04:05", the day padded with a space
    return f"{_MONTHS[tm.tm_mon - 1]} {tm.tm_mday:2d} {tm.tm_hour:02d}:{tm.tm_min:02d}:" \
           f"{tm.tm_sec:02d}"


def _rfc3339(ts: float, tm: time.struct_time, micro: bool) -> str:
    # Go's RFC 3339 of a local time: "Z" for UTC, else the offset as +hh:mm
    text = time.strftime("%Y-%m-%dT%H:%M:%S", tm)
    if micro:
        text += f".{int(ts * 1_000_000) % 1_000_000:06d}"  # truncated, as Go's Format
    off = tm.tm_gmtoff or 0
    if off == 0:
        return text + "Z"
    sign = "+" if off > 0 else "-"
    hours, minutes = divmod(abs(off) // 60, 60)
    return f"{text}{sign}{hours:02d}:{minutes:02d}"


def format_message(fmt: str, priority: int, hostname: str, tag: str, pid: int,
                   ts: float, content: bytes) -> bytes:
    """One message as dockerd formats it for ``fmt`` (content without newline)."""
    tm = time.localtime(ts)
    if fmt == "":
        head = f"<{priority}>{_stamp(tm)} {tag}[{pid}]: "
    elif fmt == "rfc3164":
        head = f"<{priority}>{_stamp(tm)} {hostname} {tag}[{pid}]: "
    else:
        when = _rfc3339(ts, tm, micro=fmt == "rfc5424micro")
        head = f"<{priority}>1 {when} {hostname} {tag} {pid} {tag} - "
    return head.encode() + content + b"\n"


# -- the connection ----------------------------------------------------------------


class _Conn:
    """One open connection to the server, datagram or stream."""

    def __init__(self, sock: socket.socket, stream: bool) -> None:
        self.sock = sock
        self.stream = stream

    def hung_up(self) -> bool:
        """Whether the server closed (EOF) or reset a stream connection.

        A syslog server sends nothing, but TLS 1.3 servers do (session
        tickets): a readable socket is read, without waiting, to tell
        those from an end."""
        if not self.stream:
            return False
        p = select.poll()
        p.register(self.sock.fileno(), select.POLLIN | select.POLLHUP | select.POLLERR)
        if not p.poll(0):
            return False
        self.sock.setblocking(False)
        try:
            return self.sock.recv(4096) == b""
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return False  # only TLS records of its own: still there
        except OSError:
            return True
        finally:
            self.sock.settimeout(TIMEOUT)

    def send(self, data: bytes) -> None:
        if self.stream:
            self.sock.sendall(data)
        else:
            self.sock.send(data)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def _dial_unix(kind: int, path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, kind | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(TIMEOUT)
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    return sock


def _dial_inet(kind: int, host: str, port: int) -> socket.socket:
    last: OSError = OSError("no address")
    for family, _, proto, _, addr in socket.getaddrinfo(host, port, type=kind):
        sock = socket.socket(family, kind | socket.SOCK_CLOEXEC, proto)
        try:
            sock.settimeout(TIMEOUT)
            sock.connect(addr)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        return sock
    raise last


def dial(address: Address, tls: ssl.SSLContext | None) -> _Conn:
    """Connect to ``address``; ``OSError`` worded as Go's ``net.Dial``."""
    try:
        if address.proto == "":
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                for path in LOCAL_PATHS:
                    with contextlib.suppress(OSError):
                        return _Conn(_dial_unix(kind, path), kind == socket.SOCK_STREAM)
            raise OSError("Unix syslog delivery error")
        if address.proto in ("unix", "unixgram"):
            kind = socket.SOCK_STREAM if address.proto == "unix" else socket.SOCK_DGRAM
            return _Conn(_dial_unix(kind, address.host), address.proto == "unix")
        if address.proto == "udp":
            return _Conn(_dial_inet(socket.SOCK_DGRAM, address.host, address.port), False)
        sock = _dial_inet(socket.SOCK_STREAM, address.host, address.port)
        if tls is not None:
            try:
                sock = tls.wrap_socket(sock, server_hostname=address.host)
            except BaseException:
                sock.close()
                raise
        return _Conn(sock, True)
    except OSError as exc:
        if address.proto == "":
            raise
        net = "tcp" if address.proto == "tcp+tls" else address.proto
        if isinstance(exc, ssl.SSLError):
            reason = f"tls: {getattr(exc, 'verify_message', None) or exc.reason or exc}"
        elif exc.errno is None:
            reason = str(exc) or type(exc).__name__
        else:
            reason = f"connect: {_go_error(exc)}"
        raise OSError(exc.errno or errno.EIO, f"dial {net} {address}: {reason}") from None


class SyslogDriver:
    """Sends a container's messages to one syslog server; cannot read them back."""

    name = NAME
    readable = False

    def __init__(self, ctx: LogContext) -> None:
        try:
            self.address, facility, self.format = parse_options(ctx.options)
            self.tag = render_tag(ctx)
        except ValueError as exc:
            raise SkiffError(f"failed to initialize logging driver: {exc}") from None
        self.facility = facility
        self.tls = tls_context(ctx.options) if self.address.proto == "tcp+tls" else None
        # RFC 5425's octet counting on TLS with the RFC 5424 formats, as dockerd
        self.octet_counting = self.tls is not None and self.format.startswith("rfc5424")
        self.hostname = socket.gethostname()
        self.pid = os.getpid()
        self._retry_at = 0.0
        try:
            self._conn: _Conn | None = dial(self.address, self.tls)
        except OSError as exc:
            raise SkiffError(f"failed to initialize logging driver: {exc.strerror or exc}"
                             ) from None

    def _frame(self, msg: LogMessage) -> bytes | None:
        content = msg.line[:-1] if msg.line.endswith(b"\n") else msg.line
        if not content:
            return None  # dockerd sends no empty message
        priority = self.facility * 8 + SEVERITY[msg.stream]
        data = format_message(self.format, priority, self.hostname, self.tag, self.pid,
                              msg.time, content)
        if self.octet_counting:
            data = b"%d %b" % (len(data), data)
        return data

    def _reconnect(self) -> _Conn:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        now = time.monotonic()
        if now < self._retry_at:
            raise ConnectionError(f"syslog server {self.address} unreachable; "
                                  "not redialing yet")
        try:
            self._conn = dial(self.address, self.tls)
        except OSError:
            self._retry_at = now + RETRY_INTERVAL
            raise
        return self._conn

    def write(self, msg: LogMessage) -> None:
        data = self._frame(msg)
        if data is None:
            return
        conn = self._conn
        if conn is not None and not conn.hung_up():
            try:
                conn.send(data)
                return
            except OSError:
                pass  # reconnect once and resend, as dockerd
        self._reconnect().send(data)

    def read(self, config: ReadConfig) -> Iterator[LogMessage]:
        raise NotImplementedError("the syslog log driver cannot read back")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def syslog_factory(ctx: LogContext) -> SyslogDriver:
    return SyslogDriver(ctx)


#: the plugin contract this module was written for; the loader refuses another major
SKIFF_CONTRACT = "2.3"


@hookimpl
def skiff_log_drivers() -> dict[str, object]:
    return {NAME: syslog_factory}


@hookimpl
def skiff_container_validate(host_config: Mapping[str, Any]) -> None:
    """Options refused at create, as dockerd's ``ValidateLogOpt``."""
    options = driver_options(NAME, host_config)
    if options is not None:
        parse_options(options)
