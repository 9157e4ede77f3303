"""The Kafka contract (tests/kafka_contract.py) against the in-memory fake the unit tests use."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable

import pytest

from broker.kafka import Consumer, Producer
from tests.fakes import FakeKafka, FakeProducer
from tests.kafka_contract import KafkaContract

_names = itertools.count()


class FakeCluster:
    def __init__(self) -> None:
        self.kafka = FakeKafka()

    async def topic(self, partitions: int = 1) -> str:
        name = f"t{next(_names)}"
        self.kafka.create_topic(name, partitions)
        return name

    async def producer(self, transactional_id: str | None = None) -> Producer:
        producer = self.kafka.producer(transactional_id)
        await producer.start()
        return producer

    async def consumer(self, *topics: str, group_id: str | None = None) -> Consumer:
        consumer = self.kafka.consumer(*topics, group_id=group_id)
        await consumer.start()
        return consumer

    def group(self) -> str:
        return f"g{next(_names)}"


class TestFakeKafka(KafkaContract):
    @pytest.fixture
    def kafka(self) -> FakeCluster:
        return FakeCluster()

    @pytest.fixture
    def fail_next_commit(self) -> Callable[[Producer], Awaitable[None]]:
        async def fail(producer: Producer) -> None:
            assert isinstance(producer, FakeProducer)
            producer.fail_next_commit = RuntimeError("the broker refused the commit")

        return fail
