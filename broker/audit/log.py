"""`ndxp audit serve`'s writer: every transaction record becomes a leaf of the exchange log, exactly once.

It follows ``ndxp.tx`` (``read_committed``, its own consumer group) and, in **one Kafka transaction** per
batch, writes the batch's new leaves (the records' bytes, unchanged, keyed by their leaf index) to the
one-partition leaves topic, a signed checkpoint when one is due (at most every ``AUDIT_CHECKPOINT_S``)
to the compacted checkpoints topic, and the consumer offsets. Killed at any point, it restarts from the
last committed transaction: the leaves topic is the tree, in order, with nothing lost or doubled.

A record whose exchange is already in the log (the gateway hedges a record to a second partition when
a leader stalls) is not appended again. The SQLite index (:mod:`broker.audit.index`) follows the
leaves topic: on start it reads what it has not seen (a crash between Kafka's commit and SQLite's), so
it is only ever a cache. The first leaf written with a new signing key records that key
(``{"kind": "audit-key", "vkey": …}``): the key history is in the log itself.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path

import orjson
from aiokafka import TopicPartition

from broker.audit.index import KEY_LEAF, Index, decode_chunk, encode_chunk, pack
from broker.audit.merkle import leaf_hash
from broker.audit.note import Checkpoint, Signer, sign
from broker.audit.pg import PgTracker
from broker.kafka import (
    Batch,
    KafkaService,
    Outgoing,
    Producer,
    Record,
    Topics,
    Transactions,
    Written,
    batches_to_end,
    consumer_lag,
    ensure_topics,
    make_consumer,
    make_producer,
)
from broker.metrics import AuditMetrics
from broker.model.records import TxRecord, id_key
from broker.settings import Settings

log = logging.getLogger(__name__)
GATHER_S = 0.25
"""Longest a record waits for its batch's transaction."""
BATCH = 5000
RECENT_IDS = 2_000_000
"""Exchange ids the writer remembers to drop a record sent twice (the gateway hedges a record to a
second partition within seconds): about 70 MB; loaded from the index on start."""


class RecentIds:
    """The last ``size`` exchange ids appended, as 16-byte keys (a UUID's bytes, else a digest)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._order: collections.deque[bytes] = collections.deque()
        self.keys: set[bytes] = set()
        """The remembered exchanges, by :func:`id_key`."""

    def add(self, exchange_ids: Iterable[str]) -> None:
        self.add_keys(id_key(eid) for eid in exchange_ids)

    def add_keys(self, keys: Iterable[bytes]) -> None:
        """Remember exchanges by their :func:`id_key`."""
        for k in keys:
            if k not in self.keys:
                self.keys.add(k)
                self._order.append(k)
        while len(self._order) > self.size:
            self.keys.discard(self._order.popleft())


def index_key(n: int) -> bytes:
    """A leaf's or checkpoint's Kafka key: its index (tree size), zero-padded so keys sort."""
    return b"%016d" % n


def load_signer(settings: Settings) -> Signer:
    """AUDIT_KEY, or the key kept in CACHE_DIR/audit.key (made on first use, readable by us only)."""
    if settings.audit_key:
        return Signer.parse(settings.audit_key)
    path = settings.cache_dir / "audit.key"
    if path.exists():
        return Signer.parse(path.read_text())
    signer = Signer.generate(settings.audit_origin)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(signer.text() + "\n")
    log.warning("audit: made a new signing key in %s (set NDXP_AUDIT_KEY in production)", path)
    return signer


def index_path(settings: Settings) -> Path:
    return settings.audit_db or settings.cache_dir / f"audit-{settings.tx_topic}.sqlite"


class AuditLog(KafkaService):
    """Appends transaction records to the exchange log and signs its checkpoints."""

    poll_timeout_ms = 100

    def __init__(self, settings: Settings, metrics: AuditMetrics) -> None:
        super().__init__("audit log")
        self.settings = settings
        self.metrics = metrics
        self.topics = Topics(settings)
        self.leaves_topic = self.topics.audit_leaves().name
        self.checkpoints_topic = self.topics.audit_checkpoints().name
        self.group_id = f"{settings.tx_topic}.log"
        self.signer = load_signer(settings)
        self.vkey = self.signer.verifier().text()
        self.index: Index | None = None
        self._producer: Producer | None = None
        self._tx: Transactions | None = None
        self._gathered: Batch = {}
        self._gathered_n = 0
        self._gathered_since = 0.0
        self._checkpoint_size = 0
        self._checkpoint_at = 0.0
        self.signed_at = 0.0
        """Wall time this writer last signed a checkpoint (0: not yet)."""
        self._lag_at = 0.0
        self.recent = RecentIds(RECENT_IDS)
        self.tracker: PgTracker | None = None
        self._tracker_behind = False
        self._uncovered: list[float] = []
        """When each leaf appended since the last checkpoint ended (epoch ms)."""

    async def _open(self) -> None:
        await ensure_topics(
            self.settings, [self.topics.tx(), self.topics.audit_leaves(), self.topics.audit_checkpoints()]
        )
        # The producer first: starting it aborts what a killed predecessor left open (as the counter).
        self._producer = make_producer(self.settings, client_id="ndxp-audit", transactional_id=self.group_id)
        await self._producer.start()
        self._tx = Transactions(self._producer, self.group_id, "audit log")
        path = index_path(self.settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.index = Index(path)
        if not await self._index_matches_kafka():
            log.warning(
                "audit: %s is the index of another log (a new Kafka?); rebuilding it from Kafka", path
            )
            self.index.close()
            for stale in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
                stale.unlink(missing_ok=True)
            self.index = Index(path)
        await self._catch_up()
        latest = self.index.db.execute("SELECT max(size) FROM checkpoints").fetchone()[0]
        self._checkpoint_size = int(latest or 0)
        if self.index.vkey != self.vkey:
            await self._record_key()
        self.recent = RecentIds(RECENT_IDS)
        self.recent.add(self.index.recent_exchanges(RECENT_IDS))
        if self.settings.tracker_dsn:
            self.tracker = PgTracker(self.settings.tracker_dsn)
            await self.tracker.start()
            added = await self.tracker.catch_up(self.index)
            log.info("data tracker on PostgreSQL: %d accesses added from the index", added)
        self.metrics.tree_size.set(self.index.tree.size)
        self.metrics.checkpoint_size.set(self._checkpoint_size)
        self.consumer = make_consumer(
            self.settings,
            group_id=self.group_id,
            client_id="ndxp-audit",
            isolation_level="read_committed",
            max_poll_records=BATCH,
            # The broker holds a fetch until 256 KB or 200 ms have gathered: a few fetches a second,
            # not one per handful of records (what a fetch costs Kafka is most of the log's cost).
            fetch_min_bytes=256 * 1024,
            fetch_max_wait_ms=200,
        )
        await self.consumer.start()
        self.consumer.subscribe([self.settings.tx_topic])

    async def _index_matches_kafka(self) -> bool:
        """Whether the index's first leaf is the leaves topic's (not an index kept across a new Kafka)."""
        index = self.index
        assert index is not None
        if index.tree.size == 0:
            return True
        reader = make_consumer(self.settings, group_id=None, isolation_level="read_committed")
        await reader.start()
        try:
            tp = TopicPartition(self.leaves_topic, 0)
            reader.assign([tp])
            await reader.seek_to_beginning(tp)
            if (await reader.end_offsets([tp]))[tp] == 0:
                return False
            for _ in range(20):
                batch = (await reader.getmany(tp, timeout_ms=500, max_records=1)).get(tp, [])
                if batch:
                    first = decode_chunk(batch[0].value or b"")
                    return bool(first) and leaf_hash(first[0]) == index.tree.nodes.get(0, 0)
            return False
        finally:
            await reader.stop()

    async def _catch_up(self) -> None:
        """Bring the index to the end of the leaves and checkpoints topics (what it has not read)."""
        index = self.index
        assert index is not None
        started, before = time.monotonic(), index.tree.size
        reader = make_consumer(self.settings, group_id=None, isolation_level="read_committed")
        await reader.start()
        try:
            for topic, offset in ((self.leaves_topic, index.leaves_offset),
                                  (self.checkpoints_topic, index.checkpoints_offset)):  # fmt: skip
                async for batch in batches_to_end(reader, TopicPartition(topic, 0), offset):
                    index.begin()
                    try:
                        if topic == self.leaves_topic:
                            self._take_leaves(index, batch)
                        else:
                            for msg in batch:
                                if msg.key is not None and msg.value is not None:
                                    index.add_checkpoint(int(msg.key), msg.value.decode())
                        next_offset = batch[-1].offset + 1
                        if topic == self.leaves_topic:
                            index.commit(leaves_offset=next_offset)
                        else:
                            index.commit(checkpoints_offset=next_offset)
                    except BaseException:
                        index.rollback()
                        raise
        finally:
            await reader.stop()
        log.info(
            "audit index caught up in %.1fs: %d leaves (%d read from Kafka)",
            time.monotonic() - started, index.tree.size, index.tree.size - before,
        )  # fmt: skip

    def _take_leaves(self, index: Index, batch: list[Record]) -> None:
        leaves: list[bytes] = []
        for msg in batch:
            key, value = msg.key, msg.value
            if key is None or value is None:
                continue
            n, chunk = int(key), decode_chunk(value)
            expected = index.tree.size + len(leaves)
            if n + len(chunk) <= expected:
                log.warning("audit: the leaves topic holds leaves %d.. again; the first ones stand", n)
                continue
            if n != expected:
                raise RuntimeError(
                    f"the leaves topic skips from leaf {expected} to {n}: run ndxp audit verify"
                )
            leaves.extend(chunk)
        if leaves:
            index.append(leaves)

    async def _record_key(self) -> None:
        """Append the key leaf of this writer's signing key (its first run with that key)."""
        index, tx = self.index, self._tx
        assert index is not None
        assert tx is not None
        leaf = orjson.dumps(
            {"kind": KEY_LEAF, "vkey": self.vkey, "previous": index.vkey, "at": time.time() * 1000}
        )
        await self._commit_leaves([leaf], {}, force_checkpoint=True)
        log.warning("audit: signing key %s recorded at leaf %d", self.vkey.split("+")[1], index.tree.size - 1)

    def _covered(self) -> None:
        """Every leaf appended so far is under a signed checkpoint: how long each waited since its exchange
        ended (the evidence's delay, ``ndxp_audit_coverage_seconds``)."""
        now = time.time() * 1000
        for t in self._uncovered:
            self.metrics.coverage_seconds.observe(max(0.0, now - t) / 1000)
        self._uncovered = []

    async def _track(self, index: Index) -> None:
        """The batch's accesses to PostgreSQL; PostgreSQL down holds up only the tracker (it catches up
        from the index once back), never the log."""
        assert self.tracker is not None
        try:
            if self._tracker_behind:
                await self.tracker.catch_up(index)
                self._tracker_behind = False
                self.metrics.tracker_behind.set(0)
                log.warning("data tracker: PostgreSQL caught up")
            else:
                await self.tracker.add(index.added_accesses)
        except Exception as exc:
            if not self._tracker_behind:
                log.error("data tracker: PostgreSQL write failed (%r); it catches up when back", exc)
            self._tracker_behind = True
            self.metrics.tracker_behind.set(1)

    async def _close(self) -> None:
        if self._gathered and self.consumer is not None:
            await self._commit()
        await super()._close()
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        if self.index is not None:
            self.index.close()
            self.index = None
        if self.tracker is not None:
            await self.tracker.stop()
            self.tracker = None

    async def _capacity(self) -> int:
        return max(1, BATCH - self._gathered_n)

    async def _on_batch(self, batch: Batch) -> None:
        now = time.monotonic()
        if now >= self._lag_at and self.consumer is not None:
            self._lag_at = now + 1.0
            self.metrics.lag.set(await consumer_lag(self.consumer))
        for tp, messages in batch.items():
            if not self._gathered:
                self._gathered_since = now
            self._gathered.setdefault(tp, []).extend(messages)
            self._gathered_n += len(messages)
        if self._gathered and (self._gathered_n >= BATCH or now - self._gathered_since >= GATHER_S):
            await self._commit()
        elif not self._gathered and self._checkpoint_due():
            await self._commit_leaves([], {})  # the tree grew, and no record came since

    def _checkpoint_due(self) -> bool:
        index = self.index
        return (
            index is not None
            and index.tree.size > self._checkpoint_size
            and time.monotonic() - self._checkpoint_at >= self.settings.audit_checkpoint_s
        )

    async def _commit(self) -> None:
        index = self.index
        assert index is not None
        batch, self._gathered, self._gathered_n = self._gathered, {}, 0
        leaves: list[bytes] = []
        ids: set[bytes] = set()
        recent = self.recent.keys
        ended: list[float] = []
        for messages in batch.values():
            for msg in messages:
                try:
                    rec = TxRecord.decode(msg.value or b"")
                except ValueError:
                    self.metrics.malformed.inc()
                    continue
                key = id_key(rec.exchange_id)
                if key in ids or key in recent:
                    self.metrics.duplicates.inc()
                    continue
                ids.add(key)
                leaves.append(msg.value or b"")
                ended.append(rec.t_out or rec.t_in)
        offsets = {tp: messages[-1].offset + 1 for tp, messages in batch.items()}
        await self._commit_leaves(leaves, offsets)
        self._uncovered.extend(ended)
        if self._checkpoint_size >= index.tree.size:
            self._covered()
        self.recent.add_keys(ids)

    async def _commit_leaves(
        self, leaves: list[bytes], offsets: dict[TopicPartition, int], *, force_checkpoint: bool = False
    ) -> None:
        """One transaction: ``leaves``, a checkpoint if due, ``offsets``; then the index."""
        index, tx = self.index, self._tx
        assert index is not None
        assert tx is not None
        index.begin()
        try:
            first = index.append(leaves)
            size = index.tree.size
            out, at = [], first
            for chunk in pack(leaves):  # one Kafka record per chunk of leaves, keyed by its first index
                out.append(Outgoing(self.leaves_topic, encode_chunk(chunk), index_key(at)))
                at += len(chunk)
            note = None
            if size > self._checkpoint_size and (force_checkpoint or self._checkpoint_due()):
                note = sign(
                    Checkpoint(self.settings.audit_origin, size, index.tree.root()).text(), self.signer
                )
                out.append(Outgoing(self.checkpoints_topic, note.encode(), index_key(size)))
                index.add_checkpoint(size, note)
            written: list[asyncio.Future[Written]] = []
            started = time.perf_counter()
            ok = await tx.commit(out, offsets, written)
        except BaseException:
            index.rollback()
            raise
        if not ok:
            # Whether Kafka committed or not is unknown (a commit that timed out may have landed): the
            # part restarts (its supervisor) and takes the truth from Kafka, never guessing.
            index.rollback()
            raise RuntimeError("audit log: a transaction failed; restarting from Kafka's committed state")
        self.metrics.commit_seconds.observe(time.perf_counter() - started)
        ends: dict[str, int] = {}
        for fut in written:
            w = fut.result()
            ends[w.topic] = max(ends.get(w.topic, 0), w.offset + 1)
        index.commit(
            leaves_offset=ends.get(self.leaves_topic), checkpoints_offset=ends.get(self.checkpoints_topic)
        )
        if self.tracker is not None:
            await self._track(index)
        self.metrics.leaves.inc(len(leaves))
        self.metrics.tree_size.set(size)
        if note is not None and not leaves:
            self._covered()  # a checkpoint of its own: what waited is covered now
        if note is not None:
            self._checkpoint_size, self._checkpoint_at = size, time.monotonic()
            self.metrics.checkpoint_size.set(size)
            self.signed_at = time.time()
            self.metrics.checkpoint_time.set(self.signed_at)
