"""Per-client rate limits (token buckets) and in-flight caps.

A client's limits are the client's, not a fixed share per process. The workers of one instance
share its buckets and in-flight counts (:mod:`broker.gateway.shared`, when the supervisor gives them
the shared file): exact, however the client's connections land on the workers. Across instances,
each takes ``1/instances`` of a client's rate and in-flight cap, ``instances`` being the gateway
instances alive now (:mod:`broker.gateway.presence`): exact when a load balancer spreads a client's
calls over them, less for a client that reaches one instance only. Without a shared file (one
worker, or a test's) each worker keeps its own buckets, ``1/workers`` of the rate.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from broker.contracts.registry import Agency
from broker.errors import Overloaded, RateLimited
from broker.gateway.shared import SharedLimits

MAX_TRACKED_ADDRESSES = 100_000


class TokenBucket:
    """``rate`` tokens per second, holding at most ``burst``."""

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.last = time.monotonic()

    def wait(self) -> float:
        """Seconds until a token is available (0.0 if one is), without taking it."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate

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
    """Admission control: rate per client, in-flight per client and overall, failed logins per address."""

    def __init__(
        self,
        *,
        default_rate: float,
        max_in_flight: int,
        workers: int = 1,
        auth_failure_rate: float = 5.0,
        max_streams: int = 10,
        max_long_polls: int = 50,
        shared: SharedLimits | None = None,
    ) -> None:
        self.shared = shared
        self.instances = 1
        """Gateway instances alive now (the presence follower keeps it): each takes its share."""
        self.default_rate = default_rate
        self.max_streams = max_streams
        self._streams: dict[str, int] = {}
        self.max_long_polls = max_long_polls
        self._polls: dict[str, int] = {}
        self.max_in_flight = max_in_flight
        self.workers = 1 if shared is not None else max(1, workers)
        self._auth_failure_rate = auth_failure_rate
        self._failures: dict[str, TokenBucket] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self._in_flight: dict[str, int] = {}
        self.total_in_flight = 0

    @property
    def auth_failure_rate(self) -> float:
        """Failed authentications per second one address is allowed here (its share)."""
        return self._auth_failure_rate / (self.workers * self.instances)

    def _rate(self, agency: Agency) -> float:
        return (agency.rate_limit or self.default_rate) / (self.workers * self.instances)

    def _take(self, agency: Agency) -> float:
        rate = self._rate(agency)
        if self.shared is not None:
            wait = self.shared.take(agency.id, rate, max(1.0, rate))
            if wait is not None:
                return wait
        bucket = self._buckets.get(agency.id)
        if bucket is None:
            bucket = self._buckets[agency.id] = TokenBucket(rate, burst=max(1.0, rate))
        bucket.rate, bucket.burst = rate, max(1.0, rate)  # the share follows the live instances
        return bucket.take()

    def _cap(self, agency: Agency) -> int | None:
        cap = agency.max_in_flight
        return None if cap is None else max(1, -(-cap // self.instances))

    @contextmanager
    def admit(self, agency: Agency) -> Iterator[None]:
        """Admit one exchange of ``agency`` or raise RateLimited/Overloaded."""
        wait = self._take(agency)
        if wait > 0:
            raise RateLimited(
                f"{agency.id} exceeds its rate limit of "
                f"{agency.rate_limit or self.default_rate:g} requests/s",
                retry_after=wait,
            )
        if self.total_in_flight >= self.max_in_flight:
            raise Overloaded("too many exchanges in flight; retry shortly", retry_after=1)
        cap = self._cap(agency)
        entered = self.shared.enter(agency.id, cap) if self.shared is not None else None
        if entered is False:
            raise Overloaded("too many exchanges in flight; retry shortly", retry_after=1)
        mine = self._in_flight.get(agency.id, 0)
        if entered is None and cap is not None and mine >= cap:
            raise Overloaded("too many exchanges in flight; retry shortly", retry_after=1)
        self._in_flight[agency.id] = mine + 1
        self.total_in_flight += 1
        try:
            yield
        finally:
            self._in_flight[agency.id] -= 1
            self.total_in_flight -= 1
            if entered:
                assert self.shared is not None
                self.shared.leave(agency.id)

    def charge(self, agency: Agency) -> None:
        """One request of ``agency``'s rate for what holds nothing in flight (a replay, a status read),
        or RateLimited."""
        wait = self._take(agency)
        if wait > 0:
            raise RateLimited(f"{agency.id} exceeds its rate limit", retry_after=wait)

    @contextmanager
    def long_poll(self, agency: Agency) -> Iterator[None]:
        """Hold one ``Prefer: wait`` of ``agency``: at most ``max_long_polls`` per client and worker."""
        mine = self._polls.get(agency.id, 0)
        if mine >= self.max_long_polls:
            raise RateLimited(f"{agency.id} has {mine} waits open here, the most allowed", retry_after=1)
        self._polls[agency.id] = mine + 1
        try:
            yield
        finally:
            self._polls[agency.id] -= 1

    @contextmanager
    def stream(self, agency: Agency) -> Iterator[None]:
        """Hold one event stream of ``agency`` open (a Kafka consumer each): at most ``max_streams``
        per client and worker, else 429; opening one costs a request of the client's rate."""
        wait = self._take(agency)
        if wait > 0:
            raise RateLimited(f"{agency.id} exceeds its rate limit", retry_after=wait)
        mine = self._streams.get(agency.id, 0)
        if mine >= self.max_streams:
            raise RateLimited(
                f"{agency.id} has {mine} event streams open here, the most allowed; close one first",
                retry_after=5,
            )
        self._streams[agency.id] = mine + 1
        try:
            yield
        finally:
            self._streams[agency.id] -= 1

    def reset_rates(self, agencies: Iterable[str] | None = None) -> None:
        """Forget the buckets of ``agencies`` (default: all): their rates as the registry has them
        now apply from now on (the others keep what they have used)."""
        if agencies is None:
            self._buckets.clear()
        for agency in agencies or ():
            self._buckets.pop(agency, None)
            if self.shared is not None:
                self.shared.reset(agency)

    def check_address(self, address: str) -> None:
        """Refuse (429) an address that has used up its failed authentications."""
        if self.shared is not None:
            rate = self.auth_failure_rate
            wait = self.shared.address_wait(address, rate, max(1.0, 4 * rate))
            if wait > 0:
                raise RateLimited("too many failed authentications from this address", retry_after=wait)
            return
        bucket = self._failures.get(address)
        if bucket is not None:
            wait = bucket.wait()
            if wait > 0:
                raise RateLimited("too many failed authentications from this address", retry_after=wait)

    def auth_failed(self, address: str) -> None:
        """Count one failed authentication of ``address`` against its allowance."""
        if self.shared is not None:
            rate = self.auth_failure_rate
            self.shared.address_failed(address, rate, max(1.0, 4 * rate))
            return
        bucket = self._failures.get(address)
        if bucket is None:
            if len(self._failures) >= MAX_TRACKED_ADDRESSES:
                # Bounded memory: forget addresses whose allowance is whole again.
                self._failures = {
                    a: b for a, b in self._failures.items() if b.wait() > 0 or b.tokens < b.burst
                }
            rate = self.auth_failure_rate
            bucket = self._failures[address] = TokenBucket(rate, burst=max(1.0, 4 * rate))
        bucket.take()
