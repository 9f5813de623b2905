"""The tar-split record reproduces a layer tar byte for byte from its files,
and notices when they changed (``skiff.core.images.tarsplit``)."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from skiff.core.images.decompression import decompressed
from skiff.core.images.errors import InvalidImage, LayerDigestMismatch
from skiff.core.images.tarsplit import (
    HashingReader,
    TarSplitRecorder,
    assemble,
    recorded_length,
)


def _layer_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        d = tarfile.TarInfo("dir")
        d.type = tarfile.DIRTYPE
        tar.addfile(d)
        for name, data in (("dir/a", b"hello\n"), ("dir/" + "n" * 150, b"x" * 1000),
                           ("dir/empty", b"")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.pax_headers = {"comment": "kept verbatim"}
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("dir/link")
        link.type = tarfile.SYMTYPE
        link.linkname = "a"
        tar.addfile(link)
    return buf.getvalue() + bytes(1024)  # trailing padding is part of the digest


def _record(raw: bytes, ts_path: Path) -> str:
    with gzip.open(ts_path, "wb") as ts:
        recorder = TarSplitRecorder(ts)  # type: ignore[arg-type]
        reader = HashingReader(io.BytesIO(raw), recorder)
        while reader.read(4096):
            pass
        reader.drain()
        recorder.close()
    return "sha256:" + reader.sha.hexdigest()


def _unpack(raw: bytes, root: Path) -> None:
    # by hand: the tar is ours, and this Python's extractall has no safe filter
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        for m in tar.getmembers():
            dest = root / m.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            if m.isdir():
                dest.mkdir(exist_ok=True)
            elif m.issym():
                dest.symlink_to(m.linkname)
            else:
                src = tar.extractfile(m)
                assert src is not None
                dest.write_bytes(src.read())


def test_the_record_and_the_files_give_the_tar_back(tmp_path: Path) -> None:
    raw = _layer_tar()
    ts_path = tmp_path / "tar-split.json.gz"
    diff_id = _record(raw, ts_path)
    assert diff_id == "sha256:" + hashlib.sha256(raw).hexdigest()
    _unpack(raw, tmp_path / "root")
    mounts: list[str] = []

    def mount() -> str:
        mounts.append("x")
        return str(tmp_path / "root")

    assert recorded_length(str(ts_path)) == len(raw)
    assert b"".join(assemble(str(ts_path), mount, diff_id, "L")) == raw
    assert mounts == ["x"]  # mounted once, when the first file's contents were due


def test_changed_files_are_noticed(tmp_path: Path) -> None:
    raw = _layer_tar()
    ts_path = tmp_path / "tar-split.json.gz"
    diff_id = _record(raw, ts_path)
    root = tmp_path / "root"
    _unpack(raw, root)
    (root / "dir" / "a").write_bytes(b"HELLO\n")
    with pytest.raises(LayerDigestMismatch):
        b"".join(assemble(str(ts_path), lambda: str(root), diff_id, "L"))
    (root / "dir" / "a").write_bytes(b"h")
    with pytest.raises(InvalidImage, match="shorter than recorded"):
        b"".join(assemble(str(ts_path), lambda: str(root), diff_id, "L"))


@pytest.mark.parametrize("compress", [
    lambda b: b,
    gzip.compress,
    lambda b: __import__("bz2").compress(b),
    lambda b: __import__("lzma").compress(b),
])
def test_decompressed_recognises_the_format(compress: object) -> None:
    raw = _layer_tar()
    assert decompressed(io.BytesIO(compress(raw))).read() == raw  # type: ignore[operator]
