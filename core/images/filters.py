"""Docker's image filters: those of ``GET /images/json`` and of ``POST /images/prune``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from skiff.core.errors import InvalidParameter

__all__ = ["list_filters", "match_labels", "prune_filters"]

_FILTER_KEYS = ("before", "dangling", "label", "reference", "since")
_PRUNE_KEYS = ("dangling", "label", "label!", "until")


def list_filters(filters: Mapping[str, Any] | None) -> dict[str, list[str]]:
    """The filters of ``GET /images/json``, each as a list of values."""
    out: dict[str, list[str]] = {}
    for key, value in (filters or {}).items():
        if key not in _FILTER_KEYS:
            raise InvalidParameter(f"invalid filter '{key}'")
        if isinstance(value, Mapping):
            values = [k for k, on in value.items() if on]
        elif isinstance(value, str):
            values = [value]
        elif isinstance(value, Iterable):
            values = [str(v) for v in value]
        else:
            raise InvalidParameter(f"invalid filter '{key}': {value!r}")
        if values:
            out[key] = values
    return out


def prune_filters(filters: Mapping[str, Any] | None) -> tuple[dict[str, list[str]], bool]:
    """The filters of ``POST /images/prune``, each as a list of values, and
    whether only dangling images go (``dangling=true``, the default)."""
    flt: dict[str, list[str]] = {}
    for key, value in (filters or {}).items():
        if key not in _PRUNE_KEYS:
            raise InvalidParameter(f"invalid filter '{key}'")
        if isinstance(value, Mapping):
            flt[key] = [k for k, on in value.items() if on]
        elif isinstance(value, str):
            flt[key] = [value]
        else:
            flt[key] = [str(v) for v in value]
    dangling_only = True
    if "dangling" in flt:
        values = set(flt["dangling"])
        if values & {"false", "0"}:
            dangling_only = False
        elif not values & {"true", "1"}:
            raise InvalidParameter(f"Invalid filter 'dangling={sorted(values)}'")
    return flt, dangling_only


def match_labels(wanted: Sequence[str], labels: Mapping[str, str]) -> bool:
    """Whether ``labels`` hold every ``key`` or ``key=value`` of ``wanted``."""
    for item in wanted:
        key, eq, value = item.partition("=")
        if key not in labels:
            return False
        if eq and labels[key] != value:
            return False
    return True
