"""The gateway's view of stored exchanges: every worker follows the whole exchanges topic.

It knows every stored exchange still within the topic's retention (its
owner, and where its latest document is) and the first claim on each
idempotency key, so that any worker of any gateway instance answers
``GET /v1/exchanges/{id}`` and replays an idempotent exchange, whichever
worker took it. Waiters (``Prefer: wait``, a second call with the same key)
are woken when the final document arrives. Ready once it has read the topic
up to its end at start.

Memory is bounded as a whole by ``exchange_view_mb``: the index (an entry per
stored exchange in retention, slim: owner, service, times and where its
document is, never the caller's user id, purpose or request id) and the final
documents held (they hold results). Final documents go first, the oldest
first, and are read back from Kafka by their offset when asked for. When the
index alone nears the budget, new stored exchanges are refused to the clients
holding more than an even share (``admits``); past the budget, the oldest
finished exchanges are forgotten (never an open one), so a worker that re-reads
the topic at start fits in what it had.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass

from aiokafka import TopicPartition
from prometheus_client import Gauge

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


ENTRY_BYTES = 350
"""Memory of one index entry (the id, its dict slot, a slim pending or evicted record), measured
with tracemalloc by ``loadtests/view_memory.py`` (282 B finished, 331 B pending) and rounded up."""
CLAIM_BYTES = 360
"""Memory of one idempotency claim (key hash, fingerprint, id, time), measured likewise (344 B)."""
ADMIT_SHARE = 0.9
"""Past this share of the budget taken by the index, clients above an even share are refused."""
READERS = 4
"""Kafka consumers reading evicted documents back, per worker; a client uses one at a time."""
READ_BACK_S = 10.0
"""A read-back that has not ended in this time (queued included) is answered 503 ``unavailable``."""


@dataclass(frozen=True, slots=True)
class Evicted:
    """A final document no longer held in memory: where to read it back (its id is the index key)."""

    client: str
    t_in: float
    partition: int
    offset: int


def _slim(doc: Pending) -> Pending:
    """What the index keeps of a pending document: what its status answer and its owner check need
    (the claim is in ``Claims``); the agency and service names shared, not copied per entry."""
    return dataclasses.replace(
        doc, client=sys.intern(doc.client), provider=sys.intern(doc.provider),
        service=sys.intern(doc.service), idempotency=None, fingerprint=None, request_id=None,
        user_id=None, purpose=None, request_bytes=0, gateway="",
    )  # fmt: skip


class ExchangeView(KafkaService):
    """Follows every partition of the exchanges topic (no group, read_committed)."""

    poll_timeout_ms = 200
    cancel_on_stop = True

    def __init__(self, settings: Settings, gauge: Gauge | None = None) -> None:
        super().__init__("exchange view")
        self.settings = settings
        self.topic = settings.exchanges_topic
        self.docs: dict[str, Doc | Evicted] = {}
        """Every stored exchange in retention, oldest first."""
        self.claims = Claims()
        self.budget = settings.exchange_view_mb * 1024 * 1024
        """Bytes for the index and the final documents held, together."""
        self.held = 0
        """Bytes of final documents held in memory."""
        self._sizes: dict[str, tuple[int, int, int]] = {}
        """Final documents held: exchange id → (size, partition, offset), oldest first."""
        self.by_client: Counter[str] = Counter()
        """Index entries per client."""
        self.forgotten = 0
        """Finished exchanges forgotten before their retention ended (the index was full)."""
        self._gauge = gauge
        self._fetchers: list[Consumer] = []
        self._readers = asyncio.Semaphore(READERS)
        self._reading: dict[str, tuple[asyncio.Lock, int]] = {}
        """Per client: a lock its read-backs queue on (not behind other clients'), and how many do."""
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

    @property
    def index_bytes(self) -> int:
        return len(self.docs) * ENTRY_BYTES + len(self.claims) * CLAIM_BYTES

    def admits(self, client: str) -> bool:
        """Whether ``client`` may store one more exchange: always while the index has room; once it
        nears the budget, only a client holding less than an even share of it."""
        if self.index_bytes < self.budget * ADMIT_SHARE:
            return True
        return self.by_client.get(client, 0) < len(self.docs) / max(1, len(self.by_client))

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
        self._measure()

    async def _close(self) -> None:
        await super()._close()
        fetchers, self._fetchers = self._fetchers, []
        for fetcher in fetchers:
            await fetcher.stop()
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
            self._measure()

    def _measure(self) -> None:
        if self._gauge is not None:
            self._gauge.labels("index").set(self.index_bytes)
            self._gauge.labels("bodies").set(self.held)
            self._gauge.labels("budget").set(self.budget)

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
                        slim = _slim(doc)
                        self.docs[slim.exchange_id] = slim
                        self.open_by_client[slim.client] += 1
                        self.by_client[slim.client] += 1
                    continue
                before = self.docs.get(doc.exchange_id)
                if isinstance(before, Pending):
                    self._closed(before.client)
                elif before is None:
                    self.by_client[sys.intern(doc.client)] += 1
                self._hold(doc, len(msg.value or b""), tp.partition, msg.offset)
                for fut in self._finals.pop(doc.exchange_id, ()):
                    if not fut.done():
                        fut.set_result(doc)
            if messages:
                self._read_to[tp.partition] = messages[-1].offset + 1
        self._bound()

    def _hold(self, doc: Final, size: int, partition: int, offset: int) -> None:
        """Keep a final document, evicting the oldest held ones past the budget."""
        eid = doc.exchange_id
        self.docs[eid] = doc
        old = self._sizes.pop(eid, None)
        self.held += size - (old[0] if old else 0)
        self._sizes[eid] = (size, partition, offset)
        self._evict()

    def _evict(self) -> None:
        """Evict the oldest final documents held while the view is past its budget (the newest stays)."""
        while self.held + self.index_bytes > self.budget and len(self._sizes) > 1:
            oldest = next(iter(self._sizes))
            size_, p, o = self._sizes.pop(oldest)
            self.held -= size_
            d = self.docs.get(oldest)
            if isinstance(d, Final):
                self.docs[oldest] = Evicted(sys.intern(d.client), d.t_in, p, o)

    def _bound(self) -> None:
        """Past the budget with every final document evicted: forget the oldest finished exchanges
        (their status is then 404, as after retention). Open ones are never forgotten: the keeper
        and their callers still need them; admission keeps them within the budget."""
        if self.index_bytes <= self.budget:
            return
        # One pass from the oldest, down to 95% of the budget so that the next batches need none.
        excess = (self.index_bytes - int(self.budget * 0.95)) // ENTRY_BYTES + 1
        victims = []
        for eid, d in self.docs.items():
            if isinstance(d, Evicted):
                victims.append(eid)
                if len(victims) >= excess:
                    break
        if not victims:
            return  # all open: admission keeps them within the budget
        for eid in victims:
            self._uncount(self.docs.pop(eid).client)
        self.forgotten += len(victims)
        log.warning(
            "exchange view: %d finished exchanges forgotten before their retention ended (%d in all): "
            "NDXP_EXCHANGE_VIEW_MB (%d) is too small for this topic",
            len(victims), self.forgotten, self.settings.exchange_view_mb,
        )  # fmt: skip

    def _uncount(self, client: str) -> None:
        self.by_client[client] -= 1
        if self.by_client[client] <= 0:
            del self.by_client[client]

    def _closed(self, client: str) -> None:
        self.open_by_client[client] -= 1
        if self.open_by_client[client] <= 0:
            del self.open_by_client[client]

    def _prune(self) -> None:
        """Forget what the topic's retention has deleted too."""
        horizon = time.time() * 1000 - self.settings.exchanges_retention_hours * 3600 * 1000
        for d in self.docs.values():
            if d.t_in < horizon:
                self._uncount(d.client)
                if isinstance(d, Pending):
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
        """An evicted final document, read from its partition at its offset: fair per client (one
        read-back of a client at a time, on one of ``READERS`` consumers), so one agency's reads
        queue its own, not everyone's."""
        lock, users = self._reading.get(where.client) or (asyncio.Lock(), 0)
        self._reading[where.client] = (lock, users + 1)
        try:
            async with asyncio.timeout(READ_BACK_S), lock, self._readers:
                fetcher = self._fetchers.pop() if self._fetchers else await self._new_fetcher()
                try:
                    return await self._read_at(fetcher, where)
                finally:
                    self._fetchers.append(fetcher)
        except TimeoutError as exc:
            raise Unavailable("the exchange could not be read back from Kafka; retry", retry_after=1) from exc
        finally:
            lock, users = self._reading[where.client]
            if users > 1:
                self._reading[where.client] = (lock, users - 1)
            else:
                del self._reading[where.client]

    async def _new_fetcher(self) -> Consumer:
        fetcher = make_consumer(self.settings, group_id=None, isolation_level="read_committed")
        await fetcher.start()
        return fetcher

    async def _read_at(self, fetcher: Consumer, where: Evicted) -> Doc | None:
        tp = TopicPartition(self.topic, where.partition)
        fetcher.assign([tp])
        fetcher.seek(tp, where.offset)
        while True:
            for msg in (await fetcher.getmany(tp, timeout_ms=1000, max_records=1)).get(tp, []):
                if msg.offset != where.offset:
                    return None  # compacted or deleted since: gone
                return decode(msg.value or b"")

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
