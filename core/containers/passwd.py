"""Reading an image's ``/etc/passwd`` and ``/etc/group`` through its root descriptor.

The files belong to a container or an image, so they are untrusted: the path
is resolved with ``openat2(RESOLVE_IN_ROOT)`` (links stay inside the root), and
only a regular file is opened for real.  A FIFO would hang the open, a device
node would act on the host's device; either reads as an empty table.  No more
than :data:`MAX_TABLE` bytes are read: a real table is far smaller.
"""

from __future__ import annotations

import os
import stat

from skiff.core import fdops

#: bytes of /etc/passwd or /etc/group read at most
MAX_TABLE = 16 << 20

PASSWD = "/etc/passwd"
GROUP = "/etc/group"


def read_table(root_fd: int, path: str) -> list[list[str]] | None:
    """The colon-separated rows of ``path`` inside the root ``root_fd``; None when
    there is no such regular file (missing, a directory, a FIFO, a device)."""
    try:
        pfd = fdops.open_in_root(root_fd, path, os.O_PATH)
        try:
            if not stat.S_ISREG(os.fstat(pfd).st_mode):
                return None
            fd = fdops.reopen(pfd, os.O_RDONLY)
        finally:
            os.close(pfd)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        text = f.read(MAX_TABLE).decode(errors="replace")
    return [line.split(":") for line in text.splitlines() if ":" in line]


def user_entry(rows: list[list[str]] | None, name: str,
               uid: int | None = None) -> tuple[int, int] | None:
    """(uid, gid) of the first passwd row named ``name`` (or with the uid ``uid``)."""
    for row in rows or ():
        if len(row) < 4 or not (row[0] == name or (uid is not None and row[2] == str(uid))):
            continue
        try:
            return int(row[2]), int(row[3])
        except ValueError:
            continue
    return None


def group_id(rows: list[list[str]] | None, name: str) -> int | None:
    """The gid of the first group row named ``name``."""
    for row in rows or ():
        if len(row) >= 3 and row[0] == name:
            try:
                return int(row[2])
            except ValueError:
                continue
    return None
