"""A userland TCP proxy for ports published on the host's IPv6 loopback.

For IPv4 the bridge needs no proxy: ``route_localnet`` lets a DNAT send
127.0.0.1:PORT to a container.  IPv6 has no such switch; the kernel never
lets ``::1`` leave ``lo`` (measured: an OUTPUT DNAT of [::1]:PORT to a
container never connects), so a port published on ``[::1]`` (or on every
IPv6 address, ``[::]``, which includes it) is served by a listening socket
of the daemon that relays each connection to the container, as dockerd's
``docker-proxy`` does.  The firewall leaves ``::1`` out of its OUTPUT DNAT so
that such connections reach the socket.

One thread accepts; each connection gets a thread that relays both ways, at
most ``MAX_CONNECTIONS`` at once per published port: a client past that is
closed at once (logged), so no local client can make the daemon spawn
threads without bound.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading

import structlog

log = structlog.get_logger("skiff.network.proxy")

CONNECT_TIMEOUT = 5.0
CHUNK = 65536
#: connections relayed at once per published port (two sockets and a thread each)
MAX_CONNECTIONS = 256


class TcpProxy:
    """Listens on ``[host_ip]:host_port`` and relays to ``[target_ip]:target_port``."""

    def __init__(self, host_ip: str, host_port: int, target_ip: str, target_port: int) -> None:
        self.target = (target_ip, target_port)
        self._listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        try:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # IPv6 only: the IPv4 side of the port is the DNAT's business
            self._listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            self._listener.bind((host_ip or "::", host_port))
            self._listener.listen(128)
        except BaseException:
            self._listener.close()
            raise
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="skiff-proxy6", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, peer = self._listener.accept()
            except OSError:
                return  # closed
            if not self._slots.acquire(blocking=False):
                log.warning("proxy.too_many_connections", target=self.target,
                            limit=MAX_CONNECTIONS, client=peer[0])
                client.close()
                continue
            threading.Thread(target=self._relay, args=(client,), name="skiff-proxy6-conn",
                             daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        try:
            self._relay_one(client)
        finally:
            self._slots.release()

    def _relay_one(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=CONNECT_TIMEOUT)
        except OSError as exc:
            log.debug("proxy.connect_failed", target=self.target, error=str(exc))
            client.close()
            return
        upstream.settimeout(None)
        with self._lock:
            if self._closed:
                client.close()
                upstream.close()
                return
            self._conns.update((client, upstream))
        try:
            _pump(client, upstream)
        finally:
            with self._lock:
                self._conns.difference_update((client, upstream))
            client.close()
            upstream.close()

    def close(self) -> None:
        """Stop listening and cut the connections in flight.  Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            conns = list(self._conns)
        # shutdown wakes the thread blocked in accept(); close alone would not
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for sock in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(2)


def _pump(a: socket.socket, b: socket.socket) -> None:
    """Copy both ways until both sides have finished sending (half-closes pass on)."""
    peer = {a.fileno(): (a, b), b.fileno(): (b, a)}
    poller = select.poll()  # not select(): the daemon's descriptors may pass 1024
    for fd in peer:
        poller.register(fd, select.POLLIN)
    left = len(peer)
    while left:
        for fd, _ in poller.poll():
            sock, other = peer[fd]
            try:
                data = sock.recv(CHUNK)
            except OSError:
                return
            if not data:
                poller.unregister(fd)
                left -= 1
                with contextlib.suppress(OSError):
                    other.shutdown(socket.SHUT_WR)
                continue
            try:
                other.sendall(data)
            except OSError:
                return
