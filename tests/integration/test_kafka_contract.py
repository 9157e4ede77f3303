"""The Kafka contract (tests/kafka_contract.py) against a real Kafka: the fake behaves as this does."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from broker.kafka import Consumer, Producer, TopicSpec, ensure_topics, make_consumer, make_producer
from broker.settings import Settings
from tests.kafka_contract import KafkaContract

pytestmark = pytest.mark.kafka
_names = itertools.count()


class RealCluster:
    def __init__(self, settings: Settings, unique: Callable[[str], str]) -> None:
        self.settings = settings
        self.unique = unique
        self.clients: list[Any] = []

    async def topic(self, partitions: int = 1) -> str:
        name = self.unique(f"contract{next(_names)}")
        await ensure_topics(
            self.settings, [TopicSpec(name=name, partitions=partitions, replication_factor=1)]
        )
        return name

    async def producer(self, transactional_id: str | None = None) -> Producer:
        kw: dict[str, Any] = {"transactional_id": transactional_id} if transactional_id else {}
        producer = make_producer(self.settings, **kw)
        await producer.start()
        self.clients.append(producer)
        return producer

    async def consumer(self, *topics: str, group_id: str | None = None) -> Consumer:
        consumer = make_consumer(self.settings, *topics, group_id=group_id, isolation_level="read_committed")
        await consumer.start()
        self.clients.append(consumer)
        return consumer

    def group(self) -> str:
        return self.unique(f"group{next(_names)}")

    async def close(self) -> None:
        for client in reversed(self.clients):
            await client.stop()
        self.clients.clear()  # the finalizers of a fenced producer's futures run after the test (conftest)


class TestRealKafka(KafkaContract):
    @pytest.fixture
    async def kafka(
        self, settings: Settings, unique_name: Callable[[str], str]
    ) -> AsyncIterator[RealCluster]:
        cluster = RealCluster(settings, unique_name)
        try:
            yield cluster
        finally:
            await cluster.close()

    @pytest.fixture
    def fail_next_commit(self) -> Callable[[Producer], Awaitable[None]]:
        """The broker refusing the transaction's offsets: aiokafka aborts the transaction for real."""

        async def fail(producer: Producer) -> None:
            original = producer.send_offsets_to_transaction

            async def refused(offsets: Mapping[TopicPartition, int], group_id: str) -> None:
                setattr(producer, "send_offsets_to_transaction", original)  # noqa: B010 - once only
                raise KafkaError("the broker refused the offsets")

            setattr(producer, "send_offsets_to_transaction", refused)  # noqa: B010 - an instance, not the class

        return fail
