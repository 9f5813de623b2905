"""The CRI's socket: grpcio's server, started and stopped by the daemon's nursery.

grpcio runs its own threads (the completion queue and a pool of handler
threads); nothing of it runs on the trio loop.  Handlers reach the engine only
through the ``TrioBridge`` (``bridge.py``).  On shutdown the bridge cancels
every call in flight first, so gRPC's grace period is spent answering them
UNAVAILABLE, not waiting for work that would outlive the engine.
"""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import grpc
import structlog
import trio

from skiff.core.api.http import _refuse_live_socket
from skiff.core.cri.bridge import TrioBridge
from skiff.core.cri.images import ImageService
from skiff.core.cri.runtime import RuntimeService
from skiff.core.cri.runtime_v1 import api_pb2_grpc as rpc
from skiff.core.cri.service import Calls
from skiff.core.cri.streaming import StreamingServer, handlers_for

if TYPE_CHECKING:
    from skiff.core.engine import Engine

log = structlog.get_logger("skiff.cri")

#: gRPC handler threads: each waits while its call runs on the loop
WORKERS = 32
#: calls accepted at once; past it gRPC answers RESOURCE_EXHAUSTED at once
#: rather than queueing without end
MAX_RPCS = 256
#: calls running on the trio loop at once (the bridge's limiter)
LOOP_CALLS = 16
#: seconds gRPC gives cancelled calls to answer before it drops them
SHUTDOWN_GRACE = 5.0
#: kubelet's own limit on a CRI message (ListContainers of a full node)
MAX_MESSAGE = 16 << 20


async def serve_cri(engine: Engine, path: str, stream_address: str = "127.0.0.1:0", *,
                    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve runtime.v1 on the unix socket ``path`` until cancelled; the
    socket is gone when this returns."""
    await _refuse_live_socket(path)
    async with trio.open_nursery() as nursery:
        streaming = StreamingServer(stream_address, handlers_for(engine))
        # listening before the first call can ask for a URL
        await nursery.start(streaming.serve)
        await _serve_grpc(engine, path, streaming, task_status)


async def _serve_grpc(engine: Engine, path: str, streaming: StreamingServer,
                      task_status: trio.TaskStatus[str]) -> None:
    os.makedirs(os.path.dirname(path) or "/", exist_ok=True)
    bridge = TrioBridge(trio.lowlevel.current_trio_token(), LOOP_CALLS)
    calls = Calls(bridge)
    pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="skiff-cri")
    server = grpc.server(pool, maximum_concurrent_rpcs=MAX_RPCS, options=[
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.max_send_message_length", MAX_MESSAGE),
    ])
    rpc.add_RuntimeServiceServicer_to_server(RuntimeService(engine, calls, streaming), server)
    rpc.add_ImageServiceServicer_to_server(ImageService(engine, calls), server)
    inode: int | None = None
    try:
        try:
            server.add_insecure_port("unix:" + path)  # binds the socket now
        except RuntimeError as exc:
            raise OSError(f"cannot serve the CRI on {path}: {exc}") from exc
        inode = os.stat(path).st_ino
        os.chmod(path, 0o660)  # kubelet runs as root; nobody else drives pods
        server.start()
        log.info("cri.listening", socket=path, workers=WORKERS, loop_calls=LOOP_CALLS)
        task_status.started(path)
        await trio.sleep_forever()
    finally:
        with trio.CancelScope(shield=True):
            in_flight = bridge.in_flight
            bridge.close()
            stopped = server.stop(SHUTDOWN_GRACE)  # refuses new calls from now on
            # the engine outlives every call it serves: its shutdown comes after this
            await bridge.wait_idle()
            await trio.to_thread.run_sync(stopped.wait)
            pool.shutdown(wait=False)
            if inode is not None:
                with contextlib.suppress(OSError):
                    if os.stat(path).st_ino == inode:
                        os.unlink(path)
            log.info("cri.stopped", socket=path, cancelled_calls=in_flight)
