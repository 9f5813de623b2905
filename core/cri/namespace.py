"""The CRI's namespace of the engine's containers (no grpc here: the Docker
API imports it).

Pods and their containers are engine containers carrying this label, as
containerd keeps Kubernetes' in its ``k8s.io`` namespace: ``docker ps`` (even
``-a``) does not list them unless a label filter names the key
(``docker ps -a --filter label=io.skiff.cri.namespace``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

NAMESPACE_LABEL = "io.skiff.cri.namespace"
NAMESPACE = "k8s.io"


def in_cri_namespace(config: Mapping[str, Any]) -> bool:
    """Whether a container (its ``Config``) belongs to the CRI."""
    return NAMESPACE_LABEL in (config.get("Labels") or {})


def asks_for_cri(label_filters: Sequence[str]) -> bool:
    """Whether ``docker ps --filter label=...`` names the CRI's namespace."""
    return any(f.partition("=")[0] == NAMESPACE_LABEL for f in label_filters)
