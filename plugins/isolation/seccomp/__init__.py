"""Seccomp for the skiff runtime (being built: see issue 13).

Until the filter exists, only ``unconfined`` is accepted; every other
request is refused rather than ignored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def check_request(value: str) -> None:
    """Refuse a ``seccomp=`` value that cannot be honoured."""
    if value not in ("", "unconfined"):
        raise ValueError("--security-opt seccomp=<profile> is not supported yet")


def security_options(config: Mapping[str, Any]) -> list[str]:
    """``docker info`` SecurityOptions entries for seccomp."""
    return []


def profile_for(value: str, config: Mapping[str, Any],
                capabilities: Sequence[str]) -> dict[str, Any] | None:
    """The resolved filter for one container, or None for none."""
    return None
