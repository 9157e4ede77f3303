"""What the platform relies on of Kafka, as tests that run against any implementation.

FastStream's pattern: a mixin of tests over an abstract ``kafka`` fixture.
``tests/unit/test_kafka_contract.py`` runs them against the in-memory fake
(``tests/fakes.py``) and ``tests/integration/test_kafka_contract.py`` against
a real Kafka: the fake that the unit tests of the keeper, the adapter and the
transaction helper use behaves, in what they depend on, as Kafka does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

import pytest
from aiokafka import TopicPartition

from broker.errors import TransactionFenced
from broker.kafka import Batch, Consumer, Outgoing, Producer, Transactions


class Cluster(Protocol):
    """What a contract test needs of a Kafka: topics, producers, consumers."""

    async def topic(self, partitions: int = 1) -> str: ...
    async def producer(self, transactional_id: str | None = None) -> Producer: ...
    async def consumer(self, *topics: str, group_id: str | None = None) -> Consumer: ...
    def group(self) -> str: ...


async def read(consumer: Consumer, want: int, within_s: float = 20.0) -> list[tuple[int, bytes | None]]:
    """(partition, value) of the next ``want`` records, in the order they come."""
    got: list[tuple[int, bytes | None]] = []
    async with asyncio.timeout(within_s):
        while len(got) < want:
            batch: Batch = await consumer.getmany(timeout_ms=200)
            for tp, records in sorted(batch.items(), key=lambda item: item[0].partition):
                got.extend((tp.partition, r.value) for r in records)
    return got


async def settle(consumer: Consumer, tp: TopicPartition, within_s: float = 20.0) -> int:
    """Read ``tp`` to its end (read_committed: past the last stable offset); the end."""
    async with asyncio.timeout(within_s):
        while True:
            end = (await consumer.end_offsets([tp]))[tp]
            if await consumer.position(tp) >= end:
                return end
            await consumer.getmany(tp, timeout_ms=100)


class KafkaContract:
    """The contract. A subclass provides the ``kafka`` fixture (a :class:`Cluster`)."""

    async def test_records_of_one_partition_come_in_order_and_a_key_keeps_its_partition(
        self, kafka: Cluster
    ) -> None:
        topic = await kafka.topic(partitions=3)
        producer = await kafka.producer()
        written = [await (await producer.send(topic, f"v{i}".encode(), key=b"subject-1")) for i in range(5)]
        assert len({w.partition for w in written}) == 1, "one key, one partition"
        assert [w.offset for w in written] == sorted(w.offset for w in written)
        consumer = await kafka.consumer(topic)
        got = await read(consumer, 5)
        assert [v for _, v in got] == [f"v{i}".encode() for i in range(5)]

    async def test_a_committed_transaction_shows_its_records_and_moves_the_groups_offsets_together(
        self, kafka: Cluster
    ) -> None:
        source, sink = await kafka.topic(), await kafka.topic()
        group = kafka.group()
        producer = await kafka.producer()
        for i in range(3):
            await (await producer.send(source, f"in{i}".encode()))
        consumer = await kafka.consumer(source, group_id=group)
        got = await read(consumer, 3)
        assert len(got) == 3
        tx = Transactions(await kafka.producer(transactional_id=f"{group}.tx"), group, "contract")
        batch_end = {TopicPartition(source, 0): 3}
        assert await tx.commit([Outgoing(sink, b"out")], batch_end)
        reader = await kafka.consumer(sink)
        assert await read(reader, 1) == [(0, b"out")]
        again = await kafka.consumer(group_id=group)  # reads the group's offsets, joins nothing
        assert await again.committed(TopicPartition(source, 0)) == 3, "the offsets went with the records"

    async def test_a_failed_transaction_shows_nothing_and_its_batch_is_read_again(
        self, kafka: Cluster, fail_next_commit: Callable[[Producer], Awaitable[None]]
    ) -> None:
        source, sink = await kafka.topic(), await kafka.topic()
        group = kafka.group()
        plain = await kafka.producer()
        for i in range(2):
            await (await plain.send(source, f"in{i}".encode()))
        consumer = await kafka.consumer(source, group_id=group)
        first = await consumer.getmany(timeout_ms=5000)
        while sum(len(r) for r in first.values()) < 2:
            more = await consumer.getmany(timeout_ms=1000)
            for tp, records in more.items():
                first.setdefault(tp, []).extend(records)
        producer = await kafka.producer(transactional_id=f"{group}.tx")
        tx = Transactions(producer, group, "contract")
        await fail_next_commit(producer)
        assert not await tx.commit_batch(consumer, first, [Outgoing(sink, b"never")])
        assert await read(consumer, 2) == [(0, b"in0"), (0, b"in1")], "rewound to the batch's start"
        sink_tp = TopicPartition(sink, 0)
        reader = await kafka.consumer()
        reader.assign([sink_tp])
        await reader.seek_to_beginning(sink_tp)
        await settle(reader, sink_tp)
        assert await reader.getmany(sink_tp, timeout_ms=300) == {}, "an aborted record is never read"
        assert await consumer.committed(TopicPartition(source, 0)) is None

    async def test_a_newer_producer_with_the_same_transactional_id_fences_the_older(
        self, kafka: Cluster
    ) -> None:
        topic = await kafka.topic()
        group = kafka.group()
        old = await kafka.producer(transactional_id=f"{group}.tx")
        await kafka.producer(transactional_id=f"{group}.tx")  # a restarted instance
        with pytest.raises(TransactionFenced):
            await Transactions(old, group, "contract").commit([Outgoing(topic, b"zombie")], {})

    async def test_seek_rewinds_and_end_offsets_and_position_meet_at_the_end(self, kafka: Cluster) -> None:
        topic = await kafka.topic()
        producer = await kafka.producer()
        for i in range(4):
            await (await producer.send(topic, f"v{i}".encode()))
        tp = TopicPartition(topic, 0)
        consumer = await kafka.consumer()
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        assert await settle(consumer, tp) == 4
        consumer.seek(tp, 2)
        assert await read(consumer, 2) == [(0, b"v2"), (0, b"v3")]
        assert await consumer.position(tp) == (await consumer.end_offsets([tp]))[tp]
