"""Which user namespace a container gets with ``userns-remap`` on.

``HostConfig.UsernsMode``:

* ``""`` (Docker's private mode): daemon.json ``default-userns-mode``, which
  is the daemon's own mapping (the remap user's first 65536 subordinate ids,
  shared by every such container, as with dockerd) unless it says ``auto``;
* ``auto`` (podman's spelling; the docker CLI passes ``--userns=auto``
  through): a 65536-wide block of the remap user's remaining subordinate ids
  for this container alone, recorded on disk before the container exists and
  given back when it is removed, so no block is ever handed to two
  containers, across daemon restarts too;
* ``host``: no user namespace (container root is host root).

Docker's rules with remapping on: ``--privileged``, ``--network host`` and
``--pid host`` need ``--userns=host``.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from skiff.core.atomic import write_json_atomic
from skiff.core.containers.config import InvalidConfig
from skiff.core.userns import CONTAINER_IDS, IdMap, Remap

MODES = ("", "host", "auto")
#: daemon.json ``default-userns-mode`` values
DEFAULT_MODES = ("", "private", "auto")
#: the allocation record, in the (remapped) data-root
RANGES_FILE = "userns-auto.json"


def mode_of(hc: Mapping[str, Any], default_mode: str) -> str:
    """``host``, ``auto`` or ``private`` for a container of this host config."""
    mode = hc.get("UsernsMode") or ""
    if mode:
        return str(mode)
    return "auto" if default_mode == "auto" else "private"


def validate(hc: Mapping[str, Any], remap: Remap | None, default_mode: str) -> None:
    """Docker's checks of ``UsernsMode`` and the options it conflicts with."""
    mode = hc.get("UsernsMode") or ""
    if not isinstance(mode, str) or mode not in MODES:
        raise InvalidConfig(f"invalid USER mode: {mode} (use host, or auto with userns-remap)")
    if remap is None:
        if mode == "auto":
            raise InvalidConfig(
                "--userns=auto needs user-namespace remapping: set userns-remap in the "
                "daemon's daemon.json (the ranges come from the remap user's subordinate "
                "ids)")
        return
    if mode_of(hc, default_mode) == "host":
        return
    if hc.get("Privileged"):
        raise InvalidConfig(
            "privileged mode is incompatible with user namespaces.  You must run the "
            "container in the host namespace when running privileged mode")
    if (hc.get("NetworkMode") or "") == "host":
        raise InvalidConfig(
            "cannot share the host's network namespace when user namespaces are enabled")
    if (hc.get("PidMode") or "") == "host":
        raise InvalidConfig("cannot share the host PID namespace when user namespaces are enabled")


class RangeAllocator:
    """The ``--userns=auto`` blocks handed out: container ID -> host uid/gid start.

    Kept in one JSON file, rewritten atomically and durably (fsync) before an
    allocation is returned, so a block recorded once stays taken until
    ``release``, whatever crashes in between.  A block is free when neither
    its uids nor its gids overlap a recorded one (the remap user's ranges may
    have changed since it was recorded).  Thread-safe.
    """

    def __init__(self, root: str, blocks: Iterable[tuple[int, int]]) -> None:
        self.path = os.path.join(root, RANGES_FILE)
        self.blocks = list(blocks)
        self._lock = threading.Lock()
        self._taken: dict[str, tuple[int, int]] = {}
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
            self._taken = {cid: (int(v["uid"]), int(v["gid"])) for cid, v in data.items()}
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            # refusing to start is better than handing out a block twice
            raise RuntimeError(f"{self.path} is unreadable ({exc}); restore it from a backup, "
                               "or remove it with every --userns=auto container") from exc

    def _save(self) -> None:
        write_json_atomic(self.path, {cid: {"uid": u, "gid": g, "count": CONTAINER_IDS}
                                      for cid, (u, g) in sorted(self._taken.items())})

    @staticmethod
    def mapping(uid: int, gid: int) -> IdMap:
        return IdMap(((0, uid, CONTAINER_IDS),), ((0, gid, CONTAINER_IDS),))

    def allocate(self, container_id: str) -> IdMap:
        """The lowest free block, recorded for ``container_id``.

        Raises ``InvalidConfig`` when every block is taken.
        """
        with self._lock:
            if container_id in self._taken:
                return self.mapping(*self._taken[container_id])
            for uid, gid in self.blocks:
                if not any(_overlaps(uid, u) or _overlaps(gid, g)
                           for u, g in self._taken.values()):
                    self._taken[container_id] = (uid, gid)
                    try:
                        self._save()
                    except BaseException:
                        del self._taken[container_id]
                        raise
                    return self.mapping(uid, gid)
        raise InvalidConfig(
            f"no free --userns=auto range: all {len(self.blocks)} blocks of {CONTAINER_IDS} "
            "subordinate ids are in use; remove containers, or give the remap user larger "
            "ranges in /etc/subuid and /etc/subgid")

    def release(self, container_id: str) -> None:
        with self._lock:
            if self._taken.pop(container_id, None) is not None:
                self._save()

    def taken(self) -> dict[str, tuple[int, int]]:
        with self._lock:
            return dict(self._taken)

    def keep_only(self, container_ids: Iterable[str]) -> list[str]:
        """Release the blocks of containers that no longer exist (a create cut
        short by a crash); returns their IDs."""
        keep = set(container_ids)
        with self._lock:
            gone = [cid for cid in self._taken if cid not in keep]
            for cid in gone:
                del self._taken[cid]
            if gone:
                self._save()
        return gone


def _overlaps(a: int, b: int) -> bool:
    return a < b + CONTAINER_IDS and b < a + CONTAINER_IDS
