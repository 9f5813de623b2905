"""Layers the builder makes without a process: COPY, ADD, WORKDIR.

dockerd creates a container for each such step to get a writable mount;
skiff takes only what that needs, a bare read-write layer on the parent
image (the layer store's, under a ``build-`` id, no container record, no
network, no events), mounts it, lets the step write through an ``O_PATH``
descriptor of its root, then commits the difference as the step's image and
drops the layer.  Everything here blocks: it runs on the engine's threads.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import secrets
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from skiff.core import fdops
from skiff.core.images.commit import commit_layer
from skiff.core.images.layers import LayerStore
from skiff.core.images.store import ImageStore

__all__ = ["BUILD_LAYER_PREFIX", "RootfsSource", "make_dirs", "mounted_image", "write_layer"]

#: the layer store ids of the builder's bare layers (the engine drops any at start)
BUILD_LAYER_PREFIX = "build-"

_DIR = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC


@contextmanager
def _bare_layer(layers: LayerStore, parent_top: str | None) -> Iterator[tuple[str, str, str]]:
    """A read-write layer on ``parent_top``: ``(id, init_id, mount_id)``; removed after."""
    layer_id = BUILD_LAYER_PREFIX + secrets.token_hex(16)
    init_id, mount_id = layers.create_rw(layer_id, parent_top)
    try:
        yield layer_id, init_id, mount_id
    finally:
        layers.remove_rw(layer_id)


@contextmanager
def _mounted(layers: LayerStore, mount_id: str) -> Iterator[int]:
    path = layers.driver.get(mount_id)
    try:
        fd = os.open(path, _DIR)
        try:
            yield fd
        finally:
            os.close(fd)
    finally:
        layers.driver.put(mount_id)


def write_layer(layers: LayerStore, images: ImageStore, *, parent: str | None,
                config: Mapping[str, Any], container_config: Mapping[str, Any],
                created_by: str, author: str, write: Callable[[int], object]) -> str:
    """Run ``write(root_fd)`` on a fresh layer over image ``parent`` (None: an
    empty filesystem) and commit what it changed as a child image; returns
    the image ID.  Nothing is left of the layer, whether ``write`` succeeds or
    raises."""
    top = images.get(parent).top_layer if parent else None
    with _bare_layer(layers, top) as (layer_id, init_id, mount_id):
        with _mounted(layers, mount_id) as root_fd:
            write(root_fd)
        image_id, _ = commit_layer(
            layers, images, container_id=layer_id, mount_id=mount_id, init_id=init_id,
            image_id=parent, config=config, container_config=container_config,
            created_by=created_by, author=author)
    return image_id


class RootfsSource:
    """An image's filesystem, mounted for reading (``COPY --from``): a source
    tree with no known digests (every file is hashed)."""

    def __init__(self, layers: LayerStore, images: ImageStore, image_id: str) -> None:
        self._stack = contextlib.ExitStack()
        try:
            top = images.get(image_id).top_layer
            _, _, mount_id = self._stack.enter_context(_bare_layer(layers, top))
            self.root_fd = self._stack.enter_context(_mounted(layers, mount_id))
        except BaseException:
            self._stack.close()
            raise

    def digest_of(self, path: str) -> str | None:
        return None

    def close(self) -> None:
        self._stack.close()


@contextmanager
def mounted_image(layers: LayerStore, images: ImageStore, image_id: str) -> Iterator[RootfsSource]:
    """:class:`RootfsSource` as a context manager."""
    source = RootfsSource(layers, images, image_id)
    try:
        yield source
    finally:
        source.close()


def make_dirs(root_fd: int, path: str, mode: int = 0o755) -> bool:
    """``mkdir -p path`` inside the root ``root_fd``, each component resolved by
    the kernel inside it (an image's symbolic links are followed as the
    container would, never out of it); new directories are root's with
    ``mode``.  Returns whether anything was made."""
    parts = [p for p in posixpath.normpath("/" + path).split("/") if p]
    made = False
    current = "/"
    for part in parts:
        below = posixpath.join(current, part)
        try:
            fd = fdops.open_in_root(root_fd, below, _DIR)
        except FileNotFoundError:
            parent_fd = fdops.open_in_root(root_fd, current, _DIR)
            try:
                try:
                    os.mkdir(part, mode, dir_fd=parent_fd)
                except FileExistsError:
                    pass  # a dangling symbolic link, or made meanwhile: re-resolved below
                else:
                    made = True
                    child = fdops.open_dir_at(parent_fd, part)
                    try:
                        os.chmod(fdops.proc_path(child), mode)
                    finally:
                        os.close(child)
            finally:
                os.close(parent_fd)
            try:
                fd = fdops.open_in_root(root_fd, below, _DIR)
            except OSError as exc:
                raise NotADirectoryError(errno.ENOTDIR, f"cannot create {below}", path) from exc
        os.close(fd)
        current = below
    return made
