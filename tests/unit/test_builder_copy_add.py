"""ADD (core/builder/copying.py): local archives unpacked, URLs fetched.

The URL tests talk only to an http.server started here on 127.0.0.1 (run the
unit tests inside ``unshare --net`` with ``lo`` up).
"""

from __future__ import annotations

import gzip
import http.server
import io
import os
import socket
import stat
import tarfile
import threading
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path

import pytest

from skiff.core.builder.copying import discard
from skiff.core.errors import InvalidParameter
from tests.unit.test_builder_copy import Copy, copy, ctx, img, owner, plan_only, write

__all__ = ["copy", "ctx", "img"]  # fixtures, used by name


# ---------------------------------------------------------------------------
# ADD: local archives
# ---------------------------------------------------------------------------


def make_tar(compress: str = "") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=f"w:{compress}") as tf:
        ti = tarfile.TarInfo("pkg/bin/tool")
        data = b"tool!"
        ti.size, ti.mode, ti.uid, ti.gid, ti.mtime = len(data), 0o755, 12, 34, 1_000_000
        tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("compress", ["", "gz", "bz2", "xz"])
def test_add_unpacks_a_local_tar(ctx: Path, copy: Copy, img: Path, compress: str) -> None:
    write(ctx / "bundle.tar.whatever", make_tar(compress))
    plan = copy(["bundle.tar.whatever"], "/opt", keyword="ADD", decompress=True,
                chown="1:1", chmod="0600")
    assert plan.cache_id.startswith("file:")
    tool = img / "opt" / "pkg" / "bin" / "tool"
    assert tool.read_bytes() == b"tool!"
    assert owner(tool) == (12, 34)  # the tar's own: --chown is not for archives
    assert stat.S_IMODE(tool.stat().st_mode) == 0o755


def test_add_copies_what_is_not_a_tar(ctx: Path, copy: Copy, img: Path) -> None:
    write(ctx / "notes.gz", gzip.compress(b"just text, no tar header here" * 40))
    write(ctx / "empty.tar", b"")
    write(ctx / "b.tar.gz", make_tar("gz"))
    copy(["notes.gz", "empty.tar"], "/o/", keyword="ADD", decompress=True)
    assert sorted(os.listdir(img / "o")) == ["empty.tar", "notes.gz"]
    copy(["b.tar.gz"], "/c/", keyword="COPY")  # COPY never unpacks
    assert os.listdir(img / "c") == ["b.tar.gz"]


# ---------------------------------------------------------------------------
# ADD: URLs, from a server of our own on 127.0.0.1
# ---------------------------------------------------------------------------

BODY = b"remote content\n"
LAST_MODIFIED = 1_500_000_000


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.startswith("/missing"):
            self.send_error(404, "Not Found")
            return
        body = BODY * 1000 if self.path.startswith("/big") else BODY
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Last-Modified", formatdate(LAST_MODIFIED, usegmt=True))
        if self.path.startswith("/named/"):
            self.send_header("Content-Disposition", 'attachment; filename="given.bin"')
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy",
                "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)  # urllib would send 127.0.0.1 to a proxy
    try:
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    except OSError as exc:
        pytest.skip(f"no loopback to serve on: {exc}")
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    t.join()


def test_copy_refuses_urls(ctx: Path) -> None:
    with pytest.raises(InvalidParameter) as err:
        plan_only(ctx, ["http://127.0.0.1:9/x"], "/x")
    assert err.value.message == "source can't be a URL for COPY"


def test_add_url(tmp_path: Path, ctx: Path, copy: Copy, img: Path, server: str) -> None:
    fetch_dir = str(tmp_path / "fetch")
    kw = {"keyword": "ADD", "allow_urls": True, "fetch_dir": fetch_dir, "decompress": True}
    plan = copy([f"{server}/files/app.bin"], "/dl/", **kw)
    got = img / "dl" / "app.bin"
    assert got.read_bytes() == BODY
    assert stat.S_IMODE(got.stat().st_mode) == 0o600
    assert got.stat().st_mtime == LAST_MODIFIED
    assert owner(got) == (0, 0)
    assert plan.cache_id.startswith("file:")
    assert len(os.listdir(fetch_dir)) == 1
    discard(plan)
    discard(plan)
    assert os.listdir(fetch_dir) == []
    again = copy([f"{server}/files/app.bin"], "/dl/", **kw)
    assert again.cache_id == plan.cache_id
    discard(again)
    plan = copy([f"{server}/files/app.bin"], "/exact", **kw)
    assert (img / "exact").read_bytes() == BODY
    discard(plan)
    plan = copy([f"{server}/named/"], "/dl2/", **kw)
    assert (img / "dl2" / "given.bin").read_bytes() == BODY
    discard(plan)


def test_add_url_errors(tmp_path: Path, ctx: Path, server: str) -> None:
    fetch_dir = tmp_path / "fetch"
    kw: dict[str, object] = {"keyword": "ADD", "allow_urls": True,
                             "fetch_dir": str(fetch_dir)}
    with pytest.raises(InvalidParameter) as err:
        plan_only(ctx, [f"{server}/missing"], "/x", **kw)
    assert err.value.message == (f"ADD failed: cannot fetch {server}/missing: "
                                 "HTTP status 404 Not Found")
    with pytest.raises(InvalidParameter, match="larger than the limit of 100 bytes"):
        plan_only(ctx, [f"{server}/big"], "/x", max_fetch=100, **kw)
    with pytest.raises(InvalidParameter, match="cannot determine filename"):
        plan_only(ctx, [f"{server}/"], "/x/", **kw)
    write(ctx / "a")
    with pytest.raises(InvalidParameter, match="more than one source"):
        plan_only(ctx, [f"{server}/f1", "a"], "/x", **kw)  # the download is removed
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    with pytest.raises(InvalidParameter) as err:
        plan_only(ctx, [f"http://127.0.0.1:{port}/x"], "/x", **kw)
    assert err.value.message.startswith(f"ADD failed: cannot fetch http://127.0.0.1:{port}/x: ")
    assert os.listdir(fetch_dir) == []
    unnamed = plan_only(ctx, [f"{server}/"], "/x", **kw)  # no filename, no slash: fine
    assert unnamed.sources[0].name == "__unnamed__"
    discard(unnamed)
