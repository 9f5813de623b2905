"""etcd's v3 API through its JSON gateway (``POST /v3/<service>/<rpc>``).

The gateway ships with every etcd since 3.3 and takes the same messages as
gRPC, with bytes in base64 and 64-bit numbers as strings; so skiff needs no
gRPC stack for the store, only an HTTP client that runs on trio (httpx).
Only what the daemon uses is here: keys and prefixes, leases, watches.
"""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from skiff.core.cluster.settings import ClusterSettings

if TYPE_CHECKING:  # imported where used: a daemon without a cluster store never needs it
    import httpx


class StoreUnavailable(Exception):
    """The store did not answer, or answered with an error; the message names it."""


@dataclass(frozen=True)
class Event:
    """One change seen by a watch: ``value`` is None for a deletion."""

    key: str
    value: bytes | None
    revision: int


def _b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode()


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text or "")


def prefix_end(prefix: str) -> str:
    """The end of etcd's range for every key starting with ``prefix``."""
    raw = bytearray(prefix.encode())
    while raw and raw[-1] == 0xFF:
        raw.pop()
    if not raw:
        return "\0"
    raw[-1] += 1
    return _b64(bytes(raw))


def _tls(settings: ClusterSettings) -> ssl.SSLContext | bool:
    if not settings.tls:
        return False
    ctx = ssl.create_default_context(cafile=settings.cafile or None)
    if settings.certfile:
        ctx.load_cert_chain(settings.certfile, settings.keyfile)
    return ctx


class EtcdGateway:
    """A client of one etcd cluster; tries its members in turn.

    Every method raises ``StoreUnavailable`` when no member answers, with the
    configured store and the last member's error in the message.
    """

    def __init__(self, settings: ClusterSettings, *, timeout: float = 3.0) -> None:
        self.settings = settings
        self._current = 0
        import httpx

        verify = _tls(settings)
        self._http = httpx.AsyncClient(timeout=timeout, verify=verify if verify else True)

    async def aclose(self) -> None:
        await self._http.aclose()

    def _fail(self, endpoint: str, detail: str) -> StoreUnavailable:
        return StoreUnavailable(f"cluster store {self.settings.store} is unavailable "
                                f"({endpoint}: {detail})")

    async def call(self, rpc: str, body: dict[str, Any]) -> dict[str, Any]:
        """One unary RPC, e.g. ``call("kv/put", {...})``: the reply's JSON."""
        import httpx

        endpoints = self.settings.endpoints
        error = self._fail(endpoints[0], "no member tried")
        for i in range(len(endpoints)):
            at = (self._current + i) % len(endpoints)
            url = f"{endpoints[at]}/v3/{rpc}"
            try:
                reply = await self._http.post(url, content=json.dumps(body))
            except httpx.HTTPError as exc:
                error = self._fail(endpoints[at], str(exc) or type(exc).__name__)
                continue
            self._current = at
            try:
                data = reply.json() if reply.content else {}
            except ValueError:
                raise self._fail(endpoints[at], f"{rpc}: not etcd's gateway (HTTP "
                                 f"{reply.status_code}, not JSON)") from None
            if not isinstance(data, dict):
                raise self._fail(endpoints[at], f"{rpc}: an answer that is not an object")
            if reply.status_code != 200:
                detail = data.get("message") or reply.status_code
                raise self._fail(endpoints[at], f"{rpc}: {detail}")
                raise self._fail(endpoints[at], f"{rpc}: {detail}")
            result = data.get("result", data)
            return result if isinstance(result, dict) else {}
        raise error

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        """Set ``key``; the store's revision after the write."""
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        reply = await self.call("kv/put", body)
        return int(reply.get("header", {}).get("revision", 0))

    async def get_prefix(self, prefix: str) -> tuple[dict[str, bytes], int]:
        """Every key under ``prefix`` with its value, and the revision they were read at."""
        reply = await self.call("kv/range", {"key": _b64(prefix), "range_end": prefix_end(prefix)})
        kvs = {_unb64(kv["key"]).decode(): _unb64(kv.get("value")) for kv in reply.get("kvs", [])}
        return kvs, int(reply.get("header", {}).get("revision", 0))

    async def create_all(self, items: dict[str, bytes], *, lease: int = 0) -> bool:
        """Write every key of ``items`` in one transaction, only if none exists yet.

        False when one already existed (and nothing was written): the store's
        answer to two nodes creating the same thing at once.
        """
        reply = await self.call("kv/txn", {
            "compare": [{"key": _b64(k), "result": "EQUAL", "target": "CREATE",
                         "create_revision": "0"} for k in items],
            "success": [{"request_put": {"key": _b64(k), "value": _b64(v),
                                         **({"lease": str(lease)} if lease else {})}}
                        for k, v in items.items()],
        })
        return bool(reply.get("succeeded"))

    async def delete_all(self, keys: list[str]) -> None:
        """Delete ``keys`` in one transaction."""
        await self.call("kv/txn", {"success": [{"request_delete_range": {"key": _b64(k)}}
                                               for k in keys]})

    async def delete(self, key: str) -> None:
        await self.call("kv/deleterange", {"key": _b64(key)})

    async def grant(self, ttl: int) -> int:
        """A new lease of ``ttl`` seconds: its ID."""
        reply = await self.call("lease/grant", {"TTL": str(ttl)})
        if reply.get("error"):
            raise StoreUnavailable(f"cluster store {self.settings.store}: lease refused: "
                                   f"{reply['error']}")
        return int(reply["ID"])

    async def keepalive(self, lease: int) -> int:
        """Renew ``lease``: the seconds it now has, 0 if it had already expired."""
        reply = await self.call("lease/keepalive", {"ID": str(lease)})
        return int(reply.get("TTL") or 0)

    async def revoke(self, lease: int) -> None:
        """End ``lease`` and every key written under it; one already gone is no error."""
        try:
            await self.call("lease/revoke", {"ID": str(lease)})
        except StoreUnavailable as exc:
            if "lease not found" not in str(exc):
                raise

    @asynccontextmanager
    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[AsyncIterator[Event]]:
        """The changes under ``prefix`` from ``start_revision`` on, as they happen.

        The stream ends (``StoreUnavailable``) when the member goes away; the
        caller reads the prefix again and watches from the revision it read.
        """
        import httpx

        endpoint = self.settings.endpoints[self._current]
        body = {"create_request": {"key": _b64(prefix), "range_end": prefix_end(prefix),
                                   "start_revision": str(start_revision)}}
        try:
            async with self._http.stream("POST", f"{endpoint}/v3/watch",
                                         content=json.dumps(body),
                                         timeout=httpx.Timeout(3.0, read=None)) as reply:
                if reply.status_code != 200:
                    raise self._fail(endpoint, f"watch: {reply.status_code}")
                yield self._events(reply, endpoint)
        except httpx.HTTPError as exc:
            raise self._fail(endpoint, f"watch: {exc or type(exc).__name__}") from None

    async def _events(self, reply: httpx.Response, endpoint: str) -> AsyncIterator[Event]:
        import httpx

        try:
            async for line in reply.aiter_lines():
                if not line.strip():
                    continue
                try:
                    result = json.loads(line).get("result", {})
                except (ValueError, AttributeError):
                    raise self._fail(endpoint, "watch: not etcd's gateway") from None
                if result.get("canceled"):
                    raise self._fail(endpoint, f"watch cancelled: {result.get('cancel_reason')}")
                for ev in result.get("events", []):
                    kv = ev.get("kv", {})
                    deleted = ev.get("type") == "DELETE"
                    yield Event(key=_unb64(kv.get("key")).decode(),
                                value=None if deleted else _unb64(kv.get("value")),
                                revision=int(kv.get("mod_revision", 0)))
        except httpx.HTTPError as exc:
            raise self._fail(endpoint, f"watch: {exc or type(exc).__name__}") from None
        raise self._fail(endpoint, "watch: the stream ended")
