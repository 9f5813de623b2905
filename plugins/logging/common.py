"""What several log drivers share: the ``tag`` template and the extra
attributes of the ``labels``, ``labels-regex``, ``env`` and ``env-regex``
options, read as dockerd reads them (its ``logger.Info`` and
``loggerutils.ParseLogTag``).

A tag is a Go template over the container's facts.  skiff understands the
field references dockerd documents, alone or mixed with text
(``{{.ImageName}}/{{.Name}}/{{.ID}}``); anything else inside ``{{ }}``
(functions, pipelines) is refused at create, naming what was not understood,
rather than written out wrong.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from skiff.core.hookspecs import GENERIC_LOG_OPTIONS, LogContext

#: dockerd's default tag: the short container ID
DEFAULT_TAG = "{{.ID}}"

_ACTION = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}")


def _short(hex_id: str) -> str:
    return hex_id.removeprefix("sha256:")[:12]


#: the fields a template may reference, as dockerd names them
FIELDS: dict[str, Callable[[LogContext], str]] = {
    "ID": lambda c: c.container_id[:12],
    "FullID": lambda c: c.container_id,
    "Name": lambda c: c.container_name.lstrip("/"),
    "ImageID": lambda c: _short(c.image_id),
    "ImageFullID": lambda c: c.image_id,
    "ImageName": lambda c: c.image_name,
    "DaemonName": lambda c: c.daemon_name,
    "Hostname": lambda c: c.hostname,
    "Command": lambda c: " ".join(c.command),
}


def check_tag(template: str) -> None:
    """``ValueError`` naming the part of ``template`` skiff cannot render."""
    for m in _ACTION.finditer(template):
        inner = m.group(1)
        if not (inner.startswith(".") and inner[1:] in FIELDS):
            known = ", ".join("{{." + f + "}}" for f in FIELDS)
            raise ValueError(f"tag template {template!r}: {{{{{inner}}}}} is not supported; "
                             f"use {known}")
    rest = _ACTION.sub("", template)
    if "{{" in rest or "}}" in rest:
        raise ValueError(f"tag template {template!r}: unbalanced braces")


def render_tag(ctx: LogContext, template: str | None = None) -> str:
    """The ``tag`` option rendered for this container (``DEFAULT_TAG`` when unset
    or empty, as dockerd)."""
    template = template or ctx.options.get("tag") or DEFAULT_TAG
    check_tag(template)
    return _ACTION.sub(lambda m: FIELDS[m.group(1)[1:]](ctx), template)


def _names(option: str) -> list[str]:
    return [n.strip() for n in option.split(",") if n.strip()]


def _regex(key: str, pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{key}: invalid regular expression {pattern!r}: {exc}") from None


def check_attribute_options(options: dict[str, str]) -> None:
    """``ValueError`` for a ``labels-regex`` or ``env-regex`` that does not compile."""
    for key in ("labels-regex", "env-regex"):
        if options.get(key):
            _regex(key, options[key])


def extra_attributes(ctx: LogContext, key_mod: Callable[[str], str] | None = None
                     ) -> dict[str, str]:
    """The container's labels and environment variables that ``labels``,
    ``labels-regex``, ``env`` and ``env-regex`` select, by name (``key_mod``
    rewrites the names, as journald's upper-casing does)."""
    opts = ctx.options
    out: dict[str, str] = {}
    wanted = set(_names(opts.get("labels", "")))
    pattern = _regex("labels-regex", opts["labels-regex"]) if opts.get("labels-regex") else None
    for name, value in ctx.labels.items():
        if name in wanted or (pattern is not None and pattern.search(name)):
            out[name] = value
    # a variable without "=" has no value: dockerd leaves it out
    env = dict(item.split("=", 1) for item in ctx.env if "=" in item)
    for name in _names(opts.get("env", "")):
        if name in env:
            out[name] = env[name]
    if opts.get("env-regex"):
        pattern = _regex("env-regex", opts["env-regex"])
        for name, value in env.items():
            if pattern.search(name):
                out[name] = value
    if key_mod is not None:
        out = {key_mod(k): v for k, v in out.items()}
    return out


def driver_options(name: str, host_config: Mapping[str, Any]) -> dict[str, str] | None:
    """The ``--log-opt`` options a container gives driver ``name``, without the
    daemon's generic ones; None when the container logs to another driver.
    What a driver's ``skiff_container_validate`` checks."""
    lc = host_config.get("LogConfig") or {}
    if lc.get("Type") != name:
        return None
    return {k: v for k, v in (lc.get("Config") or {}).items() if k not in GENERIC_LOG_OPTIONS}
