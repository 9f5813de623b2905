"""skiff.core.tarlimits: a tar header cannot make the daemon allocate what it claims.

Class: memory exhaustion through archive metadata (the 4 GiB GNU long name or
PAX header; Go's archive/tar caps these at 1 MiB, ``ErrFieldTooLong``).  Each
attack is shown against the stock ``tarfile`` too (the protection off), so
the tests prove the limit, not a reader that happens to be frugal.
"""

from __future__ import annotations

import io
import os
import tarfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from skiff.core import archive
from skiff.core.images.archives import loader
from skiff.core.images.errors import InvalidImage
from skiff.core.tarlimits import MAX_META, MAX_META_HEADERS, TarHeaderTooLarge, open_stream

GiB = 1 << 30


class Endless(io.RawIOBase):
    """``head`` and then zeros for ever: a body nobody has to hold."""

    def __init__(self, head: bytes, limit: int | None = None) -> None:
        self.head = memoryview(head)
        self.sent = 0
        self.limit = limit

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        n = len(b)
        if self.limit is not None:
            n = min(n, self.limit - self.sent)
            if n <= 0:
                return 0
        if self.head:
            k = min(n, len(self.head))
            b[:k] = self.head[:k]
            self.head = self.head[k:]
        else:
            k = n
            b[:k] = bytes(k)
        self.sent += k
        return k


def meta_header(kind: bytes, size: int) -> bytes:
    """A bare metadata header block that claims ``size`` bytes of payload."""
    info = tarfile.TarInfo("././@LongLink")
    info.type = kind
    info.size = size
    return info.tobuf(tarfile.GNU_FORMAT)


def entry(name: str = "f", data: bytes = b"") -> bytes:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info.tobuf(tarfile.USTAR_FORMAT) + data + bytes(-len(data) % 512)


def read_all(tf: tarfile.TarFile) -> list[str]:
    names = []
    while (m := tf.next()) is not None:
        tf.members.clear()
        names.append(m.name)
    return names


def read_stock(src: object) -> list[str]:
    """Every name, through the standard library's tarfile (no limits)."""
    with tarfile.open(fileobj=src, mode="r|") as tf:  # type: ignore[call-overload]
        return read_all(tf)


def read_bounded(src: object) -> list[str]:
    with open_stream(src) as tf:  # type: ignore[arg-type]
        return read_all(tf)


def peak_while(fn: Callable[[], object]) -> tuple[int, BaseException | None]:
    tracemalloc.start()
    err: BaseException | None = None
    try:
        fn()
    except Exception as exc:
        err = exc
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak, err


KINDS = [
    pytest.param(tarfile.GNUTYPE_LONGNAME, "GNU long name", id="gnu-longname"),
    pytest.param(tarfile.GNUTYPE_LONGLINK, "GNU long link", id="gnu-longlink"),
    pytest.param(tarfile.XHDTYPE, "PAX extended", id="pax"),
    pytest.param(tarfile.XGLTYPE, "PAX global", id="pax-global"),
]


@pytest.mark.parametrize(("kind", "what"), KINDS)
def test_4gib_metadata_header_refused_from_its_size_field(kind: bytes, what: str) -> None:
    """Memory exhaustion: a 4 GiB long-name / PAX header is refused after 512 bytes."""
    src = Endless(meta_header(kind, 4 * GiB))
    peak, err = peak_while(lambda: read_bounded(src))
    assert isinstance(err, TarHeaderTooLarge), err
    assert f"{what} header at byte 0 claims 4294967296 bytes" in str(err)
    assert "above 1 MiB are refused" in str(err)
    assert src.sent <= 64 * 1024, "the payload must not be read"
    assert peak < 256 * 1024, f"allocated {peak} bytes"


@pytest.mark.parametrize(("kind", "what"), KINDS[:3])
def test_stock_tarfile_allocates_what_the_header_claims(kind: bytes, what: str) -> None:
    """The protection off: stock tarfile reads a 64 MiB header whole into memory."""
    claim = 64 << 20
    src = Endless(meta_header(kind, claim), limit=claim + 2048)
    # (opening reads the first member: inside the measurement)
    peak, _err = peak_while(lambda: read_stock(src))
    assert peak >= claim, f"stock tarfile peaked at {peak} bytes"
    # the same stream through the bounded reader: refused, small
    src = Endless(meta_header(kind, claim), limit=claim + 2048)
    peak, err = peak_while(lambda: read_bounded(src))
    assert isinstance(err, TarHeaderTooLarge)
    assert peak < 256 * 1024


def test_honest_long_names_and_pax_records_still_read() -> None:
    out = io.BytesIO()
    long_name = "d/" + "n" * 200_000
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tf:
        info = tarfile.TarInfo(long_name)
        info.size = 2
        tf.addfile(info, io.BytesIO(b"hi"))
        link = tarfile.TarInfo("l")
        link.type = tarfile.SYMTYPE
        link.linkname = "t" * 100_000
        tf.addfile(link)
    pax = io.BytesIO()
    with tarfile.open(fileobj=pax, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("p" * 300)
        info.pax_headers = {"SCHILY.xattr.user.big": "v" * (MAX_META - 4096)}
        tf.addfile(info)
    assert read_all(open_stream(io.BytesIO(out.getvalue()))) == [long_name, "l"]
    assert read_all(open_stream(io.BytesIO(pax.getvalue()))) == ["p" * 300]


def test_chain_of_empty_headers_refused_before_recursion_runs_out() -> None:
    """Resource exhaustion: thousands of empty PAX headers in a row (stock tarfile
    recurses once per header and dies with RecursionError, a 500)."""
    chain = b"".join(meta_header(tarfile.XHDTYPE, 0) for _ in range(5000)) + entry()
    with pytest.raises(RecursionError):
        read_stock(io.BytesIO(chain))
    with pytest.raises(TarHeaderTooLarge, match=f"more than {MAX_META_HEADERS} metadata"):
        read_bounded(io.BytesIO(chain))


def test_headers_in_front_of_one_entry_count_together() -> None:
    one = MAX_META // 2 + 512
    body = b""
    for _ in range(3):  # each under the limit, together over it
        payload = b"n" * one
        body += meta_header(tarfile.GNUTYPE_LONGNAME, one) + payload + bytes(-one % 512)
    with pytest.raises(TarHeaderTooLarge, match="together"):
        read_all(open_stream(io.BytesIO(body + entry())))


def _pax_global(records: dict[str, str]) -> bytes:
    info = tarfile.TarInfo("pax_global_header")
    return info._create_pax_generic_header(records, tarfile.XGLTYPE, "utf-8")  # type: ignore[attr-defined]


def test_global_pax_records_cannot_pile_up() -> None:
    """Memory growth: global PAX headers between entries add up for the whole stream."""
    body = b""
    for i in range(5):
        body += _pax_global({f"k{i}": "v" * 300_000}) + entry(f"f{i}")
    assert len(read_stock(io.BytesIO(body))) == 5
    with pytest.raises(TarHeaderTooLarge, match="PAX global headers"):
        read_bounded(io.BytesIO(body))


def _old_gnu_sparse(extension_blocks: int) -> bytes:
    info = tarfile.TarInfo("sparse")
    info.type = tarfile.GNUTYPE_SPARSE
    block = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    block[482] = 1  # isextended
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    ext = bytearray(512)
    ext[504] = 1  # another extension block follows
    return bytes(block) + bytes(ext) * extension_blocks


def test_endless_gnu_sparse_extension_blocks_refused() -> None:
    """Memory growth: an old GNU sparse header whose extension blocks never end."""
    blocks = _old_gnu_sparse(4000)  # each says another follows
    with pytest.raises(TarHeaderTooLarge, match="GNU sparse map"):
        read_bounded(io.BytesIO(blocks))
    with pytest.raises(tarfile.ReadError, match="unexpected end"):
        read_all(open_stream(io.BytesIO(_old_gnu_sparse(3))))


def test_malformed_sparse_map_is_a_tar_error_not_a_crash(tmp_path: Path) -> None:
    """Bad input must be a 400: stock tarfile lets a ValueError out of a truncated
    GNU sparse 1.0 map, which the API would answer with a 500."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("s")
        info.size = 4
        info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0"}
        tf.addfile(info, io.BytesIO(b"xxxx"))  # not "<count>\n<offset>\n<size>\n"
    data = out.getvalue()
    with pytest.raises(ValueError):
        read_stock(io.BytesIO(data))
    with pytest.raises(tarfile.ReadError):
        read_bounded(io.BytesIO(data))
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(archive.ArchiveError):
        archive.extract(io.BytesIO(data), str(root), chown=False)
    with pytest.raises(archive.ArchiveError):
        archive.check_names(io.BytesIO(data))


def test_every_untrusted_reader_goes_through_the_limits(tmp_path: Path) -> None:
    """Layer extraction, cp's name check and docker load's spooling all refuse."""
    body = meta_header(tarfile.GNUTYPE_LONGNAME, 4 * GiB)
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(archive.ArchiveError, match="claims 4294967296 bytes"):
        archive.extract(Endless(body), str(root), chown=False)  # type: ignore[arg-type]
    with pytest.raises(archive.ArchiveError, match="claims 4294967296 bytes"):
        archive.check_names(Endless(body))  # type: ignore[arg-type]
    spool = tmp_path / "spool"
    spool.mkdir()
    with pytest.raises(InvalidImage, match="claims 4294967296 bytes"):
        loader._spool_archive(Endless(body), loader._Spool(str(spool)))  # type: ignore[arg-type]
    assert os.listdir(spool) == []
