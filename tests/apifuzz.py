"""Requests generated from the Docker Engine API v1.41 spec, for fuzzing skiffd.

:func:`load_spec` reads the swagger file (``/work/shared/specs`` or
``SKIFF_API_SPEC``) and lists its operations; :func:`requests_for` is a hypothesis
strategy of :class:`FuzzRequest` for one operation: path parameters drawn from
objects that exist and from strings that name nothing, query parameters of the
declared type or of the wrong one, and a JSON body built from the operation's
schema in which any value may be of the wrong type.  Operations that could reach
past the daemon (start a container of an arbitrary config, bind host paths,
follow a stream forever) are narrowed by :data:`SAFETY` so a fuzz run leaves the
host as it found it and ends in bounded time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml
from hypothesis import strategies as st

SPEC_DIRS = (Path("/work/shared/specs"), Path(__file__).resolve().parents[2] / "shared" / "specs")
SPEC_NAME = "docker-engine-api-v1.41.yaml"
METHODS = ("get", "post", "put", "delete", "head")


def spec_path() -> Path | None:
    """Where the v1.41 swagger is on this machine, if anywhere."""
    env = os.environ.get("SKIFF_API_SPEC")
    if env:
        return Path(env)
    for d in SPEC_DIRS:
        if (d / SPEC_NAME).is_file():
            return d / SPEC_NAME
    return None


@dataclass(frozen=True)
class Operation:
    """One operation of the spec: method, path template, parameters, declared statuses."""

    id: str
    method: str
    path: str
    params: tuple[dict[str, Any], ...]
    body: dict[str, Any] | None
    statuses: frozenset[int]


@dataclass
class FuzzRequest:
    op: Operation
    path: str
    params: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        body = (self.body or b"")[:200]
        return f"{self.op.method} {self.path} {self.params} {body!r}"


class Spec:
    def __init__(self, raw: Mapping[str, Any]) -> None:
        self.raw = raw
        self.definitions: Mapping[str, Any] = raw.get("definitions", {})
        self.operations: list[Operation] = []
        for path, item in raw["paths"].items():
            shared = item.get("parameters", [])
            for method in METHODS:
                op = item.get(method)
                if op is None:
                    continue
                params = [self.resolve(p) for p in [*shared, *op.get("parameters", [])]]
                body = next((p for p in params if p["in"] == "body"), None)
                statuses = frozenset(int(code) for code in op.get("responses", {})
                                     if str(code).isdigit())
                self.operations.append(Operation(
                    op.get("operationId", f"{method} {path}"), method.upper(), path,
                    tuple(p for p in params if p["in"] != "body"), body, statuses))

    def resolve(self, node: Any) -> Any:
        while isinstance(node, dict) and "$ref" in node:
            node = self.definitions[node["$ref"].rsplit("/", 1)[-1]]
        return node


def load_spec(path: Path) -> Spec:
    with path.open() as f:
        return Spec(yaml.safe_load(f))


# -- values ---------------------------------------------------------------------------

#: a value of any JSON type, small: what a wrong-typed field gets instead
JUNK: st.SearchStrategy[Any] = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False),
    st.text(max_size=6), st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2))

#: strings that name nothing: plain, unicode, path-like, or nothing at all
TEXT = st.one_of(st.text(max_size=16), st.sampled_from(
    ["", "..", "a/b", "-1", "0", "x" * 300, "\u00e9", "null", "true", "{}", "%", "a:b@c"]))


def _sometimes_wrong(typed: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a value of the declared type; one time in eight anything at all."""
    return st.integers(0, 7).flatmap(lambda k: JUNK if k == 0 else typed)


def from_schema(spec: Spec, schema: Any, depth: int = 0) -> st.SearchStrategy[Any]:
    """A strategy of JSON values for ``schema``, any of them possibly mistyped."""
    schema = spec.resolve(schema or {})
    if depth > 4:
        return JUNK
    if "allOf" in schema:
        merged: dict[str, Any] = {"type": "object", "properties": {}}
        for part in schema["allOf"]:
            merged["properties"].update(spec.resolve(part).get("properties", {}))
        schema = merged
    kind = schema.get("type")
    if "enum" in schema:
        typed: st.SearchStrategy[Any] = st.sampled_from(schema["enum"])
    elif kind == "string":
        typed = TEXT
    elif kind == "integer":
        typed = st.one_of(st.integers(-5, 5), st.integers(-(2**64), 2**64))
    elif kind == "number":
        typed = st.floats(allow_nan=False)
    elif kind == "boolean":
        typed = st.booleans()
    elif kind == "array":
        typed = st.lists(from_schema(spec, schema.get("items"), depth + 1), max_size=3)
    elif kind == "object" or "properties" in schema or "additionalProperties" in schema:
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        if props:
            typed = st.fixed_dictionaries({}, optional={
                k: from_schema(spec, v, depth + 1) for k, v in props.items()})
        elif isinstance(extra, dict):
            typed = st.dictionaries(st.text(max_size=8), from_schema(spec, extra, depth + 1),
                                    max_size=3)
        else:
            typed = st.dictionaries(st.text(max_size=8), JUNK, max_size=3)
    else:
        typed = JUNK
    return _sometimes_wrong(typed)


def query_value(spec: Spec, param: Mapping[str, Any]) -> st.SearchStrategy[str]:
    """A query parameter's value as a string: of its type, or not."""
    kind = param.get("type")
    if "enum" in param:
        typed: st.SearchStrategy[str] = st.sampled_from([str(v) for v in param["enum"]])
    elif kind == "boolean":
        typed = st.sampled_from(["1", "0", "true", "false", "True", "yes", ""])
    elif kind == "integer":
        typed = st.integers(-(2**65), 2**65).map(str)
    elif param.get("format") == "json" or param.get("name") == "filters":
        typed = st.one_of(
            st.dictionaries(st.sampled_from(["name", "label", "id", "status", "dangling",
                                             "until", "before", "since", "reference",
                                             "driver", "type", "event", "bogus"]),
                            st.lists(TEXT, max_size=2), max_size=2).map(json.dumps),
            from_schema(spec, {"type": "object"}).map(json.dumps))
    elif kind == "array":
        typed = st.lists(TEXT, max_size=2).map(lambda v: ",".join(v))
    else:
        typed = TEXT
    return st.integers(0, 5).flatmap(
        lambda k: st.one_of(TEXT, JUNK.map(json.dumps)) if k == 0 else typed)


# -- safety ---------------------------------------------------------------------------

#: operations whose path names only objects that do not exist (a 404): starting,
#: attaching to or waiting on a real container of an arbitrary config is not for a fuzzer
NOTHING_REAL = {"ContainerStart", "ContainerRestart", "ContainerUnpause", "ContainerAttach",
                "ContainerAttachWebsocket", "ContainerWait", "ExecStart", "ContainerStats",
                "ContainerLogs", "ImagePush", "PluginPush", "PluginEnable", "ImageGet"}
#: body keys a fuzzer must not choose: host paths, devices, drivers that mount
FORBIDDEN_KEYS = {"Binds", "Mounts", "Devices", "DeviceCgroupRules", "VolumeDriver",
                  "Volumes", "VolumesFrom", "DriverOpts", "Runtime", "CgroupParent",
                  "Sysctls", "Init", "Options", "Context", "remote"}
#: query parameters never sent: a build or pull from a URL, following a stream
FORBIDDEN_QUERY = {"remote", "follow", "stream", "fromImage"}
#: query parameters held to one value: an import reads the body, never a URL
PINNED_QUERY = {("ImageCreate", "fromSrc"): "-"}
#: raw-bytes bodies: the endpoint reads a tar or a stream
RAW_BODIES = {"ImageBuild", "ImageLoad", "PutContainerArchive", "ImageCreate", "PluginCreate"}


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in FORBIDDEN_KEYS}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def requests_for(spec: Spec, op: Operation, real: Mapping[str, list[str]],
                 pinned: Mapping[str, Any] | None = None) -> st.SearchStrategy[FuzzRequest]:
    """Requests for ``op``; ``real`` maps a path parameter's name (``id``, ``name``)
    to references of objects that exist (container, image, network, volume);
    ``pinned`` fields are set in every JSON object body (a registry that answers)."""
    path_params = [p for p in op.params if p["in"] == "path"]
    query_params = [p for p in op.params if p["in"] == "query"
                    and p["name"] not in FORBIDDEN_QUERY]

    def path_value(p: Mapping[str, Any]) -> st.SearchStrategy[str]:
        pool = [] if op.id in NOTHING_REAL else real.get(p["name"], [])
        nothing = TEXT.filter(lambda s: s not in ("", ".", ".."))
        return st.one_of(st.sampled_from(pool), nothing) if pool else nothing

    paths = st.fixed_dictionaries({p["name"]: path_value(p) for p in path_params})
    query = st.fixed_dictionaries(
        {p["name"]: st.just(PINNED_QUERY[op.id, p["name"]]) for p in query_params
         if (op.id, p["name"]) in PINNED_QUERY},
        optional={p["name"]: query_value(spec, p) for p in query_params
                  if (op.id, p["name"]) not in PINNED_QUERY})
    if op.body is None:
        body: st.SearchStrategy[bytes | None] = st.none()
    elif op.id in RAW_BODIES:
        body = st.one_of(st.none(), st.binary(max_size=64),
                         st.just(b"\x1f\x8b\x08\x00" + b"\x00" * 16))
    else:
        schema = from_schema(spec, op.body.get("schema"))
        def encode(value: Any) -> bytes:
            value = _strip(value)
            if pinned and isinstance(value, dict):
                value.update(pinned)
            return json.dumps(value).encode()

        body = st.one_of(
            schema.map(encode),
            # broken JSON; an empty body or null only when nothing is pinned (it would
            # mean the default, e.g. Docker Hub for /auth)
            st.sampled_from([b"{", b"[]", b"\xff\xfe", b'{"a":']
                            + ([] if pinned else [b"", b"null"])))

    def build(paths: dict[str, str], query: dict[str, str], body: bytes | None
              ) -> FuzzRequest:
        path = op.path
        for name, value in paths.items():
            path = path.replace("{" + name + "}", quote(value, safe="") or "x")
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if op.id in RAW_BODIES:
            headers = {"Content-Type": "application/x-tar"}
        return FuzzRequest(op, path, query, body, headers)

    return st.builds(build, paths, query, body)
