"""Syslog servers for tests: real sockets (udp, tcp, tcp+tls on 127.0.0.1;
unix and unixgram in a directory) that keep every byte they receive, and a
test CA that signs the TLS server's certificate."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import socket
import ssl
import threading
import time
from pathlib import Path


def make_ca(dest: Path, name: str = "ca") -> tuple[Path, Path]:
    """A server certificate for 127.0.0.1 signed by a fresh CA: ``(ca.pem,
    server.pem)``; server.pem holds the certificate and its key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"skiff test {name}")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, key_cert_sign=True, crl_sign=True,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_pem = dest / f"{name}.pem"
    ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    server_pem = dest / f"{name}-server.pem"
    server_pem.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()))
    return ca_pem, server_pem


class SyslogServer:
    """Listens on ``proto`` (udp, tcp, tcp+tls, unix, unixgram) and keeps what
    arrives: ``datagrams`` per datagram, ``stream`` as the bytes of every
    connection concatenated; ``address`` is the ``syslog-address`` to give."""

    def __init__(self, proto: str, where: Path | None = None,
                 server_pem: Path | None = None) -> None:
        self.proto = proto
        self.datagrams: list[bytes] = []
        self.stream = b""
        self.connections = 0
        self._lock = threading.Lock()
        self._stopping = False
        self._conns: list[socket.socket] = []
        self._tls: ssl.SSLContext | None = None
        if proto == "tcp+tls":
            assert server_pem is not None
            self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._tls.load_cert_chain(str(server_pem))
        if proto in ("unix", "unixgram"):
            assert where is not None
            self.path = str(where / f"{proto}.sock")
            kind = socket.SOCK_STREAM if proto == "unix" else socket.SOCK_DGRAM
            self.sock = socket.socket(socket.AF_UNIX, kind)
            self.sock.bind(self.path)
            self.address = f"{proto}://{self.path}"
        else:
            kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
            self.sock = socket.socket(socket.AF_INET, kind)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind(("127.0.0.1", 0))
            self.port = self.sock.getsockname()[1]
            self.address = f"{proto}://127.0.0.1:{self.port}"
        self.datagram = kind == socket.SOCK_DGRAM
        if not self.datagram:
            self.sock.listen(16)
        self.sock.settimeout(0.2)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stopping:
            try:
                if self.datagram:
                    data = self.sock.recv(1 << 20)
                    with self._lock:
                        self.datagrams.append(data)
                    continue
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            if self._tls is not None:
                try:
                    conn.settimeout(5)
                    conn = self._tls.wrap_socket(conn, server_side=True)
                except (OSError, ssl.SSLError):
                    conn.close()
                    continue
            with self._lock:
                self.connections += 1
                self._conns.append(conn)
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        conn.settimeout(0.2)
        while not self._stopping:
            try:
                data = conn.recv(1 << 16)
            except TimeoutError:
                continue
            except (OSError, ssl.SSLError):
                break
            if not data:
                break
            with self._lock:
                self.stream += data
        with contextlib.suppress(OSError):
            conn.close()

    def received(self) -> bytes:
        with self._lock:
            return b"".join(self.datagrams) if self.datagram else self.stream

    def wait_for(self, count: int, marker: bytes = b"\n", timeout: float = 10) -> bytes:
        """What arrived, once it holds ``count`` markers (or the time is up)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = self.received()
            if data.count(marker) >= count:
                return data
            time.sleep(0.02)
        return self.received()

    def drop_connections(self) -> None:
        """Close the accepted connections; keep listening (a server restart)."""
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                c.close()

    def stop(self) -> None:
        """Gone: nothing listens any more."""
        self._stopping = True
        self._thread.join(2)
        self.sock.close()
        self.drop_connections()


class StalledServer:
    """A TCP syslog server that takes connections (the kernel's backlog does)
    and never reads: the sender's buffers fill and its sends block."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.address = f"tcp://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Gone: the connections waiting in the backlog are reset."""
        self.sock.close()
