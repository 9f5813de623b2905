"""Each Dockerfile keyword's arguments: flags, the JSON (exec) and shell forms,
and the checks Docker makes when it parses an instruction, with dockerd's
messages.  :mod:`skiff.core.dockerfile.parser` cuts the text into instructions
and calls :data:`BUILDERS`; a builder raises :class:`Refusal`, to which the
parser adds the line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from skiff.core.dockerfile import instructions as ins
from skiff.core.dockerfile.words import is_blank, split_words, trim, trim_left
from skiff.core.timefmt import go_duration

__all__ = ["BUILDERS", "Refusal", "extract_flags", "refuse_heredoc", "split_keyword"]

_SPLIT = re.compile(r"[\t\v\f\r ]+")
_HEREDOC = re.compile(r"^\d*<<-?[^<]+$")
_STAGE_NAME = re.compile(r"^[a-z][a-z0-9-_.]*$")
_ONBUILD_PREFIX = re.compile(r"^\s*ONBUILD\s*", re.IGNORECASE)


def extract_flags(rest: str, escape: str) -> tuple[str, list[str]]:
    """The ``--flag`` words at the start of ``rest`` (quotes removed, escapes
    applied) and what follows them; a ``--`` word ends the flags."""
    flags: list[str] = []
    i, n = 0, len(rest)
    while True:
        while i < n and is_blank(rest[i]):
            i += 1
        if i == n or not rest.startswith("--", i):
            return rest[i:], flags
        word: list[str] = []
        quote = ""
        blank_ok = False
        while i < n:
            ch = rest[i]
            if not quote and is_blank(ch):
                break
            if not quote and ch in "'\"":
                quote, blank_ok = ch, True
            elif quote and ch == quote:
                quote = ""
            elif ch == escape:
                if i + 1 < n:
                    i += 1
                    word.append(rest[i])
                else:
                    quote = ""
            else:
                word.append(ch)
            i += 1
        text = "".join(word)
        if text == "--":
            return rest[i:], flags
        if blank_ok or text:
            flags.append(text)


_BOOL, _STRING = "bool", "string"


def _parse_flags(words: list[str], allowed: dict[str, str]) -> dict[str, str]:
    """``--name=value`` words checked against ``allowed`` ({name: kind});
    dockerd's messages."""
    values: dict[str, str] = {}
    for word in words:
        if not word.startswith("--"):
            raise Refusal(f"Arg should start with -- : {word}")
        name, eq, value = word[2:].partition("=")
        kind = allowed.get(name)
        if kind is None:
            raise Refusal(f"Unknown flag: {name}")
        if name in values:
            raise Refusal(f"Duplicate flag specified: {name}")
        if kind == _BOOL:
            if eq and not value:
                raise Refusal(f"Missing a value on flag: {name}")
            if value.lower() not in ("", "true", "false"):
                raise Refusal(f"Expecting boolean value for flag {name}, not: {value}")
            values[name] = value.lower() or "true"
        else:
            if not eq:
                raise Refusal(f"Missing a value on flag: {name}")
            values[name] = value
    return values


class Refusal(Exception):
    """Why an instruction is refused (dockerd's message); the parser adds the line."""


def _json_array(rest: str) -> list[str] | None:
    """The JSON array of strings ``rest`` holds, or None when it is no JSON array
    (then it is the shell form); an array of anything else is an error."""
    text = trim_left(rest)
    if not text.startswith("["):
        return None

    def refuse_constant(name: str) -> object:
        raise ValueError(name)  # NaN, Infinity: not JSON to Go

    try:
        value = json.loads(text, parse_constant=refuse_constant)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, list):
        return None
    if not all(isinstance(v, str) for v in value):
        raise Refusal("when using JSON array syntax, arrays must be comprised of strings only")
    return value


def _command_line(rest: str) -> tuple[tuple[str, ...], bool]:
    if not rest:
        return (), False
    args = _json_array(rest)
    if args is not None:
        return tuple(args), True
    return (rest,), False


def _whitespace_list(rest: str) -> list[str]:
    return _SPLIT.split(rest) if rest else []


def _json_or_list(rest: str) -> tuple[list[str], bool]:
    args = _json_array(rest)
    if args is not None:
        return args, True
    return _whitespace_list(rest), False


def _name_values(rest: str, keyword: str, escape: str) -> tuple[tuple[str, str], ...]:
    words = split_words(rest, escape)
    if not words:
        raise Refusal(f"{keyword} requires at least one argument")
    if "=" not in words[0]:
        parts = _SPLIT.split(rest, maxsplit=1)
        if len(parts) < 2:
            raise Refusal(f"{keyword} must have two arguments")
        pairs = [(parts[0], parts[1])]
    else:
        pairs = []
        for word in words:
            if "=" not in word:
                raise Refusal(f"Syntax error - can't find = in {json.dumps(word)}. "
                               "Must be of the form: name=value")
            key, _, value = word.partition("=")
            pairs.append((key, value))
    if any(not k for k, _ in pairs):
        raise Refusal(f"{keyword} names can not be blank")
    return tuple(pairs)


def _one(args: list[str], keyword: str) -> str:
    if len(args) != 1:
        raise Refusal(f"{keyword} requires exactly one argument")
    return args[0]


def _duration(flags: dict[str, str], name: str) -> int:
    text = flags.get(name, "")
    if not text:
        return 0
    seconds = go_duration(text)
    if seconds is None:
        raise Refusal(f"time: invalid duration {json.dumps(text)}")
    ns = round(seconds * 1e9)
    if ns == 0:
        return 0
    if ns < 1_000_000:
        raise Refusal(f'Interval "{name}" cannot be less than 1ms')
    return ns


def refuse_heredoc(keyword: str, rest: str, escape: str) -> None:
    if keyword in ("RUN", "COPY", "ADD") and _json_array(rest) is None:
        for word in split_words(rest, escape):
            if _HEREDOC.match(word):
                raise Refusal(f"heredocs are not supported by this builder ({keyword} "
                               f"{word}): put the content in a file of the context and "
                               "COPY it, or write it with printf in a RUN")


_At = dict[str, Any]  # original, line, end_line: the fields every instruction has
_Builder = Callable[[str, list[str], str, _At], ins.Instruction]


def _from(rest: str, flags: list[str], escape: str, at: _At) -> ins.Instruction:
    args = _whitespace_list(rest)
    name = None
    if len(args) == 3 and args[1].lower() == "as":
        name = args[2].lower()
        if not _STAGE_NAME.match(name):
            raise Refusal(f"invalid name for build stage: {json.dumps(args[2])}, "
                           "name can't start with a number or contain symbols")
    elif len(args) != 1:
        raise Refusal("FROM requires either one or three arguments")
    values = _parse_flags(flags, {"platform": _STRING})
    return ins.From(base=args[0], name=name, platform=values.get("platform"), **at)


def _run(rest: str, flags: list[str], escape: str, at: _At) -> ins.Instruction:
    _parse_flags(flags, {})
    command, json_form = _command_line(rest)
    return ins.Run(command=command, json_form=json_form, **at)


def _cmd(rest: str, flags: list[str], escape: str, at: _At) -> ins.Instruction:
    _parse_flags(flags, {})
    command, json_form = _command_line(rest)
    return ins.Cmd(command=command, json_form=json_form, **at)


def _entrypoint(rest: str, flags: list[str], escape: str, at: _At) -> ins.Instruction:
    _parse_flags(flags, {})
    command, json_form = _command_line(rest)
    return ins.Entrypoint(command=command, json_form=json_form, **at)


def _shell(rest: str, flags: list[str], escape: str, at: _At) -> ins.Instruction:
    _parse_flags(flags, {})
    command, json_form = _command_line(rest)
    if not command:
        raise Refusal("SHELL requires at least one argument")
    if not json_form:
        raise Refusal("SHELL requires the arguments to be in JSON form")
    return ins.Shell(shell=command, **at)


def _env(rest: str, flags: list[str], escape: str, at: _At) -> ins.Instruction:
    _parse_flags(flags, {})
    return ins.Env(pairs=_name_values(rest, "ENV", escape), **at)


def _label(rest: str, flags: list[str], escape: str, at: _At) -> ins.Instruction:
    _parse_flags(flags, {})
    return ins.Label(pairs=_name_values(rest, "LABEL", escape), **at)


def _arg(rest: str, flags: list[str], escape: str, at: _At) -> ins.Instruction:
    _parse_flags(flags, {})
    words = split_words(rest, escape)
    if not words:
        raise Refusal("ARG requires at least one argument")
    args: list[tuple[str, str | None]] = []
    for word in words:
        name, eq, default = word.partition("=")
        if eq and not name:
            raise Refusal("ARG names can not be blank")
        args.append((name, default if eq else None))
    return ins.Arg(args=tuple(args), **at)


def _expose(rest: str, flags: list[str], escape: str, at: _At) -> ins.Instruction:
    ports = _whitespace_list(rest)
    if not ports:
        raise Refusal("EXPOSE requires at least one argument")
    _parse_flags(flags, {})
    return ins.Expose(ports=tuple(ports), **at)


def _volume(rest: str, flags: list[str], escape: str, at: _At) -> ins.Instruction:
    paths, json_form = _json_or_list(rest)
    if not paths:
        raise Refusal("VOLUME requires at least one argument")
    _parse_flags(flags, {})
    paths = [trim(p) for p in paths]
    if not all(paths):
        raise Refusal("VOLUME specified can not be an empty string")
    return ins.Volume(paths=tuple(paths), json_form=json_form, **at)


def _string(rest: str) -> list[str]:
    return [rest] if rest else []


def _user(rest: str, flags: list[str], escape: str, at: _At) -> ins.Instruction:
    user = _one(_string(rest), "USER")
    _parse_flags(flags, {})
    return ins.User(user=user, **at)


def _workdir(rest: str, flags: list[str], escape: str, at: _At) -> ins.Instruction:
    path = _one(_string(rest), "WORKDIR")
    _parse_flags(flags, {})
    return ins.Workdir(path=path, **at)


def _stopsignal(rest: str, flags: list[str], escape: str, at: _At) -> ins.Instruction:
    signal = _one(_string(rest), "STOPSIGNAL")
    _parse_flags(flags, {})
    return ins.Stopsignal(signal=signal, **at)


def _maintainer(rest: str, flags: list[str], escape: str, at: _At) -> ins.Instruction:
    name = _one(_string(rest), "MAINTAINER")
    _parse_flags(flags, {})
    return ins.Maintainer(maintainer=name, **at)


def _files(keyword: str, rest: str, flags: list[str],
           allowed: dict[str, str]) -> tuple[list[str], bool, dict[str, str]]:
    args, json_form = _json_or_list(rest)
    if len(args) < 2:
        raise Refusal(f"{keyword} requires at least two arguments, but only one was "
                       "provided. Destination could not be determined")
    return args, json_form, _parse_flags(flags, allowed)


def _copy(rest: str, flags: list[str], escape: str, at: _At) -> ins.Instruction:
    args, json_form, values = _files("COPY", rest, flags,
                                     {"chown": _STRING, "chmod": _STRING, "from": _STRING})
    return ins.Copy(sources=tuple(args[:-1]), dest=args[-1], chown=values.get("chown"),
                    chmod=values.get("chmod"), from_=values.get("from"),
                    json_form=json_form, **at)


def _add(rest: str, flags: list[str], escape: str, at: _At) -> ins.Instruction:
    args, json_form, values = _files("ADD", rest, flags, {"chown": _STRING, "chmod": _STRING})
    return ins.Add(sources=tuple(args[:-1]), dest=args[-1], chown=values.get("chown"),
                   chmod=values.get("chmod"), json_form=json_form, **at)


def _onbuild(rest: str, flags: list[str], escape: str, at: _At) -> ins.Instruction:
    if not rest:
        raise Refusal("ONBUILD requires at least one argument")
    _parse_flags(flags, {})
    keyword, trigger_rest = split_keyword(rest)
    trigger = keyword.upper()
    if trigger == "ONBUILD":
        raise Refusal("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
    if trigger in ("MAINTAINER", "FROM"):
        raise Refusal(f"{trigger} isn't allowed as an ONBUILD trigger")
    refuse_heredoc(trigger, extract_flags(trigger_rest, escape)[0], escape)
    expression = _ONBUILD_PREFIX.sub("", at["original"], count=1)
    return ins.Onbuild(expression=expression, trigger=trigger, **at)


def _healthcheck(rest: str, flags: list[str], escape: str, at: _At) -> ins.Instruction:
    end = 0
    while end < len(rest) and not is_blank(rest[end]):
        end += 1
    if end == 0:
        raise Refusal("HEALTHCHECK requires at least one argument")
    kind = rest[:end].upper()
    command, json_form = _command_line(trim_left(rest[end:]))
    if kind == "NONE":
        if command:
            raise Refusal("HEALTHCHECK NONE takes no arguments")
        return ins.Healthcheck(test=("NONE",), **at)
    values = _parse_flags(flags, {"interval": _STRING, "timeout": _STRING,
                                  "start-period": _STRING, "start-interval": _STRING,
                                  "retries": _STRING})
    if kind != "CMD":
        raise Refusal(f"Unknown type {json.dumps(kind)} in HEALTHCHECK (try CMD)")
    if not command:
        raise Refusal("Missing command after HEALTHCHECK CMD")
    test = ("CMD", *command) if json_form else ("CMD-SHELL", *command)
    retries = 0
    if values.get("retries"):
        text = values["retries"]
        try:
            retries = int(text, 10)
        except ValueError:
            raise Refusal(f'strconv.ParseInt: parsing {json.dumps(text)}: invalid syntax') \
                from None
        if retries < 0:
            raise Refusal(f"--retries cannot be negative ({retries})")
    return ins.Healthcheck(
        test=test, interval=_duration(values, "interval"), timeout=_duration(values, "timeout"),
        start_period=_duration(values, "start-period"),
        start_interval=_duration(values, "start-interval"), retries=retries, **at)


BUILDERS: dict[str, _Builder] = {
    "ADD": _add, "ARG": _arg, "CMD": _cmd, "COPY": _copy, "ENTRYPOINT": _entrypoint,
    "ENV": _env, "EXPOSE": _expose, "FROM": _from, "HEALTHCHECK": _healthcheck,
    "LABEL": _label, "MAINTAINER": _maintainer, "ONBUILD": _onbuild, "RUN": _run,
    "SHELL": _shell, "STOPSIGNAL": _stopsignal, "USER": _user, "VOLUME": _volume,
    "WORKDIR": _workdir,
}


def split_keyword(line: str) -> tuple[str, str]:
    parts = _SPLIT.split(trim(line), maxsplit=1)
    return parts[0], parts[1] if len(parts) > 1 else ""
