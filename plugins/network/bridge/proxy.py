"""Userland TCP and UDP proxies for ports published on the host's IPv6 loopback.

For IPv4 the bridge needs no proxy: ``route_localnet`` lets a DNAT send
127.0.0.1:PORT to a container.  IPv6 has no such switch; the kernel never
lets ``::1`` leave ``lo`` (measured: an OUTPUT DNAT of [::1]:PORT to a
container never connects), so a port published on ``[::1]`` (or on every
IPv6 address, ``[::]``, which includes it) is served by a listening socket
of the daemon that relays each connection to the container, as dockerd's
``docker-proxy`` does.  The firewall leaves ``::1`` out of its OUTPUT DNAT so
that such connections reach the socket.

TCP: one thread accepts; each connection gets a thread that relays both
ways, at most ``MAX_CONNECTIONS`` at once per published port: a client past
that is closed at once (logged), so no local client can make the daemon
spawn threads without bound.

UDP (``UdpProxy``), as docker-proxy relays it: one thread per published
port; each client address gets a socket of its own connected to the
container (a *flow*), so the container's replies come back to that client
from the published port.  At most ``MAX_UDP_FLOWS`` flows at once per port
(a datagram of a new client past that is dropped, logged once a while), and
a flow idle for ``UDP_FLOW_TIMEOUT`` seconds is closed (docker-proxy's
conntrack timeout is 90 s).
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time

import structlog

log = structlog.get_logger("skiff.network.proxy")

CONNECT_TIMEOUT = 5.0
CHUNK = 65536
#: connections relayed at once per published port (two sockets and a thread each)
MAX_CONNECTIONS = 256
#: UDP clients relayed at once per published port (a socket each)
MAX_UDP_FLOWS = 256
#: seconds a UDP flow lives without a datagram either way
UDP_FLOW_TIMEOUT = 90.0
#: the largest UDP payload over IPv6 without jumbograms
UDP_MAX = 65535
#: seconds between two "flows full" log lines of one port
FULL_LOG_INTERVAL = 10.0


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


class UdpProxy:
    """Listens on ``[host_ip]:host_port``/udp and relays each client's datagrams
    to ``[target_ip]:target_port`` and the replies back."""

    def __init__(self, host_ip: str, host_port: int, target_ip: str, target_port: int,
                 max_flows: int = MAX_UDP_FLOWS, timeout: float = UDP_FLOW_TIMEOUT) -> None:
        self.target = (target_ip, target_port)
        self.max_flows = max_flows
        self.timeout = timeout
        self._listener = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        try:
            self._listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            self._listener.bind((host_ip or "::", host_port))
            self._listener.setblocking(False)
        except BaseException:
            self._listener.close()
            raise
        # close() writes here to wake the thread out of poll()
        self._wake_r, self._wake_w = socket.socketpair()
        #: client address -> (its upstream socket, monotonic time of its last datagram)
        self._flows: dict[tuple[object, ...], tuple[socket.socket, float]] = {}
        self._by_fd: dict[int, tuple[object, ...]] = {}
        self._full_logged = -FULL_LOG_INTERVAL
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="skiff-proxy6-udp", daemon=True)
        self._thread.start()

    @property
    def flows(self) -> int:
        return len(self._flows)

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._listener.fileno(), select.POLLIN)
        poller.register(self._wake_r.fileno(), select.POLLIN)
        try:
            while True:
                events = poller.poll(min(self.timeout, 5.0) * 1000)
                for fd, _ in events:
                    if fd == self._wake_r.fileno():
                        return
                    if fd == self._listener.fileno():
                        self._from_clients(poller)
                    else:
                        self._from_target(fd)
                self._expire(poller)
        finally:
            for sock, _ in self._flows.values():
                sock.close()
            self._flows.clear()
            self._by_fd.clear()

    def _from_clients(self, poller: select.poll) -> None:
        while True:
            try:
                data, peer = self._listener.recvfrom(UDP_MAX)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # an ICMP error of an earlier send: nothing to do
            flow = self._flows.get(peer)
            if flow is None:
                if len(self._flows) >= self.max_flows:
                    now = time.monotonic()
                    if now - self._full_logged >= FULL_LOG_INTERVAL:
                        self._full_logged = now
                        log.warning("proxy.too_many_udp_flows", target=self.target,
                                    limit=self.max_flows, client=peer[0])
                    continue
                upstream = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
                try:
                    upstream.connect(self.target)
                    upstream.setblocking(False)
                except OSError as exc:
                    upstream.close()
                    log.debug("proxy.connect_failed", target=self.target, error=str(exc))
                    continue
                poller.register(upstream.fileno(), select.POLLIN)
                self._by_fd[upstream.fileno()] = peer
                flow = (upstream, 0.0)
            self._flows[peer] = (flow[0], time.monotonic())
            with contextlib.suppress(OSError):  # a full buffer drops it, as UDP may
                flow[0].send(data)

    def _from_target(self, fd: int) -> None:
        peer = self._by_fd.get(fd)
        if peer is None:
            return
        upstream, _ = self._flows[peer]
        while True:
            try:
                data = upstream.recv(UDP_MAX)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. ECONNREFUSED: nothing listens in the container (yet)
            self._flows[peer] = (upstream, time.monotonic())
            with contextlib.suppress(OSError):
                self._listener.sendto(data, peer)

    def _expire(self, poller: select.poll) -> None:
        now = time.monotonic()
        for peer, (sock, last) in list(self._flows.items()):
            if now - last >= self.timeout:
                poller.unregister(sock.fileno())
                del self._by_fd[sock.fileno()]
                del self._flows[peer]
                sock.close()

    def close(self) -> None:
        """Stop listening and drop every flow.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        self._thread.join(2)
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()
