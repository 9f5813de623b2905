"""The engine's error kinds as gRPC status codes, the CRI's way of saying why."""

from __future__ import annotations

import grpc

from skiff.core.errors import (
    Conflict,
    Forbidden,
    InvalidParameter,
    NotFound,
    Timeout,
    Unauthorized,
    Unavailable,
)
from skiff.core.images.distribution.errors import RegistryUnauthorized

#: most specific first: a class may be two kinds (RegistryUnauthorized is not
#: an Unauthorized, LoginRefused is both)
_CODES: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (RegistryUnauthorized, grpc.StatusCode.UNAUTHENTICATED),
    (Unauthorized, grpc.StatusCode.UNAUTHENTICATED),
    (InvalidParameter, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (Conflict, grpc.StatusCode.FAILED_PRECONDITION),
    (Forbidden, grpc.StatusCode.PERMISSION_DENIED),
    (Timeout, grpc.StatusCode.DEADLINE_EXCEEDED),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
)


def code_of(exc: BaseException) -> grpc.StatusCode:
    """The status of a failed call; UNKNOWN for an error of no known kind (a
    registry's 500, a driver's failure), which is what the CRI expects then."""
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.UNKNOWN
