"""`ndxp counter`: exact counts per day, client, provider, service and outcome.

Exactly once, by construction:

- The counter consumes ``ndxp.tx`` (``read_committed``) in a consumer group
  and gathers records for up to ``COUNT_GATHER_S`` or ``counter_batch``
  records (the consumer keeps fetching meanwhile); then it writes in
  **one Kafka transaction** the updated
  count rows (compacted stats topic), the exchange ids it counted (one
  message per batch on the "seen" topic, kept ``dedupe_retention_hours``)
  and the consumer offsets.
  Killed at any point, it restarts from the last committed transaction, with
  counts that match those offsets exactly: nothing is counted twice or lost.
- A record whose exchange id was already counted (the same record sent
  twice) is dropped and counted as a duplicate.
- On start it loads its state from the two compacted topics, not by
  re-reading the history of ``ndxp.tx``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter as Tally

import orjson
from aiokafka import TopicPartition

from broker.counter.stats import StatKey
from broker.kafka import (
    Batch,
    Consumer,
    KafkaService,
    Outgoing,
    Producer,
    Topics,
    Transactions,
    consumer_lag,
    ensure_topics,
    make_consumer,
    make_producer,
    read_compacted,
    read_to_end,
    static_member,
)
from broker.metrics import CounterMetrics
from broker.model.envelope import H_ERROR
from broker.model.records import TxRecord, day_of, id_key
from broker.settings import Settings

log = logging.getLogger(__name__)
COUNT_GATHER_S = 0.25
"""Longest a counted record waits for its transaction: transactions amortised over big batches."""


class SeenIds:
    """The exchange ids counted, one set per day, each id kept as 16 bytes.

    Gateway exchange ids are UUIDs and keep their 16 bytes; any other id (a
    record written by something else) is reduced to a 16-byte BLAKE2b digest.
    About 91 bytes an id, 87 MiB a million (the dict of id strings to days it replaces took 123), and
    a day is forgotten as a whole once it leaves the dedupe window.
    """

    __slots__ = ("_days",)

    def __init__(self) -> None:
        self._days: dict[str, set[bytes]] = {}

    def __contains__(self, exchange_id: object) -> bool:
        if not isinstance(exchange_id, str):
            return False
        k = id_key(exchange_id)
        return any(k in ids for ids in self._days.values())

    def __len__(self) -> int:
        return sum(len(ids) for ids in self._days.values())

    def update(self, id_to_day: dict[str, str]) -> None:
        for eid, day in id_to_day.items():
            self._days.setdefault(day, set()).add(id_key(eid))

    def forget_before(self, day: str) -> None:
        self._days = {d: ids for d, ids in self._days.items() if d >= day}


class TxCounter(KafkaService):
    """Counts transaction records exactly once; state lives in Kafka."""

    poll_timeout_ms = 50

    def __init__(self, settings: Settings, metrics: CounterMetrics) -> None:
        super().__init__("counter")
        self.settings = settings
        self.metrics = metrics
        self.group_id = f"{settings.stats_topic}.counter"
        self.topics = Topics(settings)
        self.seen_topic = self.topics.seen_batches().name
        self.dlq_topic = self.topics.tx_dlq().name
        self.counts: dict[StatKey, int] = {}
        self.seen = SeenIds()
        """Exchange ids counted, by day, for the dedupe window (``dedupe_retention_hours``)."""
        self._producer: Producer | None = None
        self._tx: Transactions | None = None
        self._prune_at = 100_000
        self._gathered: Batch = {}
        self._gathered_n = 0
        self._gathered_since = 0.0
        self._lag_at = 0.0

    async def _open(self) -> None:
        await ensure_topics(
            self.settings,
            [self.topics.tx(), self.topics.tx_dlq(), self.topics.stats(), self.topics.seen_batches()],
        )
        # The producer first: starting it (InitProducerId with our transactional
        # id) aborts the transaction a killed predecessor left open, and waits
        # for one it was committing to complete. Only then is the state below
        # the state the committed offsets belong to.
        self._producer = make_producer(
            self.settings, client_id="ndxp-counter", transactional_id=self.group_id
        )
        await self._producer.start()
        self._tx = Transactions(self._producer, self.group_id, "counter")
        started = time.monotonic()
        loader = make_consumer(self.settings, group_id=None, isolation_level="read_committed")
        await loader.start()
        try:
            stats = await read_compacted(loader, TopicPartition(self.settings.stats_topic, 0))
            seen_batches = await read_to_end(loader, TopicPartition(self.seen_topic, 0))
        finally:
            await loader.stop()
        self.counts = {StatKey.decode(k): int(orjson.loads(v)["count"]) for k, v in stats.items()}
        self.seen = SeenIds()
        for msg in seen_batches:
            self.seen.update(orjson.loads(msg.value or b"{}"))
        self._prune()
        log.info(
            "counter state loaded in %.1fs: %d count rows, %d remembered exchanges",
            time.monotonic() - started,
            len(self.counts),
            len(self.seen),
        )
        self.consumer = make_consumer(
            self.settings,
            group_id=self.group_id,
            client_id="ndxp-counter",
            group_instance_id=static_member(self.settings),
            isolation_level="read_committed",
            max_poll_records=self.settings.counter_batch,
            fetch_max_wait_ms=100,
        )
        await self.consumer.start()
        self.consumer.subscribe([self.settings.tx_topic])

    async def _close(self) -> None:
        if self._gathered and self.consumer is not None:
            await self._commit()  # the records in hand, before leaving
        await super()._close()
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def _capacity(self) -> int:
        return max(1, self.settings.counter_batch - self._gathered_n)

    async def _on_batch(self, batch: Batch) -> None:
        now = time.monotonic()
        if now >= self._lag_at:
            self._lag_at = now + 1.0
            await self._update_lag(self.consumer)
        for tp, messages in batch.items():
            if not self._gathered:
                self._gathered_since = now
            self._gathered.setdefault(tp, []).extend(messages)
            self._gathered_n += len(messages)
        if self._gathered and (
            self._gathered_n >= self.settings.counter_batch or now - self._gathered_since >= COUNT_GATHER_S
        ):
            await self._commit()

    async def _commit(self) -> None:
        consumer, tx = self.consumer, self._tx
        assert consumer is not None
        assert tx is not None
        batch, self._gathered, self._gathered_n = self._gathered, {}, 0
        deltas, new_seen, outcomes, dead = self._tally(batch)
        changed = {key: self.counts.get(key, 0) + n for key, n in deltas.items()}
        outgoing = [
            Outgoing(self.settings.stats_topic, orjson.dumps({"count": n}), key.encode())
            for key, n in changed.items()
        ]
        if new_seen:  # one message per batch: exchange id → day
            outgoing.append(Outgoing(self.seen_topic, orjson.dumps(new_seen)))
        outgoing.extend(dead)
        started = time.perf_counter()
        if not await tx.commit_batch(consumer, batch, outgoing):
            return
        # Only now, with the transaction committed, does memory move on.
        self.metrics.commit_seconds.observe(time.perf_counter() - started)
        self.counts.update(changed)
        self.seen.update(new_seen)
        if len(self.seen) > self._prune_at:
            self._prune()
        for outcome, n in outcomes.items():
            self.metrics.counted.labels(outcome).inc(n)

    def _tally(self, batch: Batch) -> tuple[Tally[StatKey], dict[str, str], Tally[str], list[Outgoing]]:
        deltas: Tally[StatKey] = Tally()
        new_seen: dict[str, str] = {}
        outcomes: Tally[str] = Tally()
        dead: list[Outgoing] = []
        for messages in batch.values():
            for msg in messages:
                try:
                    rec = TxRecord.decode(msg.value or b"")
                except ValueError as exc:
                    # Never fatal: set aside (in the same transaction), counted, logged.
                    self.metrics.malformed.inc()
                    log.warning(
                        "counter: dead-lettering a malformed record at %s@%s: %s", msg.topic, msg.offset, exc
                    )
                    headers = [(k, v) for k, v in (msg.headers or ()) if isinstance(v, bytes)]
                    headers.append((H_ERROR, str(exc).encode()))
                    dead.append(Outgoing(self.dlq_topic, msg.value or b"", msg.key, headers))
                    continue
                if rec.exchange_id in self.seen or rec.exchange_id in new_seen:
                    self.metrics.duplicates.inc()
                    continue
                day = day_of(rec.t_in, self.settings.stats_utc_offset_hours)
                new_seen[rec.exchange_id] = day
                deltas[StatKey(day, rec.client, rec.provider, rec.service, rec.outcome, rec.mode)] += (
                    rec.count
                )
                outcomes[rec.outcome] += rec.count
        return deltas, new_seen, outcomes, dead

    def _prune(self) -> None:
        """Forget exchange ids older than the dedupe window, as the seen topic's retention does."""
        now_ms = time.time() * 1000
        keep_from = day_of(
            now_ms - self.settings.dedupe_retention_hours * 3600 * 1000,
            self.settings.stats_utc_offset_hours,
        )
        self.seen.forget_before(keep_from)
        self._prune_at = max(100_000, 2 * len(self.seen))

    async def _update_lag(self, consumer: Consumer | None) -> None:
        if consumer is not None:
            self.metrics.lag.set(await consumer_lag(consumer))
