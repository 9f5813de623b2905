"""The domain's errors, one class per kind of failure.

Services raise these and know nothing of HTTP: the API layer maps each kind
to the status Docker uses (core/api/errors.py) and replies
``{"message": ...}``, so a handler never maps errors by hand.  The message is
for a person: it says what was wrong and what to do.
"""

from __future__ import annotations


class SkiffError(Exception):
    """Base of every error that reaches an API client; a failure of no other kind."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidParameter(SkiffError, ValueError):
    """The request names or asks for something that cannot be."""


class Forbidden(SkiffError):
    """The object exists but may never be changed this way (a predefined network)."""


class NotFound(SkiffError, LookupError):
    """No such object."""


class Conflict(SkiffError):
    """The object's state or name forbids the operation."""


class NotModified(SkiffError):
    """Nothing to do (start of a running container); the client gets no body."""


class Unauthorized(SkiffError):
    """Credentials refused (``docker login``)."""


class Unavailable(SkiffError):
    """The daemon cannot do this now."""


class Timeout(SkiffError):
    """A party the daemon waited on (a registry) did not answer in time."""
