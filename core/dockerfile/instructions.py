"""The parsed instructions of a Dockerfile, one frozen dataclass per keyword.

Each holds its arguments as written (raw words, quotes and ``$x`` still in
them), where it stands (``line``..``end_line``, 1-based) and ``original``, the
instruction's text with continuation lines joined and outer blanks trimmed:
what dockerd prints as ``Step N/M : <original>`` (``str(instruction)`` is
``original``).

Variables are substituted when the builder reaches the instruction, with the
environment of that moment (ENV and ARG so far), by the instruction's
``expand(env, escape)``: it returns a copy whose words are processed as
:func:`skiff.core.dockerfile.words.expand` does.  Only the instructions whose
words Docker expands have it (:data:`EXPANDING`): ADD, ARG, COPY, ENV, EXPOSE,
LABEL, STOPSIGNAL, USER, VOLUME, WORKDIR; FROM's base name is expanded with the
global ARGs only, by :mod:`skiff.core.dockerfile.stages`.  RUN, CMD,
ENTRYPOINT, SHELL, HEALTHCHECK and ONBUILD are never expanded (the shell
does it, or the child build).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import ClassVar, Self

from skiff.core.dockerfile.words import expand as expand_word
from skiff.core.dockerfile.words import expand_words

__all__ = [
    "EXPANDING",
    "Add",
    "Arg",
    "Cmd",
    "Copy",
    "Entrypoint",
    "Env",
    "Expose",
    "From",
    "Healthcheck",
    "Instruction",
    "Label",
    "Maintainer",
    "Onbuild",
    "Run",
    "Shell",
    "Stopsignal",
    "User",
    "Volume",
    "Workdir",
]


@dataclass(frozen=True, kw_only=True)
class Instruction:
    """What every instruction has."""

    keyword: ClassVar[str] = ""
    #: the instruction as written: continuation lines joined, outer blanks trimmed
    original: str
    #: the first and last physical line (1-based) it spans
    line: int
    end_line: int

    def __str__(self) -> str:
        return self.original


def _pairs(pairs: tuple[tuple[str, str], ...], env: Mapping[str, str],
           escape: str) -> tuple[tuple[str, str], ...]:
    return tuple((expand_word(k, env, escape), expand_word(v, env, escape)) for k, v in pairs)


@dataclass(frozen=True, kw_only=True)
class From(Instruction):
    """``FROM [--platform=p] base [AS name]``: ``base`` raw (global ARGs expand
    it); ``name`` lower-cased (stage names are case-insensitive), None without AS."""

    keyword: ClassVar[str] = "FROM"
    base: str
    name: str | None = None
    platform: str | None = None


@dataclass(frozen=True, kw_only=True)
class _CommandLine(Instruction):
    #: exec form: the JSON array; shell form: one string (the builder prepends
    #: SHELL); empty when the instruction had no argument
    command: tuple[str, ...]
    #: True for the exec (JSON) form
    json_form: bool = False


@dataclass(frozen=True, kw_only=True)
class Run(_CommandLine):
    """``RUN cmd`` or ``RUN ["exe", "arg"]``."""

    keyword: ClassVar[str] = "RUN"


@dataclass(frozen=True, kw_only=True)
class Cmd(_CommandLine):
    """``CMD cmd`` or ``CMD ["exe", "arg"]`` (``command`` empty: ``CMD`` alone)."""

    keyword: ClassVar[str] = "CMD"


@dataclass(frozen=True, kw_only=True)
class Entrypoint(_CommandLine):
    """``ENTRYPOINT cmd`` or ``ENTRYPOINT [...]``; ``command`` empty (``ENTRYPOINT``
    alone, or ``[]``) resets the entrypoint."""

    keyword: ClassVar[str] = "ENTRYPOINT"


@dataclass(frozen=True, kw_only=True)
class Shell(Instruction):
    """``SHELL ["exe", "arg"]`` (the JSON form only)."""

    keyword: ClassVar[str] = "SHELL"
    shell: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class Env(Instruction):
    """``ENV k=v k2=v2`` or ``ENV k value with blanks``: ``pairs`` in order, raw."""

    keyword: ClassVar[str] = "ENV"
    pairs: tuple[tuple[str, str], ...]

    def expand(self, env: Mapping[str, str], escape: str) -> Self:
        """Keys and values processed with ``env`` (each pair with the ``env``
        given, not the values set earlier in the same instruction, as Docker)."""
        return replace(self, pairs=_pairs(self.pairs, env, escape))


@dataclass(frozen=True, kw_only=True)
class Label(Instruction):
    """``LABEL k=v ...`` or ``LABEL k value``: ``pairs`` in order, raw."""

    keyword: ClassVar[str] = "LABEL"
    pairs: tuple[tuple[str, str], ...]

    def expand(self, env: Mapping[str, str], escape: str) -> Self:
        """Keys and values processed with ``env``."""
        return replace(self, pairs=_pairs(self.pairs, env, escape))


@dataclass(frozen=True, kw_only=True)
class Arg(Instruction):
    """``ARG name[=default] ...``: ``args`` as (name, default or None), raw."""

    keyword: ClassVar[str] = "ARG"
    args: tuple[tuple[str, str | None], ...]

    def expand(self, env: Mapping[str, str], escape: str) -> Self:
        """Names and defaults processed with ``env``."""
        return replace(self, args=tuple(
            (expand_word(k, env, escape), None if v is None else expand_word(v, env, escape))
            for k, v in self.args))


@dataclass(frozen=True, kw_only=True)
class Expose(Instruction):
    """``EXPOSE 80 53/udp 8000-8010``: the port specs, raw and unchecked."""

    keyword: ClassVar[str] = "EXPOSE"
    ports: tuple[str, ...]

    def expand(self, env: Mapping[str, str], escape: str) -> Self:
        """Each spec processed with ``env`` and split into words: ``EXPOSE $P`` with
        ``P="80 443"`` exposes two ports (the one instruction Docker splits so)."""
        return replace(self, ports=tuple(
            w for p in self.ports for w in expand_words(p, env, escape)))


@dataclass(frozen=True, kw_only=True)
class Volume(Instruction):
    """``VOLUME /a /b`` or ``VOLUME ["/a"]``: the paths, raw, none empty."""

    keyword: ClassVar[str] = "VOLUME"
    paths: tuple[str, ...]
    json_form: bool = False

    def expand(self, env: Mapping[str, str], escape: str) -> Self:
        """Each path processed with ``env``."""
        return replace(self, paths=tuple(expand_word(p, env, escape) for p in self.paths))


@dataclass(frozen=True, kw_only=True)
class User(Instruction):
    """``USER name[:group]`` (the whole rest of the line, blanks included)."""

    keyword: ClassVar[str] = "USER"
    user: str

    def expand(self, env: Mapping[str, str], escape: str) -> Self:
        """The user processed with ``env``."""
        return replace(self, user=expand_word(self.user, env, escape))


@dataclass(frozen=True, kw_only=True)
class Workdir(Instruction):
    """``WORKDIR path`` (the whole rest of the line; relative to the previous one)."""

    keyword: ClassVar[str] = "WORKDIR"
    path: str

    def expand(self, env: Mapping[str, str], escape: str) -> Self:
        """The path processed with ``env``."""
        return replace(self, path=expand_word(self.path, env, escape))


@dataclass(frozen=True, kw_only=True)
class Stopsignal(Instruction):
    """``STOPSIGNAL sig`` (the builder checks the signal)."""

    keyword: ClassVar[str] = "STOPSIGNAL"
    signal: str

    def expand(self, env: Mapping[str, str], escape: str) -> Self:
        """The signal processed with ``env``."""
        return replace(self, signal=expand_word(self.signal, env, escape))


@dataclass(frozen=True, kw_only=True)
class Maintainer(Instruction):
    """``MAINTAINER name`` (deprecated; sets the image's Author)."""

    keyword: ClassVar[str] = "MAINTAINER"
    maintainer: str


@dataclass(frozen=True, kw_only=True)
class _Files(Instruction):
    #: the sources and the destination, raw (at least one source)
    sources: tuple[str, ...]
    dest: str
    chown: str | None = None
    chmod: str | None = None
    json_form: bool = False

    def expand(self, env: Mapping[str, str], escape: str) -> Self:
        """Sources, destination and ``--chown`` processed with ``env`` (not
        ``--chmod`` nor ``--from``, as Docker)."""
        return replace(
            self,
            sources=tuple(expand_word(s, env, escape) for s in self.sources),
            dest=expand_word(self.dest, env, escape),
            chown=None if self.chown is None else expand_word(self.chown, env, escape))


@dataclass(frozen=True, kw_only=True)
class Copy(_Files):
    """``COPY [--from=stage|index|image] [--chown=u:g] [--chmod=mode] src... dest``."""

    keyword: ClassVar[str] = "COPY"
    from_: str | None = None


@dataclass(frozen=True, kw_only=True)
class Add(_Files):
    """``ADD [--chown=u:g] [--chmod=mode] src... dest`` (URLs, local tars unpacked)."""

    keyword: ClassVar[str] = "ADD"


@dataclass(frozen=True, kw_only=True)
class Onbuild(Instruction):
    """``ONBUILD <instruction>``: ``expression`` is the trigger as written (what goes
    into the image's OnBuild list), ``trigger`` its keyword, upper-case.  The
    trigger is parsed and run by the child build
    (:func:`skiff.core.dockerfile.parser.parse_instruction`)."""

    keyword: ClassVar[str] = "ONBUILD"
    expression: str
    trigger: str


@dataclass(frozen=True, kw_only=True)
class Healthcheck(Instruction):
    """``HEALTHCHECK NONE`` or ``HEALTHCHECK [--interval=d ...] CMD cmd``.

    ``test`` is the image config's Healthcheck.Test: ``("NONE",)``,
    ``("CMD-SHELL", "cmd")`` for the shell form or ``("CMD", exe, args...)``;
    durations are nanoseconds, 0 when not given (the default applies)."""

    keyword: ClassVar[str] = "HEALTHCHECK"
    test: tuple[str, ...]
    interval: int = 0
    timeout: int = 0
    start_period: int = 0
    start_interval: int = 0
    retries: int = 0


#: the instruction classes that have ``expand(env, escape)``
EXPANDING: tuple[type[Instruction], ...] = (Add, Arg, Copy, Env, Expose, Label, Stopsignal,
                                            User, Volume, Workdir)
