"""Docker image references: parsing, normalising and the familiar short form.

The grammar and the error messages are those of Docker's
``distribution/reference`` package::

    reference   := name [ ":" tag ] [ "@" digest ]
    name        := [domain "/"] path-component ["/" path-component]*
    domain      := host [":" port]        (host: DNS name, or [IPv6])
    path-comp.  := [a-z0-9]+ ((\\.|_|__|-+) [a-z0-9]+)*
    tag         := [\\w][\\w.-]{0,127}
    digest      := algorithm ":" hex{32,}

A *normalised* reference always has a domain and a tag or digest:
``busybox`` is ``docker.io/library/busybox:latest``.  The *familiar* form is
what people type and what Docker prints: the default domain and the
``library/`` prefix of official images are dropped (``busybox:latest``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from skiff.core.images.errors import InvalidReference

__all__ = [
    "DEFAULT_DOMAIN",
    "DEFAULT_TAG",
    "Reference",
    "familiar_match",
    "familiar_name",
    "familiar_string",
    "is_full_id",
    "parse",
    "parse_digest",
    "split_domain",
]

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_REPO_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_TOTAL_LENGTH_MAX = 255

ERR_INVALID_FORMAT = "invalid reference format"
ERR_UPPERCASE = "invalid reference format: repository name must be lowercase"

# -- regular expressions, built piece by piece as in distribution/reference ---
_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_DOMAIN_NAME = _DOMAIN_COMPONENT + r"(?:\." + _DOMAIN_COMPONENT + r")*"
_HOST = r"(?:" + _DOMAIN_NAME + "|" + _IPV6 + ")"
_DOMAIN = _HOST + r"(?::[0-9]+)?"
_PATH_COMPONENT = _ALNUM + r"(?:" + _SEPARATOR + _ALNUM + r")*"
_REMOTE_NAME = _PATH_COMPONENT + r"(?:/" + _PATH_COMPONENT + r")*"
_NAME = r"(?:" + _DOMAIN + r"/)?" + _REMOTE_NAME
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"

_REFERENCE_RE = re.compile(
    r"(" + _NAME + r")(?::(" + _TAG + r"))?(?:@(" + _DIGEST + r"))?", re.ASCII
)
_NAME_RE = re.compile(r"(?:(" + _DOMAIN + r")/)?(" + _REMOTE_NAME + r")", re.ASCII)
_TAG_RE = re.compile(_TAG, re.ASCII)
_DOMAIN_RE = re.compile(_DOMAIN, re.ASCII)
_PATH_RE = re.compile(_REMOTE_NAME, re.ASCII)
_DIGEST_RE = re.compile(_DIGEST, re.ASCII)
_ID_RE = re.compile(r"[a-f0-9]{64}")

#: hex length of the digest algorithms go-digest knows
_ALGORITHMS = {"sha256": 64, "sha384": 96, "sha512": 128}


@dataclass(frozen=True, order=True)
class Reference:
    """A normalised image reference.

    ``domain`` and ``path`` are always set (``docker.io``, ``library/busybox``);
    ``tag`` and ``digest`` may each be None.  ``str()`` gives the full form,
    ``familiar`` the short one Docker prints.
    """

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """The repository's full name: ``docker.io/library/busybox``."""
        return f"{self.domain}/{self.path}"

    @property
    def familiar_name(self) -> str:
        """The repository's short name: ``busybox``."""
        return familiar_name(self)

    @property
    def familiar(self) -> str:
        """The short form with tag and digest: ``busybox:latest``."""
        return familiar_string(self)

    @property
    def name_only(self) -> bool:
        """Neither a tag nor a digest."""
        return self.tag is None and self.digest is None

    def with_tag(self, tag: str) -> Reference:
        if not _TAG_RE.fullmatch(tag):
            raise InvalidReference("invalid tag format")
        return replace(self, tag=tag)

    def with_digest(self, digest: str) -> Reference:
        return replace(self, digest=parse_digest(digest))

    def with_default_tag(self) -> Reference:
        """Docker's ``TagNameOnly``: a bare name gets ``:latest``."""
        return replace(self, tag=DEFAULT_TAG) if self.name_only else self

    def trimmed(self) -> Reference:
        """The bare repository name, tag and digest dropped."""
        return Reference(self.domain, self.path)

    def __str__(self) -> str:
        out = self.name
        if self.tag is not None:
            out += ":" + self.tag
        if self.digest is not None:
            out += "@" + self.digest
        return out


def parse_digest(text: str) -> str:
    """Validate ``algorithm:hex`` the way go-digest does; returns it unchanged."""
    alg, sep, encoded = text.partition(":")
    if not alg or not sep or not encoded:
        raise InvalidReference("invalid checksum digest format")
    if alg not in _ALGORITHMS:
        if not _DIGEST_RE.fullmatch(text):
            raise InvalidReference("invalid checksum digest format")
        raise InvalidReference("unsupported digest algorithm")
    if len(encoded) != _ALGORITHMS[alg]:
        raise InvalidReference("invalid checksum digest length")
    if not re.fullmatch(r"[a-f0-9]+", encoded):
        raise InvalidReference("invalid checksum digest format")
    return text


def is_full_id(text: str) -> bool:
    """Whether ``text`` is a bare 64-hex identifier (an image ID without ``sha256:``)."""
    return _ID_RE.fullmatch(text) is not None


def split_domain(name: str) -> tuple[str, str]:
    """Docker's ``splitDockerDomain``: (domain, remainder) of a possibly short name.

    The first component is a domain only when it looks like one: it holds a
    ``.`` or a ``:``, is ``localhost``, or has capitals (which a path may not).
    """
    i = name.find("/")
    first = name[:i] if i >= 0 else ""
    if i == -1 or (
        not any(c in first for c in ".:") and first != "localhost" and first.lower() == first
    ):
        domain, remainder = DEFAULT_DOMAIN, name
    else:
        domain, remainder = first, name[i + 1 :]
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in remainder:
        remainder = OFFICIAL_REPO_PREFIX + remainder
    return domain, remainder


def _parse_full(text: str) -> Reference:
    """Docker's ``reference.Parse`` of an already normalised string."""
    m = _REFERENCE_RE.fullmatch(text)
    if m is None:
        if not text:
            raise InvalidReference("repository name must have at least one component")
        if _REFERENCE_RE.fullmatch(text.lower()):
            raise InvalidReference(ERR_UPPERCASE)
        raise InvalidReference(ERR_INVALID_FORMAT)
    name, tag, digest = m.group(1), m.group(2), m.group(3)
    if len(name) > NAME_TOTAL_LENGTH_MAX:
        raise InvalidReference(
            f"repository name must not be more than {NAME_TOTAL_LENGTH_MAX} characters"
        )
    nm = _NAME_RE.fullmatch(name)
    if nm is None or nm.group(1) is None:  # pragma: no cover - callers always add a domain
        raise InvalidReference(ERR_INVALID_FORMAT)
    if digest is not None:
        parse_digest(digest)
    return Reference(nm.group(1), nm.group(2), tag, digest)


def parse(text: str, *, default_tag: bool = True) -> Reference:
    """Parse and normalise a reference as ``docker`` does (``ParseNormalizedNamed``).

    ``busybox`` becomes ``docker.io/library/busybox:latest``; with
    ``default_tag=False`` a bare name keeps no tag (``docker push`` of every
    tag, ``docker save`` of a whole repository).  Raises ``InvalidReference``
    with Docker's message.
    """
    if not isinstance(text, str):
        raise InvalidReference(ERR_INVALID_FORMAT)
    if _ID_RE.fullmatch(text):
        raise InvalidReference(
            f"invalid repository name ({text}), cannot specify 64-byte hexadecimal strings"
        )
    domain, remainder = split_domain(text)
    remote = remainder.split(":", 1)[0]
    if remote.lower() != remote:
        raise InvalidReference(ERR_UPPERCASE)
    ref = _parse_full(f"{domain}/{remainder}")
    return ref.with_default_tag() if default_tag else ref


def familiar_name(ref: Reference) -> str:
    """``busybox`` for docker.io/library/busybox, ``user/app`` for docker.io/user/app."""
    if ref.domain != DEFAULT_DOMAIN:
        return ref.name
    path = ref.path
    if path.startswith(OFFICIAL_REPO_PREFIX) and path.count("/") == 1:
        return path[len(OFFICIAL_REPO_PREFIX) :]
    return path


def familiar_string(ref: Reference) -> str:
    """The familiar form with tag and digest: ``busybox:latest``, ``a/b@sha256:...``."""
    out = familiar_name(ref)
    if ref.tag is not None:
        out += ":" + ref.tag
    if ref.digest is not None:
        out += "@" + ref.digest
    return out


def _glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Go's ``path.Match`` syntax as a regex: ``*`` and ``?`` never match ``/``."""
    out: list[str] = []
    i = 0
    n = len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "\\":
            i += 1
            if i >= n:
                raise InvalidReference(f"invalid reference filter pattern {pattern!r}")
            out.append(re.escape(pattern[i]))
        elif c == "[":
            j = i + 1
            negate = j < n and pattern[j] == "^"
            if negate:
                j += 1
            cls: list[str] = []
            while j < n and (pattern[j] != "]" or not cls):
                ch = pattern[j]
                if ch == "\\" and j + 1 < n:
                    j += 1
                    ch = pattern[j]
                    cls.append(re.escape(ch))
                elif ch == "-" and cls and j + 1 < n and pattern[j + 1] != "]":
                    cls.append("-")
                else:
                    cls.append(re.escape(ch))
                j += 1
            if j >= n:
                raise InvalidReference(f"invalid reference filter pattern {pattern!r}")
            out.append("[" + ("^/" if negate else "") + "".join(cls) + "]")
            i = j
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def familiar_match(pattern: str, ref: Reference) -> bool:
    """Docker's ``FamiliarMatch``: ``pattern`` (path.Match glob) against the
    familiar name or the familiar string (the ``reference=`` image filter)."""
    rx = _glob_to_regex(pattern)
    return bool(rx.fullmatch(familiar_name(ref)) or rx.fullmatch(familiar_string(ref)))
