"""The CRI's bridge from gRPC's threads to trio, on a real trio loop and real threads:
results and errors come back, the bound holds, a client leaving cancels its call,
closing cancels every call and refuses new ones, a finished loop refuses at once."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
import trio

from skiff.core.cri.bridge import BridgeClosed, CallCancelled, TrioBridge


def in_thread(fn: Callable[[], Any]) -> Future[Any]:
    pool = ThreadPoolExecutor(1)
    fut = pool.submit(fn)
    pool.shutdown(wait=False)
    return fut


async def wait_for(check: Callable[[], bool], timeout: float = 5) -> None:
    with trio.fail_after(timeout):
        while not check():
            await trio.sleep(0.01)


async def result_of(fut: Future[Any]) -> Any:
    await wait_for(fut.done)
    return fut.result()


async def error_of(fut: Future[Any]) -> BaseException | None:
    await wait_for(fut.done)
    return fut.exception()


def test_result_and_error_cross_back() -> None:
    async def main() -> None:
        bridge = TrioBridge(trio.lowlevel.current_trio_token(), 4)
        loop_thread = threading.get_ident()

        async def where(x: int) -> tuple[int, bool]:
            await trio.sleep(0)
            return x * 2, threading.get_ident() == loop_thread

        async def boom() -> None:
            raise LookupError("no such thing")

        assert await result_of(in_thread(lambda: bridge.call(where, 21))) == (42, True)
        err = await error_of(in_thread(lambda: bridge.call(boom)))
        assert isinstance(err, LookupError) and str(err) == "no such thing"
        assert bridge.in_flight == 0

    trio.run(main)


def test_the_bound_holds() -> None:
    async def main() -> None:
        bridge = TrioBridge(trio.lowlevel.current_trio_token(), 2)
        running = 0
        most = 0
        release = trio.Event()

        async def work() -> None:
            nonlocal running, most
            running += 1
            most = max(most, running)
            await release.wait()
            running -= 1

        futs = [in_thread(lambda: bridge.call(work)) for _ in range(5)]
        await wait_for(lambda: bridge.in_flight == 5)
        await trio.sleep(0.2)
        assert running == 2  # three wait for the limiter, on the loop
        release.set()
        for fut in futs:
            await result_of(fut)
        assert most == 2

    trio.run(main)


def test_client_leaving_cancels_its_call() -> None:
    async def main() -> None:
        bridge = TrioBridge(trio.lowlevel.current_trio_token(), 4)
        callbacks: list[Callable[[], None]] = []
        cleaned = trio.Event()

        async def forever() -> None:
            try:
                await trio.sleep_forever()
            finally:
                cleaned.set()

        def on_done(cb: Callable[[], None]) -> bool:
            callbacks.append(cb)
            return True

        fut = in_thread(lambda: bridge.call(forever, on_done=on_done))
        await wait_for(lambda: bridge.in_flight == 1 and bool(callbacks))
        await trio.sleep(0.05)
        threading.Thread(target=callbacks[0]).start()  # gRPC runs it on its own thread
        assert isinstance(await error_of(fut), CallCancelled)
        assert cleaned.is_set()

        # a client gone before the call began: refused without running anything
        ran = []

        async def never() -> None:
            ran.append(1)

        err = await error_of(in_thread(lambda: bridge.call(never, on_done=lambda cb: False)))
        assert isinstance(err, CallCancelled) and not ran
        assert bridge.in_flight == 0

    trio.run(main)


def test_close_cancels_in_flight_and_refuses_new() -> None:
    async def main() -> None:
        bridge = TrioBridge(trio.lowlevel.current_trio_token(), 4)

        async def forever() -> None:
            await trio.sleep_forever()

        futs = [in_thread(lambda: bridge.call(forever)) for _ in range(3)]
        await wait_for(lambda: bridge.in_flight == 3)
        await trio.sleep(0.05)
        bridge.close()
        with trio.fail_after(5):
            await bridge.wait_idle()
        for fut in futs:
            assert isinstance(await error_of(fut), BridgeClosed)
        assert isinstance(await error_of(in_thread(lambda: bridge.call(forever))),
                          BridgeClosed)

    trio.run(main)


def test_a_finished_loop_refuses_at_once() -> None:
    box: list[TrioBridge] = []

    async def main() -> None:
        box.append(TrioBridge(trio.lowlevel.current_trio_token(), 4))

    trio.run(main)

    async def anything() -> None:
        pass

    with pytest.raises(BridgeClosed, match="shutting down"):
        box[0].call(anything)
