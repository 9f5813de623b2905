"""The embedded DNS server of user-defined networks, as Docker's 127.0.0.11.

Docker listens on a random port inside each container's namespace and DNATs
127.0.0.11:53 to it.  skiff needs no rule: all of 127.0.0.0/8 is local on a
namespace's ``lo``, so a UDP socket created *inside* the container's
namespace (a short-lived thread does the ``setns``) binds 127.0.0.11:53
directly.  One trio event loop, in a thread of its own because driver calls
are synchronous, serves the sockets of every container.

Names of containers, their aliases and hostnames on the container's networks
are answered from the driver's records (A records; AAAA gets an empty
answer); everything else is relayed unchanged to the upstream resolvers,
from the daemon's namespace, so an upstream on the host's 127.0.0.1 works.
Upstreams come from daemon.json ``dns`` (``IP`` or ``IP:PORT``; skiff
accepts a port), else from the host's /etc/resolv.conf.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct
import threading
from collections.abc import Callable

import structlog
import trio

log = structlog.get_logger("skiff.network.dns")

DNS_IP = "127.0.0.11"
QTYPE_A = 1
QTYPE_AAAA = 28
UPSTREAM_TIMEOUT = 2.0
TTL = 600

Lookup = Callable[[str, str], "list[str] | None"]


def parse_upstreams(configured: list[str], resolv_conf: str = "/etc/resolv.conf"
                    ) -> list[tuple[str, int]]:
    """``dns`` entries (``IP`` or ``IP:PORT``), else the host's nameservers."""
    entries = list(configured)
    if not entries:
        try:
            with open(resolv_conf) as f:
                entries = [line.split()[1] for line in f
                           if line.startswith("nameserver") and len(line.split()) > 1]
        except OSError:
            entries = []
    out = []
    for entry in entries:
        host, _, port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            continue  # IPv6 upstreams are not supported yet
        out.append((host, int(port) if port else 53))
    return out


def parse_question(packet: bytes) -> tuple[str, int, int] | None:
    """(name, qtype, end offset of the question) of a standard query, or None."""
    if len(packet) < 12:
        return None
    flags, qdcount = struct.unpack("!2xH H", packet[:6])
    if flags & 0x8000 or qdcount != 1:
        return None
    labels = []
    i = 12
    while i < len(packet):
        n = packet[i]
        if n == 0:
            i += 1
            break
        if n & 0xC0:
            return None
        labels.append(packet[i + 1:i + 1 + n].decode("ascii", "replace"))
        i += 1 + n
    if i + 4 > len(packet):
        return None
    qtype, _ = struct.unpack("!HH", packet[i:i + 4])
    return ".".join(labels).lower(), qtype, i + 4


def answer(packet: bytes, end: int, addresses: list[str], qtype: int) -> bytes:
    """A response to ``packet`` with A records for ``addresses``."""
    qid, flags = struct.unpack("!HH", packet[:4])
    rd = flags & 0x0100
    records = [a for a in addresses if qtype == QTYPE_A]
    header = struct.pack("!HHHHHH", qid, 0x8000 | 0x0400 | rd | 0x0080, 1, len(records), 0, 0)
    body = packet[12:end]
    for addr in records:
        body += struct.pack("!HHHIH", 0xC00C, QTYPE_A, 1, TTL, 4) + socket.inet_aton(addr)
    return header + body


def servfail(packet: bytes) -> bytes:
    qid, flags = struct.unpack("!HH", packet[:4])
    return struct.pack("!HH", qid, 0x8000 | (flags & 0x0100) | 0x0080 | 2) + packet[4:6] + \
        b"\0" * 6 + packet[12:]


class DnsServer:
    """Serves 127.0.0.11:53 in container namespaces from one trio thread."""

    def __init__(self, lookup: Lookup, upstreams: list[tuple[str, int]]) -> None:
        self.lookup = lookup
        self.upstreams = upstreams
        self._token: trio.lowlevel.TrioToken | None = None
        self._scopes: dict[str, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._lock = threading.Lock()

    def _ensure_started(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=trio.run, args=(self._main,),
                                            name="skiff-dns", daemon=True)
            self._thread.start()
        self._started.wait()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as n:
            self._nursery = n
            self._started.set()
            await trio.sleep_forever()

    def add(self, key: str, sock: socket.socket) -> None:
        """Serve ``sock`` (UDP, bound to 127.0.0.11:53 in a container) for ``key``."""
        self._ensure_started()
        trio.from_thread.run_sync(self._add, key, sock, trio_token=self._token)

    def _add(self, key: str, sock: socket.socket) -> None:
        assert self._nursery is not None
        scope = trio.CancelScope()
        old = self._scopes.pop(key, None)
        if old is not None:
            old.cancel()
        self._scopes[key] = scope
        self._nursery.start_soon(self._serve, key, sock, scope)

    def remove(self, key: str) -> None:
        """Stop serving ``key``'s socket and close it.  Idempotent."""
        if self._token is None:
            return
        with contextlib.suppress(trio.RunFinishedError):
            trio.from_thread.run_sync(self._remove, key, trio_token=self._token)

    def _remove(self, key: str) -> None:
        scope = self._scopes.pop(key, None)
        if scope is not None:
            scope.cancel()

    def stop(self) -> None:
        if self._token is None:
            return
        with contextlib.suppress(trio.RunFinishedError):
            trio.from_thread.run_sync(self._stop_all, trio_token=self._token)
        if self._thread is not None:
            self._thread.join(5)
        self._thread, self._token = None, None
        self._started.clear()

    def _stop_all(self) -> None:
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()

    async def _serve(self, key: str, raw: socket.socket, scope: trio.CancelScope) -> None:
        sock = trio.socket.from_stdlib_socket(raw)
        with sock, scope:
            async with trio.open_nursery() as n:
                while True:
                    try:
                        packet, peer = await sock.recvfrom(4096)
                    except OSError:
                        continue
                    n.start_soon(self._handle, key, sock, packet, peer)

    async def _handle(self, key: str, sock: trio.socket.SocketType, packet: bytes,
                      peer: tuple[str, int]) -> None:
        q = parse_question(packet)
        reply: bytes | None = None
        if q is not None:
            name, qtype, end = q
            found = self.lookup(key, name)
            if found is not None:
                reply = answer(packet, end, found, qtype)
        if reply is None:
            reply = await self._forward(packet)
        if reply is not None:
            with contextlib.suppress(OSError):
                await sock.sendto(reply, peer)

    async def _forward(self, packet: bytes) -> bytes | None:
        for host, port in self.upstreams:
            with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as up:
                try:
                    await up.connect((host, port))
                    await up.send(packet)
                    with trio.move_on_after(UPSTREAM_TIMEOUT):
                        data = await up.recv(65535)
                        if data[:2] == packet[:2]:
                            return data
                except OSError as exc:
                    log.debug("dns.upstream_failed", upstream=f"{host}:{port}", error=str(exc))
        return servfail(packet) if len(packet) >= 12 else None
