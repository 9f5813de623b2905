"""SPDY/3.1 framing (core/cri/spdy.py) and the pieces of the streaming protocols
that need no daemon: frames round-trip through the parser in any chunking, the
header compression is the specification's (its dictionary), garbage only ever
raises ProtocolError, and a session on an in-memory stream answers streams,
pings and FIN as a spdystream client expects."""

from __future__ import annotations

import contextlib
import hashlib
import json
import struct
import zlib

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from skiff.core.cri import spdy
from skiff.core.cri.remotecommand import Sizes, expected_streams, status_json
from skiff.core.cri.spdysession import SpdySession
from skiff.core.cri.streaming import parse_address
from skiff.core.errors import InvalidParameter


def test_dictionary_is_the_specifications() -> None:
    # SPDY/3's dictionary: 1423 bytes, the digest of the one every implementation uses
    assert len(spdy.DICTIONARY) == 1423
    assert hashlib.sha256(spdy.DICTIONARY).hexdigest() == (
        "51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02")
    assert spdy.DICTIONARY.startswith(b"\x00\x00\x00\x07options\x00\x00\x00\x04head")


names = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz-0123456789"), min_size=1,
                max_size=20)
values = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
headers = st.dictionaries(names, values, max_size=8)


@given(st.lists(headers, min_size=1, max_size=5))
def test_header_blocks_round_trip_on_one_zlib_stream(blocks: list[dict[str, str]]) -> None:
    a, b = spdy.HeaderCodec(), spdy.HeaderCodec()
    for h in blocks:  # each block depends on the ones before: one stream a session
        assert b.decode(a.encode(h)) == h


frames = st.one_of(
    st.builds(lambda sid, data, fin: ("data", sid, data, fin),
              st.integers(1, 2**31 - 1), st.binary(max_size=3000), st.booleans()),
    st.builds(lambda sid, h, fin: ("syn", sid, h, fin),
              st.integers(1, 2**31 - 1), headers, st.booleans()),
    st.builds(lambda sid, h: ("reply", sid, h, False), st.integers(1, 2**31 - 1), headers),
    st.builds(lambda sid, code: ("rst", sid, code, False), st.integers(1, 2**31 - 1),
              st.integers(0, 2**32 - 1)),
    st.builds(lambda pid: ("ping", 0, pid, False), st.integers(0, 2**32 - 1)),
    st.builds(lambda sid, delta: ("window", sid, delta, False), st.integers(0, 2**31 - 1),
              st.integers(1, 2**31 - 1)),
)


@settings(max_examples=200)
@given(st.lists(frames, max_size=12), st.integers(1, 5000))
def test_frames_round_trip_in_any_chunking(items: list[tuple], chunk: int) -> None:
    out = spdy.HeaderCodec()
    wire = b""
    for kind, sid, arg, fin in items:
        if kind == "data":
            wire += spdy.data_frame(sid, arg, fin)
        elif kind == "syn":
            wire += spdy.syn_stream(out, sid, arg, fin)
        elif kind == "reply":
            wire += spdy.syn_reply(out, sid, arg)
        elif kind == "rst":
            wire += spdy.rst_stream(sid, arg)
        elif kind == "ping":
            wire += spdy.ping(arg)
        else:
            wire += spdy.window_update(sid, arg)
    parser = spdy.Parser(spdy.HeaderCodec())
    got: list[spdy.Frame] = []
    for at in range(0, len(wire), chunk):
        got += parser.feed(wire[at:at + chunk])
    assert len(got) == len(items)
    for (kind, sid, arg, fin), f in zip(items, got, strict=True):
        if kind == "data":
            assert (f.kind, f.stream_id, f.data, f.fin) == (0, sid, arg, fin)
        elif kind in ("syn", "reply"):
            assert f.kind == (spdy.SYN_STREAM if kind == "syn" else spdy.SYN_REPLY)
            assert (f.stream_id, f.headers, f.fin) == (sid, arg, fin)
        elif kind == "rst":
            assert (f.kind, f.stream_id, f.value) == (spdy.RST_STREAM, sid, arg)
        elif kind == "ping":
            assert (f.kind, f.value) == (spdy.PING, arg)
        else:
            assert (f.kind, f.stream_id, f.value) == (spdy.WINDOW_UPDATE, sid, arg)


@settings(max_examples=300)
@given(st.binary(max_size=400))
def test_garbage_only_raises_protocol_error(data: bytes) -> None:
    parser = spdy.Parser(spdy.HeaderCodec())
    with contextlib.suppress(spdy.ProtocolError):
        parser.feed(data)


@given(st.binary(min_size=1, max_size=200))
def test_garbage_header_blocks_are_protocol_errors(block: bytes) -> None:
    frame = struct.pack(">HHI", 0x8003, spdy.SYN_STREAM, 10 + len(block)) + \
        struct.pack(">IIBB", 1, 0, 0, 0) + block
    with contextlib.suppress(spdy.ProtocolError):
        spdy.Parser(spdy.HeaderCodec()).feed(frame)


def test_limits() -> None:
    parser = spdy.Parser(spdy.HeaderCodec())
    with pytest.raises(spdy.ProtocolError, match="a frame of"):
        parser.feed(struct.pack(">II", 1, spdy.MAX_FRAME + 1))
    with pytest.raises(spdy.ProtocolError, match="version 2"):
        spdy.Parser(spdy.HeaderCodec()).feed(struct.pack(">HHI", 0x8002, 1, 0))
    # a header block that inflates beyond the limit
    c = zlib.compressobj(zdict=spdy.DICTIONARY)
    raw = struct.pack(">I", 1) + struct.pack(">I", 1) + b"a" + \
        struct.pack(">I", spdy.MAX_HEADER_BLOCK) + b"x" * spdy.MAX_HEADER_BLOCK
    block = c.compress(raw) + c.flush(zlib.Z_SYNC_FLUSH)
    with pytest.raises(spdy.ProtocolError, match="too large"):
        spdy.HeaderCodec().decode(block)
    # unknown control frames are skipped, as the specification says
    assert spdy.Parser(spdy.HeaderCodec()).feed(struct.pack(">HHI", 0x8003, 99, 0)) == []


def test_resize_messages_in_pieces() -> None:
    sizes = Sizes()
    wire = json.dumps({"Width": 101, "Height": 33}) + "\n" + json.dumps(
        {"Width": 80, "Height": 24}) + "\n" + '{"Width": 0, "Height": 5}\n'
    got = []
    for ch in wire:
        got += sizes.feed(ch.encode())
    assert got == [(33, 101), (24, 80)]  # (height, width); a zero size is no size


def test_status_messages_are_metav1_statuses() -> None:
    assert json.loads(status_json(0)) == {"metadata": {}, "status": "Success"}
    failed = json.loads(status_json(3))
    assert failed["reason"] == "NonZeroExitCode"
    assert failed["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]
    other = json.loads(status_json(None, "container gone"))
    assert other["status"] == "Failure" and other["message"] == "container gone"


def test_expected_streams() -> None:
    assert expected_streams(False, True, True, False) == {"error", "stdout", "stderr"}
    assert expected_streams(True, True, False, True) == {"error", "stdin", "stdout", "resize"}


def test_stream_address() -> None:
    assert parse_address("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_address("[::1]:10010") == ("::1", 10010)
    for bad in ("127.0.0.1", ":80", "host:x", "h:70000"):
        with pytest.raises(InvalidParameter, match="cri-stream-address"):
            parse_address(bad)


def test_session_answers_streams_pings_and_fin() -> None:
    """A client's view: SYN_STREAM gets SYN_REPLY, data reaches the stream, the
    server's data and FIN come back, an odd PING is echoed, a reset ends reads."""
    trio.run(_session_scenario)


async def _session_scenario() -> None:
    client_end, server_end = trio.testing.memory_stream_pair()
    session = SpdySession(server_end)
    client = spdy.HeaderCodec()
    parser = spdy.Parser(spdy.HeaderCodec())

    async def frames_until(pred: object) -> list[spdy.Frame]:
        got: list[spdy.Frame] = []
        with trio.fail_after(5):
            while not any(pred(f) for f in got):  # type: ignore[operator]
                got += parser.feed(await client_end.receive_some())
        return got

    async with trio.open_nursery() as n:
        n.start_soon(session.run)
        await client_end.send_all(spdy.syn_stream(client, 1, {"streamType": "stdin"}) +
                                  spdy.data_frame(1, b"hello") + spdy.ping(7))
        got = await frames_until(lambda f: f.kind == spdy.PING)
        assert [f.kind for f in got] == [spdy.SYN_REPLY, spdy.PING]
        assert got[1].value == 7
        s = await session.incoming.receive()
        assert s.headers == {"streamtype": "stdin"}  # names are lower case on the wire
        assert await s.receive_some() == b"hello"
        await s.send_all(b"x" * 70000)  # more than one of the server's frames
        await s.send_eof()
        got = await frames_until(lambda f: f.kind == 0 and f.fin)
        assert b"".join(f.data for f in got) == b"x" * 70000
        await client_end.send_all(spdy.data_frame(1, b"", fin=True))
        assert await s.receive_some() == b""
        # a second stream, reset by the client
        await client_end.send_all(spdy.syn_stream(client, 3, {"streamtype": "data"}) +
                                  spdy.rst_stream(3, spdy.CANCEL))
        s3 = await session.incoming.receive()
        assert await s3.receive_some() == b""
        # a stream id going backwards is the client's error: GOAWAY, the session ends
        await client_end.send_all(spdy.syn_stream(client, 1, {}))
        got = await frames_until(lambda f: f.kind == spdy.GOAWAY)
        assert got[-1].value == spdy.PROTOCOL_ERROR
        with trio.fail_after(5):
            await session.closed.wait()
