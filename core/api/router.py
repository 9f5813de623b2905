"""Routing and the request/response objects that route handlers see.

A handler is ``async def h(req: Request, **params)`` registered with
``@router.route("GET", "/containers/{id}/json")``.  It returns a
:class:`Response`, a :class:`StreamResponse`, a ``dict``/``list`` (200 JSON),
``None`` (204), or it hijacks the connection with ``await req.hijack()``.
It reports failure by raising: the kinds of ``skiff.core.errors`` (and
``skiff.core.api.errors``) map to Docker's status codes in
``skiff.core.api.errors.status_of``; anything else is a 500.

Paths match after the optional version prefix (``/v1.41``) is stripped and
the path is percent-decoded, as Docker's router does.  ``{name}`` matches one
segment; ``{name:path}`` matches one or more (image names hold ``/`` and ``:``).
Static paths win over parametrised ones; otherwise the first registered wins.
An unknown path, or a known path with another method, is Docker's
404 ``page not found``.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
)
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import parse_qs, unquote

from skiff.core.api.errors import (
    BadRequest,
    NotFound,
    PayloadTooLarge,
    as_handler_bug,
    status_and_message,
)

if TYPE_CHECKING:
    import trio

API_VERSION = "1.41"
MIN_API_VERSION = "1.24"
RAW_STREAM = "application/vnd.docker.raw-stream"
MULTIPLEXED_STREAM = "application/vnd.docker.multiplexed-stream"
#: default cap of :meth:`Request.read_body` / :meth:`Request.json`
MAX_JSON_BODY = 64 * 1024 * 1024

_FALSE = frozenset(("", "0", "no", "false", "none"))
_VERSION_PREFIX = re.compile(r"/v([0-9.]+)(/.*)")
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::(path))?\}")
_MISSING: Any = object()

H = TypeVar("H", bound=Callable[..., Any])
HeaderArg = Mapping[str, str] | Iterable[tuple[str, str]] | None


def _version_tuple(v: str) -> tuple[int, ...]:
    # Go's versions.compare: missing or non-numeric parts count as 0
    return tuple(int(p) if p.isdigit() else 0 for p in v.split("."))


def version_less(a: str, b: str) -> bool:
    """``a < b`` for dotted API versions (``"1.9" < "1.24"``)."""
    ta, tb = _version_tuple(a), _version_tuple(b)
    n = max(len(ta), len(tb))
    return ta + (0,) * (n - len(ta)) < tb + (0,) * (n - len(tb))


def split_version(path: str) -> tuple[str | None, str]:
    """``("1.41", "/info")`` for ``/v1.41/info``; ``(None, path)`` without a prefix."""
    if path.startswith("/v"):
        m = _VERSION_PREFIX.fullmatch(path)
        if m:
            return m.group(1), m.group(2)
    return None, path


def check_version(version: str) -> None:
    """Docker's version middleware: 400 outside [MIN_API_VERSION, API_VERSION]."""
    if version_less(version, MIN_API_VERSION):
        raise BadRequest(
            f"client version {version} is too old. Minimum supported API version is "
            f"{MIN_API_VERSION}, please upgrade your client to a newer version")
    if version_less(API_VERSION, version):
        raise BadRequest(
            f"client version {version} is too new. Maximum supported API version is "
            f"{API_VERSION}")


def _header_pairs(headers: HeaderArg) -> list[tuple[str, str]]:
    if headers is None:
        return []
    if isinstance(headers, Mapping):
        return list(headers.items())
    return list(headers)


class Headers:
    """Request headers, looked up case-insensitively; repeated names keep every value."""

    __slots__ = ("_map",)

    def __init__(self, raw: Iterable[tuple[bytes | str, bytes | str]] = ()) -> None:
        m: dict[str, list[str]] = {}
        for name, value in raw:
            k = (name.decode("latin-1") if isinstance(name, bytes) else name).lower()
            v = value.decode("latin-1") if isinstance(value, bytes) else value
            m.setdefault(k, []).append(v)
        self._map = m

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of ``name``, as Go's ``Header.Get``."""
        values = self._map.get(name.lower())
        return values[0] if values else default

    def getall(self, name: str) -> list[str]:
        return list(self._map.get(name.lower(), ()))

    def __getitem__(self, name: str) -> str:
        values = self._map.get(name.lower())
        if not values:
            raise KeyError(name)
        return values[0]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._map

    def __iter__(self) -> Iterator[str]:
        return iter(self._map)

    def __len__(self) -> int:
        return len(self._map)

    def items(self) -> list[tuple[str, str]]:
        return [(k, v) for k, vs in self._map.items() for v in vs]

    def __repr__(self) -> str:
        return f"Headers({self.items()!r})"


class Connection(Protocol):
    """What a :class:`Request` needs from the server's connection."""

    async def read_body_chunk(self) -> bytes:
        """The next piece of the request body; ``b""`` once it is complete."""
        ...

    async def hijack(self, request: Request, content_type: str,
                     head: bytes | None = None) -> trio.abc.HalfCloseableStream:
        ...


class _FixedBody:
    """A body held in memory, for requests built without a socket (tests, in-process calls)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    async def read_body_chunk(self) -> bytes:
        data, self._data = self._data, b""
        return data

    async def hijack(self, request: Request, content_type: str,
                     head: bytes | None = None) -> trio.abc.HalfCloseableStream:
        raise RuntimeError("hijack needs a request that arrived on a connection")


class _BodyIterator:
    # A class, not an async generator: an abandoned async generator is
    # finalised at an unpredictable time, this holds nothing to finalise.
    __slots__ = ("_req",)

    def __init__(self, req: Request) -> None:
        self._req = req

    def __aiter__(self) -> _BodyIterator:
        return self

    async def __anext__(self) -> bytes:
        req = self._req
        if req._body_done:
            raise StopAsyncIteration
        chunk = await req._conn.read_body_chunk()
        if not chunk:
            req._body_done = True
            raise StopAsyncIteration
        req.body_bytes_read += len(chunk)
        return chunk


class Request:
    """One HTTP request as a handler sees it.

    ``path`` is percent-decoded with the version prefix removed;
    ``api_version`` is the prefix's version (``"1.41"`` without one);
    ``query`` maps each name to its list of values; ``headers`` is
    case-insensitive; ``params`` holds the route's path parameters;
    ``context`` is the router's ``context`` (e.g. the engine).
    """

    __slots__ = ("_body_done", "_conn", "_query", "api_version", "body_bytes_read",
                 "content_length", "context", "headers", "hijacked", "http_version", "method",
                 "operation", "params", "path", "query_string", "target")

    def __init__(self, method: str, target: str, headers: Headers, conn: Connection, *,
                 http_version: str = "1.1") -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.http_version = http_version
        self._conn = conn
        self._query: dict[str, list[str]] | None = None
        self.params: dict[str, str] = {}
        #: the matched route, ``"GET /containers/{id}/json"``; empty until routed
        self.operation = ""
        self.context: Any = None
        self.hijacked = False
        self.body_bytes_read = 0
        raw_path, _, self.query_string = target.partition("?")
        if raw_path.startswith(("http://", "https://")):
            # absolute-form target: keep only the path
            slash = raw_path.find("/", raw_path.find("//") + 2)
            raw_path = raw_path[slash:] if slash >= 0 else "/"
        version, raw_path = split_version(raw_path)
        self.api_version = version if version is not None else API_VERSION
        self.path = unquote(raw_path, errors="replace") if "%" in raw_path else raw_path
        cl = headers.get("content-length")
        te = headers.get("transfer-encoding")
        self.content_length: int | None = int(cl) if cl is not None and cl.isdigit() else None
        # h11 has validated the framing: no length and no chunking means no body
        self._body_done = te is None and (self.content_length in (None, 0))

    @classmethod
    def build(cls, method: str, target: str, headers: HeaderArg = None,
              body: bytes = b"") -> Request:
        """A request without a socket, e.g. to call ``Router.handle`` in a test."""
        pairs = _header_pairs(headers)
        if body and not any(k.lower() == "content-length" for k, _ in pairs):
            pairs.append(("Content-Length", str(len(body))))
        return cls(method.upper(), target, Headers(pairs), _FixedBody(body))

    # -- query ---------------------------------------------------------------------
    @property
    def query(self) -> dict[str, list[str]]:
        if self._query is None:
            self._query = parse_qs(self.query_string, keep_blank_values=True)
        return self._query

    def q(self, name: str, default: Any = None) -> Any:
        """The first value of query parameter ``name``, or ``default`` if absent."""
        values = self.query.get(name)
        return values[0] if values else default

    def qbool(self, name: str, default: bool = False) -> bool:
        """Docker's truthiness: absent -> default; "", 0, no, false, none -> False; else True."""
        values = self.query.get(name)
        if not values:
            return default
        return values[0].strip().lower() not in _FALSE

    def qint(self, name: str, default: int = 0) -> int:
        """An integer query parameter; absent or empty -> default; junk -> 400."""
        value = self.q(name)
        if value is None or value == "":
            return default
        try:
            return int(value)
        except ValueError:
            raise BadRequest(
                f"invalid value for query parameter {name!r}: {value!r} is not an integer"
            ) from None

    def qjson(self, name: str, default: Any = None) -> Any:
        """A JSON-encoded query parameter (``filters``, ``buildargs`` ...); junk -> 400."""
        value = self.q(name)
        if value is None or value == "":
            return default
        try:
            return json.loads(value)
        except (ValueError, RecursionError) as exc:
            raise BadRequest(f"invalid JSON in query parameter {name!r}: {exc}") from None

    def api_at_least(self, version: str) -> bool:
        """Whether the client asked for API ``version`` or newer."""
        return not version_less(self.api_version, version)

    # -- body ----------------------------------------------------------------------
    def body_stream(self) -> AsyncIterator[bytes]:
        """The request body as it arrives, chunk by chunk, never buffered whole.

        Calling it again (or :meth:`read_body`) continues where reading stopped.
        Raises ``ClientDisconnected`` if the client goes away mid-body.
        """
        return _BodyIterator(self)

    async def read_body(self, limit: int | None = MAX_JSON_BODY) -> bytes:
        """The whole (remaining) body; more than ``limit`` bytes is a 413."""
        if limit is not None and self.content_length is not None and self.content_length > limit:
            raise PayloadTooLarge(
                f"request body is {self.content_length} bytes, over this endpoint's limit of "
                f"{limit} bytes")
        parts: list[bytes] = []
        size = 0
        async for chunk in self.body_stream():
            size += len(chunk)
            if limit is not None and size > limit:
                raise PayloadTooLarge(
                    f"request body is over this endpoint's limit of {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    async def json(self, default: Any = _MISSING, limit: int | None = MAX_JSON_BODY) -> Any:
        """The body parsed as JSON; malformed -> 400; empty -> ``default`` or 400."""
        body = await self.read_body(limit)
        if not body.strip():
            if default is not _MISSING:
                return default
            raise BadRequest("request body is empty: a JSON document was expected")
        try:
            return json.loads(body)
        except UnicodeDecodeError as exc:
            raise BadRequest(f"invalid JSON in request body: not UTF-8 ({exc.reason})") from None
        except json.JSONDecodeError as exc:
            raise BadRequest(
                f"invalid JSON in request body: {exc.msg} at line {exc.lineno} column "
                f"{exc.colno}") from None
        except RecursionError:
            # "[[[[..." a few thousand deep: the parser's recursion, not the daemon's problem
            raise BadRequest("invalid JSON in request body: nested too deeply") from None

    @property
    def body_complete(self) -> bool:
        return self._body_done

    # -- hijack --------------------------------------------------------------------
    async def hijack(self, content_type: str = RAW_STREAM,
                     head: bytes | None = None) -> trio.abc.HalfCloseableStream:
        """Take over the connection for a raw bidirectional stream (attach, exec start).

        With ``Upgrade: tcp`` in the request the client gets ``101 UPGRADED``,
        otherwise ``200 OK`` without a length; then the bytes are the
        handler's.  The rest of the request body is discarded first.  The
        server closes the connection when the handler returns.  ``head``: a
        status line and headers of the handler's own instead (a websocket's 101).
        """
        if self.hijacked:
            raise RuntimeError("request already hijacked")
        stream = await self._conn.hijack(self, content_type, head)
        self.hijacked = True
        return stream

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.target}>"


class Response:
    """A complete response: status, body bytes, content type and extra headers."""

    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(self, status: int = 200, body: bytes = b"",
                 content_type: str | None = "text/plain; charset=utf-8",
                 headers: HeaderArg = None) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = _header_pairs(headers)

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.content_type} {len(self.body)} bytes>"


class StreamResponse:
    """A body of unknown length sent chunked; every chunk is flushed as it comes.

    ``body`` is any async iterable of bytes.  The headers go out before the
    first chunk, so validate (and raise) in the handler before returning
    this.  If the client goes away, the server stops iterating and closes
    ``body`` (``aclose``) so its ``finally`` blocks run.  If ``body`` raises,
    the response is cut short so the client sees an incomplete body, unless
    ``on_error(exc)`` gives bytes to send as the last chunk (e.g.
    ``streams.error_line_for`` for a JSON progress stream).
    """

    __slots__ = ("body", "content_type", "headers", "on_error", "status")

    def __init__(self, body: AsyncIterable[bytes], content_type: str | None = "application/json",
                 status: int = 200, headers: HeaderArg = None,
                 on_error: Callable[[BaseException], bytes | None] | None = None) -> None:
        self.body = body
        self.content_type = content_type
        self.status = status
        self.headers = _header_pairs(headers)
        self.on_error = on_error

    def __repr__(self) -> str:
        return f"<StreamResponse {self.status} {self.content_type}>"


def json_bytes(obj: Any) -> bytes:
    """Compact UTF-8 JSON with Go's ``json.Encoder`` trailing newline."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode(
        "utf-8", "replace") + b"\n"


def json_response(obj: Any, status: int = 200, headers: HeaderArg = None) -> Response:
    """``obj`` as an ``application/json`` response."""
    return Response(status, json_bytes(obj), "application/json", headers)


def _operation(request: Request, handler: Handler) -> str:
    """What a client asked for, in words for a 500: ``containers create``."""
    module = getattr(handler, "__module__", "") or ""
    name = getattr(handler, "__name__", "") or request.path
    return f"{module.rsplit('.', 1)[-1]} {name}".strip()


def error_response(exc: BaseException) -> Response:
    """Docker's error reply for ``exc``: its status and ``{"message": ...}``."""
    status, message = status_and_message(exc)
    if status in (204, 304):
        return Response(status, b"", None)
    return json_response({"message": message}, status)


def to_response(result: Any) -> Response | StreamResponse:
    """What a handler returned, as a response object."""
    if isinstance(result, Response | StreamResponse):
        return result
    if result is None:
        return Response(204, b"", None)
    if isinstance(result, dict | list):
        return json_response(result)
    if isinstance(result, bytes):
        return Response(200, result, "application/octet-stream")
    if isinstance(result, str):
        return Response(200, result.encode(), "text/plain; charset=utf-8")
    raise TypeError(f"handler returned {type(result).__name__}; expected Response, "
                    "StreamResponse, dict, list, bytes, str or None")


Handler = Callable[..., Awaitable[Any] | Any]


class Route:
    """One registered (method, pattern, handler)."""

    __slots__ = ("handler", "method", "operation", "pattern", "regex")

    def __init__(self, method: str, pattern: str, handler: Handler) -> None:
        self.method = method
        self.pattern = pattern
        #: what the metrics count requests by: the pattern, never the path, so
        #: that container IDs and scanners' paths cannot multiply the series
        self.operation = f"{method} {pattern}"
        self.handler = handler
        self.regex: re.Pattern[str] | None = None
        if "{" in pattern:
            parts: list[str] = []
            pos = 0
            for m in _PARAM.finditer(pattern):
                parts.append(re.escape(pattern[pos:m.start()]))
                parts.append(f"(?P<{m.group(1)}>.+)" if m.group(2) else f"(?P<{m.group(1)}>[^/]+)")
                pos = m.end()
            rest = pattern[pos:]
            if "{" in rest or "}" in rest:
                raise ValueError(f"bad route pattern {pattern!r}: use {{name}} or {{name:path}}")
            parts.append(re.escape(rest))
            self.regex = re.compile("".join(parts))

    def __repr__(self) -> str:
        return f"<Route {self.method} {self.pattern}>"


def _first_segment(pattern: str) -> str | None:
    seg = pattern.split("/", 2)[1]
    return None if "{" in seg else seg


class Router:
    """Maps (method, path) to handlers; ``context`` is passed on as ``request.context``."""

    def __init__(self, context: Any = None) -> None:
        self.context = context
        #: called once per request answered, (operation, status, seconds), when
        #: set: the daemon sets it while metrics are served (core.metrics)
        self.observe: Callable[[str, str, float], None] | None = None
        self.routes: list[Route] = []
        self._static: dict[tuple[str, str], Route] = {}
        # method -> first path segment -> parametrised routes in registration order;
        # routes whose first segment is itself a parameter are under None
        self._dynamic: dict[str, dict[str | None, list[Route]]] = {}

    def add(self, method: str | Iterable[str], pattern: str, handler: Handler) -> None:
        """Register ``handler`` for ``pattern`` under one method or several."""
        if not pattern.startswith("/"):
            raise ValueError(f"route pattern must start with '/': {pattern!r}")
        methods = [method] if isinstance(method, str) else list(method)
        for m in methods:
            route = Route(m.upper(), pattern, handler)
            self.routes.append(route)
            if route.regex is None:
                self._static.setdefault((route.method, pattern), route)
            else:
                buckets = self._dynamic.setdefault(route.method, {})
                buckets.setdefault(_first_segment(pattern), []).append(route)

    def route(self, method: str | Iterable[str], pattern: str) -> Callable[[H], H]:
        """Decorator form of :meth:`add`; returns the handler unchanged (so it stacks)."""
        def deco(handler: H) -> H:
            self.add(method, pattern, handler)
            return handler
        return deco

    def include(self, other: Router) -> None:
        """Add every route of ``other`` (after this router's own)."""
        for r in other.routes:
            self.add(r.method, r.pattern, r.handler)

    def match(self, method: str, path: str) -> tuple[Handler, dict[str, str]] | None:
        """The handler and path parameters for ``path`` (version prefix already removed)."""
        found = self.find(method, path)
        return None if found is None else (found[0].handler, found[1])

    def find(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        """The route and path parameters for ``path`` (version prefix already removed)."""
        route = self._static.get((method, path))
        if route is not None:
            return route, {}
        buckets = self._dynamic.get(method)
        if not buckets:
            return None
        seg = path.split("/", 2)[1] if path.startswith("/") else path
        for key in (seg, None):
            for route in buckets.get(key, ()):
                # only parametrised routes, which all have a regex, are in _dynamic
                m = route.regex.fullmatch(path)  # type: ignore[union-attr]
                if m:
                    return route, m.groupdict()
        return None

    async def dispatch(self, request: Request) -> Response | StreamResponse | None:
        """Run the matching handler; ``None`` if it hijacked the connection.

        Raises what the handler raises; 404 for an unknown route and 400 for
        an unsupported API version.
        """
        found = self.find(request.method, request.path)
        if found is None:
            raise NotFound("page not found")
        route, params = found
        handler = route.handler
        request.operation = route.operation
        if request.api_version != API_VERSION:
            check_version(request.api_version)
        request.params = params
        request.context = self.context
        try:
            result = handler(request, **params)
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:
            if request.hijacked:  # the connection reports what breaks a hijacked stream
                raise
            wrapped = as_handler_bug(_operation(request, handler), exc)
            if wrapped is exc:
                raise
            raise wrapped from exc
        if request.hijacked:
            return None
        return to_response(result)

    async def handle(self, request: Request) -> Response | StreamResponse | None:
        """:meth:`dispatch` with errors turned into Docker's error responses (no socket)."""
        try:
            return await self.dispatch(request)
        except Exception as exc:
            return error_response(exc)
