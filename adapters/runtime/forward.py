"""Forwarding to an agency's own REST backend, the way real agencies are connected.

Bounded on every side: at most ``max_concurrency`` calls in flight (beyond
that a call fails at once instead of queueing), each call limited by the
backend timeout and the exchange's own deadline, and at most one retry, only
for failures that happen before the backend saw the request or that it
reports as transient (connection refused, 502/503/504), and only while time
is left. Failures surface as exceptions, which the runtime turns into
``provider_error`` replies; a backend 404 is the provider's own not-found.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from broker.errors import BackendError, BusinessError
from broker.model.envelope import RequestMeta, now_ms

_TRANSIENT = frozenset({502, 503, 504})


class Forwarder:
    """An HTTP client for one backend, with the platform's bounds."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_ms: int,
        max_concurrency: int = 64,
        attempts: int = 2,
        backoff_s: float = 0.05,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_ms / 1000
        self.attempts = attempts
        self.backoff_s = backoff_s
        self._slots = asyncio.Semaphore(max_concurrency)
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
            )
        return self._session

    async def get_json(self, path: str, meta: RequestMeta, *, missing: BusinessError) -> Any:
        """GET ``path``: the parsed JSON answer; ``missing`` on 404; BackendError otherwise."""
        if self._slots.locked():
            raise BackendError("backend saturated: too many calls in flight")
        async with self._slots:
            for attempt in range(1, self.attempts + 1):
                budget = min(self.timeout_s, (meta.deadline_ms - now_ms()) / 1000 - 0.02)
                if budget <= 0:
                    raise BackendError("no time left before the exchange deadline")
                try:
                    async with asyncio.timeout(budget):
                        return await self._get_once(path, meta, missing)
                except TimeoutError as exc:
                    # The backend may still be working on it: never pile on a retry.
                    raise BackendError(f"backend did not answer within {budget:.2f}s") from exc
                except (aiohttp.ClientConnectionError, _Transient) as exc:
                    if attempt == self.attempts:
                        raise BackendError(f"backend unavailable: {exc}") from exc
                    await asyncio.sleep(self.backoff_s)
        raise AssertionError("unreachable")

    async def _get_once(self, path: str, meta: RequestMeta, missing: BusinessError) -> Any:
        headers = {"X-Request-Id": meta.exchange_id, "X-NDXP-Client": meta.client}
        if meta.traceparent:
            headers["traceparent"] = meta.traceparent
        async with self._client().get(self.base_url + path, headers=headers) as resp:
            if resp.status == 404:
                raise missing
            if resp.status in _TRANSIENT:
                raise _Transient(f"backend answered {resp.status}")
            if resp.status != 200:
                raise BackendError(f"backend answered {resp.status}")
            try:
                return await resp.json(content_type=None)
            except ValueError as exc:
                raise BackendError("backend answered with invalid JSON") from exc


class _Transient(Exception):
    pass
