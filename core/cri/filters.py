"""The CRI's list filters (pods, containers, their stats): one rule for all.

Every filter has an ID prefix and a label selector; those of containers add
their pod's ID prefix, those of lists a state.  Unset fields match all.
"""

from __future__ import annotations

from typing import Any


def chosen(container_id: str, record: dict[str, Any], flt: Any, state: int | None = None
           ) -> bool:
    """Whether one pod or container (its ID and CRI record) passes ``flt``;
    ``state``, the CRI state of it, is compared only when the filter has one."""
    if flt is None:
        return True
    if flt.id and not container_id.startswith(flt.id):
        return False
    sandbox = getattr(flt, "pod_sandbox_id", "")
    if sandbox and not str(record.get("sandbox", "")).startswith(sandbox):
        return False
    if state is not None and flt.HasField("state") and flt.state.state != state:
        return False
    labels = record.get("labels") or {}
    return all(labels.get(k) == v for k, v in flt.label_selector.items())
