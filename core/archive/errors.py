"""The one error a refused or unreadable layer tar raises."""

from __future__ import annotations


class ArchiveError(ValueError):
    """A tar stream that must not be (or cannot be) unpacked.

    ``entry`` names the offending tar entry (empty when the stream itself is
    unreadable).  Extraction stopped part-way: the caller must discard the
    layer it was unpacking into.
    """

    def __init__(self, entry: str, reason: str) -> None:
        self.entry = entry
        self.reason = reason
        if entry:
            msg = f"refusing layer tar entry {entry!r}: {reason}"
        else:
            msg = f"refusing layer tar: {reason}"
        super().__init__(msg + " (the layer is incomplete and must be discarded)")
