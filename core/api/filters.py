"""Docker's ``filters`` query parameter: JSON of name -> list (or map) of values."""

from __future__ import annotations

import json
from collections.abc import Collection

from skiff.core.errors import InvalidParameter


def parse_filters(raw: str | None, known: Collection[str] | None = None
                  ) -> dict[str, list[str]]:
    """``{"label": ["a=b"]}`` from the query string; the old map form is accepted too.

    A filter name outside ``known`` is refused as dockerd does ("invalid filter").
    """
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise InvalidParameter(f"invalid filters: {exc or 'nested too deeply'}") from exc
    if not isinstance(data, dict):
        raise InvalidParameter("invalid filters: expected a JSON object")
    out: dict[str, list[str]] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out[key] = [k for k, on in value.items() if on]
        elif isinstance(value, list):
            out[key] = [str(v) for v in value]
        else:
            out[key] = [str(value)]
    if known is not None:
        unknown = sorted(set(out) - set(known))
        if unknown:
            raise InvalidParameter(f"invalid filter '{unknown[0]}'")
    return out
