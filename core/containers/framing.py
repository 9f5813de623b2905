"""Docker's multiplexed stream (logs, attach and exec without a TTY).

Each frame is an 8-byte header ``[type, 0, 0, 0, size (uint32, big-endian)]``
then ``size`` bytes. The framing lives in the domain because the container
streams produce it; the API layer (core/api/streams.py) only re-exports it.
"""

from __future__ import annotations

import struct

# Stream types of a frame's first byte, as dockerd's stdcopy numbers them.
STDIN = 0
STDOUT = 1
STDERR = 2
#: dockerd's "systemerr": an error of the daemon itself, inside the stream
SYSTEM = 3

#: the stream names the container streams use -> their frame type
STREAM_TYPES = {"stdin": STDIN, "stdout": STDOUT, "stderr": STDERR}

HEADER = struct.Struct(">BxxxL")
HEADER_SIZE = HEADER.size  # 8
#: a frame's payload length is a uint32
MAX_FRAME = 0xFFFFFFFF


def multiplex_frame(stream_type: int, data: bytes) -> bytes:
    """One frame of the multiplexed stream: 8-byte header then ``data``."""
    if len(data) > MAX_FRAME:
        # dockerd never writes frames this big; splitting keeps the header's uint32 honest
        return b"".join(multiplex_frame(stream_type, data[i:i + MAX_FRAME])
                        for i in range(0, len(data), MAX_FRAME))
    return HEADER.pack(stream_type, len(data)) + data
