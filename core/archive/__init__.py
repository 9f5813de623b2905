"""Layer tarballs: safe extraction, tar streams of directories, filesystem diffs.

Everything that turns a tar stream into files, or files into a tar stream, goes
through this package: image pulls and loads, ``docker cp``, export, commit and
every storage driver's ``apply_diff`` and ``diff``.  Three jobs:

*Extraction* (:func:`extract`, in :mod:`.extractor`; names checked in
:mod:`.paths`).  A layer tar is untrusted input.  It can never
write outside the directory it is unpacked into:

- Entry names are cleaned like Docker does: an absolute name is taken relative
  to the root (``/etc/passwd`` lands in ``<root>/etc/passwd``), and a name that
  still climbs out after cleaning (``../x``, ``a/../../x``) is refused.
- Every parent directory is opened component by component with
  ``O_DIRECTORY | O_NOFOLLOW`` relative to the previous one, and the entry
  itself is created relative to its parent's descriptor.  A symbolic link in a
  parent position, whether the tar made it or a lower layer did, is refused
  rather than followed, so it cannot redirect a write.
- A symbolic link's *content* may point anywhere: it is resolved later, inside
  the container.  A hard link's target must be a path inside the root, reached
  the same way, without following symbolic links.
- Device nodes are created when ``allow_devices`` is true (the daemon runs as
  root and there is no user namespace yet).

A hostile or malformed tar raises :class:`ArchiveError` naming the entry.
Extraction stops there and whatever was already unpacked stays: the caller
must discard the layer (every storage driver's ``apply_diff`` empties it).

*Tar streams* (:func:`tar_directory`, :func:`tar_changes`, in :mod:`.writer`).  Streams are
produced lazily, one entry at a time, so a layer never sits in memory.  Entries
are in a deterministic order (depth first, names sorted by their bytes),
ownership is numeric, modification times are whole seconds (as Docker writes
them, so the same tree gives the same tar and the same diffID), hard links are
kept, and extended attributes travel as PAX ``SCHILY.xattr.*`` records.

*Diffs* (:func:`changes_between`, :func:`overlay_changes`, in :mod:`.diff`;
sizes in :mod:`.sizes`).  What a layer adds,
modifies and deletes, as ``docker diff`` reports it, either by comparing two
whole trees (vfs) or by reading an overlay upper directory against the lower
layers it sits on (overlay2).

Whiteouts follow the OCI image spec: ``.wh.<name>`` deletes ``<name>`` from the
layers below and ``.wh..wh..opq`` hides everything below in its directory
(:mod:`.whiteouts`).
"""

from __future__ import annotations

from skiff.core.archive.diff import (
    CHANGE_ADD,
    CHANGE_DELETE,
    CHANGE_MODIFY,
    LowerLookup,
    changes_between,
    lower_lookup,
    overlay_changes,
)
from skiff.core.archive.errors import ArchiveError
from skiff.core.archive.extractor import extract
from skiff.core.archive.paths import check_names
from skiff.core.archive.sizes import changes_size, directory_size
from skiff.core.archive.whiteouts import (
    OPAQUE_XATTR,
    WHITEOUT_OPAQUE,
    WHITEOUT_PREFIX,
    is_overlay_whiteout,
)
from skiff.core.archive.writer import ChunkReader, tar_changes, tar_directory, tar_entry

__all__ = [
    "CHANGE_ADD",
    "CHANGE_DELETE",
    "CHANGE_MODIFY",
    "OPAQUE_XATTR",
    "WHITEOUT_OPAQUE",
    "WHITEOUT_PREFIX",
    "ArchiveError",
    "ChunkReader",
    "LowerLookup",
    "changes_between",
    "changes_size",
    "check_names",
    "directory_size",
    "extract",
    "is_overlay_whiteout",
    "lower_lookup",
    "overlay_changes",
    "tar_changes",
    "tar_directory",
    "tar_entry",
]
