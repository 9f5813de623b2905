"""ADD's remote sources: an ``http://`` or ``https://`` URL downloaded for the plan.

The download happens when the plan is made (its cache id is the content's),
in the calling thread, with the standard library: a 30 s timeout per socket
operation, at most ``max_bytes`` kept, into a private file (mode 0600) under
the plan's ``fetch_dir``.  Redirects are followed to http and https only.
What goes wrong is an :class:`InvalidParameter` naming the URL and the
reason, never a traceback.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import os
import posixpath
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from email.message import Message
from http.client import HTTPMessage
from typing import IO

from skiff.core.errors import InvalidParameter

TIMEOUT = 30.0

#: dockerd's name for a download whose URL and headers give none
UNNAMED = "__unnamed__"


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


@dataclass(frozen=True)
class Fetched:
    path: str  #: the downloaded file (the caller removes it)
    name: str  #: from the URL's path, else Content-Disposition; "" when neither says
    digest: str  #: ``"sha256:<hex>"`` of the content
    mtime: float | None  #: Last-Modified, when sent


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects to http and https only (urllib would also take ftp)."""

    def redirect_request(self, req: urllib.request.Request, fp: IO[bytes], code: int,
                         msg: str, headers: HTTPMessage,
                         newurl: str) -> urllib.request.Request | None:
        if not is_url(newurl):
            raise urllib.error.HTTPError(newurl, code, f"redirect to {newurl} refused: "
                                         "only http and https are fetched", headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _name(url: str, headers: Message) -> str:
    path = urllib.parse.unquote(urllib.parse.urlsplit(url).path)
    if path and not path.endswith("/"):
        name = posixpath.basename(path)
        if name:
            return name
    disposition = headers.get_param("filename", header="content-disposition")
    if isinstance(disposition, str) and disposition and not disposition.endswith("/"):
        return posixpath.basename(disposition)
    return ""


def _failed(url: str, reason: object) -> InvalidParameter:
    return InvalidParameter(f"ADD failed: cannot fetch {url}: {reason}")


def fetch(url: str, fetch_dir: str, max_bytes: int) -> Fetched:
    """Download ``url`` into a new file under ``fetch_dir``."""
    opener = urllib.request.build_opener(_Redirects())
    try:
        resp = opener.open(urllib.request.Request(url, method="GET"), timeout=TIMEOUT)
    except urllib.error.HTTPError as exc:
        exc.close()
        raise _failed(url, f"HTTP status {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise _failed(url, exc.reason) from None
    except (OSError, ValueError) as exc:  # a timeout, a malformed URL
        raise _failed(url, exc) from None
    os.makedirs(fetch_dir, 0o700, exist_ok=True)
    fd, path = tempfile.mkstemp(prefix="add-", dir=fetch_dir)  # mode 0600
    ok = False
    try:
        with resp, os.fdopen(fd, "wb") as out:
            h = hashlib.sha256()
            total = 0
            while True:
                try:
                    chunk = resp.read(1 << 20)
                except (OSError, ValueError) as exc:
                    raise _failed(url, exc) from None
                if not chunk:
                    break
                total += len(chunk)
                if total > max_bytes:
                    raise _failed(url, f"larger than the limit of {max_bytes} bytes")
                h.update(chunk)
                out.write(chunk)
            headers = resp.headers
            name = _name(url, headers)  # the URL as written, as dockerd names it
            mtime = None
            if modified := headers.get("Last-Modified"):
                with contextlib.suppress(TypeError, ValueError, IndexError, OverflowError):
                    mtime = email.utils.parsedate_to_datetime(modified).timestamp()
            if mtime is not None:
                out.flush()
                os.utime(out.fileno(), (mtime, mtime))
        ok = True
        return Fetched(path, name, "sha256:" + h.hexdigest(), mtime)
    finally:
        if not ok:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
