"""The CRI's two ways to answer (core/cri/service.py), on a real gRPC server on
a unix socket and a real trio loop: ``Calls.read`` answers on gRPC's thread
without the loop, with the same statuses as ``Calls.run``, and is refused once
the bridge closes; and the record cache (core/cri/records.py)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
import trio

from skiff.core.cri.bridge import TrioBridge
from skiff.core.cri.records import parsed
from skiff.core.cri.runtime_v1 import api_pb2 as pb
from skiff.core.cri.runtime_v1 import api_pb2_grpc as rpc
from skiff.core.cri.service import Calls
from skiff.core.errors import NotFound


class Images(rpc.ImageServiceServicer):
    """ImageStatus answers through ``read`` what ``lookup`` gives; ListImages
    through ``run`` (the loop), to compare the two."""

    def __init__(self, calls: Calls, lookup: Callable[[], str]) -> None:
        self.calls = calls
        self.lookup = lookup

    def ImageStatus(self, request: pb.ImageStatusRequest, context: grpc.ServicerContext
                    ) -> pb.ImageStatusResponse:
        def work() -> pb.ImageStatusResponse:
            return pb.ImageStatusResponse(image=pb.Image(id=self.lookup()))
        return self.calls.read(context, "ImageStatus", work)

    def ListImages(self, request: pb.ListImagesRequest, context: grpc.ServicerContext
                   ) -> pb.ListImagesResponse:
        async def work() -> pb.ListImagesResponse:
            return pb.ListImagesResponse(images=[pb.Image(id=self.lookup())])
        return self.calls.run(context, "ListImages", work)


@contextlib.contextmanager
def serving(path: Path, calls: Calls, lookup: Callable[[], str]
            ) -> Iterator[rpc.ImageServiceStub]:
    server = grpc.server(ThreadPoolExecutor(4))
    rpc.add_ImageServiceServicer_to_server(Images(calls, lookup), server)
    server.add_insecure_port(f"unix:{path}")
    server.start()
    channel = grpc.insecure_channel(f"unix:{path}")
    try:
        yield rpc.ImageServiceStub(channel)
    finally:
        channel.close()
        server.stop(None).wait()


def code_of(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def test_read_answers_on_grpcs_thread_with_runs_statuses(tmp_path: Path) -> None:
    async def main() -> None:
        calls = Calls(TrioBridge(trio.lowlevel.current_trio_token(), 4))
        loop_thread = threading.get_ident()
        answers: list[str | Exception] = []

        def lookup() -> str:
            answer = answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return f"{answer} on the loop: {threading.get_ident() == loop_thread}"

        def client() -> list[Any]:
            out: list[Any] = []
            with serving(tmp_path / "s.sock", calls, lookup) as stub:
                req = pb.ImageStatusRequest(image=pb.ImageSpec(image="x"))
                answers.extend(["read", "run"])
                out.append(stub.ImageStatus(req, timeout=10).image.id)
                out.append(stub.ListImages(pb.ListImagesRequest(), timeout=10).images[0].id)
                answers.append(NotFound("no such image: x"))
                out.append(code_of(lambda: stub.ImageStatus(req, timeout=10)))
                answers.append(KeyError("a bug"))
                out.append(code_of(lambda: stub.ImageStatus(req, timeout=10)))
                trio.from_thread.run_sync(calls.bridge.close)  # the daemon shutting down
                answers.append("never")
                out.append(code_of(lambda: stub.ImageStatus(req, timeout=10)))
                out.append(answers)
            return out

        got = await trio.to_thread.run_sync(client)
        assert got == [
            "read on the loop: False",  # gRPC's thread answered, the loop was not asked
            "run on the loop: True",
            (grpc.StatusCode.NOT_FOUND, "no such image: x"),
            (grpc.StatusCode.INTERNAL, "ImageStatus: KeyError: 'a bug'"),
            (grpc.StatusCode.UNAVAILABLE, "skiffd is shutting down"),
            ["never"],  # refused before the lookup ran
        ]

    trio.run(main)


def test_a_record_is_parsed_once_and_bad_ones_are_none() -> None:
    text = '{"created": 1, "labels": {"a": "b"}}'
    first = parsed(text)
    assert first == {"created": 1, "labels": {"a": "b"}}
    assert parsed("".join(list(text))) is first  # the cache's: the same text is not parsed again
    assert parsed("") is None
    assert parsed("[1, 2]") is None
    assert parsed('{"broken"') is None
