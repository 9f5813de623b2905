"""The ``local`` volume driver: a directory per volume under ``<data-root>/volumes``.

Layout, as Docker's: ``volumes/<name>/_data`` holds the data and
``volumes/<name>/opts.json`` the driver options of a volume created with
``--opt``.  Without options a volume is just the directory: ``mount`` returns
it and the container init bind-mounts it.  With Docker's options
``type``/``device``/``o`` (``--opt type=tmpfs --opt device=tmpfs --opt
o=size=64m``, or ``--opt type=none --opt o=bind --opt device=/srv/data``) the
driver mounts ``device`` on ``_data`` on the host when the first container
using the volume starts and unmounts it when the last one stops, so every
container using the volume sees the same filesystem, as with Docker.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import threading
from collections.abc import Mapping
from typing import Any

from skiff.core import syscalls as sc
from skiff.core.atomic import write_json_atomic
from skiff.core.hookspecs import VolumeContext, VolumeInfo, hookimpl

NAME = "local"
#: Docker's rule for local volume names
NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
VALID_OPTS = ("type", "device", "o", "size")

#: mount(8) flag words understood in ``o``; the rest goes to the filesystem as data
_FLAGS: dict[str, int] = {
    "ro": sc.MS_RDONLY,
    "nosuid": sc.MS_NOSUID,
    "nodev": sc.MS_NODEV,
    "noexec": sc.MS_NOEXEC,
    "noatime": sc.MS_NOATIME,
    "bind": sc.MS_BIND,
    "rbind": sc.MS_BIND | sc.MS_REC,
}
_IGNORED = ("rw", "defaults", "suid", "dev", "exec")


def _parse_o(o: str) -> tuple[int, str]:
    flags = 0
    data = []
    for word in o.split(","):
        if not word or word in _IGNORED:
            continue
        if word in _FLAGS:
            flags |= _FLAGS[word]
        else:
            data.append(word)
    return flags, ",".join(data)


#: where ``remove`` renames a volume before deleting it; not a volume name (NAME_RE)
TRASH_PREFIX = "_removing-"


class LocalDriver:
    """Volumes as directories on the daemon's own filesystem."""

    name = NAME

    def __init__(self, ctx: VolumeContext) -> None:
        self.home = ctx.home
        os.makedirs(self.home, mode=0o701, exist_ok=True)
        self._lock = threading.Lock()
        #: volume name -> refs (container IDs) holding its host mount
        self._refs: dict[str, set[str]] = {}
        entries = os.listdir(self.home)
        for entry in entries:
            # a remove killed after its rename leaves the renamed directory behind
            if entry.startswith(TRASH_PREFIX):
                shutil.rmtree(os.path.join(self.home, entry), ignore_errors=True)
        # No container survives its daemon (no live-restore): a host mount left
        # by a crash has no user and would hide the directory underneath.
        for name in self._names(entries):
            data = self._data(name)
            if self._options(name) and os.path.ismount(data):
                with contextlib.suppress(OSError):
                    sc.umount(data, sc.MNT_DETACH)

    # -- paths -----------------------------------------------------------

    def _dir(self, name: str) -> str:
        if not NAME_RE.match(name):
            raise ValueError(
                f'"{name}" includes invalid characters for a local volume name, only '
                '"[a-zA-Z0-9][a-zA-Z0-9_.-]" are allowed. If you intended to pass a host '
                "directory, use absolute path"
            )
        return os.path.join(self.home, name)

    def _data(self, name: str) -> str:
        return os.path.join(self._dir(name), "_data")

    def _names(self, entries: list[str] | None = None) -> list[str]:
        """The volumes' names; ``entries``: the home's listing, if already read."""
        if entries is None:
            try:
                entries = os.listdir(self.home)
            except FileNotFoundError:
                return []
        return [n for n in entries
                if NAME_RE.match(n) and os.path.isdir(os.path.join(self.home, n, "_data"))]

    def _options(self, name: str) -> dict[str, str]:
        try:
            with open(os.path.join(self._dir(name), "opts.json")) as f:
                return dict(json.load(f))
        except FileNotFoundError:
            return {}

    # -- the driver API ------------------------------------------------------

    def create(self, name: str, options: Mapping[str, str]) -> None:
        opts = {str(k): str(v) for k, v in (options or {}).items()}
        for key in opts:
            if key not in VALID_OPTS:
                raise ValueError(f"invalid option key: {key!r}")
        if opts:
            if "size" in opts:
                raise ValueError(
                    "quota size requested but no quota support: use "
                    "--opt type=tmpfs --opt device=tmpfs --opt o=size=... instead"
                )
            if not opts.get("device") and opts.get("type") != "tmpfs":
                raise ValueError("missing device in volume options")
            if not opts.get("type"):
                raise ValueError("missing type in volume options")
            flags, _ = _parse_o(opts.get("o", ""))
            if flags & sc.MS_BIND and not os.path.isabs(opts.get("device", "")):
                raise ValueError("a bind volume needs an absolute device path")
        path = self._dir(name)
        data = os.path.join(path, "_data")
        if os.path.isdir(data):
            return
        os.makedirs(path, mode=0o701, exist_ok=True)
        try:
            if opts:
                write_json_atomic(os.path.join(path, "opts.json"), opts)
            os.mkdir(data, 0o755)
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise

    def remove(self, name: str) -> None:
        path = self._dir(name)
        if not os.path.isdir(path):
            raise KeyError(name)
        with self._lock:
            self._refs.pop(name, None)
            data = os.path.join(path, "_data")
            if os.path.ismount(data):
                sc.umount(data, sc.MNT_DETACH)
        # rename first: a half-removed volume must not look like a volume
        trash = os.path.join(self.home, f"{TRASH_PREFIX}{name}-{os.getpid()}")
        os.rename(path, trash)
        shutil.rmtree(trash)

    def mount(self, name: str, ref: str) -> str:
        data = self._data(name)
        if not os.path.isdir(data):
            raise KeyError(name)
        opts = self._options(name)
        if not opts:
            return data
        with self._lock:
            refs = self._refs.setdefault(name, set())
            if not refs and not os.path.ismount(data):
                flags, extra = _parse_o(opts.get("o", ""))
                fstype = opts.get("type") or None
                if flags & sc.MS_BIND:
                    fstype = None
                device = opts.get("device") or fstype or "none"
                try:
                    sc.mount(device, data, fstype, flags, extra or None)
                    if flags & sc.MS_BIND and flags & sc.MS_RDONLY:
                        sc.mount(None, data, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY)
                except OSError as exc:
                    raise OSError(exc.errno, f"error while mounting volume '{data}': "
                                  f"{exc.strerror} (type {opts.get('type')}, "
                                  f"device {opts.get('device')}, o {opts.get('o', '')})"
                                  ) from None
            refs.add(ref)
        return data

    def unmount(self, name: str, ref: str) -> None:
        with self._lock:
            refs = self._refs.get(name)
            if refs is None or ref not in refs:
                return
            refs.discard(ref)
            if not refs:
                del self._refs[name]
                data = self._data(name)
                if os.path.ismount(data):
                    sc.umount(data, sc.MNT_DETACH)

    def path(self, name: str) -> str:
        return self._data(name)

    def get(self, name: str) -> VolumeInfo:
        data = self._data(name)
        if not os.path.isdir(data):
            raise KeyError(name)
        return VolumeInfo(name=name, mountpoint=data)

    def list(self) -> list[VolumeInfo]:
        return [VolumeInfo(name=n, mountpoint=self._data(n)) for n in self._names()]

    def capabilities(self) -> Mapping[str, Any]:
        return {"Scope": "local"}


#: the plugin contract this module was written for; the loader refuses another major
SKIFF_CONTRACT = "2.0"


@hookimpl
def skiff_volume_drivers() -> dict[str, Any]:
    return {NAME: LocalDriver}
