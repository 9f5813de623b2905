"""Image records: an image's config as Docker checks and encodes it, the
``Image`` the store keeps of it, and the timestamps as Go prints them (the
API shows Go's formats, zero time included)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from skiff.core.images.errors import InvalidImage, InvalidReference
from skiff.core.images.reference import parse_digest

__all__ = [
    "ZERO_CONTAINER_CONFIG",
    "ZERO_TIME",
    "Image",
    "encode_config",
    "go_time",
    "parse_config",
    "parse_time",
    "short_id",
    "unix",
    "unix_float",
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


def encode_config(obj: Mapping[str, Any]) -> bytes:
    """Serialise an image config compactly and stably (sorted keys), so the same
    content always gives the same image ID."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def parse_time(text: str) -> tuple[datetime, str, str] | None:
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
    parsed = parse_time(text)
    if parsed is None:
        return text
    frac = parsed[1][:9].rstrip("0")
    base = text[:19].replace("t", "T")
    return base + ("." + frac if frac else "") + parsed[2]


def unix(text: str | None) -> int:
    """Seconds since the epoch (Go's ``Time.Unix``; the zero time is -62135596800)."""
    parsed = parse_time(text) if text else None
    dt = parsed[0] if parsed else datetime(1, 1, 1, tzinfo=UTC)
    return int((dt - _EPOCH) // timedelta(seconds=1))


def unix_float(text: str | None) -> float:
    parsed = parse_time(text) if text else None
    if parsed is None:
        return float(unix(None))
    dt, frac, _ = parsed
    return (dt - _EPOCH).total_seconds() + (int(frac[:9].ljust(9, "0")) / 1e9 if frac else 0.0)


def short_id(image_id: str) -> str:
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
        return unix(self.config.get("created"))

    @property
    def labels(self) -> dict[str, str] | None:
        cfg = self.config.get("config")
        return cfg.get("Labels") if isinstance(cfg, dict) else None



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
    if created is not None and (not isinstance(created, str) or parse_time(created) is None):
        raise InvalidImage(f"invalid image config: bad created time {created!r}")
    if cfg.get("config") is not None and not isinstance(cfg.get("config"), dict):
        raise InvalidImage("invalid image config: config must be an object")
    return cfg, list(diff_ids)

