"""The one door between gRPC's threads and the daemon's trio loop.

grpcio serves each call on a thread of its own pool; the engine lives on the
trio loop and is not thread-safe.  A handler therefore never touches the engine
itself: it hands an async function to :meth:`TrioBridge.call`, which runs it on
the loop through ``trio.from_thread.run`` with the daemon's trio token, inside
a cancel scope of its own, and blocks the gRPC thread until it is done.

Three things end a call early, each by cancelling that scope, so the engine
sees an ordinary trio cancellation and cleans up as it does for an HTTP client
that goes away:

* the client cancels or its deadline passes (gRPC's termination callback);
* the daemon shuts down (:meth:`TrioBridge.close` cancels every call in flight
  and refuses new ones, before the engine shuts down);
* never a hang: a call refused because the loop is gone fails at once.

The bound: at most ``limit`` calls run on the loop at a time (a
``trio.CapacityLimiter`` taken inside the loop, so a flood of calls queues
there, cancellable, instead of holding the engine's own thread limiters).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

T = TypeVar("T")


class BridgeClosed(Exception):
    """The daemon is shutting down: the call was refused or cut short."""


class CallCancelled(Exception):
    """The client went away (cancelled, or its deadline passed) mid-call."""


class TrioBridge:
    """Runs async functions on the daemon's trio loop for gRPC's threads."""

    def __init__(self, token: trio.lowlevel.TrioToken, limit: int) -> None:
        self._token = token
        self._limiter = trio.CapacityLimiter(limit)
        self._lock = threading.Lock()
        self._scopes: set[trio.CancelScope] = set()
        self._closed = False
        #: calls running on the loop (touched on the trio thread only)
        self._running = 0
        self._idle = trio.Event()
        self._idle.set()

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._scopes)

    @property
    def closed(self) -> bool:
        """The daemon is shutting down: no call is taken any more."""
        with self._lock:
            return self._closed

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any,
             on_done: Callable[[Callable[[], None]], object] | None = None) -> T:
        """``await fn(*args)`` on the trio loop; called from a gRPC thread.

        ``on_done`` registers a callback run when the RPC ends (gRPC's
        ``context.add_callback``): if the client leaves first, it cancels the
        call.  Raises ``BridgeClosed`` when the daemon is shutting down and
        ``CallCancelled`` when the client left.
        """
        scope = trio.CancelScope()
        with self._lock:
            if self._closed:
                raise BridgeClosed("skiffd is shutting down")
            self._scopes.add(scope)
        try:
            # False: the RPC already ended (the client left before we began)
            if on_done is not None and on_done(lambda: self._cancel_soon(scope)) is False:
                raise CallCancelled("the client cancelled the call")
            return trio.from_thread.run(self._run, scope, fn, args, trio_token=self._token)
        except trio.RunFinishedError:
            raise BridgeClosed("skiffd is shutting down") from None
        finally:
            with self._lock:
                self._scopes.discard(scope)

    async def _run(self, scope: trio.CancelScope, fn: Callable[..., Awaitable[T]],
                   args: tuple[Any, ...]) -> T:
        self._running += 1
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        try:
            with scope:
                async with self._limiter:
                    return await fn(*args)
        except Exception as exc:
            # cancelled while in a blocking thread, the work may end in an error
            # of its own (a registry timeout): the cause of its end is the cancel
            if scope.cancel_called:
                raise self._why() from exc
            raise
        finally:
            self._running -= 1
            if not self._running:
                self._idle.set()
        # only reached when the scope was cancelled (the block above returns)
        raise self._why()

    def _why(self) -> BridgeClosed | CallCancelled:
        with self._lock:
            closed = self._closed
        if closed:
            return BridgeClosed("skiffd is shutting down")
        return CallCancelled("the client cancelled the call")

    def _cancel_soon(self, scope: trio.CancelScope) -> None:
        """Cancel ``scope`` from any thread; a no-op once the loop is gone."""
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(scope.cancel)

    async def wait_idle(self) -> None:
        """Until no call runs on the loop: after ``close``, the engine may shut
        down.  A call cancelled inside a blocking driver call (a registry
        read) ends when that returns, within the registry timeout."""
        await self._idle.wait()

    def close(self) -> None:
        """Refuse new calls and cancel those in flight (on the trio thread)."""
        with self._lock:
            self._closed = True
            scopes = list(self._scopes)
        for scope in scopes:
            scope.cancel()
