"""Forwarding to an agency's own backend (REST or SOAP), the way real agencies are connected.

Bounded on every side: at most ``max_concurrency`` calls in flight (beyond
that a call fails at once instead of queueing), each call limited by the
backend timeout and the exchange's own deadline, answers of at most
``max_bytes``, and at most one retry, only while time is left and only when
it is safe: a connection that was never made (the backend never saw the
request), or, for a method that is safe to repeat (GET, PUT), a reset or a
transient answer (502/503/504). Failures surface as exceptions, which the
runtime turns into ``provider_error`` replies; a not-found status is the
provider's own not-found.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp.abc import AbstractResolver

from broker.errors import BackendError, BusinessError
from broker.model.envelope import RequestMeta, now_ms

_TRANSIENT = frozenset({502, 503, 504})
_REPEATABLE = frozenset({"GET", "PUT"})
MAX_ANSWER_BYTES = 4 * 1024 * 1024
"""The largest backend answer read (beyond: ``provider_error``)."""


@dataclass(frozen=True, slots=True)
class Answer:
    """A backend's answer: status, headers and body (read whole, within ``max_bytes``)."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class Forwarder:
    """An HTTP client for one backend, with the platform's bounds."""

    def __init__(
        self,
        base_url: str = "",
        *,
        timeout_ms: int,
        max_concurrency: int = 64,
        attempts: int = 2,
        backoff_s: float = 0.05,
        max_bytes: int = MAX_ANSWER_BYTES,
        resolver: AbstractResolver | None = None,
    ) -> None:
        """``resolver``: how host names are resolved (a public-only one for a URL from the registry)."""
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_ms / 1000
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.max_bytes = max_bytes
        self._resolver = resolver
        self._slots = asyncio.Semaphore(max_concurrency)
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30, resolver=self._resolver),
                auto_decompress=True,
            )
        return self._session

    async def get_json(self, path: str, meta: RequestMeta, *, missing: BusinessError) -> Any:
        """GET ``path``: the parsed JSON answer; ``missing`` on 404; BackendError otherwise."""
        answer = await self.call("GET", self.base_url + path, meta)
        if answer.status == 404:
            raise missing
        return json_of(answer)

    async def call(
        self,
        method: str,
        url: str,
        meta: RequestMeta,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        ok: frozenset[int] = frozenset({200, 404}),
    ) -> Answer:
        """One call of the backend within the bounds: its answer when its status is in ``ok``,
        BackendError otherwise (or when it cannot be had in time)."""
        if self._slots.locked():
            raise BackendError("backend saturated: too many calls in flight")
        async with self._slots:
            for attempt in range(1, self.attempts + 1):
                budget = min(self.timeout_s, (meta.deadline_ms - now_ms()) / 1000 - 0.02)
                if budget <= 0:
                    raise BackendError("no time left before the exchange deadline")
                try:
                    async with asyncio.timeout(budget):
                        return await self._once(method, url, meta, headers, body, ok)
                except TimeoutError as exc:
                    # The backend may still be working on it: never pile on a retry.
                    raise BackendError(f"backend did not answer within {budget:.2f}s") from exc
                except (aiohttp.ClientConnectionError, _Transient) as exc:
                    never_sent = isinstance(exc, aiohttp.ClientConnectorError)
                    if attempt == self.attempts or not (never_sent or method in _REPEATABLE):
                        raise BackendError(f"backend unavailable: {_kind(exc)}") from exc
                    await asyncio.sleep(self.backoff_s)
                except aiohttp.ClientError as exc:  # a malformed answer (bad headers, chunks, encoding)
                    raise BackendError(f"backend answered malformed HTTP: {_kind(exc)}") from exc
        raise AssertionError("unreachable")

    async def _once(
        self,
        method: str,
        url: str,
        meta: RequestMeta,
        headers: Mapping[str, str] | None,
        body: bytes | None,
        ok: frozenset[int],
    ) -> Answer:
        sent = {"X-Request-Id": meta.exchange_id, "X-NDXP-Client": meta.client, **(headers or {})}
        if meta.traceparent:
            sent["traceparent"] = meta.traceparent
        async with self._client().request(
            method, url, headers=sent, data=body, allow_redirects=False
        ) as resp:
            if resp.status in _TRANSIENT:
                raise _Transient(f"backend answered {resp.status}")
            if resp.status not in ok:
                raise BackendError(f"backend answered {resp.status}")
            if (resp.content_length or 0) > self.max_bytes:
                raise BackendError(f"backend answer larger than {self.max_bytes} bytes")
            chunks, size = [], 0
            async for chunk in resp.content.iter_chunked(64 * 1024):
                size += len(chunk)
                if size > self.max_bytes:
                    raise BackendError(f"backend answer larger than {self.max_bytes} bytes")
                chunks.append(chunk)
            return Answer(resp.status, resp.headers, b"".join(chunks))


def json_of(answer: Answer) -> Any:
    """The answer's body as JSON (BackendError when it is not: HTML, text, truncated)."""
    try:
        return orjson.loads(answer.body)
    except orjson.JSONDecodeError as exc:
        raise BackendError("backend answered with invalid JSON") from exc


def _kind(exc: BaseException) -> str:
    """A failure by its kind, for the reply's detail: no host, port or OS text of the backend's."""
    if isinstance(exc, _Transient):
        return str(exc)
    return type(exc).__name__


class _Transient(Exception):
    pass
