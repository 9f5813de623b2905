"""The statuses clients see for domain errors: mapped in core/api only."""

from __future__ import annotations

import pytest

from skiff.core import errors
from skiff.core.api import errors as api_errors
from skiff.core.api.errors import status_and_message
from skiff.core.images.distribution.errors import (
    DigestMismatch,
    LoginRefused,
    ManifestUnknown,
    RegistryError,
    RegistryTimeout,
)
from skiff.core.images.errors import ImageConflict, ImageNotFound, InvalidReference


@pytest.mark.parametrize(("exc", "status"), [
    (errors.SkiffError("x"), 500),
    (errors.InvalidParameter("x"), 400),
    (errors.NotFound("x"), 404),
    (errors.Conflict("x"), 409),
    (errors.NotModified("x"), 304),
    (errors.Unavailable("x"), 503),
    (InvalidReference("x"), 400),
    (ImageNotFound("x", "x"), 404),
    (ImageConflict("x"), 409),
    (RegistryError("x"), 500),
    (LoginRefused("x"), 401),
    (ManifestUnknown("x"), 404),
    (RegistryTimeout("x"), 504),
    (DigestMismatch("x"), 400),
    (api_errors.Forbidden("x"), 403),
    (api_errors.NotFound("x"), 404),
    (api_errors.PayloadTooLarge("x"), 413),
    (ValueError("x"), 500),
])
def test_status_of_each_kind(exc: BaseException, status: int) -> None:
    assert status_and_message(exc) == (status, "x")


def test_domain_errors_carry_no_http_status() -> None:
    for cls in (errors.SkiffError, errors.InvalidParameter, errors.NotFound,
                errors.Conflict, errors.NotModified, errors.Unavailable,
                LoginRefused, RegistryTimeout, DigestMismatch):
        assert not hasattr(cls("x"), "status"), cls
