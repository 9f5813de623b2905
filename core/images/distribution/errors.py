"""The errors a registry conversation raises, and how a registry's error body reads.

Apart from the client so that pull, push, the API layer and the token flow in
:mod:`.auth` name them without importing the HTTP client.  Each also derives
from the core error it means (NotFound, Timeout, ...) so that core/api maps it
to a status code without knowing about registries.
"""

from __future__ import annotations

import json

from skiff.core.errors import NotFound, SkiffError, Timeout, Unauthorized
from skiff.core.images.errors import InvalidImage

__all__ = [
    "BlobUnknown",
    "DigestMismatch",
    "LoginRefused",
    "ManifestUnknown",
    "RegistryError",
    "RegistryTimeout",
    "RegistryUnauthorized",
    "registry_message",
]


class RegistryError(SkiffError):
    """The registry refused or failed a request; the message names what and why."""


class RegistryUnauthorized(RegistryError):
    """401/403 from the registry or its token service.

    Answered as a 500, as dockerd does: a 401 from the daemon makes the docker
    CLI prompt for a login in the middle of ``docker pull``.
    """


class LoginRefused(RegistryUnauthorized, Unauthorized):
    """``docker login`` with credentials the registry refuses (401 to the CLI)."""


class ManifestUnknown(RegistryError, NotFound):
    """No manifest by that tag or digest."""


class BlobUnknown(RegistryError, NotFound):
    """The manifest names a blob the registry does not have."""


class RegistryTimeout(RegistryError, Timeout):
    """The registry accepted the connection (or not) but did not answer in time."""


class DigestMismatch(RegistryError, InvalidImage):
    """Downloaded content does not hash to the digest that names it."""


def registry_message(body: bytes) -> str:
    """The ``errors`` of a registry error body as ``code: message`` (Docker's wording)."""
    try:
        data = json.loads(body)
        errs = data.get("errors") or []
        parts = []
        for e in errs:
            code = str(e.get("code", "")).lower().replace("_", " ")
            msg = str(e.get("message", ""))
            parts.append(f"{code}: {msg}" if code else msg)
        if parts:
            return "; ".join(parts)
    except (ValueError, AttributeError, RecursionError):
        pass
    text = body.decode("utf-8", "replace").strip()
    return text[:200] if text else "no details"
