"""What a pull or a push works with, as the engine hands it over.

The image and layer stores it reads and fills, daemon.json's registry keys,
and the daemon's two kinds of worker threads: bounded ones for local work
(``to_thread``) and the transfer threads for blob up- and downloads whose
pace a registry sets (``transfer_thread``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from skiff.core.images.distribution.endpoints import RegistryConfig
from skiff.core.images.layers import LayerStore
from skiff.core.images.store import ImageStore

#: ``Engine.to_thread`` or ``Engine.transfer_thread``: ``fn(*args)`` on a worker thread
ToThread = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class DistributionContext:
    """The daemon's side of a pull or a push (built by the engine)."""

    images: ImageStore
    layers: LayerStore
    #: daemon.json's registry keys, resolved anew for each pull or push
    registry_config: Callable[[], RegistryConfig]
    to_thread: ToThread
    transfer_thread: ToThread
