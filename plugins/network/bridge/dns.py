"""The embedded DNS server of user-defined networks, as Docker's 127.0.0.11.

Docker listens on a random port inside each container's namespace and DNATs
127.0.0.11:53 to it.  skiff needs no rule: all of 127.0.0.0/8 is local on a
namespace's ``lo``, so a UDP socket created *inside* the container's
namespace (a short-lived thread does the ``setns``) binds 127.0.0.11:53
directly.  One trio event loop, in a thread of its own because driver calls
are synchronous, serves the sockets of every container.

Names of containers, their aliases and hostnames on the container's networks
are answered from the driver's records (A records, and AAAA for the
containers with an IPv6 address; a name without one gets an empty AAAA
answer, not a relayed query); everything else is relayed unchanged to the upstream resolvers,
from the daemon's namespace, so an upstream on the host's 127.0.0.1 or ``::1`` works.
Upstreams come from daemon.json ``dns`` (``IP``, or ``IP:PORT`` and
``[IPv6]:PORT``: skiff accepts a port), else from the host's /etc/resolv.conf;
IPv4 and IPv6 alike, so a host whose resolv.conf names only IPv6 servers
still resolves through the embedded server.

Bounded, because every container can send as many packets as it likes: a
query answered from the records is answered inline by the socket's receive
loop (no task, no socket); only a relayed query gets a task and an upstream
socket, and at most ``MAX_RELAYS`` of them are in flight for all containers
together and ``MAX_RELAYS_PER_CLIENT`` for one container.  A query beyond
that gets REFUSED at once (dockerd's resolver answers REFUSED when its
1024 relay slots stay busy); the client's resolver tries again.  Replies are
sent without waiting: a full socket buffer drops the reply, as UDP may.
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
#: Relayed queries in flight (each holds a task and an upstream socket).
MAX_RELAYS = 256
MAX_RELAYS_PER_CLIENT = 64
#: Seconds between two "relay slots full" log lines of one container.
FULL_LOG_INTERVAL = 10.0
RCODE_SERVFAIL = 2
RCODE_REFUSED = 5

Lookup = Callable[[str, str], "list[str] | None"]


def parse_upstreams(configured: list[str], resolv_conf: str = "/etc/resolv.conf"
                    ) -> list[tuple[str, int]]:
    """``dns`` entries, else the host's nameservers: ``IP``, ``IP:PORT`` for
    IPv4, and for IPv6 ``IP`` or ``[IP]:PORT`` (a zone, ``fe80::1%eth0``, is
    kept: the relay's socket needs it).  What is not an address is skipped."""
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
        upstream = _upstream(entry.strip())
        if upstream is not None:
            out.append(upstream)
    return out


def _upstream(entry: str) -> tuple[str, int] | None:
    host, port = entry, ""
    if entry.startswith("["):  # [v6]:port
        host, _, rest = entry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif entry.count(":") == 1:  # v4:port
        host, _, port = entry.partition(":")
    try:
        ipaddress.ip_address(host)
        number = int(port) if port else 53
    except ValueError:
        return None
    if not 0 < number < 65536:
        return None
    return host, number


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
    """A response to ``packet`` with the A (IPv4) or AAAA (IPv6) records of
    ``addresses`` that fit ``qtype``."""
    qid, flags = struct.unpack("!HH", packet[:4])
    rd = flags & 0x0100
    family = {QTYPE_A: socket.AF_INET, QTYPE_AAAA: socket.AF_INET6}.get(qtype)
    records = [socket.inet_pton(family, a) for a in addresses
               if family is not None and (":" in a) == (family == socket.AF_INET6)]
    header = struct.pack("!HHHHHH", qid, 0x8000 | 0x0400 | rd | 0x0080, 1, len(records), 0, 0)
    body = packet[12:end]
    for packed in records:
        body += struct.pack("!HHHIH", 0xC00C, qtype, 1, TTL, len(packed)) + packed
    return header + body


def failure(packet: bytes, rcode: int = RCODE_SERVFAIL) -> bytes:
    """An answerless response to ``packet`` (at least a header) with ``rcode``."""
    qid, flags = struct.unpack("!HH", packet[:4])
    return struct.pack("!HH", qid, 0x8000 | (flags & 0x0100) | 0x0080 | rcode) + \
        packet[4:6] + b"\0" * 6 + packet[12:]


def servfail(packet: bytes) -> bytes:
    return failure(packet, RCODE_SERVFAIL)


#: container id -> every server answering in its namespace (one per driver with a
#: name server: the bridge's at 127.0.0.11, the overlay's at 127.0.0.12).  Docker
#: has one resolver per container that knows all its networks; a container's
#: resolv.conf names only the first server it got, so each server also answers
#: with what its siblings in that namespace know.  Replaced whole, never mutated:
#: the servers' threads read it without a lock.
_SIBLINGS: dict[str, tuple[DnsServer, ...]] = {}
_SIBLINGS_LOCK = threading.Lock()


def _join_siblings(key: str, server: DnsServer) -> None:
    with _SIBLINGS_LOCK:
        now = _SIBLINGS.get(key, ())
        if server not in now:
            _SIBLINGS[key] = (*now, server)


def _leave_siblings(key: str, server: DnsServer) -> None:
    with _SIBLINGS_LOCK:
        rest = tuple(s for s in _SIBLINGS.get(key, ()) if s is not server)
        if rest:
            _SIBLINGS[key] = rest
        else:
            _SIBLINGS.pop(key, None)


class DnsServer:
    """Serves 127.0.0.11:53 in container namespaces from one trio thread."""

    def __init__(self, lookup: Lookup, upstreams: list[tuple[str, int]],
                 max_relays: int | None = MAX_RELAYS,
                 max_relays_per_client: int | None = MAX_RELAYS_PER_CLIENT) -> None:
        """``max_relays*`` None means unbounded: only for tests that show the bound matters."""
        self.lookup = lookup
        self.upstreams = upstreams
        self.max_relays = max_relays
        self.max_relays_per_client = max_relays_per_client
        self._relays = 0  # in flight, all clients; only touched in the trio thread
        self._relays_of: dict[str, int] = {}
        self._upstreams_of: dict[str, list[tuple[str, int]]] = {}
        self._full_logged: dict[str, float] = {}
        self._token: trio.lowlevel.TrioToken | None = None
        self._scopes: dict[str, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._lock = threading.Lock()

    def _ensure_started(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=trio.run, args=(self._main,),
                                                name="skiff-dns", daemon=True)
                self._thread.start()
        # every caller waits, not only the starter: containers of a compose
        # project join at once, and the loop's token and nursery come a little later
        self._started.wait()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as n:
            self._nursery = n
            self._started.set()
            await trio.sleep_forever()

    def add(self, key: str, sock: socket.socket,
            upstreams: list[tuple[str, int]] | None = None) -> None:
        """Serve ``sock`` (UDP, bound to 127.0.0.11:53 in a container) for ``key``;
        ``upstreams``: that container's own (``--dns``) instead of the server's."""
        self._ensure_started()
        trio.from_thread.run_sync(self._add, key, sock, upstreams, trio_token=self._token)
        _join_siblings(key, self)

    def _add(self, key: str, sock: socket.socket,
             upstreams: list[tuple[str, int]] | None = None) -> None:
        assert self._nursery is not None
        if upstreams is None:
            self._upstreams_of.pop(key, None)
        else:
            self._upstreams_of[key] = upstreams
        scope = trio.CancelScope()
        old = self._scopes.pop(key, None)
        if old is not None:
            old.cancel()
        self._scopes[key] = scope
        self._nursery.start_soon(self._serve, key, sock, scope)

    def remove(self, key: str) -> None:
        """Stop serving ``key``'s socket and close it.  Idempotent."""
        _leave_siblings(key, self)
        if self._token is None:
            return
        with contextlib.suppress(trio.RunFinishedError):
            trio.from_thread.run_sync(self._remove, key, trio_token=self._token)

    def _remove(self, key: str) -> None:
        scope = self._scopes.pop(key, None)
        self._upstreams_of.pop(key, None)
        if scope is not None:
            scope.cancel()

    def stats(self) -> dict[str, int]:
        """Relays in flight and live tasks of the server's event loop (for logs and tests)."""
        if self._token is None:
            return {"relays": 0, "tasks": 0}
        return trio.from_thread.run_sync(self._stats, trio_token=self._token)

    def _stats(self) -> dict[str, int]:
        def count(task: trio.lowlevel.Task | None) -> int:
            if task is None:  # no root task outside trio.run
                return 0
            return 1 + sum(count(child) for nursery in task.child_nurseries
                           for child in nursery.child_tasks)

        return {"relays": self._relays, "tasks": count(trio.lowlevel.current_root_task())}

    def stop(self) -> None:
        for key in [k for k, servers in list(_SIBLINGS.items()) if self in servers]:
            _leave_siblings(key, self)
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
                    try:
                        self._dispatch(key, raw, packet, peer, n)
                    except Exception:  # one odd packet must not end the server
                        log.exception("dns.packet_failed", container=key[:12])

    def _dispatch(self, key: str, raw: socket.socket, packet: bytes, peer: tuple[str, int],
                  nursery: trio.Nursery) -> None:
        """Answer ``packet`` now, or start a relay for it when a slot is free."""
        if len(packet) < 12:
            return  # not even a header: nothing to answer
        q = parse_question(packet)
        if q is not None:
            name, qtype, end = q
            found = self.resolve(key, name)
            if found is not None:
                _send(raw, answer(packet, end, found, qtype), peer)
                return
        if not self._upstreams_of.get(key, self.upstreams):
            _send(raw, failure(packet, RCODE_SERVFAIL), peer)
            return
        mine = self._relays_of.get(key, 0)
        if (self.max_relays is not None and self._relays >= self.max_relays) or (
                self.max_relays_per_client is not None
                and mine >= self.max_relays_per_client):
            self._log_full(key)
            _send(raw, failure(packet, RCODE_REFUSED), peer)
            return
        self._relays += 1
        self._relays_of[key] = mine + 1
        nursery.start_soon(self._relay, key, raw, packet, peer)

    def resolve(self, key: str, name: str) -> list[str] | None:
        """``name`` as container ``key`` sees it: this server's networks first, then
        those of the other servers in its namespace."""
        found = self.lookup(key, name)
        if found is not None:
            return found
        for sibling in _SIBLINGS.get(key, ()):
            if sibling is not self:
                found = sibling.lookup(key, name)
                if found is not None:
                    return found
        return None

    def _log_full(self, key: str) -> None:
        now = trio.current_time()
        if now - self._full_logged.get(key, -FULL_LOG_INTERVAL) >= FULL_LOG_INTERVAL:
            self._full_logged[key] = now
            log.warning("dns.relays_full", container=key[:12], in_flight=self._relays,
                        of_container=self._relays_of.get(key, 0),
                        hint="queries beyond the bound are REFUSED")

    async def _relay(self, key: str, raw: socket.socket, packet: bytes,
                     peer: tuple[str, int]) -> None:
        try:
            try:
                reply = await self._forward(packet, self._upstreams_of.get(key, self.upstreams))
            except OSError as exc:
                # e.g. no descriptor left for the upstream socket: no traceback, since
                # rendering one may itself need descriptors (lazy imports of the
                # renderer) and fail inside this handler
                log.warning("dns.relay_failed", container=key[:12], error=str(exc))
                reply = servfail(packet)
            except Exception:
                log.exception("dns.relay_failed", container=key[:12])
                reply = servfail(packet)
            _send(raw, reply, peer)
        finally:
            self._relays -= 1
            left = self._relays_of.get(key, 1) - 1
            if left > 0:
                self._relays_of[key] = left
            else:
                self._relays_of.pop(key, None)
                self._full_logged.pop(key, None)

    async def _forward(self, packet: bytes, upstreams: list[tuple[str, int]]) -> bytes:
        for host, port in upstreams:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            with trio.socket.socket(family, socket.SOCK_DGRAM) as up:
                try:
                    await up.connect((host, port))
                    await up.send(packet)
                    with trio.move_on_after(UPSTREAM_TIMEOUT):
                        while True:  # a stray datagram with another id is not the answer
                            data = await up.recv(65535)
                            if data[:2] == packet[:2]:
                                return data
                except OSError as exc:
                    log.debug("dns.upstream_failed", upstream=f"{host}:{port}", error=str(exc))
        return servfail(packet)


def _send(raw: socket.socket, reply: bytes, peer: tuple[str, int]) -> None:
    """Send without waiting (the socket is non-blocking): a full buffer drops the reply."""
    with contextlib.suppress(OSError):
        raw.sendto(reply, peer)
