"""Domain errors with the HTTP status Docker uses for each kind.

Services raise these; the API layer turns any of them into
``{"message": ...}`` with the status below, so a handler never maps errors by
hand.  The message is for a person: it says what was wrong and what to do.
"""

from __future__ import annotations


class SkiffError(Exception):
    """Base of every error that reaches an API client."""

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidParameter(SkiffError, ValueError):
    status = 400


class NotFound(SkiffError, LookupError):
    status = 404


class Conflict(SkiffError):
    status = 409


class NotModified(SkiffError):
    """Nothing to do (start of a running container): 304, no body."""

    status = 304


class Unavailable(SkiffError):
    status = 503
