"""A blocking client of one repository on a v2 registry (stdlib ``http.client``).

Why blocking and stdlib: every byte of a blob is hashed and written to disk,
which is thread work anyway, so a download runs start to finish in one worker
thread (``engine.to_thread``) and the event loop only sees progress callbacks.
``http.client`` brings chunked decoding, TLS (``ssl``) and per-socket timeouts,
which bound a registry that accepts and then never answers.

Auth follows the registry's challenge: a 401 carries ``WWW-Authenticate``,
answered through :mod:`.auth` (Basic credentials, or a Bearer token from the
realm) before the request is retried.  Tokens are cached per client.
Endpoints and daemon.json's registry keys are in :mod:`.endpoints`, the
errors in :mod:`.errors`; they are re-exported here for existing callers.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any
from urllib.parse import urlencode, urljoin, urlsplit

from skiff.core.images.distribution.auth import (
    AuthConfig,
    basic_authorization,
    fetch_token,
    parse_challenge,
)
from skiff.core.images.distribution.endpoints import (
    MAX_DOCUMENT,
    USER_AGENT,
    Endpoint,
    RegistryConfig,
)
from skiff.core.images.distribution.errors import (
    BlobUnknown,
    DigestMismatch,
    LoginRefused,
    ManifestUnknown,
    RegistryError,
    RegistryTimeout,
    RegistryUnauthorized,
    registry_message,
)
from skiff.core.images.errors import InvalidImage

# The names below other modules imported from here before auth, endpoints and
# errors were split off; kept in __all__ so those imports still work.
__all__ = [
    "AuthConfig",
    "BlobUnknown",
    "DigestMismatch",
    "Endpoint",
    "ManifestUnknown",
    "RegistryConfig",
    "RegistryError",
    "RegistryTimeout",
    "RegistryUnauthorized",
    "RepositoryClient",
    "login",
]

CHUNK = 1 << 20


class _CountingReader:
    """A file wrapper that reports how much of an upload body was read."""

    def __init__(self, f: IO[bytes], progress: Callable[[int], None] | None) -> None:
        self._f = f
        self._progress = progress
        self.done = 0

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.done += len(data)
        if self._progress is not None and data:
            self._progress(self.done)
        return data


class RepositoryClient:
    """Requests to one repository (``path``) on one endpoint, with auth.

    Thread-safe: parallel downloads share one client (and its token).
    ``actions`` is what the token must allow (``pull`` or ``pull,push``);
    ``extra_scopes`` adds others (a mount's source repository).
    """

    def __init__(self, endpoint: Endpoint, path: str, auth: AuthConfig | None,
                 config: RegistryConfig, actions: str = "pull",
                 extra_scopes: Sequence[str] = ()) -> None:
        self.endpoint = endpoint
        self.path = path
        self.auth = auth
        self.config = config
        self.scopes = [f"repository:{path}:{actions}", *extra_scopes]
        self._authz: str | None = None
        self._lock = threading.Lock()
        self._ssl = ssl.create_default_context() if endpoint.scheme == "https" else None

    # -- plumbing ------------------------------------------------------------

    def _connect(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        t = self.config.timeout
        if scheme == "https":
            return http.client.HTTPSConnection(netloc, timeout=t, context=self._ssl,
                                               blocksize=CHUNK)
        return http.client.HTTPConnection(netloc, timeout=t, blocksize=CHUNK)

    def _send(self, method: str, url: str, headers: dict[str, str],
              body: Any) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        parts = urlsplit(url)
        target = parts.path + ("?" + parts.query if parts.query else "")
        conn = self._connect(parts.scheme, parts.netloc)
        try:
            conn.request(method, target, body=body, headers=headers)
            resp = conn.getresponse()
        except TimeoutError:
            conn.close()
            raise RegistryTimeout(
                f"{method} {url}: the registry did not answer within "
                f"{self.config.timeout:g}s (registry-timeout)"
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise RegistryError(f"{method} {url}: {_describe(exc)}") from exc
        return conn, resp

    def request(self, method: str, path: str, headers: Mapping[str, str] | None = None,
                body: Any = None, *, rewind: Callable[[], None] | None = None
                ) -> http.client.HTTPResponse:
        """One request, answering an auth challenge and following redirects.

        ``path`` is relative to the endpoint or absolute (an upload Location).
        The caller reads and closes the response.  A body that must be sent
        again after a 401 needs ``rewind``.
        """
        url = urljoin(self.endpoint.base + "/", path)
        hdrs = {"User-Agent": USER_AGENT, **(headers or {})}
        challenged = False
        redirects = 0
        while True:
            send = dict(hdrs)
            same_host = urlsplit(url).netloc == self.endpoint.netloc
            if self._authz and same_host:
                send["Authorization"] = self._authz
            conn, resp = self._send(method, url, send, body)
            if resp.status == 401 and not challenged and same_host:
                challenge = resp.getheader("WWW-Authenticate") or ""
                resp.read()
                conn.close()
                self._answer_challenge(challenge, method, url)
                challenged = True
                if rewind is not None:
                    rewind()
                continue
            if resp.status in (301, 302, 303, 307, 308) and method in ("GET", "HEAD"):
                location = resp.getheader("Location")
                resp.read()
                conn.close()
                redirects += 1
                if not location or redirects > 5:
                    raise RegistryError(f"{method} {url}: too many redirects")
                url = urljoin(url, location)
                continue
            return resp

    def _answer_challenge(self, header: str, method: str, url: str) -> None:
        scheme, params = parse_challenge(header)
        auth = self.auth
        if scheme == "basic":
            if auth is None or not auth.username:
                raise RegistryUnauthorized(
                    f"{method} {url}: no basic auth credentials (unauthorized: log in with "
                    f"`docker login {self.endpoint.netloc}`)"
                )
            self._authz = basic_authorization(auth)
            return
        if scheme == "bearer":
            if auth is not None and auth.registrytoken:
                self._authz = "Bearer " + auth.registrytoken
                return
            with self._lock:
                self._authz = "Bearer " + fetch_token(self._send, params, self.scopes, auth)
            return
        raise RegistryUnauthorized(
            f"{method} {url}: unauthorized: the registry asks for {scheme or 'nothing'!r} "
            "authentication, which skiff does not speak"
        )

    def _fail(self, resp: http.client.HTTPResponse, what: str, body: bytes | None = None
              ) -> RegistryError:
        if body is None:
            body = resp.read(MAX_DOCUMENT)
        msg = registry_message(body)
        if resp.status in (401, 403):
            if msg == "no details":
                msg = ("unauthorized: authentication required" if resp.status == 401
                       else "denied: requested access to the resource is denied")
            hint = "" if self.auth else f" (log in with `docker login {self.endpoint.netloc}`)"
            return RegistryUnauthorized(f"{what}: {msg}{hint}")
        return RegistryError(f"{what}: the registry answered {resp.status}: {msg}")

    def _repo_url(self, kind: str, ref: str) -> str:
        return f"/v2/{self.path}/{kind}/{ref}"

    # -- manifests --------------------------------------------------------------

    def get_manifest(self, ref: str, accept: Sequence[str]) -> tuple[bytes, str, str]:
        """``(bytes, digest, media type)`` of manifest ``ref`` (tag or digest).

        The digest is computed from the bytes; by digest, a mismatch is refused.
        """
        path = self._repo_url("manifests", ref)
        resp = self.request("GET", path, {"Accept": ", ".join(accept)})
        try:
            if resp.status == 404:
                sep = "@" if ref.startswith("sha256:") else ":"
                raise ManifestUnknown(
                    f"manifest for {self.endpoint.netloc}/{self.path}{sep}{ref} not found: "
                    f"{registry_message(resp.read(MAX_DOCUMENT))}")
            if resp.status != 200:
                raise self._fail(resp, f"GET {self.endpoint.base}{path}")
            body = resp.read(MAX_DOCUMENT + 1)
        finally:
            resp.close()
        if len(body) > MAX_DOCUMENT:
            raise RegistryError(f"manifest {ref} is larger than {MAX_DOCUMENT} bytes")
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if ref.startswith("sha256:") and digest != ref:
            raise DigestMismatch(
                f"manifest verification failed for digest {ref}: the registry sent content "
                f"that hashes to {digest}"
            )
        media = (resp.getheader("Content-Type") or "").split(";")[0].strip()
        return body, digest, media

    def put_manifest(self, ref: str, body: bytes, media_type: str) -> str:
        path = self._repo_url("manifests", ref)
        resp = self.request("PUT", path, {"Content-Type": media_type,
                                          "Content-Length": str(len(body))}, body)
        try:
            if resp.status not in (200, 201, 202):
                raise self._fail(resp, f"PUT {self.endpoint.base}{path}")
            resp.read()
        finally:
            resp.close()
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        theirs = resp.getheader("Docker-Content-Digest")
        if theirs and theirs != digest:
            raise DigestMismatch(f"the registry stored manifest {ref} as {theirs}, "
                                 f"but the bytes sent hash to {digest}")
        return digest

    # -- blobs ---------------------------------------------------------------------

    def get_blob_bytes(self, digest: str, limit: int = MAX_DOCUMENT) -> bytes:
        """A small blob (an image config) in memory, verified."""
        path = self._repo_url("blobs", digest)
        resp = self.request("GET", path)
        try:
            if resp.status == 404:
                raise BlobUnknown(f"blob {digest} unknown to {self.endpoint.netloc}/"
                                  f"{self.path}: {registry_message(resp.read(MAX_DOCUMENT))}")
            if resp.status != 200:
                raise self._fail(resp, f"GET {self.endpoint.base}{path}")
            body = resp.read(limit + 1)
        finally:
            resp.close()
        if len(body) > limit:
            raise RegistryError(f"blob {digest} is larger than {limit} bytes")
        _verify(digest, hashlib.sha256(body).hexdigest(), "config")
        return body

    def fetch_blob(self, digest: str, dest: str, size: int | None,
                   progress: Callable[[int], None] | None = None) -> int:
        """Download blob ``digest`` into file ``dest``, verified; returns its size.

        A dropped connection is resumed with a Range request (or restarted if
        the registry ignores ranges), up to ``attempts`` times.  On a digest
        or size mismatch ``dest`` is removed and ``DigestMismatch`` raised.
        """
        path = self._repo_url("blobs", digest)
        sha = hashlib.sha256()
        written = 0
        failures = 0
        try:
            with open(dest, "wb") as f:
                while True:
                    headers = {"Range": f"bytes={written}-"} if written else {}
                    try:
                        resp = self.request("GET", path, headers)
                        try:
                            if resp.status == 404:
                                raise BlobUnknown(
                                    f"blob {digest} unknown to {self.endpoint.netloc}/"
                                    f"{self.path}: {registry_message(resp.read(MAX_DOCUMENT))}")
                            if resp.status == 200 and written:
                                # no range support: start over
                                f.seek(0)
                                f.truncate()
                                sha = hashlib.sha256()
                                written = 0
                            elif resp.status not in (200, 206):
                                raise self._fail(resp, f"GET {self.endpoint.base}{path}")
                            while True:
                                chunk = resp.read(CHUNK)
                                if not chunk:
                                    break
                                sha.update(chunk)
                                f.write(chunk)
                                written += len(chunk)
                                if size is not None and written > size:
                                    raise DigestMismatch(
                                        f"blob {digest} is longer than the {size} bytes its "
                                        "manifest says")
                                if progress is not None:
                                    progress(written)
                            if resp.length:  # read(n) returns b"" on a cut connection
                                raise http.client.IncompleteRead(b"", resp.length)
                        finally:
                            resp.close()
                        break
                    except (RegistryTimeout, RegistryError, OSError,
                            http.client.HTTPException) as exc:
                        if isinstance(exc, (BlobUnknown, RegistryUnauthorized, DigestMismatch)):
                            raise
                        if isinstance(exc, RegistryError) and not isinstance(
                                exc, RegistryTimeout) and exc.__cause__ is None:
                            raise
                        failures += 1
                        if failures >= max(1, self.config.attempts):
                            raise RegistryError(
                                f"download of {digest} failed after {failures} attempts "
                                f"({written} bytes received): {_describe(exc)}"
                            ) from exc
                        time.sleep(min(0.2 * failures, 2.0))
        except BaseException:
            _unlink(dest)
            raise
        if size is not None and written != size:
            _unlink(dest)
            raise DigestMismatch(f"blob {digest}: received {written} bytes, the manifest "
                                 f"says {size}")
        try:
            _verify(digest, sha.hexdigest(), "blob")
        except DigestMismatch:
            _unlink(dest)
            raise
        return written

    def blob_exists(self, digest: str) -> bool:
        path = self._repo_url("blobs", digest)
        resp = self.request("HEAD", path)
        try:
            resp.read()
            if resp.status == 200:
                return True
            if resp.status == 404:
                return False
            raise self._fail(resp, f"HEAD {self.endpoint.base}{path}", b"")
        finally:
            resp.close()

    def mount_blob(self, digest: str, source_path: str) -> bool:
        """Cross-repository mount; False when the registry will not (no harm done)."""
        q = urlencode({"mount": digest, "from": source_path})
        resp = self.request("POST", f"/v2/{self.path}/blobs/uploads/?{q}",
                            {"Content-Length": "0"}, b"")
        try:
            resp.read()
            if resp.status == 201:
                return True
            location = resp.getheader("Location")
        finally:
            resp.close()
        if resp.status == 202 and location:
            # the registry opened an upload instead; cancel it
            with contextlib.suppress(RegistryError):
                self.request("DELETE", location).close()
        return False

    def upload_blob(self, digest: str, src: str,
                    progress: Callable[[int], None] | None = None) -> None:
        """Upload file ``src`` as blob ``digest`` (monolithic PUT after POST)."""
        resp = self.request("POST", f"/v2/{self.path}/blobs/uploads/",
                            {"Content-Length": "0"}, b"")
        try:
            if resp.status != 202:
                raise self._fail(resp, f"POST {self.endpoint.base}/v2/{self.path}/blobs/uploads/")
            resp.read()
            location = resp.getheader("Location")
        finally:
            resp.close()
        if not location:
            raise RegistryError("the registry opened an upload without a Location")
        url = urljoin(self.endpoint.base + "/", location)
        url += ("&" if "?" in url else "?") + urlencode({"digest": digest})
        size = os.path.getsize(src)
        with open(src, "rb") as f:
            body = _CountingReader(f, progress)

            def rewind() -> None:
                f.seek(0)
                body.done = 0

            resp = self.request("PUT", url, {"Content-Type": "application/octet-stream",
                                             "Content-Length": str(size)}, body, rewind=rewind)
            try:
                if resp.status not in (201, 204):
                    raise self._fail(resp, f"PUT blob {digest}")
                resp.read()
            finally:
                resp.close()

    def upload_bytes(self, digest: str, data: bytes) -> None:
        """A small blob (an image config) from memory."""
        resp = self.request("POST", f"/v2/{self.path}/blobs/uploads/",
                            {"Content-Length": "0"}, b"")
        try:
            if resp.status != 202:
                raise self._fail(resp, "POST blob upload")
            resp.read()
            location = resp.getheader("Location")
        finally:
            resp.close()
        url = urljoin(self.endpoint.base + "/", location or "")
        url += ("&" if "?" in url else "?") + urlencode({"digest": digest})
        resp = self.request("PUT", url, {"Content-Type": "application/octet-stream",
                                         "Content-Length": str(len(data))}, data)
        try:
            if resp.status not in (201, 204):
                raise self._fail(resp, f"PUT blob {digest}")
            resp.read()
        finally:
            resp.close()


def login(endpoint: Endpoint, auth: AuthConfig, config: RegistryConfig) -> None:
    """Check credentials against ``/v2/`` as ``docker login`` does; raises if refused."""
    client = RepositoryClient(endpoint, "", auth, config)
    client.scopes = []
    try:
        resp = client.request("GET", "/v2/")
    except LoginRefused:
        raise
    except RegistryUnauthorized as exc:
        raise LoginRefused(str(exc)) from None
    try:
        body = resp.read(MAX_DOCUMENT)
    finally:
        resp.close()
    if resp.status in (401, 403):
        raise LoginRefused(f"login to {endpoint.netloc} refused: unauthorized: "
                                   f"{registry_message(body)}")
    if resp.status != 200:
        raise RegistryError(f"GET {endpoint.base}/v2/: the registry answered {resp.status}")


def _verify(digest: str, hexdigest: str, what: str) -> None:
    alg, _, want = digest.partition(":")
    if alg != "sha256":
        raise InvalidImage(f"unsupported digest algorithm in {digest}")
    if want != hexdigest:
        raise DigestMismatch(
            f"{what} verification failed: the registry sent content for {digest} that "
            f"hashes to sha256:{hexdigest}; nothing was stored"
        )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the registry running?)"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, http.client.IncompleteRead):
        return f"connection dropped after {len(exc.partial)} bytes of the response"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "the registry closed the connection without answering"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    return str(exc) or type(exc).__name__


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
