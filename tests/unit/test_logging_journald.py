"""The journald log driver: refused without a journal, and the native
protocol as a listener bound where the driver is told the journal is
(``SKIFF_JOURNAL_SOCKET``) decodes it: Docker's fields, the binary-safe form,
a large entry in a sealed memfd."""

from __future__ import annotations

import array
import fcntl
import os
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from skiff.core.containers.streams import MAX_LINE
from skiff.core.errors import SkiffError
from skiff.core.hookspecs import LogContext, LogMessage, PartialMeta
from skiff.plugins.logging import journald

CID = "0123456789ab" + "c" * 52


def ctx(**options: str) -> LogContext:
    return LogContext(CID, "/web", "/nonexistent", dict(options), image_name="busybox:1",
                      labels={"com.example.team": "a"},
                      env=["A=1", "MULTI=x\ny", "BIG=" + "z" * 300_000])


def decode(data: bytes) -> list[tuple[str, bytes]]:
    """The journal's native protocol, read as journald reads it."""
    out = []
    while data:
        nl = data.index(b"\n")
        head = data[:nl]
        if b"=" in head:
            name, _, value = head.partition(b"=")
            data = data[nl + 1:]
        else:
            name = head
            (size,) = struct.unpack("<Q", data[nl + 1:nl + 9])
            value = data[nl + 9:nl + 9 + size]
            assert data[nl + 9 + size:nl + 10 + size] == b"\n"
            data = data[nl + 10 + size:]
        out.append((name.decode(), value))
    return out


@pytest.fixture
def journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = str(tmp_path / "journal.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    monkeypatch.setenv("SKIFF_JOURNAL_SOCKET", path)
    yield sock
    sock.close()


def receive(sock: socket.socket, memfd: bool = False) -> bytes:
    data, anc, _, _ = sock.recvmsg(1 << 20, socket.CMSG_SPACE(4))
    assert bool(anc) == memfd
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            (fd,) = array.array("i", payload[:4])
            try:
                # journald accepts only a sealed memfd (or a file)
                seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
                assert seals & fcntl.F_SEAL_WRITE and seals & fcntl.F_SEAL_SEAL
                return os.pread(fd, os.fstat(fd).st_size, 0)
            finally:
                os.close(fd)
    return data


def test_refused_at_create_without_a_journal(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKIFF_JOURNAL_SOCKET", str(tmp_path / "none"))
    with pytest.raises(ValueError) as exc:
        journald.skiff_container_validate({"LogConfig": {"Type": "journald", "Config": {}}})
    assert str(exc.value) == (f"journald is not enabled on this host: no journal listening on "
                              f"{tmp_path / 'none'} (No such file or directory)")
    with pytest.raises(SkiffError, match="journald is not enabled on this host"):
        journald.JournaldDriver(ctx())


def test_unknown_option_refused_in_dockerds_words(journal: socket.socket) -> None:
    with pytest.raises(ValueError, match="unknown log opt 'syslog-address' for journald"):
        journald.skiff_container_validate({"LogConfig": {"Type": "journald", "Config": {
            "syslog-address": "udp://x"}}})
    journald.skiff_container_validate({"LogConfig": {"Type": "journald", "Config": {
        "tag": "{{.Name}}", "labels": "a", "env-regex": "^A", "mode": "non-blocking"}}})


def test_sanitized_keys_as_dockerd() -> None:
    assert journald.sanitize_key("com.example.team") == "COM_EXAMPLE_TEAM"
    assert journald.sanitize_key("_x-y9") == "X_Y9"
    assert journald.sanitize_key("..a") == "A"


def test_fields_as_dockerd(journal: socket.socket) -> None:
    d = journald.JournaldDriver(ctx(tag="{{.Name}}", labels="com.example.team", env="A,MULTI"))
    d.write(LogMessage("stdout", b"hello\n", time.time()))
    d.write(LogMessage("stderr", b"two\nlines\n", time.time()))
    first, second = decode(receive(journal)), decode(receive(journal))
    d.close()
    assert first[:2] == [("PRIORITY", b"6"), ("MESSAGE", b"hello")]
    assert dict(first) == {
        "PRIORITY": b"6", "MESSAGE": b"hello", "CONTAINER_ID": b"0123456789ab",
        "CONTAINER_ID_FULL": CID.encode(), "CONTAINER_NAME": b"web", "CONTAINER_TAG": b"web",
        "IMAGE_NAME": b"busybox:1", "SYSLOG_IDENTIFIER": b"web",
        "COM_EXAMPLE_TEAM": b"a", "A": b"1", "MULTI": b"x\ny",  # binary-safe form
    }
    assert dict(second)["PRIORITY"] == b"3" and dict(second)["MESSAGE"] == b"two\nlines"


def test_partial_pieces_and_a_large_entry_in_a_memfd(journal: socket.socket) -> None:
    d = journald.JournaldDriver(ctx())
    piece = b"p" * MAX_LINE
    ident = "a" * 64
    # a cut line's pieces, then a whole line
    d.write(LogMessage("stdout", piece, time.time(), partial=PartialMeta(ident, 1, False)))
    d.write(LogMessage("stdout", b"end\n", time.time(), partial=PartialMeta(ident, 2, True)))
    d.write(LogMessage("stdout", b"whole\n", time.time()))
    got = [dict(decode(receive(journal))) for _ in range(3)]
    assert got[0]["CONTAINER_PARTIAL_MESSAGE"] == b"true" and got[0]["MESSAGE"] == piece
    assert (got[0]["CONTAINER_PARTIAL_ID"], got[0]["CONTAINER_PARTIAL_ORDINAL"],
            got[0]["CONTAINER_PARTIAL_LAST"]) == (ident.encode(), b"1", b"false")
    assert "CONTAINER_PARTIAL_MESSAGE" not in got[1] and got[1]["MESSAGE"] == b"end"
    assert (got[1]["CONTAINER_PARTIAL_ORDINAL"], got[1]["CONTAINER_PARTIAL_LAST"]) == (
        b"2", b"true")
    assert not any(k.startswith("CONTAINER_PARTIAL") for k in got[2])
    assert got[0]["SYSLOG_IDENTIFIER"] == b"0123456789ab"  # the default tag
    d.close()
    # 300 kB of environment: too large for one datagram, sent as a sealed memfd
    d = journald.JournaldDriver(ctx(env="BIG"))
    d.write(LogMessage("stdout", b"big\n", time.time()))
    entry = dict(decode(receive(journal, memfd=True)))
    d.close()
    assert entry["MESSAGE"] == b"big" and entry["BIG"] == b"z" * 300_000
