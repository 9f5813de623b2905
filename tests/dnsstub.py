"""A tiny UDP resolver for tests: answers the names it is told, on a loopback address.

The embedded DNS server's upstream in the network tests.  Each query's name is
recorded; a name in ``known`` gets its addresses, any other is answered by
``unknown`` ("nxdomain", "empty": NOERROR with no answer, or "silent").
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Mapping
from typing import Literal

from skiff.plugins.network.bridge.dns import answer, parse_question

Unknown = Literal["nxdomain", "empty", "silent"]


class DnsStub:
    """Serves on ``host``:``port`` (port 0: any) from a thread until ``close``."""

    def __init__(self, known: Mapping[str, list[str]], host: str = "127.0.0.1",
                 port: int = 0, unknown: Unknown = "nxdomain") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.sock.settimeout(0.2)  # so that close() is seen promptly
        self.port = int(self.sock.getsockname()[1])
        self.known = dict(known)
        self.unknown = unknown
        self.queries: list[str] = []
        self.silent = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                packet, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            q = parse_question(packet)
            if q is None:
                continue
            name, qtype, end = q
            self.queries.append(name)
            if name in self.known:
                self.sock.sendto(answer(packet, end, self.known[name], qtype), peer)
            elif self.unknown == "silent":
                self.silent += 1
            elif self.unknown == "empty":
                self.sock.sendto(answer(packet, end, [], qtype), peer)
            else:
                reply = bytearray(answer(packet, end, [], qtype))
                reply[3] = (reply[3] & 0xF0) | 3  # RCODE 3: NXDOMAIN
                self.sock.sendto(bytes(reply), peer)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()
