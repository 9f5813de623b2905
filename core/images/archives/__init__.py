"""Image archives: ``docker load``, ``docker save`` and ``docker import``.

- :mod:`.loader`: ``load`` reads what ``docker save`` writes (``manifest.json``
  + configs + layer tars, in either the old ``<id>/layer.tar`` or the newer
  ``blobs/sha256/`` placement) and OCI image layouts (``index.json`` +
  ``blobs/``), spooled to disk and checked layer by layer; a corrupt archive
  leaves nothing behind.
- :mod:`.saver`: ``save`` writes Docker 25's format, an OCI layout that is also
  a classic ``docker save`` archive.
- :mod:`.importer`: ``import_tarball`` makes a one-layer image from a root
  filesystem tar, with ``--change`` instructions
  (:mod:`skiff.core.images.dockerfile_changes`) applied to its config.
- :mod:`.formats`: the media types, annotations and limits they share.

Everything here is synchronous and blocking; the daemon runs it in a worker
thread and bridges the HTTP body to a file-like object.
"""

from __future__ import annotations

from skiff.core.images.archives.formats import host_architecture
from skiff.core.images.archives.importer import import_tarball
from skiff.core.images.archives.loader import load
from skiff.core.images.archives.saver import plan_save, save

__all__ = ["host_architecture", "import_tarball", "load", "plan_save", "save"]
