"""The names of images, as ``repositories.json`` holds them (Moby's reference
store): ``{"Repositories": {repo: {familiar reference: image ID}}}``, and the
key each reference is kept under."""

from __future__ import annotations

import json
from collections.abc import Container, Mapping

import structlog

from skiff.core.atomic import write_json_atomic
from skiff.core.images.errors import InvalidReference
from skiff.core.images.reference import Reference, familiar_name, familiar_string, parse

log = structlog.get_logger("skiff.images.store")

__all__ = ["Names", "load_repositories", "ref_key", "save_repositories"]

#: familiar string -> (reference, image ID)
Names = dict[str, tuple[Reference, str]]


def ref_key(ref: Reference) -> str:
    """The key a reference is stored under: a digest wins over a tag."""
    if ref.digest is not None:
        return familiar_string(Reference(ref.domain, ref.path, None, ref.digest))
    return familiar_string(ref.with_default_tag())


def load_repositories(path: str, images: Container[str]) -> tuple[Names, bool]:
    """The names in ``path`` that parse and point at one of ``images``, and
    whether some did not (the caller saves the file again without them)."""
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except FileNotFoundError:
        data = {}
    except (OSError, json.JSONDecodeError) as exc:
        log.warning("image.repositories_unreadable", path=path, error=str(exc))
        data = {}
    names: Names = {}
    dropped = False
    for repo in (data.get("Repositories") or {}).values():
        for key, image_id in (repo or {}).items():
            try:
                ref = parse(key, default_tag=False)
            except InvalidReference:
                dropped = True
                continue
            if image_id not in images:
                dropped = True
                continue
            names[familiar_string(ref)] = (ref, image_id)
    return names, dropped


def save_repositories(path: str, names: Mapping[str, tuple[Reference, str]]) -> None:
    repos: dict[str, dict[str, str]] = {}
    for key, (ref, image_id) in names.items():
        repos.setdefault(familiar_name(ref), {})[key] = image_id
    data = {"Repositories": {k: dict(sorted(v.items())) for k, v in sorted(repos.items())}}
    write_json_atomic(path, data, 0o600)
