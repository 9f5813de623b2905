"""Bridges between async HTTP bodies and the blocking code that reads or writes tars.

Image load/import read a file-like object and save writes one; they run in a
worker thread.  A pipe joins the two sides, so a multi-gigabyte upload or
download streams through with a fixed amount of memory.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from typing import IO, TypeVar

import trio

T = TypeVar("T")

CHUNK = 256 * 1024


async def feed_sync_consumer(
    chunks: AsyncIterator[bytes],
    consumer: Callable[[IO[bytes]], T],
    limiter: trio.CapacityLimiter,
) -> T:
    """Run ``consumer(file)`` in a thread while ``chunks`` are written into ``file``."""
    r, w = os.pipe2(os.O_CLOEXEC)
    reader = os.fdopen(r, "rb", buffering=CHUNK)
    result: list[T] = []

    def run() -> None:
        with reader:
            result.append(consumer(reader))

    async def feed() -> None:
        async with trio.lowlevel.FdStream(w) as out:
            async for chunk in chunks:
                try:
                    await out.send_all(chunk)
                except trio.BrokenResourceError:
                    # The consumer stopped reading (bad input); its error is the one to report.
                    return

    try:
        async with trio.open_nursery() as n:
            n.start_soon(feed)
            await trio.to_thread.run_sync(run, limiter=limiter)
    finally:
        reader.close()  # when cancelled before the thread ran; idempotent otherwise
    return result[0]


async def stream_sync_producer(
    producer: Callable[[IO[bytes]], None],
    limiter: trio.CapacityLimiter,
    nursery: trio.Nursery,
) -> AsyncIterator[bytes]:
    """Yield what ``producer(file)`` writes into ``file`` from a thread.

    The thread runs in ``nursery`` (the engine's), not in a nursery of this
    generator: a generator must not yield from inside its own nursery.  If
    the client goes away the pipe breaks and the producer ends with it.
    """
    r, w = os.pipe2(os.O_CLOEXEC)
    writer = os.fdopen(w, "wb", buffering=CHUNK)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            with writer:
                producer(writer)
        except BrokenPipeError:
            pass
        except BaseException as exc:
            failure.append(exc)

    async def run_in_thread() -> None:
        await trio.to_thread.run_sync(run, limiter=limiter)

    nursery.start_soon(run_in_thread)
    async with trio.lowlevel.FdStream(r) as source:
        while data := await source.receive_some(CHUNK):
            yield data
    if failure:
        raise failure[0]
