"""Docker's rules for deleting an image (daemon/images/image_delete.go): the
conflict kinds, who uses an image, and when a name is the image's only one."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from skiff.core.images.errors import ImageConflict
from skiff.core.images.records import short_id
from skiff.core.images.reference import Reference

__all__ = [
    "ACTIVE_REF",
    "CHILD",
    "HARD",
    "RUNNING",
    "SOFT",
    "STOPPED",
    "ContainerUsers",
    "DeleteConflict",
    "is_id_prefix",
    "is_single_reference",
    "normalise_users",
]

#: Who uses an image: given an image ID, a container ID using it, or
#: ``(container_id, running)``, or a list of either; None/empty when unused.
#: A plain ID counts as a stopped container (a forced delete may proceed);
#: report running users as ``(id, True)`` so that even ``-f`` refuses.
ContainerUsers = Callable[[str], Any]

# Docker's conflict kinds (daemon/images/image_delete.go)
CHILD, RUNNING, ACTIVE_REF, STOPPED = 1, 2, 4, 8
HARD = CHILD | RUNNING
SOFT = ACTIVE_REF | STOPPED


class DeleteConflict(ImageConflict):
    def __init__(self, image_id: str, message: str, *, hard: bool, used: bool) -> None:
        force = "cannot be forced" if hard else "must be forced"
        super().__init__(f"conflict: unable to delete {short_id(image_id)} ({force}) - {message}")
        self.hard = hard
        self.used = used


def normalise_users(result: Any) -> list[tuple[str, bool]]:
    """What a ``ContainerUsers`` answered, as ``(container_id, running)`` pairs."""
    if not result:
        return []
    if isinstance(result, str):
        return [(result, False)]
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], bool):
        return [(str(result[0]), result[1])]
    out: list[tuple[str, bool]] = []
    for item in result:
        out.extend(normalise_users(item))
    return out


def is_id_prefix(image_id: str, name: str) -> bool:
    """Docker's ``isImageIDPrefix``: was the image named by (part of) its ID?"""
    return image_id.startswith(name) or image_id.split(":", 1)[1].startswith(name)


def is_single_reference(refs: Sequence[Reference]) -> bool:
    """Docker's ``isSingleReference``: at most one tag, and digests only of its repository."""
    if len(refs) <= 1:
        return len(refs) == 1
    single: Reference | None = None
    digest_repos: set[str] = set()
    for r in refs:
        if r.digest is not None:
            digest_repos.add(r.name)
        elif single is None:
            single = r
        else:
            return False
    if single is None:
        single = refs[0]
    return len(digest_repos) == 1 and single.name in digest_repos

