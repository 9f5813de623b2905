"""Errors of the image and layer stores.

They subclass ``skiff.core.errors`` so the API layer answers with Docker's
status (400 bad input, 404 no such image or layer, 409 conflict) without
knowing each case; the messages are Docker's where Docker has one.
"""

from __future__ import annotations

from skiff.core.errors import Conflict, InvalidParameter, NotFound, SkiffError


class ImageError(SkiffError):
    """Base of every image/layer store error (500 unless a subclass says otherwise)."""


class InvalidReference(ImageError, InvalidParameter):
    """A malformed image reference (``invalid reference format``)."""


class ImageNotFound(ImageError, NotFound):
    """No image matches; the message is Docker's ``No such image: X``."""

    def __init__(self, what: str, message: str | None = None) -> None:
        super().__init__(message or f"No such image: {what}")
        self.what = what


class ImageConflict(ImageError, Conflict):
    """The operation would break something that uses the image (409)."""


class InvalidImage(ImageError, InvalidParameter):
    """An image config, manifest, archive or option that cannot be used (400)."""


class LayerNotFound(ImageError, NotFound):
    """No layer with that chain ID (or no RW layer for that container)."""


class LayerDigestMismatch(InvalidImage):
    """A layer's content does not hash to the diffID its image claims."""

    def __init__(self, expected: str, actual: str, what: str = "layer") -> None:
        super().__init__(
            f"{what} digest mismatch: the image config says {expected} but the content "
            f"hashes to {actual}; the archive is corrupt or was modified"
        )
        self.expected = expected
        self.actual = actual
