"""The ``journald`` log driver: each message to the systemd journal, with the
fields dockerd 20.10 gives it, over the journal's native protocol.

The protocol (systemd's ``sd_journal_send``): one datagram per entry to
``/run/systemd/journal/socket``, a ``KEY=value`` line per field; a value
holding a newline goes in the binary-safe form (the key, a newline, the
value's length as a little-endian 64-bit number, the value, a newline).  An
entry too large for a datagram goes in a sealed memfd passed as
``SCM_RIGHTS``, as journald requires.

Fields, as dockerd's: ``PRIORITY`` (6 for stdout, 3 for stderr),
``MESSAGE`` (the line without its newline), ``CONTAINER_ID`` (12 hex),
``CONTAINER_ID_FULL``, ``CONTAINER_NAME`` (no leading slash),
``CONTAINER_TAG`` and ``SYSLOG_IDENTIFIER`` (the ``tag`` template, the
short ID by default), ``IMAGE_NAME``; on each piece of a line cut at 16 KiB
(and on unfinished bytes left at exit) ``CONTAINER_PARTIAL_ID``,
``CONTAINER_PARTIAL_ORDINAL``, ``CONTAINER_PARTIAL_LAST`` and, but on the
last piece, ``CONTAINER_PARTIAL_MESSAGE=true``; and the labels and
environment variables the ``labels``, ``labels-regex``, ``env`` and
``env-regex`` options select, their names upper-cased with every character
other than A-Z and 0-9 made ``_`` and leading underscores dropped (dockerd's
``sanitizeKeyMod``).

Options: ``tag``, ``labels``, ``labels-regex``, ``env``, ``env-regex``; any
other is refused at create, in dockerd's words.  On a host without a journal
(nothing listening on the socket) the driver is refused at create, with the
reason (dockerd refuses at start: "journald is not enabled on this host").
The driver cannot read the journal back (``readable = False``).

``SKIFF_JOURNAL_SOCKET`` in skiffd's environment replaces the socket's path:
for tests only, which bind a listener of their own there.
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import os
import socket
import struct
from collections.abc import Iterator, Mapping
from typing import Any

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
    extra_attributes,
    render_tag,
)

NAME = "journald"
SOCKET = "/run/systemd/journal/socket"
_KNOWN_OPTS = frozenset({"labels", "labels-regex", "env", "env-regex", "tag"})
PRIORITY = {"stdout": b"6", "stderr": b"3"}


def socket_path() -> str:
    return os.environ.get("SKIFF_JOURNAL_SOCKET") or SOCKET


def sanitize_key(name: str) -> str:
    """A label or variable name as a journal field name, as dockerd makes it."""
    out: list[str] = []
    for ch in name:
        if "a" <= ch <= "z":
            ch = ch.upper()
        elif not ("A" <= ch <= "Z" or "0" <= ch <= "9"):
            ch = "_"
        if out or ch != "_":
            out.append(ch)
    return "".join(out)


def field(name: bytes, value: bytes) -> bytes:
    """One field of an entry, in the binary-safe form when the value needs it."""
    if b"\n" in value:
        return name + b"\n" + struct.pack("<Q", len(value)) + value + b"\n"
    return name + b"=" + value + b"\n"


def _connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    return sock


def unavailable() -> str | None:
    """Why the journal cannot be used here (None when it can)."""
    path = socket_path()
    try:
        _connect(path).close()
    except OSError as exc:
        return (f"journald is not enabled on this host: no journal listening on {path} "
                f"({os.strerror(exc.errno) if exc.errno else exc})")
    return None


def parse_options(options: Mapping[str, str]) -> None:
    for key in options:
        if key not in _KNOWN_OPTS:
            raise ValueError(f"unknown log opt '{key}' for {NAME} log driver")
    if options.get("tag"):
        check_tag(options["tag"])
    check_attribute_options(dict(options))


class JournaldDriver:
    """Sends a container's messages to the journal; cannot read them back."""

    name = NAME
    readable = False

    def __init__(self, ctx: LogContext) -> None:
        try:
            parse_options(ctx.options)
            tag = render_tag(ctx)
            self.sock = _connect(socket_path())
        except (ValueError, OSError) as exc:
            reason = unavailable() if isinstance(exc, OSError) else str(exc)
            raise SkiffError(f"failed to initialize logging driver: {reason or exc}") from None
        fields = {
            "CONTAINER_ID": ctx.container_id[:12],
            "CONTAINER_ID_FULL": ctx.container_id,
            "CONTAINER_NAME": ctx.container_name.lstrip("/"),
            "CONTAINER_TAG": tag,
            "IMAGE_NAME": ctx.image_name,
            "SYSLOG_IDENTIFIER": tag,
        }
        fields.update(extra_attributes(ctx, sanitize_key))
        # the same for every message: encoded once
        self._fixed = b"".join(field(k.encode(), v.encode()) for k, v in fields.items())

    def entry(self, msg: LogMessage) -> bytes:
        line = msg.line[:-1] if msg.line.endswith(b"\n") else msg.line
        data = field(b"PRIORITY", PRIORITY[msg.stream]) + field(b"MESSAGE", line) + self._fixed
        meta = msg.partial
        if meta is not None:
            data += (field(b"CONTAINER_PARTIAL_ID", meta.id.encode())
                     + field(b"CONTAINER_PARTIAL_ORDINAL", b"%d" % meta.ordinal)
                     + field(b"CONTAINER_PARTIAL_LAST", b"true" if meta.last else b"false"))
            if not meta.last:
                data += b"CONTAINER_PARTIAL_MESSAGE=true\n"
        return data

    def write(self, msg: LogMessage) -> None:
        data = self.entry(msg)
        try:
            self.sock.send(data)
        except OSError as exc:
            if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                raise
            self._send_large(data)

    def _send_large(self, data: bytes) -> None:
        # journald takes an entry too large for a datagram as a sealed memfd
        fd = os.memfd_create("journal-entry", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
                        | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
            self.sock.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                    array.array("i", [fd]))])
        finally:
            os.close(fd)

    def read(self, config: ReadConfig) -> Iterator[LogMessage]:
        raise NotImplementedError("the journald log driver of skiff cannot read back")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def journald_factory(ctx: LogContext) -> JournaldDriver:
    return JournaldDriver(ctx)


#: the plugin contract this module was written for; the loader refuses another major
SKIFF_CONTRACT = "2.3"


@hookimpl
def skiff_log_drivers() -> dict[str, object]:
    return {NAME: journald_factory}


@hookimpl
def skiff_container_validate(host_config: Mapping[str, Any]) -> None:
    """Bad options, and a host without a journal, refused at create."""
    options = driver_options(NAME, host_config)
    if options is not None:
        parse_options(options)
        reason = unavailable()
        if reason:
            raise ValueError(reason)
