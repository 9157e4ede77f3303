"""The gateway's view of stored exchanges: every worker follows the whole exchanges topic.

It holds the latest document of each stored exchange still within the
topic's retention (pending or final) and the first claim on each
idempotency key, so that any worker of any gateway instance answers
``GET /v1/exchanges/{id}`` and replays an idempotent exchange, whichever
worker took it. Waiters (``Prefer: wait``, a second call with the same key)
are woken when the final document arrives. Ready once it has read the topic
up to its end at start.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict

from aiokafka import TopicPartition

from broker.exchanges.docs import PARTITIONS, Claims, Doc, Final, Pending, decode, doc_kind
from broker.kafka import Batch, KafkaService, TopicSpec, ensure_topics, make_consumer
from broker.settings import Settings

log = logging.getLogger(__name__)
MAX_ASYNC_TTL_MS = 48 * 3600 * 1000


def exchanges_topic_spec(settings: Settings) -> TopicSpec:
    """Compacted (latest document per exchange) and deleted by time (the retention the README states).

    Compaction waits for the longest async wait (``min.compaction.lag.ms``), so that an exchange's
    pending document is never compacted away before the exchange is finished.
    """
    retention_ms = settings.exchanges_retention_hours * 3600 * 1000
    return TopicSpec(
        name=settings.exchanges_topic,
        partitions=PARTITIONS,
        configs={
            "cleanup.policy": "compact,delete",
            "retention.ms": str(retention_ms),
            "min.compaction.lag.ms": str(MAX_ASYNC_TTL_MS + 3600 * 1000),
            "segment.ms": str(3600 * 1000),
        },
    )


class ExchangeView(KafkaService):
    """Follows every partition of the exchanges topic (no group, read_committed)."""

    poll_timeout_ms = 200
    cancel_on_stop = True

    def __init__(self, settings: Settings) -> None:
        super().__init__("exchange view")
        self.settings = settings
        self.topic = settings.exchanges_topic
        self.docs: dict[str, Doc] = {}
        self.claims = Claims()
        self.partitions = PARTITIONS
        self._read_to: dict[int, int] = {}
        """Partition → the offset after the last message read."""
        self._finals: dict[str, list[asyncio.Future[Final]]] = defaultdict(list)
        self._offsets: list[tuple[int, int, asyncio.Future[None]]] = []
        self._prune_at = 0.0

    async def _open(self) -> None:
        await ensure_topics(self.settings, [exchanges_topic_spec(self.settings)])
        self.consumer = consumer = make_consumer(
            self.settings, group_id=None, isolation_level="read_committed", fetch_max_wait_ms=100
        )
        await consumer.start()
        parts = consumer.partitions_for_topic(self.topic) or set()
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(self.topic) or set()
        self.partitions = len(parts) or PARTITIONS
        tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
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
                    continue
                self.docs[doc.exchange_id] = doc
                for fut in self._finals.pop(doc.exchange_id, ()):
                    if not fut.done():
                        fut.set_result(doc)
            if messages:
                self._read_to[tp.partition] = messages[-1].offset + 1

    def _prune(self) -> None:
        """Forget what the topic's retention has deleted too."""
        horizon = time.time() * 1000 - self.settings.exchanges_retention_hours * 3600 * 1000
        self.docs = {eid: d for eid, d in self.docs.items() if d.t_in >= horizon}
        self.claims.forget_before(horizon)

    def get(self, exchange_id: str, client: str) -> Doc | None:
        """The caller's own stored exchange; None for an unknown id or another caller's."""
        doc = self.docs.get(exchange_id)
        return doc if doc is not None and doc.client == client else None

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
        doc = self.docs.get(exchange_id)
        if isinstance(doc, Final) or within_s <= 0:
            return doc
        fut: asyncio.Future[Final] = asyncio.get_running_loop().create_future()
        self._finals[exchange_id].append(fut)
        try:
            async with asyncio.timeout(within_s):
                return await fut
        except TimeoutError:
            return self.docs.get(exchange_id)
        finally:
            waiting = self._finals.get(exchange_id)
            if waiting is not None and fut in waiting:
                waiting.remove(fut)
                if not waiting:
                    del self._finals[exchange_id]
