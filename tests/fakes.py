"""An in-memory Kafka for unit tests: a producer and a consumer that implement the platform's
``Producer`` and ``Consumer`` protocols (broker/kafka/boundary.py).

It keeps what the platform relies on: per-partition order and offsets,
keyed partitioning, transactions (records and consumer offsets visible
together on commit, nothing on abort, to ``read_committed`` readers),
committed offsets per group, and fencing of an older transactional producer.
``tests/unit/test_kafka_contract.py`` runs the same contract tests against it
and (``tests/integration/test_kafka_contract.py``) against a real Kafka, so
that it cannot drift from what Kafka does. It is not a broker: no network, no
replication, no consumer-group rebalancing (a consumer is assigned
partitions, or subscribes and gets every partition at once).
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import ProducerFenced

from broker.kafka import Batch, Consumer, Metadata, Producer, Record


@dataclass(frozen=True, slots=True)
class FakeRecord:
    """A record as stored and as consumed (``Record`` and ``Written``)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes | None]]


@dataclass(slots=True)
class _Partition:
    records: list[FakeRecord] = field(default_factory=list)
    committed_end: int = 0
    """Offsets below this are visible to read_committed readers (the last stable offset)."""


class FakeKafka:
    """The cluster: topics of partitions, groups' committed offsets, transactional ids' epochs."""

    def __init__(self) -> None:
        self.topics: dict[str, list[_Partition]] = {}
        self.groups: dict[str, dict[TopicPartition, int]] = {}
        self.epochs: dict[str, int] = {}
        self.clock_ms = 1_700_000_000_000
        self.arrived = asyncio.Event()

    def create_topic(self, name: str, partitions: int = 1) -> None:
        self.topics.setdefault(name, [_Partition() for _ in range(partitions)])

    def partitions(self, topic: str) -> list[_Partition]:
        if topic not in self.topics:
            self.create_topic(topic)  # auto-creation, as a test broker allows
        return self.topics[topic]

    def append(self, rec: FakeRecord, *, visible: bool) -> None:
        part = self.partitions(rec.topic)[rec.partition]
        part.records.append(rec)
        if visible:
            part.committed_end = len(part.records)
        self.arrived.set()

    def producer(self, transactional_id: str | None = None) -> FakeProducer:
        return FakeProducer(self, transactional_id)

    def consumer(
        self, *topics: str, group_id: str | None = None, read_committed: bool = True
    ) -> FakeConsumer:
        return FakeConsumer(self, topics, group_id=group_id, read_committed=read_committed)


class _Cluster:
    """One broker (node 0) leads every partition."""

    def __init__(self, kafka: FakeKafka) -> None:
        self.kafka = kafka

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        parts = self.kafka.topics.get(topic)
        return None if parts is None else set(range(len(parts)))

    def leader_for_partition(self, partition: TopicPartition) -> int | None:
        return 0 if partition.topic in self.kafka.topics else None


class _Metadata:
    def __init__(self, kafka: FakeKafka) -> None:
        self.cluster = _Cluster(kafka)

    async def fetch_all_metadata(self) -> object:
        return {}


class FakeProducer:
    """Implements ``Producer``: sends are acknowledged at once; transactions as Kafka's."""

    def __init__(self, kafka: FakeKafka, transactional_id: str | None = None) -> None:
        self.kafka = kafka
        self.transactional_id = transactional_id
        self._epoch = 0
        self._txn: list[FakeRecord] | None = None
        self._txn_offsets: list[tuple[str, Mapping[TopicPartition, int]]] = []
        self.fail_next_commit: BaseException | None = None
        """Set to make the next transaction fail at commit (then it is aborted)."""
        self.client: Metadata = _Metadata(kafka)

    async def start(self) -> None:
        if self.transactional_id is not None:  # InitProducerId: fences every older producer of this id
            self._epoch = self.kafka.epochs[self.transactional_id] = (
                self.kafka.epochs.get(self.transactional_id, 0) + 1
            )

    async def stop(self) -> None:
        return None

    async def flush(self) -> None:
        return None

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(len(self.kafka.partitions(topic))))

    def _check_epoch(self) -> None:
        if self.transactional_id is not None and self.kafka.epochs.get(self.transactional_id) != self._epoch:
            raise ProducerFenced()

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: Sequence[tuple[str, bytes | None]] | None = None,
    ) -> asyncio.Future[Any]:
        parts = self.kafka.partitions(topic)
        if partition is None:
            partition = zlib.crc32(key) % len(parts) if key is not None else 0
        self.kafka.clock_ms += 1
        offset = len(parts[partition].records) + sum(
            1 for r in self._txn or () if r.topic == topic and r.partition == partition
        )
        rec = FakeRecord(
            topic, partition, offset, timestamp_ms or self.kafka.clock_ms, key, value, list(headers or ())
        )
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self._txn is not None:
            self._txn.append(rec)
        else:
            self.kafka.append(rec, visible=True)
        future.set_result(rec)
        return future

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[None]:
        self._check_epoch()
        self._txn, self._txn_offsets = [], []
        try:
            yield
            self._check_epoch()
            if self.fail_next_commit is not None:
                failure, self.fail_next_commit = self.fail_next_commit, None
                raise failure
        except BaseException:
            self._txn, self._txn_offsets = None, []  # aborted: nothing visible
            raise
        records, offsets = self._txn, self._txn_offsets
        self._txn, self._txn_offsets = None, []
        for rec in records:
            self.kafka.append(rec, visible=True)
        for group, committed in offsets:
            self.kafka.groups.setdefault(group, {}).update(committed)

    def transaction(self) -> Any:
        return self._transaction()

    async def send_offsets_to_transaction(self, offsets: Mapping[TopicPartition, int], group_id: str) -> None:
        assert self._txn is not None, "not in a transaction"
        self._txn_offsets.append((group_id, dict(offsets)))


class FakeConsumer:
    """Implements ``Consumer``: assigned partitions, positions, committed offsets of its group."""

    def __init__(
        self, kafka: FakeKafka, topics: Sequence[str], *, group_id: str | None, read_committed: bool
    ) -> None:
        self.kafka = kafka
        self.group_id = group_id
        self.read_committed = read_committed
        self._subscribed = list(topics)
        self._assigned: list[TopicPartition] = []
        self._positions: dict[TopicPartition, int] = {}
        self.listener: Any = None

    async def start(self) -> None:
        if self._subscribed:
            self.subscribe(self._subscribed)

    async def stop(self) -> None:
        return None

    def subscribe(self, topics: Sequence[str] = (), *, listener: Any = None) -> None:
        self.listener = listener
        self.assign([TopicPartition(t, p) for t in topics for p in range(len(self.kafka.partitions(t)))])

    def unsubscribe(self) -> None:
        self.assign([])

    def assign(self, partitions: Sequence[TopicPartition]) -> None:
        self._assigned = list(partitions)
        committed = self.kafka.groups.get(self.group_id or "", {})
        self._positions = {tp: committed.get(tp, 0) for tp in self._assigned}

    def assignment(self) -> set[TopicPartition]:
        return set(self._assigned)

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        parts = self.kafka.topics.get(topic)
        return set(range(len(parts))) if parts else None

    def _end(self, tp: TopicPartition) -> int:
        part = self.kafka.partitions(tp.topic)[tp.partition]
        return part.committed_end if self.read_committed else len(part.records)

    def _available(self, max_records: int | None) -> Batch:
        batch: Batch = {}
        left = max_records if max_records is not None else 1 << 30
        for tp in self._assigned:
            start, end = self._positions[tp], self._end(tp)
            take = self.kafka.partitions(tp.topic)[tp.partition].records[start : min(end, start + left)]
            if take:
                records: list[Record] = list(take)
                batch[tp] = records
                self._positions[tp] = start + len(take)
                left -= len(take)
        return batch

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> Batch:
        batch = self._available(max_records)
        if batch or timeout_ms <= 0:
            return batch
        self.kafka.arrived.clear()
        try:
            async with asyncio.timeout(timeout_ms / 1000):
                await self.kafka.arrived.wait()
        except TimeoutError:
            return {}
        return self._available(max_records)

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self._positions[partition] = offset

    async def seek_to_beginning(self, *partitions: TopicPartition) -> bool:
        for tp in partitions or self._assigned:
            self._positions[tp] = 0
        return True

    async def seek_to_end(self, *partitions: TopicPartition) -> bool:
        for tp in partitions or self._assigned:
            self._positions[tp] = self._end(tp)
        return True

    async def position(self, partition: TopicPartition) -> int:
        return self._positions[partition]

    def highwater(self, partition: TopicPartition) -> int | None:
        return len(self.kafka.partitions(partition.topic)[partition.partition].records)

    async def end_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self._end(tp) for tp in partitions}

    async def beginning_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(partitions, 0)  # nothing is ever deleted here

    async def offsets_for_times(self, timestamps: Mapping[TopicPartition, int]) -> dict[TopicPartition, Any]:
        out: dict[TopicPartition, Any] = {}
        for tp, ts in timestamps.items():
            hit = next(
                (r for r in self.kafka.partitions(tp.topic)[tp.partition].records if r.timestamp >= ts), None
            )
            out[tp] = None if hit is None else (hit.offset, hit.timestamp)
        return out

    async def committed(self, partition: TopicPartition) -> int | None:
        return self.kafka.groups.get(self.group_id or "", {}).get(partition)

    async def commit(self, offsets: Mapping[TopicPartition, int] | None = None) -> None:
        assert self.group_id is not None, "a consumer without a group commits nothing"
        self.kafka.groups.setdefault(self.group_id, {}).update(
            offsets if offsets is not None else self._positions
        )


def _typed(kafka: FakeKafka) -> tuple[Producer, Consumer]:
    """The fakes are checked against the protocols like the real clients are (by mypy)."""
    return kafka.producer(), kafka.consumer()
