"""The syslog log driver against real servers on 127.0.0.1 and unix sockets:
every format byte for byte, framing, TLS with a test CA, dockerd's refusals,
reconnecting."""

from __future__ import annotations

import datetime
import os
import re
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from skiff.core.errors import SkiffError
from skiff.core.hookspecs import LogContext, LogMessage
from skiff.plugins.logging import syslog
from tests.syslogserver import SyslogServer, make_ca

CID = "0123456789ab" + "c" * 52
HOST = socket.gethostname()
PID = os.getpid()
#: 2026-11-28T01:02:03.123456 UTC: every message of these tests carries it
T = 1795827723.123456


def ctx(**options: str) -> LogContext:
    return LogContext(CID, "/web", "/nonexistent", dict(options), image_name="busybox:1")


def line(text: bytes, stream: str = "stdout") -> LogMessage:
    return LogMessage(stream, text, T)  # type: ignore[arg-type]


def rfc3339(micro: bool) -> str:
    # independent of the driver: the standard library's ISO format, Go's "Z" for UTC
    local = datetime.datetime.fromtimestamp(T).astimezone()
    text = local.isoformat(timespec="microseconds" if micro else "seconds")
    return re.sub(r"\+00:00$", "Z", text)


def stamp() -> str:
    local = datetime.datetime.fromtimestamp(T)
    return local.strftime("%b ") + f"{local.day:2d}" + local.strftime(" %H:%M:%S")


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[SyslogServer]]:
    made: list[SyslogServer] = []
    yield made
    for s in made:
        s.stop()


def serve(servers: list[SyslogServer], proto: str, where: Path | None = None,
          pem: Path | None = None) -> SyslogServer:
    s = SyslogServer(proto, where, pem)
    servers.append(s)
    return s


# -- options ---------------------------------------------------------------------


@pytest.mark.parametrize(("opts", "words"), [
    ({"max-size": "1m"}, "unknown log opt 'max-size' for syslog log driver"),
    ({"syslog-address": "127.0.0.1:514"},
     "syslog-address should be in form proto://address, got 127.0.0.1:514"),
    ({"syslog-address": "http://x"}, "syslog-address should be in form proto://address, got http://x"),
    ({"syslog-address": "unix:///nonexistent/log"},
     "stat /nonexistent/log: no such file or directory"),
    ({"syslog-facility": "nope"}, "invalid syslog facility"),
    ({"syslog-facility": "24"}, "invalid syslog facility"),
    ({"syslog-format": "rfc9999"}, "Invalid syslog format"),
    ({"tag": "{{.Nope}}"}, "{{Nope}}"),
])
def test_bad_options_refused_in_dockerds_words(opts: dict[str, str], words: str) -> None:
    with pytest.raises(ValueError) as exc:
        syslog.skiff_container_validate({"LogConfig": {"Type": "syslog", "Config": opts}})
    assert words in str(exc.value).replace("{{.", "{{")


def test_good_options_and_the_generic_keys_pass() -> None:
    syslog.skiff_container_validate({"LogConfig": {"Type": "syslog", "Config": {
        "syslog-address": "udp://10.0.0.1", "syslog-facility": "local7",
        "syslog-format": "rfc5424micro", "tag": "{{.Name}}", "env": "A", "labels": "x",
        "mode": "non-blocking", "max-buffer-size": "1m"}}})
    assert syslog.parse_address("tcp://example.org") == syslog.Address("tcp", "example.org", 514)
    assert syslog.parse_address("udp://[::1]:5514") == syslog.Address("udp", "::1", 5514)
    assert syslog.parse_facility("") == 3 and syslog.parse_facility("17") == 17
    assert syslog.parse_facility("local0") == 16


def test_tls_files_that_cannot_load_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="syslog-tls-ca-cert"):
        syslog.parse_options({"syslog-address": "tcp+tls://127.0.0.1",
                              "syslog-tls-ca-cert": str(tmp_path / "none.pem")})
    with pytest.raises(ValueError, match="together"):
        syslog.parse_options({"syslog-address": "tcp+tls://127.0.0.1",
                              "syslog-tls-cert": str(tmp_path / "c.pem")})


# -- formats and framing, per transport ----------------------------------------------


def test_udp_rfc5424_one_datagram_per_message(servers: list[SyslogServer]) -> None:
    s = serve(servers, "udp")
    d = syslog.SyslogDriver(ctx(**{"syslog-address": s.address, "syslog-format": "rfc5424",
                                   "tag": "{{.Name}}/{{.ID}}"}))
    d.write(line(b"hello\n"))
    d.write(line(b"oops\n", "stderr"))
    d.write(line(b"\n"))  # an empty line: not sent, as dockerd
    d.write(line(b"no newline"))
    s.wait_for(3)
    d.close()
    tag = "web/0123456789ab"
    head = f"1 {rfc3339(False)} {HOST} {tag} {PID} {tag} - "
    assert s.datagrams == [
        f"<30>{head}hello\n".encode(),  # daemon (3) * 8 + info (6)
        f"<27>{head}oops\n".encode(),  # + err (3)
        f"<30>{head}no newline\n".encode(),
    ]


def test_tcp_default_format_and_facility_newline_framed(servers: list[SyslogServer]) -> None:
    s = serve(servers, "tcp")
    d = syslog.SyslogDriver(ctx(**{"syslog-address": s.address, "syslog-facility": "local3"}))
    d.write(line(b"one\n"))
    d.write(line(b"two\n", "stderr"))
    got = s.wait_for(2)
    d.close()
    # the default: no host name, the short ID as the tag; local3 = 19
    assert got == (f"<158>{stamp()} 0123456789ab[{PID}]: one\n"
                   f"<155>{stamp()} 0123456789ab[{PID}]: two\n").encode()


def test_tcp_rfc3164_and_rfc5424micro(servers: list[SyslogServer]) -> None:
    s = serve(servers, "tcp")
    d = syslog.SyslogDriver(ctx(**{"syslog-address": s.address, "syslog-format": "rfc3164",
                                   "syslog-facility": "1"}))
    d.write(line(b"a\n"))
    assert s.wait_for(1) == f"<14>{stamp()} {HOST} 0123456789ab[{PID}]: a\n".encode()
    d.close()
    s2 = serve(servers, "tcp")
    d = syslog.SyslogDriver(ctx(**{"syslog-address": s2.address,
                                   "syslog-format": "rfc5424micro"}))
    d.write(line(b"b\n"))
    assert s2.wait_for(1) == (f"<30>1 {rfc3339(True)} {HOST} 0123456789ab {PID} "
                              f"0123456789ab - b\n").encode()
    d.close()


def test_tcp_tls_rfc5424_octet_counted_with_a_test_ca(servers: list[SyslogServer],
                                                       tmp_path: Path) -> None:
    ca, pem = make_ca(tmp_path)
    s = serve(servers, "tcp+tls", pem=pem)
    d = syslog.SyslogDriver(ctx(**{"syslog-address": s.address, "syslog-format": "rfc5424",
                                   "syslog-tls-ca-cert": str(ca)}))
    d.write(line(b"secret\n"))
    time.sleep(0.2)  # a TLS 1.3 server's session tickets arrive: not taken for an end
    d.write(line(b"x\n"))
    got = s.wait_for(2)
    d.close()
    assert s.connections == 1
    one = f"<30>1 {rfc3339(False)} {HOST} 0123456789ab {PID} 0123456789ab - secret\n".encode()
    two = f"<30>1 {rfc3339(False)} {HOST} 0123456789ab {PID} 0123456789ab - x\n".encode()
    assert got == b"%d %b%d %b" % (len(one), one, len(two), two)


def test_tcp_tls_default_format_is_newline_framed_and_verification(
        servers: list[SyslogServer], tmp_path: Path) -> None:
    ca, pem = make_ca(tmp_path)
    other_ca, _ = make_ca(tmp_path, "other")
    s = serve(servers, "tcp+tls", pem=pem)
    d = syslog.SyslogDriver(ctx(**{"syslog-address": s.address, "syslog-tls-ca-cert": str(ca)}))
    d.write(line(b"plain\n"))
    assert s.wait_for(1) == f"<30>{stamp()} 0123456789ab[{PID}]: plain\n".encode()
    d.close()
    # a server the CA did not sign: refused at start ...
    with pytest.raises(SkiffError, match="failed to initialize logging driver: dial tcp"):
        syslog.SyslogDriver(ctx(**{"syslog-address": s.address,
                                   "syslog-tls-ca-cert": str(other_ca)}))
    # ... unless verification is off (the key's presence is enough, as dockerd)
    d = syslog.SyslogDriver(ctx(**{"syslog-address": s.address,
                                   "syslog-tls-ca-cert": str(other_ca),
                                   "syslog-tls-skip-verify": "false"}))
    d.write(line(b"unverified\n"))
    assert s.wait_for(2).endswith(b"unverified\n")
    d.close()


def test_unixgram_and_unix(servers: list[SyslogServer], tmp_path: Path) -> None:
    for proto in ("unixgram", "unix"):
        s = serve(servers, proto, tmp_path)
        d = syslog.SyslogDriver(ctx(**{"syslog-address": s.address, "tag": "{{.ImageName}}"}))
        d.write(line(b"hi\n"))
        d.write(line(b"there\n"))
        got = s.wait_for(2)
        d.close()
        want = [f"<30>{stamp()} busybox:1[{PID}]: {w}\n".encode() for w in ("hi", "there")]
        if proto == "unixgram":
            assert s.datagrams == want
        else:
            assert got == b"".join(want)


def test_default_address_without_a_local_syslog_fails_the_start() -> None:
    if any(os.path.exists(p) and stat.S_ISSOCK(os.stat(p).st_mode) for p in syslog.LOCAL_PATHS):
        pytest.skip("this host has a local syslog socket")
    with pytest.raises(SkiffError, match="Unix syslog delivery error"):
        syslog.SyslogDriver(ctx())


# -- a server that goes away ---------------------------------------------------------------


def test_unreachable_server_fails_the_start(servers: list[SyslogServer]) -> None:
    s = serve(servers, "tcp")
    s.stop()
    with pytest.raises(SkiffError) as exc:
        syslog.SyslogDriver(ctx(**{"syslog-address": s.address}))
    assert str(exc.value) == (f"failed to initialize logging driver: dial tcp 127.0.0.1:{s.port}: "
                              "connect: connection refused")


def test_reconnects_after_a_restart_and_fails_fast_when_gone(
        servers: list[SyslogServer], monkeypatch: pytest.MonkeyPatch) -> None:
    s = serve(servers, "tcp")
    d = syslog.SyslogDriver(ctx(**{"syslog-address": s.address}))
    d.write(line(b"before\n"))
    s.wait_for(1)
    s.drop_connections()  # the server restarts: the hang-up is seen, nothing is lost
    time.sleep(0.2)
    d.write(line(b"after\n"))
    assert s.wait_for(2).endswith(b"after\n") and s.connections == 2
    s.stop()  # gone for good
    time.sleep(0.2)
    with pytest.raises(OSError):
        d.write(line(b"lost\n"))
    t0 = time.monotonic()
    for _ in range(1000):  # within RETRY_INTERVAL: no dialing, each fails at once
        with pytest.raises(OSError, match="not redialing"):
            d.write(line(b"lost\n"))
    assert time.monotonic() - t0 < syslog.RETRY_INTERVAL
    d.close()
