"""What every CRI handler shares: a call through the bridge, errors as gRPC
statuses, and UNIMPLEMENTED (with the RPC's name) for what skiff does not do."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc
import structlog

from skiff.core.cri.bridge import BridgeClosed, CallCancelled, TrioBridge
from skiff.core.cri.status import code_of
from skiff.core.errors import SkiffError

log = structlog.get_logger("skiff.cri")

T = TypeVar("T")


class Calls:
    """Runs a handler's engine work on the trio loop (``run``), or a lookup on
    gRPC's own thread (``read``), and answers their failures."""

    def __init__(self, bridge: TrioBridge) -> None:
        self.bridge = bridge

    def run(self, context: grpc.ServicerContext, rpc: str,
            fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        try:
            return self.bridge.call(fn, *args, on_done=context.add_callback)
        except Exception as exc:
            self._fail(context, rpc, exc)

    def read(self, context: grpc.ServicerContext, rpc: str, fn: Callable[..., T],
             *args: Any) -> T:
        """``fn(*args)`` on the calling gRPC thread, without the trio round trip.

        Only for lookups that read what is safe to read off the loop; each
        caller says in a comment what it reads and who writes it.  Two thread
        hops and a wake of the loop are what a status or a listing would
        otherwise cost (on a loaded machine, each hop waits for a core: a
        lookup took 2 to 4 ms, mostly waiting).  A lookup never blocks long and
        never changes the engine, so neither the bridge's bound nor its
        cancellation concerns it; once the daemon is shutting down it is
        refused as ``run`` refuses calls.
        """
        try:
            if self.bridge.closed:
                raise BridgeClosed("skiffd is shutting down")
            return fn(*args)
        except Exception as exc:
            self._fail(context, rpc, exc)

    def _fail(self, context: grpc.ServicerContext, rpc: str, exc: Exception) -> NoReturn:
        if isinstance(exc, BridgeClosed):
            log.info("cri.call_refused", rpc=rpc, reason=str(exc))
            abort(context, grpc.StatusCode.UNAVAILABLE, str(exc))
        if isinstance(exc, CallCancelled):
            log.info("cri.call_cancelled", rpc=rpc, reason="the client left or its deadline "
                     "passed")
            abort(context, grpc.StatusCode.CANCELLED, str(exc))
        if isinstance(exc, SkiffError):
            abort(context, code_of(exc), str(exc))
        # a bug, not the client's fault: logged with its trace, named to the client
        log.exception("cri.call_failed", rpc=rpc, exc_info=exc)
        abort(context, grpc.StatusCode.INTERNAL, f"{rpc}: {type(exc).__name__}: {exc}")


def abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    context.abort(code, message)
    raise AssertionError("unreachable: grpc's abort raises")  # pragma: no cover


def fill_unimplemented(cls: type, base: type, service: str) -> list[str]:
    """Give ``cls`` an UNIMPLEMENTED handler for each RPC of ``base`` (the
    generated servicer) it does not define itself; returns their names.

    The generated defaults answer "Method not implemented!"; kubelet and the
    operator reading its log deserve the RPC's name and where to read more.
    """
    missing = []
    for name in sorted(vars(base)):
        if name.startswith("_") or not callable(vars(base)[name]) or name in vars(cls):
            continue
        setattr(cls, name, _unimplemented(f"{service}/{name}"))
        missing.append(name)
    return missing


def _unimplemented(full_name: str) -> Callable[[Any, Any, grpc.ServicerContext], NoReturn]:
    message = f"{full_name} is not implemented by skiff's CRI yet (docs/cri.md)"

    def handler(self: Any, request: Any, context: grpc.ServicerContext) -> NoReturn:
        abort(context, grpc.StatusCode.UNIMPLEMENTED, message)

    handler.__name__ = full_name.rsplit("/", 1)[1]
    return handler
