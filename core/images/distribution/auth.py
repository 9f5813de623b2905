"""Registry credentials and the challenge/token flow (Basic, Bearer).

A 401 carries ``WWW-Authenticate``; ``Basic`` is answered with the user's
credentials, ``Bearer realm=...,service=...,scope=...`` by fetching a token
from the realm (with the credentials, if any).  Apart from the repository
client so the credential format (``X-Registry-Auth``) and the token service
read on their own; the client keeps only which header it currently sends.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from skiff.core.images.distribution.endpoints import MAX_DOCUMENT, USER_AGENT
from skiff.core.images.distribution.errors import (
    RegistryError,
    RegistryUnauthorized,
    registry_message,
)

__all__ = [
    "AuthConfig",
    "Send",
    "basic_authorization",
    "fetch_token",
    "parse_challenge",
]

#: the client's transport, passed in so a token request shares its timeout and TLS setup
Send = Callable[[str, str, dict[str, str], Any],
                tuple[http.client.HTTPConnection, http.client.HTTPResponse]]


@dataclass(frozen=True)
class AuthConfig:
    """Credentials as the docker CLI sends them (``X-Registry-Auth``, ``/auth``)."""

    username: str = ""
    password: str = ""
    identitytoken: str = ""
    registrytoken: str = ""
    serveraddress: str = ""

    @property
    def empty(self) -> bool:
        return not (self.username or self.password or self.identitytoken or self.registrytoken)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuthConfig:
        low = {str(k).lower(): v for k, v in data.items()}
        return cls(*(str(low.get(k) or "") for k in (
            "username", "password", "identitytoken", "registrytoken", "serveraddress")))

    @classmethod
    def from_header(cls, value: str | None) -> AuthConfig | None:
        """Decode ``X-Registry-Auth``: base64url (padding optional) of a JSON object.

        A header that does not decode is ignored, as dockerd does: the pull
        then goes anonymous and the registry says whether that is enough.
        """
        if not value:
            return None
        text = value.strip()
        raw = None
        for decode in (base64.urlsafe_b64decode, base64.b64decode):
            try:
                raw = decode(text + "=" * (-len(text) % 4))
                break
            except (binascii.Error, ValueError):
                continue
        if raw is None:
            return None
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            return None
        if not isinstance(data, dict):
            return None
        auth = cls.from_dict(data)
        return None if auth.empty else auth



_CHALLENGE_RE = re.compile(r'([A-Za-z_]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="x",service="y"`` -> ``("bearer", {"realm": "x", ...})``."""
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3))
              for m in _CHALLENGE_RE.finditer(rest)}
    return scheme.lower(), params


def basic_authorization(auth: AuthConfig) -> str:
    """The ``Authorization`` value for Basic auth with ``auth``'s user and password."""
    return "Basic " + base64.b64encode(f"{auth.username}:{auth.password}".encode()).decode()


def fetch_token(send: Send, params: Mapping[str, str], scopes: Sequence[str],
                auth: AuthConfig | None) -> str:
    """A Bearer token from the challenge's realm for ``scopes`` (with the credentials, if any)."""
    realm = params.get("realm")
    if not realm:
        raise RegistryUnauthorized("unauthorized: the Bearer challenge names no realm")
    query: list[tuple[str, str]] = []
    if params.get("service"):
        query.append(("service", params["service"]))
    for scope in scopes:
        query.append(("scope", scope))
    url = realm + ("&" if "?" in realm else "?") + urlencode(query)
    headers = {"User-Agent": USER_AGENT}
    if auth is not None and auth.username:
        headers["Authorization"] = basic_authorization(auth)
    conn, resp = send("GET", url, headers, None)
    try:
        body = resp.read(MAX_DOCUMENT)
    finally:
        conn.close()
    if resp.status in (401, 403):
        raise RegistryUnauthorized(
            f"unauthorized: the token service at {realm} refused "
            f"{'the credentials' if auth else 'anonymous access'}: {registry_message(body)}"
        )
    if resp.status != 200:
        raise RegistryError(f"token service {realm} answered {resp.status}: "
                            f"{registry_message(body)}")
    try:
        data = json.loads(body)
        token = data.get("token") or data.get("access_token")
    except (ValueError, AttributeError, RecursionError):
        token = None
    if not token:
        raise RegistryError(f"token service {realm} answered without a token")
    return str(token)
