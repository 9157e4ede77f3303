"""The gateway's view of stored exchanges: every worker follows the whole exchanges topic.

It knows every stored exchange still within the topic's retention (its
owner, and where its latest document is) and the first claim on each
idempotency key, so that any worker of any gateway instance answers
``GET /v1/exchanges/{id}`` and replays an idempotent exchange, whichever
worker took it. Waiters (``Prefer: wait``, a second call with the same key)
are woken when the final document arrives. Ready once it has read the topic
up to its end at start.

Memory is bounded: final documents (they hold results) are kept up to
``exchange_view_mb``, the oldest first to go; an evicted one is read back
from Kafka by its offset when asked for.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, defaultdict
from dataclasses import dataclass

from aiokafka import TopicPartition

from broker.errors import Unavailable
from broker.kafka import (
    Batch,
    Consumer,
    KafkaService,
    Topics,
    ensure_topics,
    make_consumer,
    topic_partitions,
)
from broker.model.documents import EXCHANGES_PARTITIONS, Claims, Doc, Final, Pending, decode, doc_kind
from broker.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Evicted:
    """A final document no longer held in memory: where to read it back."""

    exchange_id: str
    client: str
    t_in: float
    partition: int
    offset: int


class ExchangeView(KafkaService):
    """Follows every partition of the exchanges topic (no group, read_committed)."""

    poll_timeout_ms = 200
    cancel_on_stop = True

    def __init__(self, settings: Settings) -> None:
        super().__init__("exchange view")
        self.settings = settings
        self.topic = settings.exchanges_topic
        self.docs: dict[str, Doc | Evicted] = {}
        self.claims = Claims()
        self.budget = settings.exchange_view_mb * 1024 * 1024
        """Bytes of final documents held in memory."""
        self.held = 0
        self._sizes: dict[str, tuple[int, int, int]] = {}
        """Final documents held: exchange id → (size, partition, offset), oldest first."""
        self._fetcher: Consumer | None = None
        self._fetching = asyncio.Lock()
        self.partitions = EXCHANGES_PARTITIONS
        self._read_to: dict[int, int] = {}
        """Partition → the offset after the last message read."""
        self._finals: dict[str, list[asyncio.Future[Final]]] = defaultdict(list)
        self._offsets: list[tuple[int, int, asyncio.Future[None]]] = []
        self._prune_at = 0.0
        self.open_by_client: Counter[str] = Counter()
        """Stored exchanges accepted and not yet finished, per client (all instances': the topic's)."""

    def open_for(self, client: str) -> int:
        return self.open_by_client.get(client, 0)

    async def _open(self) -> None:
        await ensure_topics(self.settings, [Topics(self.settings).exchanges()])
        self.consumer = consumer = make_consumer(
            self.settings, group_id=None, isolation_level="read_committed", fetch_max_wait_ms=100
        )
        await consumer.start()
        tps = await topic_partitions(consumer, self.topic)
        self.partitions = len(tps)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        started = time.monotonic()
        for tp, end in ends.items():
            while await consumer.position(tp) < end:
                self._apply(await consumer.getmany(tp, timeout_ms=500))
        log.info(
            "exchange view: %d stored exchanges read in %.1fs", len(self.docs), time.monotonic() - started
        )

    async def _close(self) -> None:
        await super()._close()
        if self._fetcher is not None:
            await self._fetcher.stop()
            self._fetcher = None
        for futures in self._finals.values():
            for fut in futures:
                fut.cancel()
        self._finals.clear()
        for _, _, waiter in self._offsets:
            waiter.cancel()
        self._offsets.clear()

    async def _on_batch(self, batch: Batch) -> None:
        self._apply(batch)
        if self._offsets:
            keep = []
            for partition, offset, fut in self._offsets:
                if fut.done():
                    continue
                if self._read_to.get(partition, 0) > offset:
                    fut.set_result(None)
                else:
                    keep.append((partition, offset, fut))
            self._offsets = keep
        now = time.monotonic()
        if now >= self._prune_at:
            self._prune_at = now + 60
            self._prune()

    def _apply(self, batch: Batch) -> None:
        for tp, messages in batch.items():
            for msg in messages:
                kind = doc_kind(msg.headers)
                if kind is None:
                    continue  # an adapter's reply: the keeper turns it into a final document
                try:
                    doc = decode(msg.value or b"")
                except ValueError as exc:
                    log.warning("exchange view: ignoring %s@%s: %s", tp, msg.offset, exc)
                    continue
                if isinstance(doc, Pending):
                    if self.claims.apply(doc) and doc.exchange_id not in self.docs:
                        self.docs[doc.exchange_id] = doc
                        self.open_by_client[doc.client] += 1
                    continue
                if isinstance(self.docs.get(doc.exchange_id), Pending):
                    self._closed(doc.client)
                self._hold(doc, len(msg.value or b""), tp.partition, msg.offset)
                for fut in self._finals.pop(doc.exchange_id, ()):
                    if not fut.done():
                        fut.set_result(doc)
            if messages:
                self._read_to[tp.partition] = messages[-1].offset + 1

    def _hold(self, doc: Final, size: int, partition: int, offset: int) -> None:
        """Keep a final document, evicting the oldest held ones past the budget."""
        eid = doc.exchange_id
        self.docs[eid] = doc
        old = self._sizes.pop(eid, None)
        self.held += size - (old[0] if old else 0)
        self._sizes[eid] = (size, partition, offset)
        while self.held > self.budget and len(self._sizes) > 1:
            oldest = next(iter(self._sizes))
            size_, p, o = self._sizes.pop(oldest)
            self.held -= size_
            d = self.docs.get(oldest)
            if isinstance(d, Final):
                self.docs[oldest] = Evicted(oldest, d.client, d.t_in, p, o)

    def _closed(self, client: str) -> None:
        self.open_by_client[client] -= 1
        if self.open_by_client[client] <= 0:
            del self.open_by_client[client]

    def _prune(self) -> None:
        """Forget what the topic's retention has deleted too."""
        horizon = time.time() * 1000 - self.settings.exchanges_retention_hours * 3600 * 1000
        for d in self.docs.values():
            if d.t_in < horizon and isinstance(d, Pending):
                self._closed(d.client)
        self.docs = {eid: d for eid, d in self.docs.items() if d.t_in >= horizon}
        for eid in [eid for eid in self._sizes if eid not in self.docs]:
            self.held -= self._sizes.pop(eid)[0]
        self.claims.forget_before(horizon)

    async def get(self, exchange_id: str, client: str | None = None) -> Doc | None:
        """A stored exchange (of ``client`` when given: None for an unknown id or another caller's)."""
        doc = self.docs.get(exchange_id)
        if doc is None or (client is not None and doc.client != client):
            return None
        if isinstance(doc, Evicted):
            return await self._read_back(doc)
        return doc

    async def _read_back(self, where: Evicted) -> Doc | None:
        """An evicted final document, read from its partition at its offset (one reader at a time)."""
        async with self._fetching:
            if self._fetcher is None:
                self._fetcher = make_consumer(self.settings, group_id=None, isolation_level="read_committed")
                await self._fetcher.start()
            tp = TopicPartition(self.topic, where.partition)
            self._fetcher.assign([tp])
            self._fetcher.seek(tp, where.offset)
            try:
                async with asyncio.timeout(5):
                    while True:
                        for msg in (await self._fetcher.getmany(tp, timeout_ms=1000, max_records=1)).get(
                            tp, []
                        ):
                            if msg.offset != where.offset:
                                return None  # compacted or deleted since: gone
                            return decode(msg.value or b"")
            except TimeoutError as exc:
                raise Unavailable(
                    "the exchange could not be read back from Kafka; retry", retry_after=1
                ) from exc

    async def reached(self, partition: int, offset: int, within_s: float) -> bool:
        """Wait until the document at ``offset`` of ``partition`` has been read."""
        if self._read_to.get(partition, 0) > offset:
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._offsets.append((partition, offset, fut))
        try:
            async with asyncio.timeout(within_s):
                await fut
        except TimeoutError:
            return False
        return True

    async def final(self, exchange_id: str, within_s: float) -> Doc | None:
        """The exchange's document once final, or its current one after ``within_s``."""
        doc = await self.get(exchange_id)
        if isinstance(doc, Final) or within_s <= 0:
            return doc
        fut: asyncio.Future[Final] = asyncio.get_running_loop().create_future()
        self._finals[exchange_id].append(fut)
        try:
            async with asyncio.timeout(within_s):
                return await fut
        except TimeoutError:
            return await self.get(exchange_id)
        finally:
            waiting = self._finals.get(exchange_id)
            if waiting is not None and fut in waiting:
                waiting.remove(fut)
                if not waiting:
                    del self._finals[exchange_id]
