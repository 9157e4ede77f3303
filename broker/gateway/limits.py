"""Per-client rate limits (token buckets) and in-flight caps.

Limits are per worker process: with N workers each gets 1/N of a client's
rate, so the total across workers stays what the registry says.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from broker.errors import Overloaded, RateLimited
from broker.registry import Agency


class TokenBucket:
    """``rate`` tokens per second, holding at most ``burst``."""

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.last = time.monotonic()

    def take(self) -> float:
        """Take one token: 0.0 if granted, else seconds until one is available."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class Limits:
    """Admission control for exchanges: rate per client, in-flight per client and overall."""

    def __init__(self, *, default_rate: float, max_in_flight: int, workers: int = 1) -> None:
        self.default_rate = default_rate
        self.max_in_flight = max_in_flight
        self.workers = max(1, workers)
        self._buckets: dict[str, TokenBucket] = {}
        self._in_flight: dict[str, int] = {}
        self.total_in_flight = 0

    def _bucket(self, agency: Agency) -> TokenBucket:
        bucket = self._buckets.get(agency.id)
        if bucket is None:
            rate = (agency.rate_limit or self.default_rate) / self.workers
            bucket = TokenBucket(rate, burst=max(1.0, rate))
            self._buckets[agency.id] = bucket
        return bucket

    @contextmanager
    def admit(self, agency: Agency) -> Iterator[None]:
        """Admit one exchange of ``agency`` or raise RateLimited/Overloaded."""
        wait = self._bucket(agency).take()
        if wait > 0:
            raise RateLimited(
                f"{agency.id} exceeds its rate limit of "
                f"{agency.rate_limit or self.default_rate:g} requests/s",
                retry_after=wait,
            )
        mine = self._in_flight.get(agency.id, 0)
        cap = agency.max_in_flight
        if self.total_in_flight >= self.max_in_flight or (cap is not None and mine >= cap):
            raise Overloaded("too many exchanges in flight; retry shortly", retry_after=1)
        self._in_flight[agency.id] = mine + 1
        self.total_in_flight += 1
        try:
            yield
        finally:
            self._in_flight[agency.id] -= 1
            self.total_in_flight -= 1
