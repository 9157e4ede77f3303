"""Where a keyless record goes: a partition whose leader answers (KIP-794, for aiokafka).

Kafka's Java producer stops sending keyless records to a partition whose leader has not taken a
batch for ``partitioner.availability.timeout.ms`` (KIP-794). aiokafka does not: a record for a
partition whose leader died waits, retried, until Kafka moves the leadership (the broker's session
timeout, seconds), and so does its caller. :class:`LeaderWatch` chooses the partition itself: it
tracks every send per leader, and a leader that failed a send or kept one waiting past
``stall_s`` is avoided for ``avoid_s``. Records that need no particular partition (requests,
transaction records, replies to a gateway worker) go only to partitions with a leader in good
standing, in sticky batches as :class:`~broker.kafka.clients.StickyPartitioner` makes them.

A send may also be **hedged**: one not acknowledged within ``stall_s`` is sent once more to a
partition of another leader, and the first acknowledgement wins. Only for records whose reader
takes an id once (the counter dedupes transaction records by exchange id; a gateway worker takes
the first reply of an exchange; an adapter skips a request past its deadline), so that the copy that
arrives late, when the old leader's partitions move, changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence

from aiokafka import TopicPartition

from broker.kafka.boundary import Producer, Written

log = logging.getLogger(__name__)

STALL_S = 0.5
"""A send to a leader unacknowledged this long: the leader is stalled (a normal one takes ms)."""
AVOID_S = 5.0
"""How long a leader that failed or stalled is avoided (then tried again)."""
GOOD_FOR_S = 0.01
"""How long a topic's list of good partitions is reused (every send asks for it; a stall is 0.5 s)."""


class LeaderWatch:
    """Per-leader standing of one producer's sends, and the partition choice that follows it."""

    def __init__(
        self,
        producer: Producer,
        *,
        stall_s: float = STALL_S,
        avoid_s: float = AVOID_S,
        sticky_s: float = 0.05,
    ) -> None:
        self.producer = producer
        self.stall_s = stall_s
        self.avoid_s = avoid_s
        self.sticky_s = sticky_s
        self._avoid: dict[int, float] = {}
        """Leader node id → until when it is avoided."""
        self._pending: dict[int, dict[int, float]] = {}
        """Leader node id → its unacknowledged sends (a token each → when sent)."""
        self._token = 0
        self._sticky: dict[str, tuple[int, float]] = {}
        self._good: dict[str, tuple[float, list[int]]] = {}
        """Topic → (until when, its good partitions): :meth:`good`'s answer, reused briefly."""
        self.hedges = 0
        """Sends hedged so far."""

    def leader(self, topic: str, partition: int) -> int | None:
        leader = self.producer.client.cluster.leader_for_partition(TopicPartition(topic, partition))
        return None if leader is None or leader < 0 else int(leader)

    def suspect(self, node: int | None, now: float | None = None) -> bool:
        """Whether ``node`` failed or stalled a send recently (or keeps one waiting now)."""
        if node is None:
            return False
        now = time.monotonic() if now is None else now
        if self._avoid.get(node, 0.0) > now:
            return True
        pending = self._pending.get(node)
        return pending is not None and bool(pending) and now - min(pending.values()) >= self.stall_s

    def good(self, topic: str) -> list[int]:
        """The partitions of ``topic`` whose leader is in good standing (all of them if none is);
        reused for :data:`GOOD_FOR_S` (or until a leader is blamed)."""
        now = time.monotonic()
        cached = self._good.get(topic)
        if cached is not None and now < cached[0]:
            return cached[1]
        parts = sorted(self.producer.client.cluster.partitions_for_topic(topic) or ())
        fine = [p for p in parts if not self.suspect(self.leader(topic, p), now)] or parts
        if parts:  # no metadata yet: asked again next time
            self._good[topic] = (now + GOOD_FOR_S, fine)
        return fine

    def choose(self, topic: str, *, besides: int | None = None, spare: int | None = None) -> int | None:
        """A partition for a keyless record of ``topic``; None: no metadata yet (the producer's choice).
        ``besides``: a partition (and its leader) to stay away from; ``spare``: a partition to use only
        when no other is good (kept for other writers)."""
        choices = self.good(topic)
        if spare is not None:
            choices = [p for p in choices if p != spare] or choices
        if besides is not None:
            other = self.leader(topic, besides)
            away = [p for p in choices if p != besides and (other is None or self.leader(topic, p) != other)]
            choices = away or [p for p in choices if p != besides] or choices
        if not choices:
            return None
        now = time.monotonic()
        index, until = self._sticky.get(topic, (0, 0.0))
        if now >= until or besides is not None:
            index = random.randrange(1 << 30)  # noqa: S311 - load spreading, not security
            self._sticky[topic] = (index, now + self.sticky_s)
        return choices[index % len(choices)]

    def _blame(self, node: int | None, why: str) -> None:
        if node is None:
            return
        if self._avoid.get(node, 0.0) <= time.monotonic():
            log.warning("Kafka broker %d %s: its partitions are avoided for %.0fs", node, why, self.avoid_s)
        self._avoid[node] = time.monotonic() + self.avoid_s
        self._good.clear()

    async def send(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
        partition: int | None = None,
        spare: int | None = None,
    ) -> asyncio.Future[Written]:
        """Send to ``partition`` (default: a good one, ``spare`` only if no other is) and track the
        leader's answer; the delivery."""
        if partition is None:
            partition = self.choose(topic, spare=spare)
        node = self.leader(topic, partition) if partition is not None else None
        delivery = await self.producer.send(topic, value, key=key, partition=partition, headers=headers)
        if node is not None:
            self._token += 1
            token, sent = self._token, time.monotonic()
            self._pending.setdefault(node, {})[token] = sent

            def done(fut: asyncio.Future[Written]) -> None:
                self._pending.get(node, {}).pop(token, None)
                if fut.cancelled():
                    return
                if fut.exception() is not None:
                    self._blame(node, f"failed a send ({fut.exception()!r})")
                elif time.monotonic() - sent >= self.stall_s:
                    self._blame(node, f"took {time.monotonic() - sent:.1f}s to take a send")

            delivery.add_done_callback(done)
        return delivery

    async def hedged(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> Written:
        """Send, and if unacknowledged within ``stall_s`` once more to another leader's partition; the
        first acknowledgement (only for records whose reader takes an id once: see the module)."""
        first_partition = self.choose(topic)
        first = await self.send(topic, value, key=key, headers=headers, partition=first_partition)
        # The acknowledgement or ``stall_s``, whichever comes first; the delivery is left as it is.
        await asyncio.wait((first,), timeout=self.stall_s)
        if first.done():
            return first.result()
        if first_partition is None:
            return await first
        self._blame(self.leader(topic, first_partition), f"kept a send waiting {self.stall_s:g}s")
        second_partition = self.choose(topic, besides=first_partition)
        if second_partition is None or second_partition == first_partition:
            return await first
        self.hedges += 1
        second = await self.send(topic, value, key=key, headers=headers, partition=second_partition)
        pending: set[asyncio.Future[Written]] = {first, second}
        error: BaseException | None = None
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for fut in done:
                if fut.exception() is None:
                    for other in pending:  # the other copy finishes (or fails) on its own: unobserved
                        other.add_done_callback(_observed)
                    return fut.result()
                error = fut.exception()
        assert error is not None
        raise error


def _observed(fut: asyncio.Future[Written]) -> None:
    if not fut.cancelled():
        fut.exception()
