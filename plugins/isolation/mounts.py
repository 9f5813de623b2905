"""Mount option parsing for the container init.

Pure helpers for the container init; no heavy imports (the fork server loads
this module).
"""

from __future__ import annotations

from skiff.core import syscalls as sc

MS_SYNCHRONOUS = 16
MS_MANDLOCK = 64
MS_DIRSYNC = 128
MS_NODIRATIME = 2048
MS_UNBINDABLE = 1 << 17
MS_RELATIME = 1 << 21

#: mount(8) option word -> (clear?, flag).  ``clear`` options remove the flag.
FLAG_OPTIONS: dict[str, tuple[bool, int]] = {
    "defaults": (False, 0),
    "ro": (False, sc.MS_RDONLY),
    "rw": (True, sc.MS_RDONLY),
    "nosuid": (False, sc.MS_NOSUID),
    "suid": (True, sc.MS_NOSUID),
    "nodev": (False, sc.MS_NODEV),
    "dev": (True, sc.MS_NODEV),
    "noexec": (False, sc.MS_NOEXEC),
    "exec": (True, sc.MS_NOEXEC),
    "sync": (False, MS_SYNCHRONOUS),
    "async": (True, MS_SYNCHRONOUS),
    "dirsync": (False, MS_DIRSYNC),
    "mand": (False, MS_MANDLOCK),
    "nomand": (True, MS_MANDLOCK),
    "remount": (False, sc.MS_REMOUNT),
    "noatime": (False, sc.MS_NOATIME),
    "atime": (True, sc.MS_NOATIME),
    "nodiratime": (False, MS_NODIRATIME),
    "diratime": (True, MS_NODIRATIME),
    "relatime": (False, MS_RELATIME),
    "norelatime": (True, MS_RELATIME),
    "strictatime": (False, sc.MS_STRICTATIME),
    "nostrictatime": (True, sc.MS_STRICTATIME),
    "bind": (False, sc.MS_BIND),
    "rbind": (False, sc.MS_BIND | sc.MS_REC),
}

#: propagation options need a mount(2) call of their own
PROPAGATION_OPTIONS: dict[str, int] = {
    "private": sc.MS_PRIVATE,
    "rprivate": sc.MS_PRIVATE | sc.MS_REC,
    "shared": sc.MS_SHARED,
    "rshared": sc.MS_SHARED | sc.MS_REC,
    "slave": sc.MS_SLAVE,
    "rslave": sc.MS_SLAVE | sc.MS_REC,
    "unbindable": MS_UNBINDABLE,
    "runbindable": MS_UNBINDABLE | sc.MS_REC,
}

#: flags a bind mount only honours through a second, remounting call
BIND_REMOUNT_FLAGS = (
    sc.MS_RDONLY
    | sc.MS_NOSUID
    | sc.MS_NODEV
    | sc.MS_NOEXEC
    | sc.MS_NOATIME
    | MS_NODIRATIME
    | MS_RELATIME
    | sc.MS_STRICTATIME
)


def parse_options(options: list[str]) -> tuple[int, int, str]:
    """mount(8) options -> (flags, propagation flags, data string)."""
    flags = 0
    propagation = 0
    data: list[str] = []
    for opt in options:
        if opt in FLAG_OPTIONS:
            clear, flag = FLAG_OPTIONS[opt]
            flags = flags & ~flag if clear else flags | flag
        elif opt in PROPAGATION_OPTIONS:
            propagation |= PROPAGATION_OPTIONS[opt]
        elif opt:
            data.append(opt)
    return flags, propagation, ",".join(data)
