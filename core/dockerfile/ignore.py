"""``.dockerignore``: which files of a build context COPY and ADD never see.

The file's rules, as Docker reads it (:func:`read_dockerignore`): one pattern a
line; a line starting with ``#`` (in column 1) is a comment; blanks around a
pattern are dropped and so are empty lines; ``!`` makes an exception (a path
it matches is included again); each pattern is cleaned like a path (``./a``,
``a/``, ``a//b/../b`` are ``a``, ``a``, ``a/b``) and a leading ``/`` dropped:
the context's root is both the working and the root directory.

Matching (:class:`IgnoreMatcher`), on ``/``-separated paths relative to the
context's root: ``*`` matches any run of characters but ``/``, ``?`` one
character but ``/``, ``[...]`` a class, ``\\`` escapes; ``**`` matches any
number of directories, zero included (``**/*.go`` is every ``.go`` file, at the
root too).  A pattern that matches a directory matches everything in it.  The
last pattern that matches a path (itself or a parent) decides: excluded,
unless that pattern is an exception.  Docker's particular cases are kept: a
pattern starting with ``**`` followed by a plain name matches that name as a
suffix (``**.txt`` is every name ending in ``.txt``), and ``a/**`` matches
what is inside ``a``, not ``a`` itself.

The Dockerfile and ``.dockerignore`` themselves are always read by the builder
even when a pattern excludes them (clients send them for that reason); an
excluded one is only hidden from COPY and ADD: :func:`always_read` names them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from skiff.core.dockerfile.errors import DockerfileError

__all__ = ["IgnoreMatcher", "always_read", "clean_path", "read_dockerignore"]

_EXACT, _PREFIX, _SUFFIX, _REGEX = "exact", "prefix", "suffix", "regex"
_ESCAPED = frozenset(".+()|{}$")


def clean_path(path: str) -> str:
    """Go's ``filepath.Clean`` on a ``/``-separated path: no empty or ``.``
    elements, ``..`` resolved where it can be, no trailing ``/``; ``""`` is ``.``."""
    rooted = path.startswith("/")
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not rooted:
                parts.append("..")
            continue
        parts.append(part)
    body = "/".join(parts)
    if rooted:
        return "/" + body
    return body or "."


def read_dockerignore(data: str | bytes) -> list[str]:
    """The patterns of a ``.dockerignore`` file, cleaned, in order; an exception
    keeps its ``!`` prefix.  Comments and empty lines are dropped."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    text = text.removeprefix("\ufeff")
    patterns: list[str] = []
    for line in text.split("\n"):
        if line.startswith("#"):
            continue
        pattern = line.strip()
        if not pattern:
            continue
        exception = pattern.startswith("!")
        if exception:
            pattern = pattern[1:].strip()
        if pattern:
            pattern = clean_path(pattern)
            if len(pattern) > 1 and pattern.startswith("/"):
                pattern = pattern[1:]
        patterns.append("!" + pattern if exception else pattern)
    return patterns


def always_read(path: str, dockerfile: str = "Dockerfile") -> bool:
    """Whether the builder reads ``path`` (relative to the context) whatever the
    patterns say: ``.dockerignore`` and the Dockerfile (``dockerfile``, its
    path in the context).  COPY and ADD still obey the patterns for them."""
    path = clean_path(path)
    return path in (".dockerignore", clean_path(dockerfile))


@dataclass(frozen=True)
class _Pattern:
    text: str
    exception: bool
    kind: str
    regex: re.Pattern[str] | None
    parts: tuple[str, ...]

    def matches(self, path: str) -> bool:
        if self.kind == _EXACT:
            return path == self.text
        if self.kind == _PREFIX:
            return path.startswith(self.text[:-2])
        if self.kind == _SUFFIX:
            suffix = self.text[2:]
            return path.endswith(suffix) or (suffix.startswith("/") and path == suffix[1:])
        assert self.regex is not None
        return self.regex.match(path) is not None


def _translate(pattern: str) -> tuple[str, str]:
    """(kind, regular expression) of a cleaned pattern, Docker's way."""
    out = ["^"]
    kind = _EXACT
    i, n, step = 0, len(pattern), 0
    while i < n:
        ch = pattern[i]
        i += 1
        if ch == "*":
            if i < n and pattern[i] == "*":
                i += 1
                if i < n and pattern[i] == "/":
                    i += 1
                if i == n:
                    if kind == _EXACT:
                        kind = _PREFIX
                    else:
                        out.append(".*")
                        kind = _REGEX
                else:
                    out.append("(.*/)?")
                    kind = _REGEX
                if step == 0:
                    kind = _SUFFIX
            else:
                out.append("[^/]*")
                kind = _REGEX
        elif ch == "?":
            out.append("[^/]")
            kind = _REGEX
        elif ch in _ESCAPED:
            out.append("\\" + ch)
        elif ch == "\\":
            if i < n:
                out.append("\\" + pattern[i])
                i += 1
                kind = _REGEX
            else:
                out.append("\\\\")
        elif ch in "[]":
            out.append(ch)
            kind = _REGEX
        else:
            out.append(ch)
        step += 1
    return kind, "".join(out) + r"\Z"


def _compile(raw: str) -> _Pattern | None:
    text = raw.strip()
    if not text:
        return None
    text = clean_path(text)
    exception = text.startswith("!")
    if exception:
        if len(text) == 1:
            raise DockerfileError('illegal exclusion pattern: "!"')
        text = text[1:]
    kind, source = _translate(text)
    regex = None
    if kind == _REGEX:
        try:
            regex = re.compile(source)
        except re.error:
            raise DockerfileError(f"syntax error in pattern: {raw}") from None
    return _Pattern(text, exception, kind, regex, tuple(text.split("/")))


def _ancestors_and_self(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]


class IgnoreMatcher:
    """Docker's ``.dockerignore`` matching over a list of patterns (see the
    module's doc); an empty list excludes nothing."""

    def __init__(self, patterns: Iterable[str]) -> None:
        """Compile ``patterns`` (as :func:`read_dockerignore` gives them, ``!`` for
        exceptions).  Raises :class:`DockerfileError` for a bad pattern (an
        unclosed ``[``, a lone ``!``)."""
        self._patterns = [p for p in map(_compile, patterns) if p is not None]
        self.has_exceptions = any(p.exception for p in self._patterns)

    @classmethod
    def from_dockerignore(cls, data: str | bytes) -> IgnoreMatcher:
        """The matcher of a ``.dockerignore`` file's content."""
        return cls(read_dockerignore(data))

    @property
    def patterns(self) -> Sequence[str]:
        """The cleaned patterns, exceptions with their ``!``."""
        return ["!" + p.text if p.exception else p.text for p in self._patterns]

    def excluded(self, path: str) -> bool:
        """Whether ``path`` (relative to the context, ``/``-separated, a file or a
        directory) is left out: the last pattern matching it or one of its
        parent directories is not an exception.  The root (``.``) never is."""
        path = clean_path(path)
        if path == "." or not self._patterns:
            return False
        candidates = _ancestors_and_self(path)
        excluded = False
        for pattern in self._patterns:
            if pattern.exception != excluded:
                continue  # it could not change the verdict
            if any(pattern.matches(c) for c in candidates):
                excluded = not pattern.exception
        return excluded

    def may_skip_dir(self, path: str) -> bool:
        """Whether a walk of the context may skip directory ``path`` and all it
        holds: it is excluded and no exception pattern can match anything
        inside it.  When True, :meth:`excluded` is True for every path under
        ``path``; when False, the walk must look inside (something may be
        included again, or the directory itself is kept)."""
        if not self.excluded(path):
            return False
        parts = clean_path(path).split("/")
        return not any(p.exception and _may_match_inside(p, parts) for p in self._patterns)


def _component_regex(part: str) -> re.Pattern[str]:
    kind, source = _translate(part)
    if kind == _EXACT:
        return re.compile(re.escape(part) + r"\Z")
    return re.compile(source)


def _may_match_inside(pattern: _Pattern, dir_parts: list[str]) -> bool:
    """Whether ``pattern`` might match some path strictly inside the directory of
    ``dir_parts``: False only when that is certain."""
    if "[" in pattern.text or "\\" in pattern.text:
        return True  # a class or an escape could span a '/': do not guess
    fixed: list[str] = []
    for part in pattern.parts:
        if "**" in part:
            # what comes after '**' can match at any depth: only the parts before
            # it can rule the directory out
            return _prefix_fits(fixed, dir_parts)
        fixed.append(part)
    return len(fixed) > len(dir_parts) and _prefix_fits(fixed, dir_parts)


def _prefix_fits(parts: list[str], dir_parts: list[str]) -> bool:
    return all(_component_regex(p).match(d) is not None for p, d in zip(parts, dir_parts,
                                                                           strict=False))
