"""The image store: image configs, their names (tags, digests) and Docker's rules.

On disk, Docker's layout::

    <data-root>/image/<driver>/
        imagedb/content/sha256/<hex>            the config JSON, byte for byte
        imagedb/metadata/sha256/<hex>/parent    "sha256:<parent image id>" (commit/build)
                                     /lastUpdated  when it was last tagged (RFC 3339)
        repositories.json   {"Repositories": {"busybox": {"busybox:latest": "sha256:..."}}}

An image's ID is ``sha256:`` + the sha256 of its config bytes as stored, so
the bytes are never rewritten.  Each image holds one reference on its top
layer in the ``LayerStore``; deleting the last image that uses a layer stack
removes the layers nobody else holds.

Lookup, listing, inspect, history and delete follow dockerd (daemon/images in
Moby 20.10), including its messages, so ``docker`` shows what it shows there.
The store keeps the state and its lock; beside it in this package: ``records``
(the config and ``Image``), ``tags`` (repositories.json), ``delete_rules``
(Docker's conflicts), ``prune``, ``filters`` and ``views`` (list, inspect,
history in the API's shapes).
"""

from __future__ import annotations

import bisect
import builtins
import hashlib
import os
import re
import shutil
import threading
from collections.abc import Mapping
from typing import Any

import structlog

from skiff.core import metrics
from skiff.core.atomic import fsync_dir, write_atomic
from skiff.core.images.delete_rules import (
    ACTIVE_REF,
    CHILD,
    HARD,
    RUNNING,
    SOFT,
    STOPPED,
    ContainerUsers,
    DeleteConflict,
    is_id_prefix,
    is_single_reference,
    normalise_users,
)
from skiff.core.images.errors import (
    ImageConflict,
    ImageNotFound,
    InvalidImage,
    InvalidReference,
    LayerNotFound,
)
from skiff.core.images.layers import LayerStore, chain_ids
from skiff.core.images.prune import prune_images
from skiff.core.images.records import Image, parse_config, short_id
from skiff.core.images.reference import (
    Reference,
    familiar_name,
    familiar_string,
    is_full_id,
    parse,
    parse_digest,
)
from skiff.core.images.tags import Names, load_repositories, ref_key, save_repositories
from skiff.core.images.views import image_history, inspect_image, list_images
from skiff.core.timefmt import now_rfc3339

log = structlog.get_logger("skiff.images.store")

__all__ = ["ImageStore"]


class ImageStore:
    """Images of one storage driver and the names that point at them.

    Thread-safe (one lock); blocking, so the daemon calls it from worker threads.
    """

    def __init__(self, data_root: str, driver_name: str, layers: LayerStore) -> None:
        self.data_root = data_root
        self.driver_name = driver_name
        self.layers = layers
        self.root = os.path.join(data_root, "image", driver_name)
        self._content = os.path.join(self.root, "imagedb", "content", "sha256")
        self._meta = os.path.join(self.root, "imagedb", "metadata", "sha256")
        self._repos_path = os.path.join(self.root, "repositories.json")
        for d in (self._content, self._meta):
            os.makedirs(d, mode=0o700, exist_ok=True)
        #: held for one consistent view over several calls (the views, prune)
        self.lock = threading.RLock()
        self._images: dict[str, Image] = {}  # by full ID
        self._sorted: list[str] = []  # hex IDs, sorted, for prefix search
        self._children: dict[str, set[str]] = {}
        self._refs: Names = {}
        self._restore()

    # -- start-up ------------------------------------------------------------

    def _restore(self) -> None:
        for hexid in sorted(os.listdir(self._content)):
            path = os.path.join(self._content, hexid)
            if hexid.startswith(".") or not os.path.isfile(path):
                continue
            with open(path, "rb") as f:
                raw = f.read()
            if hashlib.sha256(raw).hexdigest() != hexid:
                log.warning("image.corrupt", id=hexid, reason="content does not match its ID")
                continue
            try:
                cfg, diff_ids = parse_config(raw)
            except InvalidImage as exc:
                log.warning("image.unreadable", id=hexid, error=str(exc))
                continue
            chain = chain_ids(diff_ids)
            top = chain[-1] if chain else None
            if top is not None:
                try:
                    self.layers.acquire(top)
                except LayerNotFound:
                    log.warning("image.layer_missing", id=hexid, layer=top)
                    continue
            image = Image(id="sha256:" + hexid, config=cfg, diff_ids=diff_ids,
                          top_layer=top, chain=chain)
            meta = os.path.join(self._meta, hexid)
            image.parent = self._read_meta(meta, "parent") or ""
            image.last_updated = self._read_meta(meta, "lastUpdated")
            self._index(image)
        for image in self._images.values():
            if image.parent and image.parent in self._images:
                self._children.setdefault(image.parent, set()).add(image.id)
        self._refs, dropped = load_repositories(self._repos_path, self._images)
        if dropped:
            self._save_refs()
        self.layers.prune_unreferenced()

    @staticmethod
    def _read_meta(meta_dir: str, name: str) -> str | None:
        try:
            with open(os.path.join(meta_dir, name)) as f:
                return f.read().strip() or None
        except FileNotFoundError:
            return None

    def _index(self, image: Image) -> None:
        self._images[image.id] = image
        bisect.insort(self._sorted, image.id[7:])

    def _unindex(self, image_id: str) -> None:
        self._images.pop(image_id, None)
        i = bisect.bisect_left(self._sorted, image_id[7:])
        if i < len(self._sorted) and self._sorted[i] == image_id[7:]:
            del self._sorted[i]

    def _save_refs(self) -> None:
        save_repositories(self._repos_path, self._refs)

    # -- creating ---------------------------------------------------------------

    def create(self, config: bytes, parent: str | None = None) -> str:
        """Store an image config whose layers are registered; returns its ID.

        The image takes its own reference on its top layer.  Creating an image
        that exists changes nothing (its ID is its content).
        """
        cfg, diff_ids = parse_config(config)
        hexid = hashlib.sha256(config).hexdigest()
        image_id = "sha256:" + hexid
        with self.lock:
            if image_id in self._images:
                return image_id
            if parent:
                parent = self._images[self._resolve(parent)].id
            chain = chain_ids(diff_ids)
            top = chain[-1] if chain else None
            if top is not None:
                try:
                    self.layers.acquire(top)
                except LayerNotFound as exc:
                    raise InvalidImage(
                        f"cannot create image {short_id(image_id)}: its layers are not "
                        f"registered ({exc})"
                    ) from exc
            try:
                write_atomic(os.path.join(self._content, hexid), config, 0o600)
                if parent:
                    os.makedirs(os.path.join(self._meta, hexid), mode=0o700, exist_ok=True)
                    write_atomic(os.path.join(self._meta, hexid, "parent"), parent, 0o600)
            except BaseException:
                if top is not None:
                    self.layers.release(top)
                raise
            image = Image(id=image_id, config=cfg, diff_ids=diff_ids, top_layer=top,
                          parent=parent or "", chain=chain)
            self._index(image)
            if parent:
                self._children.setdefault(parent, set()).add(image_id)
        log.info("image.created", id=image_id, layers=len(diff_ids))
        return image_id

    def set_parent(self, image: str, parent: str) -> None:
        """Record ``parent`` as the parent image of ``image`` (commit, build, load)."""
        with self.lock:
            image_id = self._resolve(image)
            parent_id = self._resolve(parent)
            img = self._images[image_id]
            if img.parent:
                self._children.get(img.parent, set()).discard(image_id)
            meta = os.path.join(self._meta, image_id[7:])
            os.makedirs(meta, mode=0o700, exist_ok=True)
            write_atomic(os.path.join(meta, "parent"), parent_id, 0o600)
            img.parent = parent_id
            self._children.setdefault(parent_id, set()).add(image_id)

    def _touch(self, image_id: str) -> None:
        stamp = now_rfc3339()
        meta = os.path.join(self._meta, image_id[7:])
        os.makedirs(meta, mode=0o700, exist_ok=True)
        write_atomic(os.path.join(meta, "lastUpdated"), stamp, 0o600)
        self._images[image_id].last_updated = stamp

    # -- lookup -------------------------------------------------------------------

    def count(self) -> int:
        with self.lock:
            return len(self._images)

    def ids(self) -> list[str]:
        with self.lock:
            return list(self._images)

    def exists(self, image_id: str) -> bool:
        with self.lock:
            return image_id in self._images

    def search(self, term: str) -> str | None:
        """The ID whose hex starts with ``term`` (``sha256:`` optional); None when
        no ID or more than one does."""
        alg, sep, prefix = term.partition(":")
        if not sep:
            prefix = term
        elif alg != "sha256":
            return None
        if not prefix or not re.fullmatch(r"[0-9a-f]+", prefix):
            return None
        with self.lock:
            i = bisect.bisect_left(self._sorted, prefix)
            if i >= len(self._sorted) or not self._sorted[i].startswith(prefix):
                return None
            if i + 1 < len(self._sorted) and self._sorted[i + 1].startswith(prefix):
                return None  # ambiguous
            return "sha256:" + self._sorted[i]

    def _resolve(self, name: str) -> str:
        """Docker's ``GetImage``: full ID, digest, name[:tag], name@digest, ID prefix."""
        if not isinstance(name, str) or not name:
            raise InvalidReference("invalid reference format")
        with self.lock:
            if is_full_id(name) or (name.startswith("sha256:") and is_full_id(name[7:])):
                image_id = name if name.startswith("sha256:") else "sha256:" + name
                if image_id in self._images:
                    return image_id
                raise ImageNotFound(image_id)
            digest_like = re.fullmatch(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[0-9a-fA-F]{32,}", name)
            if digest_like:
                try:
                    parse_digest(name)
                except InvalidReference:
                    pass
                else:  # a valid digest of another algorithm: never an image ID here
                    raise ImageNotFound(name)
            ref = parse(name, default_tag=False)
            key = ref_key(ref)
            hit = self._refs.get(key)
            if hit is not None and hit[1] in self._images:
                return hit[1]
            found = self.search(name)
            if found is not None:
                return found
            raise ImageNotFound(familiar_string(ref.with_default_tag()))

    def get(self, name: str) -> Image:
        """The image ``name`` designates (Docker's lookup rules); ``ImageNotFound``
        ("No such image: busybox:latest") or ``InvalidReference`` otherwise."""
        with self.lock:
            image = self._images[self._resolve(name)]
            image.size = self.layers.size(image.top_layer)
            return image

    def resolve(self, name: str) -> str:
        """The full ID of the image ``name`` designates."""
        return self._resolve(name)

    def config_bytes(self, image: str) -> bytes:
        """The config exactly as stored (its sha256 is the image ID)."""
        image_id = self._resolve(image)
        with open(os.path.join(self._content, image_id[7:]), "rb") as f:
            return f.read()

    def references(self, image_id: str) -> list[Reference]:
        """Every name pointing at ``image_id``, sorted as Docker sorts them."""
        with self.lock:
            refs = [ref for ref, iid in self._refs.values() if iid == image_id]
        return sorted(refs, key=str)

    def repo_tags(self, image_id: str) -> list[str]:
        return [familiar_string(r) for r in self.references(image_id) if r.digest is None]

    def repo_digests(self, image_id: str) -> list[str]:
        return [familiar_string(r) for r in self.references(image_id) if r.digest is not None]

    def lookup_ref(self, ref: str | Reference) -> str | None:
        """The image ID a tag or digest reference points at, or None."""
        if isinstance(ref, str):
            ref = parse(ref)
        with self.lock:
            hit = self._refs.get(ref_key(ref))
            return hit[1] if hit else None

    def references_by_name(self, name: str | Reference) -> list[tuple[Reference, str]]:
        """Every (reference, image ID) of one repository (``docker save busybox``)."""
        ref = parse(name, default_tag=False) if isinstance(name, str) else name
        with self.lock:
            out = [(r, iid) for r, iid in self._refs.values() if r.name == ref.name]
        return sorted(out, key=lambda x: str(x[0]))

    def children(self, image_id: str) -> list[str]:
        with self.lock:
            return sorted(self._children.get(image_id, ()))

    def images(self) -> list[Image]:
        """Every image, in the order they were loaded or created."""
        with self.lock:
            return list(self._images.values())

    def by_id(self, image_id: str) -> Image | None:
        """The image with full ID ``image_id``, without Docker's lookup rules."""
        with self.lock:
            return self._images.get(image_id)

    def all_references(self) -> list[tuple[Reference, str]]:
        """Every (reference, image ID) the store holds."""
        with self.lock:
            return list(self._refs.values())

    # -- names ------------------------------------------------------------------------

    def tag(self, image: str, ref: str | Reference, *, touch: bool = True) -> Reference:
        """Point tag ``ref`` (``name[:tag]``, default ``:latest``) at ``image``.

        A tag that points elsewhere moves, as ``docker tag`` does.  Returns the
        normalised reference.
        """
        new = parse(ref) if isinstance(ref, str) else ref.with_default_tag()
        if new.digest is not None:
            raise InvalidReference("refusing to create a tag with a digest reference")
        if familiar_name(new) == "sha256":
            raise InvalidReference(
                "refusing to create an ambiguous tag using digest algorithm as name"
            )
        with self.lock:
            image_id = self._resolve(image)
            self._refs[familiar_string(new)] = (new, image_id)
            self._save_refs()
            if touch:
                self._touch(image_id)
        log.info("image.tagged", id=image_id, ref=familiar_string(new))
        return new

    def add_digest(self, image: str, ref: str | Reference) -> Reference:
        """Record ``name@digest`` (a manifest digest from pull or push) for ``image``."""
        new = parse(ref, default_tag=False) if isinstance(ref, str) else ref
        if new.digest is None:
            raise InvalidReference(f"{familiar_string(new)} has no digest")
        new = Reference(new.domain, new.path, None, new.digest)
        with self.lock:
            image_id = self._resolve(image)
            key = familiar_string(new)
            old = self._refs.get(key)
            if old is not None and old[1] != image_id:
                raise ImageConflict(
                    f"Conflict: Digest {key} is already set to image {old[1]}, if you want "
                    "to replace it, please use the force option"
                )
            self._refs[key] = (new, image_id)
            self._save_refs()
        return new

    def untag(self, ref: str | Reference) -> str:
        """Remove one tag or digest reference; returns the image ID it pointed at."""
        parsed = parse(ref, default_tag=False) if isinstance(ref, str) else ref
        with self.lock:
            key = ref_key(parsed)
            hit = self._refs.pop(key, None)
            if hit is None:
                raise ImageNotFound(key, f"No such image: {key}")
            self._save_refs()
            return hit[1]

    # -- delete -----------------------------------------------------------------------

    @metrics.timed(metrics.image_actions, "delete")
    def delete(
        self,
        name: str,
        force: bool = False,
        prune: bool = True,
        in_use: ContainerUsers | None = None,
    ) -> list[dict[str, str]]:
        """``docker rmi``: Docker's rules and its ``[{"Untagged": ...}, {"Deleted": ...}]``.

        A name with several tags only loses that tag; an ID deletes the image
        when at most one repository names it (or with ``force``); an image used
        by a container is a conflict (by a running one even with ``force``);
        ``prune`` also removes untagged parent images nothing else uses.
        ``in_use`` tells which containers use an image (see ``ContainerUsers``).
        """
        with self.lock:
            image_id = self._resolve(name)
            records: list[dict[str, str]] = []
            repo_refs = self.references(image_id)
            removed_repo_ref = False
            try:
                if not is_id_prefix(image_id, name):
                    if not force and is_single_reference(repo_refs):
                        users = normalise_users(in_use(image_id) if in_use else None)
                        if users:
                            raise ImageConflict(
                                f'conflict: unable to remove repository reference "{name}" '
                                f"(must force) - container {short_id(users[0][0])} is using "
                                f"its referenced image {short_id(image_id)}"
                            )
                    parsed = parse(name, default_tag=False)
                    parsed = self._remove_ref(parsed)
                    records.append({"Untagged": familiar_string(parsed)})
                    repo_refs = self.references(image_id)
                    if parsed.digest is None:
                        same_repo_tag = any(
                            r.digest is None and r.name == parsed.name for r in repo_refs
                        )
                        if not same_repo_tag:
                            remaining = []
                            for r in repo_refs:
                                if r.digest is not None and r.name == parsed.name:
                                    self._refs.pop(familiar_string(r), None)
                                    records.append({"Untagged": familiar_string(r)})
                                else:
                                    remaining.append(r)
                            repo_refs = remaining
                    if repo_refs:
                        return records
                    removed_repo_ref = True
                elif is_single_reference(repo_refs):
                    mask = HARD if force else HARD | (SOFT & ~ACTIVE_REF)
                    conflict = self._conflict(image_id, mask, in_use)
                    if conflict is not None:
                        raise conflict
                    for r in repo_refs:
                        removed = self._remove_ref(r)
                        records.append({"Untagged": familiar_string(removed)})
                self._delete_helper(image_id, records, force, prune, removed_repo_ref, in_use)
            finally:
                if records:
                    self._save_refs()
        return records

    def _remove_ref(self, ref: Reference) -> Reference:
        if ref.digest is None:
            ref = ref.with_default_tag()
        elif ref.tag is not None:
            ref = Reference(ref.domain, ref.path, None, ref.digest)
        key = familiar_string(ref)
        if self._refs.pop(key, None) is None:
            raise ImageNotFound(key, "reference does not exist")
        return ref

    def _users(self, image_id: str, in_use: ContainerUsers | None) -> list[tuple[str, bool]]:
        return normalise_users(in_use(image_id) if in_use else None)

    def _conflict(
        self, image_id: str, mask: int, in_use: ContainerUsers | None
    ) -> DeleteConflict | None:
        if mask & CHILD and self._children.get(image_id):
            return DeleteConflict(image_id, "image has dependent child images",
                                   hard=True, used=False)
        users = self._users(image_id, in_use) if mask & (RUNNING | STOPPED) else []
        if mask & RUNNING:
            running = [cid for cid, run in users if run]
            if running:
                return DeleteConflict(
                    image_id, f"image is being used by running container {short_id(running[0])}",
                    hard=True, used=True)
        if mask & ACTIVE_REF and self.references(image_id):
            return DeleteConflict(image_id, "image is referenced in multiple repositories",
                                   hard=False, used=False)
        if mask & STOPPED:
            stopped = [cid for cid, run in users if not run]
            if stopped:
                return DeleteConflict(
                    image_id, f"image is being used by stopped container {short_id(stopped[0])}",
                    hard=False, used=True)
        return None

    def _dangling(self, image_id: str) -> bool:
        return not self.references(image_id) and not self._children.get(image_id)

    def _delete_helper(
        self,
        image_id: str,
        records: list[dict[str, str]],
        force: bool,
        prune: bool,
        quiet: bool,
        in_use: ContainerUsers | None,
    ) -> None:
        mask = HARD if force else HARD | SOFT
        conflict = self._conflict(image_id, mask, in_use)
        if conflict is not None:
            if quiet and (not self._dangling(image_id) or conflict.used):
                return  # an untag finished the job; the image stays for its users
            raise conflict
        parent = self._images[image_id].parent
        for r in self.references(image_id):
            self._refs.pop(familiar_string(r), None)
            records.append({"Untagged": familiar_string(r)})
        removed_layers = self._delete_image(image_id)
        records.append({"Deleted": image_id})
        records.extend({"Deleted": chain} for chain in removed_layers)
        if not prune or not parent or parent not in self._images:
            return
        self._delete_helper(parent, records, False, prune, True, in_use)

    def _delete_image(self, image_id: str) -> list[str]:
        image = self._images[image_id]
        hexid = image_id[7:]
        if image.parent:
            self._children.get(image.parent, set()).discard(image_id)
        self._children.pop(image_id, None)
        self._unindex(image_id)
        os.unlink(os.path.join(self._content, hexid))
        fsync_dir(self._content)
        shutil.rmtree(os.path.join(self._meta, hexid), ignore_errors=True)
        removed = self.layers.release(image.top_layer) if image.top_layer else []
        log.info("image.deleted", id=image_id, layers_removed=len(removed))
        return removed

    # -- prune and the views for the API ---------------------------------------------

    def prune(
        self,
        filters: Mapping[str, Any] | None = None,
        in_use: ContainerUsers | None = None,
        until: float | None = None,
    ) -> dict[str, Any]:
        """``POST /images/prune`` (see ``skiff.core.images.prune``)."""
        return prune_images(self, filters, in_use, until)

    def list(
        self, all: bool = False, filters: Mapping[str, Any] | None = None
    ) -> builtins.list[dict[str, Any]]:
        """``GET /images/json`` (see ``skiff.core.images.views``)."""
        return list_images(self, all, filters)

    def inspect(self, name: str) -> dict[str, Any]:
        """``GET /images/{name}/json`` in Docker's shape."""
        return inspect_image(self, name)

    @metrics.timed(metrics.image_actions, "history")
    def history(self, name: str) -> builtins.list[dict[str, Any]]:
        """``GET /images/{name}/history``: newest first, Docker's shape."""
        return image_history(self, name)
