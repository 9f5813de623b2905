"""API errors and how any exception becomes Docker's ``{"message": ...}`` reply.

Two families reach the HTTP layer: ``skiff.core.errors`` (raised by services,
which know nothing of HTTP) and the classes here (raised by handlers, which
carry the status they pick).  :func:`status_and_message` maps a domain error's
kind (the first class of its MRO in :data:`STATUS_OF_KIND`), an API error's
``status``, and anything else, to the status and message the client sees.
The HTTP-facing classes also subclass the matching service error, so
``except skiff.core.errors.NotFound`` catches an API ``NotFound`` too.
"""

from __future__ import annotations

from skiff.core import errors as core_errors

#: Docker's HTTP status for each kind of domain error; a kind not here is a 500
STATUS_OF_KIND: dict[type[core_errors.SkiffError], int] = {
    core_errors.NotModified: 304,
    core_errors.InvalidParameter: 400,
    core_errors.Unauthorized: 401,
    core_errors.Forbidden: 403,
    core_errors.NotFound: 404,
    core_errors.Conflict: 409,
    core_errors.Unavailable: 503,
    core_errors.Timeout: 504,
}


class ApiError(core_errors.SkiffError):
    """An error with an explicit HTTP status; the body is ``{"message": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def status_of(exc: core_errors.SkiffError) -> int:
    """The HTTP status of a domain or API error.

    The MRO decides, as attribute lookup would: ``class X(RegistryError,
    NotFound)`` is a 404 because NotFound comes before the bare SkiffError.
    """
    if isinstance(exc, ApiError):
        return exc.status
    for kind in type(exc).__mro__:
        status = STATUS_OF_KIND.get(kind)
        if status is not None:
            return status
    return 500


class BadRequest(ApiError, core_errors.InvalidParameter):
    """400: the request's parameters or body are wrong."""

    def __init__(self, message: str) -> None:
        ApiError.__init__(self, 400, message)


class NotFound(ApiError, core_errors.NotFound):
    """404: no such container, image, exec instance ..."""

    def __init__(self, message: str) -> None:
        ApiError.__init__(self, 404, message)


class Conflict(ApiError, core_errors.Conflict):
    """409: the object's state or name forbids the operation."""

    def __init__(self, message: str) -> None:
        ApiError.__init__(self, 409, message)


class NotModified(ApiError, core_errors.NotModified):
    """304: nothing to do (e.g. starting a running container); sent without a body."""

    def __init__(self, message: str = "") -> None:
        ApiError.__init__(self, 304, message)


class Forbidden(ApiError):
    """403: the operation is not allowed on this object."""

    def __init__(self, message: str) -> None:
        super().__init__(403, message)


class PayloadTooLarge(ApiError):
    """413: a request body over the endpoint's size cap."""

    def __init__(self, message: str) -> None:
        super().__init__(413, message)


class NotImplementedApi(ApiError):
    """501: an endpoint or option skiff does not implement."""

    def __init__(self, message: str) -> None:
        super().__init__(501, message)


class Unavailable(ApiError, core_errors.Unavailable):
    """503: the daemon cannot serve this now (shutting down, driver not ready)."""

    def __init__(self, message: str) -> None:
        ApiError.__init__(self, 503, message)


class ClientDisconnected(Exception):
    """The client went away mid-request (EOF or reset while reading its body).

    Not an API error: nobody is left to read a reply, so the server only logs it.
    """


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        out: list[BaseException] = []
        for sub in exc.exceptions:
            out.extend(_leaves(sub))
        return out
    return [exc]


def unwrap(exc: BaseException) -> BaseException:
    """The one exception that should decide the reply.

    trio's strict exception groups wrap even a single failure of a handler's
    child task; the client should still get that child's 404, not a 500.
    """
    leaves = _leaves(exc)
    if len(leaves) == 1:
        return leaves[0]
    for leaf in leaves:
        if isinstance(leaf, core_errors.SkiffError):
            return leaf
    return exc


def status_and_message(exc: BaseException) -> tuple[int, str]:
    """Docker's status code and message for ``exc`` (500 unless it says otherwise)."""
    exc = unwrap(exc)
    if isinstance(exc, core_errors.SkiffError):
        return status_of(exc), exc.message
    if isinstance(exc, HandlerFailed):
        return 500, exc.message
    message = str(exc) or type(exc).__name__
    return 500, message


class HandlerFailed(Exception):
    """A bug in a handler: a 500 whose message names the operation that failed.

    Deliberately not a ``SkiffError``: the connection logs it with the traceback
    of its cause (``raise ... from``) as an unexpected failure.
    """

    def __init__(self, operation: str, cause: BaseException) -> None:
        self.message = f"{operation} failed: {str(cause) or type(cause).__name__}"
        super().__init__(self.message)


def as_handler_bug(operation: str, exc: Exception) -> Exception:
    """``exc`` as the handler raised it, or wrapped in :class:`HandlerFailed` when it is
    neither a domain error (however deeply grouped) nor a client that went away."""
    leaf = unwrap(exc)
    if isinstance(leaf, core_errors.SkiffError | ClientDisconnected | HandlerFailed):
        return exc
    return HandlerFailed(operation, leaf)
