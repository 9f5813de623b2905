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
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import structlog

from skiff.core.atomic import fsync_dir, write_atomic, write_json_atomic
from skiff.core.errors import InvalidParameter
from skiff.core.images.errors import (
    ImageConflict,
    ImageNotFound,
    InvalidImage,
    InvalidReference,
    LayerNotFound,
)
from skiff.core.images.layers import LayerStore, chain_ids
from skiff.core.images.reference import (
    Reference,
    familiar_match,
    familiar_name,
    familiar_string,
    is_full_id,
    parse,
    parse_digest,
)
from skiff.core.timefmt import now_rfc3339

log = structlog.get_logger("skiff.images.store")

__all__ = [
    "ZERO_CONTAINER_CONFIG",
    "ZERO_TIME",
    "ContainerUsers",
    "Image",
    "ImageStore",
    "encode_config",
    "go_time",
    "parse_config",
]

ZERO_TIME = "0001-01-01T00:00:00Z"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TIME_RE = re.compile(
    r"^(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(?:\.(\d+))?([Zz]|[+-]\d\d:\d\d)$"
)

#: Go's zero ``container.Config``, as Docker shows a missing ContainerConfig
ZERO_CONTAINER_CONFIG: dict[str, Any] = {
    "Hostname": "", "Domainname": "", "User": "", "AttachStdin": False,
    "AttachStdout": False, "AttachStderr": False, "Tty": False, "OpenStdin": False,
    "StdinOnce": False, "Env": None, "Cmd": None, "Image": "", "Volumes": None,
    "WorkingDir": "", "Entrypoint": None, "OnBuild": None, "Labels": None,
}

#: Who uses an image: given an image ID, a container ID using it, or
#: ``(container_id, running)``, or a list of either; None/empty when unused.
#: A plain ID counts as a stopped container (a forced delete may proceed);
#: report running users as ``(id, True)`` so that even ``-f`` refuses.
ContainerUsers = Callable[[str], Any]

# Docker's conflict kinds (daemon/images/image_delete.go)
_CHILD, _RUNNING, _ACTIVE_REF, _STOPPED = 1, 2, 4, 8
_HARD = _CHILD | _RUNNING
_SOFT = _ACTIVE_REF | _STOPPED


def encode_config(obj: Mapping[str, Any]) -> bytes:
    """Serialise an image config compactly and stably (sorted keys), so the same
    content always gives the same image ID."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _parse_time(text: str) -> tuple[datetime, str, str] | None:
    """(UTC datetime, fraction digits, zone) of an RFC 3339 string, or None."""
    m = _TIME_RE.match(text)
    if not m:
        return None
    y, mo, d, h, mi, s, frac, zone = m.groups()
    try:
        dt = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), tzinfo=UTC)
    except ValueError:
        return None
    zone = zone.upper()
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        offset = timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
        if not offset:
            zone = "Z"
        dt = dt.replace(tzinfo=timezone(sign * offset))
    return dt, frac or "", zone


def go_time(text: str | None) -> str:
    """A timestamp as Go's ``Format(time.RFC3339Nano)`` prints it: trailing zeros
    of the fraction dropped, a zero offset as ``Z``; Go's zero time for none."""
    if not text:
        return ZERO_TIME
    parsed = _parse_time(text)
    if parsed is None:
        return text
    frac = parsed[1][:9].rstrip("0")
    base = text[:19].replace("t", "T")
    return base + ("." + frac if frac else "") + parsed[2]


def _unix(text: str | None) -> int:
    """Seconds since the epoch (Go's ``Time.Unix``; the zero time is -62135596800)."""
    parsed = _parse_time(text) if text else None
    dt = parsed[0] if parsed else datetime(1, 1, 1, tzinfo=UTC)
    return int((dt - _EPOCH) // timedelta(seconds=1))


def _unix_float(text: str | None) -> float:
    parsed = _parse_time(text) if text else None
    if parsed is None:
        return float(_unix(None))
    dt, frac, _ = parsed
    return (dt - _EPOCH).total_seconds() + (int(frac[:9].ljust(9, "0")) / 1e9 if frac else 0.0)


def _short(image_id: str) -> str:
    """Docker's ``stringid.TruncateID``."""
    return image_id.split(":", 1)[-1][:12]


@dataclass
class Image:
    """An image in the store: its parsed config and what the store knows of it."""

    id: str  #: "sha256:<hex>"
    config: dict[str, Any]  #: the whole image config (config, rootfs, history, ...)
    diff_ids: list[str]
    top_layer: str | None  #: chain ID of the top layer; None for an image without layers
    parent: str = ""  #: parent image ID (images made by commit/build), "" for none
    last_updated: str | None = None
    size: int = 0  #: bytes its layers hold, base to top (filled by the store)
    chain: list[str] = field(default_factory=list)  #: chain IDs, base first

    @property
    def created(self) -> str:
        return go_time(self.config.get("created"))

    @property
    def created_unix(self) -> int:
        return _unix(self.config.get("created"))

    @property
    def labels(self) -> dict[str, str] | None:
        cfg = self.config.get("config")
        return cfg.get("Labels") if isinstance(cfg, dict) else None


class _DeleteConflict(ImageConflict):
    def __init__(self, image_id: str, message: str, *, hard: bool, used: bool) -> None:
        force = "cannot be forced" if hard else "must be forced"
        super().__init__(f"conflict: unable to delete {_short(image_id)} ({force}) - {message}")
        self.hard = hard
        self.used = used


def parse_config(raw: bytes) -> tuple[dict[str, Any], list[str]]:
    """Check an image config (JSON object, rootfs of layers, sha256 diff_ids,
    RFC 3339 created); returns it parsed and its diff_ids."""
    try:
        cfg = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidImage(f"invalid image config: not JSON: {exc}") from exc
    if not isinstance(cfg, dict):
        raise InvalidImage("invalid image config: expected a JSON object")
    rootfs = cfg.get("rootfs")
    if not isinstance(rootfs, dict):
        raise InvalidImage("invalid image JSON, no RootFS key")
    if rootfs.get("type") != "layers":
        raise InvalidImage(f"invalid image config: unsupported rootfs type {rootfs.get('type')!r}")
    diff_ids = rootfs.get("diff_ids") or []
    if not isinstance(diff_ids, list):
        raise InvalidImage("invalid image config: rootfs.diff_ids must be a list")
    for d in diff_ids:
        if not isinstance(d, str):
            raise InvalidImage(f"invalid image config: bad diff_id {d!r}")
        try:
            parse_digest(d)
        except InvalidReference as exc:
            raise InvalidImage(f"invalid image config: bad diff_id {d!r}: {exc}") from None
        if not d.startswith("sha256:"):
            raise InvalidImage(f"invalid image config: unsupported diff_id algorithm in {d!r}")
    created = cfg.get("created")
    if created is not None and (not isinstance(created, str) or _parse_time(created) is None):
        raise InvalidImage(f"invalid image config: bad created time {created!r}")
    if cfg.get("config") is not None and not isinstance(cfg.get("config"), dict):
        raise InvalidImage("invalid image config: config must be an object")
    return cfg, list(diff_ids)


def _normalise_users(result: Any) -> list[tuple[str, bool]]:
    if not result:
        return []
    if isinstance(result, str):
        return [(result, False)]
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], bool):
        return [(str(result[0]), result[1])]
    out: list[tuple[str, bool]] = []
    for item in result:
        out.extend(_normalise_users(item))
    return out


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
        self._lock = threading.RLock()
        self._images: dict[str, Image] = {}  # by full ID
        self._sorted: list[str] = []  # hex IDs, sorted, for prefix search
        self._children: dict[str, set[str]] = {}
        #: familiar string -> (reference, image ID), as repositories.json holds them
        self._refs: dict[str, tuple[Reference, str]] = {}
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
        try:
            with open(self._repos_path, "rb") as f:
                data = json.load(f)
        except FileNotFoundError:
            data = {}
        except (OSError, json.JSONDecodeError) as exc:
            log.warning("image.repositories_unreadable", path=self._repos_path, error=str(exc))
            data = {}
        dropped = False
        for repo in (data.get("Repositories") or {}).values():
            for key, image_id in (repo or {}).items():
                try:
                    ref = parse(key, default_tag=False)
                except InvalidReference:
                    dropped = True
                    continue
                if image_id not in self._images:
                    dropped = True
                    continue
                self._refs[familiar_string(ref)] = (ref, image_id)
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
        repos: dict[str, dict[str, str]] = {}
        for key, (ref, image_id) in self._refs.items():
            repos.setdefault(familiar_name(ref), {})[key] = image_id
        data = {"Repositories": {k: dict(sorted(v.items())) for k, v in sorted(repos.items())}}
        write_json_atomic(self._repos_path, data, 0o600)

    # -- creating ---------------------------------------------------------------

    def create(self, config: bytes, parent: str | None = None) -> str:
        """Store an image config whose layers are registered; returns its ID.

        The image takes its own reference on its top layer.  Creating an image
        that exists changes nothing (its ID is its content).
        """
        cfg, diff_ids = parse_config(config)
        hexid = hashlib.sha256(config).hexdigest()
        image_id = "sha256:" + hexid
        with self._lock:
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
                        f"cannot create image {_short(image_id)}: its layers are not "
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
        with self._lock:
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
        with self._lock:
            return len(self._images)

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._images)

    def exists(self, image_id: str) -> bool:
        with self._lock:
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
        with self._lock:
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
        with self._lock:
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
            key = self._ref_key(ref)
            hit = self._refs.get(key)
            if hit is not None and hit[1] in self._images:
                return hit[1]
            found = self.search(name)
            if found is not None:
                return found
            raise ImageNotFound(familiar_string(ref.with_default_tag()))

    @staticmethod
    def _ref_key(ref: Reference) -> str:
        """The key a reference is stored under: a digest wins over a tag."""
        if ref.digest is not None:
            return familiar_string(Reference(ref.domain, ref.path, None, ref.digest))
        return familiar_string(ref.with_default_tag())

    def get(self, name: str) -> Image:
        """The image ``name`` designates (Docker's lookup rules); ``ImageNotFound``
        ("No such image: busybox:latest") or ``InvalidReference`` otherwise."""
        with self._lock:
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
        with self._lock:
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
        with self._lock:
            hit = self._refs.get(self._ref_key(ref))
            return hit[1] if hit else None

    def references_by_name(self, name: str | Reference) -> list[tuple[Reference, str]]:
        """Every (reference, image ID) of one repository (``docker save busybox``)."""
        ref = parse(name, default_tag=False) if isinstance(name, str) else name
        with self._lock:
            out = [(r, iid) for r, iid in self._refs.values() if r.name == ref.name]
        return sorted(out, key=lambda x: str(x[0]))

    def children(self, image_id: str) -> list[str]:
        with self._lock:
            return sorted(self._children.get(image_id, ()))

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
        with self._lock:
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
        with self._lock:
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
        with self._lock:
            key = self._ref_key(parsed)
            hit = self._refs.pop(key, None)
            if hit is None:
                raise ImageNotFound(key, f"No such image: {key}")
            self._save_refs()
            return hit[1]

    # -- delete -----------------------------------------------------------------------

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
        with self._lock:
            image_id = self._resolve(name)
            records: list[dict[str, str]] = []
            repo_refs = self.references(image_id)
            removed_repo_ref = False
            try:
                if not _is_id_prefix(image_id, name):
                    if not force and _is_single_reference(repo_refs):
                        users = _normalise_users(in_use(image_id) if in_use else None)
                        if users:
                            raise ImageConflict(
                                f'conflict: unable to remove repository reference "{name}" '
                                f"(must force) - container {_short(users[0][0])} is using "
                                f"its referenced image {_short(image_id)}"
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
                elif _is_single_reference(repo_refs):
                    mask = _HARD if force else _HARD | (_SOFT & ~_ACTIVE_REF)
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
        return _normalise_users(in_use(image_id) if in_use else None)

    def _conflict(
        self, image_id: str, mask: int, in_use: ContainerUsers | None
    ) -> _DeleteConflict | None:
        if mask & _CHILD and self._children.get(image_id):
            return _DeleteConflict(image_id, "image has dependent child images",
                                   hard=True, used=False)
        users = self._users(image_id, in_use) if mask & (_RUNNING | _STOPPED) else []
        if mask & _RUNNING:
            running = [cid for cid, run in users if run]
            if running:
                return _DeleteConflict(
                    image_id, f"image is being used by running container {_short(running[0])}",
                    hard=True, used=True)
        if mask & _ACTIVE_REF and self.references(image_id):
            return _DeleteConflict(image_id, "image is referenced in multiple repositories",
                                   hard=False, used=False)
        if mask & _STOPPED:
            stopped = [cid for cid, run in users if not run]
            if stopped:
                return _DeleteConflict(
                    image_id, f"image is being used by stopped container {_short(stopped[0])}",
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
        mask = _HARD if force else _HARD | _SOFT
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

    # -- prune -------------------------------------------------------------------------

    def prune(
        self,
        filters: Mapping[str, Any] | None = None,
        in_use: ContainerUsers | None = None,
        until: float | None = None,
    ) -> dict[str, Any]:
        """``POST /images/prune``, as Moby's ``ImagesPrune``.

        By default (``dangling=true``) the images nobody names and no image
        builds on are deleted; with ``dangling=false`` every image no
        container uses.  ``label``/``label!`` filter by label; ``until``
        (seconds since the epoch, parsed by the caller from the ``until``
        filter) keeps images created after it.  An image a container uses is
        skipped (the delete conflicts).  Returns Docker's report:
        ``{"ImagesDeleted": [...] or None, "SpaceReclaimed": bytes}``.
        """
        flt: dict[str, list[str]] = {}
        for key, value in (filters or {}).items():
            if key not in ("dangling", "label", "label!", "until"):
                raise InvalidParameter(f"invalid filter '{key}'")
            if isinstance(value, Mapping):
                flt[key] = [k for k, on in value.items() if on]
            elif isinstance(value, str):
                flt[key] = [value]
            else:
                flt[key] = [str(v) for v in value]
        dangling_only = True
        if "dangling" in flt:
            values = set(flt["dangling"])
            if values & {"false", "0"}:
                dangling_only = False
            elif not values & {"true", "1"}:
                raise InvalidParameter(f"Invalid filter 'dangling={sorted(values)}'")
        records: list[dict[str, str]] = []
        sizes: dict[str, int] = {}
        with self._lock:
            candidates: list[Image] = []
            for image_id, image in self._images.items():
                has_children = bool(self._children.get(image_id))
                if dangling_only and has_children:
                    continue  # not a head
                if not self.references(image_id) and has_children:
                    continue  # an intermediate image: goes with its child
                if until is not None and _unix_float(image.config.get("created")) > until:
                    continue
                labels = image.labels or {}
                if flt.get("label") and not _match_kv(flt["label"], labels):
                    continue
                if flt.get("label!") and labels and _match_kv(flt["label!"], labels):
                    continue
                candidates.append(image)
                for chain in image.chain:
                    with contextlib.suppress(LayerNotFound):
                        sizes[chain] = self.layers.get(chain).size
            for image in candidates:
                if image.id not in self._images:
                    continue  # went with an image deleted before it
                refs = self.references(image.id)
                names: list[str]
                if refs:
                    if dangling_only and any(r.tag is not None for r in refs):
                        continue
                    names = [familiar_string(r) for r in refs]
                else:
                    names = [image.id[7:]]
                for name in names:
                    try:
                        records.extend(self.delete(name, False, True, in_use))
                    except (ImageConflict, ImageNotFound):
                        continue
                    except Exception as exc:  # one bad image must not stop the prune
                        log.warning("image.prune_failed", image=name, error=str(exc))
        reclaimed = sum(sizes.get(r.get("Deleted", ""), 0) for r in records)
        log.info("image.pruned", images=sum(1 for r in records if "Deleted" in r),
                 reclaimed=reclaimed)
        return {"ImagesDeleted": records or None, "SpaceReclaimed": reclaimed}

    # -- views for the API -----------------------------------------------------------

    def list(
        self, all: bool = False, filters: Mapping[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """``GET /images/json``: summaries, newest first; Docker's filters
        ``dangling``, ``label``, ``before``, ``since``, ``reference``."""
        flt = _normalise_filters(filters)
        dangling_only = False
        if "dangling" in flt:
            values = set(flt["dangling"])
            if values <= {"true", "1"}:
                dangling_only = True
            elif not values <= {"false", "0"}:
                raise InvalidParameter(f"Invalid filter 'dangling={sorted(values)[0]}'")
        before = since = None
        for value in flt.get("before", []):
            before = self.get(value)
        for value in flt.get("since", []):
            since = self.get(value)
        out: list[tuple[float, dict[str, Any]]] = []
        with self._lock:
            refs_of: dict[str, list[Reference]] = {}
            for ref, iid in self._refs.values():
                refs_of.setdefault(iid, []).append(ref)
            for image_id, image in list(self._images.items()):
                if dangling_only and self._children.get(image_id):
                    continue
                created = _unix_float(image.config.get("created"))
                if before is not None and created >= _unix_float(before.config.get("created")):
                    continue
                if since is not None and created <= _unix_float(since.config.get("created")):
                    continue
                if "label" in flt:
                    labels = image.labels or {}
                    if not labels or not _match_kv(flt["label"], labels):
                        continue
                tags: list[str] = []
                digests: list[str] = []
                for ref in sorted(refs_of.get(image_id, []), key=str):
                    if "reference" in flt and not any(
                        familiar_match(p, ref) for p in flt["reference"]
                    ):
                        continue
                    if ref.digest is not None:
                        digests.append(familiar_string(ref))
                    if ref.tag is not None:
                        tags.append(familiar_string(ref))
                if not tags and not digests:
                    if all or not self._children.get(image_id):
                        if "dangling" in flt and not dangling_only:
                            continue
                        if "reference" in flt:
                            continue
                        digests, tags = ["<none>@<none>"], ["<none>:<none>"]
                    else:
                        continue
                elif dangling_only and tags:
                    continue
                size = self.layers.size(image.top_layer)
                out.append((created, {
                    "Containers": -1,
                    "Created": image.created_unix,
                    "Id": image_id,
                    "Labels": image.labels,
                    "ParentId": image.parent,
                    "RepoDigests": digests,
                    "RepoTags": tags,
                    "SharedSize": -1,
                    "Size": size,
                    "VirtualSize": size,
                }))
        out.sort(key=lambda x: x[0], reverse=True)
        return [summary for _, summary in out]

    def inspect(self, name: str) -> dict[str, Any]:
        """``GET /images/{name}/json`` in Docker's shape."""
        with self._lock:
            image = self.get(name)
            cfg = image.config
            comment = cfg.get("comment") or ""
            history = cfg.get("history") or []
            if not comment and history and isinstance(history[-1], dict):
                comment = history[-1].get("comment") or ""
            out: dict[str, Any] = {
                "Id": image.id,
                "RepoTags": self.repo_tags(image.id),
                "RepoDigests": self.repo_digests(image.id),
                "Parent": image.parent,
                "Comment": comment,
                "Created": image.created,
                "Container": cfg.get("container") or "",
                "ContainerConfig": cfg.get("container_config") or dict(ZERO_CONTAINER_CONFIG),
                "DockerVersion": cfg.get("docker_version") or "",
                "Author": cfg.get("author") or "",
                "Config": cfg.get("config"),
                "Architecture": cfg.get("architecture") or "",
            }
            if cfg.get("variant"):
                out["Variant"] = cfg["variant"]
            out["Os"] = cfg.get("os") or "linux"
            if cfg.get("os.version"):
                out["OsVersion"] = cfg["os.version"]
            out["Size"] = image.size
            out["VirtualSize"] = image.size
            graph_data = None
            if image.top_layer is not None:
                try:
                    graph_data = self.layers.metadata(image.top_layer)
                except Exception as exc:  # a driver hiccup must not hide the image
                    log.warning("image.graphdriver_metadata_failed", id=image.id,
                                error=str(exc))
            out["GraphDriver"] = {"Data": graph_data, "Name": self.driver_name}
            rootfs: dict[str, Any] = {"Type": "layers"}
            if image.diff_ids:
                rootfs["Layers"] = list(image.diff_ids)
            out["RootFS"] = rootfs
            out["Metadata"] = {"LastTagTime": go_time(image.last_updated)}
            return out

    def history(self, name: str) -> list[dict[str, Any]]:
        """``GET /images/{name}/history``: newest first, Docker's shape."""
        with self._lock:
            image = self.get(name)
            items: list[dict[str, Any]] = []
            layer_index = 0
            for h in image.config.get("history") or []:
                if not isinstance(h, dict):
                    continue
                size = 0
                if not h.get("empty_layer"):
                    if layer_index >= len(image.chain):
                        raise InvalidImage("too many non-empty layers in History section")
                    size = self.layers.get(image.chain[layer_index]).size
                    layer_index += 1
                items.insert(0, {
                    "Comment": h.get("comment") or "",
                    "Created": _unix(h.get("created")),
                    "CreatedBy": h.get("created_by") or "",
                    "Id": "<missing>",
                    "Size": size,
                    "Tags": None,
                })
            current: Image | None = image
            for item in items:
                if current is None:
                    break
                item["Id"] = current.id
                item["Tags"] = self.repo_tags(current.id) or None
                parent = current.parent
                current = self._images.get(parent) if parent else None
                if current is None:
                    break
            return items


def _is_id_prefix(image_id: str, name: str) -> bool:
    """Docker's ``isImageIDPrefix``: was the image named by (part of) its ID?"""
    return image_id.startswith(name) or image_id.split(":", 1)[1].startswith(name)


def _is_single_reference(refs: Sequence[Reference]) -> bool:
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


_FILTER_KEYS = ("before", "dangling", "label", "reference", "since")


def _normalise_filters(filters: Mapping[str, Any] | None) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, value in (filters or {}).items():
        if key not in _FILTER_KEYS:
            raise InvalidParameter(f"invalid filter '{key}'")
        if isinstance(value, Mapping):
            values = [k for k, on in value.items() if on]
        elif isinstance(value, str):
            values = [value]
        elif isinstance(value, Iterable):
            values = [str(v) for v in value]
        else:
            raise InvalidParameter(f"invalid filter '{key}': {value!r}")
        if values:
            out[key] = values
    return out


def _match_kv(wanted: Sequence[str], labels: Mapping[str, str]) -> bool:
    for item in wanted:
        key, eq, value = item.partition("=")
        if key not in labels:
            return False
        if eq and labels[key] != value:
            return False
    return True
