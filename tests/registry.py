"""Real registries for tests: Debian's docker-registry (distribution 2.x) on 127.0.0.1.

* :func:`running_registry` — plain, htpasswd basic auth, or token auth;
* :class:`TokenServer` — the token service of the Bearer flow, issuing RS256
  JWTs (x5c header) that the registry verifies against its rootcertbundle;
* :class:`HangingServer` — accepts connections and never answers.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import json
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

REGISTRY = shutil.which("docker-registry") or "/usr/bin/docker-registry"
SKOPEO = shutil.which("skopeo") or "/usr/bin/skopeo"
HTPASSWD = shutil.which("htpasswd") or "/usr/bin/htpasswd"
USER, PASSWORD = "skiff", "s3cret-pass"


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return int(port)


@dataclass
class Registry:
    """One running docker-registry."""

    root: Path
    port: int
    mode: str
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.root / "registry.log"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def storage(self) -> Path:
        return self.root / "storage"

    def blob_path(self, digest: str) -> Path:
        hexd = digest.split(":", 1)[1]
        return (self.storage / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data")

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""


def _wait_port(port: int, proc: subprocess.Popen[bytes] | None, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@contextlib.contextmanager
def running_registry(base: Path, mode: str = "plain",
                     token_server: TokenServer | None = None) -> Iterator[Registry]:
    """docker-registry with filesystem storage under ``base``; ``mode`` is
    ``plain``, ``htpasswd`` or ``token`` (needs ``token_server``)."""
    base.mkdir(parents=True, exist_ok=True)
    reg = Registry(base, free_port(), mode)
    auth = ""
    if mode == "htpasswd":
        pw = subprocess.run([HTPASSWD, "-Bbn", USER, PASSWORD], capture_output=True,
                            check=True).stdout
        (base / "htpasswd").write_bytes(pw)
        auth = (f"auth:\n  htpasswd:\n    realm: basic-realm\n"
                f"    path: {base / 'htpasswd'}\n")
    elif mode == "token":
        assert token_server is not None
        auth = (f"auth:\n  token:\n    realm: {token_server.realm}\n"
                f"    service: {token_server.service}\n    issuer: {token_server.issuer}\n"
                f"    rootcertbundle: {token_server.cert_path}\n")
    cfg = (
        "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n"
        f"storage:\n  filesystem:\n    rootdirectory: {reg.storage}\n"
        "  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{reg.port}\n  secret: {secrets.token_hex(16)}\n"
        + auth
    )
    (base / "config.yml").write_text(cfg)
    with open(reg.log_path, "ab") as log:
        reg.proc = subprocess.Popen([REGISTRY, "serve", str(base / "config.yml")],
                                    stdout=log, stderr=log, start_new_session=True)
    try:
        try:
            _wait_port(reg.port, reg.proc)
        except RuntimeError as exc:
            raise RuntimeError(f"docker-registry did not start: {exc}\n{reg.logs()}") from exc
        yield reg
    finally:
        reg.proc.terminate()
        try:
            reg.proc.wait(10)
        except subprocess.TimeoutExpired:
            reg.proc.kill()
            reg.proc.wait()
        shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------------------
# token service
# ---------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """The registry's token service: Basic-authenticated users get the scopes
    they ask for; anonymous callers get a token that grants nothing."""

    service = "skiff-test-registry"
    issuer = "skiff-test-issuer"

    def __init__(self, base: Path) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        base.mkdir(parents=True, exist_ok=True)
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "skiff test token signer")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=2))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(self._key, hashes.SHA256()))
        self.cert_path = base / "token-cert.pem"
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self._x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        self.requests: list[dict[str, Any]] = []
        self.port = free_port()
        self.realm = f"http://127.0.0.1:{self.port}/token"
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, fmt: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                q = parse_qs(parts.query)
                user = server._user(self.headers.get("Authorization"))
                server.requests.append({"user": user, "scope": q.get("scope", [])})
                if user is False:
                    self.send_response(401)
                    self.send_header("Content-Type", "application/json")
                    body = b'{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}'
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                token = server.issue(user or "", q.get("scope", []) if user else [])
                body = json.dumps({"token": token, "access_token": token,
                                   "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def _user(self, header: str | None) -> str | bool | None:
        """The user name, None for anonymous, False for wrong credentials."""
        if not header:
            return None
        if not header.startswith("Basic "):
            return False
        user, _, pw = base64.b64decode(header[6:]).decode().partition(":")
        return user if (user, pw) == (USER, PASSWORD) else False

    def issue(self, subject: str, scopes: list[str]) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name,
                           "actions": [a for a in actions.split(",") if a]})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]}
        claims = {"iss": self.issuer, "sub": subject, "aud": self.service,
                  "exp": now + 300, "nbf": now - 10, "iat": now,
                  "jti": secrets.token_hex(8), "access": access}
        signing = (_b64(json.dumps(header).encode()) + "." +
                   _b64(json.dumps(claims).encode()))
        sig = self._key.sign(signing.encode(), padding.PKCS1v15(), hashes.SHA256())
        return signing + "." + _b64(sig)

    def __enter__(self) -> TokenServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


class HangingServer:
    """Accepts TCP connections and never answers (a registry that hangs)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._conns.append(conn)

    def __enter__(self) -> HangingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        for c in self._conns:
            c.close()
        self.sock.close()


# ---------------------------------------------------------------------------
# an OCI layout for skopeo, written here (not by skiff)
# ---------------------------------------------------------------------------


def write_oci_layout(dest: Path, files: dict[str, bytes], tag: str = "v1",
                     layers: int = 2, level: int = 6) -> dict[str, Any]:
    """An OCI image layout with ``layers`` gzip layers, built with tarfile/gzip
    directly, so a pull of it tests skiff against bytes skiff did not write.
    Returns ``{"diff_ids": [...], "config_digest": ...}``."""
    import gzip
    import hashlib
    import io
    import tarfile

    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)

    def put(data: bytes) -> str:
        d = hashlib.sha256(data).hexdigest()
        (blobs / d).write_bytes(data)
        return "sha256:" + d

    items = sorted(files.items())
    per = [items[i::layers] for i in range(layers)]
    diff_ids, descs = [], []
    for group in per:
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
            for name, content in group:
                info = tarfile.TarInfo(name)
                info.size = len(content)
                info.mode = 0o755
                info.mtime = 1700000000
                tf.addfile(info, io.BytesIO(content))
        tar = raw.getvalue()
        diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
        gz = gzip.compress(tar, compresslevel=level, mtime=0)
        descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                      "digest": put(gz), "size": len(gz)})
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/usr/bin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "test layer"}
                    for _ in diff_ids],
    }).encode()
    config_digest = put(config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": len(config)},
        "layers": descs,
    }).encode()
    mdigest = put(manifest)
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": mdigest,
        "size": len(manifest), "platform": {"architecture": "amd64", "os": "linux"},
        "annotations": {"org.opencontainers.image.ref.name": tag}}]}
    (dest / "index.json").write_text(json.dumps(index))
    (dest / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    return {"diff_ids": diff_ids, "config_digest": config_digest,
            "image_id": config_digest, "layers": descs}


def skopeo_copy(src: str, dest: str, *extra: str) -> None:
    env = dict(os.environ)
    res = subprocess.run([SKOPEO, "--insecure-policy", "copy", "--dest-tls-verify=false",
                          *extra, src, dest], capture_output=True, env=env, timeout=120)
    if res.returncode != 0:
        raise AssertionError(f"skopeo copy failed: {res.stderr.decode(errors='replace')}")
